"""The contract every registered compression method keeps, as named checks (like scikit-learn's common checks).

`method_checks(name, options)` yields `Check`s, each a callable that raises AssertionError when the method
breaks the contract:

- on every family it declares (tiny models trained for a few seconds on the built-in digits data), it
  returns a list of `Variant`s with unique, file-safe names and a recipe (plain data) naming the method;
  each variant's lineage names the source model and the recipe;
- every variant saved with `trainers.save_model` loads back with `trainers.load_model` and predicts what
  it predicted in memory, one row of class scores per sample;
- the same call twice gives the same predictions (methods seed their own randomness);
- an unknown option, a badly typed value for any option, and a model of a family it does not declare are
  refused with one ToolkitError line.

In a test suite::

    @pytest.mark.parametrize("check", method_checks("prune-structured", {"finetune_epochs": 1}), ids=str)
    def test_contract(check):
        check()
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from trainers.errors import ToolkitError

FILE_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
SAMPLES = 64  # test samples each prediction check uses
UNREGISTERED = "no-such-family"


@dataclass
class Check:
    """One named check of the contract; call it to run it."""

    name: str
    run: Callable[[], None]

    def __call__(self) -> None:
        self.run()

    def __str__(self) -> str:
        return self.name


def method_checks(name: str, options: dict | None = None, *, seed: int = 0) -> Iterator[Check]:
    """The contract checks for registered compression method `name`, run with `options` (keep them fast).

    Nothing runs until a check is called; checks of one call share the variants they make.
    """
    from . import get_method
    from trainers.models import list_models

    method = get_method(name)
    subject = _Subject(method, dict(options or {}), seed)
    declared = [f for f in list_models() if method.supports(f)]
    for family in declared:
        yield Check(f"{name}:makes_variants[{family}]", functools.partial(subject.check_variants, family))
        yield Check(f"{name}:round_trip[{family}]", functools.partial(subject.check_round_trip, family))
        yield Check(f"{name}:deterministic[{family}]", functools.partial(subject.check_deterministic, family))
    probe = declared[0] if declared else list_models()[0]
    yield Check(f"{name}:refuses_unknown_option", functools.partial(subject.check_unknown_option, probe))
    for option in _option_names(name):
        yield Check(f"{name}:refuses_bad_value[{option}]", functools.partial(subject.check_bad_value, probe, option))
    for family in [f for f in list_models() if f not in declared] + [UNREGISTERED]:
        yield Check(f"{name}:refuses_family[{family}]", functools.partial(subject.check_refuses_family, family))


def _option_names(name: str) -> list[str]:
    from .base import METHODS

    return list(METHODS.options(name))


class _Subject:
    """One method under test: runs it once per family and remembers the variants."""

    def __init__(self, method, options: dict, seed: int):
        self.method, self.options, self.seed = method, options, seed
        self._made: dict[str, list] = {}

    def made(self, family: str) -> list:
        if family not in self._made:
            self._made[family] = self.method.func(tiny_model(family, self.seed), digits(), **self.options)
        return self._made[family]

    def check_variants(self, family: str) -> None:
        from .base import Variant, lineage

        variants, source, name = self.made(family), tiny_model(family, self.seed), self.method.name
        assert isinstance(variants, list) and variants, f"{name} made no variant of a {family} model"
        names = [v.name for v in variants]
        assert len(set(names)) == len(names), f"{name}: variant names repeat: {names}"
        for v in variants:
            assert isinstance(v, Variant), f"{name} returned a {type(v).__name__}, not a Variant"
            assert FILE_SAFE.fullmatch(v.name), f"{name}: variant name {v.name!r} is not a safe file name"
            assert v.recipe.get("method") == name, f"{name}: the recipe names {v.recipe.get('method')!r}"
            json.dumps(v.recipe)  # plain data: it is written to model.json
            assert v.model.spec.lineage == lineage(source, v.recipe), \
                f"{name}: lineage {v.model.spec.lineage} does not name the source {source.source} and the recipe"

    def check_round_trip(self, family: str) -> None:
        from trainers import load_model, predict, save_model

        data = digits()
        for v in self.made(family):
            with tempfile.TemporaryDirectory(prefix="toolkit-check-") as tmp:
                loaded = load_model(save_model(v.model, Path(tmp) / v.name, onnx_bytes=v.onnx_bytes))
                logits = predict(loaded, data.x_test[:SAMPLES])
            assert logits.shape == (SAMPLES, data.num_classes), f"{v.name}: predictions of shape {logits.shape}"
            assert np.isfinite(logits).all(), f"{v.name}: non-finite predictions after loading"
            np.testing.assert_allclose(logits, _predict(v), rtol=1e-4, atol=1e-4,
                                       err_msg=f"{v.name} predicts otherwise once saved and loaded")
            assert loaded.spec.lineage["recipe"]["method"] == self.method.name

    def check_deterministic(self, family: str) -> None:
        first = self.made(family)
        again = self.method.func(tiny_model(family, self.seed), digits(), **self.options)
        assert [v.name for v in again] == [v.name for v in first], f"{self.method.name}: other variants the second time"
        for a, b in zip(first, again):
            np.testing.assert_allclose(_predict(b), _predict(a), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{a.name}: other predictions the second time with the same options")

    def check_unknown_option(self, family: str) -> None:
        message = self._refusal(tiny_model(family, self.seed), no_such_option=1)
        assert "no_such_option" in message, f"{self.method.name}: the refusal does not name the option: {message}"

    def check_bad_value(self, family: str, option: str) -> None:
        message = self._refusal(tiny_model(family, self.seed), **{option: object()})
        assert option in message, f"{self.method.name}: the refusal does not name {option}: {message}"

    def check_refuses_family(self, family: str) -> None:
        if family == UNREGISTERED:
            from trainers.artifact import LoadedModel, ModelSpec

            mlp = tiny_model("mlp", self.seed)
            model = LoadedModel(mlp.module, ModelSpec.from_dict({**mlp.spec.to_dict(), "family": family}), mlp.path)
        else:
            model = tiny_model(family, self.seed)
        message = self._refusal(model, **self.options)
        assert family in message, f"{self.method.name}: the refusal does not name the {family} family: {message}"

    def _refusal(self, model, **options) -> str:
        try:
            self.method.func(model, digits(), **options)
        except ToolkitError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{self.method.name} accepted {options or 'a ' + model.spec.family + ' model'}")
        assert message and "\n" not in message, f"{self.method.name}: the refusal is not one line: {message!r}"
        return message


def _predict(variant) -> np.ndarray:
    """The variant's predictions in memory: its ONNX graph where it has one, else its PyTorch module."""
    from trainers import predict

    from .export import run_onnx

    x = digits().x_test[:SAMPLES]
    return run_onnx(variant.onnx_bytes, x) if variant.onnx_bytes is not None else predict(variant.model.module, x)


@functools.cache
def digits():
    """The built-in digits data (1x8x8 images, 10 classes): every family reads it."""
    from trainers import load_data

    return load_data("digits")


@functools.cache
def tiny_model(family: str, seed: int = 0):
    """A `family` model with an eighth of the default widths, trained 3 epochs on digits and saved."""
    from trainers import TrainConfig, load_model, train

    out = Path(_scratch().name) / f"{family}-{seed}"
    if not out.exists():  # made by an earlier call (the cache can be cleared; the scratch folder stays)
        config = TrainConfig(epochs=3, device="cpu", seed=seed, model=tiny_config(family))
        train(digits(), family, config, out=out, progress=False)
    return load_model(out)


def tiny_config(family: str) -> dict:
    """The family's default architecture with every list of widths divided by 8 (at least 2 units each)."""
    from trainers.models import config_dict, make_config

    return {key: [max(2, w // 8) for w in value] for key, value in config_dict(make_config(family)).items()
            if isinstance(value, list) and all(isinstance(w, int) for w in value)}


@functools.cache
def _scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="toolkit-checks-")
