"""`toolkit predict`: class probabilities for raw rows, from a trained model or any of its compressed variants."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainers.streaming import PREDICT_BATCH

from .common import console_progress, emit_json, handle_errors, info
from .help import Command


@handle_errors
def predict_command(
    model_dir: Path = typer.Argument(..., help="A model artifact, or a compress/pipeline run (its chosen variant)."),
    data: Path = typer.Argument(..., help="Rows to predict: a CSV with the feature columns, an .npz (array x), "
                                          ".npy, or a folder of images."),
    variant: Optional[str] = typer.Option(None, "--variant", help="A variant of the run by name (variants/NAME)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write: .csv, .tsv or .parquet (default: "
                                                                  "CSV on stdout)."),
    batch_size: int = typer.Option(PREDICT_BATCH, "--batch-size", help="Rows per call, as trainers.predict. An "
                                   "int8-dynamic variant's answers depend on it (each call's own activation scale), "
                                   "and a routed variant serves with its small-batch member below its size: keep it "
                                   "fixed for reproducible answers."),
    device: str = typer.Option("cpu", "--device", help="Where the model runs: cpu, or cuda (cuda:N) for a PyTorch "
                                                    "model and, with onnxruntime-gpu, an ONNX one."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary (and the predictions without --out) as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out file that holds predictions the "
                                                              "toolkit wrote (never any other file)."),
):
    """Predict the class and class probabilities of each row, with a PyTorch or ONNX model.

    Example: toolkit predict runs/iris-mlp new_rows.csv --out preds.csv (the chosen variant; --variant NAME: another)
    """
    from trainers import inference
    from trainers.fileio import ensure_writable_parent
    from trainers.streaming import Tally, output_format, write_table_file

    existed = out is not None and (out.exists() or out.is_symlink())
    if out is not None:
        inference.check_predictions_out(out, overwrite, data)
        kind = output_format(out)
        ensure_writable_parent(out)
    with console_progress() as progress:  # the rows are read, predicted and written a chunk at a time
        model, tables = inference.stream_file(model_dir, data, variant=variant, batch_size=batch_size,
                                              progress=progress, device=device)
        tally = Tally(tables, keep=as_json and out is None)
        if out is not None:
            inference.write_predictions(out, lambda handle: write_table_file(tally, handle, kind), overwrite, existed)
        elif not as_json:
            _to_stdout(tally)
        else:
            list(tally)
    info(f"{tally.rows} rows predicted with {model.source} ({model.runtime}{_serving_note(model, batch_size)})")
    if as_json:
        summary = {"model": model.source, "runtime": model.runtime, "rows": tally.rows,
                   "out": str(out) if out else None, "counts": tally.counts()}
        emit_json({**summary, **({} if out else {"predictions": tally.records()})})
    elif out is not None:
        typer.echo(str(out))


def _to_stdout(tables) -> None:
    """The CSV on stdout once every row is predicted (spooled to a temporary file, so memory stays bounded): a
    bad cell in the last chunk leaves no partial CSV on stdout, only the error line."""
    import shutil
    import sys
    import tempfile

    from trainers.fileio import naming
    from trainers.streaming import write_table_file

    with tempfile.TemporaryFile() as spool:
        with naming(f"the spool file in {tempfile.gettempdir()} ($TMPDIR) holding the CSV until every row is done"):
            write_table_file(tables, spool, "csv")
        spool.seek(0)
        sys.stdout.flush()
        shutil.copyfileobj(spool, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


def _serving_note(model, batch_size: int) -> str:
    """What the answers depend on: a routed variant's member for this --batch-size; an int8-dynamic graph's
    per-call scale."""
    from trainers.artifact import batch_dependent

    note = ""
    if model.small is not None:
        below, member = model.spec.serve["below_batch"], model.spec.serve["dir"]
        note = (f"; --batch-size {batch_size} is under {below}: every call by {model.small.runtime} ({member}/)"
                if batch_size < below else f"; calls under {below} rows (--batch-size): {member}/")
    if batch_dependent(model.spec):
        note += f"; int8-dynamic: answers as at --batch-size {batch_size}"
    return note


def register(app: typer.Typer) -> None:
    app.command("predict", cls=Command)(predict_command)
