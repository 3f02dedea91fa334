"""The static int8 search: configurations, the fp32 fallback by latency per agreement, the tie rule, the record."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compress import get_method
from compress.export import export_onnx
from compress.int8_search import (FAST_GAIN, TIE_BAND, Candidate, Int8Config, fastest, interleaved_latency, lean, pick,
                                  search_int8)
from trainers import LoadedModel, TrainConfig, predict, train
from trainers.errors import ToolkitError
from trainers.schema import Int8SearchRow

ONE = {"formats": ("qdq",), "calibrations": ("minmax",), "per_channel": (True,), "optimize": (True,)}


@pytest.fixture(scope="module")
def mlp(digits):
    return train(digits, "mlp", TrainConfig(epochs=3, model={"hidden": [32, 16]}, device="cpu"), progress=False).model


def _fragile(model) -> LoadedModel:
    """Classes 0 and 1 nearly tied (class 1's head row is class 0's plus a tiny perturbation, both scaled up):
    int8 noise flips many of those predictions."""
    module = copy.deepcopy(model.module)
    torch.manual_seed(0)
    with torch.no_grad():
        module.head.weight[1] = module.head.weight[0] + 1e-3 * torch.randn_like(module.head.weight[0])
        module.head.bias[1] = module.head.bias[0]
        module.head.weight[:2] *= 5.0
        module.head.bias[:2] += 50.0
    return LoadedModel(module=module, spec=model.spec, path=model.path)


def _inputs(model, digits):
    fp32 = export_onnx(model, digits)
    check_x = np.ascontiguousarray(digits.x_val, np.float32)
    return fp32, np.ascontiguousarray(digits.x_train[:256], np.float32), check_x, predict(model.module, check_x).argmax(1)


def _candidate(agreement, latency, rank=0, fp32_nodes=(), size=0):
    return Candidate(Int8Config(rank=rank), list(fp32_nodes), b"x" * size, agreement, latency)


def test_pick_prefers_agreement_within_the_tie_band_and_speed_beyond_it():
    fast, close = _candidate(0.995, 0.40, rank=0), _candidate(0.999, 0.40 * (1 + TIE_BAND) * 0.99, rank=1)
    assert pick([fast, close], 0.99) is close  # within 15%: higher agreement wins
    far = _candidate(0.999, 0.40 * (1 + TIE_BAND) * 1.05, rank=1)
    assert pick([fast, far], 0.99) is fast  # beyond 15%: the faster one
    missed = _candidate(0.9, 0.10, rank=2)
    assert pick([fast, close, _candidate(0.98, 0.05)], 0.99) is close  # under the target never wins on speed
    assert pick([_candidate(0.95, 0.3), _candidate(0.97, 0.9)], 0.99).agreement == 0.97  # none reaches: most faithful
    # equal agreement and speed within the band: the grid's order decides, not timing noise
    assert pick([_candidate(1.0, 0.41, rank=3), _candidate(1.0, 0.40, rank=1), missed], 0.99).config.rank == 1


def test_lean_is_the_smallest_graph_within_the_tie_band():
    chosen = _candidate(0.999, 0.40, rank=0, fp32_nodes=("a", "b"), size=1000)
    one = _candidate(0.995, 0.40 * (1 + TIE_BAND) * 0.99, rank=1, fp32_nodes=("a",), size=700)
    none = _candidate(0.993, 0.41, rank=2, size=400)
    assert lean([chosen, one, none], chosen, 0.99) is none  # the smallest, within the band, reaching the target
    slow = _candidate(0.995, 0.40 * (1 + TIE_BAND) * 1.05, rank=2, size=400)
    assert lean([chosen, one, slow], chosen, 0.99) is one  # beyond the band: not as fast
    assert lean([chosen, one, _candidate(0.98, 0.30, size=400)], chosen, 0.99) is one  # under the target: never
    assert lean([chosen, _candidate(1.0, 0.40, rank=1, size=950)], chosen, 0.99) is None  # under 10% smaller
    assert lean([chosen, _candidate(1.0, 0.40, rank=1, size=1200)], chosen, 0.99) is None  # fewer fp32, larger
    untimed = _candidate(0.999, None, fp32_nodes=("a",), size=1000)
    assert lean([untimed, _candidate(0.995, None, size=400)], untimed, 0.99) is None  # untimed: no band


def test_fastest_is_offered_only_where_the_tie_band_chose_a_slower_graph():
    chosen = _candidate(0.999, 0.40, rank=0, size=1000)
    quick = _candidate(0.995, 0.40 * (1 - FAST_GAIN) * 0.98, rank=1, size=1100)
    assert pick([chosen, quick], 0.99) is chosen  # the band prefers agreement...
    assert fastest([chosen, quick], chosen, 0.99) is quick  # ...and the faster one is kept beside it
    barely = _candidate(0.995, 0.40 * (1 - FAST_GAIN) * 1.01, rank=1)
    assert fastest([chosen, barely], chosen, 0.99) is None  # under 5% faster: timing noise, not offered
    assert fastest([chosen, _candidate(0.98, 0.20, rank=2)], chosen, 0.99) is None  # under the target: never
    assert fastest([chosen, quick], quick, 0.99) is None  # the choice is the fastest already
    assert fastest([chosen, quick], chosen, 0.99, leaner=quick) is None  # offered already as the lean twin
    untimed = _candidate(0.999, None)
    assert fastest([untimed, _candidate(0.995, None)], untimed, 0.99) is None


def test_int8_static_offers_the_search_s_fastest_graph_as_another_variant(mlp, digits, monkeypatch):
    import compress.quantize as quantize

    real = quantize.search_int8

    def with_fastest(fp32, calibration_x, check_x, reference, target, **kw):
        found = real(fp32, calibration_x, check_x, reference, 1.0, **kw)  # the fragile model: a layer back in fp32
        found.fastest = real(fp32, calibration_x, check_x, reference, 0.0, **kw).best  # all int8
        found.fastest.latency_ratio = 0.5 * (found.best.latency_ratio or 1.0)
        return found

    monkeypatch.setattr(quantize, "search_int8", with_fastest)
    fragile = _fragile(mlp)
    variants = get_method("int8-static", "mlp").func(fragile, digits, latency_rounds=1, lean=False, **ONE)
    assert [v.name for v in variants] == ["int8-static-onnx", "int8-static-fast-onnx"]
    first, second = variants
    assert second.recipe["fast"] is True and "fast" not in first.recipe and not second.recipe["fp32_nodes"]
    assert second.onnx_bytes != first.onnx_bytes and any("the search's fastest" in n for n in second.notes)
    assert [v.name for v in get_method("int8-static", "mlp").func(fragile, digits, latency_rounds=1, lean=False,
                                                                  fast=False, **ONE)] == ["int8-static-onnx"]


def test_int8_static_offers_the_lean_graph_as_a_second_variant(mlp, digits, monkeypatch):
    """Where the search has an equally fast, smaller graph, int8-static returns it as well, named and recorded
    as such; `lean=False` returns the choice alone."""
    import compress.quantize as quantize
    from compress.measure import size_on_disk

    real = quantize.search_int8

    def with_lean(fp32, calibration_x, check_x, reference, target, **kw):
        found = real(fp32, calibration_x, check_x, reference, 1.0, **kw)  # the fragile model: a layer back in fp32
        found.lean = real(fp32, calibration_x, check_x, reference, 0.0, **kw).best  # all int8
        return found

    monkeypatch.setattr(quantize, "search_int8", with_lean)
    fragile = _fragile(mlp)
    first, second = get_method("int8-static", "mlp").func(fragile, digits, latency_rounds=1, fast=False, **ONE)
    assert (first.name, second.name) == ("int8-static-onnx", "int8-static-lean-onnx")
    assert first.recipe["fp32_nodes"] and not second.recipe["fp32_nodes"] and second.recipe["lean"] is True
    assert second.onnx_bytes != first.onnx_bytes and second.measurements["agreement_check"]["agreement"] < 1.0
    assert second.measurements["agreement_check"]["fp32_nodes"] == []
    # the sizes quoted are the files as they ship (with their metadata), as each row's size_bytes
    sizes = f"lean choice, {size_on_disk(second):,} bytes and 0 layer(s) in fp32, against {size_on_disk(first):,} and"
    assert any(sizes in note for note in second.notes), second.notes
    assert [v.name for v in get_method("int8-static", "mlp").func(fragile, digits, latency_rounds=1, lean=False,
                                                                  fast=False, **ONE)] == ["int8-static-onnx"]


def test_search_meets_the_target_and_records_every_configuration(mlp, digits):
    fp32, calibration, check_x, reference = _inputs(mlp, digits)
    found = search_int8(fp32, calibration, check_x, reference, 0.99, formats=("qdq", "qoperator"),
                        calibrations=("minmax",), per_channel=(True, False), optimize=(True,), rounds=3)
    assert len(found.rows) >= 4 and {(r["format"], r["per_channel"]) for r in found.rows} == {
        ("qdq", True), ("qdq", False), ("qoperator", True), ("qoperator", False)}
    best = found.best
    assert best.agreement >= 0.99 and best.latency_ratio > 0
    got = (predict_onnx(best.onnx_bytes, check_x) == reference).mean()
    assert got == pytest.approx(best.agreement)  # the figure recorded is the graph's
    for row in found.rows:
        Int8SearchRow.model_validate(row)  # the variant's record accepts every row
        assert row["reached"] == (row["agreement"] >= 0.99)


def predict_onnx(onnx_bytes, x):
    from compress.export import run_onnx

    return run_onnx(onnx_bytes, x).argmax(1)


def test_fp32_fallback_layers_reduce_disagreement(mlp, digits):
    fragile = _fragile(mlp)
    fp32, calibration, check_x, reference = _inputs(fragile, digits)
    found = search_int8(fp32, calibration, check_x, reference, 1.0, rounds=2, **ONE)
    start = next(r for r in found.rows if not r["fp32_nodes"])
    assert start["agreement"] < 1.0  # the fragile model does flip under int8
    fallback = [r for r in found.rows if r["fp32_nodes"]]
    assert fallback, "no layer was moved to fp32"
    assert all(r["agreement"] > start["agreement"] for r in fallback)
    assert found.best.agreement > start["agreement"] and len(found.best.fp32_nodes) < found.fp32_nodes_total
    chain = [r["agreement"] for r in fallback]
    assert chain == sorted(chain)  # every greedy step raised agreement


def test_int8_static_records_the_chosen_configuration(mlp, digits):
    (variant,) = get_method("int8-static", "mlp").func(mlp, digits, calibrations=("minmax",), per_channel=(True, False),
                                                      formats=("qdq",), latency_rounds=2, lean=False, fast=False)
    recipe, rows = variant.recipe, variant.measurements["int8_search"]
    assert recipe["format"] == "QDQ" and recipe["calibration"] == "minmax" and recipe["graph_optimization"] is True
    chosen = [r for r in rows if r["per_channel"] == recipe["per_channel"] and r["fp32_nodes"] == recipe["fp32_nodes"]]
    assert chosen and variant.measurements["agreement_check"]["agreement"] == chosen[-1]["agreement"]
    assert any(note.startswith("int8 search: 2 configuration(s)") for note in variant.notes)


def test_search_is_deterministic_for_a_seed(mlp, digits):
    func = get_method("int8-static", "mlp").func
    first, second = (func(mlp, digits, seed=3, latency_rounds=2, **ONE)[0] for _ in range(2))
    assert first.onnx_bytes == second.onnx_bytes
    assert first.measurements["agreement_check"] == second.measurements["agreement_check"]
    # untimed, over a grid: the same configuration every time
    grid = {"formats": ("qdq", "qoperator"), "calibrations": ("minmax",), "per_channel": (True, False)}
    untimed = [func(mlp, digits, seed=3, latency_rounds=0, **grid)[0] for _ in range(2)]
    assert untimed[0].recipe == untimed[1].recipe and untimed[0].onnx_bytes == untimed[1].onnx_bytes
    assert all(r["latency_ratio"] is None for r in untimed[0].measurements["int8_search"])


def test_interleaved_latency_of_a_graph_against_itself_is_near_one(mlp, digits):
    fp32 = export_onnx(mlp, digits)
    x = np.ascontiguousarray(np.resize(digits.x_val, (64, *digits.x_val.shape[1:])), np.float32)
    [ratio] = interleaved_latency([fp32], fp32, x, rounds=5)
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("options, match", [({"formats": ()}, "at least one value"),
                                            ({"calibrations": ("kmeans",)}, "calibrations"),
                                            ({"latency_rounds": -1}, "latency_rounds")])
def test_bad_search_options_are_refused_in_one_line(options, match, mlp, digits):
    with pytest.raises(ToolkitError, match=match) as error:
        get_method("int8-static", "mlp").func(mlp, digits, **options)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- the logits in float

def _graph(model, digits, fmt: str) -> bytes:
    import tempfile
    from pathlib import Path

    from compress.int8_search import _quantize

    fp32, calibration, _, _ = _inputs(model, digits)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(fp32)
        return _quantize(Path(tmp) / "fp32.onnx", Int8Config(fmt), calibration, [], Path(tmp))


def test_float_logits_runs_the_last_layer_in_int8_with_a_float_output(mlp, digits, tmp_path):
    import onnx
    import onnxruntime as ort

    from compress.export import run_onnx
    from compress.int8_search import float_logits

    rounded = _graph(mlp, digits, "qdq")
    graph = float_logits(rounded)
    nodes = onnx.load_from_string(graph).graph.node
    assert nodes[-1].op_type == "Gemm" and sum(n.op_type == "QuantizeLinear" for n in nodes) == sum(
        n.op_type == "QuantizeLinear" for n in onnx.load_from_string(rounded).graph.node) - 1
    x = np.ascontiguousarray(digits.x_test, np.float32)
    want = predict(mlp.module, x)
    # closer to fp32 than the rounded logits: the 256 levels of the output are gone
    assert np.abs(run_onnx(graph, x) - want).max() < np.abs(run_onnx(rounded, x) - want).max()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    fused = [n for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node if n.op_type == "QGemm"]
    assert len(fused) == len([n for n in nodes if n.op_type == "Gemm"])  # every layer in ORT's int8 kernel
    assert len([i for i in fused[-1].input if i]) <= 7  # the last one without an output scale: float logits
    assert float_logits(_graph(mlp, digits, "qoperator")) is None  # a QLinear node's output: not rewritten


def test_a_float_logits_twin_reaching_the_target_needs_no_fp32_layer(mlp, digits):
    fragile = _fragile(mlp)
    fp32, calibration, check_x, reference = _inputs(fragile, digits)
    probe = search_int8(fp32, calibration, check_x, reference, 1.0, rounds=0, **ONE)
    rounded, twin = (next(r for r in probe.rows if r["float_logits"] is f and not r["fp32_nodes"]) for f in (False, True))
    assert twin["agreement"] > rounded["agreement"]  # the fragile model's near-ties flip on rounded logits
    target = (twin["agreement"] + rounded["agreement"]) / 2
    (variant,) = get_method("int8-static", "mlp").func(fragile, digits, min_agreement=target, latency_rounds=1, lean=False,
                                                      fast=False, **ONE)
    assert variant.recipe["logits"].startswith("float") and variant.recipe["fp32_nodes"] == []
    rows = variant.measurements["int8_search"]
    assert not any(r["fp32_nodes"] for r in rows)  # no fallback was needed
    for row in rows:
        Int8SearchRow.model_validate(row)


def test_version_4_compress_results_are_still_read():
    """Version 5 added the int8 search rows' `float_logits`; a version 4 file reads as version 4, and a version
    4 file that has the field is refused in one line."""
    from fake_runs import before_version_6, compress_result

    from trainers.schema import CompressResultFileV4, CompressResultFileV5, parse_result

    row = {"format": "qdq", "calibration": "minmax", "per_channel": True, "optimize": True, "fp32_nodes": [],
           "agreement": 1.0, "latency_ratio": 0.5, "reached": True, "disabled_optimizers": None, "lift": False}
    current = before_version_6(compress_result().dump())
    current["variants"][0]["int8_search"] = [{**row, "float_logits": True}]
    assert type(parse_result({**current, "schema_version": 5}, stage="compress")) is CompressResultFileV5
    old = {**current, "schema_version": 4, "variants": [{**current["variants"][0], "int8_search": [row]}]}
    assert type(parse_result(old, stage="compress")) is CompressResultFileV4
    with pytest.raises(ToolkitError, match="float_logits"):
        parse_result({**old, "variants": current["variants"]}, stage="compress")


@pytest.mark.parametrize("first, again, moves", [(0.93, 0.93, True),    # 7% faster in both races: it moves
                                                 (0.97, 0.97, False),   # 3%: under SPEED_GAIN
                                                 (0.93, 0.98, False)])  # the race of the two alone does not confirm
def test_the_speed_step_moves_a_layer_to_fp32_when_two_races_find_the_graph_faster(monkeypatch, first, again, moves):
    """A convolution moves to fp32 for speed when the graph gets SPEED_GAIN faster in the race of every move and
    again in a race of the best move against the graph before it (the 40-feature CNN's first convolution: 9-13%
    faster, which a 10% bar took in only some runs)."""
    import compress.int8_search as search

    start = _candidate(0.99, 0.27, fp32_nodes=(), size=10)
    trial = _candidate(0.99, None, fp32_nodes=("conv0",), size=12)
    monkeypatch.setattr(search, "compute_nodes", lambda graph, ops=None: ["conv0", "conv1", "head"])
    monkeypatch.setattr(search, "_one_more_in_fp32", lambda current, *a: [trial] if current is start else [])
    races = iter([[0.27 * first, 0.27], [0.27 * again, 0.27]])
    monkeypatch.setattr(search, "interleaved_latency", lambda graphs, *a: next(races, [1.0] * len(graphs)))
    end, steps = search._speed_fallback(start, lambda config: "graph", None, None, None, 0.98, b"fp32", None, 5, None)
    assert (end is trial) is moves and steps == [trial]


def _digits_graph(int8_weight: bool) -> bytes:
    """A one-layer digits graph (8x8 -> 64 -> 10); with `int8_weight` its weight is stored as int8 and dequantized, as
    every int8 variant's graph stores it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8_weight:
        nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"]),
                 helper.make_node("MatMul", ["flat", "w"], ["y"])]
        weights = [numpy_helper.from_array(rng.integers(-127, 128, (64, 10)).astype(np.int8), "wq"),
                   numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
                   numpy_helper.from_array(np.array(0, np.int8), "zero")]
    else:
        nodes = [helper.make_node("MatMul", ["flat", "w"], ["y"])]
        weights = [numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "w")]
    nodes.insert(0, helper.make_node("Flatten", ["x"], ["flat"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("method", ["int8-static", "int8-dynamic", "int8-weights"])
def test_an_already_quantized_graph_is_refused_in_one_line(digits, method):
    """ORT's quantizers crashed on a graph with QDQ nodes (duplicate node names, missing scales): quantizing an
    int8 graph again is refused, and auto lists those methods as skipped with the reason."""
    from compress import compress_model
    from compress.auto import already_quantized
    from trainers.usermodel import from_onnx

    quantized, fp32 = from_onnx(_digits_graph(True), digits), from_onnx(_digits_graph(False), digits)
    with pytest.raises(ToolkitError, match="already quantized") as error:
        compress_model(quantized, digits, methods=[method])
    assert "\n" not in str(error.value)
    assert method in {s["method"] for s in already_quantized(quantized)} and not already_quantized(fp32)
    assert get_method(method).supports(fp32)


@pytest.mark.parametrize("int8_weight", [True, False])
def test_auto_keeps_a_given_graph_over_its_resave_at_a_tie(digits, int8_weight):
    """`onnx-fp32` on a user's graph re-saves that graph: at 1.02x it is the graph as given again, within the tie
    band, and auto keeps the user's own (an int8 graph's re-save was chosen at 1.00x); clearly faster, it is
    chosen. A variant that is not the re-save, at the same speed, still is."""
    from compress.auto import LATENCY_TIE, baseline_variant, choose
    from compress.base import Variant
    from trainers.usermodel import from_onnx

    baseline = baseline_variant(from_onnx(_digits_graph(int8_weight), digits))

    def variant(method, speedup):
        return Variant(method, None, {"method": method}, measurements={
            "within_budget": True, "slower_than_fp32": False, "flips": False, "size_bytes": 100, "accuracy": 0.9,
            "accuracy_drop": 0.0, "size_ratio": 1.0, "speedup": {"b256_t1": speedup, "b1_t1": speedup},
            "latency_ms": {"b256_t1": {"p50": 1 / speedup}}})

    chosen, reason = choose(baseline, [variant("onnx-fp32", 1.02)], 0.5)
    assert chosen is baseline and "onnx-fp32 excluded: the given graph re-saved, 1.02x" in reason
    faster = variant("onnx-fp32", 1.05 + LATENCY_TIE)
    assert choose(baseline, [faster], 0.5)[0] is faster
    other = variant("int8-dynamic", 1.02)
    assert choose(baseline, [variant("onnx-fp32", 1.02), other], 0.5)[0] is other


def test_auto_keeps_a_given_graph_over_its_resave_on_a_noisy_timing(digits):
    """A re-save's speed-up over the tie band on a timing flagged too noisy is no gain: a random forest's re-save
    was chosen at "1.10x" while the reason called the timing "too noisy for a speed-up"."""
    from compress.auto import LATENCY_TIE, baseline_variant, choose
    from compress.base import Variant
    from trainers.usermodel import from_onnx

    baseline = baseline_variant(from_onnx(_digits_graph(False), digits))
    speedup = 1.05 + LATENCY_TIE
    noisy = Variant("onnx-fp32", None, {"method": "onnx-fp32"}, measurements={
        "within_budget": True, "slower_than_fp32": False, "flips": False, "size_bytes": 100, "accuracy": 0.9,
        "accuracy_drop": 0.0, "size_ratio": 1.0, "speedup": {"b256_t1": speedup, "b1_t1": speedup},
        "speedup_spread": {"b256_t1": 0.29}, "noisy": ["b256_t1"], "latency_ms": {"b256_t1": {"p50": 1 / speedup}}})
    chosen, reason = choose(baseline, [noisy], 0.5)
    assert chosen is baseline and "onnx-fp32 excluded: the given graph re-saved" in reason and "noisy" in reason
    noisy.measurements["noisy"] = ["b1_t1"]   # noisy at the other batch size only: the gain at 256 stands
    assert choose(baseline, [noisy], 0.5)[0] is noisy


def _user_graph(nodes, weights, opsets) -> bytes:
    """A digits graph (x: n,1,8,8 -> y: n,10) of `nodes`, importing `opsets` as its file lists them."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["flat"]), *nodes], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model.SerializeToString()


SKL2ONNX_OPSETS = [("ai.onnx.ml", 1), ("", 17), ("", 17)]  # skl2onnx lists the default domain twice


def test_int8_dynamic_quantizes_a_graph_listing_its_opset_twice(digits):
    """skl2onnx writes `('', 17)` twice in opset_import: ONNX Runtime runs such a graph, its quantizer raised
    "Failed to find proper ai.onnx domain" (an unexpected error, exit 1). The copy quantized lists each domain
    once."""
    from onnx import helper, numpy_helper
    from trainers.usermodel import from_onnx

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w")
    model = from_onnx(_user_graph([helper.make_node("MatMul", ["flat", "w"], ["y"])], [w], SKL2ONNX_OPSETS), digits)
    (variant,) = get_method("int8-dynamic").func(model, digits, min_agreement=0.0)
    assert any(n.op_type == "MatMulInteger" for n in _nodes(variant.onnx_bytes))


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_int8_on_a_graph_with_nothing_to_quantize_is_one_line(digits, method):
    """A scikit-learn linear model or forest exported by skl2onnx has no MatMul, Gemm or Conv (ai.onnx.ml ops):
    the named int8 methods say there is nothing to quantize in one line (exit 2), as int8-weights does."""
    from onnx import helper, numpy_helper
    from compress import compress_model
    from trainers.usermodel import from_onnx

    bounds = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 10), ("a", 1))]
    graph = _user_graph([helper.make_node("Slice", ["flat", "s", "e", "a"], ["y"])], bounds, SKL2ONNX_OPSETS)
    with pytest.raises(ToolkitError, match=f"'{method}': nothing to quantize, the graph has no .*Slice") as error:
        compress_model(from_onnx(graph, digits), digits, methods=[method])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_int8_on_a_graph_optimised_by_onnx_runtime_is_one_line(digits, method):
    """A graph saved by ORT's offline optimiser holds com.microsoft FusedGemm/FusedConv, on which ORT's quantizers
    crashed (RuntimeError, ValueError: exit 1): refused in one line naming the fused ops."""
    from onnx import helper, numpy_helper
    from compress import compress_model
    from trainers.usermodel import from_onnx

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
               for n, s in (("w1", (64, 32)), ("b1", (32,)), ("w2", (32, 10)), ("b2", (10,)))]
    nodes = [helper.make_node("FusedGemm", ["flat", "w1", "b1"], ["h"], domain="com.microsoft", activation="Relu"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"])]
    model = from_onnx(_user_graph(nodes, weights, [("", 17), ("com.microsoft", 1)]), digits)
    with pytest.raises(ToolkitError, match="fused ops \\(com.microsoft FusedGemm\\).*int8-weights") as error:
        compress_model(model, digits, methods=[method])
    assert "\n" not in str(error.value)


def test_a_named_method_failing_on_a_users_graph_is_one_line(digits, stand_in):
    """A failure no check foresees on a user's graph is one line under a named method too, as auto lists it
    ("failed on this model"), never an unexpected error."""
    from compress import compress_model
    from trainers.usermodel import from_onnx

    def method(model, data):
        """A stand-in for ORT's quantizer on a graph it cannot read."""
        raise ValueError("Failed to find proper ai.onnx domain\nmore")

    stand_in("test-crash", role="runtime", func=method)
    with pytest.raises(ToolkitError, match="'test-crash' failed on this model \\(ValueError: Failed to find proper "
                                           "ai.onnx domain\\)$"):
        compress_model(from_onnx(_digits_graph(False), digits), digits, methods=["test-crash"])


def _nodes(onnx_bytes: bytes) -> list:
    import onnx

    return list(onnx.load_from_string(onnx_bytes).graph.node)
