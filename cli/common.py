"""What every command shares: error handling, JSON output on stdout, messages and progress on stderr."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import typer

from trainers.errors import describe, interrupt_code, interrupted_by, warnings_as_lines

# Options of every command that reads a table (compress, explain: default to what training recorded).
TARGET = typer.Option(None, "--target", help="Label column of a table (default: last; after training: recorded).")
KEEP = typer.Option(None, "--keep", help="Keep a column that would be dropped as ID-like or constant (repeatable).")
DROP = typer.Option(None, "--drop", help="Drop a column from the features (repeatable).")
SEP = typer.Option(None, "--sep", help="CSV separator (default: sniffed from the file).")
IMAGE_SIZE = typer.Option(None, "--image-size", help="Resize a folder's images to N x N pixels (default: they must "
                          "share one size; TOOLKIT_IMAGE_SIZE when set).")


def handle_errors(func):
    """Any error becomes one line on stderr and its exit code (`trainers.errors.describe`); warnings (numpy,
    torch) show only on success, so a failure prints its line alone. TOOLKIT_DEBUG=1 shows tracebacks."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = bool(os.environ.get("TOOLKIT_DEBUG"))
        as_json = bool(kwargs.get("as_json"))  # with --json, stdout holds one JSON object on failure too
        # the toolkit's own warnings as a line each when they happen; others' shown on success only
        with warnings.catch_warnings(record=True) as caught, warnings_as_lines():
            try:
                result = func(*args, **kwargs)
            except KeyboardInterrupt as exc:  # its message says what was kept (a pipeline's stages)
                word, code = interrupt_code()
                fail(f"{word} {exc}".strip(), code, as_json=as_json)
            except (typer.Exit, typer.Abort, typer.TyperException) as exc:
                _show(caught if debug or getattr(exc, "exit_code", 1) == 0 else [])
                raise
            except Exception as exc:  # the last line of defence: never a traceback for users
                if interrupted_by():      # a library turned the interrupt into its own error
                    word, code = interrupt_code()
                    fail(word, code, as_json=as_json)
                _show(caught if debug else [])
                message, code = describe(exc)
                if debug and code == 1:
                    raise
                fail(message + (" (set TOOLKIT_DEBUG=1 for the traceback)" * (code == 1)), code, as_json=as_json)
        _show(caught)
        return result

    return wrapper


def _show(caught) -> None:
    [warnings.showwarning(w.message, w.category, w.filename, w.lineno) for w in caught]


def fail(message: str, code: int = 2, *, as_json: bool = False):
    """One line on stderr (with `as_json`, {"error", "exit_code"} on stdout too), then exit; once for a job."""
    from trainers.errors import rank_label, speaks

    if speaks(message, code):
        typer.echo(f"error: {message}{rank_label()}", err=True)
        if as_json:
            emit_json({"error": message, "exit_code": code})
    raise typer.Exit(code)


QUIET = {"on": False}  # set by `toolkit --quiet`, read by `info` and `console_progress`
PROGRESS = {"mode": "auto"}  # set by `toolkit --progress`: auto, bars, lines or none


def info(message: str) -> None:
    if not QUIET["on"]:
        typer.echo(message, err=True)


def console_progress():
    """The stages' progress on stderr as `progress_mode()` says: rich bars with an ETA, plain lines, or none."""
    from trainers.progress import ConsoleProgress

    mode = progress_mode()
    return ConsoleProgress(quiet=mode == "none", live=mode == "bars")


def progress_mode() -> str:
    """`toolkit --progress` resolved to bars, lines or none: `auto` (the default) draws bars on a terminal and
    prints nothing to a pipe or a file, so a log holds the result and, on failure, the one error line."""
    mode = "none" if QUIET["on"] else PROGRESS["mode"]
    return ("bars" if sys.stderr.isatty() else "none") if mode == "auto" else mode


def worker_args() -> tuple[str, ...]:  # `toolkit --quiet`/`--progress` as the processes of a launched job get them
    return ("--quiet",) if QUIET["on"] else ("--progress", PROGRESS["mode"])


def finish(summary: dict, out, as_json: bool) -> None:
    """A command's result on stdout: the whole summary as JSON with --json, else the path it wrote."""
    emit_json(summary) if as_json else typer.echo(str(out))


def emit_json(obj) -> None:  # the result on stdout as one JSON object (data only; logs go to stderr)
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def open_model(path: Path):
    """(what the stage takes, family for the run directory's name): an `.onnx` file goes to the stage (loaded
    with the data); anything else is loaded (or refused in one line) by `trainers.as_model`."""
    from trainers.usermodel import as_model

    if Path(path).suffix.lower() == ".onnx" and Path(path).is_file():
        return Path(path), "onnx"
    model = as_model(Path(path))
    return model, model.spec.family
