"""The graph's ORT session hint and the int8 search's layers in fp32 for speed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import compress.int8_search as search
from compress.export import export_onnx
from compress.int8_search import SESSION_HINT, search_int8, with_hint
from trainers import TrainConfig, load_model, predict, save_model, train
from trainers.ortsession import DISABLED_OPTIMIZERS_KEY, disabled_optimizers, first_output, inference_session

ONE = {"formats": ("qdq",), "calibrations": ("minmax",), "per_channel": (True,), "optimize": (True,)}


@pytest.fixture(scope="module")
def cnn(digits):
    return train(digits, "cnn", TrainConfig(epochs=2, device="cpu"), progress=False).model


@pytest.fixture(scope="module")
def inputs(cnn, digits):
    fp32 = export_onnx(cnn, digits)
    check_x = np.ascontiguousarray(digits.x_val, np.float32)
    return fp32, np.ascontiguousarray(digits.x_train[:256], np.float32), check_x, predict(cnn.module, check_x).argmax(1)


def _first_conv_in_fp32(fp32: bytes, calibration_x, tmp_path) -> bytes:
    (tmp_path / "fp32.onnx").write_bytes(fp32)
    first = search.compute_nodes(tmp_path / "fp32.onnx")[0]
    return search._quantize(tmp_path / "fp32.onnx", search.Int8Config(), calibration_x, [first], tmp_path)


@pytest.mark.parametrize("value, expected", [
    (json.dumps(["QDQPropagationTransformer"]), ["QDQPropagationTransformer"]),
    (json.dumps(["QDQPropagationTransformer", "ConstantFolding"]), ["QDQPropagationTransformer"]),  # not allowed
    ("not json", []), (json.dumps({"a": 1}), []), (json.dumps([3]), []),
    (json.dumps([["QDQPropagationTransformer"], {"a": 1}]), []),  # unhashable entries: ignored, not a crash
])
def test_only_allowed_optimizers_are_read_from_a_hint(value, expected):
    assert disabled_optimizers({DISABLED_OPTIMIZERS_KEY: value}) == expected
    assert disabled_optimizers({}) == []


def _pool_input_producer(session_bytes: bytes, tmp_path, hinted: bool) -> str:
    """The op that feeds the first MaxPool of the graph ORT optimised (saved by ORT itself)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"optimized-{hinted}.onnx")
    options.log_severity_level = 3
    inference_session(session_bytes, options)
    graph = onnx.load(options.optimized_model_filepath).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    pool = next(n for n in graph.node if "MaxPool" in n.op_type)
    return producers.get(pool.input[0], "graph input")


def test_a_hinted_graph_keeps_its_pooling_in_fp32(inputs, tmp_path):
    """ORT's QDQ propagation moves the quantization of an fp32 convolution's output above the MaxPool (the
    pooling then runs on uint8 in a slow generic kernel); the hint turns that move off, the predictions stay."""
    fp32, calibration_x, check_x, _ = inputs
    plain = _first_conv_in_fp32(fp32, calibration_x, tmp_path)
    hinted = with_hint(plain, SESSION_HINT)
    assert _pool_input_producer(plain, tmp_path, False) == "QuantizeLinear"
    assert _pool_input_producer(hinted, tmp_path, True) != "QuantizeLinear"
    got = [inference_session(g).run(None, {"input": check_x})[0] for g in (plain, hinted)]
    np.testing.assert_allclose(got[0], got[1], atol=1e-4)
    assert not _read(with_hint(hinted, ()))[1] and _read(hinted)[1]


def test_a_pool_moved_before_its_relu_needs_no_hint(inputs, tmp_path):
    """The same graph with each Relu -> MaxPool as MaxPool -> Relu (`pool_before_relu`, what the search
    quantizes with an fp32 layer): a plain session keeps the pooling in fp32, and the predictions are the same."""
    from compress.int8_search import _quantize_hinted
    from compress.layout import pool_before_relu

    fp32, calibration_x, check_x, _ = inputs
    plain = _first_conv_in_fp32(fp32, calibration_x, tmp_path)
    swapped = pool_before_relu(plain)
    assert _pool_input_producer(swapped, tmp_path, False) != "QuantizeLinear"
    got = [inference_session(g).run(None, {"input": check_x})[0] for g in (with_hint(plain, SESSION_HINT), swapped)]
    np.testing.assert_array_equal(got[0], got[1])
    ops = [n.op_type for n in _read(swapped)[0]]
    assert ops.index("MaxPool") + 1 == ops.index("Relu")
    first = search.compute_nodes(tmp_path / "fp32.onnx")[0]
    graph, hint = _quantize_hinted(tmp_path / "fp32.onnx", search.Int8Config(), calibration_x, [first], tmp_path)
    assert hint == SESSION_HINT and _pool_input_producer(with_hint(graph, ()), tmp_path, False) != "QuantizeLinear"


def _read(graph: bytes):
    """(the graph's nodes, whether it carries the session hint)."""
    proto = onnx.load_from_string(graph)
    return proto.graph.node, bool(disabled_optimizers({p.key: p.value for p in proto.metadata_props}))


def _fp32_weights(node) -> bool:
    """A Conv/Gemm left in fp32 by the quantizer: its weight is not a DequantizeLinear output."""
    return not any(i.endswith("DequantizeLinear_Output") for i in node.input[1:2])


def _fake_latency(slow_first: bool):
    """Interleaved latency read from the graph: the first convolution costs 0.5 (fp32 ONNX = 1) in int8 and 0.1 in
    fp32 when `slow_first`, else 0.1 either way; every other layer costs 0.1 in int8 and 0.3 in fp32; a graph
    with an fp32 layer and without the session hint costs 1 more (ORT's slow pooling)."""

    def latency(graphs, reference, x, rounds=5, reps=3):
        out = []
        for graph in graphs:
            nodes, hinted = _read(graph)
            weights_fp32 = {n.name for n in nodes if n.op_type in ("Conv", "Gemm") and _fp32_weights(n)}
            first = next(n.name for n in nodes if n.op_type in ("Conv", "QLinearConv"))
            cost = 0.0
            for n in nodes:
                if n.op_type in ("Conv", "Gemm"):
                    int8 = n.name not in weights_fp32
                    cost += (0.5 if int8 and slow_first else 0.1) if n.name == first else (0.1 if int8 else 0.3)
            out.append(cost + (1.0 if weights_fp32 and not hinted else 0.0))
        return out if rounds else [None] * len(graphs)

    return latency


def test_the_search_moves_a_layer_to_fp32_where_that_is_faster(inputs, monkeypatch):
    fp32, calibration_x, check_x, reference = inputs
    monkeypatch.setattr(search, "interleaved_latency", _fake_latency(slow_first=True))
    found = search_int8(fp32, calibration_x, check_x, reference, 0.0, **ONE)
    assert found.best.fp32_nodes == ["/features/features.0/Conv"] and found.best.hint == SESSION_HINT
    assert found.best.latency_ratio == pytest.approx(0.1 + 3 * 0.1)
    assert any("for speed" in note for note in found.notes)
    meta = {p.key: p.value for p in onnx.load_from_string(found.best.onnx_bytes).metadata_props}
    assert disabled_optimizers(meta) == list(SESSION_HINT)
    speed_rows = [r for r in found.rows if r.get("disabled_optimizers")]
    assert len(speed_rows) >= 2  # each convolution was tried in fp32, the Gemms not (int8 ones were faster)
    assert all(r["fp32_nodes"][-1].endswith("Conv") for r in speed_rows)


def test_no_layer_moves_to_fp32_without_a_gain(inputs, monkeypatch):
    fp32, calibration_x, check_x, reference = inputs
    monkeypatch.setattr(search, "interleaved_latency", _fake_latency(slow_first=False))
    found = search_int8(fp32, calibration_x, check_x, reference, 0.0, **ONE)
    assert found.best.fp32_nodes == [] and found.best.hint == ()
    assert not any("for speed" in note for note in found.notes)


def test_a_speed_move_must_keep_the_agreement_target(inputs, monkeypatch):
    """A target no graph reaches: the speed step (which starts from a graph reaching it) never runs."""
    fp32, calibration_x, check_x, reference = inputs
    monkeypatch.setattr(search, "interleaved_latency", _fake_latency(slow_first=True))
    monkeypatch.setattr(search, "_agreement", lambda graph, x, ref: 0.5)
    found = search_int8(fp32, calibration_x, check_x, reference, 0.9, fallback_configs=0, **ONE)
    assert found.best.fp32_nodes == [] and not any("for speed" in note for note in found.notes)


def test_the_hint_travels_with_the_saved_variant(cnn, digits, monkeypatch, tmp_path):
    """int8-static records the hint, and the saved artifact's session (what predict and the timing use) applies it."""
    from compress import get_method

    monkeypatch.setattr(search, "interleaved_latency", _fake_latency(slow_first=True))
    [variant] = get_method("int8-static", "cnn").func(cnn, digits, lean=False, fast=False, **ONE)
    assert variant.recipe["ort_disabled_optimizers"] == list(SESSION_HINT)
    save_model(variant.model, tmp_path / "v")
    loaded = load_model(tmp_path / "v")
    session = loaded.onnx_session()
    assert disabled_optimizers(session.get_modelmeta().custom_metadata_map) == list(SESSION_HINT)
    np.testing.assert_allclose(predict(loaded, digits.x_test[:64]), predict(variant.model, digits.x_test[:64]),
                               atol=1e-5)


def test_version_3_compress_results_are_still_read():
    """Version 4 added the int8 search rows' `disabled_optimizers`; a version 3 file reads as version 3, and a
    version 3 file that has the field is refused in one line."""
    from fake_runs import before_version_6, compress_result

    from trainers.errors import ToolkitError
    from trainers.schema import CompressResultFileV3, CompressResultFileV5, parse_result

    row = {"format": "qdq", "calibration": "minmax", "per_channel": True, "optimize": True, "fp32_nodes": ["conv"],
           "agreement": 1.0, "latency_ratio": 0.5, "reached": True}
    current = {**before_version_6(compress_result().dump()), "schema_version": 5}
    current["variants"][0]["int8_search"] = [{**row, "disabled_optimizers": list(SESSION_HINT)}]
    assert parse_result(current, stage="compress").variants[0].int8_search[0].disabled_optimizers == list(SESSION_HINT)
    assert type(parse_result(current, stage="compress")) is CompressResultFileV5
    old = {**current, "schema_version": 3, "variants": [{**current["variants"][0], "int8_search": [row]}]}
    assert type(parse_result(old, stage="compress")) is CompressResultFileV3
    with pytest.raises(ToolkitError, match="disabled_optimizers"):
        parse_result({**old, "variants": current["variants"]}, stage="compress")


def test_the_speed_step_also_tries_a_1d_cnn_as_2d(monkeypatch):
    """A 1-D CNN's speed step tries each move on the graph with its 1-D convolutions as 2-D ones too (where an
    fp32 convolution runs in ORT's blocked kernels), and keeps that form where it is the faster."""
    import io

    import torch
    from torch import nn

    from compress.layout import lift_1d

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 16, 3, padding=1),
                           nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(16 * 10, 4)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, torch.randn(2, 1, 40), buffer, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    fp32 = buffer.getvalue()
    x = np.random.default_rng(0).standard_normal((300, 1, 40)).astype(np.float32)
    reference = inference_session(fp32).run(None, {"input": x[200:]})[0].argmax(1)

    def latency(graphs, reference_graph, x, rounds=5, reps=3):
        costs = []
        for graph in graphs:
            nodes, hinted = _read(graph)
            lifted = any("__lift" in o for n in nodes for o in n.output)
            first = next(n for n in nodes if n.op_type in ("Conv", "QLinearConv"))
            costs.append(((0.1 if lifted else 0.3) + (0.0 if hinted else 1.0)) if _fp32_weights(first) else 0.5)
        return costs if rounds else [None] * len(graphs)

    monkeypatch.setattr(search, "interleaved_latency", latency)
    found = search_int8(fp32, x[:200], x[200:], reference, 0.0, lifted=lift_1d(fp32), **ONE)
    first_conv = next(n.name for n in onnx.load_from_string(fp32).graph.node if n.op_type == "Conv")
    assert found.best.config.lift and found.best.fp32_nodes == [first_conv] and found.best.hint == SESSION_HINT
    assert any("as 2-D ones" in note for note in found.notes) and any(r["lift"] for r in found.rows)
    got = inference_session(found.best.onnx_bytes).run(None, {"input": x[200:]})[0]
    assert (got.argmax(1) == reference).mean() > 0.9
    without = search_int8(fp32, x[:200], x[200:], reference, 0.0, **ONE)  # no 2-D form given: the 1-D graph
    assert not without.best.config.lift and without.best.fp32_nodes


def test_the_hint_is_kept_only_where_it_is_faster_beyond_the_tie_band():
    from compress.int8_search import TIE_BAND, Candidate, Int8Config, pick

    def graph(latency, hint):
        return Candidate(Int8Config(), ["conv"], b"g", 1.0, latency, hint=SESSION_HINT if hint else ())

    hinted, plain = graph(0.50, True), graph(0.50 * (1 + TIE_BAND / 2), False)
    assert pick([hinted, plain], 0.99) is plain  # as fast within the band: ORT's defaults
    hinted, plain = graph(0.50, True), graph(0.50 * (1 + 2 * TIE_BAND), False)
    assert pick([hinted, plain], 0.99) is hinted


class _PublicOnly:
    """A session that exposes only ORT's public API (no `_sess` binding), counting its calls."""

    def __init__(self, session):
        self.session, self.calls = session, 0

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feed):
        self.calls += 1
        return self.session.run(names, feed)


def test_first_output_gives_the_public_calls_logits_by_either_path(inputs):
    fp32, calibration_x, check_x, _ = inputs
    session = inference_session(fp32)
    expected = session.run(None, {session.get_inputs()[0].name: check_x})[0]
    fast = first_output(session)
    for rows in (check_x, check_x[:1]):  # a batch and one row: the dynamic batch axis either way
        np.testing.assert_array_equal(fast(rows), expected[:len(rows)])
    public = _PublicOnly(session)
    np.testing.assert_array_equal(first_output(public)(check_x), expected)
    assert public.calls == 1  # no binding exposed: the public call serves
    with pytest.raises(Exception):  # the binding still refuses a wrong shape (ORT's own error)
        fast(calibration_x[..., :3])
