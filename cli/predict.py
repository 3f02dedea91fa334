"""`toolkit predict`: class probabilities for raw rows, from a trained model or any of its compressed variants."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console_progress, emit_json, handle_errors, info
from .help import Command


@handle_errors
def predict_command(
    model_dir: Path = typer.Argument(..., help="A model artifact, or a compress/pipeline run (its chosen variant)."),
    data: Path = typer.Argument(..., help="Rows to predict: a CSV with the feature columns, an .npz (array x), "
                                          ".npy, or a folder of images."),
    variant: Optional[str] = typer.Option(None, "--variant", help="A variant of the run by name (variants/NAME)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV file to write (default: CSV on stdout)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Rows per batch."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs: cpu, or cuda (cuda:N) for a PyTorch "
                                                    "model and, with onnxruntime-gpu, an ONNX one."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary (and the predictions without --out) as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out file that holds predictions the "
                                                              "toolkit wrote (never any other file)."),
):
    """Predict the class and class probabilities of each row, with a PyTorch or ONNX model.

    Example: toolkit predict runs/iris-mlp new_rows.csv --out preds.csv (the chosen variant; --variant NAME: another)
    """
    from trainers.fileio import ensure_writable_parent
    from trainers.inference import check_predictions_out, predict_file, write_predictions

    existed = out is not None and (out.exists() or out.is_symlink())
    if out is not None:
        check_predictions_out(out, overwrite, data)
        ensure_writable_parent(out)
    with console_progress() as progress:
        model, table = predict_file(model_dir, data, variant=variant, batch_size=batch_size, progress=progress,
                                    device=device)
    routed = (f"; calls under {model.spec.serve['below_batch']} rows: {model.small.runtime} ({model.spec.serve['dir']}/)"
              if model.small is not None else "")
    if out is not None:
        write_predictions(out, table.to_csv(index=False), overwrite, existed)
    info(f"{len(table)} rows predicted with {model.source} ({model.runtime}{routed})")
    if as_json:
        summary = {"model": model.source, "runtime": model.runtime, "rows": len(table), "out": str(out) if out else None,
                   "counts": table["predicted"].value_counts().to_dict()}
        emit_json({**summary, **({} if out else {"predictions": table.to_dict(orient="records")})})
    elif out is None:
        typer.echo(table.to_csv(index=False), nl=False)
    else:
        typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("predict", cls=Command)(predict_command)
