"""How far to trust an explanation: completeness, deletion/insertion and faithfulness, infidelity, sanity, noise floor.

All functions take an `Attribution` (from `explain.attribute`) and the model it
explains, and return plain numbers; `assess` gathers them with verdicts.
"""

from __future__ import annotations

import numpy as np
import torch

from .methods import Attribution, Context, attribute
from .probe import NO_INPUT_GRADIENT, probe_tags
from .registry import get_method
from .sanity import empty_rows

COMPLETENESS_TOLERANCE = 0.01
# faithfulness: the map's insertion-minus-deletion AUC must beat the better reference order (random, input-only) by
# this much (AUC units). Digits CNN, 32 samples, integrated gradients: 0.79 against 0.45 (input-only); the same
# map transposed 0.36, its values shuffled over the pixels 0.05 (random order -0.02); wine MLP: 0.57 against 0.27
FAITHFUL_MARGIN = 0.05
FAITHFUL_PERMUTATIONS = 4   # random orders averaged for the random reference


def _forward(model, attr: Attribution) -> Context:
    return Context(model, attr.runtime, attr.baseline, None, 0)


def completeness_errors(model, x: np.ndarray, attr: Attribution) -> np.ndarray:
    """Per sample |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|, for samples where the gap is not ~0."""
    ctx = _forward(model, attr)
    fx = ctx.forward_numpy(x)[np.arange(len(x)), attr.targets].astype(np.float64)
    gap = fx - attr.reference_output
    total = attr.values.reshape(len(x), -1).sum(1).astype(np.float64)
    keep = np.abs(gap) > 1e-6
    return np.abs(total[keep] - gap[keep]) / np.abs(gap[keep])


def completeness_error(model, x: np.ndarray, attr: Attribution) -> float:
    """Median over samples of |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|."""
    errors = completeness_errors(model, x, attr)
    return float(np.median(errors)) if len(errors) else 0.0


def estimate_figures(attr: Attribution) -> dict:
    """The error bars and convergence of an attribution (None where the method reports none)."""
    out: dict = {"estimated_error": None, "estimated_error_max": None, "standard_error": None,
                 "unconverged": None, "tolerance": attr.tolerance}
    if attr.error_bound is not None:
        bound = np.asarray(attr.error_bound, np.float64)
        out["estimated_error"], out["estimated_error_max"] = float(np.median(bound)), float(bound.max())
        flat = attr.values.reshape(len(attr.values), -1).astype(np.float64)
        se = np.linalg.norm(attr.standard_error.reshape(len(flat), -1).astype(np.float64), axis=1)
        norm = np.linalg.norm(flat, axis=1)
        out["standard_error"] = float(np.mean(np.where(norm > 0, se / np.where(norm > 0, norm, 1), 0.0)))
    if attr.converged is not None:
        out["unconverged"] = int((~np.asarray(attr.converged, bool)).sum())
    return out


def _auc_rows(ctx, x, values: np.ndarray, targets: np.ndarray, insert: bool, steps: int = 10) -> np.ndarray:
    """Per sample, the area under the target-class probability while deleting (insert=False: from x towards the
    baseline) or inserting (from the baseline towards x) the inputs in the order of `values`, largest first."""
    n = len(x)
    flat_x, flat_b = x.reshape(n, -1), np.broadcast_to(ctx.baseline_np.reshape(-1), (n, x[0].size))
    order = np.argsort(-values.reshape(n, -1), axis=1)   # most positive evidence first
    d = flat_x.shape[1]
    probs = []
    for k in np.linspace(0, d, steps + 1).round().astype(int):
        mask = np.zeros((n, d), bool)
        np.put_along_axis(mask, order[:, :k], True, axis=1)
        rows = np.where(mask, flat_x, flat_b) if insert else np.where(mask, flat_b, flat_x)
        logits = ctx.forward_numpy(rows.reshape(x.shape)).astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        probs.append(p[np.arange(n), targets])
    curve = np.asarray(probs)                               # (steps + 1, N)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return trapezoid(curve, dx=1.0 / steps, axis=0)


def _curve(ctx, x, attr: Attribution, insert: bool, steps: int = 10) -> float:
    return float(_auc_rows(ctx, x, attr.values, attr.targets, insert, steps).mean())


def deletion_insertion_auc(model, x: np.ndarray, attr: Attribution, steps: int = 10) -> tuple[float, float]:
    """Area under the target-class probability while deleting (insert=False) or inserting the top features."""
    ctx = _forward(model, attr)
    return _curve(ctx, x, attr, False, steps), _curve(ctx, x, attr, True, steps)


def _gap_rows(ctx, x, values, targets) -> np.ndarray:
    """Per sample, insertion AUC minus deletion AUC in the order of `values`: high when the order puts first the
    inputs the model's output rests on (~0 for a random order)."""
    return _auc_rows(ctx, x, values, targets, True) - _auc_rows(ctx, x, values, targets, False)


def faithfulness(model, x: np.ndarray, attr: Attribution, seed: int = 0) -> dict:
    """Does the map's order of the inputs find the model's evidence better than orders that know nothing of the
    model? Insertion minus deletion AUC per sample (`_gap_rows`) against the stronger of two references:
    `FAITHFUL_PERMUTATIONS` random orders (mean), and the input-only order |x - baseline| / spread (what a map
    that only echoes the input finds; the sanity check's input reference). A map on the wrong inputs (values
    shuffled over the pixels, an image transposed) scores at or below them; a correct one above. Verdict from
    a Student-t 95% interval of the mean per-sample difference against `FAITHFUL_MARGIN`: `better` (lower end
    above it), `no better` (upper end below it) or `inconclusive`."""
    from scipy.stats import t

    from .sanity import input_only_map

    ctx = _forward(model, attr)
    gap = _gap_rows(ctx, x, attr.values, attr.targets)
    rng = np.random.default_rng(seed)
    random_gap = np.mean([_gap_rows(ctx, x, rng.random(attr.values.shape), attr.targets)
                          for _ in range(FAITHFUL_PERMUTATIONS)], axis=0)
    echo = input_only_map(model.spec, x, ctx.baseline_np)
    input_gap = _gap_rows(ctx, x, echo, attr.targets)
    reference, ref_gap = (("input-only order |x - baseline|", input_gap) if input_gap.mean() > random_gap.mean()
                          else ("random order", random_gap))
    diff = gap - ref_gap
    half = (t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else np.inf
    lo, hi = diff.mean() - half, diff.mean() + half
    verdict = "better" if lo > FAITHFUL_MARGIN else "no better" if hi < FAITHFUL_MARGIN else "inconclusive"
    where = {"better": "above", "no better": "below"}.get(verdict, "straddling")
    reason = (f"insertion minus deletion AUC {gap.mean():.3f} against {ref_gap.mean():.3f} for the {reference} "
              f"(random order {random_gap.mean():.3f}, {FAITHFUL_PERMUTATIONS} permutations; input-only "
              f"{input_gap.mean():.3f}): difference {diff.mean():.3f} (95% interval {lo:.3f} to {hi:.3f}), "
              f"{where} the margin {FAITHFUL_MARGIN}")
    return {"verdict": verdict, "reason": reason, "reference": reference, "gap": float(gap.mean()),
            "random_gap": float(random_gap.mean()), "input_only_gap": float(input_gap.mean()),
            "difference": float(diff.mean()), "difference_lo": float(lo) if np.isfinite(lo) else None,
            "difference_hi": float(hi) if np.isfinite(hi) else None, "margin": FAITHFUL_MARGIN}


def infidelity(model, x: np.ndarray, attr: Attribution, n_perturb: int = 8, seed: int = 0) -> float:
    """Captum infidelity with Gaussian perturbations of a tenth of each input's spread (mean over samples)."""
    from captum.metrics import infidelity as captum_infidelity

    from .sanity import input_spread

    ctx = _forward(model, attr)
    spread = torch.as_tensor(input_spread(model.spec, x), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)

    def perturb(inputs):
        # perturbations measured in each input's spread, so the figure does not depend on the inputs' units
        unit = torch.randn(inputs.shape, generator=generator) * 0.1
        return unit.to(inputs.device), inputs - (unit * spread).to(inputs.device)

    xt = torch.as_tensor(x, device=ctx.device)
    at = torch.as_tensor(attr.values, device=ctx.device)
    with torch.no_grad():
        values = captum_infidelity(ctx.forward, perturb, xt, at, target=torch.as_tensor(attr.targets, device=ctx.device),
                                   n_perturb_samples=n_perturb, normalize=True)
    return float(values.float().mean().cpu())


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed cosine per sample; two empty maps agree (1), an empty map and another do not (0)."""
    fa, fb = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
    den = na * nb
    return np.where(den > 0, (fa * fb).sum(1) / np.where(den > 0, den, 1), np.where((na == 0) & (nb == 0), 1.0, 0.0))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per sample between two attribution sets (N, ...)."""
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), 0.0)


def topk_overlap_rows(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the k largest |attributions| of `a` that are also among the k largest of `b`, per sample."""
    fa, fb = np.abs(a.reshape(len(a), -1)), np.abs(b.reshape(len(b), -1))
    ta, tb = np.argsort(-fa, axis=1)[:, :k], np.argsort(-fb, axis=1)[:, :k]
    return np.array([len(set(r) & set(s)) / k for r, s in zip(ta, tb)])


def topk(d: int) -> int:
    """Features counted by top-k overlap: a sixth of the inputs, between 1 and 10."""
    return int(min(10, max(1, round(d / 6))))


def sanity_check(model, x: np.ndarray, attr: Attribution, seed: int = 0, **options) -> dict | None:
    """Cascading randomisation against its noise floor: `explain.sanity.cascading_randomization`.

    None when the model has no PyTorch module (a black-box ONNX artifact).
    """
    from .sanity import cascading_randomization

    return cascading_randomization(model, x, attr, seed, **options)


def noise_floor(model, x: np.ndarray, attr: Attribution, seed: int = 0, **options) -> dict | None:
    """Agreement of a sampled method with itself under another seed (None for deterministic methods)."""
    if not get_method(attr.method).sampled:
        return None
    again = attribute(model, x, attr.targets, attr.method, seed=seed + 1, **options)
    k = topk(x[0].size)
    return {"topk_overlap": float(topk_overlap_rows(attr.values, again.values, k).mean()),
            "spearman": float(np.median(spearman_rows(attr.values, again.values))),
            "cosine": float(cosine_rows(attr.values, again.values).mean())}


def _estimate_verdict(out: dict, n: int) -> str:
    text = (f"estimated error {100 * out['estimated_error']:.1f}% (95% bound, median over samples; "
            f"largest {100 * out['estimated_error_max']:.1f}%)")
    if out["unconverged"] is not None and out["tolerance"] is not None:
        text += f"; {out['unconverged']} of {n} samples above the {100 * out['tolerance']:.0f}% tolerance"
    return text


def _unconverged_note(out: dict, attr: Attribution, n: int) -> str:
    if out["unconverged"] is None:
        return ""
    steps = int(np.max(attr.steps)) if attr.steps is not None else None
    return (f"; {out['unconverged']} of {n} samples above {100 * (out['tolerance'] or 0):.0f}%"
            + (f" after {steps} steps" if steps else ""))


def effort_cap(attr: Attribution, options: dict) -> dict:
    """Options that cap an adaptive method's re-runs (sanity check, noise floor) at the effort its own run took:
    a re-initialised model's maps never reach the tolerance, so each re-run went to the method's cap. On 16 x 16
    RGB images `shapley` took 10.7 s for 4 samples and its 8 sanity re-runs 132 s; capped, each costs at most
    what the attribution did. A fixed effort given by the caller is kept."""
    if attr.steps is None or not len(attr.steps):
        return {}
    most = int(np.max(attr.steps))
    if attr.method == "shapley" and not {"n_permutations", "max_evaluations"} & set(options):
        return {"max_evaluations": max(most, 1)}
    if attr.method == "integrated_gradients" and "n_steps" not in options and "max_steps" not in options:
        return {"max_steps": max(most, 1)}
    return {}


def head(attr: Attribution, n: int) -> Attribution:
    """The first n samples of an attribution."""
    import dataclasses

    def cut(a):
        return None if a is None else a[:n]

    return dataclasses.replace(attr, values=attr.values[:n], targets=attr.targets[:n],
                               reference_output=attr.reference_output[:n], delta=cut(attr.delta),
                               standard_error=cut(attr.standard_error), error_bound=cut(attr.error_bound),
                               error_dof=cut(attr.error_dof),
                               converged=cut(attr.converged), steps=cut(attr.steps))


def assess(model, x: np.ndarray, attr: Attribution, *, seed: int = 0, sanity: bool = True,
           fidelity: bool = True, repeat_samples: int | None = None, **options) -> dict:
    """Every quality figure of one attribution, with verdicts and a flag (see docs/results.md).

    The checks that re-run the method (sanity check, noise floor) use the first
    `repeat_samples` samples (all by default).
    """
    holds = get_method(attr.method).holds_axiom(model)
    errors = completeness_errors(model, x, attr)
    out: dict = {"completeness_error": float(np.median(errors)) if len(errors) else 0.0, "axiom_holds": holds,
                 **estimate_figures(attr), "completeness_error_max": None, "completeness_over_tolerance": None}
    if holds:
        out["completeness_error_max"] = float(errors.max()) if len(errors) else 0.0
        out["completeness_over_tolerance"] = float((errors > COMPLETENESS_TOLERANCE).mean()) if len(errors) else 0.0
    verdicts = []
    flagged = False
    out["faithfulness"] = out["deletion_auc"] = out["insertion_auc"] = out["infidelity"] = None   # null: not run
    ok = out["completeness_error"] <= COMPLETENESS_TOLERANCE
    if out["estimated_error"] is not None:   # sampled: its estimated error says more than completeness
        verdicts.append(_estimate_verdict(out, len(x)))
    if holds and (out["estimated_error"] is None or not ok):
        flagged |= not ok
        verdicts.append(f"completeness {'ok' if ok else 'FAILS'} ({100 * out['completeness_error']:.2f}% "
                        f"{'<=' if ok else '>'} {100 * COMPLETENESS_TOLERANCE:.0f}%)"
                        + _unconverged_note(out, attr, len(x)))
    elif not holds and out["estimated_error"] is None:
        verdicts.append("completeness not expected for this method")
    if fidelity:
        out["deletion_auc"], out["insertion_auc"] = deletion_insertion_auc(model, x, attr)
        # Gaussian perturbations of an index (integer tokens) are no inputs of the model: out of range, they crashed
        indices = NO_INPUT_GRADIENT in probe_tags(model)
        out["infidelity"] = None if indices else infidelity(model, x, attr, seed=seed)
        if indices:
            verdicts.append("infidelity not measured: the input is an index (no gradient), not a quantity to perturb")
        faithful = faithfulness(model, x, attr, seed)
        out["faithfulness"] = faithful
        outcome = {"better": "passed", "inconclusive": "inconclusive"}.get(faithful["verdict"], "FAILED")
        flagged |= outcome == "FAILED"
        said = {"inconclusive": "neither surely better nor surely no better"}.get(faithful["verdict"],
                                                                                  faithful["verdict"])
        verdicts.append(f"faithfulness {outcome}: {said} than orders that know nothing of the model "
                        f"({faithful['reason']})")
    n = len(x) if repeat_samples is None else min(len(x), repeat_samples)
    x_r, attr_r = x[:n], head(attr, n)
    options = {**effort_cap(attr_r, options), **options}
    check = sanity_check(model, x_r, attr_r, seed, **options) if sanity else None
    out["randomization_spearman"] = check["spearman"] if check else None
    out["randomization_topk"] = check["topk_overlap"] if check else None
    out["empty_share"] = float(empty_rows(attr.values).mean())
    if check is not None:
        out["sanity"] = {key: check.get(key) for key in ("verdict", "reason", "cascade", "seeds", "floor", "input_only",
                                                         "model_reference", "trained", "trained_lo", "trained_hi",
                                                         "floor_mean", "difference", "difference_lo", "difference_hi",
                                                         "reference_difference", "reference_difference_lo",
                                                         "reference_difference_hi")}
        # inconclusive: the intervals leave both outcomes open, which is no failure of the method, so no flag
        outcome = {"separated": "passed", "inconclusive": "inconclusive"}.get(check["verdict"], "FAILED")
        flagged |= outcome == "FAILED"
        verdicts.append(f"sanity check {outcome}: {check['verdict']} ({check['reason']})")
    if out["empty_share"] > 0 and (check is None or check["verdict"] != "uninformative"):
        verdicts.append(f"{100 * out['empty_share']:.0f}% of the maps are empty or constant")
    floor = noise_floor(model, x_r, attr_r, seed, **options)
    out["noise_floor_topk"] = floor["topk_overlap"] if floor else None
    out["noise_floor_spearman"] = floor["spearman"] if floor else None
    out["noise_floor_cosine"] = floor["cosine"] if floor else None
    if floor:
        verdicts.append(f"noise floor: top-{topk(x[0].size)} overlap {floor['topk_overlap']:.2f} between two seeds")
    out["verdicts"], out["flagged"] = verdicts, bool(flagged)
    return out
