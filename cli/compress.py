"""`toolkit compress`: make measured variants of a trained model and choose the best one."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainers.options import check_value, parse_json_option

from .common import DROP, KEEP, SEP, TARGET, console_progress, fail, finish, handle_errors, info, open_model
from .help import compression_methods, with_help_from
from .render import print_table, variants_table
from .tracking import MLFLOW, TENSORBOARD, tracker


@handle_errors
def compress_command(
    model_dir: Path = typer.Argument(..., help="A trained model artifact directory (from `toolkit train`) or an "
                                               "ONNX file (.onnx) of your own model."),
    data: str = typer.Option(..., "--data", "-d", help="The data the model was trained on (built-in name, file or image folder)."),
    method: Optional[List[str]] = typer.Option(None, "--method", "-m", help="Method (repeatable); auto tries the "
                                                                            "candidates for the model's family."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Accuracy budget in percentage points below "
                                                                      "the original."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Pruning ratio in (0, 1) for the prune methods and auto."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Share of the original's top-1 test "
                                                  "predictions every variant must keep, less the sample's margin."),
    budget_seconds: Optional[float] = typer.Option(None, "--budget-seconds", help="Auto tries no further candidates when "
                                                   "its search would run past this many seconds."),
    serving_batch: Optional[int] = typer.Option(None, "--serving-batch", help="Auto chooses the fastest at this batch "
                                                "size: 256 (throughput, the default) or 1 (one request at a time)."),
    by_batch: Optional[bool] = typer.Option(None, "--by-batch/--one-model", help="Auto may choose two models in one "
                                            "artifact, each serving the batch sizes it is faster at (the default), "
                                            "or one model, the fastest at --serving-batch."),
    device: Optional[str] = typer.Option(None, "--device", help="Where the variants will serve, so where they are "
                                         "timed: cpu (the default) or cuda (cuda:N)."),
    options: Optional[str] = typer.Option(None, "--options", help='Per-method options as JSON, e.g. \'{"distill": {"epochs": 20}}\'.'),
    target: Optional[str] = TARGET, keep: Optional[List[str]] = KEEP, drop: Optional[List[str]] = DROP,
    sep: Optional[str] = SEP,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-compress-<family>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory (once the new run is complete)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    mlflow: Optional[str] = MLFLOW,
    tensorboard: Optional[str] = TENSORBOARD,
):
    """Compress a trained model into measured variants (quantized, pruned, distilled, ONNX) and pick one.

    Example: toolkit compress runs/cnn --data digits --method auto --max-drop 0.5 --out runs/cnn-compressed
    """
    from compress import compress_model
    from trainers import default_run_dir
    from trainers.tables import TableOptions

    model, family = open_model(model_dir)
    out = out or default_run_dir("compress", family)
    given = {"methods": method or None, "max_drop": max_drop, "ratio": ratio, "min_agreement": min_agreement,
             "budget_seconds": budget_seconds, "device": device,
             "options": parse_json_option(options, "--options") if options is not None else None}
    if serving_batch is not None:  # an option of auto's, given as a flag: compress_model checks it with the others
        given["options"] = _with_auto_option(given["options"] or {}, "serving_batch", serving_batch, method)
    if by_batch is not None:
        given["options"] = _with_auto_option(given["options"] or {}, "by_batch", by_batch, method)
    with tracker("compress", mlflow, tensorboard) as track, console_progress() as progress:
        result = compress_model(model, data, **{key: value for key, value in given.items() if value is not None},
                                out=out, overwrite=overwrite, table=TableOptions.of(target, keep, drop, sep),
                                progress=progress, tracker=track)
    summary = result.to_dict()
    print_table(variants_table(summary))
    for skipped in summary["skipped"]:
        if skipped["method"] in summary["methods"] and skipped["method"] != "auto" and not skipped.get("name"):
            info(f"not made: {skipped['method']}: {skipped['reason']}")  # a named method with nothing to make here
    info(f"chosen: {summary['chosen']['name']}: {summary['chosen']['reason']}")
    finish(summary, result.out, as_json)


def _with_auto_option(options: dict, name: str, value, methods) -> dict:
    """`options` with auto's option `name` set to `value` (from a flag); refused when auto is not run or the
    --options JSON sets it too."""
    from compress.run import unused_option

    if methods and "auto" not in methods:
        raise unused_option(_flag(name, value), "auto", methods)
    if name == "serving_batch":  # checked here to be named as typed; --options' auto.serving_batch by auto
        from compress.auto import ServingBatch

        check_value(ServingBatch, value, "--serving-batch", typed=True)
    own = options.get("auto", {})
    if isinstance(own, dict) and name in own and own[name] != value:
        fail(f"{_flag(name, value)} and --options' auto.{name} {own[name]} disagree; give one")
    return {**options, "auto": {**own, name: value} if isinstance(own, dict) else own}


def _flag(name: str, value) -> str:
    if name == "by_batch":
        return "--by-batch" if value else "--one-model"
    return f"--{name.replace('_', '-')} {value}"


def _defaults() -> dict:
    from compress.options import CompressOptions
    from trainers.options import defaults

    return {("method" if key == "methods" else key): value for key, value in defaults(CompressOptions).items()}


def register(app: typer.Typer) -> None:
    cls = with_help_from({"method": compression_methods}, _defaults)
    app.command("compress", cls=cls)(compress_command)
