"""The contract every model family passes, as checks a test suite runs over the registry.

In the spirit of scikit-learn's `parametrize_with_checks`: a family registered with
`register_family` gets the whole suite by being listed by `list_models()`::

    from trainers.checks import parametrize_with_checks
    from trainers import list_models

    @parametrize_with_checks(list_models())
    def test_family_contract(family, check):
        check(family)

Each check builds the family with its default config (every config field has a default), raises
AssertionError with a one-line reason when the contract is broken, and writes only to a temporary directory.
"""

from __future__ import annotations

import tempfile
from typing import Callable

import numpy as np
import torch

from .artifact import ModelSpec, load_model, write_artifact
from .errors import ToolkitError
from .models import build_model, config_dict, make_config

SHAPES = {"features": (12,), "signal": (3, 16), "image": (2, 8, 8)}   # (F,), (C, L), (C, H, W)
CLASSES = 4
BATCH = 5


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _stats(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training statistics as the data loader shapes them (per feature, or per channel), not all 0 and 1."""
    stat_shape = shape if len(shape) == 1 else (shape[0],) + (1,) * (len(shape) - 1)
    rng = np.random.default_rng(seed)
    return rng.normal(size=stat_shape).astype(np.float32), rng.uniform(0.5, 2, size=stat_shape).astype(np.float32)


def _inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(BATCH, *shape)).astype(np.float32))


def check_forward_shapes(family: str) -> None:
    """Builds for features (F,), signal (C, L) and image (C, H, W) inputs; forward gives finite (N, classes) logits."""
    for layout, shape in SHAPES.items():
        module = build_model(family, {}, shape, CLASSES).eval()
        with torch.no_grad():
            out = module(_inputs(shape))
        _expect(tuple(out.shape) == (BATCH, CLASSES),
                f"{family} on {layout} inputs {shape}: logits of shape {tuple(out.shape)}, expected {(BATCH, CLASSES)}")
        _expect(bool(torch.isfinite(out).all()), f"{family} on {layout} inputs {shape}: non-finite logits")


def check_save_load_round_trip(family: str) -> None:
    """write_artifact then load_model gives back the same weights, statistics and logits, exactly."""
    for layout, shape in SHAPES.items():
        mean, std = _stats(shape, seed=1)
        config = config_dict(make_config(family, {}))
        module = build_model(family, config, shape, CLASSES, mean, std).eval()
        spec = ModelSpec(family=family, config=config, input_shape=list(shape), layout=layout,
                         class_names=[f"c{i}" for i in range(CLASSES)],
                         preprocessing={"mean": mean.tolist(), "std": std.tolist()})
        with tempfile.TemporaryDirectory() as tmp:
            write_artifact(tmp, module, spec)
            loaded = load_model(tmp)
        before, after = module.state_dict(), loaded.module.state_dict()
        _expect(list(before) == list(after), f"{family} on {layout} inputs: tensors differ after load")
        for name, tensor in before.items():
            _expect(torch.equal(tensor, after[name]), f"{family} on {layout} inputs: {name} differs after load")
        x = _inputs(shape)
        with torch.no_grad():
            _expect(torch.equal(module(x), loaded.module(x)), f"{family} on {layout} inputs: logits differ after load")


def check_deterministic_build(family: str, seed: int = 0) -> None:
    """The same seed builds the same weights; another seed builds other weights."""
    shape = SHAPES["image"]

    def build(s):
        with torch.random.fork_rng():
            torch.manual_seed(s)
            return build_model(family, {}, shape, CLASSES).state_dict()

    a, b, other = build(seed), build(seed), build(seed + 1)
    _expect(all(torch.equal(a[k], b[k]) for k in a), f"{family}: two builds with seed {seed} differ")
    _expect(not all(torch.equal(a[k], other[k]) for k in a),
            f"{family}: seeds {seed} and {seed + 1} build the same weights")


def check_refuses_unknown_config_keys(family: str) -> None:
    """An unknown config key is refused by name, in one ToolkitError line, by make_config and by build_model."""
    for make in (lambda: make_config(family, {"not_an_option": 1}),
                 lambda: build_model(family, {"not_an_option": 1}, SHAPES["features"], CLASSES)):
        try:
            make()
        except ToolkitError as exc:
            message = str(exc)
            _expect("not_an_option" in message and "\n" not in message,
                    f"{family}: unknown config key refused with {message!r}, not one line naming it")
        else:
            raise AssertionError(f"{family}: an unknown config key was accepted")


CHECKS: tuple[Callable[[str], None], ...] = (check_forward_shapes, check_save_load_round_trip,
                                             check_deterministic_build, check_refuses_unknown_config_keys)


def check_model_family(family: str) -> None:
    """Run every check on `family`; the first broken contract raises AssertionError."""
    for check in CHECKS:
        check(family)


def parametrize_with_checks(families: list[str]):
    """A `pytest.mark.parametrize` over (family, check) for every family and check, with readable ids."""
    import pytest

    return pytest.mark.parametrize("family, check", [pytest.param(family, check, id=f"{family}-{check.__name__}")
                                                     for family in families for check in CHECKS])
