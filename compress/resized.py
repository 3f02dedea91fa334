"""Variants whose layer widths differ from their parent's (pruned models, narrower students).

A built-in family records its widths in the spec's config, so such a variant rebuilds exactly from
model.json; any other module (a user's own class) cannot be rebuilt at other widths, so its variant is
saved as ONNX with the module kept in memory as its PyTorch twin.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainers.artifact import LoadedModel, ModelSpec
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.models import LowRank, build_model, get_family, low_ranks

from .base import Variant, derive_model

EXAMPLE_ROWS = 16  # training rows that trace the graph and check the pruned forward pass


def example_rows(data: DataBundle, device=None) -> torch.Tensor:
    """A few training rows: the graph is traced and the pruned forward pass checked on real inputs."""
    x = np.ascontiguousarray(data.x_train[:EXAMPLE_ROWS], dtype=np.float32)
    return torch.from_numpy(x).to(device or "cpu")


# ---------------------------------------------------------------- widths of the built-in families

def _layers(stack: nn.Module, kinds) -> list[nn.Module]:
    """The layers of `kinds` in `stack`, a factorized one (`LowRank`) as its outer layer."""
    return [m for m in (s.outer if isinstance(s, LowRank) else s for s in stack) if isinstance(m, kinds)]


def _mlp_config(module, config: dict) -> dict:
    return {**config, "hidden": [m.out_features for m in _layers(module.features, nn.Linear)],
            "ranks": low_ranks(module)}


def _cnn_config(module, config: dict) -> dict:
    return {**config, "channels": [m.out_channels for m in _layers(module.features, (nn.Conv1d, nn.Conv2d))],
            "hidden": [m.out_features for m in _layers(module.classifier, nn.Linear)], "ranks": low_ranks(module)}


def _lstm_config(module, config: dict) -> dict:
    return {**config, "hidden": [layer.hidden_size for layer in module.layers]}


# How a built-in family's config reads the widths of a pruned module (every other model is saved as ONNX).
_CONFIG_READERS = {"mlp": _mlp_config, "cnn": _cnn_config, "lstm": _lstm_config}


def rebuilt_config(spec: ModelSpec, module: nn.Module) -> dict | None:
    """The config that rebuilds the pruned `module` exactly from model.json, or None when none does (a user's
    module, or widths the family cannot express): the rebuilt module must load the pruned weights strictly."""
    reader = _CONFIG_READERS.get(spec.family)
    if reader is None or not isinstance(module, get_family(spec.family).func):
        return None
    config = reader(module, spec.config)
    pre = spec.preprocessing
    try:
        rebuilt = build_model(spec.family, config, spec.input_shape, spec.num_classes, pre.get("mean"), pre.get("std"))
        rebuilt.load_state_dict(module.state_dict(), strict=True)
    except (ToolkitError, RuntimeError):
        return None
    return config


def module_variant(model: LoadedModel, module: nn.Module, recipe: dict, name: str, notes: list[str],
                   data: DataBundle) -> Variant:
    """A variant for a smaller `module` made from `model`: a built-in family's rebuildable artifact, or, for
    any other module (whose own class no longer fits its widths), an ONNX artifact with the module as its
    PyTorch twin in memory, its model carrying the graph so it predicts before it is saved."""
    config = rebuilt_config(model.spec, module)
    if config is not None:
        return Variant(name=name, model=derive_model(model, module, recipe, config=config), recipe=recipe, notes=notes)
    # imported here: importing `export` registers its methods, and the registry keeps registration order
    from .export import export_onnx, onnx_variant_model

    onnx_bytes = export_onnx(module, data)
    notes = [*notes, "saved as ONNX (model.onnx): the layer widths changed, so the original model class "
                     "cannot rebuild these weights"]
    variant_model = onnx_variant_model(model, module, recipe)
    variant_model.onnx_bytes = onnx_bytes
    return Variant(name=name, model=variant_model, recipe=recipe, onnx_bytes=onnx_bytes, notes=notes)
