"""The contract every explain method passes, as checks a test suite runs over the registry.

In the spirit of scikit-learn's `parametrize_with_checks`: a method registered with `register_method`
gets the checks its capabilities call for (determinism when `sampled`, completeness where it declares the
`axiom`, refusals for the families it does not declare)::

    from explain import list_methods
    from explain.checks import parametrize_with_checks

    @parametrize_with_checks(list_methods())
    def test_explain_method_contract(method, check):
        check(method, {})                     # or fast options for slow methods

Checks run on one small model per registered family (default config, trained for a few steps on
separable (1, 6, 6) images), and raise AssertionError with a one-line reason when the contract is broken.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from trainers.artifact import LoadedModel, ModelSpec
from trainers.errors import ToolkitError
from trainers.models import build_model, config_dict, list_models, make_config

from .methods import attribute
from .quality import COMPLETENESS_TOLERANCE, completeness_error
from .registry import METHODS, get_method

SHAPE = (1, 6, 6)
CLASSES = 3
SAMPLES = 3
BACKGROUND = 8


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


@functools.cache
def _data() -> tuple[np.ndarray, np.ndarray]:
    """Separable images: each class brightens one band of rows."""
    rng = np.random.default_rng(0)
    y = np.arange(96) % CLASSES
    x = rng.normal(size=(96, *SHAPE)).astype(np.float32)
    for c in range(CLASSES):
        x[y == c, :, 2 * c:2 * c + 2, :] += 2.0
    return x, y


@functools.cache
def fitted_model(family: str) -> LoadedModel:
    """A small `family` model fitted to the check data (seeded, a second or two on CPU)."""
    x, y = _data()
    mean, std = x.mean(axis=(0, 2, 3)).reshape(1, 1, 1), x.std(axis=(0, 2, 3)).reshape(1, 1, 1)
    config = config_dict(make_config(family, {}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = build_model(family, config, SHAPE, CLASSES, mean, std)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        module.train()
        for _ in range(40):
            loss = torch.nn.functional.cross_entropy(module(xt), yt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    spec = ModelSpec(family=family, config=config, input_shape=list(SHAPE), layout="image",
                     class_names=[f"c{i}" for i in range(CLASSES)],
                     preprocessing={"mean": mean.tolist(), "std": std.tolist()})
    return LoadedModel(module=module.eval(), spec=spec)


def declared_families(method: str) -> list[str]:
    """The registered families `method` explains."""
    entry = get_method(method)
    return [family for family in list_models() if entry.supports(family)]


def _explain(method: str, family: str, options: dict | None, seed: int = 0):
    x, _ = _data()
    return attribute(fitted_model(family), x[:SAMPLES], None, method, background=x[-BACKGROUND:], seed=seed,
                     **(options or {}))


def _refused(call: Callable[[], object], what: str) -> str:
    """The one-line ToolkitError message `call` raises; AssertionError when it raises none."""
    try:
        call()
    except ToolkitError as exc:
        message = str(exc)
        _expect("\n" not in message, f"{what}: refused in several lines: {message!r}")
        return message
    raise AssertionError(f"{what}: accepted")


def check_runs_on_declared_families(method: str, options: dict | None = None) -> None:
    """Attributions on every family it declares: shaped like the inputs, finite, not all zero, by `method` itself."""
    for family in declared_families(method):
        attr = _explain(method, family, options)
        _expect(attr.values.shape == (SAMPLES, *SHAPE),
                f"{method} on {family}: attributions of shape {attr.values.shape}, inputs {(SAMPLES, *SHAPE)}")
        _expect(bool(np.isfinite(attr.values).all()), f"{method} on {family}: non-finite attributions")
        _expect(bool(np.abs(attr.values).sum() > 0), f"{method} on {family}: all attributions are zero")
        _expect(attr.method == method and attr.routed is None, f"{method} on {family}: ran {attr.method} instead")


def check_refuses_undeclared_families(method: str, options: dict | None = None) -> None:
    """A family it does not declare is refused in one line, with its declared reason."""
    entry = get_method(method)
    for family in list_models():
        if entry.supports(family):
            continue
        message = _refused(lambda: _explain(method, family, options), f"{method} on a {family} model")
        reason = entry.refusal.get(family, "")
        _expect(reason in message, f"{method} on {family}: refusal {message!r} does not give the reason {reason!r}")


def check_refuses_bad_options(method: str, options: dict | None = None) -> None:
    """An unknown option, and text where a number option is expected, are refused in one line naming the option."""
    family = declared_families(method)[0]
    message = _refused(lambda: _explain(method, family, {**(options or {}), "not_an_option": 1}),
                       f"{method}: option not_an_option")
    _expect("not_an_option" in message, f"{method}: unknown option refused with {message!r}, not naming it")
    numbers = [name for name, default in METHODS.options(method).items()
               if isinstance(default, (int, float)) and not isinstance(default, bool)]
    for name in numbers:
        message = _refused(lambda: _explain(method, family, {**(options or {}), name: "many"}),
                           f"{method}: option {name}='many'")
        _expect(name in message, f"{method}: bad {name} refused with {message!r}, not naming it")


def check_deterministic_with_seed(method: str, options: dict | None = None) -> None:
    """A sampled method gives the same attributions twice with the same seed."""
    family = declared_families(method)[0]
    first, second = _explain(method, family, options, seed=3), _explain(method, family, options, seed=3)
    _expect(np.array_equal(first.values, second.values), f"{method} on {family}: two runs with seed 3 differ")


def check_completeness(method: str, options: dict | None = None) -> None:
    """Where it declares the axiom: sum of attributions = f(x) - f(reference), within the quality tolerance."""
    entry, (x, _) = get_method(method), _data()
    for family in declared_families(method):
        if not entry.holds_axiom(family):
            continue
        attr = _explain(method, family, options)
        error = completeness_error(fitted_model(family), x[:SAMPLES], attr)
        _expect(error <= COMPLETENESS_TOLERANCE,
                f"{method} on {family}: completeness error {error:.4f} above {COMPLETENESS_TOLERANCE}")


def method_checks(method: str) -> list[Callable[[str, dict | None], None]]:
    """The checks that apply to `method`, from what it declares."""
    entry = get_method(method)
    checks = [check_runs_on_declared_families, check_refuses_bad_options]
    if any(not entry.supports(family) for family in list_models()):
        checks.append(check_refuses_undeclared_families)
    if entry.sampled:
        checks.append(check_deterministic_with_seed)
    if any(entry.holds_axiom(family) for family in declared_families(method)):
        checks.append(check_completeness)
    return checks


def check_explain_method(method: str, options: dict | None = None) -> None:
    """Run every check that applies to `method`; the first broken contract raises AssertionError."""
    for check in method_checks(method):
        check(method, options)


def parametrize_with_checks(methods: list[str]):
    """A `pytest.mark.parametrize` over (method, check) for every method and the checks that apply to it."""
    import pytest

    return pytest.mark.parametrize("method, check", [pytest.param(method, check, id=f"{method}-{check.__name__}")
                                                     for method in methods for check in method_checks(method)])
