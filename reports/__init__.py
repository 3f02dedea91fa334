"""Reports: render what the stages wrote (result.json + figures) into one self-contained HTML file.

Public API::

    from reports import render_report
    path = render_report("runs/my-pipeline")          # -> runs/my-pipeline/report.html

`reports` imports no stage: it reads JSON and PNG files only, each result through
its typed, versioned definition in `trainers.schema`, so it renders any run
directory, including one whose stage failed half-way.
"""

from .collect import ReportError, load_run
from .render import build_context, render_report

__all__ = ["ReportError", "build_context", "load_run", "render_report"]
