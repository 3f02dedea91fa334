"""The MLflow backend of `trainers.tracking`: one run per stage through `MlflowClient`, checked before the work.

Kept apart from the interface so that `tracking.py` reads as what every backend shares; MLflow itself is imported
only when a run is checked or recorded.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ToolkitError
from .tracking import _Keys, _param_text, _Run, flatten, install_hint, numbers


@contextmanager
def _mlflow_errors(uri: str):
    """Any error of MLflow's (a refused URI, a store it cannot open, an unreachable server) as one line."""
    try:
        yield
    except ToolkitError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ToolkitError(f"mlflow tracking at {uri}: {first}") from None


# For the up-front check only, where the caller set neither: a server that refuses (http://127.0.0.1:9) took
# 259 s of MLflow's default retries with back-off before its error, 1.2 s with these (MLflow's import included);
# the run's own records keep the defaults.
_CHECK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextmanager
def _bounded_requests():
    unset = [name for name in _CHECK_REQUESTS if name not in os.environ]
    os.environ.update({name: _CHECK_REQUESTS[name] for name in unset})
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


@contextmanager
def _quiet():
    """No INFO lines of MLflow's while it opens a store (a new SQLite file: `Creating initial MLflow database
    tables...`, `Updating database tables`), from Python as from the command line; the levels are given back."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _callers_run(uri: str):
    """The caller's active run (a notebook's `with mlflow.start_run():`) where it is in the store at `uri`: the
    toolkit's run goes under it, in its experiment, instead of top-level in `toolkit` beside it."""
    import mlflow

    run = mlflow.active_run()
    return run if run is not None and mlflow.get_tracking_uri() == uri else None


class MLflowTracker(_Run):
    """One MLflow run, created at its first record through `MlflowClient` (no global active run is touched);
    nested under the pipeline's run (`child`) or the caller's active run (`_callers_run`)."""

    def __init__(self, uri: str, experiment: str, name: str, parent: "MLflowTracker | None" = None):
        self.uri, self.experiment, self.name, self.parent = uri, experiment, name, parent
        self._client = None  # made by `_connect`, with the experiment's id and the parent run's
        self.experiment_id = self.parent_id = self.run_id = None
        self._ended = False
        self._metric_key, self._param_key = _Keys(), _Keys()

    def check(self) -> None:
        """Open the store and find or make the experiment now, before the stage's work (`open_tracker`)."""
        with _bounded_requests():
            self._connect()

    def _connect(self) -> None:
        if self._client is not None:
            return
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ToolkitError(f"MLflow tracking needs the mlflow package: {install_hint('mlflow')}") from None
        with _mlflow_errors(self.uri), _quiet():
            if self.parent is not None:
                self.parent_id, self.experiment_id = self.parent._start(), self.parent.experiment_id
                self._client = self.parent._client
            else:
                client = MlflowClient(tracking_uri=self.uri)
                caller = _callers_run(self.uri)
                if caller is not None:
                    self.parent_id, self.experiment_id = caller.info.run_id, caller.info.experiment_id
                else:
                    found = client.get_experiment_by_name(self.experiment)
                    self.experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
                self._client = client

    def _start(self) -> str:
        if self.run_id is None:
            self._connect()
            tags = {"mlflow.runName": self.name, **({"mlflow.parentRunId": self.parent_id} if self.parent_id else {})}
            with _mlflow_errors(self.uri):
                self.run_id = self._client.create_run(self.experiment_id, tags=tags, run_name=self.name).info.run_id
        return self.run_id

    def log_params(self, params: dict) -> None:
        run_id = self._start()  # first: it says in one line when mlflow is missing
        from mlflow.entities import Param

        flat = [Param(self._param_key(key), _param_text(value)) for key, value in flatten(params).items()]
        for i in range(0, len(flat), 100):  # MLflow takes at most 100 parameters per batch
            self._client.log_batch(run_id, params=flat[i:i + 100])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        run_id = self._start()  # first: it says in one line when mlflow is missing
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        rows = [Metric(self._metric_key(key), value, stamp, step or 0) for key, value in numbers(metrics).items()]
        for i in range(0, len(rows), 1000):
            self._client.log_batch(run_id, metrics=rows[i:i + 1000])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.exists():
            run_id = self._start()
            log = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
            log(run_id, str(path), folder)

    def child(self, name: str) -> "MLflowTracker":
        return MLflowTracker(self.uri, self.experiment, name, parent=self)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None and not self._ended:  # the first end stands
            self._ended = True
            self._client.set_terminated(self.run_id, status)
