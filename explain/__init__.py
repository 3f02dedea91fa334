"""Explain stage: attributions, their quality, and drift after compression.

Public API::

    import explain
    attr = explain.attribute(model, x, target, method="integrated_gradients")   # one verb, any method
    explain.list_methods("lstm")                                               # the registry
    result = explain.explain_model("runs/cnn", "digits", compare=["runs/cnn-int8"], out="runs/cnn-explain")

Methods register with `@explain.register_method` (see `explain.registry`) when their module is imported;
`load_methods()` imports the built-in method modules, on first use of the registry or of any name here.
Names are imported lazily so `import explain` does not import torch, captum or shap.
"""

from trainers.lazy import lazy_exports

_EXPORTS = {
    "registry": ("Explainer", "default_methods", "get_method", "list_methods", "register_method"),
    "methods": ("Attribution", "attribute", "resolve"),
    "stage": ("ExplainResult", "check_samples", "explain_model"),
    "compare": ("attribution_agreement", "attribution_drift", "check_comparable", "original_attribution"),
    "quality": ("assess", "completeness_error"),
    "shapley": ("ShapleyEstimate", "shapley_estimate", "shapley_permutation"),
}


def load_methods() -> None:
    """Import the built-in method modules: each registers its methods when imported (Python imports it once)."""
    from . import library, lime  # noqa: F401


__getattr__, __dir__, _LAZY = lazy_exports(__name__, globals(), _EXPORTS, before=load_methods)
__all__ = ["load_methods", *_LAZY]
