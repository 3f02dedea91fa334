"""`toolkit train`: train a classifier of a registered family and write a model artifact."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainers.options import parse_json_option

from .common import (DROP, IMAGE_SIZE, KEEP, SEP, TARGET, console_progress, emit_json, handle_errors, info,
                     progress_mode, worker_args)
from .help import model_families, with_help_from
from .tracking import MLFLOW, TENSORBOARD, tracker, tracking_args

GROUP = "Several GPUs or machines"


@handle_errors
def train_command(
    data: str = typer.Argument(..., help="Built-in data set (digits, iris, wine, breast_cancer), a .csv/.parquet/.npz/.npy file or an image folder."),
    model: str = typer.Option(..., "--model", "-m", help="Model family."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-train-<model>)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (early stopping: see --select)."),
    select: Optional[str] = typer.Option(None, "--select", help="The epoch kept, which early stopping waits for: "
                                         "val_accuracy_then_loss (the highest validation accuracy, ties to the "
                                         "lower loss; the MLP's default), val_loss (the other families' default) "
                                         "or val_accuracy."),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help="After early stopping, train the same "
                                         "initial weights again on the training and validation rows together for "
                                         "the epochs kept (default: on from 100 validation rows)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu or cuda."),
    seed: Optional[int] = typer.Option(None, help="Seed for the split, the initialisation and the shuffling."),
    target: Optional[str] = TARGET, keep: Optional[List[str]] = KEEP, drop: Optional[List[str]] = DROP,
    sep: Optional[str] = SEP, image_size: Optional[int] = IMAGE_SIZE,
    arch: Optional[str] = typer.Option(None, help='Architecture as JSON, e.g. \'{"hidden": [64, 32]}\'.'),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (bf16 autocast) on CUDA, for a model large enough "
                                                  "to gain from it; the built-in sizes train faster without it."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory (once the new run is complete)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    mlflow: Optional[str] = MLFLOW,
    tensorboard: Optional[str] = TENSORBOARD,
    nproc_per_node: Optional[int] = typer.Option(
        None, "--nproc-per-node", help="Train in N processes on this machine (one per GPU; gloo on CPU) via torchrun.",
        rich_help_panel=GROUP),
    nnodes: int = typer.Option(1, "--nnodes", help="Number of machines (run the same command on each).",
                               rich_help_panel=GROUP),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's number, 0 to nnodes-1.", rich_help_panel=GROUP),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Address of the machine with --node-rank 0.",
                                              rich_help_panel=GROUP),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Free port on that machine (default 29500 "
                                              "with several machines; one machine picks a free port).",
                                              rich_help_panel=GROUP),
    oversubscribe: bool = typer.Option(False, "--oversubscribe", help="Allow more processes than CPU cores.",
                                       rich_help_panel=GROUP),
):
    """Train a classifier and save it as a model artifact.

    Example: toolkit train digits --model cnn --out runs/cnn

    On 4 GPUs: toolkit train digits --model cnn --nproc-per-node 4 (or the plain command under torchrun).
    """
    from trainers import TrainConfig, TrainingInterrupted, default_run_dir, make_config, train
    from trainers.distributed import LaunchOptions, env_context, refuse_unlaunched
    from trainers.errors import ToolkitError, interrupt_code
    from trainers.options import option_flags, parse
    from trainers.tables import TableOptions

    if resume and out is None:
        raise ToolkitError("--resume needs --out, the directory of the interrupted run")
    given = {"epochs": epochs, "select": select, "refit": refit, "batch_size": batch_size, "lr": lr, "device": device, "seed": seed,
             "amp": amp or None, "model": parse_json_option(arch, "--arch") if arch is not None else None}
    config = parse(TrainConfig, {key: value for key, value in given.items() if value is not None},
                   flags=option_flags(given, model="--arch"))  # a bad value named as typed: `--epochs: ...`
    make_config(model, config.model, "--arch")  # and a bad architecture: `--arch hidden.0: ...`
    out = out or default_run_dir("train", model)
    if nproc_per_node is not None:
        from trainers.distributed import launch_training

        where = LaunchOptions(nproc_per_node, nnodes, node_rank, master_addr, master_port, oversubscribe)
        raise typer.Exit(launch_training(data, model, config, where, out=out, overwrite=overwrite, resume=resume,
                                         json_output=as_json, extra_args=tracking_args(mlflow, tensorboard),
                                         table=TableOptions.of(target, keep, drop, sep), image_size=image_size,
                                         announce=progress_mode() != "none", global_args=worker_args()))
    refuse_unlaunched(LaunchOptions(0, nnodes, node_rank, master_addr, master_port, oversubscribe))
    with tracker("train", mlflow, tensorboard) as track, console_progress() as progress:
        try:
            result = train(data, model, config, out=out, overwrite=overwrite, resume=resume, image_size=image_size,
                           table=TableOptions.of(target, keep, drop, sep), tracker=track, progress=progress)
        except TrainingInterrupted as stop:  # the best model so far is kept: say where, then exit 130/143
            if stop.result is None:  # no epoch ended, nothing kept: one line (`handle_errors`)
                raise
            result = stop.result
    if result.processes > 1 and not env_context().is_main:
        return  # rank 0 reports for the whole job
    m = result.metrics
    if as_json:
        emit_json(result.to_dict())
    else:
        info(f"{model} on {result.model.spec.data['name']}: test accuracy {m['test_accuracy']:.4f}, "
             f"val accuracy {m['val_accuracy']:.4f}, {result.epochs_run} epochs (best {result.best_epoch}), "
             f"{result.seconds:.1f}s on {result.device}" + (" [interrupted]" if result.interrupted else ""))
        typer.echo(str(result.out))
    if result.interrupted:
        raise typer.Exit(interrupt_code()[1])  # Ctrl-C 130, SIGTERM 143: the best model is kept, a script stops


def _defaults() -> dict:
    from trainers import TrainConfig, options

    return options.defaults(TrainConfig)


def register(app: typer.Typer) -> None:
    app.command("train", cls=with_help_from({"model": model_families}, _defaults))(train_command)
