"""Explain stage: attributions, their quality, and drift after compression (see issue 4).

Public API::

    import explain
    attr = explain.attribute(model, x, target, method="integrated_gradients")   # one verb, any method
    explain.list_methods("lstm")                                               # the registry
    result = explain.explain_model("runs/cnn", "digits", compare=["runs/cnn-int8"], out="runs/cnn-explain")

Names are imported lazily so `import explain` does not import torch, captum or shap.
"""

from trainers.lazy import lazy_exports

_EXPORTS = {
    "methods": ("Attribution", "Method", "attribute", "check_family", "get_method", "list_methods", "register_method", "resolve"),
    "stage": ("ExplainResult", "check_samples", "default_methods", "explain_model"),
    "compare": ("attribution_agreement", "check_comparable"),
    "quality": ("assess", "completeness_error"),
    "shapley": ("shapley_permutation",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
