"""The sanity check's figures for every default method on digits, breast_cancer, wine and a 1-D signals set.

Run: python benchmarks/explain_sanity.py [--quick] [--json out.json]

Per (data set, family, method): the trained-vs-re-initialised Spearman of |maps| per seed, the same
statistic between two re-initialisations (the noise floor), the Spearman with the input-only map
|x - mean|/std and with the model's gradients, the share of empty maps, the verdict and its reason
(`explain.sanity`). Models: the toolkit's MLP and CNN, Adam for a few hundred steps (the families'
default shapes), 16 test samples explained. These figures set the thresholds in explain/sanity.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCH = {"mlp": {"hidden": [64, 32], "dropout": 0.0}, "cnn": {"channels": [8, 16], "hidden": [32], "dropout": 0.0}}


def fit(bundle, family: str, steps: int, seed: int = 0):
    from compress_vs_peers import quick_fit
    from trainers import build_model
    from trainers.artifact import LoadedModel, ModelSpec

    torch.manual_seed(seed)
    module = build_model(family, ARCH[family], bundle.input_shape, bundle.num_classes, bundle.mean, bundle.std)
    quick_fit(module, bundle.x_train, bundle.y_train, steps, 64, seed)
    spec = ModelSpec(family=family, config=ARCH[family], input_shape=list(bundle.input_shape), layout=bundle.layout,
                     class_names=bundle.class_names, feature_names=bundle.feature_names,
                     preprocessing={"mean": bundle.mean.tolist(), "std": bundle.std.tolist()})
    model = LoadedModel(module=module, spec=spec)
    with torch.no_grad():
        acc = float((module(torch.as_tensor(bundle.x_test)).argmax(1).numpy() == bundle.y_test).mean())
    return model, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps and samples (a smoke run)")
    parser.add_argument("--data", nargs="+", default=["digits", "breast_cancer", "wine", "signals"])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import explain
    from compress_vs_peers import make_signals
    from explain.sanity import cascading_randomization
    from trainers import load_data

    samples, steps = (8, 150) if args.quick else (16, 600)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            spec = str(make_signals(Path(tmp) / "signals.npz", n=800, length=40)) if name == "signals" else name
            bundle = load_data(spec, seed=0)
            background = bundle.x_train[:32]
            for family in args.families:
                model, acc = fit(bundle, family, steps)
                x = bundle.x_test[:samples]
                for method in explain.default_methods(family):
                    start = time.perf_counter()
                    attr = explain.attribute(model, x, None, method, background=background)
                    check = cascading_randomization(model, x, attr, 0, background=background)
                    row = {"data": name, "family": family, "accuracy": round(acc, 3), "method": method,
                           "seeds": check["seeds"], "floor": check["floor"], "input_only": check["input_only"],
                           "model_reference": check["model_reference"], "empty_share": check["empty_share"],
                           "cascade": check["cascade"], "verdict": check["verdict"], "reason": check["reason"],
                           "seconds": round(time.perf_counter() - start, 2)}
                    rows.append(row)
                    fmt = lambda v: "  -  " if v is None else f"{v:5.2f}"  # noqa: E731
                    print(f"{name:14s} {family:4s} acc {acc:.2f} {method:22s} tr-rand "
                          f"{' '.join(fmt(s) for s in row['seeds'])} | floor {' '.join(fmt(s) for s in row['floor'])}"
                          f" | input {fmt(row['input_only'])} model {fmt(row['model_reference'])} | empty "
                          f"{row['empty_share']:.2f} | {row['verdict']} ({row['seconds']} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
