"""Run directories: each stage builds its output in `<out>.partial` and commits it at the end.

A run killed half-way leaves only the `.partial` directory (which `--resume`
picks up); the previous contents of `<out>`, if any, stay intact until the new
run is complete.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .errors import ToolkitError
from .fileio import atomic_write_json, commit_directory, ensure_writable_parent


def default_run_dir(stage: str, family: str | None = None, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / "-".join(p for p in (stamp, stage, family) if p)


class RunDir:
    """One stage's output directory, written in a staging copy until `commit()`.

    Args:
        out: the final directory.
        overwrite: replace an existing non-empty `out` (only once the new run is complete).
        resume: continue from the staging directory of an interrupted run.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, resume: bool = False):
        self.final = Path(out)
        self.staging = self.final.with_name(self.final.name + ".partial")
        self.resumed = False
        self.keep_on_error = False
        if self.final.exists() and not self.final.is_dir():
            raise ToolkitError(f"output path exists and is not a directory: {self.final}")
        ensure_writable_parent(self.final)
        occupied = self.final.is_dir() and any(self.final.iterdir())
        if resume:
            self._prepare_resume()
        elif occupied and not overwrite:
            raise ToolkitError(f"output directory {self.final} already exists; pass --overwrite to replace it")
        else:
            if self.staging.exists() and not self.staging.is_dir():
                raise ToolkitError(f"{self.staging} is in the way of the run's staging directory: "
                                   "move or remove that file")
            if self.staging.exists():
                shutil.rmtree(self.staging)
            try:
                self.staging.mkdir(parents=True)
            except OSError as exc:
                raise ToolkitError(f"cannot create output directory {self.staging}: {exc.strerror}") from None

    def _prepare_resume(self) -> None:
        if self.staging.is_dir():
            self.resumed = True
        elif (self.final / "checkpoint.pt").is_file():
            shutil.copytree(self.final, self.staging)
            self.resumed = True
        else:
            raise ToolkitError(f"nothing to resume: no interrupted run at {self.final}")
        self.keep_on_error = True

    @property
    def path(self) -> Path:
        """Where the stage writes now (the staging directory)."""
        return self.staging

    def write_json(self, name: str, obj) -> Path:
        target = self.staging / name
        atomic_write_json(target, obj)
        return target

    def commit(self) -> Path:
        commit_directory(self.staging, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.staging.exists() and not self.keep_on_error:
            self.discard()
        return False
