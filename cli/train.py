"""`toolkit train`: train an MLP, CNN or LSTM classifier and write a model artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import FAMILIES, emit_json, handle_errors, info, parse_json_option


@handle_errors
def train_command(
    data: str = typer.Argument(..., help="Built-in data set (digits, iris, wine, breast_cancer) or a .npz/.csv file."),
    model: str = typer.Option(..., "--model", "-m", help=f"Model family: {', '.join(FAMILIES)}."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-train-<model>)."),
    epochs: int = typer.Option(100, help="Maximum epochs (early stopping on validation loss)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Samples per step."),
    lr: float = typer.Option(3e-3, help="AdamW learning rate."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, help="Seed for the split, the initialisation and the shuffling."),
    target: Optional[str] = typer.Option(None, help="Label column of a CSV file (default: last column)."),
    arch: Optional[str] = typer.Option(None, help='Architecture as JSON, e.g. \'{"hidden": [64, 32]}\'.'),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory (once the new run is complete)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Train a classifier and save it as a model artifact.

    Example: toolkit train digits --model cnn --out runs/cnn
    """
    from trainers import TrainConfig, default_run_dir, train
    from trainers.errors import ToolkitError

    if model not in FAMILIES:
        raise ToolkitError(f"unknown --model '{model}'; choose from {', '.join(FAMILIES)}")
    if resume and out is None:
        raise ToolkitError("--resume needs --out, the directory of the interrupted run")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed,
                         model=parse_json_option(arch, "--arch"))
    out = out or default_run_dir("train", model)
    result = train(data, model, config, out=out, overwrite=overwrite, resume=resume, target=target)
    m = result.metrics
    if as_json:
        emit_json(result.to_dict())
    else:
        info(f"{model} on {result.model.spec.data['name']}: test accuracy {m['test_accuracy']:.4f}, "
             f"val accuracy {m['val_accuracy']:.4f}, {result.epochs_run} epochs (best {result.best_epoch}), "
             f"{result.seconds:.1f}s on {result.device}" + (" [interrupted]" if result.interrupted else ""))
        typer.echo(str(result.out))
