"""Low-rank factorization: a wide Linear or convolution becomes two thinner layers fitted to its responses.

A layer y = W x + b (a convolution: the same on every patch of its input) is replaced by y = U (V x) + c: a
layer with `rank` outputs (V = U^T W', no bias) and a 1x1 layer back to the original width (U, c). U holds the
top `rank` principal directions of the layer's responses on training rows, so the pair keeps what the
responses actually vary in, not what the weights are largest in (response-based low rank, Zhang, Zou, He &
Sun, "Accelerating Very Deep Convolutional Networks", TPAMI 2016). W' is refitted by least squares from the
inputs the already factorized layers before it now give to the original layer's responses (their
"asymmetric" reconstruction), so each layer makes up for the error of the ones before it.

The rank of each layer is the smallest multiple of `align` whose model agrees with the original's top-1 on
`agreement` of the validation split, raised by `headroom` steps of `align`; a layer is factorized only where
that rank costs at most `max_cost` of its multiply-adds. No fine-tune follows: measured on the 40-feature CNN
(features40, ranks 16 and 24, 5 epochs of distillation from the original), fine-tuning moved agreement on the
test split from 96.1% to 95.5%: it trains for validation accuracy, where the factorization was fitted to the
original's responses.

Written by hand: PyTorch has `torch.svd_lowrank` for a weight matrix, but no library here factorizes a trained
network's layers on their responses with a stopping rule in agreement (Torch-Pruning removes units, ORT and
NNCF quantize).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.artifact import LoadedModel, predict
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.models import LowRank
from trainers.options import Fraction, Int, NonNegativeInt, PositiveInt, Ratio

from .base import Variant, register_method
from .resized import module_variant

CALIBRATION_BATCH = 256  # rows per forward pass while the statistics are gathered, at most
PATCH_BUDGET = 1 << 24  # values of one batch's unfolded patches (64 MB in float32)
# Layers with more inputs or outputs stay as they are: the fit holds a (fan-in + 1)^2 Gram matrix and a fan-out^2
# covariance in float64, 134 MB each at 4,096 (a Linear reading a flattened 64 x 1,000 map would need 33 GB).
MAX_FAN = 4096
DEFAULT_AGREEMENT = 0.985  # halfway between auto's default min_agreement (0.97) and 1
RIDGE = 1e-4  # the least-squares refit's ridge, relative to the mean diagonal of the input Gram matrix


@dataclass
class Factorized:
    """One layer's factorization: its module path, its shape and the rank chosen."""

    name: str
    kind: str
    inputs: int
    outputs: int
    rank: int
    cost: float  # the pair's multiply-adds per output position over the layer's

    def describe(self) -> str:
        return f"{self.name} ({self.kind} {self.inputs}->{self.outputs}) through rank {self.rank} ({self.cost:.0%} of its multiply-adds)"


def _candidate(layer: nn.Module) -> bool:
    """A Linear, or a plain convolution (one group, zero padding given in numbers) in one or two dimensions, of at
    most MAX_FAN inputs (per output position) and outputs."""
    plain = isinstance(layer, nn.Linear) or (
        isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups == 1 and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str))
    return plain and max(_fan_in(layer), _fan_out(layer)) <= MAX_FAN


def _fan_in(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels * math.prod(layer.kernel_size)


def _fan_out(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _cost(layer: nn.Module, rank: int) -> float:
    """The factorized pair's multiply-adds per output position over the layer's."""
    fan_in, fan_out = _fan_in(layer), _fan_out(layer)
    return rank * (fan_in + fan_out) / (fan_in * fan_out)


def _ranks(layer: nn.Module, align: int, max_cost: float) -> list[int]:
    """The ranks worth trying: multiples of `align` under the layer's narrower side, within `max_cost`."""
    return [r for r in range(align, min(_fan_in(layer), _fan_out(layer)), align) if _cost(layer, r) <= max_cost]


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the rows its weight matrix multiplies: (rows, fan_in)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, nn.Conv1d):
        x, kernel, stride = x.unsqueeze(2), (1, *layer.kernel_size), (1, *layer.stride)
        padding, dilation = (0, *layer.padding), (1, *layer.dilation)
    else:
        kernel, stride, padding, dilation = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _responses(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The layer's output as rows: (rows, fan_out)."""
    if isinstance(layer, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])


class _Statistics:
    """Running sums of [x, 1]^T [x, 1] and [x, 1]^T y in float64, so the fit never holds every patch."""

    def __init__(self):
        self.xx = self.xy = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], 1)
        xx, xy = x.T @ x, x.T @ y.double()
        self.xx = xx if self.xx is None else self.xx + xx
        self.xy = xy if self.xy is None else self.xy + xy

    def fit(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, b, mean and covariance of the fitted responses W x + b)."""
        gram = self.xx.clone()
        scale = gram.diagonal()[:-1].mean().clamp_min(1e-12)
        gram[:-1, :-1] += RIDGE * scale * torch.eye(len(gram) - 1, dtype=gram.dtype, device=gram.device)
        solution = torch.linalg.solve(gram, self.xy)  # (fan_in + 1, fan_out)
        n = self.xx[-1, -1]
        mean_x = self.xx[:-1, -1] / n
        cov_x = self.xx[:-1, :-1] / n - torch.outer(mean_x, mean_x)
        weight, bias = solution[:-1].T, solution[-1]
        return weight, bias, weight @ mean_x + bias, weight @ cov_x @ weight.T


def _gather(original: nn.Module, current: nn.Module, name: str, x: np.ndarray) -> _Statistics | None:
    """Statistics of `current`'s inputs to layer `name` against `original`'s responses of the same layer; None
    where the forward pass does not call the layer as a module (an attention block reads its weight directly).

    The rows per forward pass are sized so that a batch's patches stay within PATCH_BUDGET values: a
    convolution over a large map unfolds into positions x fan-in values per sample."""
    layer, target = current.get_submodule(name), original.get_submodule(name)
    device = next(current.parameters()).device
    seen: dict = {}
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.__setitem__("x", _patches(m, i[0].detach()))),
             target.register_forward_hook(lambda m, i, o: seen.__setitem__("y", _responses(m, o.detach())))]
    stats, start, batch = _Statistics(), 0, 1
    try:
        with torch.no_grad():
            while start < len(x):
                rows = torch.from_numpy(np.ascontiguousarray(x[start:start + batch], np.float32)).to(device)
                seen.clear()
                current(rows)
                original(rows)
                if "x" not in seen or "y" not in seen:
                    return None
                stats.add(seen["x"], seen["y"])
                start += len(rows)
                per_row = max(seen["x"].numel() // len(rows), 1)
                batch = int(min(CALIBRATION_BATCH, max(1, PATCH_BUDGET // per_row)))
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def _pair(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor, directions: torch.Tensor,
          mean: torch.Tensor) -> LowRank:
    """The two layers y = U (U^T W x) + U U^T b + (I - U U^T) mean."""
    u = directions.float()
    pair = LowRank(layer, u.shape[1])
    first, second = pair
    with torch.no_grad():
        first.weight.copy_((u.T @ weight.float()).reshape(first.weight.shape))
        second.weight.copy_(u.reshape(second.weight.shape))
        second.bias.copy_(u @ (u.T @ bias.float()) + mean.float() - u @ (u.T @ mean.float()))
    return pair.to(layer.weight.device)


def _agreement(module: nn.Module, x: np.ndarray, reference: np.ndarray) -> float:
    return float((predict(module, x).argmax(axis=1) == reference).mean())


def factorize(module: nn.Module, data: DataBundle, agreement: float, max_cost: float, align: int,
              calibration_samples: int, seed: int = 0, headroom: int = 0) -> tuple[nn.Module, list[Factorized], float]:
    """A factorized copy of `module`, the layers factorized, and its validation agreement with `module`. Each
    layer takes the smallest rank of its ladder reaching its share of `agreement`, then `headroom` rungs above it
    (as far as the ladder goes)."""
    original = copy.deepcopy(module).eval()
    current = copy.deepcopy(module).eval()
    order = np.random.default_rng(seed).permutation(len(data.x_train))[:calibration_samples]
    calibration = data.x_train[np.sort(order)]
    reference = predict(original, data.x_val).argmax(axis=1)
    layers = [(name, layer) for name, layer in original.named_modules() if _candidate(layer)]
    ladders = [(name, _ranks(layer, align, max_cost)) for name, layer in layers]
    ladders = [(name, ranks) for name, ranks in ladders if ranks]
    done: list[Factorized] = []
    agreed = 1.0
    # in definition order, which is forward order for the families and most modules; each layer may spend its
    # equal share of the disagreement allowed, and what the layers before it left unspent
    for step, (name, ranks) in enumerate(ladders, start=1):
        floor = 1.0 - (1.0 - agreement) * step / len(ladders)
        layer = current.get_submodule(name)
        stats = _gather(original, current, name, calibration)
        if stats is None:
            continue
        weight, bias, mean, covariance = stats.fit()
        _, vectors = torch.linalg.eigh(covariance)
        chosen, low, high = None, 0, len(ranks) - 1
        while low <= high:  # the smallest rank reaching the floor: agreement grows with the rank
            mid = (low + high) // 2
            current.set_submodule(name, _pair(layer, weight, bias, vectors[:, -ranks[mid]:], mean))
            try:
                got = _agreement(current, data.x_val, reference)
            except (RuntimeError, AttributeError, TypeError, ValueError):  # the module reads the layer's
                got = -1.0  # weight or shape directly: leave the layer as it is
            if got >= floor:
                chosen, high = (mid, got), mid - 1
            else:
                low = mid + 1
        if chosen is None:
            current.set_submodule(name, layer)
            continue
        rung = min(chosen[0] + headroom, len(ranks) - 1)
        current.set_submodule(name, _pair(layer, weight, bias, vectors[:, -ranks[rung]:], mean))
        agreed = chosen[1] if rung == chosen[0] else _agreement(current, data.x_val, reference)
        done.append(Factorized(name, type(layer).__name__, _fan_in(layer), _fan_out(layer), ranks[rung],
                               _cost(layer, ranks[rung])))
    return current.eval(), done, agreed


def _auto_lowrank(family: str, settings: dict) -> list[dict]:
    """What auto tries: a validation agreement halfway between auto's `min_agreement` and 1, which leaves int8
    the other half; only if that variant fails the rule, half as many flips again, one rung of rank higher.
    Agreement is what the ranks are chosen by, and the rule asks for accuracy too: on a 40-feature MLP (a data
    seed not tuned on) the first kept 97.9% agreement and lost 0.75 points, over auto's 0.5; at 99% validation
    agreement it lost 0.12.

    The rung of headroom is for a validation split that agrees at every rank: a model refitted on its training
    and validation rows (the MLP's default) has learned those rows. A signals MLP (a data seed not tuned on)
    agreed with its original on 100% of them at rank 8 and on 95.3% of the test split; a higher target chose
    rank 8 again, and rank 16 agrees on 99.4%."""
    room = 1 - settings["min_agreement"]
    return [{"agreement": round(1 - room / 2, 4)}, {"agreement": round(1 - room / 4, 4), "headroom": 1}]


@register_method("lowrank", role="transform", auto=_auto_lowrank, chain=True, needs=("torch",),
                 excludes=("recurrent",), fallback=("agreement", "headroom"),
                 refusal={"recurrent": "it factorizes Linear and convolution layers, and a recurrent model's time goes "
                                       "to its recurrent layers"})
def lowrank(model: LoadedModel, data: DataBundle, agreement: Fraction = DEFAULT_AGREEMENT, max_cost: Ratio = 0.6,
            align: PositiveInt = 8, calibration_samples: PositiveInt = 2048, seed: Int = 0,
            headroom: NonNegativeInt = 0) -> list[Variant]:
    """Low-rank factorization of the Linear and convolution layers, fitted to their responses (no training).

    Options:
        agreement: each layer takes the smallest rank at which the model still agrees with the original's
            top-1 on this fraction of the validation split (layers in order, each with the ones before it
            factorized).
        max_cost: a layer is factorized only where its pair costs at most this fraction of its multiply-adds.
        align: ranks are multiples of this (ONNX Runtime's kernels run ragged widths slower).
        calibration_samples: training rows whose responses the factors are fitted to.
        seed: which training rows.
        headroom: each layer's rank this many steps of `align` above the smallest reaching its share of
            `agreement` (within `max_cost`): for a validation split the model was trained on, where every rank
            agrees.
    """
    if len(data.x_val) == 0:
        raise ToolkitError("compression method 'lowrank' chooses its ranks on the validation split, and this "
                           "data set has none")
    module, done, agreed = factorize(model.module, data, agreement, max_cost, align, calibration_samples, seed,
                                     headroom)
    if not done:
        raise ToolkitError(f"low-rank factorization found no layer whose factors keep {agreement:.1%} validation "
                           f"agreement at {max_cost:.0%} of its multiply-adds or less")
    recipe = {"method": "lowrank", "agreement": agreement, "max_cost": max_cost, "align": align,
              "calibration_samples": calibration_samples, "seed": seed, "headroom": headroom,
              "ranks": {f.name: f.rank for f in done}}
    notes = [f"factorized {'; '.join(f.describe() for f in done)}; validation agreement {agreed:.2%}"]
    name = ("lowrank" + ("" if agreement == DEFAULT_AGREEMENT else f"-{agreement * 100:g}")
            + (f"-up{headroom}" if headroom else ""))
    return [module_variant(model, module, recipe, name, notes, data)]
