"""Every registered explain method against the common contract (explain.checks).

A method added with `@register_method` joins this table by being registered; slow methods get fast options.
"""

from __future__ import annotations

from explain import list_methods
from explain.checks import parametrize_with_checks

FAST_OPTIONS = {"shap_gradient": {"nsamples": 4}, "shap_kernel": {"nsamples": 200},
                "shapley_sampling": {"n_samples": 4}, "gradient_shap": {"n_samples": 8}}


@parametrize_with_checks(list_methods())
def test_explain_method_contract(method, check):
    check(method, FAST_OPTIONS.get(method))
