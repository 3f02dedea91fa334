"""`toolkit pipeline`: train, compress, explain and report in one run directory (`reports.run_pipeline`)."""

from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from trainers.options import parse_json_option

from .common import console_progress, emit_json, handle_errors, info
from .help import compression_methods, explanation_methods, model_families, with_help_from
from .tracking import MLFLOW, TENSORBOARD

# The config key each override option sets (its help starts with that key).
KEYS = {"target": "target", "keep": "keep", "drop": "drop", "sep": "sep", "image_size": "image_size",
        "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
        "seed": "train.seed", "device": "train.device", "arch": "train.arch", "method": "compress.methods",
        "max_drop": "compress.max_drop", "ratio": "compress.ratio", "options": "compress.options",
        "explain_method": "explain.methods", "samples": "explain.samples", "mlflow": "tracking.mlflow",
        "tensorboard": "tracking.tensorboard"}


@handle_errors
def pipeline_command(
    data: str = typer.Argument(..., help="Built-in data set (digits, iris, wine, breast_cancer), a table, .npz/.npy file or image folder."),
    model: str = typer.Option(..., "--model", "-m", help="Model family to train, or your own model (.onnx file or model "
                                                         "directory): then it is not trained."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML, YAML or JSON file with sections train, "
                                          "compress, explain and report (a run's config.yaml or config.json too)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-pipeline-<model>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory (once the new run is complete)."),
    target: Optional[str] = typer.Option(None, help="target: label column of a table (default: the last one)."),
    keep: Optional[List[str]] = typer.Option(None, help="keep: a column not to drop as ID-like/constant (repeatable)."),
    drop: Optional[List[str]] = typer.Option(None, help="drop: a column to drop from the features (repeatable)."),
    sep: Optional[str] = typer.Option(None, help="sep: CSV separator (default: sniffed)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="image_size: resize a folder's images to "
                                             "N x N pixels (default: they must share one size)."),
    epochs: Optional[int] = typer.Option(None, help="train.epochs: maximum epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="train.batch_size: samples per step."),
    lr: Optional[float] = typer.Option(None, help="train.lr: AdamW learning rate."),
    seed: Optional[int] = typer.Option(None, help="train.seed: seed of the split, initialisation and shuffling."),
    device: Optional[str] = typer.Option(None, help="train.device: auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, help='train.arch: architecture as JSON, e.g. \'{"hidden": [64, 32]}\'.'),
    method: Optional[List[str]] = typer.Option(None, "--method", help="compress.methods: method(s) to try."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="compress.max_drop: accuracy budget in points."),
    ratio: Optional[float] = typer.Option(None, help="compress.ratio: pruning ratio in (0, 1)."),
    options: Optional[str] = typer.Option(None, help='compress.options: per-method options as JSON, e.g. '
                                                     '\'{"auto": {"distill_epochs": 0}}\'.'),
    explain_method: Optional[List[str]] = typer.Option(None, "--explain-method", help="explain.methods: method(s); "
                                                       "default: a fast set for the family."),
    samples: Optional[int] = typer.Option(None, help="explain.samples: test samples to explain."),
    as_json: bool = typer.Option(False, "--json", help="Print pipeline.json (stages, times, report path) on stdout."),
    mlflow: Optional[str] = MLFLOW,
    tensorboard: Optional[str] = TENSORBOARD,
):
    """Train, compress, explain and report in one run directory; prints the report's path.

    Options override the config file, which overrides the defaults; the run directory keeps the resolved config.

    Example: toolkit pipeline digits --model cnn --config pipeline.toml --out runs/digits-cnn
    """
    from reports.pipeline import StageFailed, run_pipeline

    given = {"target": target, "keep": keep or None, "drop": drop or None, "sep": sep, "image_size": image_size,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
             "arch": parse_json_option(arch, "--arch") if arch is not None else None, "method": method or None,
             "max_drop": max_drop, "ratio": ratio,
             "options": parse_json_option(options, "--options") if options is not None else None,
             "explain_method": explain_method or None, "samples": samples, "mlflow": mlflow, "tensorboard": tensorboard}
    overrides = {KEYS[name]: value for name, value in given.items() if value is not None}
    try:
        with console_progress() as progress:
            result = run_pipeline(data, model, config, overrides=overrides, out=out, overwrite=overwrite,
                                  progress=progress)
    except StageFailed as failed:  # one line: the stage, the cause, the report of what finished
        if os.environ.get("TOOLKIT_DEBUG"):
            traceback.print_exception(failed.__cause__)
        where = f" (report of what finished: {failed.report})" if failed.report is not None else ""
        typer.echo(f"error: {failed}{where}", err=True)
        if failed.report is not None:  # stdout: the data, as on success, with --json's error keys
            emit_json({**failed.result.to_dict(), "error": str(failed), "exit_code": failed.code}) if as_json \
                else typer.echo(str(failed.report))
        elif as_json:
            emit_json({"error": str(failed), "exit_code": failed.code})
        raise typer.Exit(failed.code)
    _print(result, as_json)


def _print(result, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_dict())
    else:
        info(f"report: {result.report} ({result.report.stat().st_size / 1024:.0f} KiB)")
        typer.echo(str(result.report))


def _defaults() -> dict:
    from reports.config import PipelineConfig

    resolved = PipelineConfig().to_dict()
    return {name: functools.reduce(dict.get, key.split("."), resolved) for name, key in KEYS.items()}


def register(app: typer.Typer) -> None:
    choices = {"model": model_families, "method": compression_methods, "explain_method": explanation_methods}
    app.command("pipeline", cls=with_help_from(choices, _defaults))(pipeline_command)
