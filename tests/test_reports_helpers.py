"""Fake run directories for the report tests: JSON written by hand, following docs/results.md.

No stage runs here, so the report tests are fast and pin down what the renderer
reads. `make_run(path, stages=...)` builds a pipeline directory with any subset
of train/, compress/, explain/.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

HOSTILE = "<script>alert(1)</script>"


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width / 20, height / 20), dpi=20)
    fig.add_subplot(111).plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def write_train(d: Path, class_names=("a", "b", "c"), feature_names=None) -> None:
    n = len(class_names)
    matrix = [[10 if i == j else 1 for j in range(n)] for i in range(n)]
    data = {"name": "toy", "source": "toy.csv", "fingerprint": "f" * 8, "input_shape": [4], "layout": "features",
            "num_classes": n, "n_train": 90, "n_val": 15, "n_test": 30,
            "split": {"seed": 0, "stratified": True, "test_given": False}}
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 20, "val_loss": 1.1 / e,
                "val_accuracy": 0.45 + e / 20, "lr": 0.003, "seconds": 0.01} for e in range(1, 6)]
    metrics = {"train_loss": 0.2, "train_accuracy": 0.95, "val_loss": 0.25, "val_accuracy": 0.93, "test_loss": 0.3,
               "test_accuracy": 0.9, "test_confusion_matrix": matrix,
               "test_per_class": [{"class": c, "precision": 0.9, "recall": 0.8 + i / 100, "f1": 0.85, "support": 10}
                                  for i, c in enumerate(class_names)]}
    _write(d / "result.json", {"stage": "train", "family": "mlp", "data": data, "metrics": metrics, "device": "cpu",
                               "epochs_run": 5, "best_epoch": 4, "seconds": 1.5, "interrupted": False,
                               "history": history, "artifact": None})
    _write(d / "config.json", {"stage": "train", "family": "mlp", "data": "toy.csv", "target": None, "epochs": 5,
                               "batch_size": 64, "lr": 0.003, "seed": 0, "device": "auto", "model": {}})
    _write(d / "env.json", {"python": "3.11.7", "platform": "Linux", "cpu_count": 2, "device": "cpu", "gpus": [],
                            "versions": {"toolkit": "0.1.0", "torch": "2.x"}})
    _write(d / "model.json", {"family": "mlp", "config": {"hidden": [16]}, "input_shape": [4], "layout": "features",
                              "class_names": list(class_names), "feature_names": feature_names, "data": data,
                              "training": {"epochs": 5, "batch_size": 64, "lr": 0.003, "seed": 0}})
    _write(d / "metrics.json", {**metrics, "size_bytes": 4096, "parameters": 1000})


def _variant(name, method, accuracy, drop, size, lat1, lat256, dtype="float32", runtime="torch", **extra):
    return {"name": name, "method": method, "recipe": {"method": method}, "path": f"variants/{name}",
            "runtime": runtime, "dtype": dtype, "accuracy": accuracy, "accuracy_drop": drop, "size_bytes": size,
            "size_ratio": 4096 / size, "parameters": 1000,
            "latency_ms": {"b1_t1": {"p50": lat1, "p95": lat1 * 1.3}, "b1_tall": {"p50": lat1, "p95": lat1 * 1.4},
                           "b256_t1": {"p50": lat256, "p95": lat256 * 1.2},
                           "b256_tall": {"p50": lat256 / 2, "p95": lat256 / 1.5}},
            "speedup": {"b1_t1": 0.05 / lat1, "b256_t1": 2.0 / lat256}, "parity": None, "slower_than_fp32": False,
            "within_budget": drop <= 0.5, "pareto": True, "notes": [], **extra}


def write_compress(d: Path, with_sensitivity: bool = True) -> None:
    variants = [
        _variant("fp32-torch", "baseline", 0.9, 0.0, 4096, 0.05, 2.0),
        _variant("int8-static-onnx", "int8-static", 0.897, 0.3, 1200, 0.04, 0.8, dtype="int8", runtime="onnxruntime",
                 parity={"max_abs_diff": 0.01, "top1_agreement": 0.99}, notes=["static quantization, 256 calibration samples"]),
        _variant("prune-structured-50", "prune-structured", 0.88, 2.0, 2100, 0.045, 1.1),
    ]
    result = {"stage": "compress", "parent": "../train", "family": "mlp", "methods": ["auto"], "max_drop": 0.5,
              "threads": {"single": 1, "all": 2}, "baseline": variants[0], "variants": variants,
              "chosen": {"name": "int8-static-onnx", "path": "variants/int8-static-onnx",
                         "reason": "fastest at batch 256 within the accuracy budget"},
              "skipped": [{"method": "distill", "reason": "not registered"}], "seconds": 12.0}
    if with_sensitivity:
        result["sensitivity"] = [{"layer": layer, "width": 16, "ratio": r, "kept": 8, "accuracy": 0.9 - r * k,
                                  "baseline_accuracy": 0.9, "split": "val"}
                                 for layer, k in (("hidden.0", 0.1), ("hidden.1", 0.4)) for r in (0.25, 0.5, 0.75)]
    _write(d / "result.json", result)
    _write(d / "config.json", {"stage": "compress", "model": "../train", "data": "toy.csv", "methods": ["auto"],
                               "max_drop": 0.5, "options": {}})


def write_explain(d: Path, feature_names=("f0", "f1", "f2", "f3")) -> None:
    (d / "figures").mkdir(parents=True, exist_ok=True)
    (d / "figures" / "global_importance.png").write_bytes(png_bytes())
    (d / "figures" / "sample_attributions.png").write_bytes(png_bytes(60, 30))
    (d / "figures" / "not_a_png.png").write_bytes(b"GIF89a fake")
    row = {"variant": "int8-static-onnx", "method": "integrated_gradients", "ran": "integrated_gradients",
           "runtime": "onnx", "accuracy": 0.897, "accuracy_drop": 0.3, "topk": 2, "topk_overlap": 0.91,
           "topk_overlap_lo": 0.88, "topk_overlap_hi": 0.94, "cosine": 0.97, "cosine_lo": 0.95, "cosine_hi": 0.99,
           "spearman": 0.93, "sign_agreement": 0.95, "noise_floor_topk": 1.0, "random_floor_topk": 0.16,
           "flag": False, "verdict": "agrees with the original (within the noise floor)"}
    result = {
        "stage": "explain", "model": "../train", "family": "mlp", "layout": "features", "samples": 16, "seed": 0,
        "methods": ["integrated_gradients", "shapley_sampling"],
        "runtimes": {"original": "torch", "int8-static-onnx": "onnxruntime"},
        "runs": [{"model": "original", "method": "integrated_gradients", "ran": "integrated_gradients",
                  "runtime": "torch", "routed": None, "baseline": "training mean", "seconds": 0.41,
                  "ms_per_sample": 6.4}],
        "global_importance": {"integrated_gradients": {f: 0.1 * (i + 1) for i, f in enumerate(feature_names)}},
        "quality": {"integrated_gradients": {"completeness_error": 0.003, "axiom_holds": True, "deletion_auc": 0.21,
                                             "verdicts": ["faithful: removing the top inputs drops the score fast"],
                                             "flagged": False}},
        "drift": {"rows": [row, {**row, "variant": "prune-structured-50", "topk_overlap": 0.5, "flag": True,
                                 "verdict": "relies on other inputs"}],
                  "flags": ["prune-structured-50 relies on different inputs than the original"]},
        "flags": ["prune-structured-50 relies on different inputs than the original"],
        "figures": {"global importance (integrated_gradients)": "figures/global_importance.png",
                    "sample attributions": "figures/sample_attributions.png"},
        "seconds": 3.0,
    }
    _write(d / "result.json", result)


def make_run(root: Path, stages=("train", "compress", "explain"), **names) -> Path:
    """A pipeline directory holding the given stages (fake numbers)."""
    root.mkdir(parents=True, exist_ok=True)
    if "train" in stages:
        write_train(root / "train", **names)
    if "compress" in stages:
        write_compress(root / "compress")
    if "explain" in stages:
        write_explain(root / "explain", **({"feature_names": names["feature_names"]}
                                          if names.get("feature_names") else {}))
    return root
