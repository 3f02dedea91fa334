"""A user's module meets the gradient explainers: what one forward pass shows (`explain.probe`) and DeepLIFT's own
summation-to-delta decide which run. Integer tokens through nn.Embedding have no input gradient; a convolution
after a reshape or permute has no grid on the input's axes; functional ReLUs are invisible to DeepLIFT's hooks.
Each was a raw traceback or a wrong answer (docs/results.md's audit of the user's own models, D4-D6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import explain
import trainers
from explain.probe import NO_INPUT_GRADIENT, UNALIGNED_GRID, probe_tags
from trainers.errors import ToolkitError

CLASSES = 3
GRADIENT_METHODS = ("integrated_gradients", "saliency", "gradient_shap", "shap_gradient", "deeplift", "shap_deep")


class Tokens(nn.Module):
    """Integer tokens (8,), values 0..9, looked up in an embedding: the input is an index, not a quantity."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(32, CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.emb(x.long())).flatten(1))


class Reshaped(nn.Module):
    """A (64,) features vector viewed as an 8 x 8 image inside, then a Conv2d."""

    def __init__(self):
        super().__init__()
        self.c, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 64, CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.c(x.view(-1, 1, 8, 8))).flatten(1))


class ChannelsLast(nn.Module):
    """Images stored (H, W, C) = (8, 6, 1), permuted to channels first inside."""

    def __init__(self):
        super().__init__()
        self.c, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 48, CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.c(x.permute(0, 3, 1, 2))).flatten(1))


class ChannelsFirst(ChannelsLast):
    """The same network on (C, H, W) = (1, 8, 6) images, as the README's contract asks."""

    def forward(self, x):
        return self.head(torch.relu(self.c(x)).flatten(1))


class FunctionalReLU(nn.Module):
    """An MLP whose ReLUs are torch.relu calls in forward (Captum's DeepLift hooks only modules)."""

    def __init__(self, functional: bool = True):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, CLASSES)
        self.acts = None if functional else nn.ModuleList([nn.ReLU(), nn.ReLU()])

    def forward(self, x):
        first, second = (torch.relu, torch.relu) if self.acts is None else self.acts
        return self.head(second(self.b(first(self.a(x)))))


def _bundle(shape, tokens: bool = False, n: int = 90):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (n, *shape)) if tokens else rng.normal(0, 1, (n, *shape))
    return trainers.DataBundle.from_arrays(x.astype(np.float32), np.arange(n) % CLASSES)


def _model(module, bundle):
    torch.manual_seed(0)
    return trainers.as_model(module.eval(), bundle)


# ---------------------------------------------------------------- D4: an index input has no gradient


def test_gradient_methods_are_refused_in_one_line_on_integer_tokens():
    torch.manual_seed(0)
    bundle = _bundle((8,), tokens=True)
    net = Tokens().eval()
    model = trainers.as_model(net, bundle)
    assert probe_tags(model) == {NO_INPUT_GRADIENT}
    defaults = explain.default_methods(model)
    assert "shapley" in defaults and not set(defaults) & set(GRADIENT_METHODS)
    x = bundle.x_test[:3]
    for method in GRADIENT_METHODS:
        with pytest.raises(ToolkitError, match=f"'{method}' cannot handle .* index lookup"):
            explain.attribute(net, x, method=method, background=bundle.x_train[:8])
    attr = explain.attribute(net, x, method="feature_ablation")   # the black-box methods still run
    assert attr.values.shape == x.shape and np.abs(attr.values).sum() > 0


def test_explain_model_runs_its_defaults_on_integer_tokens():
    """Its defaults held integrated_gradients (a RuntimeError), and the quality checks' Gaussian perturbations
    of the tokens and the sanity check's saliency reference crashed next."""
    torch.manual_seed(0)
    bundle = _bundle((8,), tokens=True)
    result = explain.explain_model(Tokens().eval(), bundle, samples=3)
    written = result.to_dict()
    assert written["methods"] == ["shapley"] and written["runs"][0]["ran"] == "shapley"
    quality = written["quality"]["shapley"]
    assert quality["infidelity"] is None and quality["sanity"]["model_reference"] is None


def test_a_module_with_a_differentiable_input_is_not_tagged():
    model = _model(FunctionalReLU(), _bundle((8,)))
    assert probe_tags(model) == frozenset()
    assert explain.default_methods(model)[0] == "integrated_gradients"


# ---------------------------------------------------------------- D5: Grad-CAM's grid on the input's axes


@pytest.mark.parametrize("module, shape", [(Reshaped, (64,)), (ChannelsLast, (8, 6, 1))])
def test_gradcam_is_refused_where_the_convolution_grid_is_not_the_inputs_axes(module, shape):
    bundle = _bundle(shape)
    net = module().eval()
    model = trainers.as_model(net, bundle)
    assert UNALIGNED_GRID in probe_tags(model)
    assert "layer_gradcam" not in explain.default_methods(model)
    with pytest.raises(ToolkitError, match="'layer_gradcam' cannot handle .* cannot be placed on the input"):
        explain.attribute(net, bundle.x_test[:2], method="layer_gradcam")
    assert explain.attribute(net, bundle.x_test[:2], method="integrated_gradients").values.shape[1:] == shape


def test_gradcam_stays_where_the_grid_is_the_inputs_axes():
    bundle = _bundle((1, 8, 6))
    net = ChannelsFirst().eval()
    model = trainers.as_model(net, bundle)
    assert probe_tags(model) == frozenset() and "layer_gradcam" in explain.default_methods(model)
    values = explain.attribute(net, bundle.x_test[:2], method="layer_gradcam").values
    assert values.shape == (2, 1, 8, 6) and np.abs(values).sum() > 0


# ---------------------------------------------------------------- D6: DeepLIFT's summation-to-delta


def test_deeplift_is_refused_where_its_attributions_do_not_add_up():
    bundle = _bundle((8,))
    torch.manual_seed(0)
    functional = FunctionalReLU().eval()
    with pytest.raises(ToolkitError, match=r"deeplift: the attributions miss f\(x\) - f\(baseline\) by up to .*"
                                           r"torch.relu"):
        explain.attribute(functional, bundle.x_test[:4], method="deeplift", baseline=bundle.x_train.mean(0))
    with pytest.raises(ToolkitError, match="shap_deep: .* do not add up") as refused:
        explain.attribute(functional, bundle.x_test[:4], method="shap_deep", baseline=bundle.x_train.mean(0))
    assert "deeplift" not in str(refused.value)     # it recommended a method that fails the same way


def test_deeplift_still_runs_and_adds_up_with_relu_modules():
    bundle = _bundle((8,))
    torch.manual_seed(0)
    modules = FunctionalReLU(functional=False).eval()
    x = bundle.x_test[:4]
    attr = explain.attribute(modules, x, method="deeplift", baseline=bundle.x_train.mean(0))
    with torch.no_grad():
        fx = modules(torch.as_tensor(x))[np.arange(len(x)), attr.targets].numpy()
    np.testing.assert_allclose(attr.values.reshape(len(x), -1).sum(1), fx - attr.reference_output, rtol=1e-4,
                               atol=1e-5)


# ---------------------------------------------------------------- one ReLU module called twice


class OneReLUTwice(FunctionalReLU):
    """The MLP above with one nn.ReLU object used for both layers: Captum's DeepLift stopped with a RuntimeError
    ("A Module ReLU() was detected that does not contain some of the input/output attributes"), and shap_deep's
    refusal, which checks deeplift, stopped with it too."""

    def __init__(self):
        super().__init__(functional=False)
        self.acts = nn.ModuleList([nn.ReLU()])

    def forward(self, x):
        return self.head(self.acts[0](self.b(self.acts[0](self.a(x)))))


def test_deeplift_is_refused_in_one_line_where_one_relu_module_is_called_twice():
    import dataclasses

    from explain.probe import REUSED_NONLINEARITY

    bundle = _bundle((8,))
    torch.manual_seed(0)
    net = OneReLUTwice().eval()
    model = trainers.as_model(net, bundle)
    assert probe_tags(model) == {REUSED_NONLINEARITY}
    assert probe_tags(_model(FunctionalReLU(functional=False), bundle)) == frozenset()   # one use each: runs
    for method in ("deeplift", "shap_deep"):
        with pytest.raises(ToolkitError, match=f"'{method}' cannot handle .* called more than once in forward") as no:
            explain.attribute(net, bundle.x_test[:4], method=method, baseline=bundle.x_train.mean(0))
        assert "\n" not in str(no.value)
    # an MLP, whose defaults hold deeplift, leaves it out: the defaults run
    as_mlp = dataclasses.replace(model, spec=dataclasses.replace(model.spec, family="mlp"))
    assert "deeplift" not in explain.default_methods(as_mlp)
    assert "deeplift" in explain.default_methods(dataclasses.replace(as_mlp, module=FunctionalReLU(False).eval()))
    attr = explain.attribute(net, bundle.x_test[:4], method="integrated_gradients")
    assert np.abs(attr.values).sum() > 0


def test_the_probes_deeplift_modules_are_captums():
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    from explain.probe import DEEPLIFT_RULES

    assert set(SUPPORTED_NON_LINEAR) <= set(DEEPLIFT_RULES)
