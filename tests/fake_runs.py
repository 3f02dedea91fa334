"""Fake run directories for the report tests, built from the result types in trainers.schema.

No stage runs here, so the report tests are fast; the results are schema objects, so they cannot drift
from what the writers produce. `make_run(path, stages=...)` builds a pipeline directory with any subset of
train/, compress/, explain/; `variant_row`, `write_pipeline` and `write_result` build the pieces.
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path

from trainers.schema import (AgreementCheck, AgreementStep, AttributionRun, Chosen, ClassScores, CompressResultFile,
                             DataSummary, Drift, DriftRow, Epoch, ExplainResultFile, FeatureRank, Parity, PipelineFile,
                             Quality, Skipped, Split, StageError, StageStatus, Threads, TrainMetrics, TrainResultFile,
                             VariantRow)

HOSTILE = "<script>alert(1)</script>"
SETTINGS = ("b1_t1", "b1_tall", "b256_t1", "b256_tall")
BASELINE_P50 = {"b1_t1": 0.05, "b1_tall": 0.05, "b256_t1": 2.0, "b256_tall": 1.0}  # the fp32-torch row's latency


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


def write_result(path: Path, result) -> None:
    """A schema object as the stage would write it."""
    _write(path, result.dump())


def data_summary(num_classes: int = 3) -> DataSummary:
    return DataSummary(name="toy", source="toy.csv", fingerprint="f" * 8, input_shape=[4], layout="features",
                       num_classes=num_classes, n_train=90, n_val=15, n_test=30,
                       split=Split(seed=0, test_given=False, test_fraction=0.2, val_fraction=0.15, stratified=True))


def train_result(class_names=("a", "b", "c"), **changes) -> TrainResultFile:
    n = len(class_names)
    history = [Epoch(epoch=e, train_loss=1.0 / e, train_accuracy=0.5 + e / 20, val_loss=1.1 / e,
                     val_accuracy=0.45 + e / 20, lr=0.003, seconds=0.01) for e in range(1, 6)]
    metrics = TrainMetrics(
        train_loss=0.2, train_accuracy=0.95, val_loss=0.25, val_accuracy=0.93, test_loss=0.3, test_accuracy=0.9,
        test_confusion_matrix=[[10 if i == j else 1 for j in range(n)] for i in range(n)],
        test_per_class=[ClassScores(class_name=c, precision=0.9, recall=0.8 + i / 100, f1=0.85, support=10)
                        for i, c in enumerate(class_names)])
    fields = dict(family="mlp", data=data_summary(n), metrics=metrics, device="cpu", epochs_run=5, best_epoch=4,
                  seconds=1.5, interrupted=False, processes=1, history=history, artifact=None)
    return TrainResultFile(**{**fields, **changes})


def write_train(d: Path, class_names=("a", "b", "c"), feature_names=None) -> TrainResultFile:
    result = train_result(class_names)
    write_result(d / "result.json", result)
    _write(d / "config.json", {"stage": "train", "family": "mlp", "data": "toy.csv", "target": None, "epochs": 5,
                               "batch_size": 64, "lr": 0.003, "seed": 0, "device": "auto", "model": {}})
    _write(d / "env.json", {"python": "3.11.7", "platform": "Linux", "cpu_count": 2, "device": "cpu", "gpus": [],
                            "versions": {"toolkit": "0.1.0", "torch": "2.x"}})
    _write(d / "model.json", {"family": "mlp", "config": {"hidden": [16]}, "input_shape": [4], "layout": "features",
                              "class_names": list(class_names), "feature_names": feature_names,
                              "data": result.data.dump(),
                              "training": {"epochs": 5, "batch_size": 64, "lr": 0.003, "seed": 0}})
    _write(d / "metrics.json", {**result.metrics.dump(), "size_bytes": 4096, "parameters": 1000})
    return result


def variant_row(name, method, accuracy, drop, size, lat1, lat256, dtype="float32", runtime="torch",
                **changes) -> VariantRow:
    """A measured variant; an int8 one gets its agreement check and twin agreement."""
    p50 = {"b1_t1": lat1, "b1_tall": lat1, "b256_t1": lat256, "b256_tall": lat256 / 2}
    int8 = dtype == "int8"
    fields = dict(
        name=name, method=method, recipe={"method": method}, path=f"variants/{name}", runtime=runtime, dtype=dtype,
        accuracy=accuracy, accuracy_drop=drop, size_bytes=size, size_ratio=4096 / size, parameters=1000,
        latency_ms={s: {"p50": p50[s], "p95": p50[s] * 1.3, "reps": 50} for s in SETTINGS},
        speedup={s: BASELINE_P50[s] / p50[s] for s in SETTINGS},
        slower_than_fp32=False, flips=False, within_budget=drop <= 0.5, pareto=True, parity=None,
        twin_agreement=0.99 if int8 else None,
        agreement_check=AgreementCheck(samples=200, agreement=0.996, target=0.995, reached=True, fp32_nodes=[],
                                       fp32_modules=[], steps=[AgreementStep(fp32_nodes=[], agreement=0.996)])
        if int8 else None,
        notes=[])
    return VariantRow(**{**fields, **changes})


def compress_result(*extra: VariantRow) -> CompressResultFile:
    variants = [
        variant_row("fp32-torch", "baseline", 0.9, 0.0, 4096, 0.05, 2.0, path="../train"),
        variant_row("int8-static-onnx", "int8-static", 0.897, 0.3, 1200, 0.04, 0.8, dtype="int8",
                    runtime="onnxruntime", parity=Parity(max_abs_diff=0.01, top1_agreement=0.99, n=30),
                    notes=["static quantization, 256 calibration samples"]),
        variant_row("prune-structured-50", "prune-structured", 0.88, 2.0, 2100, 0.045, 1.1),
        *extra,
    ]
    return CompressResultFile(
        parent="../train", family="mlp", data=data_summary(), methods=["auto"], max_drop=0.5,
        threads=Threads(single=1, all=2), baseline=variants[0], variants=variants,
        chosen=Chosen(name="int8-static-onnx", path="variants/int8-static-onnx",
                      reason="fastest at batch 256 within the accuracy budget"),
        skipped=[Skipped(method="distill", reason="not registered")], seconds=12.0, min_agreement=0.97)


def before_version_8(result: dict) -> dict:
    """A current compress result.json as versions 1-7 wrote it: no `chosen.checksum`."""
    return {**result, "chosen": {k: v for k, v in result["chosen"].items() if k != "checksum"}}


def before_version_6(result: dict) -> dict:
    """A current compress result.json as versions 1-5 wrote it: no `device`, no row's `device`, `provider` or
    `log_loss` (nor `chosen.checksum`)."""
    row = lambda r: {k: v for k, v in r.items() if k not in ("device", "provider", "log_loss")}  # noqa: E731
    return {**{k: v for k, v in before_version_8(result).items() if k != "device"}, "baseline": row(result["baseline"]),
            "variants": [row(r) for r in result["variants"]]}


def write_compress(d: Path, *extra: VariantRow) -> CompressResultFile:
    result = compress_result(*extra)
    write_result(d / "result.json", result)
    _write(d / "config.json", {"stage": "compress", "model": "../train", "data": "toy.csv", "methods": ["auto"],
                               "max_drop": 0.5, "ratio": None, "options": {}})
    return result


def _drift_row(variant: str, overlap: float, flag: bool, verdict: str) -> DriftRow:
    return DriftRow(variant=variant, method="integrated_gradients", ran="integrated_gradients", runtime="onnx",
                    routed=None, accuracy=0.897, accuracy_drop=0.3, topk=2, topk_overlap=overlap,
                    topk_overlap_lo=overlap - 0.03, topk_overlap_hi=overlap + 0.03, cosine=0.97, cosine_lo=0.95,
                    cosine_hi=0.99, spearman=0.93, spearman_lo=0.9, spearman_hi=0.95, sign_agreement=0.95,
                    sign_agreement_lo=0.93, sign_agreement_hi=0.97, noise_floor_topk=1.0, random_floor_topk=0.16,
                    flag=flag, verdict=verdict, status="drifted" if flag else "kept", threshold=0.7,
                    cosine_threshold=0.63,
                    top_features=[FeatureRank(feature=f"f{i}", rank=i + 1, variant_rank=i + 1, share=0.3,
                                              variant_share=0.3 * ratio, share_ratio=ratio, share_ratio_lo=ratio - 0.1,
                                              share_ratio_hi=ratio + 0.1)
                                  for i, ratio in enumerate((0.9, 0.42 if flag else 0.8))])


def write_explain(d: Path, feature_names=("f0", "f1", "f2", "f3")) -> ExplainResultFile:
    (d / "figures").mkdir(parents=True, exist_ok=True)
    (d / "figures" / "global_importance.png").write_bytes(png_bytes())
    (d / "figures" / "sample_attributions.png").write_bytes(png_bytes(60, 30))
    (d / "figures" / "not_a_png.png").write_bytes(b"GIF89a fake")
    flag = "prune-structured-50 relies on different inputs than the original"
    result = ExplainResultFile(
        model="../train", family="mlp", layout="features", input_shape=[4], data=data_summary(), samples=16, seed=0,
        methods=["integrated_gradients", "shapley_sampling"],
        runtimes={"original": "torch", "int8-static-onnx": "onnxruntime"},
        runs=[AttributionRun(model="original", method="integrated_gradients", ran="integrated_gradients",
                             runtime="torch", routed=None, seconds=0.41, ms_per_sample=6.4, baseline="training mean")],
        global_importance={"integrated_gradients": {f: 0.1 * (i + 1) for i, f in enumerate(feature_names)}},
        quality={"integrated_gradients": Quality(
            completeness_error=0.003, axiom_holds=True, deletion_auc=0.21, insertion_auc=0.78, infidelity=0.012,
            randomization_spearman=0.05, randomization_topk=0.2, noise_floor_topk=None, noise_floor_spearman=None,
            verdicts=["faithful: removing the top inputs drops the score fast"], flagged=False)},
        drift=Drift(rows=[_drift_row("int8-static-onnx", 0.91, False,
                                     "agrees with the original (within the noise floor)"),
                          _drift_row("prune-structured-50", 0.5, True, "relies on other inputs")],
                    flags=[flag]),
        flags=[flag],
        figures={"global importance (integrated_gradients)": "figures/global_importance.png",
                 "sample attributions": "figures/sample_attributions.png",
                 "a file that is not a PNG": "figures/not_a_png.png"},
        seconds=3.0)
    write_result(d / "result.json", result)
    return result


def write_pipeline(root: Path, failed: str | None = None, message: str = "boom", code: int = 2) -> PipelineFile:
    """pipeline.json: every stage done, or `failed` failed and the stages after it not run."""
    stages, errors, after = [], [], None
    for name in ("train", "compress", "explain"):
        if after is not None:
            stages.append(StageStatus(name=name, status="not run", reason=f"{after} failed"))
        elif name == failed:
            stages.append(StageStatus(name=name, status="failed", seconds=1.0, reason=message))
            errors.append(StageError(stage=name, message=message, code=code))
            after = name
        else:
            stages.append(StageStatus(name=name, status="done", seconds=1.0, reason=None))
    stages.append(StageStatus(name="report", status="done"))
    result = PipelineFile(status="failed" if failed else "done", data="toy.csv", family="mlp", stages=stages,
                          errors=errors, seconds=3.0,
                          report="report.html")
    write_result(root / "pipeline.json", result)
    return result


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


@contextmanager
def ctrl_c_in_epoch(epoch: int):
    """Within it, training is stopped by Ctrl-C (KeyboardInterrupt) as its `epoch`-th epoch starts (counting
    every call of the epoch loop in the block)."""
    import pytest

    import trainers.loop as loop

    original, calls = loop.train_epoch, []

    def stop_in_that_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "train_epoch", stop_in_that_epoch)
        yield


def ctrl_c_in_second_epoch():
    """Within it, training is stopped by Ctrl-C (KeyboardInterrupt) as its second epoch starts."""
    return ctrl_c_in_epoch(2)


def interrupted_train(out: Path, epochs: int, model: dict) -> None:
    """A real `train` on iris stopped by Ctrl-C in its second epoch: `out` keeps its checkpoint.json."""
    import pytest

    from trainers import TrainConfig, TrainingInterrupted, train

    with ctrl_c_in_second_epoch(), pytest.raises(TrainingInterrupted):
        train("iris", "mlp", TrainConfig(epochs=epochs, model=model), out=out, progress=False)
    assert (out / "checkpoint.json").is_file()


@contextmanager
def toolkit_warnings():
    """The `ToolkitWarning` messages raised in the block (every one: the 'always' filter), in the list it yields,
    filled when the block ends. From Python the toolkit warns with `warnings`; the CLI prints `warning:` lines."""
    import warnings

    from trainers.errors import ToolkitWarning

    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ToolkitWarning)
        yield said
    said += [str(w.message) for w in caught if issubclass(w.category, ToolkitWarning)]
