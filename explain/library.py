"""The registered explainers: Captum, SHAP and the toolkit's own Shapley estimator.

Each function takes a `methods.Context`, a batch of raw inputs (numpy) and the
target class per sample, and returns (attributions, reference output, delta).
Options are keyword parameters annotated with `trainers.options` types: the
registry checks every call against them.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from trainers.errors import ToolkitError
from trainers.options import Bool, Float, PositiveInt, Str

from .methods import ROUTE_BLACK_BOX
from .probe import GRADCAM_CONVS, input_spatial
from .registry import METHODS, RUNTIMES, register_method
from .shapley import draws_error_bound, group_members, group_shares, shapley_estimate

NonNegativeFloat = Annotated[Float, Field(ge=0)]
Tolerance = Annotated[Float, Field(gt=0, le=1)]
REPLICATES = 4            # independent replicates of a library's sampled estimator give its standard error
IG_FIRST_STEPS = 32
GAP_FLOOR = 1e-6         # |f(x) - f(baseline)| below this: completeness is not measured (as in quality)
LSTM_HOOKS = "LSTM gates (sigmoid/tanh inside nn.LSTM) are invisible to its rescale hooks, so completeness fails"
DEEPLIFT_TOLERANCE = 0.01   # DeepLIFT's attributions add up to f(x) - f(baseline) within this share, or are refused
ROUNDING = 1e-4             # a gap under this share of the logits' size is float rounding: not checked
APPROXIMATE_RULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Softmax)   # Captum's rules that do not conserve
UNSEEN_NONLINEARITY = ("some non-linearity is not seen by Captum's hooks (torch.relu or F.gelu called in forward, GELU, "
                       "LayerNorm, attention)")
RECURRENT_HOOKS = ("the gates of recurrent layers (sigmoid/tanh inside nn.LSTM, nn.GRU) are invisible to its rescale "
                   "hooks, so completeness fails")


def _tensors(ctx, x, targets):
    return torch.as_tensor(x, device=ctx.device), torch.as_tensor(targets, device=ctx.device)


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# ---------------------------------------------------------------- Captum, gradient based


@register_method("integrated_gradients", library="captum", needs=("torch",), axiom=True, default=True,
                 description="Captum IntegratedGradients from the training mean (Gauss-Legendre), steps doubled "
                             "per sample from 32 until completeness < 1% (at most 512)")
def integrated_gradients(ctx, x, targets, n_steps: PositiveInt | None = None, tolerance: Tolerance = 0.01,
                         max_steps: PositiveInt = 512):
    """`n_steps` fixes the steps; by default each sample doubles them until its completeness error is below
    `tolerance` or `max_steps` is reached."""
    from captum.attr import IntegratedGradients

    xt, tt = _tensors(ctx, x, targets)
    ig = IntegratedGradients(ctx.forward)

    def run(rows, steps):
        attr, delta = ig.attribute(xt[rows], baselines=ctx.baseline, target=tt[rows], n_steps=steps,
                                   internal_batch_size=max(ctx.batch_size, 256), return_convergence_delta=True)
        return _np(attr), _np(delta).astype(np.float64)

    if n_steps is not None:
        attr, delta = run(slice(None), n_steps)
        return attr, ctx.reference_at_baseline(targets), delta
    gap = np.abs(ctx.target_at(x, targets).astype(np.float64) - ctx.reference_at_baseline(targets))
    values = np.zeros(x.shape, np.float32)
    delta = np.zeros(len(x))
    steps = np.zeros(len(x), np.int64)
    pending, current = np.arange(len(x)), min(IG_FIRST_STEPS, max_steps)
    while len(pending):
        attr, d = run(torch.as_tensor(pending), current)
        values[pending], delta[pending], steps[pending] = attr, d, current
        done = (np.abs(d) <= tolerance * gap[pending]) | (gap[pending] <= GAP_FLOOR)
        pending = pending[~done]
        if current >= max_steps:
            break
        current = min(2 * current, max_steps)
    converged = (np.abs(delta) <= tolerance * gap) | (gap <= GAP_FLOOR)
    return values, ctx.reference_at_baseline(targets), delta, {"converged": converged, "steps": steps,
                                                               "tolerance": tolerance}


def _replicated(run, total: int, min_share: int = 1):
    """Run a library's sampled estimator as `REPLICATES` independent replicates sharing `total` samples
    (the library reports no error of its own): their mean is the estimate, their spread its standard error.
    Each replicate gets at least `min_share` samples; with fewer than two replicates there is no error bar."""
    reps = max(1, min(REPLICATES, total // max(min_share, 1)))
    shares = [total // reps + (r < total % reps) for r in range(reps)]
    draws = np.stack([np.asarray(run(r, k), np.float64) for r, k in enumerate(shares)])   # (R, N, ...)
    weights = np.asarray(shares, np.float64).reshape(-1, *([1] * (draws.ndim - 1))) / total
    mean = (weights * draws).sum(0)
    if reps < 2:
        return mean.astype(np.float32), {}
    se = draws.std(0, ddof=1) / np.sqrt(reps)          # shares differ by at most one sample
    # the replicates are independent draws of the whole map: the bound reads their full covariance, as `shapley`
    # does; the per-value (diagonal) form overstated its degrees of freedom and covered 0.89-0.93, not 95%
    per_sample = [draws[:, i].reshape(reps, -1) for i in range(draws.shape[1])]
    return mean.astype(np.float32), {"standard_error": se.astype(np.float32),
                                     "error_bound": draws_error_bound(per_sample, mean),
                                     "error_dof": np.full(len(mean), reps - 1)}


@register_method("saliency", library="captum", needs=("torch",), description="Captum Saliency: |d logit / d input|")
def saliency(ctx, x, targets):
    from captum.attr import Saliency

    xt, tt = _tensors(ctx, x, targets)
    xt = xt.clone().requires_grad_(True)  # Captum warns when it has to switch gradients on itself
    return _np(Saliency(ctx.forward).attribute(xt, target=tt, abs=True)), ctx.reference_at_baseline(targets), None


# Captum's max-pool rule does not conserve the total exactly, so completeness is only claimed for MLPs.
@register_method("deeplift", needs=("torch",), excludes=("recurrent",), library="captum", axiom=("mlp",),
                 default=("mlp",), refusal={"lstm": LSTM_HOOKS, "recurrent": RECURRENT_HOOKS}, description="Captum DeepLift (rescale) from the training mean")
def deeplift(ctx, x, targets):
    """Refused in one line where the attributions miss f(x) - f(baseline) (`deeplift_miss`)."""
    attr, delta = _deeplift(ctx, x, targets)
    miss = deeplift_miss(ctx, x, targets, delta)
    if miss > DEEPLIFT_TOLERANCE:
        raise ToolkitError(f"deeplift: the attributions miss f(x) - f(baseline) by up to {100 * miss:.0f}% on this "
                           f"model (DeepLIFT's rules add up to it exactly): {UNSEEN_NONLINEARITY}; use "
                           "integrated_gradients or shap_gradient, or write the non-linearities as nn.ReLU modules")
    return attr, ctx.reference_at_baseline(targets), delta


def _deeplift(ctx, x, targets) -> tuple[np.ndarray, np.ndarray]:
    from captum.attr import DeepLift

    xt, tt = _tensors(ctx, x, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr, delta = DeepLift(ctx.module).attribute(xt, baselines=ctx.baseline, target=tt,
                                                     return_convergence_delta=True)
    return _np(attr), _np(delta).astype(np.float64)


def deeplift_miss(ctx, x, targets, delta: np.ndarray | None = None) -> float:
    """The largest |sum of DeepLIFT's attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)| over the samples
    (Captum's convergence delta), where Captum's rules are exact: 0 on a module with a rule Captum makes only
    approximately (max-pool, softmax: up to 20% on the toolkit's CNNs). A module whose non-linearities are all
    modules Captum hooks (nn.ReLU) misses by float rounding (3e-7); the user's models with torch.relu in
    forward, GELU, LayerNorm or attention missed by 48-356%, which the method's output did not show.
    Samples whose gap is within float rounding of the logits are not counted."""
    if any(isinstance(m, APPROXIMATE_RULES) for m in ctx.module.modules()):
        return 0.0
    if delta is None:
        delta = _deeplift(ctx, x, targets)[1]
    fx, fb = ctx.target_at(x, targets).astype(np.float64), ctx.reference_at_baseline(targets).astype(np.float64)
    gap = np.abs(fx - fb)
    keep = gap > ROUNDING * (1 + np.abs(fx) + np.abs(fb))
    return float((np.abs(delta)[keep] / gap[keep]).max()) if keep.any() else 0.0


@register_method("gradient_shap", library="captum", needs=("torch",), sampled=True, needs_background=True,
                 description="Captum GradientShap over a background of training samples (n_samples=32)")
def gradient_shap(ctx, x, targets, n_samples: PositiveInt = 32, stdevs: NonNegativeFloat = 0.0):
    from captum.attr import GradientShap

    xt, tt = _tensors(ctx, x, targets)

    def run(replicate, k):
        torch.manual_seed(ctx.seed + 1000 * replicate)
        return _np(GradientShap(ctx.forward).attribute(xt, baselines=ctx.background, target=tt, n_samples=k,
                                                       stdevs=stdevs))

    values, estimate = _replicated(run, n_samples)
    return values, ctx.reference_over_background(targets), None, estimate


@register_method("layer_gradcam", needs=("torch", "conv"), library="captum", default=True,
                 refusal={"conv": "Grad-CAM needs a convolutional layer"},
                 description="Captum LayerGradCam on the last convolution (or `layer`), upsampled to the input")
def layer_gradcam(ctx, x, targets, layer: Str | None = None):
    """layer: the name of the convolution to attribute (`module.named_modules()`); default: the last one."""
    from captum.attr import LayerAttribution, LayerGradCam

    conv = _conv_layer(ctx.module, layer)
    xt, tt = _tensors(ctx, x, targets)
    cam = LayerGradCam(ctx.forward, conv).attribute(xt, target=tt, relu_attributions=True)
    spatial = input_spatial(ctx.spec.input_shape)
    if cam.dim() - 2 != len(spatial):   # a named layer after a reshape: the probe checked only the default one
        raise ToolkitError(f"layer_gradcam: the convolution's map has {cam.dim() - 2} spatial axes, the input "
                           f"{len(spatial)} ({tuple(ctx.spec.input_shape)}): it cannot be placed on the input")
    up = LayerAttribution.interpolate(cam, spatial, interpolate_mode="bilinear" if len(spatial) == 2 else "linear")
    up = up.reshape(len(x), *([1] * (len(ctx.spec.input_shape) - len(spatial))), *spatial)
    return _np(up.expand(len(x), *ctx.spec.input_shape)), ctx.reference_at_baseline(targets), None


METHODS.get("layer_gradcam").input_gradients = False   # it differentiates a layer: the input may be tokens
METHODS.get("layer_gradcam").grid = True
METHODS.get("deeplift").module_rules = True   # its hooks keep one input and output per non-linearity module


def _conv_layer(module: nn.Module, name: str | None) -> nn.Module:
    """The convolution named `name`, or the last one in the module; one ToolkitError line when there is none."""
    convs = {n: m for n, m in module.named_modules() if isinstance(m, GRADCAM_CONVS)}
    if name is None and convs:
        return list(convs.values())[-1]
    if name is None:
        raise ToolkitError("layer_gradcam: the module has no Conv1d or Conv2d layer (Grad-CAM here maps one of those)")
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
                 description="Captum FeatureAblation: each input element (or, with patch, each image patch or "
                             "signal segment) replaced by the training mean")
def feature_ablation(ctx, x, targets, patch: PositiveInt | None = 1):
    """`patch`: an image's pixels per patch side (a signal's time steps per segment) ablated together, the
    patch's effect spread over its elements by |x - baseline| as `shapley` spreads a patch's value; None: the
    default of `image_patches` (at most 64 patches on images over 16 x 16 and signals over 256 steps), which the
    compress drift guard asks for: a (3, 500) signal ablated element by element took 1,500 model calls per row."""
    from captum.attr import FeatureAblation

    xt, tt = _tensors(ctx, x, targets)
    groups = image_patches(tuple(ctx.spec.input_shape), patch) if ctx.spec.layout in ("image", "signal") else None
    mask = None if groups is None else torch.as_tensor(groups[None], dtype=torch.long, device=ctx.device)
    with torch.no_grad():
        attr = FeatureAblation(ctx.forward).attribute(xt, baselines=ctx.baseline, target=tt, feature_mask=mask,
                                                      perturbations_per_eval=64)
    values = _np(attr)
    if groups is not None:
        values = spread_over_groups(values, x, ctx.baseline_np, groups)
    return values, ctx.reference_at_baseline(targets), None


def spread_over_groups(values: np.ndarray, x: np.ndarray, baseline: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """A group's value (held by each of its elements, as Captum's feature masks give it) spread over its elements in
    proportion to |x - baseline|: the elements' values sum to the group's."""
    n, ids = len(values), np.asarray(groups).reshape(-1)
    share = group_shares(np.asarray(x, np.float32).reshape(n, -1), np.asarray(baseline, np.float32).reshape(-1),
                         group_members(ids), ids)
    return (values.reshape(n, -1) * share).reshape(values.shape).astype(np.float32)


@register_method("shapley_sampling", runtimes=RUNTIMES, library="captum", sampled=True, axiom=True,
                 description="Captum ShapleyValueSampling (n_samples=16 permutations) from the training mean")
def shapley_sampling(ctx, x, targets, n_samples: PositiveInt = 16):
    from captum.attr import ShapleyValueSampling

    xt, tt = _tensors(ctx, x, targets)

    def run(replicate, k):
        torch.manual_seed(ctx.seed + 1000 * replicate)
        with torch.no_grad():
            return _np(ShapleyValueSampling(ctx.forward).attribute(xt, baselines=ctx.baseline, target=tt,
                                                                   n_samples=k, perturbations_per_eval=64))

    values, estimate = _replicated(run, n_samples)
    return values, ctx.reference_at_baseline(targets), None, estimate


# ---------------------------------------------------------------- SHAP


class _TargetColumn(nn.Module):
    """The module's output for one class alone, as a (N, 1) column. shap's Deep and Gradient explainers explain
    every output the model has; the toolkit keeps one per sample, so explaining all of them was the class count
    times the work (digits, 10 classes: shap_deep 916 vs 83 ms, shap_gradient 2,236 vs 158 ms for 64 rows). The
    column's gradients are the same as the full output's for that class, so the values are too."""

    def __init__(self, module: nn.Module, target: int):
        super().__init__()
        self.module, self.target = module, target

    def forward(self, *inputs):
        return self.module(*inputs)[:, self.target:self.target + 1]


def _per_target_class(explain_rows, x, targets) -> np.ndarray:
    """`explain_rows(c, rows)` (shap's (n, *shape, 1) or list of one) for the rows whose target is c, put back in
    the rows' order: each row is explained for its own target class only."""
    targets = np.asarray(targets)
    values = np.zeros(x.shape, np.float64)
    for c in np.unique(targets):
        rows = np.flatnonzero(targets == c)
        part = explain_rows(int(c), torch.as_tensor(rows))
        part = np.asarray(part[0] if isinstance(part, list) else part)
        values[rows] = part.reshape(len(rows), *x.shape[1:])
    return values


@register_method("shap_deep", needs=("torch",), excludes=("recurrent",), library="shap", axiom=True,
                 refusal={"lstm": "shap DeepExplainer fails its additivity check on PyTorch LSTMs ("
                                  + LSTM_HOOKS + "); use shap_gradient or integrated_gradients",
                          "recurrent": "shap DeepExplainer fails its additivity check on recurrent layers ("
                                       + RECURRENT_HOOKS + "); use shap_gradient or integrated_gradients"},
                 description="shap DeepExplainer against the training mean (additivity checked)")
def shap_deep(ctx, x, targets):
    import shap

    xt = torch.as_tensor(x, device=ctx.device)

    def explain_class(c, rows):
        explainer = shap.DeepExplainer(_TargetColumn(ctx.module, c), ctx.baseline)
        try:
            return explainer.shap_values(xt[rows], check_additivity=True)
        finally:   # shap clears the values its hooks keep only on the wrapper's direct children
            explainer.explainer.remove_attributes(ctx.module)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = _per_target_class(explain_class, x, targets)
        except AssertionError as exc:     # shap's additivity check: layers its DeepLIFT rules do not cover
            gap = re.search(r"Max\. diff: ([0-9.eE+-]+)", str(exc))
            # deeplift is offered only where its own attributions add up on these samples: the layers shap has
            # no rule for (functional ReLUs, attention) mostly have none in Captum either
            instead = "shap_gradient or integrated_gradients"
            if deeplift_miss(ctx, x, targets) <= DEEPLIFT_TOLERANCE:
                instead = "deeplift, " + instead
            raise ToolkitError("shap_deep: shap DeepExplainer's attributions do not add up to the model's output on "
                               f"this model{f' (off by {float(gap.group(1)):.3g})' if gap else ''}: some layer "
                               f"(GELU, LayerNorm, attention, ...) has no DeepLIFT rule in shap; use {instead}") from None
    return values, ctx.reference_at_baseline(targets), None


METHODS.get("shap_deep").module_rules = True   # as deeplift: a reused ReLU failed its additivity, then Captum's


@register_method("shap_gradient", library="shap", needs=("torch",), sampled=True, needs_background=True,
                 description="shap GradientExplainer (expected gradients) over a background of training samples")
def shap_gradient(ctx, x, targets, nsamples: PositiveInt = 32):
    import shap

    xt = torch.as_tensor(x, device=ctx.device)
    explainers = {int(c): shap.GradientExplainer(_TargetColumn(ctx.module, int(c)), ctx.background)
                  for c in np.unique(targets)}

    def run(replicate, k):
        return _per_target_class(lambda c, rows: explainers[c].shap_values(
            xt[rows], nsamples=k, rseed=ctx.seed + 1000 * replicate), x, targets)

    values, estimate = _replicated(run, nsamples)
    return values, ctx.reference_over_background(targets), None, estimate


@register_method("shap_kernel", runtimes=RUNTIMES, library="shap", sampled=True, axiom=True,
                 description="shap KernelExplainer against the training mean, l1_reg=False, nsamples=2*D+2048")
def shap_kernel(ctx, x, targets, nsamples: PositiveInt | None = None, l1_reg: Bool | Str = False):
    import shap

    shape = tuple(ctx.spec.input_shape)
    d = int(np.prod(shape))

    def f(flat):
        return ctx.forward_numpy(np.asarray(flat, np.float32).reshape(-1, *shape))

    # one explainer per target class, on that class's output alone: KernelExplainer solves one regression per
    # output, and each solve formats its arrays for debug logs whether or not they are shown, so explaining all
    # the classes took about twice the time of the one asked for (digits MLP, 10 classes: 66 vs 39 ms a sample).
    # The estimate is the same regression on the same kind of coalitions.
    flat, targets = x.reshape(len(x), -1), np.asarray(targets)
    groups = {int(c): np.flatnonzero(targets == c) for c in np.unique(targets)}
    explainers = {c: shap.KernelExplainer(lambda rows, c=c: f(rows)[:, c], ctx.baseline_np.reshape(1, -1))
                  for c in groups}

    def run(replicate, k):
        np.random.seed(ctx.seed + 1000 * replicate)
        values = np.zeros(flat.shape, np.float64)
        for c, rows in groups.items():
            values[rows] = np.asarray(explainers[c].shap_values(flat[rows], nsamples=k, l1_reg=l1_reg, silent=True))
        return values.reshape(len(x), *shape)

    # a kernel regression needs more coalitions than features: replicates only when each gets 2D + 2
    values, estimate = _replicated(run, nsamples or 2 * d + 2048, min_share=2 * d + 2)
    return values, ctx.reference_at_baseline(targets), None, estimate


# ---------------------------------------------------------------- the toolkit's own


MAX_PATCHES = 64   # an image's default patches for shapley: at most this many (16 x 16 pixels and less: each pixel)


def image_patches(shape, side: int | None) -> np.ndarray | None:
    """Group ids (*shape) of square patches of `side` pixels (all channels together) for a (C, H, W) input, or of
    segments of `side` time steps for a (C, L) signal, or None for one group per element. `side` None: 1 up to
    MAX_PATCHES * 4 pixels (16 x 16) or time steps, else the side that leaves at most MAX_PATCHES patches (4 on
    28 x 28: 49 patches, 16x fewer model rows per permutation than 784 pixels; 8 steps on a length of 500)."""
    if len(shape) == 2:
        length = int(shape[1])
        if side is None:
            side = 1 if length <= 4 * MAX_PATCHES else int(np.ceil(length / MAX_PATCHES))
        if side <= 1:
            return None
        return np.broadcast_to((np.arange(length) // side)[None], tuple(int(d) for d in shape)).copy()
    if len(shape) != 3:
        return None
    h, w = int(shape[1]), int(shape[2])
    if side is None:
        side = 1 if h * w <= 4 * MAX_PATCHES else int(np.ceil(np.sqrt(h * w / MAX_PATCHES)))
    if side <= 1:
        return None
    rows, cols = np.arange(h)[:, None] // side, np.arange(w)[None, :] // side
    grid = rows * int(np.ceil(w / side)) + cols
    return np.broadcast_to(grid[None], tuple(int(d) for d in shape)).copy()


@register_method(ROUTE_BLACK_BOX, runtimes=RUNTIMES, library="toolkit", sampled=True, axiom=True, default=True,
                 description="antithetic permutation Shapley estimate, batched, with error bars: adds permutations "
                             "per sample until the relative error bound (95%) is within tolerance=0.1; images over "
                             "16x16 in square patches and signals over 256 steps in segments (at most 64)")
def shapley(ctx, x, targets, tolerance: Tolerance = 0.1, max_evaluations: PositiveInt | None = None,
            n_permutations: PositiveInt | None = None, patch: PositiveInt | None = None):
    """`tolerance`: relative error bound at 95% a sample is done at; `max_evaluations`: model rows per
    sample at most (default: those of 128 permutations); `n_permutations`: a fixed count instead; `patch`: an
    image's pixels per patch side (a signal's time steps per segment), each patch attributed as one player and its
    value spread over its elements by |x - baseline| (default `image_patches`: 1 up to 16 x 16 images and 256-step
    signals; `patch=1`: every element)."""
    groups = image_patches(tuple(ctx.spec.input_shape), patch) if ctx.spec.layout in ("image", "signal") else None
    est = shapley_estimate(ctx.forward_numpy, x, targets, ctx.baseline_np, tolerance=tolerance,
                           max_evaluations=max_evaluations, n_permutations=n_permutations, seed=ctx.seed,
                           groups=groups)
    estimate = {"standard_error": est.standard_error, "error_bound": est.error_bound, "steps": est.evaluations,
                "error_dof": est.permutations // 2 - 1}      # independent draws: antithetic pairs
    if est.permutations.min() < 4:   # one pair: no variance to estimate, so no error bar (as `_replicated`)
        estimate = {"steps": est.evaluations}
    if n_permutations is None:
        estimate.update(converged=est.converged, tolerance=tolerance)
    return est.values, ctx.reference_at_baseline(targets), None, estimate
