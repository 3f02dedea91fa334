"""`toolkit explain`: attributions of a trained model, their quality, and drift of compressed variants."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import DROP, KEEP, SEP, TARGET, console_progress, finish, handle_errors, info, open_model
from .help import explanation_methods, with_help_from
from .tracking import MLFLOW, TENSORBOARD, tracker


@handle_errors
def explain_command(
    model_dir: Path = typer.Argument(..., help="A trained model artifact directory (from `toolkit train`) or an "
                                               "ONNX file (.onnx) of your own model."),
    data: str = typer.Option(..., "--data", "-d", help="The data the model was trained on (built-in name, file or image folder)."),
    method: Optional[List[str]] = typer.Option(None, "--method", "-m",
                                               help="Method (repeatable); default: a fast set for the family."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", "-c",
                                                 help="A compressed variant (artifact directory or .onnx file), or "
                                                      "a compress run (its chosen variant), to compare with "
                                                      "(repeatable)."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", help="Test samples to explain."),
    seed: Optional[int] = typer.Option(None, help="Seed of the sample draw and of sampled methods."),
    checks: Optional[str] = typer.Option(None, help="Quality checks: all; fast: no sanity check (it re-runs the "
                                                    "method 8 times: 5-7x the attribution on a 64x64 CNN); none: "
                                                    "nor deletion/insertion, infidelity, faithfulness."),
    target: Optional[str] = TARGET, keep: Optional[List[str]] = KEEP, drop: Optional[List[str]] = DROP,
    sep: Optional[str] = SEP,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-explain-<family>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory (once the new run is complete)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    mlflow: Optional[str] = MLFLOW,
    tensorboard: Optional[str] = TENSORBOARD,
):
    """Explain a model's predictions, check the explanations, and compare them with compressed variants.

    Example: toolkit explain runs/cnn --data digits --method integrated_gradients --compare runs/cnn-compressed --out runs/cnn-explain
    """
    from explain import explain_model
    from trainers import default_run_dir
    from trainers.tables import TableOptions

    model, family = open_model(model_dir)
    # a run directory (no model.json) goes to the stage as it is: it compares the variant that run chose
    variants = [p if p.is_dir() and not (p / "model.json").is_file() else open_model(p)[0] for p in compare or ()]
    out = out or default_run_dir("explain", family)
    given = {"methods": method or None, "samples": samples, "seed": seed, "checks": checks}
    with tracker("explain", mlflow, tensorboard) as track, console_progress() as progress:
        result = explain_model(model, data, **{key: value for key, value in given.items() if value is not None},
                               compare=variants, out=out, overwrite=overwrite, progress=progress, tracker=track,
                               table=TableOptions.of(target, keep, drop, sep))
    summary = result.to_dict()
    for run in summary["runs"]:   # a request answered by another method or runtime says so, with the reason
        if run["model"] == "original" and run["routed"]:
            info(f"{run['method']}: ran {run['ran']} instead ({run['routed']})" if run["ran"] != run["method"]
                 else run["routed"])
    for name, q in summary["quality"].items():   # keyed by the method that ran: one entry per attribution
        info(f"{name}: " + "; ".join(q["verdicts"]))
    for name, rel in summary.get("relations", {}).items():
        info(f"compared {name}: {rel['relation']} ({rel['reason']})")
    for row in summary["drift"]["rows"]:
        info(f"drift {row['variant']} / {row['ran']}: {row.get('status') or 'n/a'}, top-{row['topk']} overlap {row['topk_overlap']:.2f} "
             f"[{row['topk_overlap_lo']:.2f}, {row['topk_overlap_hi']:.2f}], accuracy drop {row['accuracy_drop']:+.2f}: "
             f"{row['verdict']}")
    for flag in summary["flags"]:
        info(f"FLAG: {flag}")
    finish(summary, result.out, as_json)


def _defaults() -> dict:
    from explain.options import ExplainOptions
    from trainers.options import defaults

    return defaults(ExplainOptions)


def register(app: typer.Typer) -> None:
    app.command("explain", cls=with_help_from({"method": explanation_methods}, _defaults))(explain_command)
