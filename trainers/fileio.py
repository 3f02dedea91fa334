"""Atomic writes: a file or a whole directory appears complete or not at all.

Every stage writes through these helpers, so an interrupted run (Ctrl-C,
SIGKILL, a full disk) never leaves a half-written artifact where a finished one
is expected.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .errors import ToolkitError, parse_failure

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def naming(path: str | Path):
    """An OSError in the block names `path` where it names no file: a failed write() or fsync() names none, and a
    full disk or a file-size limit read "cannot write: File too large", which file unsaid."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path` (mkstemp), named `.NAME.PID.XXXXXXXX.tmp` after this process, once the
    ones of that name that a process no longer running left are removed: a `predict --out F` killed by SIGKILL
    left its hidden, partly written `.F.*.tmp`, which no later run removed. A name too long for the PID keeps
    the form `.NAME.XXXXXXXX.tmp`, which is never taken for a stale one."""
    _remove_stale_temporaries(path)
    pid = f"{os.getpid()}." if len(os.fsencode(path.name)) + 30 <= 255 else ""
    return tempfile.mkstemp(prefix=f".{path.name}.{pid}", suffix=".tmp", dir=path.parent)


def _remove_stale_temporaries(path: Path) -> None:
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}\.tmp$")
    with contextlib.suppress(OSError):
        for found in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            owner = pattern.match(found.name)
            if owner and int(owner.group(1)) != os.getpid() and not _running(int(owner.group(1))):
                found.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no PID at all: left alone
        return True
    return True


def _staged(path: Path, data: bytes, staged: list) -> None:
    """Write `data` to a temporary file beside `path` and fsync it; (temporary name, path) goes into `staged`
    before anything is written, so the caller removes it whatever happens."""
    fd, tmp = _temporary(path)
    staged.append((tmp, path))
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artifacts follow the umask
    with naming(path), os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    staged: list = []
    try:
        _staged(Path(path), data, staged)
        os.replace(staged[0][0], path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_all(files: dict[Path, bytes]) -> None:
    """Write several files as one: each to a temporary file beside it first, and only when every one is on disk
    rename them all into place (Ctrl-C waits for the renames). A file that cannot be written (a read-only or
    immutable folder, a full disk) is one line, and none of them is replaced."""
    staged: list[tuple[str, Path]] = []
    path = None
    try:
        for path, data in files.items():
            _staged(path, data, staged)
        with interrupts_deferred():
            for tmp, path in staged:
                os.replace(tmp, path)
    except OSError as exc:
        raise ToolkitError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """A binary handle on a temporary file beside `path`, fsynced and renamed over `path` when the block ends
    without an error, removed otherwise: a file written as it is computed (predictions streamed a chunk at a
    time) appears complete or not at all."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs follow the umask
        with naming(path), os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path, what: str = "file", *, constants_as_none: bool = False) -> dict:
    """Read a JSON object, turning every failure into one clear ToolkitError (NaN/Infinity as None if asked)."""
    obj = load_json(path, what, constants_as_none=constants_as_none)
    if not isinstance(obj, dict):
        raise ToolkitError(f"{what} {path} does not hold a JSON object")
    return obj


def load_json(path: str | Path, what: str = "file", *, constants_as_none: bool = False):
    """Decode a JSON file: not found, a directory, unreadable, or too deeply nested are each one ToolkitError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"),
                          parse_constant=(lambda name: None) if constants_as_none else None)
    except FileNotFoundError:
        raise ToolkitError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ToolkitError(f"{what} is a directory, expected a file: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ToolkitError(f"cannot read {what} {path}: {exc}") from None
    except (RecursionError, MemoryError) as exc:  # nesting or sizes a JSON file has no business with
        raise ToolkitError(f"cannot read {what} {path}: " + parse_failure(exc)) from None


def check_regular_file(path: str | Path, what: str = "file", error: type = ToolkitError) -> None:
    """Refuse, in one `error` line, a path that is missing or is no regular file once links are followed: reading
    a FIFO blocks until a writer comes (the toolkit hung on `mkfifo data.csv`), and /dev/zero never ends (a
    config linked to it was read until memory ran out)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise error(f"{what} {path} is {kind}; expected a regular file")


class ReplaceRefused(Exception):
    """The directory found at a commit's `final` is not the one its run may replace (`commit_directory`)."""


def commit_directory(staging: Path, final: Path, *, last: str | None = None,
                     replaceable: Callable[[Path], str | None] | None = None) -> None:
    """Move a finished staging directory to `final`, replacing what was there.

    The old directory is renamed aside first and removed only after the new one
    is in place, so at every instant one complete version exists on disk; if the
    second rename fails, the old one is put back.

    An existing empty `final` is kept and filled instead (`fill_directory`): renaming it aside would replace the
    user's directory (its owner, mode, ACLs, setgid group) by a new one, and a mount point (a container's volume)
    cannot be renamed at all (EBUSY, after the whole run). `last` names the entry whose arrival completes it.

    `replaceable` says why the old directory, once renamed aside (where no one adds to it by its name any more),
    may not be deleted, or None: given a reason, it is put back and ReplaceRefused raised. A user's folder that
    appeared at `final` while the run was made was deleted with the user's files.
    """
    staging, final = Path(staging), Path(final)
    if final.is_dir() and not final.is_symlink() and not any(final.iterdir()):
        fill_directory(staging, final, last)
        return
    old = None
    if os.path.lexists(final):
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        why = replaceable(old) if replaceable is not None else None
        if why is not None:
            os.replace(old, final)
            raise ReplaceRefused(why)
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fill_directory(staging: Path, final: Path, last: str | None = None) -> None:
    """Move every entry of `staging` into the directory `final`, `last` after all the others, then remove `staging`:
    all or nothing.

    Each entry is renamed in, or where `final` is another filesystem (a mount point) copied in under a temporary name
    and renamed into place, its source kept until every entry has arrived. A failure (a full disk) takes back what
    was placed, so `final` is as it was and the whole run is still in `staging`: a full volume once kept half a
    model in `--out` and the other half in `.partial`. `last` is the directory's commit point (a run's marker, which
    `rundir.is_run_dir` looks for; an artifact's model.json), so until it arrives `final` is no finished run. An entry
    already there (a fill a SIGKILL cut short, finished again by `rundir.RunDir`) is replaced.
    """
    staging, final = Path(staging), Path(final)
    placed: list[tuple[Path, Path, bool]] = []  # (source, target, renamed rather than copied)
    try:
        for entry in sorted(staging.iterdir(), key=lambda p: (p.name == last, p.name)):
            placed.append((entry, final / entry.name, _place(entry, final / entry.name)))
    except BaseException:
        _take_back(placed)
        raise
    copied = [source for source, _, renamed in placed if not renamed]
    for source in sorted(copied, key=lambda p: p.name == last):  # the marker last: a staging still marked as a run
        _remove(source)
    staging.rmdir()


def _take_back(placed: list[tuple[Path, Path, bool]]) -> None:
    """Undo `fill_directory`'s placing: a renamed entry goes back to its source, a copy is removed."""
    for source, target, renamed in reversed(placed):
        os.replace(target, source) if renamed else _remove(target)


def _place(entry: Path, target: Path) -> bool:
    """`entry` at `target`, replacing what is there: renamed (True), or copied under a temporary name beside `target`
    and renamed into place (False) where the two are on different filesystems."""
    moving = target.with_name(f".{target.name}.moving")
    _remove(moving)  # what a fill killed while copying left
    if os.path.lexists(target) and (_is_tree(target) or _is_tree(entry)):
        _remove(target)  # a rename replaces a file by a file only
    try:
        os.rename(entry, target)
        return True
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    try:
        if _is_tree(entry):
            shutil.copytree(entry, moving, symlinks=True)
        else:
            shutil.copy2(entry, moving, follow_symlinks=False)
        os.replace(moving, target)
    except BaseException:
        _remove(moving)
        raise
    return False


def _is_tree(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree the toolkit placed, if it is there."""
    if _is_tree(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT) and SIGTERM until the block is done, then deliver them.

    A commit interrupted between its renames would hide the previous run; in a thread other than
    the main one (where signal handlers cannot be set) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda number, frame: caught.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    for number in dict.fromkeys(caught):
        signal.raise_signal(number)


def ensure_writable_parent(path: Path) -> None:
    """Create the parent of an output path, or fail with one clear line; a path that is not UTF-8 is refused, as
    nothing could read it back: `train --out $'bad\\xff'` made a run that predict ("not valid UTF-8") and report
    (UnicodeEncodeError) could not open."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "replace")
        raise ToolkitError(f"output path {shown} is not valid UTF-8 (\ufffd marks the bytes that are not): choose a "
                           "name of UTF-8 characters") from None
    parent = Path(path).resolve().parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ToolkitError(f"cannot create output location {parent}: {blocker} is a file, not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"cannot create output location {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise ToolkitError(f"output location is not writable: {parent}")
