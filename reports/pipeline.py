"""`run_pipeline`: train, compress, explain (the original and the chosen variant) and report, in one run directory.

The stages are called as library functions and each one's result is handed to the next: the trained model to
compress, the chosen variant of the returned `CompressResult` to explain. The run directory is built in
`<out>.partial` (`trainers.RunDir`) and committed once every stage has finished or failed, then the report is
rendered from it; it holds `train/`, `compress/`, `explain/`, `config.json` and `config.yaml` (the resolved
configuration, loadable again with `--config`), `pipeline.json` (stage statuses, times, errors) and the report.

The stages are imported inside functions and `reports` exports this module lazily, so `import reports` (and
rendering a report) stays free of torch.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from trainers.options import as_dict

from .config import PipelineConfig, resolve_config, save_config

STAGES = ("train", "compress", "explain", "report")


@dataclass
class PipelineResult:
    """What `run_pipeline` returns: the run directory, its report and `pipeline.json` (stage statuses)."""

    run_dir: Path
    report: Path | None
    status: dict

    def to_dict(self) -> dict:
        return {**self.status, "run_dir": str(self.run_dir), "report": str(self.report) if self.report else None}

    @property
    def state(self) -> str | None:
        """The run's status: "done", "failed", "interrupted", ... (`status` is the whole pipeline.json)."""
        return self.status.get("status")

    @property
    def stages(self) -> dict:
        """Each stage's status by name, in order: {"train": "done", "compress": "failed", ...}."""
        return {s.get("name"): s.get("status") for s in self.status.get("stages", [])}

    def __repr__(self) -> str:  # one short line, as every stage's result (`trainers.display`); each name an attribute
        from trainers.display import short_repr

        return short_repr("PipelineResult", run_dir=str(self.run_dir), state=self.state, stages=self.stages or None,
                          report=str(self.report) if self.report else None)

    def _repr_html_(self) -> str:
        """The stages' statuses as a table, and a link to the report (a notebook opens it beside the page)."""
        from html import escape

        from trainers.display import frame, html_block

        table = frame(self.status.get("stages", []), ("name", "status", "seconds", "reason"))
        html = html_block(repr(self), table, [f"{e.get('stage')}: {e.get('message')}" for e in self.status.get("errors", [])])
        if self.report is not None:
            html += f'<p><a href="{escape(self.report.as_uri())}" target="_blank">{escape(str(self.report))}</a></p>'
        return html


class PipelineInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the pipeline; the message says which stages finished and where their record is kept."""


class StageFailed(Exception):
    """A stage failed after the pipeline started; the report of what finished was still written.

    Attributes: stage, code (2 bad input, 1 unexpected), result (a PipelineResult); `__cause__` is the error.
    """

    def __init__(self, stage: str, message: str, code: int, result: PipelineResult):
        super().__init__(f"{stage} stage failed: {message}")
        self.stage, self.code, self.result = stage, code, result

    @property
    def report(self) -> Path | None:
        return self.result.report


def run_pipeline(data, family: str, config: PipelineConfig | str | Path | dict | None = None, *,
                 overrides: dict | None = None, out: str | Path | None = None, overwrite: bool = False,
                 progress: Callable[[str], None] | None = None) -> PipelineResult:
    """Train, compress, explain (original and chosen variant, with drift) and report in one run directory.

    Args:
        data: a built-in data set name or a .npz/.csv path.
        family: a registered model family (`trainers.list_models()`), or the user's own model (a `torch.nn.Module`,
            an `.onnx` file or its bytes, an artifact directory, a `LoadedModel`: `trainers.as_model`); an own
            model is not trained: the pipeline compresses, explains and reports it.
        config: a TOML/YAML/JSON file, a dict of sections or a PipelineConfig (see `resolve_config`).
        overrides: dotted keys that win over `config`, e.g. {"train.epochs": 3}.
        out: the run directory (default runs/<time>-pipeline-<family>).
        overwrite: replace an existing run directory (once the new one is complete).
        progress: callable taking one line of progress or a `trainers.progress.ProgressEvent` (default: print
            on stderr).

    Raises:
        ToolkitError: bad input found before anything ran (nothing is written).
        StageFailed: a stage failed; the run directory and the report of what finished are written.
    """
    from trainers import DataBundle, load_data
    from trainers.models import check_model_size
    from trainers.tables import TableOptions
    from trainers.tracking import open_tracker

    say = progress or _to_stderr
    cfg = resolve_config(config, overrides)
    own = _own_model(family)
    _preflight(cfg, None if own else family)
    table = TableOptions(cfg.target, tuple(cfg.keep), tuple(cfg.drop), cfg.sep)
    bundle = data if isinstance(data, DataBundle) else load_data(
        data, seed=cfg.train.seed, table=table, image_size=cfg.image_size)  # bad data: nothing written
    if own:  # the user's model, checked against the data and the requested methods before anything is written
        family = _open_own_model(family, bundle, cfg)
    else:
        check_model_size(family, cfg.train.model, bundle.input_shape, bundle.num_classes)  # allocates nothing
    tracker = open_tracker(cfg.tracking, "pipeline")
    tracker.log_params({"data": _data_label(data), "family": _label(family), **_tracked_options(cfg)})  # a bad URI: nothing written
    with tracker:
        return _run(bundle, data, family, cfg, out, overwrite, say, tracker)


def _run(bundle, data, family, cfg: PipelineConfig, out, overwrite: bool, say, tracker) -> PipelineResult:
    from trainers import RunDir, default_run_dir
    from trainers.data import absolute_source

    label = _label(family)
    run = RunDir(out if out is not None else default_run_dir("pipeline", label), kind="pipeline",
                 overwrite=overwrite, inputs=[data, getattr(family, "origin", None), getattr(family, "path", None)])
    started = time.perf_counter()
    status = {"stage": "pipeline", "status": "running", "data": _data_label(data), "family": label, "stages": [],
              "errors": [], "seconds": None, "report": cfg.report.out}
    results: dict = {}  # stage name -> its result, handed to the next stages
    train = (lambda t: _train(bundle, family, cfg, run, say, t)) if isinstance(family, str) else (
        lambda t: (SimpleNamespace(model=family), f"the user's own model ({family.source}): not trained"))
    steps = {"train": train,
             "compress": lambda t: _compress(results["train"], bundle, cfg, run, say, t),
             "explain": lambda t: _explain(results["train"], results["compress"], bundle, cfg, run, say, t)}
    with run:  # a crash outside the stages leaves nothing behind; an interrupt keeps the record in <out>.partial
        # the data as a command line takes it again from any directory (a relative path made absolute)
        source = absolute_source(_data_label(data))
        save_config(run.path, cfg, data=source, family=label, command=_command(source, label, run.final))
        failure = None
        try:
            for index, (name, step) in enumerate(steps.items(), 1):
                if failure is not None:
                    status["stages"].append({"name": name, "status": "not run", "reason": f"{failure[0]} failed"})
                    continue
                _write_status(run.path, _ahead(status, name))  # what a killed run leaves: this stage running
                failure = _run_stage(index, name, step, results, status, say, tracker)
                if failure is not None:
                    _drop_staging(run.path / name)
                _write_status(run.path, status)
        except KeyboardInterrupt:
            raise _interrupted(run, status, started) from None
        say(f"[{len(STAGES)}/{len(STAGES)}] report ...")
        # rendered once the run is in place (its paths are the final ones); the page shows its own stage as done
        status["stages"].append({"name": "report", "status": "done"})
        status["seconds"] = round(time.perf_counter() - started, 3)
        status["status"] = "failed" if failure else "done"
        _write_status(run.path, status)
        run_dir = run.commit()
    result = PipelineResult(run_dir, None, status)
    result.report = _report(result, cfg.report.out)
    _track_outputs(tracker, result, results.get("compress"))
    if failure is None:
        say(f"pipeline finished in {time.perf_counter() - started:.1f}s")
    else:
        name, message, code, exc = failure
        raise StageFailed(name, message, code, result) from exc
    return result


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _own_model(family) -> bool:
    """The user's own model rather than a family name: anything but a string, or a path to a model."""
    if not isinstance(family, str):
        return True
    return family.lower().endswith(".onnx") or Path(family).is_dir()


def _open_own_model(model, bundle, cfg: PipelineConfig):
    """The user's model as a LoadedModel, checked against the data and every requested method."""
    from compress import check_request
    from explain import get_method
    from trainers.usermodel import as_model

    model = as_model(model, bundle)
    options = cfg.compress
    check_request(options.methods, model, options.max_drop, options.options, options.ratio)
    for method in cfg.explain.methods or ():
        get_method(method)  # unknown: one line (a gradient method on an ONNX graph is routed, not refused)
    return model


def _data_label(data) -> str:
    return data.source or data.name if hasattr(data, "x_test") else str(data)


def _label(family) -> str:
    """A family name, or the family a user's own model records (custom, onnx)."""
    return family if isinstance(family, str) else family.spec.family


def _preflight(cfg: PipelineConfig, family: str | None) -> None:
    """Check the family, the devices and the later stages' methods first: a typo, or a GPU this machine does not
    have, must not cost a training run nor leave a failed run directory. `family` None (the user's own model)
    checks only what needs no model (and no training device: it is not trained)."""
    from compress import check_request
    from explain import get_method
    from trainers import get_family
    from trainers.fit import resolve_device
    from trainers.models import make_config

    options = cfg.compress
    if family is None:
        check_request(options.methods, None, options.max_drop, options.options, options.ratio,
                      options.min_agreement, options.budget_seconds, options.device)
        for method in cfg.explain.methods or ():
            get_method(method)
        return
    get_family(family)
    make_config(family, cfg.train.model, "config train.arch")  # a typo must not wait for the data; named as
    # the pipeline names its other keys, --arch or the file's [train.arch] alike
    resolve_device(cfg.train.device)  # as `toolkit train --device cuda` without a GPU: refused before any work
    check_request(options.methods, family, options.max_drop, options.options, options.ratio, options.min_agreement,
                  options.budget_seconds, options.device)
    for method in cfg.explain.methods or ():
        get_method(method, family)  # unknown, or refused for the family: one line


def _command(data, family: str, run_dir: Path) -> str:
    return shlex.join(["toolkit", "pipeline", str(data), "--model", family, "--config", str(run_dir / "config.yaml"),
                       "--out", str(run_dir.with_name(run_dir.name + "-rerun"))])


def _ahead(status: dict, current: str) -> dict:
    """The status as it stands while `current` runs: it running, the stages after it pending."""
    names = [s["name"] for s in status["stages"]]
    later = [n for n in STAGES if n not in names and n != current]
    return {**status, "stages": [*status["stages"], {"name": current, "status": "running"},
                                 *({"name": n, "status": "pending"} for n in later)]}


def _signal_name() -> str:
    """What stopped the run, as pipeline.json records it: Ctrl-C, or SIGTERM (`kill`, a timeout)."""
    from trainers.errors import interrupted_by

    return "SIGTERM" if interrupted_by() == "SIGTERM" else "Ctrl-C"


def _interrupted(run, status: dict, started: float) -> PipelineInterrupted:
    """Record the interrupt in `<out>.partial/pipeline.json` and keep that directory; the previous run stays."""
    names = [s["name"] for s in status["stages"]]
    current = next(n for n in STAGES if n not in names)
    seconds = status.pop("_stopped_after", None)  # None: stopped between stages
    status["stages"].append({"name": current, "status": "interrupted", "seconds": seconds, "reason": _signal_name()})
    status["stages"] += [{"name": n, "status": "not run", "reason": f"interrupted during {current}"}
                         for n in STAGES if n not in names and n != current]
    status.update(status="interrupted", seconds=round(time.perf_counter() - started, 3))
    _write_status(run.path, status)
    run.keep_on_error = True
    finished = ", ".join(n for n in names if n != current) or "none"
    kept = f"; the previous run in {run.final} is unchanged" if run.final.exists() else ""
    return PipelineInterrupted(f"during the {current} stage (stages finished: {finished}); its record is kept in "
                               f"{run.staging}{kept}")


def _run_stage(index: int, name: str, step, results: dict, status: dict, say, tracker):
    """Run one stage, record its status; returns (name, message, code, error) when it failed, else None."""
    say(f"[{index}/{len(STAGES)}] {name} ...")
    tick = time.perf_counter()
    try:
        with tracker.child(name) as stage_tracker:  # one run per stage, nested under the pipeline's
            results[name], reason = step(stage_tracker)
    except KeyboardInterrupt:
        status["_stopped_after"] = round(time.perf_counter() - tick, 3)  # the interrupted stage's time (`_interrupted`)
        raise
    except Exception as exc:  # recorded and reported; run_pipeline raises StageFailed at the end
        message, code = _described(exc)
        status["stages"].append({"name": name, "status": "failed", "seconds": round(time.perf_counter() - tick, 3),
                                 "reason": message})
        status["errors"].append({"stage": name, "message": message, "code": code})
        return name, message, code, exc  # the caller's one error line says it
    seconds = round(time.perf_counter() - tick, 3)
    status["stages"].append({"name": name, "status": "done", "seconds": seconds, "reason": reason})
    say(f"[{index}/{len(STAGES)}] {name} done in {seconds:.1f}s: {reason}")
    return None


def _drop_staging(stage_dir: Path) -> None:
    """Remove a failed stage's staging directory: train keeps it, with its checkpoint, for `train --resume`, which
    a pipeline has not; committed inside the finished pipeline run it was dead weight listed in the marker."""
    from trainers.rundir import is_run_dir

    staging = stage_dir.with_name(stage_dir.name + ".partial")
    if is_run_dir(staging):
        shutil.rmtree(staging, ignore_errors=True)


def _described(exc: Exception) -> tuple[str, int]:
    """A failed stage's one-line message and exit code: 2 for bad input, 1 (with the error's type) otherwise."""
    from trainers.errors import describe

    return describe(exc)


def _train(bundle, family: str, cfg: PipelineConfig, run, say, tracker):
    from trainers import load_model, train

    # On Ctrl-C train keeps its best model and raises TrainingInterrupted, a KeyboardInterrupt: the pipeline stops
    result = train(bundle, family, cfg.train, out=run.path / "train", progress=_indented(say), tracker=tracker)
    # Later stages take the saved artifact (CPU, as a user would load it). The paths they record (lineage,
    # result.json) name where it lives once the run directory is committed.
    result.model = load_model(result.out)
    result.model.path = run.final / "train"
    m = result.metrics
    return result, f"test accuracy {m['test_accuracy']:.4f} after {result.epochs_run} epochs"


def _compress(trained, bundle, cfg: PipelineConfig, run, say, tracker):
    from compress import compress_model

    result = compress_model(trained.model, bundle, **as_dict(cfg.compress), out=run.path / "compress",
                            progress=_indented(say), tracker=tracker)
    return result, f"chosen variant {result.chosen.name}"


def _explain(trained, compressed, bundle, cfg: PipelineConfig, run, say, tracker):
    from explain import explain_model

    chosen = compressed.chosen
    compare = [] if chosen is compressed.baseline else [chosen.model]
    result = explain_model(trained.model, bundle, **as_dict(cfg.explain), compare=compare, out=run.path / "explain",
                           progress=_indented(say), tracker=tracker)
    return result, f"drift against {chosen.name}" if compare else "the original was chosen: no variant to compare"


def _tracked_options(cfg: PipelineConfig) -> dict:
    return {key: value for key, value in cfg.to_dict().items() if key != "tracking"}


def _track_outputs(tracker, result: PipelineResult, compressed) -> None:
    """The report, the model card, the resolved config and the chosen variant (its ONNX file where it has one)."""
    for name in (result.report.name, "MODEL_CARD.md", "report.json", "config.yaml"):
        tracker.log_artifact(result.run_dir / name)
    if compressed is not None and compressed.chosen is not None:
        chosen = compressed.paths.get(compressed.chosen.name)  # none when the original stayed the best
        directory = result.run_dir / "compress" / chosen if chosen else result.run_dir / "train"
        tracker.log_artifact(directory, f"chosen/{compressed.chosen.name}")


def _indented(say):
    """Plain lines indented under their stage; progress events passed on as they are (a renderer may draw bars)."""
    from trainers.progress import ProgressEvent

    return lambda message: say(message if isinstance(message, ProgressEvent) else f"      {message}")


def _write_status(directory: Path, status: dict) -> None:
    """`pipeline.json`, through its typed definition (`trainers.schema.PipelineFile`)."""
    from trainers.fileio import atomic_write_json
    from trainers.schema import PipelineFile

    atomic_write_json(directory / "pipeline.json", PipelineFile.model_validate(status).dump())


def _report(result: PipelineResult, name: str) -> Path:
    """Render the committed run directory; a failure is recorded in pipeline.json and raised as StageFailed."""
    from .render import render_report

    tick = time.perf_counter()
    try:
        return render_report(result.run_dir, result.run_dir / name)
    except KeyboardInterrupt:
        result.status["stages"][-1].update(status="interrupted", reason=_signal_name(),
                                           seconds=round(time.perf_counter() - tick, 3))
        result.status["status"] = "interrupted"  # not "done": the run has no report (its errors list keeps a failure)
        _write_status(result.run_dir, result.status)
        raise PipelineInterrupted(f"during the report, after every stage finished: the new run is in "
                                  f"{result.run_dir}; `toolkit report {result.run_dir}` renders it") from None
    except Exception as exc:
        message, code = _described(exc)
        result.status["stages"][-1].update(status="failed", reason=message,
                                           seconds=round(time.perf_counter() - tick, 3))
        result.status["status"] = "failed"
        result.status["errors"].append({"stage": "report", "message": message, "code": code})
        _write_status(result.run_dir, result.status)
        raise StageFailed("report", message, code, result) from exc
