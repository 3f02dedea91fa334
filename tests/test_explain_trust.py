"""How far explanations can be trusted: the sanity check's verdicts, drift decided with its interval and the
compared model's relation, infidelity with each input's spread, and a report's reproduce command run again.

The drift acceptance: on data where three informative features have exact copies in other columns, a model
trained with the copies shuffled relies on the originals, a variant trained with the originals shuffled relies
on the copies; both keep their accuracy on the untouched test data. The variant must be flagged drifted (its
top-k overlap interval below the threshold), a lossless ONNX fp32 export of the original must not, on three seeds.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import explain
from explain.compare import drift_row, drift_status, relation
from explain.methods import Attribution
from explain.quality import infidelity
from explain.sanity import (
    SEEDS,
    SEPARATION_MARGIN,
    UNRELATED_SPEARMAN,
    cascading_randomization,
    input_only_map,
    sanity_verdict,
    spearman_per_sample,
)
from trainers import build_model, load_data, load_model, save_model
from trainers.artifact import LoadedModel, ModelSpec, write_artifact

ROOT = Path(__file__).resolve().parents[1]
INFORMATIVE, COPIES = [0, 1, 2], [9, 10, 11]


def redundant_data(seed: int, n: int = 600):
    """12 features, 3 classes decided by features 0-2; features 9-11 are exact copies of 0-2."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    x[np.arange(n), y] += 4.0
    x[:, COPIES] = x[:, INFORMATIVE]
    return load_data((x, y), seed=seed)


def fit_mlp(bundle, seed: int, shuffled: list[int], steps: int = 150) -> LoadedModel:
    """A small MLP trained with the `shuffled` columns permuted across rows (so it cannot use them)."""
    rng = np.random.default_rng(seed + 100)
    x = bundle.x_train.copy()
    for j in shuffled:
        x[:, j] = x[rng.permutation(len(x)), j]
    torch.manual_seed(seed)
    module = build_model("mlp", {"hidden": [16], "dropout": 0.0}, bundle.input_shape, bundle.num_classes,
                         bundle.mean, bundle.std)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(bundle.y_train)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(module(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spec = ModelSpec(family="mlp", config={"hidden": [16], "dropout": 0.0}, input_shape=list(bundle.input_shape),
                     layout=bundle.layout, class_names=bundle.class_names,
                     preprocessing={"mean": bundle.mean.tolist(), "std": bundle.std.tolist()},
                     data={"fingerprint": bundle.fingerprint})
    return LoadedModel(module=module.eval(), spec=spec)


def onnx_fp32(model: LoadedModel, out: Path) -> Path:
    """A lossless variant: the model exported to ONNX fp32, its lineage naming the original."""
    buf = io.BytesIO()
    torch.onnx.export(model.module, torch.zeros(2, *model.spec.input_shape), buf, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    spec = ModelSpec.from_dict({**model.spec.to_dict(), "runtime": "onnxruntime", "onnx": {"file": "model.onnx"},
                                "lineage": {"parent": model.source, "recipe": {"method": "onnx-fp32"}}})
    out.mkdir(parents=True)
    write_artifact(out, None, spec, onnx_bytes=buf.getvalue())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_variant_relying_on_other_features_is_drifted_and_a_lossless_one_is_not(tmp_path, seed):
    bundle = redundant_data(seed)
    original = save_model(fit_mlp(bundle, seed, shuffled=COPIES), tmp_path / "original")
    moved = save_model(fit_mlp(bundle, seed, shuffled=INFORMATIVE), tmp_path / "moved")
    lossless = onnx_fp32(load_model(original), tmp_path / "onnx-fp32")
    result = explain.explain_model(original, bundle, methods=["feature_ablation"], compare=[moved, lossless],
                                   samples=32, seed=seed).to_dict()
    rows = {r["variant"]: r for r in result["drift"]["rows"]}
    drifted, kept = rows["moved"], rows["onnx-fp32"]
    assert drifted["accuracy_drop"] <= 2.0, "the variant keeps its accuracy"
    assert drifted["status"] == "drifted" and drifted["flag"]
    assert drifted["topk_overlap_hi"] < drifted["threshold"]
    assert {f["feature"] for f in drifted["top_features"][:2]} <= {f"x{j}" for j in INFORMATIVE}
    assert any(f["variant_rank"] > 3 for f in drifted["top_features"]) and "ranks moved" in drifted["verdict"]
    assert kept["status"] == "kept" and not kept["flag"] and kept["topk_overlap_lo"] >= kept["threshold"]
    assert result["relations"]["moved"]["relation"] == "same data"
    assert result["relations"]["onnx-fp32"]["relation"] == "derived"
    assert not any("unrelated" in flag for flag in result["flags"])


def test_an_unrelated_model_is_said_so(tmp_path):
    a, b = redundant_data(0), redundant_data(5)
    original = fit_mlp(a, 0, COPIES, steps=5)
    other = fit_mlp(b, 0, COPIES, steps=5)
    assert relation(original, other)[0] == "unrelated" and "other data" in relation(original, other)[1]
    result = explain.explain_model(original, a, methods=["saliency"], compare=[other], samples=4).to_dict()
    assert result["relations"]["variant0"]["relation"] == "unrelated"
    assert any("no lineage links it to the original" in flag for flag in result["flags"])
    assert result["drift"]["rows"][0]["relation"] == "unrelated"


def test_drift_status_reads_the_interval_and_names_a_swapped_top_feature():
    assert [drift_status(lo, hi, 0.7) for lo, hi in ((0.2, 0.6), (0.6, 0.8), (0.75, 0.9))] == \
        ["drifted", "uncertain", "kept"]
    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(40, 20))) * 0.1
    a[:, 0] += 5.0                                  # x0 the top input of the original
    b = a.copy()
    b[:, [0, 7]] = b[:, [7, 0]]                     # the variant swaps it with a minor input

    def attr(values):
        return Attribution(values, "saliency", "saliency", "torch", np.zeros(20), np.zeros(40, int), np.zeros(40))

    row = drift_row("v", attr(a), attr(b), accuracy=0.9, original_accuracy=0.9, noise_floor_topk=None,
                    random_floor_topk=None, feature_names=[f"f{i}" for i in range(20)])
    top = row["top_features"][0]
    assert (top["feature"], top["rank"]) == ("f0", 1) and top["share_ratio_hi"] < 0.5 < top["share"]
    assert row["top_features"][0]["variant_rank"] > 3 and "f0 1 -> " in row["verdict"]
    empty = drift_row("v", attr(np.zeros_like(a)), attr(b), accuracy=0.9, original_accuracy=0.9,
                      noise_floor_topk=None, random_floor_topk=None)
    assert empty["status"] == "uninformative" and not empty["flag"]


def test_drift_on_too_few_samples_is_uncertain_with_its_reason_and_no_flag():
    """One sample gave zero-width intervals, and 2-4 a percentile bootstrap far narrower than 95%: "drifted" and a
    flag came from one sample. Below `MIN_DRIFT_SAMPLES` the row is uncertain and says why; from it, the same
    swap of the top input reads drifted."""
    from explain.compare import MIN_DRIFT_SAMPLES

    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(MIN_DRIFT_SAMPLES, 20))) * 0.1
    a[:, 0] += 5.0
    b = a.copy()
    b[:, [0, 7]] = b[:, [7, 0]]

    def attr(values):
        n = len(values)
        return Attribution(values, "saliency", "saliency", "torch", np.zeros(20), np.zeros(n, int), np.zeros(n))

    for n in (1, 4, MIN_DRIFT_SAMPLES - 1):
        row = drift_row("v", attr(a[:n]), attr(b[:n]), accuracy=0.9, original_accuracy=0.9, noise_floor_topk=None,
                        random_floor_topk=None)
        assert row["status"] == "uncertain" and not row["flag"], (n, row["verdict"])
        assert f"only {n} sample" in row["verdict"] and "too few" in row["verdict"]
    enough = drift_row("v", attr(a), attr(b), accuracy=0.9, original_accuracy=0.9, noise_floor_topk=None,
                       random_floor_topk=None)
    assert enough["status"] == "drifted" and enough["flag"]


# ---------------------------------------------------------------- sanity check


@pytest.fixture(scope="module")
def trained():
    bundle = redundant_data(0)
    return fit_mlp(bundle, 0, COPIES), bundle


def _attr(model, x, values, method="saliency"):
    base = explain.attribute(model, x, None, method)
    return Attribution(values.astype(np.float32), method, method, "torch", base.baseline, base.targets,
                       base.reference_output)


def test_empty_maps_are_uninformative_never_a_pass(trained):
    model, bundle = trained
    x = bundle.x_test[:8]
    check = cascading_randomization(model, x, _attr(model, x, np.zeros_like(x)))
    assert check["verdict"] == "uninformative" and check["empty_share"] == 1.0 and "empty" in check["reason"]
    half = np.where(np.arange(8)[:, None] < 4, 0.0, explain.attribute(model, x, None, "saliency").values)
    assert cascading_randomization(model, x, _attr(model, x, half))["empty_share"] == 0.5


def test_a_map_that_echoes_the_input_is_input_only(trained):
    model, bundle = trained
    x = bundle.x_test[:8]
    check = cascading_randomization(model, x, _attr(model, x, input_only_map(model.spec, x)))
    assert check["input_only"] == pytest.approx(1.0) and check["verdict"] == "input-only"


def test_cascade_floor_and_verdict_of_gradients_of_a_trained_model(trained):
    model, bundle = trained
    x = bundle.x_test[:16]
    check = cascading_randomization(model, x, explain.attribute(model, x, None, "saliency"))
    assert [step["layers"].count(",") for step in check["cascade"]] == [0, 1]   # top layer, then both
    assert len(check["seeds"]) == SEEDS and len(check["floor"]) == SEEDS * (SEEDS - 1) // 2
    assert check["model_reference"] > 0.9 and check["verdict"] != "input-only"
    assert check["verdict"] in ("separated", "inconclusive", "not separated") and check["reason"]


def _figures(trained, floor=None, reference=(-0.3, -0.4, -0.2)):
    """The figures `sanity_verdict` reads: (point, lo, hi) of the trained statistic, of floor - trained and of
    input-only - model reference."""
    out = {"empty_share": 0.0, "input_only": 0.3, "model_reference": 0.6, "trained": trained[0],
           "trained_lo": trained[1], "trained_hi": trained[2], "floor_mean": None, "difference": None,
           "difference_lo": None, "difference_hi": None, "reference_difference": reference[0],
           "reference_difference_lo": reference[1], "reference_difference_hi": reference[2]}
    if floor is not None:
        out.update(floor_mean=round(trained[0] + floor[0], 3), difference=floor[0], difference_lo=floor[1],
                   difference_hi=floor[2])
    return out


SYNTHETIC = {   # verdict: figures that must give it
    "separated": [_figures((0.4, 0.3, 0.5), (0.3, 0.15, 0.45)), _figures((0.1, 0.05, 0.15), (0.3, 0.15, 0.45))],
    # a low statistic separates nothing when the floor is as low (the audit's CNN trained on shuffled labels:
    # -0.014 against a floor of -0.013), nor without a floor to read it against
    "inconclusive": [_figures((0.4, 0.3, 0.5), (0.1, -0.05, 0.25)), _figures((0.2, 0.1, 0.3), (0.0, -0.1, 0.08)),
                     _figures((0.3, 0.1, 0.5)), _figures((-0.014, -0.172, 0.171), (0.001, -0.178, 0.192)),
                     _figures((0.02, -0.03, 0.07), (0.0, -0.05, 0.05)), _figures((0.1, 0.05, 0.15))],
    "not separated": [_figures((0.4, 0.3, 0.5), (0.0, -0.1, 0.08)), _figures((0.4, 0.3, 0.5))],
    "input-only": [_figures((0.4, 0.3, 0.5), (0.0, -0.1, 0.08), reference=(0.2, 0.1, 0.3))],
}


def test_sanity_verdict_reads_intervals_against_the_margin():
    """Separated only when an interval clears its threshold, not separated only when it surely misses both,
    inconclusive (never a flip) when an interval straddles one."""
    for verdict, cases in SYNTHETIC.items():
        for figures in cases:
            assert sanity_verdict(figures)[0] == verdict, (verdict, figures, sanity_verdict(figures))
    assert sanity_verdict({**_figures((0.4, 0.3, 0.5)), "trained": None})[0] == "uninformative"


NUMBER = r"(-?\d+\.\d+)"


def assert_reason_follows_its_rule(verdict: str, reason: str):
    """The numbers in a sanity reason satisfy the rule the reason states (and the verdict is that rule's)."""
    stated = 0
    floor = re.search(rf"floor between two re-initialisations {NUMBER} minus the {NUMBER} with re-initialised "
                      rf"models is {NUMBER} \(95% interval {NUMBER} to {NUMBER}\), (above|below|an interval that "
                      rf"straddles) the margin {NUMBER}", reason)
    if floor:
        f, t, d, lo, hi, word, margin = floor.groups()
        f, t, d, lo, hi, margin = map(float, (f, t, d, lo, hi, margin))
        assert margin == SEPARATION_MARGIN and d == pytest.approx(f - t, abs=1.5e-3) and lo <= d <= hi
        assert {"above": lo > margin, "below": hi < margin, "an interval that straddles": lo <= margin <= hi}[word]
        stated += 1
    trained = re.search(rf"spearman with re-initialised models {NUMBER} \(95% interval {NUMBER} to {NUMBER}\), "
                        rf"(below|not below|not surely below|an interval that straddles) {NUMBER}", reason)
    if trained:
        t, lo, hi, word, limit = trained.groups()
        t, lo, hi, limit = map(float, (t, lo, hi, limit))
        assert limit == UNRELATED_SPEARMAN and lo <= t <= hi
        assert {"below": hi < limit, "not below": lo >= limit, "not surely below": hi >= limit,
                "an interval that straddles": lo < limit <= hi}[word]
        stated += 1
    if verdict == "separated":      # only a floor surely above the trained statistic separates
        assert floor and floor.group(6) == "above", reason
    if verdict == "not separated":
        assert (floor is None or floor.group(6) == "below") and trained.group(4) == "not below", reason
    if verdict == "inconclusive":
        assert "straddles" in reason or trained.group(4) == "below", reason
    if verdict == "input-only":
        lo = float(re.search(rf"difference {NUMBER} \(95% interval {NUMBER} to", reason).group(2))
        assert lo > 0, reason
        stated += 1
    assert stated or verdict == "uninformative", reason


def test_every_sanity_reason_states_numbers_that_satisfy_its_rule(trained):
    for cases in SYNTHETIC.values():
        for figures in cases:
            assert_reason_follows_its_rule(*sanity_verdict(figures))
    model, bundle = trained
    x = bundle.x_test[:16]
    for method in ("saliency", "integrated_gradients"):
        check = cascading_randomization(model, x, explain.attribute(model, x, None, method))
        assert_reason_follows_its_rule(check["verdict"], check["reason"])


def test_a_model_at_chance_accuracy_is_said_to_have_learned_nothing(trained):
    """The sanity check cannot tell a model trained on shuffled labels from a re-initialised one (nor, where the
    floor is ~0, a well-trained one): the verdicts say when the accuracy is near chance, the trained model's not."""
    model, bundle = trained
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    noise = load_data((x, rng.integers(0, 3, 600)), seed=0)          # labels unrelated to the inputs
    at_chance = fit_mlp(noise, 0, [], steps=60)
    result = explain.explain_model(at_chance, noise, methods=["saliency"], samples=4).to_dict()
    assert any("near chance" in v and "learned nothing" in v for v in result["quality"]["saliency"]["verdicts"])
    assert any("near chance" in flag for flag in result["flags"])
    result = explain.explain_model(model, bundle, methods=["saliency"], samples=4).to_dict()
    assert not any("near chance" in v for v in result["quality"]["saliency"]["verdicts"] + result["flags"])


def sparse_input_data(seed: int = 0, n: int = 600, d: int = 8):
    """d standard normal features; the class is x0 + x1 > 0, the others are noise of the same spread."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return load_data((x, (x[:, 0] + x[:, 1] > 0).astype(int)), seed=seed)


def fit_on_two_inputs(bundle, hidden: list[int], steps: int = 200) -> LoadedModel:
    """An MLP whose first layer is held at zero on every input but x0 and x1: its attributions of the other
    inputs are exactly 0, so they depend on its weights and not on |x - baseline| alone."""
    torch.manual_seed(0)
    config = {"hidden": hidden, "dropout": 0.0}
    module = build_model("mlp", config, bundle.input_shape, bundle.num_classes, bundle.mean, bundle.std)
    first = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    mask = torch.zeros(bundle.input_shape[0])
    mask[:2] = 1.0
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(bundle.x_train), torch.as_tensor(bundle.y_train)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(module(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            first.weight.mul_(mask)
    spec = ModelSpec(family="mlp", config=config, input_shape=list(bundle.input_shape), layout=bundle.layout,
                     class_names=bundle.class_names,
                     preprocessing={"mean": bundle.mean.tolist(), "std": bundle.std.tolist()})
    return LoadedModel(module=module.eval(), spec=spec)


def test_a_model_that_clearly_depends_on_its_weights_is_separated_whatever_the_seed():
    """The audit saw integrated gradients flip between separated and not separated with the seed of the run."""
    bundle = sparse_input_data(d=16)   # 14 ignored inputs: with 8 the floor's interval at seed 3 reached the margin
    model = fit_on_two_inputs(bundle, [16])
    for seed in range(4):
        result = explain.explain_model(model, bundle, methods=["integrated_gradients"], samples=16,
                                       seed=seed).to_dict()
        sanity = result["quality"]["integrated_gradients"]["sanity"]
        assert sanity["verdict"] == "separated", (seed, sanity["reason"])
        assert_reason_follows_its_rule(sanity["verdict"], sanity["reason"])


def test_numerical_dust_on_ignored_inputs_ranks_nothing():
    """1e-9 where the exact attribution is 0 must not order the ignored inputs (ties get average ranks)."""
    rng = np.random.default_rng(0)
    exact = np.zeros((6, 12))
    exact[:, :5] = rng.normal(size=(6, 5))
    dusty = exact + 1e-9 * rng.normal(size=exact.shape)
    other = rng.normal(size=exact.shape)
    keep = np.ones(6, bool)
    assert np.allclose(spearman_per_sample(dusty, other, keep), spearman_per_sample(exact, other, keep))
    assert np.allclose(spearman_per_sample(dusty, exact, keep), 1.0)


def test_methods_that_agree_on_a_linear_model_get_the_same_sanity_verdict():
    """On an exactly linear model integrated gradients and shap_kernel agree to ~1e-8; the dust shap_kernel
    leaves on the seven ignored inputs once turned the verdict of one of them."""
    bundle = sparse_input_data(d=12)
    linear = fit_on_two_inputs(bundle, [])
    x = bundle.x_test[:16]
    checks = {}
    for method, options in (("integrated_gradients", {}), ("shap_kernel", {"nsamples": 64})):
        attr = explain.attribute(linear, x, None, method, **options)
        checks[method] = cascading_randomization(linear, x, attr, **options)
    ig, kernel = checks["integrated_gradients"], checks["shap_kernel"]
    assert ig["verdict"] == kernel["verdict"], (ig["reason"], kernel["reason"])
    assert kernel["seeds"] == pytest.approx(ig["seeds"], abs=1e-3)
    assert kernel["floor"] == pytest.approx(ig["floor"], abs=1e-3)


def test_lime_s_default_estimate_is_not_shrunk_against_a_high_sample_one(trained):
    """A fixed ridge alpha of 1 shrank each replicate of 64 perturbations alike (norm 0.93x a 16,000-sample
    estimate's on this model, the stated 95% bound covering none of 8 samples); the spread of the replicates
    cannot see a bias they share. A penalty in proportion to the samples keeps the default estimate unbiased."""
    model, bundle = trained
    x = bundle.x_test[:4]
    reference = explain.attribute(model, x, None, "lime", n_samples=2048, seed=99).values.reshape(4, -1)
    default = explain.attribute(model, x, None, "lime", seed=0).values.reshape(4, -1)
    ratio = np.linalg.norm(default, axis=1) / np.linalg.norm(reference, axis=1)
    assert 0.97 < np.median(ratio) < 1.03, ratio


# ---------------------------------------------------------------- infidelity


def test_infidelity_does_not_depend_on_a_feature_s_units(trained):
    """Rescaling one raw feature (and the model's statistics with it) leaves the model, its attributions and so
    its infidelity unchanged when the perturbations follow each input's spread (not one global std)."""
    model, bundle = trained
    x = bundle.x_test[:16]
    scale = np.ones(12, np.float32)
    scale[4] = 1e6
    mean, std = bundle.mean * scale, bundle.std * scale
    module = build_model("mlp", {"hidden": [16], "dropout": 0.0}, (12,), 3, mean, std)
    state = {k: v for k, v in model.module.state_dict().items() if "mean" not in k and "std" not in k}
    module.load_state_dict(state, strict=False)
    scaled = LoadedModel(module=module.eval(), spec=ModelSpec.from_dict(
        {**model.spec.to_dict(), "preprocessing": {"mean": mean.tolist(), "std": std.tolist()}}))
    a = explain.attribute(model, x, None, "integrated_gradients")
    b = explain.attribute(scaled, x * scale, None, "integrated_gradients")
    assert np.allclose(a.values, b.values, atol=1e-3)
    assert infidelity(scaled, x * scale, b) == pytest.approx(infidelity(model, x, a), rel=0.05)


# ---------------------------------------------------------------- reproduce command


@pytest.mark.slow
def test_the_report_s_reproduce_command_runs_from_another_directory(tmp_path):
    """Two toolkit processes (train, then the report's command from elsewhere): about a minute on a busy CPU."""
    from reports.collect import load_run
    from reports.sections import reproduce_command

    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    rows = ["a,b,c,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(60)]
    (work / "toy.csv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-m", "cli.main", "train", "toy.csv", "--model", "mlp", "--epochs", "1",
                            "--out", "run"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    command = reproduce_command(load_run(work / "run"))
    parts = shlex.split(command)
    assert parts[:3] == ["toolkit", "train", str((work / "toy.csv").resolve())]
    assert Path(parts[parts.index("--out") + 1]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = subprocess.run([sys.executable, "-m", "cli.main", *parts[1:]], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (Path(parts[parts.index("--out") + 1]) / "result.json").is_file()
    assert (work / "run" / "result.json").is_file(), "the original run is left as it was"


# ---------------------------------------------------------------- compression's drift guard


def _candidate(name: str, model: LoadedModel, p50: float):
    from compress.base import Variant

    m = {"within_budget": True, "slower_than_fp32": False, "flips": False, "latency_ms": {"b256_t1": {"p50": p50}},
         "size_bytes": 1000, "speedup": {"b256_t1": 2.0}, "size_ratio": 1.0, "accuracy": 0.99, "accuracy_drop": 0.0}
    return Variant(name=name, model=model, recipe={"method": name}, measurements=m)


def test_auto_never_chooses_a_candidate_whose_attributions_drifted(tmp_path):
    from compress.auto import baseline_variant, choose, drift_guard

    bundle = redundant_data(0)
    original = fit_mlp(bundle, 0, COPIES)
    moved = _candidate("moved", fit_mlp(bundle, 0, INFORMATIVE), p50=1.0)   # the fastest
    same = _candidate("same", original, p50=1.5)
    assert drift_guard(original, moved, bundle)["status"] == "drifted" and "drifted" in moved.notes[-1]
    assert drift_guard(original, same, bundle)["status"] == "kept" and not same.notes
    chosen, reason = choose(baseline_variant(original), [moved, same], 0.5)
    assert chosen is same and "excluded: attributions drifted (moved)" in reason
    exported = onnx_fp32(original, tmp_path / "fp32")          # an ONNX candidate not saved yet: only its bytes
    in_memory = _candidate("onnx-fp32", LoadedModel(module=None, spec=load_model(exported).spec), p50=1.2)
    in_memory.onnx_bytes = (exported / "model.onnx").read_bytes()
    assert drift_guard(original, in_memory, bundle)["status"] == "kept"
    allowed = _candidate("moved", moved.model, p50=1.0)
    assert drift_guard(original, allowed, bundle, max_drift=1.0)["status"] == "kept"
    assert choose(baseline_variant(original), [allowed, same], 0.5)[0] is allowed


def test_the_guard_checks_the_pick_and_then_the_next_pick_only():
    from compress.auto import baseline_variant, choose, guard_candidates

    bundle = redundant_data(0)
    original = fit_mlp(bundle, 0, COPIES)
    moved = _candidate("moved", fit_mlp(bundle, 0, INFORMATIVE), p50=1.0)   # the fastest, drifted
    same = _candidate("same", original, p50=1.5)
    slowest = _candidate("slowest", original, p50=2.0)
    baseline = baseline_variant(original)
    guard_candidates(original, [moved, same, slowest], bundle, {}, baseline, 0.5)
    assert moved.measurements["attribution_drift"]["status"] == "drifted"
    assert same.measurements["attribution_drift"]["status"] == "kept"
    assert "attribution_drift" not in slowest.measurements       # never the pick: never checked
    assert choose(baseline, [moved, same, slowest], 0.5)[0] is same
    off = _candidate("moved", moved.model, p50=1.0)
    guard_candidates(original, [off], bundle, {"drift_guard_on": False}, baseline, 0.5)
    assert "attribution_drift" not in off.measurements


def test_the_guard_attributes_the_original_once_for_every_candidate(monkeypatch):
    import explain
    import explain.compare as compare
    from compress.auto import drift_check

    bundle = redundant_data(0)
    original = fit_mlp(bundle, 0, COPIES)
    calls = []
    real = compare.original_attribution
    spy = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(compare, "original_attribution", spy)
    monkeypatch.setattr(explain, "original_attribution", spy, raising=False)   # the public name auto imports
    check = drift_check(original, bundle, {})
    moved = _candidate("moved", fit_mlp(bundle, 0, INFORMATIVE), p50=1.0)
    same = _candidate("same", original, p50=1.5)
    assert check(moved) and not check(same)
    assert len(calls) == 1
    assert moved.measurements["attribution_drift"]["status"] == "drifted"


def test_feature_ablation_in_segments_spreads_each_segment_s_effect_over_its_steps():
    """A long signal ablated in segments (the drift guard's setting): each segment's values sum to the model's
    change when that whole segment is set to the baseline, shared by |x - baseline|; far fewer model calls."""
    from explain.methods import attribute

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 300, 3))     # a user's module
    x = np.random.default_rng(0).normal(size=(3, 2, 300)).astype(np.float32)
    whole = attribute(model, x, 0, "feature_ablation", baseline=np.zeros((2, 300), np.float32))
    grouped = attribute(model, x, 0, "feature_ablation", baseline=np.zeros((2, 300), np.float32), patch=None)
    side = 5                                              # ceil(300 / 64): 60 segments over both channels
    segment = np.arange(300) // side
    for s in (0, 17, 59):
        steps = segment == s
        exact = whole.values[:, :, steps].sum(axis=(1, 2))  # a linear model: the segment's effect is the sum
        assert np.allclose(grouped.values[:, :, steps].sum(axis=(1, 2)), exact, rtol=1e-4, atol=1e-5)
        inside = grouped.values[0][:, steps] / np.abs(x[0][:, steps])
        assert np.allclose(inside, inside.flat[0], rtol=1e-3)    # shared in proportion to |x - baseline|
    assert not np.allclose(grouped.values, whole.values)


def test_the_quick_timing_measures_how_far_behind_against_a_leader_that_may_be_chosen(monkeypatch):
    """A leader whose attributions drifted is never chosen, so it must not cut the candidates behind it."""
    import compress.auto as auto

    bundle = redundant_data(0)
    original = fit_mlp(bundle, 0, COPIES)
    baseline = auto.baseline_variant(original)
    speed = {"fp32-torch": 1.0, "moved": 10.0, "same": 3.0, "slow": 2.5}   # x the original's speed, by name
    order: list[str] = []

    def timed(calls, x, config, cpu_clock):
        return [{"rounds": [30.0 / speed[name]] * 3} for name in order]

    monkeypatch.setattr(auto, "interleaved_rounds", timed)

    def candidates():
        made = [_candidate("moved", fit_mlp(bundle, 0, INFORMATIVE), 1.0), _candidate("same", original, 1.0),
                _candidate("slow", original, 1.0)]
        order[:] = ["fp32-torch", *(v.name for v in made)]
        return made

    unguarded = candidates()
    cut = auto.quick_latency(unguarded, baseline, bundle, auto.LatencyConfig())
    assert [v.name for v in unguarded] == ["moved"] and {c["name"] for c in cut} == {"same", "slow"}
    guarded = candidates()
    cut = auto.quick_latency(guarded, baseline, bundle, auto.LatencyConfig(),
                             auto.drift_check(original, bundle, {}))
    assert [v.name for v in guarded] == ["same", "slow"]
    assert [c["name"] for c in cut] == ["moved"] and "attributions drifted" in cut[0]["reason"]
    assert "attribution_drift" not in guarded[1].measurements       # only leaders are checked
    assert auto.drift_check(original, bundle, {"drift_guard_on": False}) is None


def test_a_failed_sanity_check_is_a_flag_with_its_reason(trained):
    model, bundle = trained
    result = explain.explain_model(model, bundle, methods=["saliency", "feature_ablation"], samples=8).to_dict()
    for method, q in result["quality"].items():
        failed = q["sanity"]["verdict"] not in ("separated", "inconclusive")   # inconclusive: said, not flagged
        assert q["flagged"] == failed
        assert any(flag.startswith(f"{method}: sanity check FAILED: {q['sanity']['verdict']}")
                   for flag in result["flags"]) == failed


def test_explain_results_of_versions_2_to_5_are_read(trained):
    from trainers.errors import ToolkitError
    from trainers.schema import (
        AttributionRunV2,
        AttributionRunV3,
        ExplainResultFile,
        ExplainResultFileV2,
        ExplainResultFileV3,
        ExplainResultFileV4,
        QualityV2,
        ExplainResultFileV5,
        QualityV4,
        QualityV5,
        SanityCheckV3,
        parse_result,
    )

    model, bundle = trained
    current = explain.explain_model(model, bundle, methods=["saliency"], samples=4).to_dict()
    assert isinstance(parse_result(current, "r", "explain"), ExplainResultFile) and current["schema_version"] == 6
    assert {r["target"] for r in current["runs"]} == {"predicted class"}
    assert all(q["faithfulness"]["verdict"] in ("better", "inconclusive", "no better")
               for q in current["quality"].values())

    def older(newer: dict, version: int, fields) -> dict:
        """`newer` as a file of `version`, its quality records holding only that version's fields."""
        old = {**json.loads(json.dumps(newer)), "schema_version": version}
        old["quality"] = {m: {k: v for k, v in q.items() if k in fields} for m, q in old["quality"].items()}
        return old

    v5 = older(current, 5, QualityV5.model_fields)
    assert isinstance(parse_result(v5, "r", "explain"), ExplainResultFileV5)
    with pytest.raises(ToolkitError, match="faithfulness: unknown field"):
        parse_result({**v5, "quality": current["quality"]}, "r", "explain")
    v4 = older(v5, 4, QualityV4.model_fields)
    assert isinstance(parse_result(v4, "r", "explain"), ExplainResultFileV4)
    with pytest.raises(ToolkitError, match="noise_floor_cosine: unknown field"):
        parse_result({**v4, "quality": v5["quality"]}, "r", "explain")
    v3 = json.loads(json.dumps(v4))
    v3["schema_version"] = 3
    v3["runs"] = [{k: v for k, v in r.items() if k in AttributionRunV3.model_fields} for r in current["runs"]]
    for q in v3["quality"].values():
        if q.get("sanity"):
            q["sanity"] = {k: v for k, v in q["sanity"].items() if k in SanityCheckV3.model_fields}
            q["sanity"]["verdict"] = "separated" if q["sanity"]["verdict"] == "inconclusive" else q["sanity"]["verdict"]
    assert isinstance(parse_result(v3, "r", "explain"), ExplainResultFileV3)
    with pytest.raises(ToolkitError, match="target: unknown field"):
        parse_result({**v3, "runs": current["runs"]}, "r", "explain")
    older = {k: v for k, v in current.items() if k != "relations"}
    older["schema_version"] = 2
    older["quality"] = {m: {k: v for k, v in q.items() if k in QualityV2.model_fields}  # version-3 fields go
                        for m, q in current["quality"].items()}
    older["runs"] = [{k: v for k, v in r.items() if k in AttributionRunV2.model_fields} for r in current["runs"]]
    assert isinstance(parse_result(older, "r", "explain"), ExplainResultFileV2)
    with pytest.raises(ToolkitError, match="relations: unknown field"):
        parse_result({**older, "relations": {}}, "r", "explain")


def test_the_original_compared_with_itself_is_said_to_be_the_original(tmp_path):
    """The same artifact directory, a copy of it (same weights checksum), the same LoadedModel or nn.Module: the
    original itself, not a separately trained model of the same data; another model of that data stays so."""
    import shutil

    bundle = redundant_data(0)
    model = fit_mlp(bundle, 0, COPIES, steps=5)
    path = save_model(model, tmp_path / "original")
    shutil.copytree(path, tmp_path / "copy")
    for a, b, why in [(load_model(path), load_model(path), "same artifact directory"),
                      (load_model(path), load_model(tmp_path / "copy"), "same weights file checksum"),
                      (model, model, "same model object")]:
        kind, reason = relation(a, b)
        assert kind == "derived" and reason.startswith("the original itself") and why in reason
    other = fit_mlp(bundle, 1, COPIES, steps=5)
    assert relation(model, other)[0] == "same data" and "not derived" in relation(model, other)[1]
    result = explain.explain_model(model.module, bundle, methods=["saliency"], compare=[model.module],
                                   samples=3).to_dict()
    [compared] = result["relations"].values()
    assert compared == {"relation": "derived", "reason": "the original itself (the same model object)"}


def test_sanity_and_noise_floor_re_runs_cost_no_more_than_the_attribution(trained, monkeypatch):
    """A re-initialised model's maps never reach shapley's tolerance: its re-runs are capped at the model rows
    the attribution itself took (before, each ran to the method's cap: 132 s against 10.7 s on small images)."""
    from explain import quality, sanity
    from explain.methods import attribute

    model, bundle = trained
    x = bundle.x_test[:6]
    attr = attribute(model, x, None, "shapley")
    most = int(np.max(attr.steps))
    assert quality.effort_cap(attr, {}) == {"max_evaluations": most}
    assert quality.effort_cap(attr, {"n_permutations": 8}) == {}  # a fixed effort asked for is kept
    seen = []

    def spy(*args, **options):
        seen.append(options.get("max_evaluations"))
        return attribute(*args, **options)

    monkeypatch.setattr(sanity, "attribute", spy)
    monkeypatch.setattr(quality, "attribute", spy)
    quality.assess(model, x, attr)
    reruns = [v for v in seen if v is not None]
    assert len(reruns) >= sanity.SEEDS and set(reruns) == {most}


def _edited(model: LoadedModel, edit) -> LoadedModel:
    """A copy of `model` whose first Linear layer's weight (out, in) is changed by `edit`."""
    import copy

    module = copy.deepcopy(model.module)
    first = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        edit(first.weight)
    return LoadedModel(module=module.eval(), spec=model.spec)


def test_drift_catches_a_dropped_top_input_and_two_inputs_trading_roles_but_not_a_copy():
    """Ground truth the top-k overlap alone missed: a variant blind to the original's top input keeps most of the
    top-k set (one member of k), and two inputs trading roles keep all of it. The share test and the cosine
    test call both drifted, naming why; exact copies (two modules of one class, named apart) are kept."""
    import copy

    bundle = redundant_data(0)
    original = fit_mlp(bundle, 0, COPIES)
    dropped = _edited(original, lambda w: w[:, 0].zero_())
    swapped = _edited(original, lambda w: w.copy_(w[:, [2, 1, 0, *range(3, 12)]]))
    copies = [copy.deepcopy(original.module), copy.deepcopy(original.module)]
    result = explain.explain_model(original, bundle, methods=["integrated_gradients"], samples=48,
                                   compare=[dropped, swapped, *copies]).to_dict()
    rows = {r["variant"]: r for r in result["drift"]["rows"]}
    name = type(original.module).__name__
    assert sorted(rows) == sorted(["variant0", "variant1", name, f"{name}-2"])
    assert rows["variant0"]["status"] == "drifted" and any("x0's share" in d for d in rows["variant0"]["decided_by"])
    assert rows["variant0"]["top_features"][0]["share_ratio_hi"] < 0.5
    assert rows["variant1"]["status"] == "drifted" and any(d.startswith("cosine") for d in rows["variant1"]["decided_by"])
    assert rows["variant1"]["changed_predictions"] > 0.2 and "predicts another class" in rows["variant1"]["verdict"]
    for copy_name in (name, f"{name}-2"):
        assert rows[copy_name]["status"] == "kept" and rows[copy_name]["cosine"] == pytest.approx(1.0, abs=1e-4)
        assert rows[copy_name]["changed_predictions"] == 0 and rows[copy_name]["decided_by"] == []


def test_a_module_copy_of_a_cnn_is_attributed_from_the_original_s_baseline():
    """A toolkit CNN's baseline is its training mean per channel; the same network given as a module would get the
    per-pixel mean of the training rows. Both are attributed from the original's, or the copy 'drifts'."""
    import copy

    bundle = load_data("digits")
    torch.manual_seed(0)
    module = build_model("cnn", {"channels": [8], "hidden": [16]}, bundle.input_shape, bundle.num_classes,
                         bundle.mean, bundle.std).eval()
    spec = ModelSpec(family="cnn", config={"channels": [8], "hidden": [16]}, input_shape=list(bundle.input_shape),
                     layout=bundle.layout, class_names=bundle.class_names,
                     preprocessing={"mean": np.asarray(bundle.mean).tolist(), "std": np.asarray(bundle.std).tolist()})
    original = LoadedModel(module=module, spec=spec)
    result = explain.explain_model(original, bundle, methods=["integrated_gradients"], samples=16,
                                   compare=[copy.deepcopy(module)]).to_dict()
    [row] = result["drift"]["rows"]
    assert row["status"] == "kept" and row["cosine"] == pytest.approx(1.0, abs=1e-3), row["verdict"]
    assert {r["baseline"] for r in result["runs"]} == {"training mean"}


def test_a_variant_of_a_model_since_replaced_at_the_same_path_is_not_derived_from_it(tmp_path):
    """Lineage names its parent by path and by its file's checksum: `train --overwrite` at the parent's path
    makes another model there, which its old variants were not compressed from."""
    import shutil

    from compress import compress_model

    bundle = redundant_data(0)
    first = save_model(fit_mlp(bundle, 0, COPIES, steps=5), tmp_path / "model")
    compress_model(load_model(first), bundle, methods=["onnx-fp32"], out=tmp_path / "c")
    variant = load_model(tmp_path / "c" / "variants" / "onnx-fp32")
    assert variant.spec.lineage["parent_sha256"] == load_model(first).spec.weights["sha256"]
    assert relation(load_model(first), variant)[0] == "derived"
    shutil.rmtree(first)
    save_model(fit_mlp(bundle, 1, COPIES, steps=5), tmp_path / "model")      # another model at the same path
    kind, why = relation(load_model(tmp_path / "model"), variant)
    assert kind == "same data" and why.startswith("compressed from an earlier model at"), why


def test_named_methods_pass_their_pick_through_the_drift_guard(monkeypatch):
    """The drift guard is not auto's alone: a run of named methods checks its pick too (a distilled LSTM student
    whose attributions had moved was chosen by `--method ... --method distill`)."""
    import compress
    import compress.auto as auto

    bundle = redundant_data(0)
    original = fit_mlp(bundle, 0, COPIES)
    seen = []
    monkeypatch.setattr(auto, "guard_candidates", lambda *a, **k: seen.append(a[3]))
    compress.compress_model(original, bundle, methods=["onnx-fp32"])
    assert seen == [{}]                 # auto's guard settings, at their defaults
