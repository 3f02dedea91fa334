"""What every command shares: error handling, JSON output on stdout, messages and progress on stderr."""

from __future__ import annotations

import functools
import json
import os
import sys

import typer

from trainers.errors import ToolkitError


def handle_errors(func):
    """Turn a ToolkitError into one line on stderr and exit code 2, any other error into exit code 1.

    Set TOOLKIT_DEBUG=1 to see the traceback of an unexpected error.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ToolkitError as exc:
            fail(str(exc), 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:  # the last line of defence: never a traceback for users
            if os.environ.get("TOOLKIT_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(f"unexpected error ({type(exc).__name__}): {first} (set TOOLKIT_DEBUG=1 for the traceback)", 1)

    return wrapper


def fail(message: str, code: int = 2):
    """Print one line on stderr and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


QUIET = {"on": False}  # set by `toolkit --quiet`, read by `info` and `console_progress`


def info(message: str) -> None:
    if not QUIET["on"]:
        typer.echo(message, err=True)


def console_progress():
    """The stages' progress on stderr: rich bars with an ETA on a terminal, plain lines when piped (`--quiet`: none)."""
    from trainers.progress import ConsoleProgress

    return ConsoleProgress(quiet=QUIET["on"])


def emit_json(obj) -> None:
    """The result on stdout as one JSON object (data only; logs go to stderr)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def parse_json_option(text: str | None, option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{option} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ToolkitError(f"{option} must be a JSON object, e.g. '{{\"hidden\": [64]}}'")
    return value
