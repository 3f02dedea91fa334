"""What every command shares: error handling, JSON output, messages on stderr, help filled from the registries."""

from __future__ import annotations

import functools
import json
import os
import sys

from typing import Callable

import typer
from typer.core import TyperCommand

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
        except KeyboardInterrupt as exc:
            fail(f"interrupted {exc}".strip(), 130)
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


def info(message: str) -> None:
    typer.echo(message, err=True)


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


def with_help_from(choices: dict[str, Callable[[], list]] | None = None,
                   defaults: Callable[[], dict] | None = None) -> type[TyperCommand]:
    """A command class whose `--help` lists each option's registered names and library default.

    `choices` maps an option's parameter name to a function returning the names (a registry's list);
    `defaults` returns parameter name -> default (an options dataclass's fields). Both run only when
    that command's own help is rendered: `toolkit --help` and parsing import no registry, hence no torch.
    """

    class HelpFromLibrary(TyperCommand):
        def format_help(self, ctx, formatter):
            given = defaults() if defaults else {}
            for param in self.params:
                if not hasattr(param, "base_help"):  # help rendered twice in one process must not grow
                    param.base_help = param.help or ""
                base, extra = param.base_help, []
                if param.name in (choices or {}):
                    extra.append(f"Choices: {', '.join(map(str, choices[param.name]()))}.")
                default = given.get(param.name)
                if default not in (None, {}, []):
                    shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
                    extra.append(f"Default: {shown}.")
                param.help = " ".join([base, *extra]).strip() or None
            return super().format_help(ctx, formatter)

    return HelpFromLibrary


def model_families() -> list[str]:
    from trainers import list_models

    return list_models()


def compression_methods() -> list[str]:
    from compress import list_methods

    return list_methods()


def explanation_methods() -> list[str]:
    from explain import list_methods

    return list_methods()
