"""`toolkit env`: versions and the device the toolkit would use."""

from __future__ import annotations

import typer

from .common import emit_json, handle_errors
from .help import Command


@handle_errors
def env_command(as_json: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")):
    """Show Python, torch, CUDA, onnxruntime, shap and captum versions and the device found."""
    from trainers.env import environment

    info = environment()
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key == "versions":
            for name, version in value.items():
                typer.echo(f"{name:>14}: {version or 'not installed'}")
        else:
            typer.echo(f"{key:>14}: {value}")


def register(app: typer.Typer) -> None:
    app.command("env", cls=Command)(env_command)
