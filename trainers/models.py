"""The model families: MLP, CNN and LSTM classifiers, and their registry.

Each family is a typed config (every width listed per layer, so a pruned or
distilled model with other widths rebuilds exactly) and an `nn.Module` built
from it. All modules start with `Standardize`, which holds the training-split
statistics as buffers: models take raw inputs everywhere (training, ONNX,
explanations).

Modules use layer objects (`nn.ReLU`, `nn.MaxPool*d`), never their functional
forms, so hook-based explainers such as DeepLift/DeepExplainer see every
non-linearity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field
from torch import nn

from .errors import ArtifactError, ToolkitError
from .options import FORBID_EXTRA, Bool, Float, PositiveInt, check, parse
from .registry import Entry, Registry

Dropout = Annotated[Float, Field(ge=0, lt=1)]

# 100 M float32 parameters are 400 MB of weights, 1.2 GB with Adam's state; the default families at their
# default sizes stay under 1 M. A larger model is a typo or a hostile model.json; TOOLKIT_MAX_PARAMETERS allows it.
MAX_PARAMETERS = 100_000_000
MAX_PARAMETERS_ENV = "TOOLKIT_MAX_PARAMETERS"
MAX_LAYERS = 256  # per list of widths: a million one-unit layers are few parameters but a million modules


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd (a same-size convolution pads kernel_size // 2 on each side)")
    return value


OddKernel = Annotated[PositiveInt, AfterValidator(_odd)]


@dataclass
class Family(Entry):
    """A registered model family.

    `func` is its `nn.Module` class, built as func(config, input_shape, num_classes, mean, std); `config` is its
    config dataclass; `tags` the capability tags every model of the family has (see `capabilities`), which
    methods are checked against before a model exists (a pipeline's preflight, the CLI's choices).
    """

    config: type | None = None
    tags: tuple[str, ...] = ("torch",)

    def options(self, positional: int = 0) -> dict[str, object]:
        """A family's options are its config's fields (`make_config`), with their defaults."""
        return config_dict(self.config()) if self.config is not None else {}


FAMILIES: Registry[Family] = Registry("model family", Family, validate=False)


def register_family(name: str, config: type, description: str = "", tags: tuple[str, ...] = ("torch",)):
    """Class decorator: register an `nn.Module` built from the dataclass `config` as model family `name`.

    `config` lists every architecture number with its type and bounds (trainers.options types) and sets
    `__pydantic_config__ = FORBID_EXTRA`, so `make_config` refuses unknown keys and bad values. `tags` are the
    capability tags of its models (`capabilities`); "torch" is always among them.
    """
    return FAMILIES.register(name, config=config, description=description, tags=tuple(sorted({"torch", *tags})))


def family_tags(name: str) -> frozenset:
    """The capability tags a registered family declares. Any other name is taken for a PyTorch module whose
    layers are not known yet (a family registered later, a user's "custom" module), and "onnx" for a graph."""
    if name in FAMILIES:
        return frozenset(FAMILIES.get(name).tags)
    return frozenset({"onnx"} if name == "onnx" else {"torch"})


# Layer types behind each capability tag. Captured by type, so a user's subclass of nn.Conv2d counts too.
_TAG_LAYERS = {"conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d), "recurrent": (nn.RNNBase,), "dense": (nn.Linear,),
               "norm": (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)}
# ONNX Runtime's offline optimiser saves convolutions and dense layers as its com.microsoft fused ops (FusedConv:
# a Conv with its activation); an optimised CNN is still a CNN.
_TAG_OPS = {"conv": {"Conv", "ConvInteger", "QLinearConv", "FusedConv"},
            "recurrent": {"LSTM", "GRU", "RNN", "Scan", "Loop"},
            "dense": {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedGemm", "FusedMatMul"},
            "norm": {"BatchNormalization", "LayerNormalization", "GroupNormalization", "InstanceNormalization"}}


def capabilities(model) -> set[str]:
    """What a model can do, read from the model itself, as tags: `torch` (a PyTorch module, so gradients),
    `onnx` (an ONNX graph), `conv`, `recurrent`, `dense`, `norm` (the layer types it contains: module types
    for a PyTorch module, op types for a graph without one), `quantized` (a graph without a module that is
    already int8: quantize ops, or 8-bit weights).

    `model` is a `LoadedModel` or an `nn.Module`. Methods declare the tags they need or exclude
    (`trainers.registry.Entry`), and registries check models against them.
    """
    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    tags: set[str] = set()
    if module is not None:
        tags.add("torch")
        for tag, kinds in _TAG_LAYERS.items():
            if any(isinstance(m, kinds) for m in module.modules()):
                tags.add(tag)
    onnx_bytes = model.onnx_model_bytes() if hasattr(model, "onnx_model_bytes") else None
    if onnx_bytes is not None:
        tags.add("onnx")
        if module is None:
            ops = onnx_op_types(onnx_bytes)
            tags.update(tag for tag, names in _TAG_OPS.items() if ops & names)
            if ops & _QUANTIZED_OPS or _int8_initializers(onnx_bytes):
                tags.add("quantized")
    return tags


# Ops that only a quantized graph holds (ORT's QDQ, QOperator and dynamic formats). A graph whose weights are
# stored as int8 and cast back (int8-weights) holds none of them: its 8-bit initializers tell instead.
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                  "QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "DynamicQuantizeMatMul",
                  "DynamicQuantizeLSTM", "MatMulIntegerToFloat"}
_INT8_CACHE: dict = {}


def _int8_initializers(onnx_bytes: bytes) -> bool:
    """Whether a graph stores any initializer as 8-bit integers (its weights rounded already), cached by digest."""
    import hashlib

    key = hashlib.sha1(onnx_bytes).hexdigest()
    if key not in _INT8_CACHE:
        import onnx

        eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
        _INT8_CACHE[key] = any(t.data_type in eight_bit for t in onnx.load_from_string(onnx_bytes).graph.initializer)
    return _INT8_CACHE[key]


_OPS_CACHE: dict = {}


def onnx_op_types(onnx_bytes: bytes) -> frozenset:
    """The op types of an ONNX graph (subgraphs included), cached by the bytes' digest."""
    import hashlib

    key = hashlib.sha1(onnx_bytes).hexdigest()
    if key not in _OPS_CACHE:
        import onnx

        graph = onnx.load_from_string(onnx_bytes).graph
        ops, stack = set(), [graph]
        while stack:
            for node in stack.pop().node:
                ops.add(node.op_type)
                stack += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        _OPS_CACHE[key] = frozenset(ops)
    return _OPS_CACHE[key]


def list_models() -> list[str]:
    """Names of the registered model families."""
    return FAMILIES.names()


def get_family(name: str) -> Family:
    """The registered family `name`; one ToolkitError line when unknown."""
    return FAMILIES.get(name)


def make_config(family: str, values: dict | None = None, where: str | None = None):
    """Build a family's config from a dict: unknown keys, wrong types and out-of-range values are refused, and
    lists of more than MAX_LAYERS widths. `where` names the values in the message (default "<family> config"):
    a user who typed `--arch '{"hidden": [-1]}'` is told `--arch hidden.0: ...`, not of the family's config."""
    where = where or f"{family} config"
    config = parse(get_family(family).config, values, where)
    _check_layers(config, where)
    return config


def _check_layers(config, where: str) -> None:
    for key, value in asdict(config).items():
        if isinstance(value, list) and len(value) > MAX_LAYERS:
            raise ToolkitError(f"{where} {key}: {len(value):,} layers, more than the limit of {MAX_LAYERS}")


def build_model(family: str, config, input_shape, num_classes: int, mean=None, std=None) -> nn.Module:
    """Build a family's module; `config` is its dataclass or a plain dict."""
    fam = get_family(family)
    config = make_config(family, config) if isinstance(config, dict) else check(config, f"{family} config")
    input_shape = tuple(int(d) for d in input_shape)
    if mean is None:
        mean, std = _unit_stats(input_shape)
    check_model_size(family, config, input_shape, num_classes)
    try:
        return fam.func(config, input_shape, num_classes, np.asarray(mean), np.asarray(std))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ArtifactError(f"cannot build a {family} model for inputs {input_shape}: {exc}") from None


def check_model_size(family: str, config, input_shape, num_classes: int) -> int:
    """The model's parameter count, built on PyTorch's meta device (nothing allocated); ToolkitError above
    `parameter_limit()`. `build_model` calls it; a pipeline calls it before any stage runs."""
    config = make_config(family, config) if isinstance(config, dict) else config
    input_shape = tuple(int(d) for d in input_shape)
    values = float(np.prod(input_shape, dtype=np.float64))
    if values > parameter_limit() or min(input_shape, default=1) < 1:
        raise ToolkitError(f"a {family} model cannot take inputs of shape {input_shape} ({values:.3g} values each)")
    _check_layers(config, f"{family} config")
    try:
        with torch.device("meta"):
            mean, std = _unit_stats(input_shape)
            size = count_parameters(get_family(family).func(config, input_shape, num_classes, mean, std))
    except (ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise ArtifactError(f"cannot build a {family} model for inputs {input_shape}: {exc}") from None
    check_parameter_count(size, f"a {family} model for inputs {input_shape} with {num_classes} classes")
    return size


def parameter_limit() -> int:
    """The largest model `build_model` builds: MAX_PARAMETERS, or TOOLKIT_MAX_PARAMETERS when set."""
    from .options import env_limit

    return env_limit(MAX_PARAMETERS_ENV, MAX_PARAMETERS, "parameters")


def check_parameter_count(size: int, what: str) -> None:
    """Refuse a model of more than `parameter_limit()` parameters, before any memory is allocated."""
    limit = parameter_limit()
    if size > limit:
        raise ToolkitError(f"{what} would have {size:,} parameters, more than the limit of {limit:,} "
                           f"(set {MAX_PARAMETERS_ENV} to allow it)")


def config_dict(config) -> dict:
    return asdict(config)


def _unit_stats(input_shape):
    shape = input_shape if len(input_shape) == 1 else (input_shape[0],) + (1,) * (len(input_shape) - 1)
    return np.zeros(shape, np.float32), np.ones(shape, np.float32)


class Standardize(nn.Module):
    """(x - mean) / std with the training-split statistics stored as buffers."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)))

    def forward(self, x):
        return (x - self.mean) / self.std


class LowRank(nn.Sequential):
    """A Linear or convolution layer factorized through `rank` channels: the layer's own kind with `rank`
    outputs and no bias, then a 1x1 one back to its width (`compress.lowrank` fits the weights)."""

    def __init__(self, layer: nn.Module, rank: int):
        if isinstance(layer, nn.Linear):
            if not 1 <= rank <= min(layer.in_features, layer.out_features):
                raise ValueError(f"rank {rank} does not factorize a {layer.in_features}->{layer.out_features} Linear")
            first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups == 1:
            if not 1 <= rank <= layer.out_channels:
                raise ValueError(f"rank {rank} does not factorize a convolution of {layer.out_channels} channels")
            conv = type(layer)
            first = conv(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         bias=False)
            second = conv(rank, layer.out_channels, 1)
        else:
            raise ValueError(f"cannot factorize a {type(layer).__name__}")
        super().__init__(first, second)
        self.rank = rank

    @property
    def outer(self) -> nn.Module:
        """The layer that gives the pair's width (what a reader of the widths takes for the layer)."""
        return self[1]


def factor_layers(module: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each named layer of `module` by an (unfitted) `LowRank` of its rank; ValueError for a name that
    is not a Linear or convolution of the module."""
    for name, rank in ranks.items():
        try:
            layer = module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"ranks: the model has no layer {name!r}") from None
        module.set_submodule(name, LowRank(layer, int(rank)))
    return module


def low_ranks(module: nn.Module) -> dict[str, int]:
    """{layer name: rank} of the `LowRank` layers in `module`."""
    return {name: m.rank for name, m in module.named_modules() if isinstance(m, LowRank)}


def _dense_stack(widths: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear-ReLU-Dropout blocks for consecutive widths; returns (stack, last width)."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers), widths[-1]


@dataclass
class MLPConfig:
    """hidden: width of each hidden layer (empty: a linear model);
    ranks: layers factorized through fewer channels ({"features.3": 16}, `compress.lowrank`)."""

    __pydantic_config__ = FORBID_EXTRA
    hidden: list[PositiveInt] = field(default_factory=lambda: [256, 128])
    dropout: Dropout = 0.1
    ranks: dict[str, PositiveInt] = field(default_factory=dict)


@register_family("mlp", MLPConfig, "multi-layer perceptron on the flattened input", tags=("dense",))
class MLP(nn.Module):
    def __init__(self, config: MLPConfig, input_shape, num_classes, mean, std):
        super().__init__()
        self.config, self.input_shape = config, tuple(input_shape)
        self.standardize = Standardize(mean, std)
        self.flatten = nn.Flatten()
        self.features, width = _dense_stack([int(np.prod(input_shape))] + list(config.hidden), config.dropout)
        self.head = nn.Linear(width, num_classes)
        factor_layers(self, config.ranks)

    def forward(self, x):
        return self.head(self.features(self.flatten(self.standardize(x))))


@dataclass
class CNNConfig:
    """channels: output channels of each conv block (conv, ReLU, 2x max-pool);
    hidden: widths of the dense layers after the last block;
    head: how the last feature map reaches the dense layers: `flatten` (every position a separate input: keeps
    where in the input a shape is; the default) or `gap` (global average pooling, one value per channel: for long
    series, where the flattened map is thousands of inputs for few training rows; docs/results.md);
    ranks: layers factorized through fewer channels ({"classifier.0": 24}, `compress.lowrank`)."""

    __pydantic_config__ = FORBID_EXTRA
    channels: list[PositiveInt] = field(default_factory=lambda: [32, 64])
    kernel_size: OddKernel = 3
    hidden: list[PositiveInt] = field(default_factory=lambda: [128])
    dropout: Dropout = 0.2
    head: Literal["flatten", "gap"] = "flatten"
    ranks: dict[str, PositiveInt] = field(default_factory=dict)


@register_family("cnn", CNNConfig, "convolutional net: Conv1d for (F,) and (C, L), Conv2d for (C, H, W)",
                 tags=("conv", "dense"))
class CNN(nn.Module):
    def __init__(self, config: CNNConfig, input_shape, num_classes, mean, std):
        super().__init__()
        self.config, self.input_shape = config, tuple(input_shape)
        self.standardize = Standardize(mean, std)
        spatial = (input_shape[0],) if len(input_shape) == 1 else input_shape[1:]
        in_channels = 1 if len(input_shape) == 1 else input_shape[0]
        conv = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
        pool = nn.MaxPool1d if len(spatial) == 1 else nn.MaxPool2d
        layers: list[nn.Module] = []
        size = list(spatial)
        for out_channels in config.channels:
            layers += [conv(in_channels, out_channels, config.kernel_size, padding=config.kernel_size // 2), nn.ReLU()]
            if min(size) >= 2:  # pool only while there is something to pool
                layers.append(pool(2))
                size = [s // 2 for s in size]
            in_channels = out_channels
        if config.head == "gap":  # the last block's map averaged to one value per channel
            layers.append((nn.AdaptiveAvgPool1d if len(spatial) == 1 else nn.AdaptiveAvgPool2d)(1))
            size = [1] * len(size)
        self.unsqueeze = len(input_shape) == 1
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        flat = in_channels * int(np.prod(size))
        self.classifier, width = _dense_stack([flat] + list(config.hidden), config.dropout)
        self.head = nn.Linear(width, num_classes)
        factor_layers(self, config.ranks)

    def forward(self, x):
        x = self.standardize(x)
        if self.unsqueeze:
            x = x.unsqueeze(1)
        return self.head(self.classifier(self.flatten(self.features(x))))


@dataclass
class LSTMConfig:
    """hidden: hidden units of each stacked LSTM layer (layers may differ in width,
    so structured pruning can shrink each one); bidirectional applies to all."""

    __pydantic_config__ = FORBID_EXTRA
    hidden: Annotated[list[PositiveInt], Field(min_length=1)] = field(default_factory=lambda: [128])
    bidirectional: Bool = False
    dropout: Dropout = 0.1


@register_family("lstm", LSTMConfig, "stacked LSTM reading along the last spatial axis", tags=("recurrent", "dense"))
class LSTMClassifier(nn.Module):
    def __init__(self, config: LSTMConfig, input_shape, num_classes, mean, std):
        super().__init__()
        self.config, self.input_shape = config, tuple(input_shape)
        self.standardize = Standardize(mean, std)
        directions = 2 if config.bidirectional else 1
        width = sequence_features(input_shape)
        # Single-layer nn.LSTMs stacked by hand: nn.LSTM(num_layers=k) forces one width for all layers.
        self.layers = nn.ModuleList()
        for hidden in config.hidden:
            self.layers.append(nn.LSTM(width, hidden, batch_first=True, bidirectional=config.bidirectional))
            width = hidden * directions
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = to_sequence(self.standardize(x))
        for i, layer in enumerate(self.layers):
            x, (h, _) = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(x)
        last = torch.cat([h[0], h[1]], dim=1) if self.config.bidirectional else h[0]
        return self.head(self.dropout(last))


def sequence_features(input_shape) -> int:
    """Features per time step when reading along the last spatial axis."""
    if len(input_shape) == 1:
        return 1
    if len(input_shape) == 2:
        return int(input_shape[0])
    return int(input_shape[0] * input_shape[2])


def to_sequence(x: torch.Tensor) -> torch.Tensor:
    """(N, F) -> F steps of 1; (N, C, L) -> L steps of C; (N, C, H, W) -> H steps of C*W."""
    if x.dim() == 2:
        return x.unsqueeze(-1)
    if x.dim() == 3:
        return x.transpose(1, 2)
    return x.permute(0, 2, 1, 3).flatten(2)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
