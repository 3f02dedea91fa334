"""`toolkit report`: render a run directory (one stage or a pipeline) into one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import emit_json, handle_errors, info
from .help import Command


@handle_errors
def report_command(
    run_dir: Path = typer.Argument(..., help="A run directory: one stage's output, or a pipeline's (train/, compress/, explain/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write, ending in .html (default RUN_DIR/report.html)."),
    as_json: bool = typer.Option(False, "--json", help="Print the paths written (report, its numbers, model card) "
                                                       "as JSON on stdout."),
):
    """Render everything a run wrote into one HTML file (plus report.json and MODEL_CARD.md).

    Example: toolkit report runs/digits-cnn --out digits.html
    """
    from reports.render import write_report

    written = write_report(run_dir, out)  # a ReportError is a ToolkitError: one line, exit code 2
    path = Path(written["report"])
    info(f"report written: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if as_json:
        emit_json({**written, "model_card": written["model_cards"][0], "bytes": path.stat().st_size})
    else:
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("report", cls=Command)(report_command)
