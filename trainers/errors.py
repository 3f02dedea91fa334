"""Errors every stage raises for problems the user can fix.

`ToolkitError` means bad input or usage: the CLI prints its message on one line
and exits with code 2. Anything else escaping a command is a bug (exit code 1).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import warnings
from pathlib import Path

# ONNX Runtime's words when its capped CPU arena (`trainers.ortsession.memory_cap`) or the system refuses a buffer
_ORT_REFUSED = re.compile(r"(?:smaller than requested bytes of|requested buffer of size) (\d+)")
_ORT_NODE = re.compile(r"while running (\w+) node")
# Memory running out as torch's allocators and the dynamic loader say it (a RuntimeError, an ImportError): under
# `ulimit -v` a train read "unexpected error (RuntimeError) ... set TOOLKIT_DEBUG=1", exit 1, as if a bug
_NO_MEMORY = re.compile(r"can't allocate memory|cannot allocate memory|out of memory|failed to map segment", re.I)
_TRIED = re.compile(r"tried to allocate (\d+) bytes|Tried to allocate ([\d.]+ [KMGT]iB)")


class ToolkitError(Exception):
    """Bad input or usage: a missing file, a wrong shape, an unknown option."""


class DataError(ToolkitError):
    """The data given cannot be used (missing, malformed, NaN, one class...)."""


class ArtifactError(ToolkitError):
    """A model directory is missing, truncated, corrupted or inconsistent."""


class ToolkitWarning(UserWarning):
    """A result the user should look at (a class with no row in a split, a model that learned nothing, levels
    training never saw): from Python a `warnings` warning, which `warnings.filterwarnings` silences and
    `warnings.catch_warnings` catches; the command line prints it as one `warning:` line when it happens."""


AS_LINES = {"on": False}  # set by the CLI for a command (`cli.common.handle_errors`): warnings as `warning:` lines


@contextlib.contextmanager
def warnings_as_lines():
    """Within it `warn` prints `warning:` lines (a command of the CLI); the setting is given back after."""
    before, AS_LINES["on"] = AS_LINES["on"], True
    try:
        yield
    finally:
        AS_LINES["on"] = before


def warn(message: str) -> None:
    """Warn the user: one `warning: ...` line on stderr from the command line, else a `ToolkitWarning`."""
    if AS_LINES["on"]:
        print(f"warning: {message}", file=sys.stderr)
    else:
        warnings.warn(message, ToolkitWarning, stacklevel=3)


INTERRUPTED = {"by": None}   # the signal that ended the command: "SIGINT" or "SIGTERM" (`sigterm_as_interrupt`)
INTERRUPT_CODES = (130, 143)


# How long a SIGTERM may wait for its Python handler before the watchdog ends the process (`_native_watchdog`).
# At 10 s its test (a compress run on 2 cores under a load of 5) failed in 2 of 4 runs, exit 143 with the staging
# directory left behind: most likely one native call outlasted the grace and the watchdog ended the run.
NATIVE_GRACE_S = 30.0


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a service manager, `kill`, a CI timeout) ends the command as Ctrl-C does: KeyboardInterrupt, so the
    same cleanup runs (nothing half-written stays, a run's record is kept) and one line, exit 143 (128 + 15).
    Both signals are recorded, so an interrupt a library turns into another error (matplotlib's layout code
    raising ValueError) still ends as an interrupt (`interrupted_by`), the first one heard: a worker of a job that
    heard Ctrl-C and then the launcher's SIGTERM said "terminated", 143, of a job that exited 130. A SIGTERM whose
    handler cannot run, the main thread being inside one long native call, ends the process after NATIVE_GRACE_S
    (`_native_watchdog`)."""
    import signal
    import threading

    INTERRUPTED["by"] = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = threading.Event()

    def stop(signum, frame):
        handled.set()
        INTERRUPTED["by"] = INTERRUPTED["by"] or ("SIGTERM" if signum == signal.SIGTERM else "SIGINT")
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
                if sig != signal.SIGINT or signal.getsignal(sig) is signal.default_int_handler}
    try:
        with _native_watchdog(handled):
            yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _native_watchdog(handled):
    """Python runs a signal handler between bytecodes only: inside ONNX Runtime's run (one native call) SIGTERM
    was never handled, and `timeout` or `kill` left the process running until kill -9. The C-level handler
    still writes the signal's number to the wakeup fd; a thread reading it gives the Python handler
    NATIVE_GRACE_S (`handled` is set when it runs), then prints the one line and ends the process, exit 143."""
    import signal
    import threading

    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        earlier = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        os.close(read), os.close(write)
        yield
        return

    def watch():
        while data := os.read(read, 64):
            if signal.SIGTERM in data and not handled.wait(NATIVE_GRACE_S):
                os.write(2, b"error: terminated\n")
                os._exit(143)
        os.close(read)

    threading.Thread(target=watch, name="sigterm-watchdog", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(earlier)
        os.close(write)


def shown(value, limit: int = 80) -> str:
    """A user's value (a class or column name) quoted for an error line, cut to `limit` characters: a class name
    of 1 MB given twice made a 1 MB error line."""
    text = str(value)
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}...' ({len(text):,} characters)"


def interrupted_by() -> str | None:
    """"SIGINT" or "SIGTERM" when a signal has ended the command, else None."""
    return INTERRUPTED["by"]


def exit_with(code: int):
    """End the process with `code`. After an interrupt its line is said: a second signal (the launcher passing on
    the Ctrl-C a worker heard too) is then ignored, not a KeyboardInterrupt traceback from the interpreter's exit."""
    if INTERRUPTED["by"]:
        import signal

        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    sys.exit(code)


def interrupt_code() -> tuple[str, int]:
    """The word and exit code of an interrupt: terminated (SIGTERM, 143) or interrupted (Ctrl-C, 130)."""
    return ("terminated", 143) if INTERRUPTED["by"] == "SIGTERM" else ("interrupted", 130)


def parse_failure(exc: BaseException) -> str:
    """The cause of a failure to parse a user's file, in words: for errors that carry no useful message."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large to read into memory"
    if isinstance(exc, OverflowError):
        return "a number too large"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# Set by `launch` for its workers: a folder where a rank other than 0 leaves its one error line (`speaks`).
ERROR_DIR_ENV = "TOOLKIT_ERROR_DIR"


# Under a plain torchrun, how long a rank other than 0 holds its bad-input line back for rank 0 (`speaks`). Every
# rank parses the same command line and reads the same files, so rank 0 finds the same mistake within a second or
# two of it (the imports on a loaded machine); torchrun then stops the waiting ranks.
RANK_0_GRACE_S = 5.0


FAILED = {"said": False}  # `speaks` was asked: the command's failure line is dealt with (`failure_said`)


def failure_said() -> bool:
    """Whether this command's one failure line was said (or left to another rank): a second signal during its exit
    must not say another (`cli.main`)."""
    return FAILED["said"]


def speaks(message: str, code: int = 2) -> bool:
    """Whether this process prints its one failure line with exit `code` (`cli.common.fail`, `cli.main`'s usage
    errors and interrupts), so a job that fails on every rank prints it once, whatever the failure: bad input, an
    unexpected error, Ctrl-C. Here, not in `distributed`, so a failing command imports no torch to say so.

    Rank 0 prints. Under `launch` another rank leaves its line and code in the launcher's folder instead, and the
    launcher prints it when rank 0 left none: the data missing on the second machine only, where rank 0 is
    stopped without an error of its own, or rank 0 stopped by the launcher (an interrupt) because another rank
    failed, whose line says why. Under a plain torchrun another rank first waits for rank 0
    (`_wait_for_rank_0`) and prints its line, with its rank, only if it outlives that wait.
    """
    FAILED["said"] = True
    rank = os.environ.get("RANK", "0")
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder:
        if rank == "0" and code in INTERRUPT_CODES and _peer_failed(Path(folder)):
            return False
        try:
            (Path(folder) / f"rank{int(rank)}.txt").write_text(json.dumps({"error": message, "exit_code": code}))
        except (OSError, ValueError):
            return True
    if rank == "0" or folder:
        return rank == "0"
    _wait_for_rank_0()
    return True


def failures_left(folder: Path) -> dict[int, dict]:
    """{rank: {"error", "exit_code"}}: the lines the ranks of a `launch` left in its `folder` (`speaks`)."""
    found = {}
    for file in folder.glob("rank*.txt"):
        try:
            found[int(file.stem[4:])] = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
    return found


def _peer_failed(folder: Path) -> bool:
    """Whether another rank left a failure that is not an interrupt: the launcher then stops the others with
    SIGTERM, and their "terminated" would hide the cause."""
    return any(said.get("exit_code") not in INTERRUPT_CODES for rank, said in failures_left(folder).items() if rank)


def _wait_for_rank_0() -> None:
    """Wait RANK_0_GRACE_S with SIGTERM at its default: when rank 0 fails on the same input, torchrun stops this
    process with SIGTERM, which then ends it without a word (not as an interrupt with its own line), so the job's
    one line is rank 0's. A rank that alone found the problem (a file missing on its machine only) outlives the
    wait and prints. torchrun itself still reports the failed process and exits 1 (README, Several GPUs)."""
    import signal
    import time

    try:
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: the wait still gives rank 0 its turn
        previous = None
    try:
        time.sleep(RANK_0_GRACE_S)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def rank_label() -> str:
    """" (rank N)" for a rank other than 0 of a job, else ""."""
    rank = os.environ.get("RANK", "0")
    return "" if rank == "0" else f" (rank {rank})"


# A full disk, a file-size limit (`ulimit -f`), a disk quota: the user's to fix, so exit code 2
_STORAGE_FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EDQUOT") if hasattr(errno, name))


def memory_refusal(exc: BaseException) -> str | None:
    """One line for ONNX Runtime refusing to allocate a buffer (the graph asked for more than the toolkit lets it
    hold), or None for any other error."""
    found = _ORT_REFUSED.search(str(exc))
    if found is None:
        return None
    node = _ORT_NODE.search(str(exc))
    where = f" at its {node.group(1)} node" if node else ""
    return (f"the ONNX graph asked for {int(found.group(1)) / 2**30:.1f} GiB in one buffer{where}, more than ONNX "
            f"Runtime may hold here (half the memory available): it computes a tensor's size from the input's values")


def out_of_memory(exc: BaseException) -> str | None:
    """One line for memory running out (MemoryError, torch's CPU or CUDA allocator, a library that could not be
    mapped in), or None for any other error."""
    if not isinstance(exc, MemoryError) and not (
            isinstance(exc, (RuntimeError, ImportError, OSError)) and _NO_MEMORY.search(str(exc))):
        return None
    tried = _TRIED.search(str(exc))
    size = "" if tried is None else f" (asked for {tried.group(2) or f'{int(tried.group(1)) / 2**20:,.1f} MiB'})"
    what = "loading a library" if isinstance(exc, ImportError) else "allocating" if tried else "running"
    return (f"out of memory while {what}{size}: free memory, lower --batch-size or a model's size, or raise the "
            f"limit (ulimit -v) [{type(exc).__name__}]")


def describe(exc: BaseException) -> tuple[str, int]:
    """An error as (one line, exit code): 2 for bad input, including inputs too large or too deeply nested
    (RecursionError, OverflowError, a buffer ONNX Runtime refused: `memory_refusal`), memory running out
    (`out_of_memory`), a full disk,
    a path whose name is too long, 1 with the error's type for anything else (a bug)."""
    if isinstance(exc, ToolkitError):
        return parse_failure(exc), 2
    refused = memory_refusal(exc) or out_of_memory(exc)
    if refused is not None:
        return refused, 2
    if isinstance(exc, OSError) and exc.errno in _STORAGE_FULL:  # the disk, not the toolkit: nothing half-written
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write{where}: {os.strerror(exc.errno)}", 2
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # pathlib raises it from exists() (Python 3.11)
        return (f"path too long: {shown(exc.filename or '', 120)} (a file or folder name longer than the file system "
                "allows, 255 bytes on most)"), 2
    if isinstance(exc, (RecursionError, OverflowError)):
        return f"an input is too large or nested too deeply: {parse_failure(exc)} ({type(exc).__name__})", 2
    return f"unexpected error ({type(exc).__name__}): {parse_failure(exc)}", 1
