"""`toolkit report`: render a run directory (one stage or a pipeline) into one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import handle_errors, info


@handle_errors
def report_command(
    run_dir: Path = typer.Argument(..., help="A run directory: one stage's output, or a pipeline's (train/, compress/, explain/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN_DIR/report.html)."),
):
    """Render everything a run wrote into one HTML file (plus report.json and MODEL_CARD.md).

    Example: toolkit report runs/digits-cnn --out digits.html
    """
    from reports import render_report

    path = render_report(run_dir, out)  # a ReportError is a ToolkitError: one line, exit code 2
    info(f"report written: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
