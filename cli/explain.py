"""`toolkit explain`: attributions of a trained model, their quality, and drift of compressed variants."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import emit_json, handle_errors, info


@handle_errors
def explain_command(
    model_dir: Path = typer.Argument(..., help="A trained model artifact directory (from `toolkit train`)."),
    data: str = typer.Option(..., "--data", "-d", help="The data the model was trained on (built-in name or .npz/.csv)."),
    method: Optional[List[str]] = typer.Option(None, "--method", "-m",
                                               help="Method (repeatable), e.g. integrated_gradients, deeplift, shapley, "
                                                    "shap_kernel, occlusion; default: a fast set for the family."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", "-c",
                                                 help="A compressed variant artifact to compare with (repeatable)."),
    samples: int = typer.Option(64, "--samples", "-n", help="Test samples to explain."),
    seed: int = typer.Option(0, help="Seed of the sample draw and of sampled methods."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-explain-<family>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory (once the new run is complete)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Explain a model's predictions, check the explanations, and compare them with compressed variants.

    Example: toolkit explain runs/cnn --data digits --method integrated_gradients --compare runs/cnn-c/variants/int8-dynamic-onnx --out runs/cnn-explain
    """
    if samples < 1:
        from trainers.errors import ToolkitError

        raise ToolkitError(f"--samples must be at least 1, got {samples}")
    from explain import explain_model
    from trainers import default_run_dir, load_model

    model = load_model(model_dir)
    variants = [load_model(p) for p in compare or ()]
    out = out or default_run_dir("explain", model.spec.family)
    result = explain_model(model, data, methods=method or None, compare=variants, samples=samples, out=out,
                           overwrite=overwrite, seed=seed, progress=info)
    summary = result.to_dict()
    for name, q in summary["quality"].items():
        info(f"{name}: " + "; ".join(q["verdicts"]))
    for row in summary["drift"]["rows"]:
        info(f"drift {row['variant']} / {row['ran']}: top-{row['topk']} overlap {row['topk_overlap']:.2f} "
             f"[{row['topk_overlap_lo']:.2f}, {row['topk_overlap_hi']:.2f}], accuracy drop {row['accuracy_drop']:+.2f}: "
             f"{row['verdict']}")
    for flag in summary["flags"]:
        info(f"FLAG: {flag}")
    if as_json:
        emit_json(summary)
    else:
        typer.echo(str(result.out))


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)
