"""Did compression change what the model looks at? Attribution agreement between two models.

`attribution_agreement` compares two attribution sets of the same samples:
top-k overlap, signed cosine, Spearman rank correlation and sign agreement,
each a mean over samples with a bootstrap 95% interval. `drift_row` decides
from the top-k overlap's interval against a threshold relative to the noise
floor (the method against itself): drifted, uncertain or kept, and flags a
variant whose accuracy holds but whose explanations moved. `relation` says
whether a compared model derives from the original at all, or is the original itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.errors import ToolkitError

from .quality import spearman_rows, topk, topk_overlap_rows

MAX_ACCURACY_DROP = 2.0      # points: "accuracy holds"
DRIFT_FRACTION = 0.7         # drift threshold: this share of the method's noise floor (its top-k overlap with itself)
TOP_FEATURES = 3             # the original's top inputs whose rank changes a drift row names


def check_comparable(original, variant, name: str = "variant") -> None:
    """Refuse a variant whose input shape or classes differ from the original's."""
    a, b = original.spec, variant.spec
    if list(a.input_shape) != list(b.input_shape):
        raise ToolkitError(f"cannot compare {name}: its input shape {tuple(b.input_shape)} differs from the "
                           f"original's {tuple(a.input_shape)}")
    if list(a.class_names) != list(b.class_names):
        raise ToolkitError(f"cannot compare {name}: its classes ({len(b.class_names)}) differ from the original's "
                           f"({len(a.class_names)})")


def _cosine_rows(a, b):
    fa, fb = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
    return np.where(den > 0, (fa * fb).sum(1) / np.where(den > 0, den, 1), 0.0)


def _sign_rows(a, b, k):
    """Share of the original's top-k elements (by |attribution|) whose sign the other keeps."""
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    top = np.argsort(-np.abs(fa), axis=1)[:, :k]
    return (np.sign(np.take_along_axis(fa, top, 1)) == np.sign(np.take_along_axis(fb, top, 1))).mean(1)


def bootstrap_interval(values: np.ndarray, seed: int = 0, rounds: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` over resampled samples."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (rounds, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def attribution_agreement(a: np.ndarray, b: np.ndarray, *, k: int | None = None, seed: int = 0) -> dict:
    """Agreement of two attribution sets of the same samples, each metric with a bootstrap 95% interval."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ToolkitError(f"attributions differ in shape: {a.shape} vs {b.shape}")
    k = k or topk(a[0].size)
    rows = {"topk_overlap": topk_overlap_rows(a, b, k), "cosine": _cosine_rows(a, b),
            "spearman": spearman_rows(a, b), "sign_agreement": _sign_rows(a, b, k)}
    out: dict = {"topk": k}
    for name, values in rows.items():
        lo, hi = bootstrap_interval(values, seed)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = float(values.mean()), lo, hi
    return out


def relation(original, variant) -> tuple[str, str]:
    """How `variant` relates to `original`: `derived` (its lineage names the original, or it is the original
    itself), `same data` (trained separately on data of the same fingerprint) or `unrelated`; with the reason
    in words. The original compared with itself is `derived` (the schema has no other kind for it) and its
    reason says it is the original itself, so nobody reads its agreement as a compression's."""
    parent = (variant.spec.lineage or {}).get("parent")
    if parent and (parent == original.source or (original.path is not None and Path(parent).resolve() == Path(original.path).resolve())):
        recipe = (variant.spec.lineage or {}).get("recipe") or {}
        return "derived", f"compressed from the original ({recipe.get('method', 'recipe unknown')})"
    same = identical(original, variant)
    if same:
        return "derived", f"the original itself ({same})"
    ours, theirs = (original.spec.data or {}).get("fingerprint"), (variant.spec.data or {}).get("fingerprint")
    if ours and ours == theirs:
        return "same data", "not derived from the original, trained on data of the same fingerprint"
    if not ours or not theirs:
        return "unrelated", "not derived from the original, and no data fingerprint to match"
    return "unrelated", f"not derived from the original, and trained on other data (fingerprint {theirs[:12]} vs {ours[:12]})"


def identical(original, variant) -> str | None:
    """Why `variant` is the original itself (the same object or module, the same artifact directory, the same
    weights and ONNX files by checksum, or the same in-memory ONNX graph), or None when it is not."""
    if variant is original or (original.module is not None and variant.module is original.module):
        return "the same model object"
    if original.path is not None and variant.path is not None \
            and Path(original.path).resolve() == Path(variant.path).resolve():
        return "the same artifact directory"
    files = [((getattr(original.spec, part) or {}).get("sha256"), (getattr(variant.spec, part) or {}).get("sha256"))
             for part in ("weights", "onnx")]
    if any(ours for ours, _ in files) and all(ours == theirs for ours, theirs in files):
        digest = next(ours for ours, _ in files if ours)
        return f"the same weights file checksum, sha256 {digest[:12]}"
    graphs = [getattr(m, "onnx_bytes", None) for m in (original, variant)]
    if all(g is not None for g in graphs):
        import hashlib

        a, b = (hashlib.sha256(bytes(g)).hexdigest() for g in graphs)
        if a == b:
            return f"the same ONNX graph, sha256 {a[:12]}"
    return None


def top_feature_ranks(original_values, variant_values, names: list[str] | None = None, k: int = TOP_FEATURES) -> list[dict]:
    """Rank (1 = most important by mean |attribution|) of the original's top-k inputs, in the original and the variant."""
    a = np.abs(np.asarray(original_values, np.float64)).reshape(len(original_values), -1).mean(0)
    b = np.abs(np.asarray(variant_values, np.float64)).reshape(len(variant_values), -1).mean(0)
    names = names if names is not None and len(names) == a.size else [f"x{i}" for i in range(a.size)]
    rank_b = np.empty(b.size, int)
    rank_b[np.argsort(-b, kind="stable")] = np.arange(1, b.size + 1)
    return [{"feature": names[i], "rank": r + 1, "variant_rank": int(rank_b[i])}
            for r, i in enumerate(np.argsort(-a, kind="stable")[:min(k, a.size)])]


def drift_status(lo: float, hi: float, threshold: float) -> str:
    """drifted (the whole interval below the threshold), uncertain (it straddles it) or kept."""
    return "drifted" if hi < threshold else "uncertain" if lo < threshold else "kept"


def drift_row(variant_name: str, original_attr, variant_attr, *, accuracy: float, original_accuracy: float,
              noise_floor_topk: float | None, random_floor_topk: float | None, seed: int = 0,
              feature_names: list[str] | None = None) -> dict:
    """One row of the drift table (see docs/results.md): agreement with intervals, a status read from the
    interval against a threshold relative to the noise floor, and the original's top inputs' rank changes.

    `feature_names` names the inputs as `explain.plots.element_names` does (per element of a flattened input)."""
    from .sanity import EMPTY_SHARE_MAX, empty_rows

    agree = attribution_agreement(original_attr.values, variant_attr.values, seed=seed)
    drop = 100.0 * (original_accuracy - accuracy)
    floor = 1.0 if noise_floor_topk is None else noise_floor_topk
    row = {"variant": variant_name, "method": variant_attr.requested, "ran": variant_attr.method,
           "runtime": variant_attr.runtime, "routed": variant_attr.routed, "accuracy": round(accuracy, 4),
           "accuracy_drop": round(drop, 2), **agree, "noise_floor_topk": floor,
           "random_floor_topk": random_floor_topk}
    threshold = DRIFT_FRACTION * floor
    empty = max(float(empty_rows(original_attr.values).mean()), float(empty_rows(variant_attr.values).mean()))
    ranks = top_feature_ranks(original_attr.values, variant_attr.values, feature_names)
    moved = [f"{r['feature']} {r['rank']} -> {r['variant_rank']}" for r in ranks if r["variant_rank"] != r["rank"]]
    status = "uninformative" if empty > EMPTY_SHARE_MAX else drift_status(agree["topk_overlap_lo"],
                                                                          agree["topk_overlap_hi"], threshold)
    row.update(status=status, threshold=round(threshold, 4), empty_share=round(empty, 4), top_features=ranks)
    holds = drop <= MAX_ACCURACY_DROP
    row["flag"] = bool(holds and status == "drifted")
    interval = (f"top-{agree['topk']} overlap {agree['topk_overlap']:.2f} [{agree['topk_overlap_lo']:.2f}, "
                f"{agree['topk_overlap_hi']:.2f}]")
    limit = f"threshold {threshold:.2f} = {DRIFT_FRACTION} x noise floor {floor:.2f}"
    ranks_text = f"; top inputs' ranks moved: {', '.join(moved)}" if moved else ""
    if status == "uninformative":
        row["verdict"] = (f"uninformative: {100 * empty:.0f}% of the maps are empty or constant "
                          f"(> {100 * EMPTY_SHARE_MAX:.0f}%), so their overlap means nothing")
    elif status == "drifted":
        cause = f"accuracy holds (drop {drop:.1f} points)" if holds else f"and accuracy dropped {drop:.1f} points"
        row["verdict"] = f"explanations moved: {cause}; {interval} is below the {limit}{ranks_text}"
    elif status == "uncertain":
        row["verdict"] = f"uncertain: {interval} straddles the {limit}{ranks_text}"
    else:
        row["verdict"] = f"agrees with the original: {interval} is above the {limit}{ranks_text}"
    return row


GUARD_METHOD = "feature_ablation"   # deterministic (noise floor 1.0) and runs on every runtime, ONNX included


def attribution_drift(original, variant, x: np.ndarray, *, method: str = GUARD_METHOD, max_drift: float | None = None,
                      seed: int = 0) -> dict:
    """How far `variant`'s attributions of `x` moved from `original`'s: the check compression runs per candidate.

    The top-k overlap with its bootstrap interval is read against a threshold: `DRIFT_FRACTION` of the method's
    noise floor (1.0 for a deterministic method), or the floor minus `max_drift` when given (the overlap a
    variant may lose). Returns {method, samples, topk, topk_overlap, topk_overlap_lo, topk_overlap_hi,
    noise_floor, threshold, status, seconds} with status drifted / uncertain / kept (see `drift_status`).
    """
    import time

    from .methods import attribute
    from .registry import get_method

    start = time.perf_counter()
    ours = attribute(original, x, None, method, seed=seed)
    theirs = attribute(variant, x, ours.targets, method, seed=seed)
    agree = attribution_agreement(ours.values, theirs.values, seed=seed)
    floor = 1.0
    if get_method(method).sampled:
        again = attribute(original, x, ours.targets, method, seed=seed + 1)
        floor = float(topk_overlap_rows(ours.values, again.values, agree["topk"]).mean())
    threshold = DRIFT_FRACTION * floor if max_drift is None else floor - max_drift
    return {"method": method, "samples": int(len(x)), "topk": agree["topk"], "topk_overlap": agree["topk_overlap"],
            "topk_overlap_lo": agree["topk_overlap_lo"], "topk_overlap_hi": agree["topk_overlap_hi"],
            "noise_floor": floor, "threshold": threshold,
            "status": drift_status(agree["topk_overlap_lo"], agree["topk_overlap_hi"], threshold),
            "seconds": time.perf_counter() - start}
