"""Reports: render what the stages wrote (result.json + figures) into one self-contained HTML file.

Public API::

    from reports import render_report, run_pipeline
    path = render_report("runs/my-pipeline")          # -> runs/my-pipeline/report.html
    result = run_pipeline("digits", "cnn", "pipeline.toml", overrides={"train.epochs": 30}, out="runs/digits-cnn")

The renderers import no stage: they read JSON and PNG files only, each result through its
typed, versioned definition in `trainers.schema`, so they render any run directory, including
one whose stage failed half-way. `reports.pipeline`, the top floor, runs the stages and then
renders; it and its configuration are imported lazily, so `import reports` does not import torch.
"""

from trainers.lazy import lazy_exports

from .collect import ReportError, load_run
from .render import build_context, render_report

_EXPORTS = {
    "config": ("PipelineConfig", "ReportOptions", "resolve_config"),
    "pipeline": ("PipelineResult", "StageFailed", "run_pipeline"),
}
__getattr__, __dir__, _LAZY = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = ["ReportError", "build_context", "load_run", "render_report", *_LAZY]
