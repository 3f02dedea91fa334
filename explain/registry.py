"""The explain method registry: `register_method`, `list_methods`, `get_method`, and what a method declares.

A method is a function `fn(ctx, x, targets, **options) -> (values, reference_output, delta[, estimate])`
(`estimate`: an optional dict of per-sample error bars, keys as `methods.ESTIMATE_FIELDS` plus `tolerance`) registered with
`@register_method(name, ...capabilities)`; its keyword options are annotated with `trainers.options` types
and every call is checked against them. This module imports no method module: method modules import
`register_method`, and `explain.load_methods()` imports the built-in ones on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.registry import Entry, Registry

RUNTIMES = ("torch", "fake-quant", "onnx")


@dataclass
class Explainer(Entry):
    """A registered explain method and what it declares.

    Attributes:
        families: model families it explains (empty: every registered family); `refusal` says why not.
        runtimes: torch (the PyTorch module), fake-quant (the twin of an int8 ONNX artifact), onnx (black box).
        library: the library behind it (captum, shap, toolkit...).
        sampled: stochastic, so it has a noise floor between seeds.
        axiom: where completeness holds (sum of attributions = f(x) - f(baseline)): True for every family it
            explains, or a tuple of families.
        needs_background: its reference is a background set of training samples, not the training mean.
        default: in `default_methods(family)`: True for every family it explains, or a tuple of families.
    """

    runtimes: tuple[str, ...] = ("torch", "fake-quant")
    library: str = ""
    sampled: bool = False
    axiom: bool | tuple[str, ...] = False
    needs_background: bool = False
    default: bool | tuple[str, ...] = False

    def holds_axiom(self, family: str) -> bool:
        """Completeness should hold on a `family` model."""
        return self._declared(self.axiom, family)

    def is_default(self, family: str) -> bool:
        return self._declared(self.default, family)

    def _declared(self, value, family: str) -> bool:
        return self.supports(family) if value is True else family in (value or ())


METHODS: Registry[Explainer] = Registry("explain method", Explainer, positional=3)
register_method = METHODS.register


def loaded() -> Registry[Explainer]:
    """The registry, with the built-in method modules imported."""
    from . import load_methods

    load_methods()
    return METHODS


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names, in registration order; only those that explain `family` when given."""
    return loaded().names(family)


def get_method(name: str, family: str | None = None) -> Explainer:
    """The method `name`; one ToolkitError line when unknown or when it cannot explain a `family` model."""
    return loaded().get(name, family)


def default_methods(family: str) -> tuple[str, ...]:
    """The methods run when none are asked for: those declaring `default` for `family`, in registration order."""
    return tuple(e.name for e in loaded().entries(family) if e.is_default(family))
