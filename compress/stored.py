"""int8 weight storage for ONNX graphs that compute in fp32: a smaller file at fp32's speed.

Where ONNX Runtime has no int8 kernel for a layer (GRU: dynamic and static quantization both leave it fp32),
int8 cannot make it faster, but the file can still shrink. Here only the storage changes: each weight matrix
or kernel is stored as int8 with one fp32 scale per output row (the first axis past leading axes of size 1:
a Gemm's or a Conv's output channel, a GRU/LSTM gate row), and the graph restores the fp32 weight with a
Cast and a Mul on those two constants. ONNX Runtime's constant folding (on at its default optimisation level)
evaluates them once when the session is created, so inference runs the fp32 graph with the rounded weights.
Measured on a 2-layer GRU: the optimised graph keeps no Cast or Mul, and the latency is the fp32 graph's.
A DequantizeLinear node would say the same, but ONNX Runtime keeps those unfolded for its QDQ handling and
runs them on every call.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainers.artifact import LoadedModel
from trainers.data import DataBundle
from trainers.errors import ToolkitError

from .base import ALREADY_QUANTIZED, Variant, default_options, register_method
from .export import Exporter, ExportInfo, export_with_info, fast_graph, onnx_parity, onnx_variant_model, run_onnx

MIN_ELEMENTS = 64  # smaller tensors stay fp32: their scales would cost about what int8 saves
SUFFIX_INT8, SUFFIX_SCALE = "__int8", "__scale"


def is_weight(array: np.ndarray) -> bool:
    """A weight matrix or kernel worth storing as int8: fp32, at least MIN_ELEMENTS values, and at least two
    axes past leading axes of size 1 (biases and norm scales, one axis, stay fp32)."""
    return (array.dtype == np.float32 and array.size >= MIN_ELEMENTS
            and array.ndim - _leading_ones(array.shape) >= 2)


def _leading_ones(shape) -> int:
    return next((i for i, n in enumerate(shape) if n != 1), len(shape))


def quantize_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per row (the first axis past leading size-1 axes).

    Returns (int8 values, fp32 scales); the scales broadcast against the values, and their product is the
    weight the graph computes with.
    """
    lead = _leading_ones(array.shape)
    rows = array.reshape(array.shape[:lead + 1] + (-1,))
    peak = np.abs(rows).max(axis=-1, keepdims=True)
    scale = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.round(rows / scale), -127, 127).astype(np.int8)
    scale_shape = array.shape[:lead + 1] + (1,) * (array.ndim - lead - 1)
    return q.reshape(array.shape), scale.reshape(scale_shape)


def dequantized(array: np.ndarray) -> np.ndarray:
    """The fp32 weight the stored graph computes with for `array` (itself where it is not stored as int8)."""
    if not is_weight(array):
        return array
    q, scale = quantize_rows(array)
    return q.astype(np.float32) * scale


def store_weights_int8(onnx_bytes: bytes) -> tuple[bytes, list[str]]:
    """The graph with every weight (`is_weight`) stored as int8 plus scales, restored by Cast and Mul nodes at
    the start of the graph; returns (graph bytes, names of the stored weights).

    Initializers that are also graph inputs (a caller may override them) stay as they are.

    Raises:
        ToolkitError: the graph has no weight to store.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    graph = proto.graph
    overridable = {i.name for i in graph.input}
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | overridable
    kept, nodes, stored = [], [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        names = (init.name + SUFFIX_INT8, init.name + SUFFIX_SCALE, init.name + "__cast")
        if init.name in overridable or not is_weight(array) or taken.intersection(names):
            kept.append(init)
            continue
        q, scale = quantize_rows(array)
        kept += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1])]
        nodes += [helper.make_node("Cast", [names[0]], [names[2]], to=TensorProto.FLOAT, name=names[2]),
                  helper.make_node("Mul", [names[2], names[1]], [init.name], name=init.name + "__restore")]
        stored.append(init.name)
    if not stored:
        raise ToolkitError("compression method 'int8-weights': the graph has no weight matrix or kernel to store "
                           f"as int8 (fp32, at least {MIN_ELEMENTS} values, two or more axes)")
    del graph.initializer[:]
    graph.initializer.extend(kept)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + original)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), stored


def rounded_twin(module: nn.Module) -> nn.Module:
    """A copy of `module` whose weight parameters (`is_weight`) hold the values the stored graph restores
    where the export keeps PyTorch's layout (Linear as Gemm, Conv, GRU/LSTM gate rows); folded BatchNorm or a
    transposed MatMul weight round on another grid, so the twin's agreement with the graph is measured."""
    import copy

    twin = copy.deepcopy(module).cpu().float().eval()
    with torch.no_grad():
        for name, param in twin.named_parameters():
            array = param.detach().numpy()
            if name.rsplit(".", 1)[-1].startswith("weight") and is_weight(array):
                param.copy_(torch.from_numpy(dequantized(array)))
    return twin


@register_method("int8-weights", role="runtime", auto=default_options, chain=True, excludes=("quantized",),
                 refusal={"quantized": ALREADY_QUANTIZED})
def int8_weights(model: LoadedModel, data: DataBundle, exporter: Exporter = "auto") -> list[Variant]:
    """The fp32 ONNX Runtime graph with its weight matrices stored as int8: a file up to 4x smaller, fp32 speed.

    Size only: ONNX Runtime restores the fp32 weights once, when it creates the session (constant folding),
    and computes in fp32, so latency stays the fp32 graph's; the rounding to int8 (one scale per output row)
    is the only change to the predictions. Works on layers ONNX Runtime cannot run in int8 (GRU). Biases,
    scales and the graph itself stay as they are, so small models shrink less (measured on a 2-layer GRU:
    3.2x at 38k parameters, 2.5x at 10k). A session with graph optimisations switched off restores the
    weights on every call instead.
    """
    if model.module is not None:
        fp32_bytes, info = export_with_info(model, data, exporter=exporter)
    else:  # a user's ONNX graph: stored as it is
        fp32_bytes, info = model.onnx_model_bytes(), ExportInfo("none (the user's ONNX graph)", 0.0)
    # the standardization folded into the weights only where it is one scale for all: rounding then keeps its grid
    fp32_bytes, layout = fast_graph(fp32_bytes, data.x_test, any_scale=False)
    onnx_bytes, stored = store_weights_int8(fp32_bytes)
    recipe = {"method": "int8-weights", "runtime": "onnxruntime", "exporter": info.exporter, "weight_type": "int8",
              "compute": "float32", "scales": "per output row", "stored": stored}
    twin = None if model.module is None else rounded_twin(model.module)
    variant_model = onnx_variant_model(model, twin, recipe)
    variant_model.onnx_bytes = onnx_bytes
    notes = [f"{len(stored)} weight tensors stored as int8 (one scale per output row), restored to fp32 when "
             f"ONNX Runtime creates the session: smaller file, fp32 computation", *layout]
    twin_agreement = None
    if twin is not None:
        with torch.inference_mode():
            twin_logits = twin(torch.from_numpy(np.ascontiguousarray(data.x_test, np.float32))).numpy()
        twin_agreement = float((twin_logits.argmax(1) == run_onnx(onnx_bytes, data.x_test).argmax(1)).mean())
        notes.append(f"the rounded PyTorch twin agrees with the graph on {twin_agreement:.1%} of test samples")
    parity = onnx_parity(onnx_bytes, model, data.x_test)
    return [Variant(name="int8-weights-onnx", model=variant_model, recipe=recipe, onnx_bytes=onnx_bytes,
                    measurements={"parity": parity, "twin_agreement": twin_agreement}, notes=notes)]
