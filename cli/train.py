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
    nproc_per_node: Optional[int] = typer.Option(
        None, "--nproc-per-node", help="Train in N processes on this machine (one per GPU; gloo on CPU) via torchrun.",
        rich_help_panel="Several GPUs or machines"),
    nnodes: int = typer.Option(1, "--nnodes", help="Number of machines (run the same command on each).",
                               rich_help_panel="Several GPUs or machines"),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's number, 0 to nnodes-1.",
                                  rich_help_panel="Several GPUs or machines"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Address of the machine with --node-rank 0.",
                                              rich_help_panel="Several GPUs or machines"),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Free port on that machine (default 29500 "
                                              "with several machines; one machine picks a free port).",
                                              rich_help_panel="Several GPUs or machines"),
):
    """Train a classifier and save it as a model artifact.

    Example: toolkit train digits --model cnn --out runs/cnn

    On 4 GPUs: toolkit train digits --model cnn --nproc-per-node 4 (or the plain command under torchrun).
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
    if nproc_per_node is not None:
        raise typer.Exit(_launch(locals()))
    if nnodes != 1 or node_rank or master_addr or master_port is not None:
        raise ToolkitError("--nnodes, --node-rank, --master-addr and --master-port need --nproc-per-node")
    result = train(data, model, config, out=out, overwrite=overwrite, resume=resume, target=target)
    if result.processes > 1:
        from trainers.distributed import env_context

        if not env_context().is_main:
            return  # rank 0 reports for the whole job
    m = result.metrics
    if as_json:
        emit_json(result.to_dict())
    else:
        info(f"{model} on {result.model.spec.data['name']}: test accuracy {m['test_accuracy']:.4f}, "
             f"val accuracy {m['val_accuracy']:.4f}, {result.epochs_run} epochs (best {result.best_epoch}), "
             f"{result.seconds:.1f}s on {result.device}" + (" [interrupted]" if result.interrupted else ""))
        typer.echo(str(result.out))


def _launch(options: dict) -> int:
    """Re-run this command in `--nproc-per-node` processes per machine under torchrun's launcher."""
    from trainers.distributed import LaunchOptions, launch
    from trainers.errors import ToolkitError

    config, out = options["config"], options["out"]
    config.validate()
    launch_options = LaunchOptions(options["nproc_per_node"], options["nnodes"], options["node_rank"],
                                   options["master_addr"], options["master_port"])
    launch_options.validate()
    if options["device"] != "cpu":
        import torch

        gpus = torch.cuda.device_count()
        if options["device"].startswith("cuda") and gpus == 0:
            raise ToolkitError("--device cuda was requested but no CUDA GPU is available")
        if gpus and launch_options.nproc_per_node > gpus:
            raise ToolkitError(f"--nproc-per-node {launch_options.nproc_per_node} but this machine has {gpus} GPU(s)")
    if out.is_dir() and any(out.iterdir()) and not (options["overwrite"] or options["resume"]):
        raise ToolkitError(f"output directory {out} already exists; pass --overwrite to replace it")
    argv = [options["data"], "--model", options["model"], "--out", str(out), "--epochs", str(config.epochs),
            "--batch-size", str(config.batch_size), "--lr", repr(config.lr), "--device", options["device"],
            "--seed", str(config.seed)]
    for flag, value in (("--target", options["target"]), ("--arch", options["arch"])):
        if value is not None:
            argv += [flag, value]
    argv += [flag for flag, on in (("--overwrite", options["overwrite"]), ("--resume", options["resume"]),
                                   ("--json", options["as_json"])) if on]
    return launch(launch_options, argv)
