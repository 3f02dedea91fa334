"""Estimators with error bars: Shapley standard errors and adaptive sampling, adaptive integrated gradients,
LIME's interpretable representations, and the explain result schema that carries them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import explain
from explain.lime import interpretable_features
from explain.quality import completeness_errors
from explain.shapley import shapley_estimate
from trainers.artifact import LoadedModel, ModelSpec
from trainers.errors import ToolkitError
from trainers.schema import ExplainResultFile, ExplainResultFileV2, parse_result

D = 12


def quadratic_game(seed: int = 0):
    """f(x) = (w . x)^2 against a zero baseline: the Shapley value of feature i is exactly a_i * sum(a), a = w * x."""
    w = np.random.default_rng(seed).normal(size=D)

    def forward(rows):
        s = rows.reshape(len(rows), -1) @ w
        return np.stack([s ** 2, np.zeros_like(s)], 1).astype(np.float32)

    def exact(x):
        a = x * w
        return a * a.sum(1, keepdims=True)

    return forward, exact


def interacting_game(seed: int = 0):
    """A game with interactions of every order (tanh of a linear map plus products): no closed form."""
    rng = np.random.default_rng(seed)
    w, v = rng.normal(size=(3, D)), rng.normal(size=D)

    def forward(rows):
        r = rows.reshape(len(rows), -1).astype(np.float64)
        return (np.tanh(r @ w.T) + (r[:, :4].prod(1) + np.sin(r @ v))[:, None]).astype(np.float32)

    return forward


def inputs(n=16, seed=1):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def relative_error(values, reference):
    return np.linalg.norm(values - reference, axis=1) / np.linalg.norm(reference, axis=1)


# ---------------------------------------------------------------- shapley


def test_standard_error_shrinks_with_more_permutations():
    forward, x, base = interacting_game(), inputs(), np.zeros(D, np.float32)
    targets = np.zeros(len(x), int)
    few = shapley_estimate(forward, x, targets, base, n_permutations=16, seed=0)
    many = shapley_estimate(forward, x, targets, base, n_permutations=256, seed=0)
    ratio = np.linalg.norm(few.standard_error, axis=1) / np.linalg.norm(many.standard_error, axis=1)
    assert 2.5 < np.median(ratio) < 6.5          # 1/sqrt(permutations): 4x fewer errors with 16x more
    assert (many.error_bound < few.error_bound).mean() > 0.8
    assert np.allclose(many.values.sum(1), forward(x)[:, 0] - forward(base[None])[0, 0], atol=1e-4)


def test_antithetic_pairs_remove_the_variance_of_a_second_order_game():
    forward, exact = quadratic_game()
    x, base = inputs(), np.zeros(D, np.float32)
    targets = np.zeros(len(x), int)
    truth = exact(x)
    paired = shapley_estimate(forward, x, targets, base, n_permutations=16, seed=3)
    plain = shapley_estimate(forward, x, targets, base, n_permutations=16, seed=3, antithetic=False)
    assert relative_error(paired.values, truth).max() < 1e-4       # a permutation and its reverse average to phi
    assert relative_error(plain.values, truth).mean() > 0.02
    assert np.abs(paired.standard_error).max() < 1e-3 < np.abs(plain.standard_error).max()


def test_adaptive_sampling_meets_its_tolerance_and_its_bound_covers_the_error():
    forward, x, base = interacting_game(), inputs(24), np.zeros(D, np.float32)
    targets = np.zeros(len(x), int)
    reference = shapley_estimate(forward, x, targets, base, n_permutations=4000, seed=99).values
    loose = shapley_estimate(forward, x, targets, base, tolerance=0.3, seed=0)
    tight = shapley_estimate(forward, x, targets, base, tolerance=0.1, seed=0)
    for est, tolerance in ((loose, 0.3), (tight, 0.1)):
        assert (est.error_bound[est.converged] <= tolerance).all()
        assert (est.converged == (est.error_bound <= tolerance)).all()
        covered = relative_error(est.values, reference) <= est.error_bound
        assert covered.mean() >= 0.8, covered.mean()
    assert tight.evaluations.sum() > 1.5 * loose.evaluations.sum() and loose.converged.mean() > 0.8
    assert relative_error(tight.values, reference).mean() < relative_error(loose.values, reference).mean()
    capped = shapley_estimate(forward, x, targets, base, tolerance=0.001, max_evaluations=40 * (D - 1), seed=0)
    assert (capped.evaluations <= 2 + 40 * (D - 1)).all() and not capped.converged.any()


def test_error_bound_from_correlated_draws_keeps_its_confidence_where_the_diagonal_form_does_not():
    """Draws whose values share one strong common factor (as a sample's Shapley values do: every walk sums to the
    same total): the full-covariance bound covers the true error at about its 95%, the diagonal one far less."""
    from explain.shapley import draws_error_bound, relative_error_bound

    rng = np.random.default_rng(0)
    g, k, trials = 20, 8, 400
    mean = rng.normal(size=g) * 3.0
    chol = np.linalg.cholesky(0.05 * np.eye(g) + 0.95 * np.ones((g, g)))
    draws = [mean + rng.normal(size=(k, g)) @ chol.T for _ in range(trials)]
    estimates = np.stack([d.mean(0) for d in draws])
    error = np.linalg.norm(estimates - mean, axis=1) / np.linalg.norm(estimates, axis=1)
    full = draws_error_bound(draws, estimates)
    se = np.stack([d.std(0, ddof=1) for d in draws]) / np.sqrt(k)
    diagonal = relative_error_bound(estimates, se, variance_dof=np.full(trials, k - 1))
    assert 0.9 <= (error <= full).mean() <= 0.995
    assert (error <= diagonal).mean() < 0.85


def test_replicates_error_bound_reads_their_full_covariance_and_keeps_its_confidence():
    """A library's estimator run as 4 replicates whose values share one strong common factor (a sample's values
    sum to one total): the relative error bound covers the true error at about 95%, where the per-value
    (diagonal) form covered 0.74 here and 0.89-0.93 on shapley_sampling against exact values."""
    from explain.library import _replicated

    rng = np.random.default_rng(0)
    g, n = 20, 1000
    truth = rng.normal(size=(n, g)) * 3.0
    chol = np.linalg.cholesky(0.05 * np.eye(g) + 0.95 * np.ones((g, g)))
    values, estimate = _replicated(lambda r, k: truth + rng.normal(size=(n, g)) @ chol.T / np.sqrt(k), 16)
    error = np.linalg.norm(values - truth, axis=1) / np.linalg.norm(values, axis=1)
    assert (estimate["error_dof"] == 3).all()
    assert 0.92 <= (error <= estimate["error_bound"]).mean() <= 0.99


def test_black_box_passes_run_in_an_onnx_runtime_twin_that_matches_pytorch(iris_model):
    from explain.methods import COMPILE_ROWS, Context, default_baseline

    rows = np.random.default_rng(0).normal(size=(COMPILE_ROWS + 44, 4)).astype(np.float32)
    ctx = Context(iris_model, "torch", default_baseline(iris_model.spec), None, 0)
    small = ctx.forward_numpy(rows[:3])
    assert ctx._session is None                                  # a small pass is not worth an export
    out = ctx.forward_numpy(rows)
    assert ctx._session is not None and ctx._session is not False
    with torch.inference_mode():
        want = iris_model.module(torch.as_tensor(rows)).numpy()
    assert np.allclose(out, want, rtol=1e-4, atol=1e-5) and np.allclose(small, want[:3], rtol=1e-4, atol=1e-5)


def test_a_module_whose_export_does_not_match_keeps_running_in_pytorch(iris_model):
    from explain.methods import COMPILE_ROWS, Context, default_baseline

    class ThroughNumpy(nn.Module):
        """A forward that leaves torch (traced, its output would be a constant)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.as_tensor(x.detach().numpy() * 1.0))

    model = LoadedModel(module=ThroughNumpy(iris_model.module).eval(), spec=iris_model.spec)
    rows = np.random.default_rng(1).normal(size=(COMPILE_ROWS, 4)).astype(np.float32)
    ctx = Context(model, "torch", default_baseline(model.spec), None, 0)
    out = ctx.forward_numpy(rows)
    assert ctx._session is False
    with torch.inference_mode():
        assert np.allclose(out, iris_model.module(torch.as_tensor(rows)).numpy(), atol=1e-6)


def test_shapley_method_reports_error_bars_and_unconverged_samples(iris_model):
    x = iris_model_inputs()
    attr = explain.attribute(iris_model, x, None, "shapley", tolerance=0.001, max_evaluations=100)
    assert attr.standard_error.shape == x.shape and attr.error_bound.shape == (len(x),)
    assert attr.tolerance == 0.001 and attr.converged is not None and attr.steps.max() <= 100
    quality = explain.assess(iris_model, x, attr, sanity=False, fidelity=False)
    assert quality["estimated_error"] == pytest.approx(float(np.median(attr.error_bound)))
    assert quality["unconverged"] == int((~attr.converged).sum()) > 0
    assert any(v.startswith("estimated error") for v in quality["verdicts"])
    assert not any(v.startswith("completeness") for v in quality["verdicts"])


@pytest.mark.parametrize("method, options", [("gradient_shap", {}), ("shapley_sampling", {"n_samples": 8}),
                                             ("shap_gradient", {"nsamples": 8})])
def test_sampled_library_methods_report_a_standard_error(iris_model, method, options):
    x = iris_model_inputs()
    attr = explain.attribute(iris_model, x, None, method, background=x, **options)
    assert attr.standard_error.shape == x.shape and np.isfinite(attr.error_bound).all()
    assert (attr.standard_error > 0).any()


def exact_shapley(net, x, targets, baseline):
    """Shapley values of a module's target logit by enumerating all 2^d coalitions (d small)."""
    import itertools
    from math import factorial

    d = x.shape[1]
    coalitions = np.array(list(itertools.product([0.0, 1.0], repeat=d)), np.float32)
    size = coalitions.sum(1).astype(int)
    index = {tuple(c): k for k, c in enumerate(coalitions)}
    out = np.zeros(x.shape)
    for i, row in enumerate(x):
        with torch.no_grad():
            value = net(torch.as_tensor(baseline + coalitions * (row - baseline))).numpy()[:, targets[i]]
        for j in range(d):
            without = coalitions[:, j] == 0
            with_j = coalitions[without].copy()
            with_j[:, j] = 1
            gain = value[[index[tuple(c)] for c in with_j]] - value[without]
            weight = [factorial(k) * factorial(d - k - 1) / factorial(d) for k in size[without]]
            out[i, j] = float(np.dot(weight, gain))
    return out


def test_per_value_intervals_read_student_t_on_the_draws_and_cover_the_exact_values():
    """`Attribution.interval()`: values -/+ t(dof) x standard error; on a nonlinear 6-input network with exact
    Shapley values by enumeration, 16 permutations (8 pairs: 7 degrees of freedom) cover at least 0.9 over five
    seeds, more than the normal quantile's 1.96 does."""
    from scipy.stats import t

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = (np.random.default_rng(1).normal(size=(30, 6)) * 1.5).astype(np.float32)
    baseline = np.zeros(6, np.float32)
    with torch.no_grad():
        targets = net(torch.as_tensor(x)).argmax(1).numpy()
    exact = exact_shapley(net, x, targets, baseline)
    t_hits = normal_hits = total = 0
    for seed in range(5):
        attr = explain.attribute(net, x, targets, "shapley", baseline=baseline, n_permutations=16, seed=seed)
        assert (attr.error_dof == 7).all()
        lo, hi = attr.interval()
        se = attr.standard_error.astype(np.float64)
        assert np.allclose(hi - attr.values, t.ppf(0.975, 7) * se, rtol=1e-5, atol=1e-7)
        sampled = se > 1e-9
        t_hits += ((exact >= lo - 1e-6) & (exact <= hi + 1e-6) & sampled).sum()
        normal_hits += ((np.abs(attr.values - exact) <= 1.96 * se) & sampled).sum()
        total += sampled.sum()
    assert t_hits / total >= 0.9 and t_hits > normal_hits
    narrow, wide = attr.interval(0.5), attr.interval(0.99)
    assert ((wide[1] - wide[0]) >= (narrow[1] - narrow[0])).all()


def test_one_antithetic_pair_claims_no_error_bar():
    """n_permutations 1 or 2 walk one antithetic pair: one draw estimates no variance, so no standard error,
    bound or interval is reported (a zero error claimed exact values that were 1-7% off), while 4 permutations
    (two pairs) give a positive bound."""
    forward, x, base = interacting_game(), inputs(6), np.zeros(D, np.float32)
    one = shapley_estimate(forward, x, np.zeros(len(x), int), base, n_permutations=2, seed=0)
    assert np.isnan(one.standard_error).all() and np.isinf(one.error_bound).all()
    net = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    for n in (1, 2):
        attr = explain.attribute(net, x, None, "shapley", baseline=base, n_permutations=n)
        assert attr.standard_error is None and attr.error_bound is None and attr.error_dof is None
        with pytest.raises(ValueError, match="no standard errors"):
            attr.interval()
    two = explain.attribute(net, x, None, "shapley", baseline=base, n_permutations=4)
    assert (two.error_bound > 0).all() and (two.error_dof == 1).all()


def test_replicated_library_methods_have_their_replicates_degrees_of_freedom(iris_model):
    x = iris_model_inputs()
    attr = explain.attribute(iris_model, x, None, "shapley_sampling", background=x, n_samples=8)
    assert (attr.error_dof == 3).all()                 # four replicates
    lo, hi = attr.interval()
    assert (lo <= attr.values).all() and (hi >= attr.values).all()
    with pytest.raises(ValueError, match="no standard errors"):
        explain.attribute(iris_model, x, None, "saliency").interval()
    with pytest.raises(ValueError, match="between 0 and 1"):
        attr.interval(1.5)


# ---------------------------------------------------------------- integrated gradients


class Steep(nn.Module):
    """A logit that rises sharply along the path from 0 to x: the integral needs many steps."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        s = self.scale * x.sum(1, keepdim=True)
        return torch.cat([8 * torch.sigmoid(40 * (s - 1.3)) + s, torch.zeros_like(s)], 1)


def steep_model() -> LoadedModel:
    spec = ModelSpec(family="mlp", config={"hidden": []}, input_shape=[4], layout="features",
                     class_names=["a", "b"], preprocessing={"mean": [0.0] * 4, "std": [1.0] * 4})
    return LoadedModel(module=Steep().eval(), spec=spec)


def test_adaptive_integrated_gradients_converge_where_32_steps_do_not():
    model = steep_model()
    x = np.linspace(0.36, 0.42, 12, dtype=np.float32)[:, None].repeat(4, 1) + 0.01 * np.arange(4, dtype=np.float32)
    fixed = explain.attribute(model, x, 0, "integrated_gradients", n_steps=32)
    assert (completeness_errors(model, x, fixed) > 0.01).any()
    adaptive = explain.attribute(model, x, 0, "integrated_gradients")
    assert adaptive.converged.all() and adaptive.steps.max() > 32 and adaptive.tolerance == 0.01
    assert (completeness_errors(model, x, adaptive) <= 0.01).all()
    few = explain.attribute(model, x, 0, "integrated_gradients", max_steps=32)
    quality = explain.assess(model, x, few, sanity=False, fidelity=False)
    assert quality["unconverged"] == int((~few.converged).sum()) > 0
    assert "after 32 steps" in " ".join(quality["verdicts"])
    assert adaptive.summary()["steps_mean"] > 32


# ---------------------------------------------------------------- LIME


def spec_of(shape, table=None, names=None):
    pre = {"mean": [0.0], "std": [1.0]}
    if table:
        pre["table"] = table
    layout = {1: "features", 2: "signal", 3: "image"}[len(shape)]
    return ModelSpec(family="cnn" if len(shape) > 1 else "mlp", config={}, input_shape=list(shape), layout=layout,
                     class_names=["a", "b"], feature_names=names, preprocessing=pre)


def test_lime_interpretable_features_per_layout():
    assert (interpretable_features(spec_of((5,))) == np.arange(5)).all()
    names = ["age", "colour=red", "colour=blue", "colour_missing", "size"]
    table = {"groups": {"colour=red": "colour", "colour=blue": "colour", "colour_missing": "colour"}}
    assert interpretable_features(spec_of((5,), table, names)).tolist() == [0, 1, 1, 1, 2]
    signal = interpretable_features(spec_of((3, 40)))
    assert signal.shape == (3, 40) and len(np.unique(signal)) == 16 and (signal[0] == signal[2]).all()
    assert (np.diff(signal[0]) >= 0).all()                       # contiguous segments along time
    image = interpretable_features(spec_of((3, 28, 28)))
    assert len(np.unique(image)) == 64 and np.bincount(image[0].ravel()).min() >= 9
    assert len(np.unique(interpretable_features(spec_of((1, 8, 8))))) == 64


@pytest.mark.parametrize("shape", [(6,), (2, 32), (1, 16, 16)])
def test_lime_attributes_each_interpretable_feature(shape):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 3)).eval()
    spec = spec_of(shape)
    spec = ModelSpec.from_dict({**spec.to_dict(), "class_names": ["a", "b", "c"]})
    model = LoadedModel(module=module, spec=spec)
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    attr = explain.attribute(model, x, None, "lime")
    assert attr.values.shape == x.shape and attr.standard_error.shape == x.shape
    mask = interpretable_features(spec)
    for sample in attr.values:                                  # one value per interpretable feature
        for feature in np.unique(mask):
            assert np.ptp(sample[mask == feature]) < 1e-6
    assert explain.get_method("lime").sampled and "lime" in explain.list_methods("lstm")


# ---------------------------------------------------------------- schema


def test_explain_schema_6_round_trips_and_earlier_versions_are_read(tmp_path):
    from fake_runs import write_explain
    from trainers.schema import QualityV2

    write_explain(tmp_path)
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["schema_version"] == 6
    q = next(iter(written["quality"].values()))
    q.update(estimated_error=0.04, estimated_error_max=0.09, standard_error=0.02, unconverged=3, tolerance=0.1,
             completeness_error_max=0.0, completeness_over_tolerance=0.0)
    written["runs"][0]["steps_mean"] = 410.5
    result = parse_result(written, "v4")
    assert isinstance(result, ExplainResultFile) and result.dump() == written
    older = json.loads(json.dumps(written))
    older["schema_version"] = 2
    older.pop("relations", None)
    for q in older["quality"].values():  # every version-3 field goes, the error bars among them
        for key in set(q) - set(QualityV2.model_fields):
            q.pop(key)
    for run in older["runs"]:
        run.pop("steps_mean")
        run.pop("target", None)
    assert isinstance(parse_result(older, "v2"), ExplainResultFileV2)
    older["runs"][0]["steps_mean"] = 1.0
    with pytest.raises(ToolkitError, match="steps_mean: unknown field"):
        parse_result(older, "v2")


def test_explain_stage_writes_error_bars_and_convergence(iris_model, iris, tmp_path):
    from trainers.schema import read_result

    result = explain.explain_model(iris_model, iris, methods=["shapley", "integrated_gradients", "lime"], samples=6,
                                   out=tmp_path / "run")
    written = read_result(tmp_path / "run" / "result.json", "explain")
    assert isinstance(written, ExplainResultFile) and written.schema_version == 6
    shapley, ig, lime = (written.quality[m] for m in ("shapley", "integrated_gradients", "lime"))
    assert shapley.estimated_error is not None and shapley.unconverged is not None and shapley.tolerance == 0.1
    assert shapley.verdicts[0].startswith("estimated error")
    assert ig.estimated_error is None and ig.unconverged is not None and ig.completeness_over_tolerance is not None
    assert lime.estimated_error is not None and lime.unconverged is None
    runs = {r.method: r for r in written.runs}
    assert runs["integrated_gradients"].steps_mean >= 32 and runs["lime"].steps_mean is None
    assert result.summary["quality"]["shapley"]["estimated_error"] == shapley.estimated_error


# ---------------------------------------------------------------- fixtures


def iris_model_inputs():
    from trainers.data import load_data

    return load_data("iris", seed=0).x_test[:6]


@pytest.fixture(scope="module")
def iris_model():
    from trainers import build_model
    from trainers.data import load_data

    bundle = load_data("iris", seed=0)
    torch.manual_seed(0)
    module = build_model("mlp", {"hidden": [16]}, bundle.input_shape, bundle.num_classes, bundle.mean, bundle.std)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(bundle.x_train), torch.as_tensor(bundle.y_train)
    for _ in range(60):
        loss = nn.functional.cross_entropy(module(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spec = ModelSpec(family="mlp", config={"hidden": [16]}, input_shape=list(bundle.input_shape), layout="features",
                     class_names=bundle.class_names, preprocessing={"mean": bundle.mean.tolist(),
                                                                    "std": bundle.std.tolist()})
    return LoadedModel(module=module.eval(), spec=spec)


def test_shapley_attributes_large_images_by_patches_and_keeps_completeness():
    """On a 20x20 image, 400 pixels as players cost 399 model rows a permutation; 3x3-pixel patches (49 players)
    cost 48, and the values still add up to f(x) - f(baseline), each patch's spread by |x - baseline|."""
    from explain.library import image_patches

    assert image_patches((1, 16, 16), None) is None and image_patches((3, 8, 8), 2).max() == 15
    groups = image_patches((1, 20, 20), None)
    assert groups.max() + 1 == 49 and (groups[0, :3, :3] == 0).all() and groups[0, 0, 3] == 1
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 400, 3)).eval()
    x = np.random.default_rng(0).normal(size=(3, 1, 20, 20)).astype(np.float32)
    spec = ModelSpec(family="custom", config={}, input_shape=[1, 20, 20], layout="image", class_names=["a", "b", "c"],
                     preprocessing={})
    model = LoadedModel(module=net, spec=spec)
    patched = explain.attribute(model, x, None, "shapley", n_permutations=8, baseline=np.zeros((1, 20, 20)))
    pixels = explain.attribute(model, x, None, "shapley", n_permutations=8, baseline=np.zeros((1, 20, 20)), patch=1)
    assert patched.steps.max() < pixels.steps.max() / 7
    with torch.no_grad():
        out = net(torch.as_tensor(x)).numpy()[np.arange(3), patched.targets]
        base = net(torch.zeros(1, 1, 20, 20)).numpy()[0, patched.targets]
    np.testing.assert_allclose(patched.values.reshape(3, -1).sum(1), out - base, rtol=1e-4, atol=1e-4)
    share = patched.values[0, 0, :3, :3] / np.abs(x[0, 0, :3, :3])
    np.testing.assert_allclose(share, share.flat[0], rtol=1e-3)     # one patch: in proportion to |x - 0|


def test_shapley_attributes_long_signals_by_segments():
    """A (3, 500) signal: 1,500 elements as players made the default explain run for over 10 minutes; 8-step
    segments across the channels (63 players) keep completeness."""
    from explain.library import image_patches

    assert image_patches((3, 256), None) is None
    groups = image_patches((3, 500), None)
    assert groups.max() + 1 == 63 and (groups[:, :8] == 0).all() and (groups[:, 8] == 1).all()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 500, 3)).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 500)).astype(np.float32)
    spec = ModelSpec(family="custom", config={}, input_shape=[3, 500], layout="signal", class_names=["a", "b", "c"],
                     preprocessing={})
    attr = explain.attribute(LoadedModel(module=net, spec=spec), x, None, "shapley", n_permutations=4,
                             baseline=np.zeros((3, 500)))
    assert attr.steps.max() <= 2 + 2 * 62 * 2
    with torch.no_grad():
        gap = net(torch.as_tensor(x)).numpy()[np.arange(2), attr.targets] - net(torch.zeros(1, 3, 500)).numpy()[0,
                                                                                                       attr.targets]
    np.testing.assert_allclose(attr.values.reshape(2, -1).sum(1), gap, rtol=1e-4, atol=1e-4)


def _counted(monkeypatch, cls):
    """Count the calls of a shap explainer's `gradient` (one per sample and explained output and batch)."""
    calls = []
    original = cls.gradient

    def spy(self, idx, inputs):
        calls.append(int(idx))
        return original(self, idx, inputs)
    monkeypatch.setattr(cls, "gradient", spy)
    return calls


def test_shap_deep_explains_each_samples_target_class_alone(monkeypatch):
    """shap explained all the classes and the toolkit kept one (10x the work on digits): now one output per sample
    is explained, and the values are those of shap's all-class call at each sample's target."""
    import shap
    from shap.explainers._deep.deep_pytorch import PyTorchDeep

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    baseline = x.mean(0)
    targets = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    calls = _counted(monkeypatch, PyTorchDeep)
    attr = explain.attribute(net, x, targets, "shap_deep", baseline=baseline)
    assert len(calls) == len(x) and set(calls) == {0}
    full = shap.DeepExplainer(net, torch.as_tensor(baseline[None])).shap_values(torch.as_tensor(x))
    expected = np.stack([full[i, :, t] for i, t in enumerate(targets)])
    np.testing.assert_allclose(attr.values, expected, rtol=1e-6, atol=1e-7)
    assert not any(hasattr(m, "x") or hasattr(m, "y") for m in net.modules())


def test_shap_gradient_explains_each_samples_target_class_alone(monkeypatch):
    """As shap_deep: one output per sample and batch; on a linear model with one background row the expected
    gradients are exact, w_t * (x - b), whichever draws the explainer makes."""
    from shap.explainers._gradient import _PyTorchGradient

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5)).eval()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    background = x[:1]
    targets = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    calls = _counted(monkeypatch, _PyTorchGradient)
    attr = explain.attribute(net, x, targets, "shap_gradient", background=background, nsamples=8)
    assert len(calls) == 4 * len(x) and set(calls) == {0}     # 4 replicates of 2 samples, one batch each
    w = net[0].weight.detach().numpy()
    np.testing.assert_allclose(attr.values, w[targets] * (x - background), rtol=1e-5, atol=1e-6)


def test_shapley_passes_are_sized_by_the_inputs_elements():
    """The estimator ran 1,024 rows a pass whatever the input (2.24 GB for 4 samples of 1x64x64 through a CNN):
    a 64x64 image now gets passes of at most `rows_per_pass(4096)` rows with the same values, a small input 1,024."""
    from explain.library import image_patches
    from explain.shapley import ROWS_PER_PASS, rows_per_pass

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4096, 3)).astype(np.float32)
    sizes = []

    def forward(rows):
        sizes.append(len(rows))
        return np.tanh(rows.reshape(len(rows), -1) @ w / 64)

    x = rng.normal(size=(4, 1, 64, 64)).astype(np.float32)
    groups = image_patches((1, 64, 64), None)
    small = shapley_estimate(forward, x, np.zeros(4, int), np.zeros((1, 64, 64)), n_permutations=16, groups=groups)
    assert 256 <= max(sizes[1:]) <= rows_per_pass(4096) < ROWS_PER_PASS
    sizes.clear()
    as_before = shapley_estimate(forward, x, np.zeros(4, int), np.zeros((1, 64, 64)), n_permutations=16,
                                 groups=groups, max_rows=ROWS_PER_PASS)
    assert max(sizes[1:]) > rows_per_pass(4096)
    np.testing.assert_allclose(small.values, as_before.values, rtol=1e-5, atol=1e-7)
    sizes.clear()
    shapley_estimate(forward, x.reshape(4, -1), np.zeros(4, int), np.zeros(4096), n_permutations=2,
                     groups=np.arange(4096) % 300, max_rows=100)
    assert max(sizes[1:]) == 100      # one walk of 299 steps is cut into passes of max_rows
    assert rows_per_pass(64) == ROWS_PER_PASS
