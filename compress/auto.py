"""`auto`: try the compressions that fit the family, measure them all, pick the fastest within budget.

Candidates (each skipped with a note when its method is not registered):
fp32 ONNX, int8 ONNX Runtime (dynamic; static QDQ for MLP/CNN), fp16/bf16
PyTorch, structured pruning (and pruned -> ONNX fp32 / int8), unstructured
pruning with sparse int8 storage, distillation (and student -> ONNX fp32 / int8).
Every candidate is measured in one process (`measure.measure_all`); the choice
is the lowest batch-256 single-thread latency among variants within
`max_drop` accuracy points that are not slower than the fp32 original, the
smallest file winning among latencies within 10% of the fastest.
"""

from __future__ import annotations

from trainers.artifact import LoadedModel, ModelSpec
from trainers.data import DataBundle
from trainers.errors import ToolkitError

from .base import METHODS, Variant, register_method
from .measure import DECISIVE, LatencyConfig, measure_all
from .prune import DEFAULT_ALLOCATION


def check_max_drop(max_drop) -> float:
    try:
        value = float(max_drop)
    except (TypeError, ValueError):
        raise ToolkitError(f"--max-drop must be a number of accuracy points >= 0, got {max_drop!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ToolkitError(f"--max-drop must be a number of accuracy points >= 0, got {max_drop!r}")
    return value


def _int8_methods(family: str) -> list[str]:
    """Int8 backends stacked on a pruned or distilled model. For CNNs dynamic int8 quantizes the dense layers only
    (convolutions stay fp32, ConvInteger is slow): most of the weights, at fp32 convolution speed."""
    return ["int8-dynamic", "int8-static"] if family in ("mlp", "cnn") else ["int8-dynamic"]


def _runtime_children(family: str) -> list[str]:
    """What to stack on a smaller fp32 PyTorch model (pruned, distilled): ONNX fp32 and int8."""
    return ["onnx-fp32", *_int8_methods(family)]


def plan(family: str, prune_ratios=(0.3, 0.5), finetune_epochs: int = 10, distill_epochs: int = 30,
         unstructured_ratio: float = 0.9) -> list[tuple[str, dict, list[str]]]:
    """The candidate list: (method, options, methods stacked on its output)."""
    steps: list[tuple[str, dict, list[str]]] = [
        ("onnx-fp32", {}, []),
        *[(m, {}, []) for m in (["int8-dynamic", "int8-static"] if family in ("mlp", "cnn") else ["int8-dynamic"])],
        ("fp16", {}, []),
        ("bf16", {}, []),
    ]
    # the family's default split of the pruned units, and uniform halving as well where that default differs
    # (an MLP: the global split is smaller, the uniform one sometimes keeps more accuracy; measure both)
    allocations = sorted({DEFAULT_ALLOCATION[family], "uniform"})
    for ratio in prune_ratios:
        for allocation in allocations:
            steps.append(("prune-structured", {"ratio": ratio, "finetune_epochs": finetune_epochs, "allocation": allocation},
                          _runtime_children(family)))
    if unstructured_ratio:
        steps.append(("prune-unstructured", {"ratio": unstructured_ratio, "finetune_epochs": max(1, finetune_epochs // 2),
                                             "int8": True}, []))
    if distill_epochs:
        # auto wants the smallest quick student: 1/8 width, a short plain Hinton run (the patient default
        # recipe takes 150 epochs on twice the samples)
        steps.append(("distill", {"epochs": distill_epochs, "width_factor": 0.125, "mixup": 0.0, "temperature": 4.0,
                                  "alpha": 0.9}, _runtime_children(family)))
    return steps


def _chain(first: Variant, second: Variant, original: LoadedModel) -> Variant:
    """`second` was made from `first`'s model: one variant whose lineage lists both steps from the original."""
    recipe = {"method": "chain", "steps": [first.recipe, second.recipe]}
    raw = {**second.model.spec.to_dict(),
           "lineage": {"parent": str(original.path) if original.path else f"<in-memory {original.spec.family}>",
                       "recipe": recipe}}
    second.model.spec = ModelSpec.from_dict(raw)
    return Variant(name=f"{first.name}+{second.name}", model=second.model, recipe=recipe, onnx_bytes=second.onnx_bytes,
                   measurements=dict(second.measurements), notes=[*first.notes, *second.notes])


def build_candidates(model: LoadedModel, data: DataBundle, steps, progress=None) -> tuple[list[Variant], list[dict]]:
    """Run every planned step through the registry; returns (variants, skipped)."""
    family = model.spec.family
    variants, skipped = [], []

    def run(name: str, source: LoadedModel, options: dict) -> list[Variant]:
        method = METHODS.get(name)
        if method is None:
            skipped.append({"method": name, "reason": f"method '{name}' is not registered (not installed yet)"})
            return []
        if source.spec.family not in method.families:
            skipped.append({"method": name, "reason": f"'{name}' does not handle {source.spec.family} models"})
            return []
        if progress:
            progress(f"auto: {name} {options or ''}".rstrip())
        try:
            return method.func(source, data, **options)
        except ToolkitError as exc:
            skipped.append({"method": name, "options": options, "reason": str(exc)})
            return []

    for name, options, children in steps:
        for made in run(name, model, options):
            variants.append(made)
            for child in children:
                for second in run(child, made.model, {}):
                    variants.append(_chain(made, second, model))
    if not variants:
        raise ToolkitError(f"auto found no compression method for a {family} model")
    return variants, skipped


LATENCY_TIE = 0.10  # latencies within 10% of the fastest are a tie (timing noise): the smaller file wins


def choose(baseline: Variant, variants: list[Variant], max_drop: float) -> tuple[Variant, str]:
    """The fastest variant within the accuracy budget that is not slower than fp32; else the baseline.

    Nor is an int8 variant that changes too many predictions (`flips`: see `measure.compare_to_baseline`).

    Variants whose batch-256 single-thread p50 is within `LATENCY_TIE` of the fastest count as equally fast, and
    the smallest file among them is chosen: a timing difference that small is noise, a size difference is not.
    """
    eligible = [v for v in variants if v.measurements["within_budget"] and not v.measurements["slower_than_fp32"]
                and not v.measurements.get("flips")]
    if not eligible:
        return baseline, (f"no variant is both within {max_drop} accuracy points and faster than the fp32 original "
                          f"at batch 256, single thread: the original is kept")
    p50 = {id(v): v.measurements["latency_ms"][DECISIVE]["p50"] for v in eligible}
    fastest = min(p50.values())
    tied = [v for v in eligible if p50[id(v)] <= fastest * (1 + LATENCY_TIE)]
    best = min(tied, key=lambda v: (v.measurements["size_bytes"], p50[id(v)]))
    m = best.measurements
    how = "fastest" if p50[id(best)] == fastest else f"smallest of the {len(tied)} within 10% of the fastest"
    reason = (f"{how} of {len(eligible)} variants within {max_drop} accuracy points and not slower than fp32: "
              f"{m['speedup'][DECISIVE]:.2f}x faster at batch 256 single thread, {m['size_ratio']:.2f}x smaller, "
              f"accuracy {m['accuracy']:.4f} ({m['accuracy_drop']:+.2f} points drop)")
    return best, reason


def baseline_variant(model: LoadedModel) -> Variant:
    return Variant(name="fp32-torch", model=model, recipe={"method": "baseline"},
                   notes=["the fp32 PyTorch original every ratio is taken against"])


@register_method("auto", ("mlp", "cnn", "lstm"))
def auto(model: LoadedModel, data: DataBundle, max_drop: float = 0.5, prune_ratios=(0.3, 0.5), finetune_epochs: int = 10,
         distill_epochs: int = 30, unstructured_ratio: float = 0.9, latency_budget_s: float = 0.25,
         progress=None, **unknown) -> list[Variant]:
    """Try the candidates that fit the family, measure them, pick the fastest within --max-drop.

    Returns every candidate, measured; the chosen one has `measurements["chosen"] = True` and the
    reason in `measurements["reason"]` (when no candidate qualifies, none is marked).
    """
    if unknown:
        raise ToolkitError(f"unknown option(s) for auto: {', '.join(sorted(unknown))}")
    max_drop = check_max_drop(max_drop)
    if model.module is None or model.spec.runtime != "torch":
        raise ToolkitError("auto needs an fp32 PyTorch model artifact")
    steps = plan(model.spec.family, tuple(prune_ratios), finetune_epochs, distill_epochs, unstructured_ratio)
    variants, skipped = build_candidates(model, data, steps, progress)
    baseline = baseline_variant(model)
    measure_all(variants, baseline, data, max_drop, LatencyConfig(budget_s=latency_budget_s), progress)
    chosen, reason = choose(baseline, variants, max_drop)
    for v in variants:
        v.measurements["chosen"] = v is chosen
    baseline.measurements["chosen"] = chosen is baseline
    for v in [baseline, *variants]:
        v.measurements["reason"] = reason if v is chosen else None
        v.measurements["auto_skipped"] = skipped
    return variants
