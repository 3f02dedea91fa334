"""Experiment tracking: one small `Tracker` interface, with MLflow and TensorBoard behind it, no-op by default.

The stages call `tracker.log_params`, `log_metrics` (per epoch, per variant) and `log_artifact`; which
backends listen is decided once, by `open_tracker(TrackingOptions(...), name)`:

- MLflow when `TrackingOptions.mlflow` names a tracking URI, or else the `MLFLOW_TRACKING_URI` environment
  variable is set (MLflow's own convention); a stage run is nested under its pipeline run (`child`);
- TensorBoard scalars when `TrackingOptions.tensorboard` names a directory: one event-file folder per run,
  `DIR/<time>-<name>` and, for a pipeline, its stages beside each other under it.

Neither library is imported unless asked for, and a run is created at its first record, so a process that
never logs (a torchrun rank other than 0) leaves no empty run behind. A tracker is a context manager: leaving
it ends the run as finished, failed (an error) or killed (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ToolkitError
from .options import FORBID_EXTRA, Str

ENV_URI = "MLFLOW_TRACKING_URI"
_PARAM_LIMIT = 6000  # MLflow's longest parameter value
_KEY_LIMIT = 250  # MLflow's longest metric or parameter name
_OUTSIDE_KEY = re.compile(r"[^\w\-./]")  # what both MLflow (on every OS) and TensorBoard's tags take


@dataclass
class TrackingOptions:
    """Where runs are tracked (the `[tracking]` section of a pipeline config, `--mlflow`, `--tensorboard`).

    Attributes:
        mlflow: an MLflow tracking URI (`sqlite:///mlflow.db`, `http://host:5000`, `file:///path/mlruns`);
            default: the MLFLOW_TRACKING_URI environment variable, if set.
        experiment: the MLflow experiment the runs go into (created when missing).
        tensorboard: a directory for TensorBoard event files.
    """

    __pydantic_config__ = FORBID_EXTRA

    mlflow: Str | None = None
    experiment: Str = "toolkit"
    tensorboard: Str | None = None


class Tracker(Protocol):
    """What a stage may record; every backend (and the no-op default) answers the same calls."""

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None: ...

    def child(self, name: str) -> "Tracker": ...

    def finish(self, status: str = "FINISHED") -> None: ...


class _Run:
    """Context-manager behaviour shared by the trackers: the run ends with the block's outcome, unless it was
    ended already (`train` ends its run as killed when Ctrl-C stopped the loop and it returned normally)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        self.finish("FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
        return False


class NullTracker(_Run):
    """Records nothing: what the stages get when no tracking was asked for."""

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def child(self, name: str) -> "NullTracker":
        return self

    def finish(self, status: str = "FINISHED") -> None:
        pass


def open_tracker(options: TrackingOptions | None, name: str) -> Tracker:
    """The tracker `options` ask for (MLflow, TensorBoard, both, or none), for a run called `name`.

    Each backend is checked here, before the stage's work, so a store that cannot record (a refused URI, a
    server that does not answer) is one ToolkitError before a run directory is written or committed. Ranks
    other than torchrun's 0 skip the check: they never record (`train` gives them a NullTracker).
    """
    from .distributed import env_context

    options = options or TrackingOptions()
    uri = options.mlflow or os.environ.get(ENV_URI) or None
    backends: list = []
    if uri:
        from .mlflow_tracker import MLflowTracker

        backends.append(MLflowTracker(uri, options.experiment, name))
    if options.tensorboard:
        backends.append(TensorBoardTracker(_fresh_folder(Path(options.tensorboard).expanduser(), name)))
    if not backends:
        return NullTracker()
    if env_context().is_main:
        for backend in reversed(backends):  # TensorBoard's check first: it makes nothing, MLflow's may make a store
            backend.check()
    return backends[0] if len(backends) == 1 else _Both(backends)


_handed_out: set[Path] = set()


def _fresh_folder(root: Path, name: str) -> Path:
    """`root/<time>-<name>`, with `-2`, `-3`... where that folder exists or this process handed it out already:
    runs started in the same second (a notebook's loop) would share one folder, which TensorBoard shows as one
    run. The folder itself is made at the run's first record."""
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    folder, n = root / base, 1
    while folder in _handed_out or folder.exists():
        n += 1
        folder = root / f"{base}-{n}"
    _handed_out.add(folder)
    return folder


class _Both(_Run):
    """MLflow and TensorBoard together: every call reaches each backend, then the first error is raised, so a
    store that fails (a server gone) neither costs the other its record nor leaves its event file open."""

    def __init__(self, backends: list):
        self.backends = backends

    def _each(self, call) -> None:
        first = None
        for backend in self.backends:
            try:
                call(backend)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def log_params(self, params: dict) -> None:
        self._each(lambda b: b.log_params(params))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._each(lambda b: b.log_metrics(metrics, step))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._each(lambda b: b.log_artifact(path, folder))

    def child(self, name: str) -> "_Both":
        return _Both([b.child(name) for b in self.backends])

    def finish(self, status: str = "FINISHED") -> None:
        self._each(lambda b: b.finish(status))


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested options as `section.key` pairs (lists and other leaves kept as they are)."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numbers(values: dict) -> dict:
    """The finite numbers among `values` (booleans as 0/1); text, lists and None are left out."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class _Keys:
    """Metric and parameter names as the backends take them, one instance per run.

    MLflow refuses a name with a character outside letters, digits, `_ - . / : space` (`:` not on Windows), so
    the `+` of a variant `prune-structured-20-uniform+int8-dynamic-onnx.accuracy` or the brackets of a compared
    folder `v(int8)` failed the whole run. Here `+` becomes `_plus_` and any other such character (or `:` and
    space) `_`, a name that would read as another path (`a//b`, `./a`) loses its `/`, and a name that then
    repeats one already given gets `-2`, `-3`... Each name keeps its key for the run, so a per-epoch curve
    stays one metric; TensorBoard gets the same keys, so one figure has one name in both.
    """

    def __init__(self):
        self._given: dict[str, str] = {}
        self._taken: set[str] = set()

    def __call__(self, name: str) -> str:
        if name not in self._given:
            key = _valid_key(name)
            base, n = key, 1
            while key in self._taken:
                n += 1
                key = f"{base[:_KEY_LIMIT - len(str(n)) - 1]}-{n}"
            self._given[name] = key
            self._taken.add(key)
        return self._given[name]


def _valid_key(name: str) -> str:
    key = _OUTSIDE_KEY.sub("_", name.replace("+", "_plus_"))
    if posixpath.normpath(key) != key or key.startswith((".", "/")):
        key = key.replace("/", "_").lstrip(".") or "_"
    return key[:_KEY_LIMIT]


def _param_text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_PARAM_LIMIT]


class TensorBoardTracker(_Run):
    """Scalars in a TensorBoard event file under `directory` (a stage's run in a sub-folder)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._writer = None
        self._tag = _Keys()

    def _open(self):
        if self._writer is None:
            self._writer = _summary_writer()(log_dir=str(self.directory))
        return self._writer

    def log_params(self, params: dict) -> None:
        rows = "\n".join(f"| {key} | {_param_text(value)} |" for key, value in flatten(params).items())
        self._open().add_text("params", "| option | value |\n| --- | --- |\n" + rows)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        writer = self._open()
        for key, value in numbers(metrics).items():
            writer.add_scalar(self._tag(key), value, step or 0)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass  # TensorBoard keeps scalars; the files stay in the run directory

    def child(self, name: str) -> "TensorBoardTracker":
        return TensorBoardTracker(self.directory / name)

    def check(self) -> None:
        """The package is there and the folder can be made: the nearest existing one is a writable directory (a
        path under a regular file failed at the first record, NotADirectoryError, after compress committed), and
        making the folder works: it is made and removed again, since os.access called /proc writable (for root)
        and the first record then failed there, FileNotFoundError, exit 1."""
        _summary_writer()
        existing = next(p for p in (self.directory, *self.directory.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            why = "is not a directory" if not existing.is_dir() else "cannot be written"
            raise ToolkitError(f"tensorboard directory {self.directory.parent}: {existing} {why}")
        missing = [p for p in (self.directory, *self.directory.parents) if p.is_relative_to(existing) and p != existing]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolkitError(f"tensorboard directory {self.directory}: cannot be made in {existing} "
                               f"({exc.strerror or exc})") from None
        finally:
            for folder in missing:  # the deepest first: only what this check made
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def finish(self, status: str = "FINISHED") -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# The `tracking` extra of pyproject.toml, one package at a time: the name `toolkit` is taken on the public index,
# so `pip install 'toolkit[tracking]'` would install an unrelated package and neither of these.
TRACKING_REQUIREMENTS = {"mlflow": "mlflow>=2.16", "tensorboard": "tensorboard>=2.14"}


def install_hint(package: str) -> str:
    """A pip command that installs `package` as the tracking extra pins it, wherever the toolkit came from."""
    return f"pip install '{TRACKING_REQUIREMENTS[package]}'"


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ToolkitError(f"TensorBoard logging needs the tensorboard package: {install_hint('tensorboard')}") from None
    return SummaryWriter


# What each stage records, read from its result file's object (trainers.schema), so a stage needs one call.
_VARIANT_KEYS = ("accuracy", "accuracy_drop", "size_bytes", "size_ratio", "parameters", "latency_ms", "speedup",
                 "slower_than_fp32", "within_budget", "twin_agreement")
_DRIFT_KEYS = ("accuracy_drop", "topk_overlap", "cosine", "spearman", "sign_agreement", "flag")


def epoch_metrics(row: dict) -> dict:
    """One history row of the training loop, without its epoch number (the step)."""
    return {key: value for key, value in row.items() if key != "epoch"}


def train_metrics(result: dict) -> dict:
    """A train result's final numbers: the kept weights' losses and accuracies per split as `final.<split>_<name>`
    (apart from the per-epoch curves of the same names), epochs run, best epoch, and the run's seconds as
    `total_seconds` (each epoch's own `seconds` is a curve)."""
    final = {f"final.{key}": value for key, value in result["metrics"].items()}
    return numbers({**final, "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
                    "total_seconds": result["seconds"]})


def compress_metrics(result: dict) -> dict:
    """Each variant's measurements as `<variant>.<measure>` (latency as `<variant>.latency_ms.b256_t1.p50`)."""
    rows = {row["name"]: {key: row.get(key) for key in _VARIANT_KEYS} for row in result["variants"]}
    return numbers(flatten(rows))


def explain_metrics(result: dict) -> dict:
    """Each method's quality figures (`quality.<method>.<figure>`) and drift (`drift.<variant>.<method>.<figure>`)."""
    drift = {f"{row['variant']}.{row['method']}": {key: row.get(key) for key in _DRIFT_KEYS}
             for row in result["drift"]["rows"]}
    return numbers(flatten({"quality": result["quality"], "drift": drift}))
