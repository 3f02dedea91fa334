"""Does an explanation depend on the model? Cascading randomisation against its noise floor, and input-only maps.

The model-parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018)
re-initialises the layers from the top (output) layer down and watches the attributions change. A fixed
cut-off on the trained-vs-randomised Spearman says little on its own: for methods that multiply by the
input (integrated gradients, DeepLift, Shapley) two re-initialised models already agree with each other,
because both maps carry |x - baseline|. So the statistic is read against its noise floor, the same statistic
between re-initialisations with different seeds, and the maps are also compared with two references:

- input-only: |x - mean| / spread, what a map would look like if it only echoed the input;
- model-only: the trained model's local gradient magnitude, scaled to the same units.

The statistic is the mean over samples of the per-sample Spearman of |maps| (a median of 16 values that each
take few levels with 5 features moved in steps), magnitudes below `TIE_TOLERANCE` of a row's largest counted as
exact zeros so that numerical dust (1e-9 left by a sampled estimator on an ignored input) ranks nothing; ties get
average ranks. Which models were re-initialised is the largest source of noise (one seed moves the statistic by
0.3 on a 5-feature table), so the decision reads 95% intervals from a pigeonhole bootstrap (Owen, "The pigeonhole
bootstrap", Ann. Appl. Stat. 2007: re-initialisations and samples resampled independently, as for crossed random
effects) and says `inconclusive` when an interval straddles its threshold instead of flipping with the seed.

What the test can establish: that the trained weights leave a mark on the maps, i.e. that the trained model's
maps are not what random weights would give. Under "the trained model is like a re-initialised one", the trained
maps relate to re-initialised models' exactly as those relate to each other, so the trained statistic equals the
floor; only a trained statistic surely below the floor rejects that. A low statistic on its own does not: where
re-initialised models already share next to nothing with each other (Grad-CAM of random CNNs, floor ~0), any
model, one trained on shuffled labels included, shares next to nothing with them too (the audit saw such a CNN,
at chance accuracy, pass on a trained statistic of -0.01 against a floor of -0.01, while the well-trained CNN
stayed inconclusive). That case is inconclusive, with a reason saying the test cannot decide there.

Verdicts: `separated` (trained maps differ from re-initialised ones beyond the floor by more than the margin: the
only evidence the test gives), `inconclusive` (the intervals leave both outcomes open, or the floor is too low to
read: not a failure), `input-only` (surely closer to the input reference than to the model reference), `not
separated` (surely within the margin of the floor while surely sharing at least `UNRELATED_SPEARMAN` with the
re-initialised models' maps), `uninformative` (too many empty or constant maps: a constant map has no ranking,
so it can never pass). Thresholds: docs/results.md.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .methods import Attribution, attribute

SEEDS = 5                 # re-initialisations: the floor is the statistic between each pair of them (10 pairs)
MAX_CASCADE_POINTS = 4    # cascade steps measured (top layer first), the full randomisation always among them
EMPTY_SHARE_MAX = 0.25    # above this share of empty/constant maps a method is uninformative
SEPARATION_MARGIN = 0.1   # trained-vs-random must sit this far below random-vs-random
UNRELATED_SPEARMAN = 0.2  # below this the maps share next to nothing with a re-initialised model's: no failure,
#                           but no separation either unless the floor is above by the margin
TIE_TOLERANCE = 1e-6      # |attribution| below this share of its map's largest is an exact zero (a tie)
CONFIDENCE = 0.95         # two-sided level of the intervals the verdict reads
BOOTSTRAP = 2000          # resamples: the interval's ends move by < 0.01 between bootstrap seeds
DIGITS = 3                # the figures the verdict reads are rounded to this, as its reason prints them
VERDICTS = ("separated", "inconclusive", "input-only", "not separated", "uninformative")
# a correct map fails this test where what every model's maps share sets their ranking: methods that multiply by
# (x - baseline) on small, well-separated data (integrated gradients, DeepLift, shapley on digits: docs/results.md)
NOT_SEPARATED_WHY = ("the ranking of |attributions| is what random weights give too (for a method that multiplies by "
                     "x - baseline, that factor ranks them), so the map cannot show these weights; whether its values "
                     "find the model's evidence is the faithfulness check's to say")


def empty_rows(values: np.ndarray) -> np.ndarray:
    """Per sample: the map is all zero or constant (no ranking of the inputs)."""
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    return np.ptp(flat, axis=1) <= 1e-7 * np.abs(flat).max(axis=1)


def tie_magnitudes(values: np.ndarray) -> np.ndarray:
    """|values| per sample (N, D), with magnitudes below `TIE_TOLERANCE` x the row's largest set to exactly 0.

    Estimators leave ~1e-9 where the exact attribution is 0 (an input the model ignores); ranked as they are,
    those values order the ignored inputs at random and move the Spearman by more than the effect measured.
    """
    flat = np.abs(np.asarray(values, np.float64).reshape(len(values), -1))
    return np.where(flat < TIE_TOLERANCE * flat.max(axis=1, keepdims=True), 0.0, flat)


def spearman_per_sample(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per sample the Spearman of |a| and |b| (ties: average ranks), NaN for samples not in `keep`."""
    # spearman_rows ranks with scipy's rankdata, whose default gives tied values their average rank
    from .quality import spearman_rows

    out = np.full(len(a), np.nan)
    if keep.any():
        out[keep] = spearman_rows(tie_magnitudes(a[keep]), tie_magnitudes(b[keep]))
    return out


def _mean(values) -> float | None:
    """Mean of the values that are not NaN / None; None when none is left."""
    kept = [float(v) for v in np.ravel(np.asarray(values, dtype=object)) if v is not None and not np.isnan(v)]
    return float(np.mean(kept)) if kept else None


def _spearman(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float | None:
    """Mean Spearman of |a| and |b| over the samples in `keep`; None when none is left."""
    return _mean(spearman_per_sample(a, b, keep))


def _means(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean over the last axis ignoring NaN, then over `axes` the same way (NaN where nothing is left)."""
    for axis in (-1, *axes):
        valid = ~np.isnan(x)
        count = valid.sum(axis)
        x = np.where(count > 0, np.where(valid, x, 0.0).sum(axis) / np.maximum(count, 1), np.nan)
    return x


def _rounded(values) -> list[float | None]:
    """Figures rounded to `DIGITS`: the verdict reads the numbers its reason prints, so they always agree."""
    return [None if v is None else round(float(v), DIGITS) for v in values]


def separation_figures(trained: np.ndarray, between: np.ndarray, seed: int = 0) -> dict:
    """The statistics the verdict reads, with their intervals, from per-sample Spearman values.

    Args:
        trained: (S, N) trained-vs-re-initialised Spearman, per re-initialisation and sample (NaN: not kept).
        between: (S, S, N) the same between two re-initialisations (diagonal NaN).

    Returns `trained` (mean over seeds of the per-seed mean), `floor_mean` (mean over pairs), `difference`
    (floor - trained) and `trained_lo/hi`, `difference_lo/hi`: percentile intervals at `CONFIDENCE` from a
    pigeonhole bootstrap that resamples re-initialisations and samples independently, so both the choice of
    random models and of samples show in the width (None where a figure has no value).
    """
    s, n = trained.shape
    rng = np.random.default_rng(seed)
    si, ni = rng.integers(0, s, (BOOTSTRAP, s)), rng.integers(0, n, (BOOTSTRAP, n))
    t = _means(trained[si[:, :, None], ni[:, None, :]], (1,))
    # a pair drawn twice counts twice; a re-initialisation paired with itself is NaN (the diagonal) and drops
    f = _means(between[si[:, :, None, None], si[:, None, :, None], ni[:, None, None, :]], ()).reshape(BOOTSTRAP, -1)
    f = _means(f, ())
    pairs = between[np.triu_indices(s, 1)]
    point_t, point_f = _mean(_means(trained, ())), _mean(_means(pairs, ()))
    tails = 100 * np.array([(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])

    def interval(values, point):
        values = values[~np.isnan(values)]
        if point is None or not len(values):
            return None, None
        return _rounded(np.percentile(values, tails))

    point_t, point_f = _rounded([point_t, point_f])
    out = {"trained": point_t, "floor_mean": point_f}
    out["trained_lo"], out["trained_hi"] = interval(t, point_t)
    out["difference"] = None if point_t is None or point_f is None else _rounded([point_f - point_t])[0]
    out["difference_lo"], out["difference_hi"] = interval(f - t, out["difference"])
    return out


def reference_figures(input_only: np.ndarray, model_reference: np.ndarray, seed: int = 0) -> dict:
    """Per-sample Spearman with the two references reduced to means and a bootstrap interval of their
    difference (input - model) over samples; the references are fixed maps, so samples are the only noise."""
    out = {"input_only": _mean(input_only), "model_reference": _mean(model_reference),
           "reference_difference": None, "reference_difference_lo": None, "reference_difference_hi": None}
    both = ~np.isnan(input_only) & ~np.isnan(model_reference)
    if not both.any():
        return out
    d = (input_only - model_reference)[both]
    draws = d[np.random.default_rng(seed).integers(0, len(d), (BOOTSTRAP, len(d)))].mean(axis=1)
    point, lo, hi = _rounded([d.mean(), *np.percentile(draws, 100 * np.array([(1 - CONFIDENCE) / 2,
                                                                              (1 + CONFIDENCE) / 2]))])
    out.update(reference_difference=point, reference_difference_lo=lo, reference_difference_hi=hi)
    return out


def parametrized_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules holding learned parameters of their own, in definition order (input side first): layers, and a
    user's module's own parameters (a class token, a positional embedding: named "(own parameters)")."""
    return [(name or "(own parameters)", layer) for name, layer in module.named_modules()
            if any(True for _ in layer.parameters(recurse=False))]


def _reinitialise(layer: torch.nn.Module) -> None:
    """A layer's own initialisation (`reset_parameters`; MultiheadAttention's `_reset_parameters`, which covers its
    query/key/value projections); parameters with none are drawn again at their own scale."""
    for reset in ("reset_parameters", "_reset_parameters"):
        if callable(getattr(layer, reset, None)):
            getattr(layer, reset)()
            return
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02
            p.copy_(torch.randn_like(p) * scale)


def randomized_copy(model, seed: int = 0, top: int | None = None):
    """The model with the `top` layers nearest the output re-initialised (all when None), input statistics kept."""
    from trainers.artifact import LoadedModel, ModelSpec

    module = copy.deepcopy(model.module).float()
    layers = parametrized_layers(module)
    chosen = layers if top is None else layers[len(layers) - top:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 12345)
        for _, layer in reversed(chosen):
            _reinitialise(layer)
    spec = ModelSpec.from_dict({**model.spec.to_dict(), "runtime": "torch", "dtype": "float32", "onnx": None})
    return LoadedModel(module=module.eval(), spec=spec, path=None)


def input_spread(spec, x: np.ndarray) -> np.ndarray:
    """Each input element's spread: the training std the model normalises by, else the std over `x` (never 0)."""
    std = (spec.preprocessing or {}).get("std")
    if std is not None:
        spread = np.broadcast_to(np.asarray(std, np.float64), tuple(spec.input_shape))
    else:
        spread = np.asarray(x, np.float64).std(axis=0)
    return np.where(spread > 1e-12, spread, 1.0)


def input_only_map(spec, x: np.ndarray, baseline=None) -> np.ndarray:
    """|x - baseline| / spread: the map of a method that only echoes the input; `baseline` is the one the
    attributions were computed from (default: `methods.default_baseline`)."""
    from .methods import default_baseline

    base = default_baseline(spec) if baseline is None else np.asarray(baseline, np.float64)
    return np.abs(np.asarray(x, np.float64) - base) / input_spread(spec, x)


def _cascade_points(n_layers: int) -> list[int]:
    points = sorted({int(round(v)) for v in np.linspace(1, n_layers, min(n_layers, MAX_CASCADE_POINTS))})
    return points if points[-1] == n_layers else [*points, n_layers]


def cascading_randomization(model, x: np.ndarray, attr: Attribution, seed: int = 0, **options) -> dict | None:
    """Attributions of `x` after re-initialising the layers from the top down, against the trained model's.

    Returns None for a model without a PyTorch module (a black-box ONNX artifact). Otherwise a dict:
    `cascade` (the mean Spearman of |maps| after re-initialising the top 1, 2, ... layers, one seed),
    `seeds` (that statistic with every layer re-initialised, per seed), `floor` (the same statistic between
    two fully re-initialised models, per pair of seeds), `input_only` and `model_reference` (the
    Spearman with each reference), `empty_share` (share of empty maps of the trained model), the figures of
    `separation_figures` and `reference_figures` the verdict reads, and `verdict`, `reason`; `spearman` (the
    mean of `seeds`) and `topk_overlap` (with the first fully re-initialised model) as before the cascade.
    """
    if model.module is None:
        return None
    layers = parametrized_layers(model.module)
    if not layers:
        return None
    names = [name for name, _ in layers]
    keep = ~empty_rows(attr.values)
    empty_share = float(1.0 - keep.mean())

    def randomised(s: int, top: int | None = None) -> np.ndarray:
        return attribute(randomized_copy(model, s, top), x, attr.targets, attr.method, seed=seed, **options).values

    full = [randomised(seed + i) for i in range(SEEDS)]
    full_keep = [~empty_rows(v) for v in full]
    trained = np.stack([spearman_per_sample(attr.values, v, keep & k) for v, k in zip(full, full_keep)])
    between = np.full((SEEDS, SEEDS, len(x)), np.nan)
    for i in range(SEEDS):
        for j in range(i + 1, SEEDS):
            between[i, j] = between[j, i] = spearman_per_sample(full[i], full[j], full_keep[i] & full_keep[j])
    cascade = []
    for top in _cascade_points(len(layers)):
        rho = trained[0] if top == len(layers) else spearman_per_sample(
            attr.values, values := randomised(seed, top), keep & ~empty_rows(values))
        cascade.append({"layers": ", ".join(reversed(names[len(names) - top:])), "spearman": _mean(rho)})
    seeds = [_mean(row) for row in trained]
    floor = [_mean(between[i, j]) for i in range(SEEDS) for j in range(i + 1, SEEDS)]
    from .quality import topk, topk_overlap_rows

    input_rho = spearman_per_sample(attr.values, input_only_map(model.spec, x, options.get("baseline")), keep)
    model_rho = _model_reference_rho(model, x, attr, keep)
    out = {"cascade": cascade, "seeds": seeds, "floor": floor, "empty_share": empty_share,
           "spearman": _mean(seeds),
           "topk_overlap": float(topk_overlap_rows(attr.values, full[0], topk(x[0].size)).mean()),
           **reference_figures(input_rho, model_rho, seed), **separation_figures(trained, between, seed)}
    out["verdict"], out["reason"] = sanity_verdict(out)
    return out


def _model_reference_rho(model, x: np.ndarray, attr, keep: np.ndarray) -> np.ndarray:
    """Per-sample Spearman of the maps with the model's gradients times each input's spread; NaN (no model
    reference) where the input has no gradient (integer tokens: `explain.probe`, saliency is refused there)."""
    from .probe import NO_INPUT_GRADIENT, probe_tags

    if NO_INPUT_GRADIENT in probe_tags(model):
        return np.full(len(x), np.nan)
    model_map = attribute(model, x, attr.targets, "saliency").values * input_spread(model.spec, x)
    return spearman_per_sample(attr.values, model_map, keep & ~empty_rows(model_map))


def _interval(check: dict, name: str) -> str:
    return (f"{check[name]:.{DIGITS}f} ({100 * CONFIDENCE:.0f}% interval {check[name + '_lo']:.{DIGITS}f} "
            f"to {check[name + '_hi']:.{DIGITS}f})")


def _against_unrelated(check: dict) -> str:
    """Where the trained statistic's interval lies against `UNRELATED_SPEARMAN`, in the reason's words."""
    if check["trained_lo"] >= UNRELATED_SPEARMAN:
        return "not below"
    return "below" if check["trained_hi"] < UNRELATED_SPEARMAN else "an interval that straddles"


def sanity_verdict(check: dict) -> tuple[str, str]:
    """(verdict, reason) from the figures of `cascading_randomization` (thresholds at the top of this module).

    In order: too many empty maps -> uninformative; the input reference surely closer than the model's
    (interval of the difference above 0) -> input-only; the floor surely above the trained statistic by more
    than `SEPARATION_MARGIN` (lower end of the interval above the margin) -> separated, the only way to it;
    surely not (upper end below) while the trained statistic is surely at least `UNRELATED_SPEARMAN` ->
    not separated; surely not while the trained statistic is low -> inconclusive (the floor leaves no room to
    separate: a model trained on shuffled labels looks the same); else inconclusive. Without a floor the
    trained statistic alone cannot separate: surely at least `UNRELATED_SPEARMAN` -> not separated, else
    inconclusive. The reason names the rule that decided and the numbers it compared.
    """
    share = check["empty_share"]
    if share > EMPTY_SHARE_MAX:
        return "uninformative", (f"{100 * share:.0f}% of the maps are empty or constant "
                                 f"(> {100 * EMPTY_SHARE_MAX:.0f}%): they rank nothing")
    if check["trained"] is None:
        return "uninformative", "every re-initialised model gave empty maps: nothing to compare"
    if check["reference_difference"] is not None and check["reference_difference_lo"] > 0:
        return "input-only", (f"closer to the input-only map |x - mean|/std (spearman {check['input_only']:.2f}) "
                              f"than to the model's gradients ({check['model_reference']:.2f}): per-sample "
                              f"difference {_interval(check, 'reference_difference')}, above 0")
    trained = f"spearman with re-initialised models {_interval(check, 'trained')}"
    if check["difference"] is None:
        surely = check["trained_lo"] >= UNRELATED_SPEARMAN
        return ("not separated" if surely else "inconclusive"), (
            f"{trained}, {_against_unrelated(check)} {UNRELATED_SPEARMAN}, and no noise floor (fewer than two "
            "re-initialisations with maps)"
            + ("" if surely else ": a low statistic without a floor to read it against separates nothing"))
    floor = (f"the floor between two re-initialisations {check['floor_mean']:.{DIGITS}f} minus the "
             f"{check['trained']:.{DIGITS}f} with re-initialised models is {_interval(check, 'difference')}")
    if check["difference_lo"] > SEPARATION_MARGIN:
        return "separated", f"{floor}, above the margin {SEPARATION_MARGIN}"
    if check["difference_hi"] >= SEPARATION_MARGIN:
        return "inconclusive", (f"{floor}, an interval that straddles the margin {SEPARATION_MARGIN}; {trained}, "
                                f"{_against_unrelated(check)} {UNRELATED_SPEARMAN}")
    if check["trained_lo"] >= UNRELATED_SPEARMAN:
        return "not separated", (f"{floor}, below the margin {SEPARATION_MARGIN}; {trained}, "
                                 f"not below {UNRELATED_SPEARMAN}: {NOT_SEPARATED_WHY}")
    return "inconclusive", (f"{floor}, below the margin {SEPARATION_MARGIN}; {trained}, {_against_unrelated(check)} "
                            f"{UNRELATED_SPEARMAN}: the trained maps are no farther from re-initialised models' than "
                            "those are from each other, and share little with them; this test cannot tell the trained "
                            "weights from random ones here")
