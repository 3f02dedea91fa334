"""The explain method registry: `register_method`, `list_methods`, `get_method`, and what a method declares.

A method is a function `fn(ctx, x, targets, **options) -> (values, reference_output, delta[, estimate])`
(`estimate`: an optional dict of per-sample error bars, keys as `methods.ESTIMATE_FIELDS` plus `tolerance`) registered with
`@register_method(name, ...capabilities)`; its keyword options are annotated with `trainers.options` types
and every call is checked against them. This module imports no method module: method modules import
`register_method`, and `explain.load_methods()` imports the built-in ones on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainers.registry import Entry, Registry

RUNTIMES = ("torch", "fake-quant", "onnx")


@dataclass
class Explainer(Entry):
    """A registered explain method and what it declares.

    Attributes:
        families: toolkit model families it explains (empty: every model, a user's own included); `needs` and
            `excludes` are capability tags read from the model (`trainers.models.capabilities`), e.g. gradient
            methods need "torch"; `refusal` says why not (keyed by family or tag).
        runtimes: torch (the PyTorch module), fake-quant (the twin of an int8 ONNX artifact), onnx (black box).
        library: the library behind it (captum, shap, toolkit...).
        sampled: stochastic, so it has a noise floor between seeds.
        axiom: where completeness holds (sum of attributions = f(x) - f(baseline)): True for every model it
            explains, or a tuple of families.
        needs_background: its reference is a background set of training samples, not the training mean.
        default: in `default_methods(model)`: True for every model it explains, or a tuple of families.
        whole_columns: weighs a table's column as a whole, its weight spread evenly over the column's encoded
            inputs, so it gives no importance per one-hot level (None in `global_importance_encoded`). Set on
            the entry by its module (`lime`), not a registration field, so the docs' capability table keeps
            its columns.
        input_gradients: a method needing "torch" differentiates the output with respect to the input, so it is
            refused where `explain.probe` finds no such gradient (an nn.Embedding of integer tokens); False for
            `layer_gradcam`, which differentiates a layer. Set on the entry by its module, as `whole_columns`.
        grid: places a convolution's map on the input's trailing axes, so it is refused where `explain.probe`
            finds that convolution's grid is not those axes. Set on the entry by its module.
        module_rules: applies DeepLIFT's rules through hooks on each non-linearity module (deeplift, shap_deep),
            so it is refused where `explain.probe` sees one such module called twice. Set on the entry by its module.
    """

    runtimes: tuple[str, ...] = ("torch", "fake-quant")
    library: str = ""
    sampled: bool = False
    axiom: bool | tuple[str, ...] = False
    needs_background: bool = False
    default: bool | tuple[str, ...] = False
    whole_columns: ClassVar[bool] = False
    input_gradients: ClassVar[bool] = True
    grid: ClassVar[bool] = False
    module_rules: ClassVar[bool] = False

    def why_not(self, target=None) -> str | None:
        """`Entry.why_not`, and the refusals read from a forward pass of the model (`explain.probe`: the tags
        are there when `target` was described by `probe.describe`)."""
        from trainers.registry import describe_target

        from .probe import (GRID_UNALIGNED, INDEX_INPUT, NO_INPUT_GRADIENT, NONLINEARITY_REUSED, REUSED_NONLINEARITY,
                            UNALIGNED_GRID)

        why = super().why_not(target)
        tags = describe_target(target)[1] if why is None and "torch" in self.needs else None
        if tags and NO_INPUT_GRADIENT in tags and self.input_gradients:
            return INDEX_INPUT
        if tags and UNALIGNED_GRID in tags and self.grid:
            return GRID_UNALIGNED
        if tags and REUSED_NONLINEARITY in tags and self.module_rules:
            return NONLINEARITY_REUSED
        return why

    def holds_axiom(self, target) -> bool:
        """Completeness should hold on `target` (a family name or a model)."""
        return self._declared(self.axiom, target)

    def is_default(self, target) -> bool:
        return self._declared(self.default, target)

    def _declared(self, value, target) -> bool:
        if value is True:
            return self.supports(target)
        family = target if isinstance(target, str) else getattr(getattr(target, "spec", None), "family", None)
        return family in (value or ())


METHODS: Registry[Explainer] = Registry("explain method", Explainer, positional=3)
register_method = METHODS.register


def loaded() -> Registry[Explainer]:
    """The registry, with the built-in method modules imported."""
    from . import load_methods

    load_methods()
    return METHODS


def list_methods(target=None) -> list[str]:
    """Registered method names, in registration order; only those that explain `target` (a family name, a model
    or a set of capability tags) when given."""
    from .probe import describe

    return loaded().names(None if target is None else describe(target))


def get_method(name: str, target=None) -> Explainer:
    """The method `name`; one ToolkitError line when unknown or when it cannot explain `target` (a family name,
    a model or a set of capability tags)."""
    from .probe import describe

    return loaded().get(name, None if target is None else describe(target))


def default_methods(target) -> tuple[str, ...]:
    """The methods run when none are asked for: those declaring `default` for `target` (a family name or a
    model), in registration order."""
    from .probe import describe

    described = target if isinstance(target, str) else describe(target)
    return tuple(e.name for e in loaded().entries(described) if e.is_default(target))
