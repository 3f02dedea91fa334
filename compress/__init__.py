"""Compression stage: quantize, prune, distill and export trained artifacts.

Public API::

    from compress import compress_model, list_methods, get_method

    result = compress_model("runs/digits-cnn", "digits", methods=["auto"], max_drop=0.5, out="runs/cnn-compressed")
    print(result.chosen.name, result.reason)

    variants = get_method("int8-static").func(model, data)   # any registered method, one call shape

Each method module registers its methods in `compress.base.METHODS` when it is imported;
`register_builtin_methods()` imports them, on first use of the registry or of a lazily imported name, so
`import compress` does not pay for torch.
"""

from trainers.lazy import lazy_exports

from .base import METHODS, Method, Variant, check_source, derive_model, register_method

_EXPORTS = {
    "run": ("CompressResult", "check_request", "compress_model"),
    "export": ("export_onnx", "export_onnx_raw_rows", "onnx_parity", "runtime_twin"),
    "measure": ("measure_variant", "measure_all", "pareto_front", "fidelity", "agreement_margin", "wilson_interval",
                "judge"),
    "auto": ("choose", "plan"),
    "checks": ("Check", "method_checks"),
}

__all__ = ["METHODS", "Method", "Variant", "check_source", "derive_model", "register_method", "list_methods",
           "get_method", "describe_methods", "register_builtin_methods",
           *(name for names in _EXPORTS.values() for name in names)]


def register_builtin_methods() -> None:
    """Import the built-in method modules, each of which registers its methods (again: nothing happens).

    In this order: the registry keeps it, and auto tries the methods and lists the variants in it.
    """
    from . import export, quantize, stored, prune, lowrank, distill, auto  # noqa: F401


def list_methods(family=None) -> list[str]:
    """Registered method names, in registration order; only those that handle `family` when given (a family
    name, a model, whose capabilities are read from it, or a set of capability tags)."""
    from .base import list_methods as _list

    register_builtin_methods()
    return _list(family)


def get_method(name: str, family=None) -> Method:
    """The method `name`; one clear ToolkitError when unknown or when it cannot handle `family` (a family name,
    a model or a set of capability tags)."""
    from .base import get_method as _get

    register_builtin_methods()
    return _get(name, family)


def describe_methods(family: str | None = None) -> dict[str, str]:
    """{name: one-line description} of the registered methods (for `--help` and reports)."""
    return {name: get_method(name).description for name in list_methods(family)}


__getattr__, __dir__, _LAZY = lazy_exports(__name__, globals(), _EXPORTS, before=register_builtin_methods)
