"""Explain stage: the method registry and its capabilities, checked options, axioms on trained models, exact
Shapley on a linear model, the sanity check, int8 ONNX through black-box methods with drift, the stage's files,
CLI and bad input. The per-method contract (shapes, refusals, determinism, completeness) is in
test_explain_contract.py."""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import explain
from explain.compare import attribution_agreement, check_comparable
from explain.quality import assess, completeness_error, sanity_check
from explain.registry import default_methods, get_method, list_methods
from trainers import build_model, load_data, load_model, save_model, write_artifact
from trainers.artifact import LoadedModel, ModelSpec
from trainers.errors import ToolkitError

FAMILY_ARCH = {"mlp": {"hidden": [32], "dropout": 0.0},
               "cnn": {"channels": [8, 16], "hidden": [32], "dropout": 0.0},
               "lstm": {"hidden": [16], "dropout": 0.0}}


def quick_fit(bundle, family: str, arch: dict, steps: int = 100, seed: int = 0) -> LoadedModel:
    """A small model trained in a few seconds (Adam on mini-batches), wrapped as an artifact-ready model."""
    torch.manual_seed(seed)
    module = build_model(family, arch, bundle.input_shape, bundle.num_classes, bundle.mean, bundle.std)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    x, y = torch.as_tensor(bundle.x_train), torch.as_tensor(bundle.y_train)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(module(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    spec = ModelSpec(family=family, config=arch, input_shape=list(bundle.input_shape), layout=bundle.layout,
                     class_names=bundle.class_names, feature_names=bundle.feature_names,
                     preprocessing={"mean": bundle.mean.tolist(), "std": bundle.std.tolist()})
    return LoadedModel(module=module, spec=spec)


def onnx_bytes_of(module: torch.nn.Module, input_shape) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(module, torch.zeros(2, *input_shape), buf, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    return buf.getvalue()


def make_int8_onnx(model: LoadedModel, out: Path, twin: bool = False) -> Path:
    """An int8 ONNX artifact (ONNX Runtime dynamic quantization), optionally carrying a PyTorch twin."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    buf = io.BytesIO()
    torch.onnx.export(model.module, torch.zeros(2, *model.spec.input_shape), buf, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(buf.getvalue())
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        onnx_bytes = dst.read_bytes()
    spec = ModelSpec.from_dict({**model.spec.to_dict(), "runtime": "onnxruntime", "onnx": {"file": "model.onnx"}})
    out.mkdir(parents=True)
    write_artifact(out, model.module if twin else None, spec, onnx_bytes=onnx_bytes)
    return out


@pytest.fixture(scope="module")
def models(digits):
    return {family: quick_fit(digits, family, arch) for family, arch in FAMILY_ARCH.items()}


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-models")
    paths = {family: save_model(model, root / family) for family, model in models.items()}
    paths["mlp-int8"] = make_int8_onnx(load_model(paths["mlp"]), root / "mlp-int8")
    paths["mlp-int8-twin"] = make_int8_onnx(load_model(paths["mlp"]), root / "mlp-int8-twin", twin=True)
    iris = load_data("iris")
    paths["iris"] = save_model(quick_fit(iris, "mlp", {"hidden": [8]}, steps=20), root / "iris")
    return paths


# ---------------------------------------------------------------- the registry x the families


def test_registry_lists_the_builtin_methods():
    expected = {"integrated_gradients", "saliency", "deeplift", "gradient_shap", "occlusion", "feature_ablation",
                "shapley_sampling", "layer_gradcam", "shap_deep", "shap_gradient", "shap_kernel", "shapley"}
    assert expected <= set(list_methods())
    assert "layer_gradcam" in list_methods("cnn") and "layer_gradcam" not in list_methods("mlp")
    assert "shap_deep" not in list_methods("lstm") and "deeplift" not in list_methods("lstm")
    assert get_method("deeplift", "cnn").name == "deeplift"
    with pytest.raises(ToolkitError, match="cannot handle a lstm model: LSTM gates"):
        get_method("deeplift", "lstm")


def test_capabilities_drive_defaults_background_and_axioms():
    assert default_methods("mlp") == ("integrated_gradients", "deeplift", "shapley")
    assert default_methods("cnn") == ("integrated_gradients", "layer_gradcam", "shapley")
    assert default_methods("lstm") == ("integrated_gradients", "shapley")
    assert default_methods("another") == ("integrated_gradients", "shapley")   # a family registered later
    assert [m for m in list_methods() if get_method(m).needs_background] == ["gradient_shap", "shap_gradient"]
    deeplift = get_method("deeplift")
    assert deeplift.holds_axiom("mlp") and not deeplift.holds_axiom("cnn") and not deeplift.holds_axiom("lstm")
    assert get_method("shapley").holds_axiom("lstm") and not get_method("saliency").holds_axiom("mlp")
    assert get_method("shapley").capabilities()["runtimes"] == ("torch", "fake-quant", "onnx")


@pytest.mark.parametrize("options, message", [
    ({"n_steps": 0}, "n_steps: input should be greater than or equal to 1, got 0"),
    ({"n_steps": "many"}, "n_steps: input should be a valid integer"),
    ({"steps": 8}, "unknown option(s) for explain method 'integrated_gradients': steps; it takes n_steps"),
])
def test_options_are_checked_in_one_line(models, digits, options, message):
    with pytest.raises(ToolkitError) as caught:
        explain.attribute(models["mlp"], digits.x_test[:2], None, "integrated_gradients", **options)
    message = message if message.startswith("unknown") else f"explain method 'integrated_gradients': {message}"
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_background_methods_report_the_background_mean(models, digits):
    background = digits.x_train[:8]
    attr = explain.attribute(models["mlp"], digits.x_test[:2], None, "gradient_shap", background=background,
                             n_samples=4)
    np.testing.assert_allclose(attr.baseline, background.mean(0))


def test_integrated_gradients_completeness_and_delta(models, digits):
    x = digits.x_test[:16]
    for family, model in models.items():
        attr = explain.attribute(model, x, None, "integrated_gradients", n_steps=128)
        assert completeness_error(model, x, attr) < 0.01, family
        assert attr.delta is not None and attr.delta.shape == (16,)


def test_shapley_is_exact_on_a_linear_model(digits):
    linear = quick_fit(digits, "mlp", {"hidden": []}, steps=100)
    x = digits.x_test[:8]
    targets = np.arange(8) % 10
    std = np.broadcast_to(np.asarray(linear.spec.preprocessing["std"], np.float32), x.shape[1:]).reshape(-1)
    baseline = explain.methods.default_baseline(linear.spec).reshape(-1)
    weights = linear.module.head.weight.detach().numpy()
    exact = weights[targets] / std * (x.reshape(8, -1) - baseline)
    for method, options in (("shapley", {}), ("shapley_sampling", {"n_samples": 2}), ("shap_kernel", {"nsamples": 300})):
        attr = explain.attribute(linear, x, targets, method, **options)
        error = np.linalg.norm(attr.values.reshape(8, -1) - exact) / np.linalg.norm(exact)
        assert error < 1e-3, (method, error)


def test_sanity_check_separates_trained_from_reinitialised_on_all_families(models, digits):
    x = digits.x_test[:8]
    for family, model in models.items():
        attr = explain.attribute(model, x, None, "integrated_gradients")
        check = sanity_check(model, x, attr)
        assert check["spearman"] < 0.5, (family, check)
        again = sanity_check(model, x, attr, seed=1)
        assert abs(again["spearman"]) < 0.5


def test_quality_report_of_a_sampled_method(models, digits):
    x = digits.x_test[:12]
    model = models["mlp"]
    attr = explain.attribute(model, x, None, "shapley", n_permutations=16)
    q = assess(model, x, attr, n_permutations=16)
    assert q["axiom_holds"] and q["completeness_error"] < 1e-4
    assert q["flagged"] == (q["sanity"]["verdict"] not in ("separated", "inconclusive")) and q["sanity"]["reason"]
    seeds = explain.sanity.SEEDS
    assert len(q["sanity"]["seeds"]) == seeds and len(q["sanity"]["floor"]) == seeds * (seeds - 1) // 2
    assert q["empty_share"] == 0.0
    assert q["deletion_auc"] < q["insertion_auc"]
    assert q["infidelity"] >= 0 and 0.5 < q["noise_floor_topk"] <= 1.0
    assert any("noise floor" in v for v in q["verdicts"])
    saliency = assess(model, x, explain.attribute(model, x, None, "saliency"), sanity=False)
    assert not saliency["axiom_holds"] and saliency["noise_floor_topk"] is None


def test_agreement_metrics_and_intervals():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 1, 8, 8))
    same = attribution_agreement(a, a.copy())
    assert same["topk_overlap"] == same["cosine"] == pytest.approx(1.0)
    assert same["spearman"] == pytest.approx(1.0) and same["sign_agreement"] == 1.0
    other = attribution_agreement(a, rng.normal(size=a.shape))
    assert other["topk_overlap"] < 0.5 and other["cosine_lo"] <= other["cosine"] <= other["cosine_hi"]
    flipped = attribution_agreement(a, -a)
    assert flipped["cosine"] == pytest.approx(-1.0) and flipped["sign_agreement"] == 0.0


# ---------------------------------------------------------------- int8 ONNX: black box, twin, drift


def test_int8_onnx_gradient_methods_route_to_black_box(artifacts, digits):
    int8 = load_model(artifacts["mlp-int8"])
    x = digits.x_test[:4]
    attr = explain.attribute(int8, x, None, "integrated_gradients", n_steps=32)   # options of the request not passed on
    assert attr.method == "shapley" and attr.runtime == "onnx" and "routed" in attr.routed
    black_box = explain.attribute(int8, x, None, "feature_ablation")
    assert black_box.method == "feature_ablation" and black_box.runtime == "onnx" and black_box.routed is None
    # ORT dynamic quantization scales activations per batch, so f(x) moves slightly with the batch it runs in
    assert completeness_error(int8, x, attr) < 0.01
    twin = load_model(artifacts["mlp-int8-twin"])
    on_twin = explain.attribute(twin, x, None, "integrated_gradients")
    assert on_twin.method == "integrated_gradients" and on_twin.runtime == "fake-quant" and "twin" in on_twin.routed
    assert explain.attribute(twin, x, None, "shapley").runtime == "onnx"


def test_an_fp32_onnx_variant_s_gradients_run_on_its_twin_as_torch_not_fake_quant(models, digits, tmp_path):
    """Nothing of an onnx-fp32 variant is quantized: its twin is the fp32 module, and its runs say "torch"."""
    mlp = models["mlp"]
    spec = ModelSpec.from_dict({**mlp.spec.to_dict(), "runtime": "onnxruntime", "onnx": {"file": "model.onnx"}})
    (tmp_path / "fp32").mkdir()
    write_artifact(tmp_path / "fp32", mlp.module, spec, onnx_bytes=onnx_bytes_of(mlp.module, mlp.spec.input_shape))
    attr = explain.attribute(load_model(tmp_path / "fp32"), digits.x_test[:2], None, "integrated_gradients")
    assert attr.method == "integrated_gradients" and attr.runtime == "torch"
    assert "fake-quant" not in attr.routed and "not quantized" in attr.routed


def test_gradcam_of_a_graph_without_convolutions_is_refused_as_for_its_module(models, digits):
    """Routing to shapley stands in for missing gradients only; Grad-CAM has no convolution to read either way."""
    mlp = models["mlp"]
    graph = onnx_bytes_of(mlp.module, mlp.spec.input_shape)
    x = digits.x_test[:2]
    for model in (mlp.module, graph):
        with pytest.raises(ToolkitError, match="Grad-CAM needs a convolutional layer"):
            explain.attribute(model, x, None, "layer_gradcam")
    assert explain.attribute(graph, x, None, "integrated_gradients").method == "shapley"


def test_explain_model_reports_drift_of_an_int8_variant(artifacts, digits, tmp_path):
    out = tmp_path / "run"
    result = explain.explain_model(artifacts["mlp"], digits, methods=["shapley", "integrated_gradients"],
                                   compare=[artifacts["mlp-int8"]], samples=16, out=out)
    summary = json.loads((out / "result.json").read_text())
    assert summary == json.loads(json.dumps(result.to_dict()))
    assert summary["stage"] == "explain" and summary["runtimes"] == {"original": "torch", "mlp-int8": "onnxruntime"}
    rows = summary["drift"]["rows"]
    assert [(r["variant"], r["ran"], r["runtime"]) for r in rows] == [("mlp-int8", "shapley", "onnx")]
    row = rows[0]
    for metric in ("topk_overlap", "cosine", "spearman", "sign_agreement"):
        assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"]
    assert row["topk_overlap"] > 0.7 and row["flag"] is False and row["noise_floor_topk"] <= 1.0
    assert set(summary["quality"]) == {"shapley", "integrated_gradients"}
    assert set(summary["global_importance"]["shapley"]) == {f"r{r}c{c}" for r in range(8) for c in range(8)}
    for name in summary["figures"].values():
        assert (out / name).is_file() and (out / name).read_bytes()[:4] == b"\x89PNG"
    assert {"config.json", "env.json", "result.json"} <= {p.name for p in out.iterdir()}
    assert not out.with_name("run.partial").exists()


def test_drift_flag_when_accuracy_holds_but_explanations_move():
    from explain.compare import drift_row
    from explain.methods import Attribution

    rng = np.random.default_rng(1)

    def attr(values):
        return Attribution(values, "shapley", "shapley", "torch", np.zeros(values.shape[1:]), np.zeros(len(values), int),
                           np.zeros(len(values)))

    a = rng.normal(size=(16, 64))
    row = drift_row("v", attr(a), attr(rng.normal(size=a.shape)), accuracy=0.95, original_accuracy=0.96,
                    noise_floor_topk=0.95, random_floor_topk=0.2)
    assert row["flag"] and "moved" in row["verdict"]
    worse = drift_row("v", attr(a), attr(rng.normal(size=a.shape)), accuracy=0.80, original_accuracy=0.96,
                      noise_floor_topk=0.95, random_floor_topk=0.2)
    assert not worse["flag"]


def test_explain_model_on_cnn_and_lstm_defaults(artifacts, digits, tmp_path):
    for family in ("cnn", "lstm"):
        result = explain.explain_model(artifacts[family], digits, samples=6, out=tmp_path / family).to_dict()
        assert result["methods"] == list(explain.default_methods(family))
        for name, q in result["quality"].items():
            assert "completeness FAILS" not in " ".join(q["verdicts"]), (family, name, q["verdicts"])
            assert q["flagged"] == (q["sanity"]["verdict"] not in ("separated", "inconclusive")), \
                (family, name, q["verdicts"])
            assert q["sanity"]["cascade"][-1]["spearman"] == pytest.approx(q["sanity"]["seeds"][0], abs=1e-6)
        assert all((tmp_path / family / f).is_file() for f in result["figures"].values())


# ---------------------------------------------------------------- bad input


def test_refusals_and_bad_input(artifacts, digits, tmp_path):
    model = load_model(artifacts["mlp"])
    with pytest.raises(ToolkitError, match="unknown explain method 'nope'"):
        explain.attribute(model, digits.x_test[:2], None, "nope")
    with pytest.raises(ToolkitError, match="cannot handle a mlp model"):
        explain.explain_model(model, digits, methods=["layer_gradcam"], out=tmp_path / "a")
    with pytest.raises(ToolkitError, match="^an explain method must be named by a string, got dict"):
        explain.explain_model(model, digits, methods=[{"shapley": {"n_permutations": 16}}], out=tmp_path / "d")
    with pytest.raises(ToolkitError, match="--samples: input should be greater than or equal to 1"):
        explain.explain_model(model, digits, samples=0, out=tmp_path / "b")
    with pytest.raises(ToolkitError, match="input shape"):
        check_comparable(model, load_model(artifacts["iris"]))
    with pytest.raises(ToolkitError, match="input shape"):
        explain.explain_model(model, digits, compare=[artifacts["iris"]], out=tmp_path / "c")
    other_classes = LoadedModel(model.module, ModelSpec.from_dict({**model.spec.to_dict(),
                                                                   "class_names": list("abcdefghij")}))
    with pytest.raises(ToolkitError, match="classes"):
        check_comparable(model, other_classes)
    with pytest.raises(ToolkitError, match="shape"):
        explain.attribute(model, np.zeros((2, 5), np.float32), None, "saliency")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"target": [0, 1]}, r"target has shape \(2,\); expected one class index or one per sample \(6,\)"),
    ({"target": 1.7}, "target must be whole class indices"),
    ({"target": "1"}, "target must be whole class indices"),
    ({"baseline": np.zeros(5)}, r"baseline has shape \(5,\); expected one input \(1, 8, 8\)"),
    ({"method": "gradient_shap", "background": np.zeros((4, 5))},
     r"background has shape \(4, 5\); expected \(samples, \*\(1, 8, 8\)\)"),
    ({"method": "gradient_shap", "background": np.zeros((0, 1, 8, 8))}, "at least one sample"),
])
def test_attribute_refuses_a_bad_target_baseline_or_background_naming_it(models, digits, kwargs, message):
    """From Python these were a numpy broadcast error, a reshape error, Captum's AssertionError, or (1.7) class 1
    explained without a word."""
    kwargs = {"method": "saliency", **kwargs}
    with pytest.raises(ToolkitError, match=message):
        explain.attribute(models["mlp"], digits.x_test[:6], kwargs.pop("target", None), **kwargs)
    explain.attribute(models["mlp"], digits.x_test[:6], 1.0, "saliency")       # a whole number is a class index


def test_a_variant_with_other_class_names_is_refused_naming_them(models):
    """Ten names against ten: the refusal names the ones that differ (shortened), not two equal counts."""
    model = models["mlp"]

    def named(names):
        return LoadedModel(model.module, ModelSpec.from_dict({**model.spec.to_dict(), "class_names": names}))

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    with pytest.raises(ToolkitError) as refused:
        check_comparable(named([str(i) for i in range(10)]), named(words), "dgn")
    message = str(refused.value)
    assert "'zero'" in message and "'0'" in message and "in 10 of 10 names" in message
    assert "and 6 more" in message and "'nine'" not in message                      # shortened
    with pytest.raises(ToolkitError, match=r"its 10 classes .* the original's 3 \('a', 'b', 'c'\)"):
        check_comparable(named(["a", "b", "c"]), named(words))


# ---------------------------------------------------------------- CLI


def run_cli(*args):
    from cli.main import main

    return main([str(a) for a in args])


def test_cli_explain_writes_run_dir_and_json(artifacts, tmp_path, capsys):
    out = tmp_path / "cli"
    code = run_cli("explain", artifacts["mlp"], "--data", "digits", "--method", "shapley", "--method", "deeplift",
                   "--compare", artifacts["mlp-int8"], "--samples", "8", "--out", out, "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["methods"] == ["shapley", "deeplift"] and summary["samples"] == 8
    assert json.loads((out / "result.json").read_text())["drift"]["rows"][0]["variant"] == "mlp-int8"
    assert "drift mlp-int8" in captured.err


def test_cli_says_which_requests_ran_another_method_and_checks_that_run_once(artifacts, tmp_path, capsys,
                                                                              monkeypatch):
    """Two gradient methods on an int8 graph without a twin both run shapley: the terminal says so for each, and
    shapley's figures appear (and its checks run) once, under its own name, not under the names requested."""
    import explain.quality as quality_module

    real, assessed = quality_module.assess, []
    monkeypatch.setattr(quality_module, "assess", lambda model, x, attr, **kw: assessed.append(attr.method)
                        or real(model, x, attr, **kw))
    code = run_cli("explain", artifacts["mlp-int8"], "--data", "digits", "--method", "integrated_gradients",
                   "--method", "saliency", "--samples", "4", "--out", tmp_path / "e", "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    for method in ("integrated_gradients", "saliency"):
        assert re.search(rf"^{method}: ran shapley instead \(.*no PyTorch module", captured.err, re.M), captured.err
        assert not re.search(rf"^{method}: estimated error", captured.err, re.M)
    assert assessed == ["shapley"] and set(summary["quality"]) == set(summary["global_importance"]) == {"shapley"}
    assert [(r["method"], r["ran"]) for r in summary["runs"]] == [("integrated_gradients", "shapley"),
                                                                  ("saliency", "shapley")]


def test_cli_checks_skip_the_sanity_check_and_fidelity_and_say_so(artifacts, tmp_path, capsys, monkeypatch):
    """The sanity check re-runs the method 8 times (5-7x the attribution on a 64x64 CNN) and nothing turned it off:
    --checks fast skips it, none also deletion/insertion, infidelity and faithfulness; null figures, verdicts say so."""
    import explain.quality as quality_module

    called = []
    for name in ("sanity_check", "deletion_insertion_auc", "infidelity", "faithfulness"):
        real = getattr(quality_module, name)
        monkeypatch.setattr(quality_module, name, lambda *a, name=name, real=real, **kw: called.append(name)
                            or real(*a, **kw))
    for checks, skipped in (("fast", {"sanity_check"}), ("none", {"sanity_check", "deletion_insertion_auc",
                                                                   "infidelity", "faithfulness"})):
        called.clear()
        code = run_cli("explain", artifacts["mlp"], "--data", "digits", "--method", "saliency", "--samples", "4",
                       "--checks", checks, "--out", tmp_path / checks, "--json")
        captured = capsys.readouterr()
        assert code == 0, captured.err
        quality = json.loads(captured.out)["quality"]["saliency"]
        assert set(called) == {"sanity_check", "deletion_insertion_auc", "infidelity", "faithfulness"} - skipped
        assert quality["sanity"] is None and quality["randomization_topk"] is None
        assert f"sanity check not run (checks={checks})" in quality["verdicts"]
        assert (quality["deletion_auc"] is None and quality["faithfulness"] is None) == (checks == "none")
        assert json.loads((tmp_path / checks / "config.json").read_text())["checks"] == checks
        from reports.collect import load_run
        from reports.sections import reproduce_command

        assert f"--checks {checks}" in reproduce_command(load_run(tmp_path / checks))


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown explain method"),
    (["--method", "layer_gradcam"], "cannot handle a mlp model"),
    (["--samples", "0"], "greater than or equal to 1"),
    (["--compare", "IRIS"], "input shape"),
    (["--seed", "-1"], "--seed: input should be greater than or equal to 0"),
    (["--seed", str(2**32)], "--seed: input should be less than 4294967296"),
    (["--checks", "some"], "--checks: input should be 'all', 'fast' or 'none'"),
])
def test_cli_bad_input_exits_2_with_one_line_and_nothing_written(artifacts, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    args = [artifacts["iris"] if a == "IRIS" else a for a in args]
    code = run_cli("explain", artifacts["mlp"], "--data", "digits", *args, "--out", out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not out.with_name("bad.partial").exists()


def test_long_and_multi_line_feature_names_are_drawn_short_on_one_line(tmp_path):
    """A 500-character name once made the importance figure 3945 px wide (its bars a tenth of it), and a name
    holding newlines was drawn on three lines over its neighbours' labels."""
    from explain import plots

    names = ["f" * 500, "a: b\n---\n| c |", "g" * 200 + "1", "g" * 200 + "2"]
    spec = ModelSpec(family="mlp", config={}, input_shape=[4], layout="features", class_names=["a", "b"],
                     feature_names=names)
    values = np.random.default_rng(0).normal(size=(10, 4))
    for fig in (plots.importance_bars(plots.global_importance(spec, values), "t"),
                plots.beeswarm(spec, values, values, "t")):
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert len(labels) == 4 and len(set(labels)) == 4       # two names that share 200 characters stay apart
        assert all("\n" not in label and len(label) <= plots.LABEL_CHARS for label in labels), labels
        assert "a: b --- | c |" in labels
        fig.savefig(tmp_path / "f.png", dpi=90, bbox_inches="tight")
        assert fig.get_size_inches()[0] * 90 < 1000          # about the figure's own width, not the name's


def test_views_for_tabular_and_signal_layouts(tmp_path):
    from explain import plots

    rng = np.random.default_rng(0)
    tab = ModelSpec(family="mlp", config={}, input_shape=[5], layout="features", class_names=["a", "b"],
                    feature_names=list("vwxyz"))
    figs = plots.views(tab, rng.normal(size=(10, 5)), np.arange(10) % 2, rng.normal(size=(10, 5)), "m", tmp_path)
    assert {"global importance (m)", "per-sample attributions (m)"} == set(figs)
    assert set(plots.global_importance(tab, rng.normal(size=(3, 5)))) == set("vwxyz")
    sig = ModelSpec(family="cnn", config={}, input_shape=[2, 30], layout="signal", class_names=["a", "b"])
    figs = plots.views(sig, rng.normal(size=(4, 2, 30)), np.arange(4) % 2, rng.normal(size=(4, 2, 30)), "m", tmp_path)
    assert "attribution over time (m)" in figs
    assert all((tmp_path / Path(f).name).is_file() for f in figs.values())
    odd = ModelSpec(family="mlp", config={}, input_shape=[2], layout="features", class_names=["$no$", "<b>"],
                    feature_names=["$x^$", "<script>"])   # user text must not reach matplotlib's mathtext
    assert len(plots.views(odd, rng.normal(size=(4, 2)), np.arange(4) % 2, rng.normal(size=(4, 2)), "odd", tmp_path)) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["lstm", "cnn"])
def test_attribution_runs_on_the_models_cuda_device(models, digits, family):
    import copy

    model = copy.copy(models[family])
    model.module = copy.deepcopy(models[family].module).cuda()
    x = digits.x_test[:8]
    for method in ("integrated_gradients", "shapley", "gradient_shap"):
        attr = explain.attribute(model, x, None, method, background=digits.x_train[:8])   # LSTM: cuDNN off for backward
        assert attr.values.shape == x.shape and np.isfinite(attr.values).all()
        if method != "gradient_shap":
            assert completeness_error(model, x, attr) < 0.01


def test_saliency_switches_gradients_on_itself_so_captum_does_not_warn(models, digits):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Captum's "did not already require gradients" would raise
        result = explain.attribute(models["mlp"], digits.x_test[:4], method="saliency")
    assert np.isfinite(result.values).all() and result.values.shape == (4, *digits.x_test.shape[1:])


def test_explain_and_compress_test_on_the_split_the_model_was_trained_with(tmp_path):
    """A model trained with --seed 3 is explained and measured on its own test rows, whatever explain's seed
    (which draws the samples): a split of another seed would put rows it trained on among the test rows."""
    import compress
    from explain import explain_model
    from trainers import TrainConfig, train

    run = tmp_path / "m"
    train("digits", "mlp", TrainConfig(epochs=1, seed=3, model={"hidden": [16]}), out=run, progress=False)
    own = load_data("digits", seed=3)
    result = explain_model(str(run), "digits", methods=["saliency"], samples=4, seed=5)
    assert result.to_dict()["data"]["split"]["seed"] == 3
    measured = compress.compress_model(str(run), "digits", methods=["int8-dynamic"])
    assert measured.data["split"]["seed"] == 3 and measured.data["n_test"] == len(own.y_test)


def test_a_routed_method_s_drift_uses_its_own_noise_floor(artifacts, digits, monkeypatch):
    """saliency on an ONNX int8 graph runs shapley: its drift threshold comes from shapley's checks on the
    original, not from a deterministic method's floor of 1.0."""
    import explain.quality as quality_module

    real, assessed = quality_module.assess, []

    def assess(model, x, attr, **kwargs):
        quality = real(model, x, attr, **kwargs)
        assessed.append(attr.method)
        return {**quality, "noise_floor_topk": 0.5} if attr.method == "shapley" else quality

    monkeypatch.setattr(quality_module, "assess", assess)
    result = explain.explain_model(artifacts["mlp"], digits, methods=["saliency"], compare=[artifacts["mlp-int8"]],
                                   samples=6)
    row = result.to_dict()["drift"]["rows"][0]
    assert row["method"] == "saliency" and row["ran"] == "shapley"
    assert assessed == ["saliency", "shapley"] and row["noise_floor_topk"] == 0.5 and row["threshold"] == 0.35


def test_a_variants_own_onnx_file_is_compared_as_its_artifact(artifacts, digits, tmp_path):
    """`--compare variants/NAME/model.onnx` reads the artifact the file belongs to: named by its folder, and
    derived from the original by its lineage (a bare ONNX graph carries none). A user's own ONNX file stays one."""
    import compress

    run = compress.compress_model(artifacts["mlp"], digits, methods=["int8-dynamic"], out=tmp_path / "c")
    name = run.variants[0].name
    result = explain.explain_model(artifacts["mlp"], digits, methods=["feature_ablation"], samples=4,
                                   compare=[tmp_path / "c" / "variants" / name / "model.onnx"]).to_dict()
    assert result["relations"] == {name: {"relation": "derived", "reason": "compressed from the original "
                                                                            "(int8-dynamic)"}}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.onnx").write_bytes((tmp_path / "c" / "variants" / name / "model.onnx").read_bytes())
    alone = explain.explain_model(artifacts["mlp"], digits, methods=["feature_ablation"], samples=4,
                                  compare=[tmp_path / "mine" / "model.onnx"]).to_dict()
    assert alone["relations"]["model.onnx"]["relation"] == "unrelated"


# ---------------------------------------------------------------- a user's own model: baseline and target


def _linear_user_model(seed: int = 0, d: int = 5, classes: int = 3):
    """A user's linear nn.Module (logit_c = W_c . x + b_c) and data x ~ N(2, 1) with labels of no matter: its
    exact attribution from a baseline b is W_t * (x - b), so a zero baseline is told apart from the mean."""
    from trainers.data import DataBundle

    torch.manual_seed(seed)
    module = torch.nn.Linear(d, classes).eval()
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.0, size=(240, d)).astype(np.float32)
    y = rng.integers(0, classes, len(x))
    return module, DataBundle.from_arrays(x, y, seed=seed)


@pytest.mark.parametrize("method", ["integrated_gradients", "feature_ablation"])
def test_a_users_module_is_explained_from_its_training_mean(method):
    from explain.stage import _pick_samples

    module, bundle = _linear_user_model()
    result = explain.explain_model(module, bundle, methods=[method], samples=6, seed=3)
    attr = result.attributions[("original", method)]
    x = bundle.x_test[_pick_samples(bundle.y_test, 6, 3)]
    weights = module.weight.detach().numpy()
    mean = bundle.x_train.mean(0)
    np.testing.assert_allclose(attr.baseline, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attr.values, weights[attr.targets] * (x - mean), rtol=1e-3, atol=1e-4)
    assert [r["baseline"] for r in result.summary["runs"]] == ["training mean"]


def test_attribute_without_training_rows_says_its_baseline_is_zeros():
    """The lower-level call has no data to take a user's training mean from: it uses zeros and says so."""
    module, bundle = _linear_user_model()
    x = bundle.x_test[:4]
    attr = explain.attribute(module, x, None, "feature_ablation")
    weights = module.weight.detach().numpy()
    assert attr.baseline_name == "zeros" and not attr.baseline.any()
    np.testing.assert_allclose(attr.values, weights[attr.targets] * x, rtol=1e-3, atol=1e-4)
    given = explain.attribute(module, x, None, "feature_ablation", baseline=bundle.x_train.mean(0),
                              baseline_name="training mean")
    assert given.baseline_name == "training mean"


def test_figures_say_each_sample_is_explained_for_its_predicted_class():
    from explain import plots

    spec = ModelSpec(family="mlp", config={}, input_shape=[3], layout="features", class_names=["cat", "dog"])
    rng = np.random.default_rng(0)
    x, values = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    bars = plots.importance_bars(plots.global_importance(spec, values), "m")
    swarm = plots.beeswarm(spec, x, values, "m")
    assert "predicted class" in bars.axes[0].get_xlabel() and "predicted class" in swarm.axes[0].get_xlabel()
    assert "predicted class" in plots.over_time(rng.normal(size=(4, 2, 8)), "m").axes[0].get_ylabel()
    images = rng.normal(size=(2, 1, 4, 4))
    overlay = plots.image_overlays(images, images, np.array([0, 1]), ["cat", "dog"], "m", targets=np.array([0, 0]))
    titles = [ax.get_title() for ax in overlay.axes if ax.get_title()]
    assert titles == ["predicted cat", "predicted cat (true dog)"]


def test_compare_takes_a_compress_run_and_reads_the_variant_it_chose(tmp_path):
    """`--compare runs/x-compressed`: the chosen variant, whose name auto picks (as `toolkit predict` reads a run)."""
    from compress import compress_model
    from trainers import TrainConfig, load_data, train

    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=3), out=tmp_path / "m")
    compressed = compress_model(trained.model, data, methods=["int8-dynamic", "onnx-fp32"], out=tmp_path / "c",
                                max_drop=100, min_agreement=0)
    result = explain.explain_model(tmp_path / "m", data, methods=["saliency"], samples=4,
                                   compare=[tmp_path / "c"]).to_dict()
    [(name, relation)] = result["relations"].items()
    assert name == compressed.chosen.name and relation["relation"] == "derived", result["relations"]
    from cli.main import main     # the command line as the README writes it: --compare RUN_DIR

    assert main(["explain", str(tmp_path / "m"), "--data", "iris", "--method", "saliency", "--samples", "4",
                 "--compare", str(tmp_path / "c"), "--out", str(tmp_path / "e")]) == 0
    saved = json.loads((tmp_path / "e" / "result.json").read_text())
    assert [r["variant"] for r in saved["drift"]["rows"]] == [compressed.chosen.name]
    assert main(["explain", str(tmp_path / "m"), "--data", "iris", "--method", "saliency", "--samples", "4",
                 "--compare", str(tmp_path)]) == 2     # a folder that is no run: one line


def test_faithfulness_passes_a_correct_map_and_fails_one_on_the_wrong_pixels(models, digits):
    """Integrated gradients of a digits CNN against the same map transposed (a layout bug) and shuffled over the
    pixels: all three are complete (same sums), and the sanity check cannot tell a fixed relabelling of the
    inputs apart; the deletion/insertion curves read against random and input-only orders fail the shuffled map
    and pass the correct one. The transposed map (a digit's strokes partly survive the transpose) scores about the
    input-only order on this quickly trained CNN: never passed (on a CNN trained 5 epochs it fails, -0.135)."""
    import dataclasses

    from explain.quality import faithfulness

    model, x = models["cnn"], digits.x_test[:32]
    attr = explain.attribute(model, x, None, "integrated_gradients")
    perm = np.random.default_rng(0).permutation(x[0].size)
    broken = {"transposed": np.swapaxes(attr.values, -1, -2).copy(),
              "shuffled": attr.values.reshape(len(x), -1)[:, perm].reshape(attr.values.shape)}
    correct = faithfulness(model, x, attr)
    assert correct["verdict"] == "better" and correct["difference_lo"] > correct["margin"], correct["reason"]
    shuffled = faithfulness(model, x, dataclasses.replace(attr, values=broken["shuffled"]))
    assert shuffled["verdict"] == "no better" and shuffled["difference_hi"] < shuffled["margin"], shuffled["reason"]
    transposed = faithfulness(model, x, dataclasses.replace(attr, values=broken["transposed"]))
    assert transposed["verdict"] != "better" and transposed["difference"] < correct["difference_lo"]
    q = assess(model, x, dataclasses.replace(attr, values=broken["shuffled"]), sanity=False)
    assert q["flagged"] and any(v.startswith("faithfulness FAILED") for v in q["verdicts"])
    q = assess(model, x, attr, sanity=False)
    assert not q["flagged"] and any(v.startswith("faithfulness passed") for v in q["verdicts"])
