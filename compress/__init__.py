"""Compression stage: quantize, prune, distill and export trained artifacts (see issue 3).

Public API::

    from compress import compress_model, list_methods, get_method

    result = compress_model("runs/digits-cnn", "digits", methods=["auto"], max_drop=0.5, out="runs/cnn-compressed")
    print(result.chosen.name, result.reason)

    variants = get_method("int8-static").func(model, data)   # any registered method, one call shape

Every method is registered in `compress.base` when its module is imported;
`load_methods()` imports them all (the pruning and distillation modules are
optional: a missing one is skipped). Names are imported lazily, so
`import compress` does not pay for torch.
"""

from importlib import import_module

from trainers.lazy import lazy_exports

from .base import METHODS, Method, Variant, register_method

METHOD_MODULES = ("export", "quantize", "prune", "distill", "auto")
_EXPORTS = {
    "run": ("CompressResult", "check_request", "compress_model"),
    "export": ("export_onnx", "onnx_parity"),
    "measure": ("measure_variant", "measure_all", "pareto_front"),
    "auto": ("choose",),
}
_loaded = False

__all__ = ["METHODS", "Method", "Variant", "register_method", "list_methods", "get_method", "load_methods",
           *(name for names in _EXPORTS.values() for name in names)]


def load_methods() -> list[str]:
    """Import every method module so its methods register; returns the names of modules not available."""
    global _loaded
    missing = []
    for name in METHOD_MODULES:
        try:
            import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            missing.append(name)
    _loaded = True
    return missing


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names (all method modules loaded), optionally only those that handle `family`."""
    from .base import list_methods as _list

    _ensure_loaded()
    return _list(family)


def get_method(name: str, family: str | None = None) -> Method:
    from .base import get_method as _get

    _ensure_loaded()
    return _get(name, family)


def _ensure_loaded() -> None:
    if not _loaded:
        load_methods()


__getattr__, __dir__, _LAZY = lazy_exports(__name__, globals(), _EXPORTS, before=_ensure_loaded)
