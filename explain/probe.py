"""What one forward pass of a module says about the explainers that fit it, as extra capability tags.

The capability tags of `trainers.models.capabilities` are read from the layer types a module holds. Two things
that decide whether a gradient method can run are not: whether the input reaches the output differentiably
(integer tokens looked up in an nn.Embedding do not: Captum stopped with a raw RuntimeError), and whether the
convolution Grad-CAM attributes works on the input's own trailing axes (a (64,) input reshaped to 8 x 8 inside,
or a channels-last image permuted inside: the map was interpolated onto the wrong axes, or crashed). Nor is
whether one non-linearity module is called twice in forward, which DeepLIFT's per-module hooks cannot follow
(Captum stopped with a RuntimeError). All three are read here by running the module once on two rows of its
baseline, with hooks on its convolutions and non-linearities.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NO_INPUT_GRADIENT = "no-input-gradient"
UNALIGNED_GRID = "unaligned-grid"

INDEX_INPUT = ("the input reaches the model only through an index lookup (e.g. integer tokens in an nn.Embedding) "
               "or another step without a gradient, so the output has no gradient with respect to it; use a "
               "black-box method (shapley, feature_ablation, occlusion, lime)")
GRID_UNALIGNED = ("the convolution's grid is not the input's own trailing axes (the input is reshaped or permuted "
                  "before it, e.g. a (F,) vector viewed as an image or a channels-last image), so its map cannot be "
                  "placed on the input; use integrated_gradients or a black-box method (shapley, occlusion)")
GRADCAM_CONVS = (nn.Conv1d, nn.Conv2d)
REUSED_NONLINEARITY = "reused-nonlinearity"
# The modules DeepLIFT has a rule for (Captum's `deep_lift.SUPPORTED_NON_LINEAR`; shap's DeepExplainer hooks the
# same): each hook keeps one input and one output per module, so a module called twice in forward breaks them.
DEEPLIFT_RULES = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.MaxPool1d, nn.MaxPool2d,
                  nn.MaxPool3d, nn.Softmax)
NONLINEARITY_REUSED = ("one non-linearity module (e.g. a single nn.ReLU) is called more than once in forward, and "
                       "DeepLIFT keeps one input and output per module (Captum stopped with a RuntimeError); give "
                       "each use its own module, or use integrated_gradients or shap_gradient")


def input_spatial(shape) -> tuple[int, ...]:
    """The axes a convolution's map is placed on: (F,) for a features vector, else all but the channels."""
    shape = tuple(int(d) for d in shape)
    return shape[1:] if len(shape) > 1 else shape


def describe(target) -> tuple[str | None, frozenset | None]:
    """`trainers.registry.describe_target`, with the tags `probe_tags` reads from a model's forward pass."""
    from trainers.registry import describe_target

    family, tags = describe_target(target)
    if tags is None or isinstance(target, (str, set, frozenset, tuple)):
        return family, tags
    return family, tags | probe_tags(target)


def probe_tags(model) -> frozenset:
    """NO_INPUT_GRADIENT, UNALIGNED_GRID and/or REUSED_NONLINEARITY for a model with a PyTorch module and a spec
    (a `LoadedModel`); none where the probe cannot run (no module, a forward pass that fails or returns no
    tensor): the method then meets the model as before."""
    module, spec = getattr(model, "module", None), getattr(model, "spec", None)
    if not isinstance(module, nn.Module) or spec is None:
        return frozenset()
    from trainers.fit import global_rng_kept
    from trainers.usermodel import modes_kept

    from .methods import default_baseline

    seen: list[tuple[nn.Module, tuple, tuple]] = []       # (conv, input shape, output shape) in the order run
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, tuple(i[0].shape), tuple(o.shape))))
             for m in module.modules() if isinstance(m, GRADCAM_CONVS)]
    calls: list[int] = []                                 # id() of each DeepLIFT non-linearity, once per call
    hooks += [m.register_forward_hook(lambda m, i, o: calls.append(id(m)))
              for m in module.modules() if isinstance(m, DEEPLIFT_RULES)]
    try:
        with modes_kept(module), global_rng_kept(), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            module.eval()
            param = next(iter(module.parameters()), None)
            rows = torch.as_tensor(np.repeat(default_baseline(spec)[None], 2, axis=0))
            if param is not None:     # an fp16 module on its GPU takes fp16 rows
                rows = rows.to(param.device, param.dtype if param.dtype.is_floating_point else rows.dtype)
            x = rows.requires_grad_(True)
            out = module(x)
            if not isinstance(out, torch.Tensor):
                return frozenset()
            grad = torch.autograd.grad(out.float().sum(), x, allow_unused=True)[0] if out.requires_grad else None
    except Exception:   # a probe that cannot run decides nothing: the method's own run says what is wrong
        return frozenset()
    finally:
        for hook in hooks:
            hook.remove()
    tags = set() if grad is not None else {NO_INPUT_GRADIENT}
    if not _grid_aligned(module, seen, tuple(spec.input_shape)):
        tags.add(UNALIGNED_GRID)
    if len(set(calls)) < len(calls):
        tags.add(REUSED_NONLINEARITY)
    return frozenset(tags)


def _grid_aligned(module: nn.Module, seen: list, input_shape: tuple) -> bool:
    """Grad-CAM's map can be placed on the input: the first convolution run sees the input's trailing axes as its
    grid (no reshape or permute before it) and the one attributed by default (the last) has a grid of that rank.
    True for a module without a convolution Grad-CAM handles (refused by its `conv` tag, or by `_conv_layer`)."""
    convs = [m for m in module.modules() if isinstance(m, GRADCAM_CONVS)]
    if not convs:
        return True
    if not seen:
        return False
    spatial = input_spatial(input_shape)
    last = [out for m, _, out in seen if m is convs[-1]]
    return seen[0][1][2:] == spatial and bool(last) and len(last[0]) - 2 == len(spatial)
