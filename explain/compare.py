"""Did compression change what the model looks at? Attribution agreement between two models.

`attribution_agreement` compares two attribution sets of the same samples:
top-k overlap, signed cosine, Spearman rank correlation and sign agreement,
each a mean over samples with a bootstrap 95% interval. `drift_row` places a
variant's agreement between the noise floor (the method against itself) and
the randomisation floor (the original against a re-initialised model), and
flags a variant whose accuracy holds but whose explanations moved.
"""

from __future__ import annotations

import numpy as np

from trainers.errors import ToolkitError

from .quality import spearman_rows, topk, topk_overlap_rows

MAX_ACCURACY_DROP = 2.0      # points: "accuracy holds"
MIN_TOPK_OVERLAP = 0.7


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


def drift_row(variant_name: str, original_attr, variant_attr, *, accuracy: float, original_accuracy: float,
              noise_floor_topk: float | None, random_floor_topk: float | None, seed: int = 0) -> dict:
    """One row of the drift table (see docs/results.md)."""
    agree = attribution_agreement(original_attr.values, variant_attr.values, seed=seed)
    drop = 100.0 * (original_accuracy - accuracy)
    row = {"variant": variant_name, "method": variant_attr.requested, "ran": variant_attr.method,
           "runtime": variant_attr.runtime, "routed": variant_attr.routed, "accuracy": round(accuracy, 4),
           "accuracy_drop": round(drop, 2), **agree,
           "noise_floor_topk": 1.0 if noise_floor_topk is None else noise_floor_topk,
           "random_floor_topk": random_floor_topk}
    holds = drop <= MAX_ACCURACY_DROP
    row["flag"] = bool(holds and agree["topk_overlap"] < MIN_TOPK_OVERLAP)
    floor = row["noise_floor_topk"]
    if row["flag"]:
        row["verdict"] = (f"explanations moved: accuracy holds (drop {drop:.1f} points) but top-{agree['topk']} "
                          f"overlap {agree['topk_overlap']:.2f} < {MIN_TOPK_OVERLAP}")
    elif agree["topk_overlap_hi"] >= floor - 0.05:
        row["verdict"] = "agrees with the original (within the noise floor)"
    elif random_floor_topk is not None and agree["topk_overlap"] <= random_floor_topk:
        row["verdict"] = "no closer to the original than a re-initialised model"
    else:
        row["verdict"] = f"between the noise floor ({floor:.2f}) and the randomisation floor"
    return row
