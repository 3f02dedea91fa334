"""A variant that routes calls by batch size (auto's `by_batch`): one artifact, two models, each serving the
batch sizes it is faster at. Made, measured, saved, loaded, checked and predicted with as every variant is."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from compress.auto import BY_BATCH_GAIN, CUT_SIZES, route_by_batch
from compress.base import get_method
from compress.measure import LatencyConfig, Runner, measure_all
from trainers.artifact import SMALL_BATCH_DIR, load_model, predict, save_model
from trainers.errors import ArtifactError


@pytest.fixture(scope="module")
def mlp(digits, tmp_path_factory):
    """A digits MLP wide enough that file headers do not dominate its sizes (hidden 256, 128; one epoch)."""
    from trainers import TrainConfig, train

    out = tmp_path_factory.mktemp("mlp") / "model"
    train(digits, "mlp", TrainConfig(epochs=1, device="cpu", model={"hidden": [256, 128]}), out=out, progress=False)
    return load_model(out)


@pytest.fixture(scope="module")
def measured(digits, mlp):
    """The MLP's fp32 original, its bf16 PyTorch and int8-weights ONNX variants, measured together (each
    under half the original's size: routed, the two are still smaller)."""
    from compress.auto import baseline_variant

    model = mlp
    baseline = baseline_variant(model)
    bf16 = get_method("bf16", model).func(model, digits)[0]
    onnx = get_method("int8-weights", model).func(model, digits)[0]
    measure_all([bf16, onnx], baseline, digits, max_drop=5.0, config=LatencyConfig(budget_s=0.02))
    baseline.measurements["_classes"] = predict(model, digits.x_test).argmax(1)
    return model, baseline, bf16, onnx


def _set_p50(variant, setting: str, ms: float) -> None:
    variant.measurements["latency_ms"][setting]["p50"] = ms


def _route(measured, digits, b1_gain: float):
    """bf16 chosen at batch 256, fp32 ONNX `b1_gain` times faster at batch 1 (latencies set, not timed)."""
    model, baseline, bf16, onnx = measured
    _set_p50(bf16, "b1_t1", 1.0 * b1_gain)
    _set_p50(onnx, "b1_t1", 1.0)
    for v in (bf16, onnx):
        v.measurements.update(within_budget=True, slower_than_fp32=False, flips=False)
    variants = [bf16, onnx]
    found = route_by_batch(model, digits, bf16, variants, baseline, max_drop=5.0, min_agreement=0.9,
                           config=LatencyConfig(budget_s=0.02))
    return found[0] if found else None


def _route_reason(measured, digits) -> str:
    model, baseline, bf16, onnx = measured
    return route_by_batch(model, digits, bf16, [bf16, onnx], baseline, max_drop=5.0, min_agreement=0.9,
                          config=LatencyConfig(budget_s=0.02))[1]


def test_a_variant_much_faster_at_batch_1_serves_the_small_batches(measured, digits):
    model, baseline, bf16, onnx = measured
    routed = _route(measured, digits, b1_gain=3.0)
    assert routed is not None and routed.small.name == onnx.name
    below = routed.model.spec.serve["below_batch"]
    assert below in (*CUT_SIZES, 256) and routed.recipe["below_batch"] == below
    m = routed.measurements
    # its timings are its members' (a routed call is the member's call after a length test) ...
    assert m["rounds_ms"]["b1_t1"] == onnx.measurements["rounds_ms"]["b1_t1"]
    assert m["rounds_ms"]["b256_t1"] == bf16.measurements["rounds_ms"]["b256_t1"]
    # ... its size counts both files, and its fidelity is measured as it serves
    assert m["size_bytes"] == bf16.measurements["size_bytes"] + onnx.measurements["size_bytes"]
    assert m["size_ratio"] < min(bf16.measurements["size_ratio"], onnx.measurements["size_ratio"])
    assert m["fidelity"]["n"] == len(digits.y_test) and m["within_budget"] and not m["flips"]
    reason = _route_reason(measured, digits)
    assert "below: " in reason and "with both files" in reason and "as it serves" in reason
    assert routed.recipe["large"] == bf16.recipe and routed.recipe["small"] == onnx.recipe
    # the runner routes: one row runs the ONNX member, many rows the bf16 model
    runner = Runner(routed, 1)
    x = np.ascontiguousarray(digits.x_test[:300], dtype=np.float32)
    np.testing.assert_array_equal(runner(x[:1]), Runner(onnx, 1)(x[:1]))
    np.testing.assert_array_equal(runner(x[:below]), Runner(bf16, 1)(x[:below]))
    # the timing's call routes at the same size, without conversions (bf16 stays a tensor)
    raw = runner.raw_call()
    np.testing.assert_array_equal(raw(x[:below - 1]), Runner(onnx, 1)(x[:below - 1]))
    assert raw(x[:below]).dtype == torch.bfloat16


def test_no_routing_inside_the_near_tie_or_for_the_original(measured, digits):
    model, baseline, bf16, onnx = measured
    assert _route(measured, digits, b1_gain=BY_BATCH_GAIN * 0.99) is None
    bf16.measurements["flips"] = True  # a variant that fails the rule never serves either side
    assert route_by_batch(model, digits, onnx, [bf16, onnx], baseline, max_drop=5.0, min_agreement=0.9,
                          config=LatencyConfig(budget_s=0.02)) is None


def test_a_routed_artifact_saves_loads_and_predicts_by_call_size(measured, digits, tmp_path):
    model, baseline, bf16, onnx = measured
    routed = _route(measured, digits, b1_gain=3.0)
    below = routed.model.spec.serve["below_batch"]
    out = save_model(routed.model, tmp_path / "routed", onnx_bytes=routed.onnx_bytes)
    assert (out / SMALL_BATCH_DIR / "model.json").is_file()
    loaded = load_model(out)
    assert loaded.small is not None and loaded.small.runtime == "onnxruntime" and loaded.spec.dtype == "bfloat16"
    x = np.ascontiguousarray(digits.x_test[:300], dtype=np.float32)
    one = predict(loaded, x[:1])
    np.testing.assert_allclose(one, Runner(onnx, 1)(x[:1]), rtol=1e-6)
    many = predict(loaded, x[:below], batch_size=below)
    np.testing.assert_array_equal(many, predict(bf16.model, x[:below], batch_size=below))
    # bf16 and fp32 logits differ in their low bits: each call size went to its own model
    assert not np.array_equal(predict(loaded, x[:1]), predict(bf16.model, x[:1]))


def test_a_tampered_or_misplaced_member_is_refused_in_one_line(measured, digits, tmp_path):
    model, baseline, bf16, onnx = measured
    routed = _route(measured, digits, b1_gain=3.0)
    out = save_model(routed.model, tmp_path / "routed", onnx_bytes=routed.onnx_bytes)
    member = out / SMALL_BATCH_DIR / "model.json"
    spec = json.loads(member.read_text())
    member.write_text(json.dumps({**spec, "class_names": list(reversed(spec["class_names"]))}))
    with pytest.raises(ArtifactError, match="checksum differs"):
        load_model(out)
    top = json.loads((out / "model.json").read_text())
    for serve, message in [({**top["serve"], "dir": "../elsewhere"}, "plain file name"),
                           ({**top["serve"], "below_batch": 1}, "below_batch must be a whole number"),
                           ({"below_batch": 8}, "must be an object with below_batch, dir and sha256")]:
        (out / "model.json").write_text(json.dumps({**top, "serve": serve}))
        with pytest.raises(ArtifactError, match=message) as info:
            load_model(out)
        assert "\n" not in str(info.value)


def test_the_choice_then_the_route_in_settle(measured, digits, monkeypatch):
    """`settle` with `by_batch` returns the routed variant, adds it to the variants and marks the Pareto front
    again; without it, the plain choice."""
    import compress.auto as auto

    model, baseline, bf16, onnx = measured
    _route(measured, digits, b1_gain=3.0)  # sets the latencies and flags
    monkeypatch.setattr(auto, "measure_all", lambda *a, **k: None)
    monkeypatch.setattr(auto, "choose", lambda baseline, variants, max_drop, batch=256, by_batch=False: (bf16, "fastest"))
    variants = [bf16, onnx]
    chosen, reason = auto.settle(model, digits, variants, baseline, max_drop=5.0, min_agreement=0.9,
                                 config=LatencyConfig(budget_s=0.02), notes=[], by_batch=True)
    assert chosen.small is not None and chosen in variants and reason.endswith("; fastest")
    assert all("pareto" in v.measurements for v in variants) and " below: " in reason
    plain, _ = auto.settle(model, digits, [bf16, onnx], baseline, max_drop=5.0, min_agreement=0.9,
                           config=LatencyConfig(budget_s=0.02), notes=[], by_batch=False)
    assert plain is bf16


def test_the_cli_writes_a_routed_choice_that_predict_report_and_explain_read(tmp_path, monkeypatch, capsys):
    """Through `toolkit compress` (in process, with any faster variant at batch 1 routed: the gain set to 0):
    the chosen routed variant is written with its member, result.json (schema 3) names it, and predict, explain
    and report run on the run directory; `--one-model` keeps one model."""
    import compress.auto as auto
    from cli.main import main
    from trainers.schema import read_result

    monkeypatch.setattr(auto, "BY_BATCH_GAIN", 0.0)
    assert main(["train", "digits", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "m"),
                 "--arch", '{"hidden": [256, 128]}']) == 0
    options = ('{"auto": {"prune_ratios": [0.5], "finetune_epochs": 1, "distill_epochs": 0, "unstructured_ratio": 0.0,'
               ' "latency_budget_s": 0.02, "drift_guard_on": false}}')
    assert main(["compress", str(tmp_path / "m"), "--data", "digits", "--options", options,
                 "--out", str(tmp_path / "c")]) == 0
    result = read_result(tmp_path / "c" / "result.json", "compress")
    assert result.schema_version == 8
    row = next(v for v in result.variants if v.name == result.chosen.name)
    assert row.serve is not None and row.serve.small in {v.name for v in result.variants}
    from compress.views import rows

    flat = {r["name"]: r for r in rows(result.dump())}
    assert flat[row.name]["small_batch"] == f"< {row.serve.below_batch} rows: {row.serve.small}"
    assert flat[row.serve.small]["small_batch"] is None
    assert (tmp_path / "c" / result.chosen.path / SMALL_BATCH_DIR / "model.json").is_file()
    np.savez(tmp_path / "rows.npz", x=_digits_rows())
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "c"), str(tmp_path / "rows.npz"), "--json"]) == 0
    printed = capsys.readouterr()
    assert '"rows": 5' in printed.out and f"calls under {row.serve.below_batch} rows" in printed.err
    assert main(["explain", str(tmp_path / "m"), "--data", "digits", "--method", "saliency", "--samples", "4",
                 "--compare", str(tmp_path / "c" / result.chosen.path), "--out", str(tmp_path / "e")]) == 0
    assert result.chosen.name in (tmp_path / "e" / "result.json").read_text()
    assert main(["report", str(tmp_path / "c"), "--out", str(tmp_path / "r.html")]) == 0
    assert f"calls under {row.serve.below_batch} rows: {row.serve.small_runtime} ({row.serve.small})" in \
        (tmp_path / "r.html").read_text()
    card = (tmp_path / "r.md").read_text()  # beside the report written outside the run
    front = card.split("---")[1]
    assert ("- onnx" in front) == ("onnxruntime" in (row.runtime, row.serve.small_runtime))
    assert main(["compress", str(tmp_path / "m"), "--data", "digits", "--options", options, "--one-model",
                 "--out", str(tmp_path / "c1")]) == 0
    one = read_result(tmp_path / "c1" / "result.json", "compress")
    assert all(v.serve is None for v in one.variants)


def _digits_rows() -> np.ndarray:
    from trainers import load_data

    return load_data("digits").x_test[:5].astype(np.float32)


def test_the_routed_reason_quotes_the_shipped_size_and_says_a_gain_as_one(measured, digits, monkeypatch):
    """What ships is both files: the reason gives their size only, not the large member's alone beside it; and an
    accuracy above the original's reads as "more accurate", not as a negative drop."""
    import compress.auto as auto

    model, baseline, bf16, onnx = measured
    _route(measured, digits, b1_gain=3.0)
    monkeypatch.setattr(auto, "measure_all", lambda *a, **k: None)
    monkeypatch.setitem(bf16.measurements, "accuracy_drop", -0.83)
    real = auto.choose
    monkeypatch.setattr(auto, "choose", lambda baseline, variants, *a, **k: real(baseline, [bf16], *a, **k))
    chosen, reason = auto.settle(model, digits, [bf16, onnx], baseline, max_drop=5.0, min_agreement=0.9,
                                 config=LatencyConfig(budget_s=0.02), notes=[], by_batch=True)
    assert chosen.small is not None and "0.83 points more accurate" in reason and "drop" not in reason
    sizes = [part for part in reason.split(", ") if part.endswith(("smaller", "larger", "with both files"))]
    assert sizes == [f"{auto.smaller(chosen.measurements['size_ratio'])} with both files"], reason


def test_by_batch_flags_are_auto_options(tmp_path, capsys):
    from cli.main import main
    from compress.checks import tiny_model

    code = main(["compress", str(tiny_model("mlp").path), "--data", "digits", "--method", "int8-static",
                 "--one-model", "--out", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--one-model is an option of auto" in err[0] and not (tmp_path / "c").exists()


def test_version_2_compress_results_are_still_read():
    """Version 3 added each row's `serve`; a version 2 file (without it) reads as version 2, and a version 2
    file that has it is refused in one line."""
    from fake_runs import before_version_6, compress_result
    from trainers.errors import ToolkitError
    from trainers.schema import CompressResultFileV2, parse_result

    current = compress_result().dump()
    assert current["schema_version"] == 8
    current = before_version_6(current)
    old = {**current, "schema_version": 2,
           "variants": [{k: v for k, v in row.items() if k != "serve"} for row in current["variants"]],
           "baseline": {k: v for k, v in current["baseline"].items() if k != "serve"}}
    read = parse_result(old, stage="compress")
    assert type(read) is CompressResultFileV2 and not any(hasattr(row, "serve") for row in read.variants)
    routed = {**old, "variants": [{**old["variants"][0], "serve": {"below_batch": 8, "small": "x",
                                                                  "small_runtime": "onnxruntime"}}]}
    with pytest.raises(ToolkitError, match="serve"):
        parse_result(routed, stage="compress")


def test_a_gain_the_full_timing_misread_is_not_routed(measured, digits):
    """The full timing's p50s say bf16 PyTorch is 3x the ONNX graph's speed at batch 1; a timing of the two
    alone says it is slower (PyTorch's per-call overhead): no routed variant, and the choice's notes say why."""
    model, baseline, bf16, onnx = measured
    for v in (bf16, onnx):
        v.measurements.update(within_budget=True, slower_than_fp32=False, flips=False)
    _set_p50(onnx, "b1_t1", 3.0)
    _set_p50(bf16, "b1_t1", 1.0)
    before = len(onnx.notes)
    routed = route_by_batch(model, digits, onnx, [bf16, onnx], baseline, max_drop=5.0, min_agreement=0.9,
                            config=LatencyConfig(budget_s=0.02))
    assert routed is None
    assert "in a longer one: not routed" in onnx.notes[before]


def test_no_route_whose_two_files_outweigh_the_original(measured, digits):
    model, baseline, bf16, onnx = measured
    size = onnx.measurements["size_bytes"]
    onnx.measurements["size_bytes"] = baseline.measurements["size_bytes"]  # as large as the original
    try:
        before = len(bf16.notes)
        assert _route(measured, digits, b1_gain=3.0) is None
        assert "the original's size: not made" in bf16.notes[before]
    finally:
        onnx.measurements["size_bytes"] = size


def test_of_two_partners_as_fast_the_smaller_file_serves(measured, digits):
    """An fp32 graph and its int8-weights twin run at the same speed: the smaller one serves batch 1. One
    clearly faster (beyond SAME_SPEED) still wins over a smaller one."""
    import copy

    from compress.auto import SAME_SPEED

    model, baseline, bf16, onnx = measured
    twin = copy.copy(onnx)
    twin.name, twin.measurements, twin.notes = "twin-fp32", copy.deepcopy(onnx.measurements), []
    twin.measurements["size_bytes"] = int(onnx.measurements["size_bytes"] * 1.5)  # routed with bf16: under the original
    for v in (bf16, onnx, twin):
        v.measurements.update(within_budget=True, slower_than_fp32=False, flips=False)
    _set_p50(bf16, "b1_t1", 3.0)
    _set_p50(onnx, "b1_t1", 1.0)
    for twin_ms, served in ((1.0 / (1 + SAME_SPEED / 2), onnx.name), (1.0 / (1 + 2 * SAME_SPEED), "twin-fp32")):
        _set_p50(twin, "b1_t1", twin_ms)
        found = route_by_batch(model, digits, bf16, [bf16, onnx, twin], baseline, max_drop=5.0, min_agreement=0.9,
                               config=LatencyConfig(budget_s=0.02))
        assert found is not None and found[0].small.name == served


def test_partners_hold_the_same_weights(measured, digits):
    """A much faster partner made from other weights (another pruning) is not routed: a row would get one answer
    alone and another in a large call. The same pruned model in two runtimes is."""
    import copy

    model, baseline, bf16, onnx = measured
    pruned = {"method": "prune-structured", "ratio": 0.5}
    other = copy.copy(onnx)
    other.name, other.measurements, other.notes = "prune-structured-50+int8-weights-onnx", copy.deepcopy(
        onnx.measurements), []
    other.recipe = {"method": "chain", "steps": [pruned, onnx.recipe]}
    for v in (bf16, other):
        v.measurements.update(within_budget=True, slower_than_fp32=False, flips=False)
    _set_p50(bf16, "b1_t1", 3.0)
    _set_p50(other, "b1_t1", 1.0)
    before = len(bf16.notes)
    assert route_by_batch(model, digits, bf16, [bf16, other], baseline, max_drop=5.0, min_agreement=0.9,
                          config=LatencyConfig(budget_s=0.02)) is None
    assert "holds other weights than this one: not routed" in bf16.notes[before]
    chosen = copy.copy(bf16)
    chosen.recipe, chosen.notes = {"method": "chain", "steps": [pruned, bf16.recipe]}, []
    found = route_by_batch(model, digits, chosen, [chosen, other], baseline, max_drop=5.0, min_agreement=0.9,
                           config=LatencyConfig(budget_s=0.02))
    assert found is not None and found[0].small.name == other.name


def test_a_file_is_served_by_the_member_for_its_batch_size_whatever_its_length(measured, digits, tmp_path):
    """The last, short call of a file runs the same member as the others: row 256 of a file of 257 rows gets
    the answer it gets in a file of 300 (it went to the small-batch member alone). Auto's note says how often
    the two members disagree on the test rows."""
    from trainers.inference import predict_table

    model, baseline, bf16, onnx = measured
    routed = _route(measured, digits, b1_gain=3.0)
    assert any(n.startswith("its two members give the same class on") and "test rows" in n for n in routed.notes)
    loaded = load_model(save_model(routed.model, tmp_path / "routed", onnx_bytes=routed.onnx_bytes))
    x = np.ascontiguousarray(digits.x_test[:300], dtype=np.float32)
    short, full = predict_table(loaded, x[:257], batch_size=256), predict_table(loaded, x, batch_size=256)
    pd.testing.assert_frame_equal(short, full.iloc[:257])
    np.testing.assert_array_equal(predict(loaded, x[:257], batch_size=256), predict(bf16.model, x[:257]))
    # a call size under the cut runs the member for every row
    np.testing.assert_allclose(predict(loaded, x[:3], batch_size=1), Runner(onnx, 1)(x[:3]), rtol=1e-6)
