"""`auto`: try the compressions that fit the family, measure them all, pick the fastest within budget.

The candidates come from the registry: every method with an `auto` capability that handles the family, with
each option set it returns for auto's settings (today: fp32 ONNX, int8 ONNX Runtime dynamic and static, fp16/bf16
PyTorch, structured pruning, unstructured pruning with sparse int8 storage, distillation), and the chains of
transforms and runtime methods that declare `chain` (pruned or distilled -> ONNX fp32 / int8). A new method
joins auto by its registration alone.
Every candidate is measured in one process (`measure.measure_all`); the choice
is the lowest batch-256 single-thread latency among variants within
`max_drop` accuracy points that are not slower than the fp32 original, the
smallest file winning among latencies within 10% of the fastest.
"""

from __future__ import annotations

from typing import Annotated, Callable

from pydantic import Field

from trainers.artifact import LoadedModel, ModelSpec
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.options import Bool, Float, NonNegativeInt, PositiveFloat, Ratio
from trainers.progress import ProgressEvent, reporter

from .base import METHODS, Variant, check_method_options, get_method, lineage, register_method
from .measure import DECISIVE, LatencyConfig, measure_all
from .options import AccuracyPoints

OptionalRatio = Annotated[Float, Field(ge=0, lt=1)]  # 0: off
OptionalDrift = Annotated[Float, Field(ge=0, le=1)] | None


def plan(target, **settings) -> list[tuple[str, dict, list[str]]]:
    """The candidate list for a model: (method, options, methods chained on its output).

    `target` is the model (a `LoadedModel`: its family and the capabilities read from it decide), or a family
    name (its declared capabilities). `settings` are auto's options (the defaults of its signature where not
    given). Each registered method that handles the target and has an `auto` capability contributes one step
    per option set that capability returns (called with the family name): runtime methods first, then transforms, each in registration order (the built-ins in the order
    `register_builtin_methods` imports them). A transform with `chain` gets every runtime method with `chain`
    stacked on its output.
    """
    from . import register_builtin_methods

    register_builtin_methods()
    settings = {**METHODS.options("auto"), **check_method_options("auto", settings)}
    family = target if isinstance(target, str) else target.spec.family
    methods = sorted(METHODS.entries(target), key=lambda m: m.role != "runtime")  # stable: registration order kept
    chained = [m.name for m in methods if m.role == "runtime" and m.chain]
    steps = []
    for method in methods:
        if method.auto is None:
            continue
        children = chained if method.role == "transform" and method.chain else []
        steps += [(method.name, options, list(children)) for options in method.auto(family, settings)]
    return steps


def _chain(first: Variant, second: Variant, original: LoadedModel) -> Variant:
    """`second` was made from `first`'s model: one variant whose lineage lists both steps from the original."""
    recipe = {"method": "chain", "steps": [first.recipe, second.recipe]}
    second.model.spec = ModelSpec.from_dict({**second.model.spec.to_dict(), "lineage": lineage(original, recipe)})
    return Variant(name=f"{first.name}+{second.name}", model=second.model, recipe=recipe, onnx_bytes=second.onnx_bytes,
                   measurements=dict(second.measurements), notes=[*first.notes, *second.notes])


def build_candidates(model: LoadedModel, data: DataBundle, steps, progress=None) -> tuple[list[Variant], list[dict]]:
    """Run every planned step through the registry; returns (variants, skipped)."""
    family = model.spec.family
    variants, skipped = [], []
    report = reporter(progress, "compress", len(steps) + sum(len(children) for _, _, children in steps))
    done = [0]

    def run(name: str, source: LoadedModel, options: dict) -> list[Variant]:
        method = get_method(name)
        why = method.why_not(source)
        if why is not None:
            skipped.append({"method": name, "reason": f"'{name}' does not handle this model: {why}"})
            return []
        done[0] += 1
        report(done[0], f"auto: {name} {options or ''}".rstrip())
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
        reasons = "; ".join(f"{s['method']}: {s['reason']}" for s in skipped[:3])
        raise ToolkitError(f"auto found no compression method for a {family} model" + (f" ({reasons})" if reasons else ""))
    return variants, skipped


DRIFT_SAMPLES = 32  # held-out (validation) samples on which each candidate's attribution drift is measured


def drift_guard(model: LoadedModel, variant: Variant, data: DataBundle, max_drift: float | None = None) -> dict:
    """Measure how far `variant`'s attributions moved from the original's (`explain.attribution_drift`, a fast
    deterministic method on held-out samples); a drifted candidate gets a note and is never chosen."""
    import dataclasses

    from explain import attribution_drift

    from .export import ort_session

    candidate = variant.model
    if variant.onnx_bytes is not None and candidate.path is None:   # not saved yet: its session from the bytes
        candidate = dataclasses.replace(candidate, _session=ort_session(variant.onnx_bytes))
    x = data.x_val if len(data.x_val) else data.x_test
    drift = attribution_drift(model, candidate, x[:DRIFT_SAMPLES], max_drift=max_drift)
    variant.measurements["attribution_drift"] = drift
    if drift["status"] == "drifted":
        variant.notes.append(f"attributions drifted ({drift['method']}, {drift['samples']} held-out samples): top-"
                             f"{drift['topk']} overlap {drift['topk_overlap']:.2f} [{drift['topk_overlap_lo']:.2f}, "
                             f"{drift['topk_overlap_hi']:.2f}] below {drift['threshold']:.2f}: not chosen")
    return drift


def guard_candidates(model: LoadedModel, variants: list[Variant], data: DataBundle, settings: dict) -> None:
    """`drift_guard` on every candidate within the accuracy budget (the others are never chosen), unless auto's
    `drift_guard_on` is off; `settings` are auto's options as given."""
    settings = {**METHODS.options("auto"), **settings}
    if settings["drift_guard_on"]:
        for v in variants:
            if v.measurements["within_budget"]:
                drift_guard(model, v, data, settings["max_drift"])


def _drifted(v: Variant) -> bool:
    return (v.measurements.get("attribution_drift") or {}).get("status") == "drifted"


LATENCY_TIE = 0.10  # latencies within 10% of the fastest are a tie (timing noise): the smaller file wins


def choose(baseline: Variant, variants: list[Variant], max_drop: float) -> tuple[Variant, str]:
    """The fastest variant within the accuracy budget that is not slower than fp32; else the baseline.

    Nor is an int8 variant that changes too many predictions (`flips`: see `measure.compare_to_baseline`).

    Variants whose batch-256 single-thread p50 is within `LATENCY_TIE` of the fastest count as equally fast, and
    the smallest file among them is chosen: a timing difference that small is noise, a size difference is not.
    """
    eligible = [v for v in variants if v.measurements["within_budget"] and not v.measurements["slower_than_fp32"]
                and not v.measurements.get("flips")]
    drifted = [v for v in eligible if _drifted(v)]
    eligible = [v for v in eligible if not _drifted(v)]
    excluded = f"; {len(drifted)} excluded: attributions drifted ({', '.join(v.name for v in drifted)})" if drifted else ""
    if not eligible:
        return baseline, (f"no variant is both within {max_drop} accuracy points and faster than the fp32 original "
                          f"at batch 256, single thread: the original is kept{excluded}")
    p50 = {id(v): v.measurements["latency_ms"][DECISIVE]["p50"] for v in eligible}
    fastest = min(p50.values())
    tied = [v for v in eligible if p50[id(v)] <= fastest * (1 + LATENCY_TIE)]
    best = min(tied, key=lambda v: (v.measurements["size_bytes"], p50[id(v)]))
    m = best.measurements
    how = "fastest" if p50[id(best)] == fastest else f"smallest of the {len(tied)} within 10% of the fastest"
    reason = (f"{how} of {len(eligible)} variants within {max_drop} accuracy points and not slower than fp32: "
              f"{m['speedup'][DECISIVE]:.2f}x faster at batch 256 single thread, {m['size_ratio']:.2f}x smaller, "
              f"accuracy {m['accuracy']:.4f} ({m['accuracy_drop']:+.2f} points drop){excluded}")
    return best, reason


def baseline_variant(model: LoadedModel) -> Variant:
    if model is not None and model.module is None:  # a user's ONNX graph
        return Variant(name="fp32-onnx", model=model, recipe={"method": "baseline"},
                       onnx_bytes=model.onnx_model_bytes(),
                       notes=["the fp32 ONNX original (ONNX Runtime) every ratio is taken against"])
    return Variant(name="fp32-torch", model=model, recipe={"method": "baseline"},
                   notes=["the fp32 PyTorch original every ratio is taken against"])


@register_method("auto", role="search")
def auto(model: LoadedModel, data: DataBundle, max_drop: AccuracyPoints = 0.5,
         prune_ratios: tuple[Ratio, ...] = (0.3, 0.5), finetune_epochs: NonNegativeInt = 10,
         distill_epochs: NonNegativeInt = 30, unstructured_ratio: OptionalRatio = 0.9,
         latency_budget_s: PositiveFloat = 0.25, max_drift: OptionalDrift = None, drift_guard_on: Bool = True,
         progress: Callable[[ProgressEvent], object] | None = None) -> list[Variant]:
    """Try the candidates that fit the family, measure them, pick the fastest within --max-drop.

    Options:
        max_drop: accuracy budget, in percentage points below the original.
        prune_ratios: the structured pruning ratios tried; finetune_epochs: fine-tuning after pruning.
        distill_epochs: the quick student's training (0: no distillation).
        unstructured_ratio: the share of weights unstructured pruning zeroes (0: none).
        latency_budget_s: time spent timing each variant in each setting.
        max_drift: the top-k attribution overlap a candidate may lose against the original (0-1); None: a
            candidate whose overlap interval lies below 0.7 x the noise floor is never chosen.
        drift_guard_on: measure each candidate's attribution drift (`drift_guard`); off: choose on speed alone.

    Returns every candidate, measured; the chosen one has `measurements["chosen"] = True` and the
    reason in `measurements["reason"]` (when no candidate qualifies, none is marked).
    """
    steps = plan(model, max_drop=max_drop, prune_ratios=prune_ratios, finetune_epochs=finetune_epochs,
                 distill_epochs=distill_epochs, unstructured_ratio=unstructured_ratio,
                 latency_budget_s=latency_budget_s, progress=progress)
    variants, skipped = build_candidates(model, data, steps, progress)
    baseline = baseline_variant(model)
    measure_all(variants, baseline, data, max_drop, LatencyConfig(budget_s=latency_budget_s), progress)
    guard_candidates(model, variants, data, {"max_drift": max_drift, "drift_guard_on": drift_guard_on})
    chosen, reason = choose(baseline, variants, max_drop)
    for v in variants:
        v.measurements["chosen"] = v is chosen
    baseline.measurements["chosen"] = chosen is baseline
    for v in [baseline, *variants]:
        v.measurements["reason"] = reason if v is chosen else None
        v.measurements["auto_skipped"] = skipped
    return variants
