"""The registered explainers: Captum, SHAP and the toolkit's own Shapley estimator.

Each function takes a `methods.Context`, a batch of raw inputs (numpy) and the
target class per sample, and returns (attributions, reference output, delta).
Options are keyword parameters annotated with `trainers.options` types: the
registry checks every call against them.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from trainers.errors import ToolkitError
from trainers.options import Bool, Float, PositiveInt, Str

from .methods import ROUTE_BLACK_BOX
from .registry import RUNTIMES, register_method
from .shapley import shapley_permutation

NonNegativeFloat = Annotated[Float, Field(ge=0)]
LSTM_HOOKS = "LSTM gates (sigmoid/tanh inside nn.LSTM) are invisible to its rescale hooks, so completeness fails"
RECURRENT_HOOKS = ("the gates of recurrent layers (sigmoid/tanh inside nn.LSTM, nn.GRU) are invisible to its rescale "
                   "hooks, so completeness fails")


def _tensors(ctx, x, targets):
    return torch.as_tensor(x, device=ctx.device), torch.as_tensor(targets, device=ctx.device)


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# ---------------------------------------------------------------- Captum, gradient based


@register_method("integrated_gradients", library="captum", needs=("torch",), axiom=True, default=True,
                 description="Captum IntegratedGradients from the training mean (Gauss-Legendre, n_steps=64)")
def integrated_gradients(ctx, x, targets, n_steps: PositiveInt = 64):
    from captum.attr import IntegratedGradients

    xt, tt = _tensors(ctx, x, targets)
    attr, delta = IntegratedGradients(ctx.forward).attribute(
        xt, baselines=ctx.baseline, target=tt, n_steps=n_steps, internal_batch_size=max(ctx.batch_size, 256),
        return_convergence_delta=True)
    return _np(attr), ctx.reference_at_baseline(targets), _np(delta)


@register_method("saliency", library="captum", needs=("torch",), description="Captum Saliency: |d logit / d input|")
def saliency(ctx, x, targets):
    from captum.attr import Saliency

    xt, tt = _tensors(ctx, x, targets)
    return _np(Saliency(ctx.forward).attribute(xt, target=tt, abs=True)), ctx.reference_at_baseline(targets), None


# Captum's max-pool rule does not conserve the total exactly, so completeness is only claimed for MLPs.
@register_method("deeplift", needs=("torch",), excludes=("recurrent",), library="captum", axiom=("mlp",),
                 default=("mlp",), refusal={"lstm": LSTM_HOOKS, "recurrent": RECURRENT_HOOKS}, description="Captum DeepLift (rescale) from the training mean")
def deeplift(ctx, x, targets):
    from captum.attr import DeepLift

    xt, tt = _tensors(ctx, x, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr, delta = DeepLift(ctx.module).attribute(xt, baselines=ctx.baseline, target=tt,
                                                     return_convergence_delta=True)
    return _np(attr), ctx.reference_at_baseline(targets), _np(delta)


@register_method("gradient_shap", library="captum", needs=("torch",), sampled=True, needs_background=True,
                 description="Captum GradientShap over a background of training samples (n_samples=32)")
def gradient_shap(ctx, x, targets, n_samples: PositiveInt = 32, stdevs: NonNegativeFloat = 0.0):
    from captum.attr import GradientShap

    xt, tt = _tensors(ctx, x, targets)
    attr = GradientShap(ctx.forward).attribute(xt, baselines=ctx.background, target=tt, n_samples=n_samples,
                                               stdevs=stdevs)
    return _np(attr), ctx.reference_over_background(targets), None


@register_method("layer_gradcam", needs=("torch", "conv"), library="captum", default=True,
                 refusal={"conv": "Grad-CAM needs a convolutional layer"},
                 description="Captum LayerGradCam on the last convolution (or `layer`), upsampled to the input")
def layer_gradcam(ctx, x, targets, layer: Str | None = None):
    """layer: the name of the convolution to attribute (`module.named_modules()`); default: the last one."""
    from captum.attr import LayerAttribution, LayerGradCam

    conv = _conv_layer(ctx.module, layer)
    xt, tt = _tensors(ctx, x, targets)
    cam = LayerGradCam(ctx.forward, conv).attribute(xt, target=tt, relu_attributions=True)
    spatial = tuple(ctx.spec.input_shape[1:]) if len(ctx.spec.input_shape) > 1 else tuple(ctx.spec.input_shape)
    up = LayerAttribution.interpolate(cam, spatial, interpolate_mode="bilinear" if len(spatial) == 2 else "linear")
    up = up.reshape(len(x), *([1] * (len(ctx.spec.input_shape) - len(spatial))), *spatial)
    return _np(up.expand(len(x), *ctx.spec.input_shape)), ctx.reference_at_baseline(targets), None


def _conv_layer(module: nn.Module, name: str | None) -> nn.Module:
    """The convolution named `name`, or the last one in the module; one ToolkitError line when there is none."""
    convs = {n: m for n, m in module.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}
    if name is None:
        return list(convs.values())[-1]
    if name not in convs:
        raise ToolkitError(f"layer_gradcam: no convolution named '{name}' in the module; its convolutions are "
                           f"{', '.join(convs) or 'none'}")
    return convs[name]


# ---------------------------------------------------------------- Captum, perturbation based (black box)


def _occlusion_window(shape):
    if len(shape) == 3:      # image: square patches, a quarter of the side
        side = max(1, min(shape[1], shape[2]) // 4)
        return (shape[0], side, side)
    if len(shape) == 2:      # signal: windows of 1/16 of the length over all channels
        return (shape[0], max(1, shape[1] // 16))
    return (1,)


@register_method("occlusion", runtimes=RUNTIMES, library="captum",
                 description="Captum Occlusion: image patches / signal windows replaced by the training mean")
def occlusion(ctx, x, targets):
    from captum.attr import Occlusion

    xt, tt = _tensors(ctx, x, targets)
    window = _occlusion_window(tuple(ctx.spec.input_shape))
    with torch.no_grad():
        attr = Occlusion(ctx.forward).attribute(xt, sliding_window_shapes=window, strides=window,
                                                baselines=ctx.baseline, target=tt, perturbations_per_eval=64)
    return _np(attr), ctx.reference_at_baseline(targets), None


@register_method("feature_ablation", runtimes=RUNTIMES, library="captum",
                 description="Captum FeatureAblation: each input element replaced by the training mean")
def feature_ablation(ctx, x, targets):
    from captum.attr import FeatureAblation

    xt, tt = _tensors(ctx, x, targets)
    with torch.no_grad():
        attr = FeatureAblation(ctx.forward).attribute(xt, baselines=ctx.baseline, target=tt, perturbations_per_eval=64)
    return _np(attr), ctx.reference_at_baseline(targets), None


@register_method("shapley_sampling", runtimes=RUNTIMES, library="captum", sampled=True, axiom=True,
                 description="Captum ShapleyValueSampling (n_samples=16 permutations) from the training mean")
def shapley_sampling(ctx, x, targets, n_samples: PositiveInt = 16):
    from captum.attr import ShapleyValueSampling

    xt, tt = _tensors(ctx, x, targets)
    torch.manual_seed(ctx.seed)
    with torch.no_grad():
        attr = ShapleyValueSampling(ctx.forward).attribute(xt, baselines=ctx.baseline, target=tt, n_samples=n_samples,
                                                           perturbations_per_eval=64)
    return _np(attr), ctx.reference_at_baseline(targets), None


# ---------------------------------------------------------------- SHAP


def _select(values, targets, n):
    """shap returns (N, *shape, classes) or a list per class: pick each sample's target."""
    if isinstance(values, list):
        values = np.stack(values, axis=-1)
    values = np.asarray(values)
    return np.stack([values[i, ..., targets[i]] for i in range(n)])


@register_method("shap_deep", needs=("torch",), excludes=("recurrent",), library="shap", axiom=True,
                 refusal={"lstm": "shap DeepExplainer fails its additivity check on PyTorch LSTMs ("
                                  + LSTM_HOOKS + "); use shap_gradient or integrated_gradients",
                          "recurrent": "shap DeepExplainer fails its additivity check on recurrent layers ("
                                       + RECURRENT_HOOKS + "); use shap_gradient or integrated_gradients"},
                 description="shap DeepExplainer against the training mean (additivity checked)")
def shap_deep(ctx, x, targets):
    import shap

    explainer = shap.DeepExplainer(ctx.module, ctx.baseline)
    xt = torch.as_tensor(x, device=ctx.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = explainer.shap_values(xt, check_additivity=True)
    return _select(values, targets, len(x)), ctx.reference_at_baseline(targets), None


@register_method("shap_gradient", library="shap", needs=("torch",), sampled=True, needs_background=True,
                 description="shap GradientExplainer (expected gradients) over a background of training samples")
def shap_gradient(ctx, x, targets, nsamples: PositiveInt = 32):
    import shap

    explainer = shap.GradientExplainer(ctx.module, ctx.background)
    xt = torch.as_tensor(x, device=ctx.device)
    values = explainer.shap_values(xt, nsamples=nsamples, rseed=ctx.seed)
    return _select(values, targets, len(x)), ctx.reference_over_background(targets), None


@register_method("shap_kernel", runtimes=RUNTIMES, library="shap", sampled=True, axiom=True,
                 description="shap KernelExplainer against the training mean, l1_reg=False, nsamples=2*D+2048")
def shap_kernel(ctx, x, targets, nsamples: PositiveInt | None = None, l1_reg: Bool | Str = False):
    import shap

    shape = tuple(ctx.spec.input_shape)
    d = int(np.prod(shape))

    def f(flat):
        return ctx.forward_numpy(np.asarray(flat, np.float32).reshape(-1, *shape))

    np.random.seed(ctx.seed)
    explainer = shap.KernelExplainer(f, ctx.baseline_np.reshape(1, -1))
    values = explainer.shap_values(x.reshape(len(x), -1), nsamples=nsamples or 2 * d + 2048, l1_reg=l1_reg,
                                   silent=True)
    return _select(values, targets, len(x)).reshape(len(x), *shape), ctx.reference_at_baseline(targets), None


# ---------------------------------------------------------------- the toolkit's own


@register_method(ROUTE_BLACK_BOX, runtimes=RUNTIMES, library="toolkit", sampled=True, axiom=True, default=True,
                 description="antithetic permutation Shapley estimate, batched (exact for linear models), 16 permutations")
def shapley(ctx, x, targets, n_permutations: PositiveInt = 16):
    values = shapley_permutation(ctx.forward_numpy, x, targets, ctx.baseline_np, n_permutations=n_permutations,
                                 seed=ctx.seed)
    return values, ctx.reference_at_baseline(targets), None
