"""int8-weights: an fp32 graph whose weights are stored as int8 and restored by ONNX Runtime at session creation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress import get_method
from compress.export import export_onnx, run_onnx
from compress.stored import MIN_ELEMENTS, dequantized, is_weight, quantize_rows, store_weights_int8
from trainers import as_model
from trainers.data import DataBundle
from trainers.errors import ToolkitError


class GRUNet(nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.gru = nn.GRU(2, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):  # (batch, 2, steps)
        out, _ = self.gru(x.transpose(1, 2))
        return self.head(out[:, -1])


@pytest.fixture(scope="module")
def gru():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2, 16)).astype(np.float32)
    y = (x[:, 0].mean(1) > 0).astype(np.int64) + (x[:, 1].mean(1) > 0.2).astype(np.int64)
    data = DataBundle.from_arrays(x, y, class_names=["a", "b", "c"])
    module = GRUNet().eval()
    return module, data


def _with_weights_replaced(onnx_bytes: bytes, replace) -> bytes:
    proto = onnx.load_from_string(onnx_bytes)
    for init in proto.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(replace(numpy_helper.to_array(init)), init.name))
    return proto.SerializeToString()


def _optimized_ops(onnx_bytes: bytes, tmp_path) -> list[str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_quantize_rows_keeps_each_row_within_half_a_step():
    w = np.random.default_rng(1).normal(size=(1, 6, 5)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (1, 6, 1)
    np.testing.assert_allclose(scale[0, :, 0], np.abs(w[0]).max(1) / 127, rtol=1e-6)
    assert np.all(np.abs(q.astype(np.float32) * scale - w) <= scale / 2 + 1e-7)
    assert np.abs(q).max() == 127  # each row's peak lands on the grid's end


def test_only_matrices_and_kernels_are_weights():
    assert is_weight(np.zeros((8, 8), np.float32)) and is_weight(np.zeros((1, 24, 8), np.float32))
    assert not is_weight(np.zeros((1, 96), np.float32))  # a GRU's bias: one axis past the leading 1
    assert not is_weight(np.zeros(256, np.float32)) and not is_weight(np.zeros((8, 8), np.float64))
    assert not is_weight(np.zeros((2, MIN_ELEMENTS // 2 - 1), np.float32))


def test_the_stored_graph_computes_with_the_rounded_weights(gru):
    module, data = gru
    fp32 = export_onnx(module, data)
    stored, names = store_weights_int8(fp32)
    assert names and len(stored) < 0.5 * len(fp32)
    reference = run_onnx(_with_weights_replaced(fp32, dequantized), data.x_test)
    np.testing.assert_allclose(run_onnx(stored, data.x_test), reference, rtol=1e-5, atol=1e-5)
    exact = run_onnx(fp32, data.x_test)
    assert np.abs(run_onnx(stored, data.x_test) - exact).max() < 0.05 * np.abs(exact).max()


def test_onnx_runtime_restores_the_weights_once_at_session_creation(gru, tmp_path):
    module, data = gru
    fp32 = export_onnx(module, data)
    stored, _ = store_weights_int8(fp32)
    assert {"Cast", "Mul"} <= {n.op_type for n in onnx.load_from_string(stored).graph.node}
    assert sorted(_optimized_ops(stored, tmp_path)) == sorted(_optimized_ops(fp32, tmp_path))


def test_a_weight_that_is_also_a_graph_input_stays_fp32():
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    with pytest.raises(ToolkitError, match="^compression method 'int8-weights': the graph has no weight"):
        store_weights_int8(helper.make_model(graph).SerializeToString())


def test_a_model_without_weights_worth_storing_is_refused(gru):
    _, data = gru
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(32, 1, bias=True), nn.Linear(1, 3))  # 32 and 3 values
    with pytest.raises(ToolkitError, match="no weight matrix or kernel to store as int8"):
        get_method("int8-weights").func(as_model(tiny.eval(), data), data)


def test_the_variant_has_a_rounded_twin_and_a_smaller_file(gru):
    module, data = gru
    [variant] = get_method("int8-weights").func(as_model(module, data), data)
    assert variant.name == "int8-weights-onnx" and variant.recipe["compute"] == "float32"
    assert len(variant.onnx_bytes) < 0.5 * len(export_onnx(module, data))
    assert variant.measurements["twin_agreement"] == 1.0
    twin = variant.model.module
    rounded, original = twin.gru.weight_hh_l0.detach().numpy(), module.gru.weight_hh_l0.detach().numpy()
    assert not np.array_equal(rounded, original)
    np.testing.assert_array_equal(rounded, dequantized(original))
    np.testing.assert_array_equal(twin.head.bias.detach().numpy(), module.head.bias.detach().numpy())  # biases stay fp32
