"""The `toolkit` app: one module per command, joined here.

Each command module imports only typer at import time; its stage (and torch) is imported when the command
runs or when its own `--help` lists the registered names, so `toolkit --help` stays fast.

`main()` runs the app in non-standalone mode so that usage errors (an unknown
option, a missing argument) come out as one line on stderr with exit code 2,
like every other bad input, instead of click's multi-line block.
"""

from __future__ import annotations

import os
import sys
from enum import Enum

import typer

from .guard import check_own_packages

check_own_packages()  # before the commands import the stages: a same-named folder must not give a traceback

from . import common, compress, env, explain, pipeline, predict, report, train  # noqa: E402
from .help import Group  # noqa: E402
from trainers.errors import FAILED, exit_with, failure_said, interrupt_code, sigterm_as_interrupt  # noqa: E402

app = typer.Typer(
    name="toolkit",
    help="Train, compress, explain and report on small neural network classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class ProgressMode(str, Enum):
    auto = "auto"
    bars = "bars"
    lines = "lines"
    none = "none"


def _version(value: bool) -> None:
    if value:
        from trainers.env import toolkit_version

        typer.echo(f"toolkit {toolkit_version()}")
        raise typer.Exit()


@app.callback()
def options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr (errors still)."),
    progress: ProgressMode = typer.Option(ProgressMode.auto, "--progress", case_sensitive=False,
                                          help="Progress on stderr: auto (bars on a terminal, nothing when piped), "
                                               "bars, lines (one plain line per step, for a log) or none."),
):
    """Train, compress, explain and report on small neural network classifiers."""
    common.QUIET["on"] = quiet
    common.PROGRESS["mode"] = progress.value
    import logging

    if not logging.getLogger().handlers and not os.environ.get("TOOLKIT_DEBUG"):
        # Libraries that log through the root logger (ONNX Runtime's quantizer warns there about each BatchNorm
        # axis) would print on stderr through logging's last resort: the command line's stderr holds the
        # toolkit's own messages and its one error line. TOOLKIT_DEBUG=1 shows them.
        logging.getLogger().addHandler(logging.NullHandler())
for command in (train, compress, explain, report, pipeline, predict, env):
    command.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `toolkit`."""
    FAILED["said"] = False
    try:
        with sigterm_as_interrupt():
            code = app(args=argv, prog_name="toolkit", standalone_mode=False)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message(), err=True)
            return 2
        return _usage_error(exc, argv if argv is not None else sys.argv[1:])
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    except KeyboardInterrupt:  # outside a command's handling, or a second signal while it said its line
        word, code = interrupt_code()
        return code if failure_said() else _failed(word, code, argv if argv is not None else sys.argv[1:])
    return code if isinstance(code, int) else 0


def _usage_error(exc: typer.TyperException, argv: list[str]) -> int:
    """A usage error click found (an unknown option, a wrong type, a missing option) as every bad input: one line
    on stderr, `{"error", "exit_code"}` on stdout with `--json`, once for a job under torchrun (`common.fail`)."""
    return _failed(exc.format_message(), exc.exit_code, argv)


def _failed(message: str, code: int, argv: list[str]) -> int:
    try:
        common.fail(message, code, as_json="--json" in argv)
    except typer.Exit as done:
        return done.exit_code
    return code


def run() -> None:
    """Console-script wrapper: exit with main()'s code (`trainers.errors.exit_with`)."""
    exit_with(main())


if __name__ == "__main__":
    run()
