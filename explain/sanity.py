"""Does an explanation depend on the model? Cascading randomisation against its noise floor, and input-only maps.

The model-parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018)
re-initialises the layers from the top (output) layer down and watches the attributions change. A fixed
cut-off on the trained-vs-randomised Spearman says little on its own: for methods that multiply by the
input (integrated gradients, DeepLift, Shapley) two re-initialised models already agree with each other,
because both maps carry |x - baseline|. So the statistic is read against its noise floor, the same statistic
between re-initialisations with different seeds, and the maps are also compared with two references:

- input-only: |x - mean| / spread, what a map would look like if it only echoed the input;
- model-only: the trained model's local gradient magnitude, scaled to the same units.

Verdicts: `separated` (trained maps differ from re-initialised ones beyond the floor), `input-only` (closer
to the input reference than to the model reference), `not separated`, `uninformative` (too many empty or
constant maps: a constant map has no ranking, so it can never pass). Thresholds: docs/results.md.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .methods import Attribution, attribute

SEEDS = 3                 # re-initialisations: the floor is the statistic between each pair of them
MAX_CASCADE_POINTS = 4    # cascade steps measured (top layer first), the full randomisation always among them
EMPTY_SHARE_MAX = 0.25    # above this share of empty/constant maps a method is uninformative
SEPARATION_MARGIN = 0.1   # trained-vs-random must sit this far below random-vs-random
UNRELATED_SPEARMAN = 0.2  # ... or below this (the maps share next to nothing with a re-initialised model's)
VERDICTS = ("separated", "input-only", "not separated", "uninformative")


def empty_rows(values: np.ndarray) -> np.ndarray:
    """Per sample: the map is all zero or constant (no ranking of the inputs)."""
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    return np.ptp(flat, axis=1) <= 1e-7 * np.abs(flat).max(axis=1)


def _spearman(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float | None:
    """Median Spearman of |a| and |b| over the samples in `keep`; None when none is left."""
    from .quality import spearman_rows

    if not keep.any():
        return None
    return float(np.median(spearman_rows(np.abs(a[keep]), np.abs(b[keep]))))


def parametrized_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Layers holding learned parameters of their own, in definition order (input side first)."""
    return [(name, layer) for name, layer in module.named_modules()
            if layer is not module and hasattr(layer, "reset_parameters")
            and any(True for _ in layer.parameters(recurse=False))]


def randomized_copy(model, seed: int = 0, top: int | None = None):
    """The model with the `top` layers nearest the output re-initialised (all when None), input statistics kept."""
    from trainers.artifact import LoadedModel, ModelSpec

    module = copy.deepcopy(model.module).float()
    layers = parametrized_layers(module)
    chosen = layers if top is None else layers[len(layers) - top:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 12345)
        for _, layer in reversed(chosen):
            layer.reset_parameters()
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
    `cascade` (the median Spearman of |maps| after re-initialising the top 1, 2, ... layers, one seed),
    `seeds` (that statistic with every layer re-initialised, per seed), `floor` (the same statistic between
    two fully re-initialised models, per pair of seeds), `input_only` and `model_reference` (the
    Spearman with each reference), `empty_share` (share of empty maps of the trained model) and
    `verdict`, `reason`; `spearman` (the mean of `seeds`) and `topk_overlap` (with the first fully
    re-initialised model) as before the cascade.
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
    cascade = []
    for top in _cascade_points(len(layers)):
        values = full[0] if top == len(layers) else randomised(seed, top)
        cascade.append({"layers": ", ".join(reversed(names[len(names) - top:])),
                        "spearman": _spearman(attr.values, values, keep & ~empty_rows(values))})
    seeds = [_spearman(attr.values, v, keep & k) for v, k in zip(full, full_keep)]
    floor = [_spearman(full[i], full[j], full_keep[i] & full_keep[j])
             for i in range(SEEDS) for j in range(i + 1, SEEDS)]
    model_map = attribute(model, x, attr.targets, "saliency").values * input_spread(model.spec, x)
    from .quality import topk, topk_overlap_rows

    out = {"cascade": cascade, "seeds": seeds, "floor": floor, "empty_share": empty_share,
           "spearman": float(np.mean([s for s in seeds if s is not None])) if any(s is not None for s in seeds) else None,
           "topk_overlap": float(topk_overlap_rows(attr.values, full[0], topk(x[0].size)).mean()),
           "input_only": _spearman(attr.values, input_only_map(model.spec, x, options.get("baseline")), keep),
           "model_reference": _spearman(attr.values, model_map, keep & ~empty_rows(model_map))}
    out["verdict"], out["reason"] = sanity_verdict(out)
    return out


def sanity_verdict(check: dict) -> tuple[str, str]:
    """(verdict, reason) from the figures of `cascading_randomization` (thresholds at the top of this module)."""
    share = check["empty_share"]
    if share > EMPTY_SHARE_MAX:
        return "uninformative", (f"{100 * share:.0f}% of the maps are empty or constant "
                                 f"(> {100 * EMPTY_SHARE_MAX:.0f}%): they rank nothing")
    seeds = [s for s in check["seeds"] if s is not None]
    floor = [s for s in check["floor"] if s is not None]
    if not seeds:
        return "uninformative", "every re-initialised model gave empty maps: nothing to compare"
    trained, ref_input, ref_model = float(np.mean(seeds)), check["input_only"], check["model_reference"]
    if ref_input is not None and ref_model is not None and ref_input > ref_model:
        return "input-only", (f"closer to the input-only map |x - mean|/std (spearman {ref_input:.2f}) than to "
                              f"the model's gradients ({ref_model:.2f})")
    floor_mean = float(np.mean(floor)) if floor else None
    if max(seeds) < UNRELATED_SPEARMAN:
        return "separated", (f"spearman with re-initialised models {trained:.2f} (max {max(seeds):.2f} "
                             f"< {UNRELATED_SPEARMAN} over {len(seeds)} seeds)")
    if floor_mean is not None and trained < floor_mean - SEPARATION_MARGIN and max(seeds) < min(floor):
        return "separated", (f"spearman with re-initialised models {trained:.2f}, below the "
                             f"{floor_mean:.2f} between two re-initialisations (margin {SEPARATION_MARGIN})")
    floor_text = f"{floor_mean:.2f} between two re-initialisations" if floor_mean is not None else "no floor"
    return "not separated", (f"spearman with re-initialised models {trained:.2f} is not below the noise floor "
                             f"({floor_text}, margin {SEPARATION_MARGIN})")
