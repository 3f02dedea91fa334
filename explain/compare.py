"""Did compression change what the model looks at? Attribution agreement between two models.

`attribution_agreement` compares two attribution sets of the same samples:
top-k overlap, signed cosine, Spearman rank correlation and sign agreement,
each a mean over samples with a bootstrap 95% interval. `drift_row` decides
from three intervals (`decide`: the top-k overlap, the cosine, the original's
top inputs' shares) against thresholds relative to the method's noise floor
(the method against itself): drifted, uncertain or kept (uncertain below `MIN_DRIFT_SAMPLES`), and flags a
variant whose accuracy holds but whose explanations moved. `relation` says
whether a compared model derives from the original at all, or is the original itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.artifact import parent_checksum
from trainers.errors import ToolkitError

from .quality import cosine_rows, spearman_rows, topk, topk_overlap_rows

MAX_ACCURACY_DROP = 2.0      # points: "accuracy holds"
DRIFT_FRACTION = 0.7         # drift thresholds: this share of the method's noise floor (its agreement with itself)
TOP_FEATURES = 3             # the original's top inputs whose rank changes a drift row names
LOST_SHARE = 0.5             # a top input the variant gives less than this share of its original weight is lost
# below this many samples no verdict: the percentile bootstrap of a mean covered 0.71 of the true mean at 3
# samples, 0.83 at 5, 0.92 at 10 and 0.95 at 16 for a 95% interval (skewed values in [0, 1]), and one sample
# gives a zero-width interval; one sample read "drifted" and raised a flag on models that 36 samples call uncertain
MIN_DRIFT_SAMPLES = 10


def check_comparable(original, variant, name: str = "variant") -> None:
    """Refuse a variant whose input shape or classes differ from the original's."""
    a, b = original.spec, variant.spec
    if list(a.input_shape) != list(b.input_shape):
        raise ToolkitError(f"cannot compare {name}: its input shape {tuple(b.input_shape)} differs from the "
                           f"original's {tuple(a.input_shape)}")
    if list(a.class_names) != list(b.class_names):
        raise ToolkitError(f"cannot compare {name}: {_class_difference(list(a.class_names), list(b.class_names))}")


def _names(names: list, most: int = 4) -> str:
    """At most `most` names, quoted, then how many more."""
    shown = ", ".join(repr(str(n)) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _class_difference(original: list, variant: list) -> str:
    """How the variant's class names differ from the original's, shortened: the counts when they differ, else
    the names at the positions that differ (two counts of 10 said nothing)."""
    if len(original) != len(variant):
        return (f"its {len(variant)} classes ({_names(variant)}) differ from the original's {len(original)} "
                f"({_names(original)})")
    at = [i for i, (o, v) in enumerate(zip(original, variant)) if o != v]
    return (f"its classes differ from the original's in {len(at)} of {len(variant)} names: "
            f"{_names([variant[i] for i in at])} where the original has {_names([original[i] for i in at])}")


def _spearman_rows(a, b):
    """`spearman_rows`, with two constant maps agreeing (1) rather than scoring 0."""
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    both_flat = (np.ptp(fa, axis=1) == 0) & (np.ptp(fb, axis=1) == 0)
    return np.where(both_flat, 1.0, spearman_rows(a, b))


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
    rows = {"topk_overlap": topk_overlap_rows(a, b, k), "cosine": cosine_rows(a, b),
            "spearman": _spearman_rows(a, b), "sign_agreement": _sign_rows(a, b, k)}
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
    recipe = ((variant.spec.lineage or {}).get("recipe") or {}).get("method", "recipe unknown")
    replaced = None
    for depth, parent in enumerate(_ancestors(variant)):
        if parent == original.source or (original.path is not None
                                         and Path(parent).resolve() == Path(original.path).resolve()):
            recorded = (variant.spec.lineage or {}).get("parent_sha256") if depth == 0 else None
            ours = parent_checksum(original.spec.weights, original.spec.onnx)
            if recorded and ours and recorded != ours:
                replaced = (f"compressed from an earlier model at {parent} (its file's checksum was "
                            f"{recorded[:12]}, the original's is {ours[:12]})")
                break
            through = "" if depth == 0 else f", through {depth} variant{'s' if depth > 1 else ''} of it"
            return "derived", f"compressed from the original ({recipe}{through})"
    same = identical(original, variant)
    if same:
        return "derived", f"the original itself ({same})"
    ours, theirs = (original.spec.data or {}).get("fingerprint"), (variant.spec.data or {}).get("fingerprint")
    if replaced:
        return ("same data" if ours and ours == theirs else "unrelated"), replaced
    if ours and ours == theirs:
        return "same data", "not derived from the original, trained on data of the same fingerprint"
    if not ours or not theirs:
        return "unrelated", "not derived from the original, and no data fingerprint to match"
    return "unrelated", f"not derived from the original, and trained on other data (fingerprint {theirs[:12]} vs {ours[:12]})"


def _ancestors(variant, depth: int = 8):
    """The lineage's parents, nearest first: the variant's parent, then that artifact's parent (a variant of a
    variant), as far as their model.json files are there to read."""
    from trainers.fileio import read_json

    parent = (variant.spec.lineage or {}).get("parent")
    for _ in range(depth):
        if not isinstance(parent, str) or not parent:
            return
        yield parent
        try:
            parent = (read_json(Path(parent) / "model.json", "model.json").get("lineage") or {}).get("parent")
        except (ToolkitError, OSError):
            return


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


def top_feature_ranks(original_values, variant_values, names: list[str] | None = None, k: int = TOP_FEATURES,
                      seed: int = 0, rounds: int = 1000) -> list[dict]:
    """The original's top-k inputs (1 = most important by mean |attribution|): their rank in the original and
    the variant, their share of the total mean |attribution| in each, and the variant's share over the
    original's (`share_ratio`) with a bootstrap 95% interval over samples (1: the variant relies on the input as
    much; 0: not at all)."""
    fa = np.abs(np.asarray(original_values, np.float64)).reshape(len(original_values), -1)
    fb = np.abs(np.asarray(variant_values, np.float64)).reshape(len(variant_values), -1)
    a, b = fa.mean(0), fb.mean(0)
    names = names if names is not None and len(names) == a.size else [f"x{i}" for i in range(a.size)]
    rank_b = np.empty(b.size, int)
    rank_b[np.argsort(-b, kind="stable")] = np.arange(1, b.size + 1)
    top = np.argsort(-a, kind="stable")[:min(k, a.size)]
    rows = np.random.default_rng(seed).integers(0, len(fa), (rounds, len(fa)))   # the same resamples for both
    total_a, total_b = fa.sum(1), fb.sum(1)

    def ratio(i, pick=None):
        ta, tb = (total_a, total_b) if pick is None else (total_a[pick], total_b[pick])
        ia, ib = (fa[:, i], fb[:, i]) if pick is None else (fa[pick, i], fb[pick, i])
        share_a = ia.mean(-1) / np.maximum(ta.mean(-1), 1e-300)
        share_b = ib.mean(-1) / np.maximum(tb.mean(-1), 1e-300)
        return share_a, share_b, np.where(share_a > 0, share_b / np.where(share_a > 0, share_a, 1), 1.0)

    out = []
    for r, i in enumerate(top):
        share_a, share_b, point = ratio(i)
        lo, hi = np.percentile(ratio(i, rows)[2], [2.5, 97.5]) if len(fa) > 1 else (point, point)
        out.append({"feature": names[i], "rank": r + 1, "variant_rank": int(rank_b[i]),
                    "share": round(float(share_a), 6), "variant_share": round(float(share_b), 6),
                    "share_ratio": round(float(point), 6), "share_ratio_lo": round(float(lo), 6),
                    "share_ratio_hi": round(float(hi), 6)})
    return out


def drift_status(lo: float, hi: float, threshold: float) -> str:
    """drifted (the whole interval below the threshold), uncertain (it straddles it) or kept."""
    return "drifted" if hi < threshold else "uncertain" if lo < threshold else "kept"


def too_few_samples(samples: int | None) -> str | None:
    """Why `samples` cannot decide drift (fewer than `MIN_DRIFT_SAMPLES`), or None when they are enough."""
    if samples is None or samples >= MIN_DRIFT_SAMPLES:
        return None
    return (f"only {samples} sample{'s' if samples != 1 else ''} (fewer than {MIN_DRIFT_SAMPLES}): too few for a "
            "95% interval to decide")


def decide(agree: dict, ranks: list[dict], topk_threshold: float, cosine_threshold: float,
           share_threshold: float = LOST_SHARE, samples: int | None = None) -> tuple[str, list[str]]:
    """The drift status from three tests, each an interval against its threshold, and the tests that decided:
    - the top-k overlap (which inputs matter), below `topk_threshold`;
    - the signed cosine (how the attribution is spread, with its signs), below `cosine_threshold`: two inputs
      trading roles keep the top-k set but not the cosine;
    - each of the original's top inputs keeping its share of the attribution: the variant's share over the
      original's below `share_threshold` (`LOST_SHARE`). One input of ten dropped moves a top-10 overlap by 0.1
      at most; it moves its share to 0.
    drifted when any interval lies wholly below its threshold, uncertain when none does and one straddles its
    threshold, kept otherwise; uncertain, whatever the intervals say, on fewer than `MIN_DRIFT_SAMPLES`
    `samples`. Returns (status, the tests that read drifted, or else uncertain, or the too-few reason)."""
    few = too_few_samples(samples)
    if few:
        return "uncertain", [few]
    tests = {f"top-{agree['topk']} overlap {agree['topk_overlap']:.2f} [{agree['topk_overlap_lo']:.2f}, "
             f"{agree['topk_overlap_hi']:.2f}] (threshold {topk_threshold:.2f})":
             drift_status(agree["topk_overlap_lo"], agree["topk_overlap_hi"], topk_threshold),
             f"cosine {agree['cosine']:.2f} [{agree['cosine_lo']:.2f}, {agree['cosine_hi']:.2f}] (threshold "
             f"{cosine_threshold:.2f})": drift_status(agree["cosine_lo"], agree["cosine_hi"], cosine_threshold)}
    for r in ranks:
        tests[f"{r['feature']}'s share of the attribution {r['share_ratio']:.2f}x the original's "
              f"[{r['share_ratio_lo']:.2f}, {r['share_ratio_hi']:.2f}] (threshold {share_threshold:.2f})"] = \
            drift_status(r["share_ratio_lo"], r["share_ratio_hi"], share_threshold)
    for status in ("drifted", "uncertain"):
        named = [text for text, s in tests.items() if s == status]
        if named:
            return status, named
    return "kept", []


def drift_row(variant_name: str, original_attr, variant_attr, *, accuracy: float, original_accuracy: float,
              noise_floor_topk: float | None, random_floor_topk: float | None, seed: int = 0,
              feature_names: list[str] | None = None, noise_floor_cosine: float | None = None,
              changed_predictions: float | None = None) -> dict:
    """One row of the drift table (see docs/results.md): agreement with intervals, the original's top inputs'
    ranks and shares in the variant, and a status from `decide` (thresholds relative to the method's noise
    floors: its top-k overlap and cosine with itself under another seed, 1.0 for a deterministic method).

    `feature_names` names the inputs as `explain.plots.element_names` does (per element of a flattened input);
    `changed_predictions`: the share of the explained samples the variant classifies differently (the
    attributions of both are to the original's predicted class)."""
    from .sanity import EMPTY_SHARE_MAX, empty_rows

    agree = attribution_agreement(original_attr.values, variant_attr.values, seed=seed)
    drop = 100.0 * (original_accuracy - accuracy)
    floor = 1.0 if noise_floor_topk is None else noise_floor_topk
    cosine_floor = 1.0 if noise_floor_cosine is None else noise_floor_cosine
    row = {"variant": variant_name, "method": variant_attr.requested, "ran": variant_attr.method,
           "runtime": variant_attr.runtime, "routed": variant_attr.routed, "accuracy": round(accuracy, 4),
           "accuracy_drop": round(drop, 2), **agree, "noise_floor_topk": floor,
           "random_floor_topk": random_floor_topk}
    threshold, cosine_threshold = DRIFT_FRACTION * floor, DRIFT_FRACTION * cosine_floor
    empty = max(float(empty_rows(original_attr.values).mean()), float(empty_rows(variant_attr.values).mean()))
    ranks = top_feature_ranks(original_attr.values, variant_attr.values, feature_names, seed=seed)
    moved = [f"{r['feature']} {r['rank']} -> {r['variant_rank']}" for r in ranks if r["variant_rank"] != r["rank"]]
    status, decided_by = decide(agree, ranks, threshold, cosine_threshold, samples=len(original_attr.values))
    if empty > EMPTY_SHARE_MAX:
        status, decided_by = "uninformative", []
    row.update(status=status, threshold=round(threshold, 4), cosine_threshold=round(cosine_threshold, 4),
               decided_by=decided_by, empty_share=round(empty, 4), top_features=ranks,
               changed_predictions=None if changed_predictions is None else round(float(changed_predictions), 4))
    holds = drop <= MAX_ACCURACY_DROP
    row["flag"] = bool(holds and status == "drifted")
    ranks_text = f"; top inputs' ranks moved: {', '.join(moved)}" if moved else ""
    changed = (f"; the variant predicts another class for {100 * changed_predictions:.0f}% of these samples"
               if changed_predictions else "")
    if status == "uninformative":
        row["verdict"] = (f"uninformative: {100 * empty:.0f}% of the maps are empty or constant "
                          f"(> {100 * EMPTY_SHARE_MAX:.0f}%), so their overlap means nothing")
    elif status == "drifted":
        cause = f"accuracy holds: drop {drop:.1f} points" if holds else f"accuracy dropped {drop:.1f} points"
        row["verdict"] = (f"explanations moved ({cause}); below the threshold: {'; '.join(decided_by)}"
                          f"{ranks_text}{changed}")
    elif status == "uncertain" and too_few_samples(len(original_attr.values)):
        row["verdict"] = f"uncertain: {decided_by[0]}{ranks_text}{changed}"
    elif status == "uncertain":
        row["verdict"] = f"uncertain: straddles the threshold: {'; '.join(decided_by)}{ranks_text}{changed}"
    else:
        row["verdict"] = (f"agrees with the original: top-{agree['topk']} overlap {agree['topk_overlap']:.2f} "
                          f"[{agree['topk_overlap_lo']:.2f}, {agree['topk_overlap_hi']:.2f}], cosine "
                          f"{agree['cosine']:.2f} [{agree['cosine_lo']:.2f}, {agree['cosine_hi']:.2f}] and the top "
                          f"inputs' shares above their thresholds ({threshold:.2f}, {cosine_threshold:.2f} = "
                          f"{DRIFT_FRACTION} x the noise floors; {LOST_SHARE}){ranks_text}{changed}")
    return row


GUARD_METHOD = "feature_ablation"   # deterministic (noise floor 1.0) and runs on every runtime, ONNX included
# large images and long signals ablated in at most 64 patches or segments (`library.image_patches`): element by
# element, a (3, 500) signal's guard was 43% of a 250-s auto run, 1,500 model calls per row and model
GUARD_OPTIONS = {"patch": None}


def _guard_options(method: str) -> dict:
    return GUARD_OPTIONS if method == GUARD_METHOD else {}


def original_attribution(original, x: np.ndarray, *, method: str = GUARD_METHOD, seed: int = 0):
    """The original's attribution `attribution_drift` compares a candidate's with (its `reference`)."""
    from .methods import attribute

    return attribute(original, x, None, method, seed=seed, **_guard_options(method))


def attribution_drift(original, variant, x: np.ndarray, *, method: str = GUARD_METHOD, max_drift: float | None = None,
                      seed: int = 0, reference=None) -> dict:
    """How far `variant`'s attributions of `x` moved from `original`'s: the check compression runs per candidate.

    `decide`'s three tests, as the drift table reads them: the top-k overlap and the cosine against
    `DRIFT_FRACTION` of the method's noise floors (1.0 for a deterministic method), the top inputs' shares against
    `LOST_SHARE`; or, with `max_drift`, each floor (1 for the shares) minus `max_drift` times the test's range,
    what a candidate may lose. `reference`: the original's attribution of `x` by `method` with seed `seed`
    (`original_attribution`), when the caller checks several candidates against one original. Returns {method,
    samples, topk, topk_overlap, topk_overlap_lo, topk_overlap_hi, cosine, noise_floor, threshold, status,
    decided_by, seconds} with status drifted / uncertain / kept.
    """
    import time

    from .methods import attribute
    from .registry import get_method

    start = time.perf_counter()
    options = _guard_options(method)
    ours = reference if reference is not None else original_attribution(original, x, method=method, seed=seed)
    theirs = attribute(variant, x, ours.targets, method, seed=seed, **options)
    agree = attribution_agreement(ours.values, theirs.values, seed=seed)
    floor = cosine_floor = 1.0
    if get_method(method).sampled:
        again = attribute(original, x, ours.targets, method, seed=seed + 1, **options)
        floor = float(topk_overlap_rows(ours.values, again.values, agree["topk"]).mean())
        cosine_floor = float(cosine_rows(ours.values, again.values).mean())
    if max_drift is None:
        thresholds = (DRIFT_FRACTION * floor, DRIFT_FRACTION * cosine_floor, LOST_SHARE)
    else:                       # what a candidate may lose, the same share of each test's range (cosine's is 2)
        thresholds = (floor - max_drift, cosine_floor - 2 * max_drift, 1.0 - max_drift)
    threshold = thresholds[0]
    status, decided_by = decide(agree, top_feature_ranks(ours.values, theirs.values, seed=seed), *thresholds,
                                samples=len(x))
    return {"method": method, "samples": int(len(x)), "topk": agree["topk"], "topk_overlap": agree["topk_overlap"],
            "topk_overlap_lo": agree["topk_overlap_lo"], "topk_overlap_hi": agree["topk_overlap_hi"],
            "cosine": agree["cosine"], "noise_floor": floor, "threshold": threshold, "status": status,
            "decided_by": decided_by, "seconds": time.perf_counter() - start}
