"""Run directories: each stage builds its output in `<out>.partial` and commits it at the end.

A run killed half-way leaves only the `.partial` directory (which `--resume`
picks up); the previous contents of `<out>`, if any, stay intact until the new
run is complete.

The toolkit deletes or replaces only what it can prove it wrote: every run directory carries a marker
file (`.toolkit-run.json`, with the run's kind), and a directory without one is never replaced, whatever
`--overwrite` says. `--out` may not be the current directory, the input, a directory holding the input or a
path inside it. A symlinked `--out` is resolved once and written through (the link itself stays). One lock
per run directory (`.<name>.lock` beside it, `filelock`) refuses a second run into the same place at once.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterable

from .errors import ToolkitError
from .fileio import atomic_write_json, commit_directory, ensure_writable_parent, interrupts_deferred

MARKER = ".toolkit-run.json"
CHECKPOINT = "checkpoint.pt"


def default_run_dir(stage: str, family: str | None = None, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / "-".join(p for p in (stamp, stage, family) if p)


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a directory the toolkit wrote (it holds the run marker as a regular file)."""
    marker = Path(path) / MARKER
    return Path(path).is_dir() and marker.is_file() and not marker.is_symlink()


def resolve_out(out: str | Path) -> Path:
    """The absolute output directory, its symlinks resolved once; one ToolkitError line for a place never to use."""
    given = Path(out)
    if given.is_symlink() and not given.exists():
        raise ToolkitError(f"output directory {out} is a symlink to a missing {os.readlink(given)}: "
                           "create the target or remove the link")
    final = given.resolve()
    here = Path.cwd().resolve()
    if final == here or final in here.parents or not final.name:
        where = "the current directory" if final == here else "a parent of the current directory"
        raise ToolkitError(f"output directory {out} is {where}: choose a new directory for the run")
    return final


def refuse_inputs(final: Path, inputs: Iterable) -> None:
    """Refuse an output directory that is an input, holds one, or lies inside one (the input would change)."""
    for item in inputs:
        if item is None or not isinstance(item, (str, Path)) or not Path(item).exists():
            continue
        source = Path(item).resolve()
        if final == source:
            raise ToolkitError(f"output directory {final} is the input {item} itself: choose another --out")
        if source.is_relative_to(final):
            raise ToolkitError(f"output directory {final} holds the input {item}: choose another --out")
        if final.is_relative_to(source):
            raise ToolkitError(f"output directory {final} is inside the input {item}: choose another --out")


class RunDir:
    """One stage's output directory, written in a staging copy until `commit()`.

    Args:
        out: the final directory.
        kind: the stage that writes it (recorded in the run marker).
        overwrite: replace an existing run directory of the toolkit (only once the new run is complete).
        resume: continue from the staging directory of an interrupted run.
        inputs: the paths the stage reads (data file, model directories); `out` may not touch them.
    """

    def __init__(self, out: str | Path, *, kind: str = "run", overwrite: bool = False, resume: bool = False,
                 inputs: Iterable = ()):
        self.kind = kind
        self.final = resolve_out(out)
        self.staging = self.final.with_name(self.final.name + ".partial")
        self.resumed = False
        self.keep_on_error = False
        self._lock = None
        refuse_inputs(self.final, inputs)
        if self.final.exists() and not self.final.is_dir():
            raise ToolkitError(f"output path exists and is not a directory: {self.final}")
        ensure_writable_parent(self.final)
        self._acquire()
        try:
            self._restore_hidden_previous()
            self._check_final(overwrite, resume)
            self._prepare_resume() if resume else self._prepare_staging(overwrite)
        except BaseException:
            self._release()
            raise

    def _acquire(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(self.final.with_name(f".{self.final.name}.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ToolkitError(f"another toolkit run is writing {self.final} right now: wait for it to finish "
                               "or choose another --out") from None
        except OSError as exc:
            raise ToolkitError(f"cannot lock output directory {self.final}: {exc.strerror}") from None
        self._lock = lock

    def _release(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            Path(self._lock.lock_file).unlink(missing_ok=True)  # while held: a waiter sees an unlinked file, retries
            self._lock.release()
        self._lock = None

    def _restore_hidden_previous(self) -> None:
        """Finish a commit that was killed between its two renames (the previous run hidden as `.NAME.old-PID`)."""
        hidden = sorted((p for p in self.final.parent.glob(f".{self.final.name}.old-*") if is_run_dir(p)),
                        key=lambda p: p.stat().st_mtime)
        if hidden and not self.final.exists():
            os.replace(hidden.pop(), self.final)
        for leftover in hidden:
            shutil.rmtree(leftover, ignore_errors=True)

    def _check_final(self, overwrite: bool, resume: bool) -> None:
        if not (self.final.is_dir() and any(self.final.iterdir())):
            return
        if not is_run_dir(self.final):
            raise ToolkitError(f"output directory {self.final} already exists and was not written by the toolkit "
                               f"(no {MARKER}): it is never replaced; choose another --out")
        if resume or overwrite:
            return
        if (self.final / CHECKPOINT).is_file():
            raise ToolkitError(f"output directory {self.final} holds an interrupted run with a checkpoint: "
                               "pass --resume to continue it, or --overwrite to replace it")
        raise ToolkitError(f"output directory {self.final} already exists; pass --overwrite to replace it")

    def _prepare_resume(self) -> None:
        if self.staging.is_symlink():
            raise ToolkitError(f"{self.staging} is a symlink: remove it, the toolkit stages runs in a real directory")
        if self.staging.is_dir():
            self.keep_on_error = True  # the only copy of the interrupted run
        elif (self.final / CHECKPOINT).is_file():
            shutil.copytree(self.final, self.staging)  # a copy: a refused resume drops it, the run stays in final
        else:
            raise ToolkitError(f"nothing to resume: no interrupted run at {self.final}")
        self.resumed = True

    def _prepare_staging(self, overwrite: bool) -> None:
        staging = self.staging
        if staging.is_symlink():
            raise ToolkitError(f"{staging} is a symlink: remove it, the toolkit stages runs in a real directory")
        if staging.exists() and not staging.is_dir():
            raise ToolkitError(f"{staging} is in the way of the run's staging directory: move or remove that file")
        if staging.is_dir() and any(staging.iterdir()):
            if not is_run_dir(staging):
                raise ToolkitError(f"{staging} already exists and was not written by the toolkit (no {MARKER}): "
                                   "move it away")
            if (staging / CHECKPOINT).is_file() and not overwrite:
                raise ToolkitError(f"{staging} holds an interrupted run's checkpoint: pass --resume to continue it, "
                                   "or --overwrite to discard it")
        if staging.exists():
            shutil.rmtree(staging)
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise ToolkitError(f"cannot create output directory {staging}: {exc.strerror}") from None
        atomic_write_json(staging / MARKER, {"kind": self.kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    @property
    def path(self) -> Path:
        """Where the stage writes now (the staging directory)."""
        return self.staging

    def write_json(self, name: str, obj) -> Path:
        target = self.staging / name
        atomic_write_json(target, obj)
        return target

    def commit(self) -> Path:
        """Move the finished run into place (Ctrl-C waits until it is), then release the lock."""
        try:
            with interrupts_deferred():
                commit_directory(self.staging, self.final)
        finally:
            self._release()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self._release()

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.staging.exists() and not self.keep_on_error:
            self.discard()
        self._release()
        return False
