"""The 1-D -> 2-D layout pass over ONNX graphs (`compress.layout.lift_1d`): same logits, no 1-D kernel left,
the 4-D layout carried through rank-agnostic ops, graphs without 1-D layers left alone."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress.export import fast_graph, ort_session, run_onnx
from compress.layout import lift_1d


class Scale(nn.Module):
    """A custom per-channel scale of shape (C, 1): broadcasting it against a 4-D tensor would be wrong."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels)[:, None])

    def forward(self, x):
        return x * self.weight


class Residual1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1, dilation=1), nn.BatchNorm1d(8), nn.ReLU(),
                               nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2))
        self.scale = Scale(8)
        self.down = nn.Conv1d(8, 16, 1, stride=2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.a(y) + y)
        y = self.scale(y)
        y = nn.functional.avg_pool1d(self.down(y), 2, ceil_mode=True)
        return self.head(y.mean(-1))


class Plain1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                      nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                      nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _export(module: nn.Module, shape, opset: int = 17) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), torch.randn(2, *shape), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=opset, dynamo=False)
    return buffer.getvalue()


def _kernels(onnx_bytes: bytes) -> list[int]:
    ranks = []
    for node in onnx.load_from_string(onnx_bytes).graph.node:
        for a in node.attribute:
            if a.name == "kernel_shape":
                ranks.append(len(a.ints))
    return ranks


@pytest.mark.parametrize("make, shape, opset", [(Plain1d, (1, 40), 17), (Residual1d, (2, 33), 17),
                                                 (Plain1d, (1, 40), 11)])
def test_lifted_graph_gives_the_same_logits_with_2d_kernels_only(make, shape, opset):
    torch.manual_seed(0)
    module = make().eval()
    for m in module.modules():  # BatchNorm with statistics that are not the identity
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    graph = _export(module, shape, opset)
    lifted = lift_1d(graph)
    assert lifted is not None
    assert _kernels(graph) and set(_kernels(graph)) == {1}
    assert set(_kernels(lifted)) == {2}
    onnx.checker.check_model(onnx.load_from_string(lifted))
    x = np.random.default_rng(1).normal(size=(64, *shape)).astype(np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(lifted, x), want, rtol=1e-4, atol=1e-5)


def test_the_4d_layout_is_carried_through_activations_and_pools():
    """conv-relu-pool-conv-relu-pool-global pool: one Unsqueeze at the input, one Squeeze before Flatten."""
    lifted = lift_1d(_export(Plain1d(), (1, 40)))
    ops = [n.op_type for n in onnx.load_from_string(lifted).graph.node]
    assert ops.count("Unsqueeze") == 1 and ops.count("Squeeze") == 1
    assert ops.index("Squeeze") > max(i for i, op in enumerate(ops) if op in ("Conv", "MaxPool", "GlobalAveragePool"))


@pytest.mark.parametrize("module, shape", [(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2)), (1, 6, 6)),
                                           (nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)), (5,))])
def test_graphs_without_1d_layers_are_left_alone(module, shape):
    module(torch.randn(1, *shape))  # materialise the lazy layer
    graph = _export(module, shape)
    assert lift_1d(graph) is None
    rows = np.zeros((3, *shape), np.float32)
    assert fast_graph(graph, rows) == (graph, [])


def test_fast_graph_says_what_it_did_and_keeps_the_logits():
    graph = _export(Plain1d(), (1, 40))
    rows = np.random.default_rng(0).normal(size=(32, 1, 40)).astype(np.float32)
    faster, notes = fast_graph(graph, rows)
    assert faster != graph and "2-D" in notes[0]
    np.testing.assert_allclose(run_onnx(faster, rows), run_onnx(graph, rows), rtol=1e-4, atol=1e-5)
    assert ort_session(faster).get_inputs()[0].shape[1:] == [1, 40]  # the input the user feeds is unchanged


# ---------------------------------------------------------------- the input's standardization as one node

def _toolkit_graph(family: str, shape: tuple[int, ...], seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A toolkit model's fp32 graph (its standardization inside) with a mean and std per input value, and rows."""
    from compress.export import export_onnx
    from trainers.models import build_model

    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=shape).astype(np.float32), rng.uniform(0.5, 3, size=shape).astype(np.float32)
    torch.manual_seed(seed)
    module = build_model(family, {}, shape, 3, mean, std).eval()
    rows = (mean + std * rng.normal(size=(64, *shape))).astype(np.float32)
    return export_onnx(module), rows


def _ops(graph: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(graph).graph.node]


@pytest.mark.parametrize("shape", [(40,), (1, 8, 8)])
def test_an_mlps_input_standardization_becomes_one_node_with_the_same_logits(shape):
    from compress.layout import fold_input_scaling

    graph, rows = _toolkit_graph("mlp", shape)
    assert {"Sub", "Div"} <= set(_ops(graph))
    folded = fold_input_scaling(graph)
    ops = _ops(folded)
    assert "Sub" not in ops and "Div" not in ops and ops.count("BatchNormalization") == 1
    assert ops.count("Flatten") == (0 if len(shape) == 1 else 1)  # a row per sample already: no Flatten left
    np.testing.assert_allclose(run_onnx(folded, rows), run_onnx(graph, rows), rtol=1e-4, atol=1e-5)
    assert len(folded) < len(graph) + 4 * 4 * int(np.prod(shape))  # mean and std replaced, not kept beside


def test_graphs_whose_input_is_not_standardized_then_flattened_are_left_alone():
    from compress.layout import fold_input_scaling

    cnn, rows = _toolkit_graph("cnn", (1, 40))  # Sub and Div feed a convolution: no Flatten to fold into
    assert fold_input_scaling(cnn) is None
    plain = _export(nn.Sequential(nn.Flatten(), nn.Linear(40, 2)), (40,))
    assert fold_input_scaling(plain) is None


def test_int8_variants_of_an_mlp_run_the_folded_graph():
    """digits has one mean and one std for every pixel: int8 graphs get them folded into the first layer."""
    from compress import get_method
    from compress.checks import tiny_model
    from trainers.data import load_data

    data = load_data("digits")
    model = tiny_model("mlp")
    for method in ("int8-dynamic", "int8-static", "int8-weights"):
        options = {"latency_rounds": 0, "calibrations": ("minmax",), "per_channel": (True,)} if method == "int8-static" else {}
        variant = get_method(method).func(model, data, **options)[0]
        ops = _ops(variant.onnx_bytes)
        assert not {"BatchNormalization", "Sub", "Div"} & set(ops), method
        assert any("folded into the first layer's weights" in n for n in variant.notes), method
        logits = run_onnx(variant.onnx_bytes, data.x_test)
        assert (logits.argmax(1) == model.module(torch.from_numpy(data.x_test)).argmax(1).numpy()).mean() > 0.9


def _uniform(graph_shape, seed=1):
    """A toolkit MLP graph whose standardization is one mean and one std for every value, and rows."""
    from compress.export import export_onnx
    from trainers.models import build_model

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mean, std = np.full(graph_shape, 0.7, np.float32), np.full(graph_shape, 2.5, np.float32)
    module = build_model("mlp", {}, graph_shape, 3, mean, std).eval()
    return export_onnx(module), (0.7 + 2.5 * rng.normal(size=(64, *graph_shape))).astype(np.float32)


@pytest.mark.parametrize("shape", [(40,), (1, 8, 8)])
def test_the_standardization_folds_into_the_first_layer_with_the_same_logits(shape):
    from compress.layout import fold_input_into_gemm

    graph, rows = _toolkit_graph("mlp", shape)  # a mean and std per value: exact in fp32, refused for int8
    assert fold_input_into_gemm(graph, uniform_only=True) is None
    folded = fold_input_into_gemm(graph, uniform_only=False)
    ops = _ops(folded)
    assert not {"Sub", "Div", "BatchNormalization"} & set(ops)
    assert ops.count("Flatten") == (0 if len(shape) == 1 else 1)
    np.testing.assert_allclose(run_onnx(folded, rows), run_onnx(graph, rows), rtol=1e-4, atol=1e-4)
    uniform, rows = _uniform(shape)
    folded = fold_input_into_gemm(uniform, uniform_only=True)
    assert folded is not None and "Sub" not in _ops(folded)
    np.testing.assert_allclose(run_onnx(folded, rows), run_onnx(uniform, rows), rtol=1e-4, atol=1e-4)


def test_the_fold_leaves_graphs_it_cannot_fold_exactly_alone():
    from compress.export import input_fold
    from compress.layout import fold_input_into_gemm

    cnn, _ = _toolkit_graph("cnn", (1, 40))  # the standardization feeds a padded convolution
    assert fold_input_into_gemm(cnn, uniform_only=False) is None
    graph, rows = _toolkit_graph("mlp", (40,))
    proto = onnx.load_from_string(graph)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    gemm.attribute.append(onnx.helper.make_attribute("alpha", 2.0))  # a scaled Gemm: not the pattern folded
    assert fold_input_into_gemm(proto.SerializeToString(), uniform_only=False) is None
    # a table's columns, each with its own scale: an int8 graph keeps them in one BatchNormalization node
    kept, notes = input_fold(graph, rows, any_scale=False)
    assert "BatchNormalization" in _ops(kept) and "one BatchNormalization node" in notes[0]
    folded, notes = input_fold(graph, rows, any_scale=True)
    assert "BatchNormalization" not in _ops(folded) and "first layer's weights" in notes[0]


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.Module]):
        super().__init__()
        self.rnn = kind(3, 8, batch_first=True, num_layers=2)
        self.head = nn.Linear(8, 4)
        self.input_shape = (7, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_the_export_leaves_out_zero_initial_states(kind):
    from compress.export import export_onnx

    torch.manual_seed(0)
    module = Recurrent(kind).eval()
    x = torch.randn(5, 7, 3)
    graph = onnx.load_from_string(export_onnx(module))
    ops = [n.op_type for n in graph.graph.node]
    recurrent = [n for n in graph.graph.node if n.op_type == kind.__name__]
    assert len(recurrent) == 2 and "ConstantOfShape" not in ops and "Shape" not in ops
    assert all(len(n.input) <= 5 for n in recurrent)  # X, W, R, B, (sequence_lens): no state inputs
    with torch.inference_mode():
        want = module(x).numpy()
    np.testing.assert_allclose(run_onnx(graph.SerializeToString(), x.numpy()), want, rtol=1e-4, atol=1e-5)


def test_a_state_that_is_not_zero_stays():
    from onnx import TensorProto, helper

    from compress.layout import drop_zero_states

    def graph(value: float) -> bytes:
        rng = np.random.default_rng(0)
        inits = [onnx.numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
                 for n, s in (("W", (1, 2, 3)), ("R", (1, 2, 2)), ("B", (1, 4)))]
        inits.append(onnx.numpy_helper.from_array(np.array([1, 1, 2], np.int64), "shape"))
        nodes = [helper.make_node("ConstantOfShape", ["shape"], ["h0"],
                                  value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value])),
                 helper.make_node("RNN", ["x", "W", "R", "B", "", "h0"], ["y", "h"], hidden_size=2, name="rnn")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, 3])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    assert drop_zero_states(graph(0.5)) is None
    # a zero initializer the caller may feed (it is also a graph input) stays
    fed = onnx.load_from_string(graph(0.0))
    fed.graph.node.remove(fed.graph.node[0])
    fed.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 1, 2), np.float32), "h0"))
    fed.graph.input.append(onnx.helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, 2]))
    assert drop_zero_states(fed.SerializeToString()) is None
    dropped = onnx.load_from_string(drop_zero_states(graph(0.0)))
    assert [n.op_type for n in dropped.graph.node] == ["RNN"] and list(dropped.graph.node[0].input) == ["x", "W", "R", "B"]
    assert "shape" not in {i.name for i in dropped.graph.initializer}
    x = np.random.default_rng(1).normal(size=(4, 1, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(dropped.SerializeToString(), x), run_onnx(graph(0.0), x), rtol=1e-6)


def test_an_input_clamped_twice_keeps_every_node_and_tensor_name_unique():
    """The toolkit's own int8-dynamic model.onnx compressed again with int8-dynamic is clamped a second time: the
    second clamp takes fresh names (ONNX Runtime refused two nodes named clamp_input_low) and the range of both."""
    from compress.layout import clamp_input

    graph = _export(nn.Sequential(nn.Linear(4, 3)), (4,))
    once = clamp_input(graph, np.full((2, 4), [[0.0], [1.0]], np.float32))  # range [0, 1]: clamped to [-0.1, 1.1]
    twice = clamp_input(once, np.full((2, 4), [[0.5], [2.0]], np.float32))  # range [0.5, 2]: to [0.35, 2.15]
    model = onnx.load_from_string(twice)
    names = [node.name for node in model.graph.node]
    outputs = [name for node in model.graph.node for name in node.output]
    assert len(set(names)) == len(names) == 4 + len(onnx.load_from_string(graph).graph.node)  # two clamps
    assert len(set(outputs)) == len(outputs)
    onnx.checker.check_model(model)
    x = np.array([[-5.0, 0.2, 0.5, 9.0]], np.float32)
    np.testing.assert_allclose(run_onnx(twice, x), run_onnx(graph, np.clip(x, 0.35, 1.1)), atol=1e-6)
