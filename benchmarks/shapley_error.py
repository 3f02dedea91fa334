"""Error bars that hold: the `shapley` estimator's cost, true error and coverage, and adaptive IG's convergence.

Run: python benchmarks/shapley_error.py [--quick] [--samples 48] [--json out.json]

Two models, both trained here in seconds on one CPU thread:
- a 40-feature MLP (256, 128) on a synthetic 4-class table (sklearn make_classification, 20 informative);
- a 1-D CNN (channels 32, 64; dense 128) on a synthetic 4-class signal set of 40 time steps (noisy tones,
  chirps and steps).
Each `shapley` setting explains the predicted class of the same test samples through `explain.attribute`
(the path the toolkit runs); the reference is 2,048 antithetic permutations under another seed (its own
error is measured against a second reference). Per setting: wall and CPU ms per sample (median over
interleaved rounds), relative error ||phi - ref|| / ||ref|| (mean, max), the share of samples whose
reported 95% bound covers that error, samples that did not reach the tolerance, and mean permutations.
Then integrated gradients: fixed 64 steps vs adaptive steps (32 -> 512 until completeness < 1%).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def _fit(module, x, y, steps=300, seed=0):
    from compress_vs_peers import quick_fit

    return quick_fit(module, x, y, steps, 128, seed)


def signals(n=2400, length=40, seed=0):
    """4 classes of noisy 1-D signals: a slow tone, a fast tone, a chirp, a step (random phase and position)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)
    y = rng.integers(0, 4, n)
    phase = rng.uniform(0, 2 * np.pi, n)[:, None]
    shift = rng.uniform(0.2, 0.8, n)[:, None]
    forms = [np.sin(2 * np.pi * 2 * t + phase), np.sin(2 * np.pi * 6 * t + phase),
             np.sin(2 * np.pi * (1 + 6 * t) * t + phase), np.where(t > shift, 1.0, -1.0)]
    x = np.choose(y[:, None], forms) + 0.4 * rng.normal(size=(n, length))
    return x[:, None, :].astype(np.float32), y


def models(seed=0):
    from sklearn.datasets import make_classification

    from trainers import build_model
    from trainers.artifact import LoadedModel, ModelSpec

    out = []
    xt, yt = make_classification(2400, 40, n_informative=20, n_classes=4, random_state=seed)
    xs, ys = signals(seed=seed)
    for name, family, config, x, y in (("mlp, 40 features", "mlp", {"hidden": [256, 128], "dropout": 0.0},
                                        xt.astype(np.float32), yt),
                                       ("1-D cnn, 40 time steps", "cnn", {"channels": [32, 64], "hidden": [128],
                                                                          "dropout": 0.0}, xs, ys)):
        train, test = slice(0, 2000), slice(2000, None)
        axes = (0,) if x.ndim == 2 else (0, 2)
        mean = x[train].mean(axis=axes, keepdims=True)[0]
        std = x[train].std(axis=axes, keepdims=True)[0] + 1e-6
        torch.manual_seed(seed)
        module = _fit(build_model(family, config, x.shape[1:], 4, mean, std), x[train], y[train], seed=seed)
        with torch.no_grad():
            acc = float((module(torch.as_tensor(x[test])).argmax(1).numpy() == y[test]).mean())
        spec = ModelSpec(family=family, config=config, input_shape=list(x.shape[1:]),
                         layout="features" if x.ndim == 2 else "signal", class_names=list("abcd"),
                         preprocessing={"mean": mean.tolist(), "std": std.tolist()})
        out.append((name, LoadedModel(module=module, spec=spec), x[test], acc))
    return out


def timed(fn, n):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, 1000 * (time.perf_counter() - start) / n, 1000 * (time.process_time() - cpu) / n


def rel(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


SETTINGS = {
    "adaptive, tolerance 0.05": {"tolerance": 0.05},
    "adaptive, tolerance 0.10 (default)": {},
    "adaptive, tolerance 0.15": {"tolerance": 0.15},
    "fixed 16 permutations (previous default)": {"n_permutations": 16},
}


def shapley_rows(model, x, rounds, reference_permutations):
    import explain

    targets = model.module(torch.as_tensor(x)).argmax(1).numpy()
    explain.attribute(model, x[:2], targets[:2], "shapley", n_permutations=4)          # warm-up
    ref = explain.attribute(model, x, targets, "shapley", n_permutations=reference_permutations, seed=12345)
    check = explain.attribute(model, x, targets, "shapley", n_permutations=reference_permutations, seed=777)
    timings = {name: [] for name in SETTINGS}
    results = {}
    for r in range(rounds):                     # interleaved rounds: every setting once per round
        for name, options in SETTINGS.items():
            attr, ms, cpu = timed(lambda: explain.attribute(model, x, targets, "shapley", seed=r, **options), len(x))
            timings[name].append((ms, cpu))
            results.setdefault(name, attr)
    rows = []
    for name, attr in results.items():
        err = rel(attr.values, ref.values)
        walls, cpus = zip(*timings[name])
        rows.append({"setting": name, "ms_per_sample": round(float(np.median(walls)), 2),
                     "cpu_ms_per_sample": round(float(np.median(cpus)), 2),
                     "error_mean": round(float(err.mean()), 4), "error_max": round(float(err.max()), 4),
                     "error_bound_median": round(float(np.median(attr.error_bound)), 4),
                     "coverage": round(float((err <= attr.error_bound).mean()), 3),
                     "unconverged": None if attr.converged is None else int((~attr.converged).sum()),
                     "permutations_mean": round(float(np.mean((attr.steps - 2) / max(x[0].size - 1, 1))), 1)})
    return rows, float(rel(check.values, ref.values).mean())


def ig_rows(model, x):
    import explain
    from explain.quality import completeness_errors

    out = []
    for name, options in (("fixed 64 steps", {"n_steps": 64}), ("adaptive 32 -> 512 steps (default)", {})):
        attr, ms, cpu = timed(lambda: explain.attribute(model, x, None, "integrated_gradients", **options), len(x))
        errors = completeness_errors(model, x, attr)
        out.append({"setting": name, "ms_per_sample": round(ms, 2), "cpu_ms_per_sample": round(cpu, 2),
                    "share_under_1pct": round(float((errors <= 0.01).mean()), 4),
                    "completeness_median": round(float(np.median(errors)), 5),
                    "completeness_max": round(float(errors.max()), 5),
                    "unconverged": None if attr.converged is None else int((~attr.converged).sum()),
                    "steps_mean": None if attr.steps is None else round(float(attr.steps.mean()), 1)})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 samples, 1 round, 1024-permutation reference")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    samples, rounds, ref_perms = (16, 1, 1024) if args.quick else (args.samples, args.rounds, 2048)
    summary = {"threads": torch.get_num_threads(), "samples": samples, "rounds": rounds,
               "reference_permutations": ref_perms, "models": []}
    for name, model, x_test, acc in models():
        x = x_test[:samples]
        rows, ref_error = shapley_rows(model, x, rounds, ref_perms)
        ig = ig_rows(model, x_test[:max(samples, 200)])
        summary["models"].append({"model": name, "test_accuracy": round(acc, 4), "reference_self_error": round(ref_error, 4),
                                  "shapley": rows, "integrated_gradients": ig, "ig_samples": len(x_test[:max(samples, 200)])})
        print(f"{name}: accuracy {acc:.3f}, {samples} samples, reference {ref_perms} permutations "
              f"(error against another seed {ref_error:.4f})")
        print(f"  {'shapley setting':42s} wall ms  CPU ms  error mean/max   bound med  coverage  unconv.  perms")
        for r in rows:
            print(f"  {r['setting']:42s} {r['ms_per_sample']:7.2f} {r['cpu_ms_per_sample']:7.2f}  "
                  f"{r['error_mean']:.4f}/{r['error_max']:.4f}  {r['error_bound_median']:.4f}    {r['coverage']:.3f}  "
                  f"{str(r['unconverged']):>6s}  {r['permutations_mean']:6.1f}")
        print(f"  {'integrated gradients (' + str(len(x_test[:max(samples, 200)])) + ' samples)':42s} wall ms  CPU ms  "
              f"share < 1%  median  max  unconv.  steps")
        for r in ig:
            print(f"  {r['setting']:42s} {r['ms_per_sample']:7.2f} {r['cpu_ms_per_sample']:7.2f}  "
                  f"{r['share_under_1pct']:.4f}  {r['completeness_median']:.5f}  {r['completeness_max']:.4f}  "
                  f"{str(r['unconverged']):>5s}  {r['steps_mean']}")
    load = os.getloadavg()[0]
    summary["load_average_1min"] = round(load, 2)
    print(f"1-min load average {load:.1f} on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
