"""The sceptic's benchmark: the toolkit's `auto` choice against what a user could do instead, in one process.

Per family (MLP, CNN, LSTM) and data set (digits; `signals`, 1-D waveforms (1, 64); `features40`, a 4,000 x 40
tabular set made here), against the fp32 PyTorch model:
- ORT fp32: the fp32 ONNX graph a user exports alone (`torch.onnx.export`, `user_export`) in ONNX Runtime; the
  quantizers below start from that graph too;
- ORT quantize_static with its defaults (QDQ, QInt8 activations, MinMax, per-tensor) calibrated on 200 training
  samples;
- ORT quantize_static at its best settings (the strongest of an audit's grid over format, activation type,
  calibration method, per-channel and reduce_range): ORT's `quant_pre_process` first, then QOperator, QUInt8
  activations, QInt8 weights, Percentile calibration, per-tensor scales, reduce_range, calibrated on 512 training
  samples (as many as auto's own int8 search);
- ORT quantize_dynamic with its defaults;
- torch.ao quantize_dynamic (Linear + LSTM, qint8);
- NNCF post-training quantization (`nncf.quantize`, 200 samples) run in OpenVINO's runtime (optional extra);
- Torch-Pruning (magnitude, 50% of the channels, head kept), fine-tuned like auto's pruning, in ORT fp32;
- the same pruned module chained into ORT quantize_static at those settings but reduce_range off (as the audit
  measured the chain): auto's own "structured pruning, then int8 static", written with the two libraries;
- the toolkit's `compress_model(..., methods=["auto"], max_drop=0.5)` choice, and (unless --no-serving-one) its
  choice when told the model serves one request at a time (auto's `serving_batch=1`), judged at batch 1.
Each row: test accuracy, top-1 agreement with the fp32 model, size, and latency at batch 1 and 256 with one
thread. Latency is measured in interleaved rounds: every round times every contender (order rotated) and the
fp32 model; the figure is the median over rounds of the per-round speed-up over fp32, with the spread
(interquartile range of those ratios). "eligible" = the one rule auto itself is held to (`compress.measure.fidelity`):
within 0.5 points of fp32 accuracy and top-1 agreement with fp32 >= 0.97 less the one-sided 95% sampling margin
of the test split, for every contender alike.

Usage: python benchmarks/compress_vs_peers.py [--quick] [--out DIR] [--families mlp cnn lstm]
       [--data digits signals features40] [--rounds 15] [--epochs 30] [--no-serving-one]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_DROP, CALIBRATION = 0.5, 200
BEST_CALIBRATION = 512  # the best-settings static peer's calibration rows: auto's own (int8_static's default)
STATIC_BEST = "ORT quantize_static (best settings)"
TP, TP_STATIC = "Torch-Pruning 50% + ORT", "Torch-Pruning 50% + ORT quantize_static (best settings)"


def eligible(base_acc: float, acc: float, pred: np.ndarray, reference: np.ndarray) -> bool:
    """Auto's own fidelity rule, applied to every contender: accuracy within MAX_DROP points of fp32 and top-1
    agreement with fp32 at least `compress.measure.MIN_AGREEMENT` less the test split's sampling margin."""
    from compress.measure import fidelity

    return 100 * (base_acc - acc) <= MAX_DROP + 1e-9 and fidelity(pred, reference)["passes"]


def make_signals(path: Path, n: int = 1600, length: int = 64, seed: int = 0, *, freq=(2, 5), sweep: float = 4,
                 noise: float = 0.6) -> Path:
    """1-D signals (1, length): four classes of noisy waveforms (sine, square, sawtooth, chirp) with random phase
    and a frequency drawn from `freq`; the chirp sweeps up by `sweep`; Gaussian noise of std `noise`."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length, dtype=np.float32)
    x = np.empty((n, 1, length), np.float32)
    y = rng.integers(0, 4, n)
    for i, c in enumerate(y):
        f, p = rng.uniform(*freq), rng.uniform(0, 2 * np.pi)
        base = [np.sin(2 * np.pi * f * t + p), np.sign(np.sin(2 * np.pi * f * t + p)),
                2 * ((f * t + p / (2 * np.pi)) % 1) - 1, np.sin(2 * np.pi * (f + sweep * t) * t + p)][c]
        x[i, 0] = base * rng.uniform(0.5, 2) + rng.normal(0, noise, length)
    np.savez(path, x=x, y=y, class_names=np.array(["sine", "square", "sawtooth", "chirp"]))
    return path


def quick_fit(module, x, y, steps: int, batch: int = 128, seed: int = 0):
    """A benchmark's stand-in training: `steps` Adam steps (lr 3e-3) on random batches drawn with `seed`; the
    module is returned in eval mode. (The toolkit's own loop is measured in train_overhead.py, not here.)"""
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(module(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


def make_features40(path: Path, n: int = 4000, seed: int = 0) -> Path:
    """4,000 x 40 features, 5 classes: scikit-learn's make_classification (12 informative features, clusters per
    class, label noise), then a smooth non-linear warp of half the columns so a linear model is not enough."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=40, n_informative=12, n_redundant=8, n_classes=5,
                               n_clusters_per_class=2, flip_y=0.02, class_sep=1.2, random_state=seed)
    x[:, ::2] = np.tanh(x[:, ::2]) + 0.3 * np.sin(2 * x[:, 1::2])
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))
    return path


# ---------------------------------------------------------------- contenders: name -> (callable, size bytes)

def user_export(module, data) -> bytes:
    """The fp32 ONNX graph a user exports alone, the peers' starting point: `torch.onnx.export` (TorchScript
    exporter, opset 17, dynamic batch axis). Not the toolkit's `export_onnx`, whose graph passes (the recurrent
    layers' zero initial states left out) are part of what is compared."""
    module = getattr(module, "module", module)
    buffer = io.BytesIO()
    sample = torch.from_numpy(np.ascontiguousarray(data.x_test[:2], np.float32))
    torch.onnx.export(module.cpu().float().eval(), (sample,), buffer, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17)
    return buffer.getvalue()


class Contender:
    def __init__(self, name, call, size, note=""):
        self.name, self.call, self.size, self.note = name, call, size, note


def _ort(name, onnx_bytes, note=""):
    """A peer's graph, called as auto's are (`trainers.ortsession.first_output`): graphs are compared, not call
    paths (ORT's public `run` adds 1.1-1.5 us of checks a call, 13% of the pruned digits CNN's at batch 1)."""
    from compress.export import ort_session
    from trainers.ortsession import first_output

    return Contender(name, first_output(ort_session(onnx_bytes, threads=1)), len(onnx_bytes), note)


def _torch(name, module, size, note=""):
    module.eval()

    def call(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return Contender(name, call, size, note)


def _calibration(data, n: int = CALIBRATION):
    """`n` training rows (all of them where there are fewer), drawn as auto's int8 search draws its own."""
    order = np.random.default_rng(0).permutation(len(data.x_train))[:n]
    return np.ascontiguousarray(data.x_train[np.sort(order)], np.float32)


def calibration_reader(x: np.ndarray):
    """ORT's calibration reader over every row of `x`, in one batch. `compress.int8_search._Calibration` cuts its
    64-row batches to one size (ORT's histogram calibrators fail on a shorter last batch) and so leaves the
    ragged tail out: 192 of the 200 rows here; one batch of all the rows keeps them all, for every method."""
    from compress.int8_search import _Calibration

    return _Calibration(x, batch=max(1, len(x)))


def peer_ort_static(fp32_bytes, data):
    from onnxruntime.quantization import quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(fp32_bytes)
        quantize_static(str(Path(tmp) / "fp32.onnx"), str(Path(tmp) / "int8.onnx"),
                        calibration_reader(_calibration(data)))
        return _ort("ORT quantize_static (defaults)", (Path(tmp) / "int8.onnx").read_bytes())


def quantize_static_best(fp32_bytes: bytes, data, reduce_range: bool) -> bytes:
    """ORT quantize_static at the settings an audit's grid found strongest on these models: ORT's documented
    `quant_pre_process` (shape inference, graph optimisation) first, then QOperator with QUInt8 activations (with
    QInt8 activations QOperator runs 20-40x slower), QInt8 weights, Percentile calibration, per-tensor scales,
    on BEST_CALIBRATION training rows. `reduce_range` (7-bit weights) is each peer's own: on for the whole
    graph, where the audit found it strongest, off for the pruned chain, the setting it was measured at."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_bytes)
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(out), calibration_reader(_calibration(data, BEST_CALIBRATION)),
                        quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                        per_channel=False, reduce_range=reduce_range)
        return out.read_bytes()


def peer_ort_static_best(fp32_bytes, data):
    return _ort(STATIC_BEST, quantize_static_best(fp32_bytes, data, reduce_range=True),
                note="quant_pre_process, QOperator U8S8, Percentile, reduce_range")


def peer_ort_dynamic(fp32_bytes, data):
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(fp32_bytes)
        quantize_dynamic(str(Path(tmp) / "fp32.onnx"), str(Path(tmp) / "int8.onnx"))
        return _ort("ORT quantize_dynamic (defaults)", (Path(tmp) / "int8.onnx").read_bytes())


def peer_torch_ao(model, data):
    import copy

    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model.module), {torch.nn.Linear, torch.nn.LSTM},
                                                       dtype=torch.qint8)
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)  # the peer's own format (a pickle); our artifacts never use it
    return _torch("torch.ao quantize_dynamic", quantized, len(buffer.getvalue()))


def peer_nncf(fp32_bytes, data):
    import nncf
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(fp32_bytes)
        ov_model = ov.convert_model(str(Path(tmp) / "fp32.onnx"))
        calibration = _calibration(data)
        dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
        quantized = nncf.quantize(ov_model, dataset, subset_size=CALIBRATION)
        ov.save_model(quantized, str(Path(tmp) / "q.xml"))
        size = (Path(tmp) / "q.xml").stat().st_size + (Path(tmp) / "q.bin").stat().st_size
    core, compiled = ov.Core(), {}

    def call(x):  # one static-shape compilation per batch size: OpenVINO's fastest path on CPU
        if x.shape not in compiled:
            static = quantized.clone()
            static.reshape({static.inputs[0]: list(x.shape)})
            compiled[x.shape] = core.compile_model(static, "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                                   "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        return compiled[x.shape].infer({0: x})[0]

    return Contender("NNCF PTQ + OpenVINO", call, size, note="static shape per batch size")


def torch_pruned(model, data, epochs):
    """Torch-Pruning's module: 50% of the channels by L1 magnitude (DepGraph), head kept, then fine-tuned for
    `epochs` as auto's pruning is (`compress.prune.finetune`). Made once per case: both Torch-Pruning rows
    start from it."""
    import copy

    import torch_pruning as tp

    from compress.prune import finetune

    module = copy.deepcopy(model.module).cpu().float().eval()
    example = torch.from_numpy(np.ascontiguousarray(data.x_test[:2], np.float32))
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[module.head])
    pruner.step()
    module, _ = finetune(module, data, epochs)
    return module.eval()


def peer_torch_pruning(pruned, data, epochs):
    return _ort(TP, user_export(pruned, data), note=f"{epochs} fine-tune epochs")


def peer_torch_pruning_static(pruned, data, epochs):
    """The pruned module, exported as a user would (`user_export`), then ORT quantize_static at its best settings
    without reduce_range (as the audit measured this chain)."""
    return _ort(TP_STATIC, quantize_static_best(user_export(pruned, data), data, reduce_range=False),
                note=f"{epochs} fine-tune epochs; quant_pre_process, QOperator U8S8, Percentile")


def once(make):
    """`make()`'s result, made on the first call and kept, or its exception, raised again on every call: peers
    built on one costly step (pruning and fine-tuning) make it once and fail alike where it fails."""
    kept = {}

    def get():
        if not kept:
            try:
                kept["value"] = make()
            except Exception as exc:  # kept: the second peer reports the first's failure without redoing it
                kept["error"] = exc
        if "error" in kept:
            raise kept["error"]
        return kept["value"]

    return get


# ---------------------------------------------------------------- measurement

def _tile(x, n):
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])), np.float32)


def interleaved(contenders: list[Contender], baseline: Contender, x: np.ndarray, rounds: int) -> dict:
    """Per contender and batch size: median and interquartile range over rounds of (fp32 time / its time)."""
    torch.set_num_threads(1)
    everyone = [baseline, *contenders]
    batches = {"b1": (_tile(x, 1), 30), "b256": (_tile(x, 256), 5)}
    for c in everyone:
        for xb, _ in batches.values():
            c.call(xb), c.call(xb)
    ratios = {c.name: {b: [] for b in batches} for c in contenders}
    for r in range(rounds):
        order = everyone[r % len(everyone):] + everyone[:r % len(everyone)]
        for b, (xb, reps) in batches.items():
            times = {}
            for c in order:
                best = float("inf")
                for _ in range(3):  # the fastest of three calls of `reps` batches: the least disturbed
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        c.call(xb)
                    best = min(best, (time.perf_counter() - t0) / reps)
                times[c.name] = best
            for c in contenders:
                ratios[c.name][b].append(times[baseline.name] / times[c.name])
    return {name: {b: {"speedup": float(np.median(v)), "iqr": float(np.subtract(*np.percentile(v, [75, 25])))}
                   for b, v in per.items()} for name, per in ratios.items()}


def _predict(c: Contender, x):
    return np.concatenate([c.call(np.ascontiguousarray(x[i:i + 256], np.float32)) for i in range(0, len(x), 256)])


def measured_rows(contenders: list[Contender], baseline: Contender, data, rounds: int,
                  with_baseline: bool = False) -> dict:
    """A row per contender against `baseline` (and the baseline's own first, `with_baseline`): test accuracy,
    points below the baseline, top-1 agreement with it, size ratio, the speed-ups of `interleaved`, its note,
    and whether it keeps auto's fidelity rule (`eligible`)."""
    reference = _predict(baseline, data.x_test).argmax(1)
    base_acc = float((reference == data.y_test).mean())
    speed = interleaved(contenders, baseline, data.x_test, rounds)
    rows = {baseline.name: {"accuracy": base_acc, "drop_points": 0.0, "agreement": 1.0, "size_ratio": 1.0,
                            "b1": {"speedup": 1.0, "iqr": 0.0}, "b256": {"speedup": 1.0, "iqr": 0.0},
                            "eligible": True, "note": ""}} if with_baseline else {}
    for c in contenders:
        pred = _predict(c, data.x_test).argmax(1)
        acc, agree = float((pred == data.y_test).mean()), float((pred == reference).mean())
        rows[c.name] = {"accuracy": acc, "drop_points": round(100 * (base_acc - acc), 2), "agreement": agree,
                        "size_ratio": baseline.size / c.size, **speed[c.name], "note": c.note,
                        "eligible": eligible(base_acc, acc, pred, reference)}
    return rows


SERVING_ONE = "auto, serving batch 1"  # the row of auto told it serves one request at a time (`serving_batch`)


def run_case(data_spec: str, family: str, root: Path, epochs: int, rounds: int, log, auto_options=None,
             serving_one: bool = True) -> dict:
    from compress import compress_model
    from compress.measure import Runner
    from trainers import TrainConfig, load_data, load_model, train

    data = load_data(data_spec)
    name = f"{Path(data_spec).stem}-{family}"
    t0 = time.perf_counter()
    train(data, family, TrainConfig(epochs=epochs, device="cpu"), out=root / name / "train", overwrite=True,
          progress=False)
    model = load_model(root / name / "train")
    log(f"{name}: trained in {time.perf_counter() - t0:.0f}s")
    t0 = time.perf_counter()
    result = compress_model(model, data, methods=["auto"], max_drop=MAX_DROP, out=root / name / "compress",
                            overwrite=True, options={"auto": auto_options} if auto_options else None)
    auto_seconds = time.perf_counter() - t0
    chosen = result.chosen
    log(f"{name}: auto in {auto_seconds:.0f}s, chose {chosen.name}")
    baseline = _torch("fp32 PyTorch", model.module, result.baseline.measurements["size_bytes"])
    fp32_bytes = user_export(model, data)
    contenders = [_ort("ORT fp32", fp32_bytes)]
    runner = Runner(chosen, 1)
    contenders.append(Contender(f"auto: {chosen.name}", runner.call, chosen.measurements["size_bytes"]))
    told = None
    if serving_one:  # the same search told the model serves one request at a time
        t0 = time.perf_counter()
        told = compress_model(model, data, methods=["auto"], max_drop=MAX_DROP, out=root / name / "compress-b1",
                              overwrite=True, options={"auto": {**(auto_options or {}), "serving_batch": 1}}).chosen
        log(f"{name}: auto with serving_batch=1 in {time.perf_counter() - t0:.0f}s, chose {told.name}")
        contenders.append(Contender(f"{SERVING_ONE}: {told.name}", Runner(told, 1).call, told.measurements["size_bytes"]))
    tp_epochs = 10  # as auto's pruning fine-tunes
    pruned = once(lambda: torch_pruned(model, data, tp_epochs))
    makers = [("ORT quantize_static (defaults)", lambda: peer_ort_static(fp32_bytes, data)),
              (STATIC_BEST, lambda: peer_ort_static_best(fp32_bytes, data)),
              ("ORT quantize_dynamic (defaults)", lambda: peer_ort_dynamic(fp32_bytes, data)),
              ("torch.ao quantize_dynamic", lambda: peer_torch_ao(model, data)),
              ("NNCF PTQ + OpenVINO", lambda: peer_nncf(fp32_bytes, data)),
              (TP, lambda: peer_torch_pruning(pruned(), data, tp_epochs)),
              (TP_STATIC, lambda: peer_torch_pruning_static(pruned(), data, tp_epochs))]
    failed = {}
    for peer, make in makers:
        try:
            contenders.append(make())
        except Exception as exc:  # a peer that cannot handle the model is a finding, not a crash
            failed[peer] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            log(f"{name}: {peer} failed: {failed[peer]}")
    rows = measured_rows(contenders, baseline, data, rounds, with_baseline=True)
    base_acc = rows.pop(baseline.name)["accuracy"]  # the table lists the contenders against it
    peers = {k: v for k, v in rows.items() if not k.startswith("auto") and v["eligible"]}
    auto_row = rows[f"auto: {chosen.name}"]
    verdict = {}
    for b in ("b1", "b256"):
        best = max(peers, key=lambda k: peers[k][b]["speedup"]) if peers else None
        verdict[b] = {"best_peer": best, "auto_over_best_peer":
                      auto_row[b]["speedup"] / peers[best][b]["speedup"] if best else None}
    if told is not None:
        told_row, best = rows[f"{SERVING_ONE}: {told.name}"], verdict["b1"]["best_peer"]
        verdict["b1_told"] = {"chosen": told.name, "eligible": told_row["eligible"], "best_peer": best,
                              "auto_over_best_peer": told_row["b1"]["speedup"] / peers[best]["b1"]["speedup"]
                              if best else None}
    return {"case": name, "n_test": int(len(data.y_test)), "fp32_accuracy": base_acc, "auto_seconds": round(auto_seconds, 1),
            "chosen": chosen.name, "rows": rows, "failed": failed, "verdict": verdict, "rounds": rounds,
            "reason": result.reason, "pruned": pruning_outcome(result.skipped)}


def pruning_outcome(skipped: list[dict]) -> dict:
    """What auto's structured pruning came to (`skipped`: auto's rejected and untried candidates): how many
    pruned candidates it made and rejected, and the best agreement among those the agreement rule rejected
    (with what the rule required)."""
    rejected = [s for s in skipped if s.get("method") == "prune-structured"
                and s["reason"].startswith("rejected")]
    judged = [s["fidelity"] for s in rejected if s.get("fidelity")]
    best = max(judged, key=lambda f: f["agreement"], default=None)
    return {"rejected": len(rejected),
            "over_budget": sum("accuracy" in s["reason"] and "budget" in s["reason"] for s in rejected),
            "best_agreement": best["agreement"] if best else None,
            "required": best["min_agreement"] - best["margin"] if best else None}


MET_B256, TIE = 1.2, 0.05  # the target at batch 256; ratios within 5% of 1 are ties


ROUTED = "+below-b"  # in a routed choice's name (`compress.auto.route_by_batch`): LARGE+below-bN-SMALL


def why_short(case: dict, batch: str) -> str:
    """The verdict for one batch size: "met", or why auto's choice is not ahead of the best peer, read from the
    measurements (which kernels, what pruning came to, how auto decided)."""
    v = case["verdict"][batch]
    ratio, peer = v["auto_over_best_peer"], v["best_peer"]
    if ratio is None:
        return "no eligible peer"
    if ratio >= (MET_B256 if batch == "b256" else 1.0):
        return "met"
    chosen, rows = case["chosen"], case["rows"]
    auto_row = rows[f"auto: {chosen}"]
    label = "tie" if abs(ratio - 1) <= TIE else "peer wins" if ratio < 1 else f"ahead, under {MET_B256:g}x"
    head = label + f" ({peer} {rows[peer][batch]['speedup']:.2f}x, auto {auto_row[batch]['speedup']:.2f}x)"
    why = []
    if batch == "b1" and ROUTED in chosen:  # a routed choice: its member answers batch 1
        small = chosen.split(ROUTED, 1)[1].split("-", 1)[1]
        why.append(f"batch 1 runs its member {small}")
        if peer.startswith("Torch-Pruning") and "prune-structured" in small:
            why.append("the peer's pruned widths run as fast")
        elif small.endswith("int8-dynamic-onnx") and peer.startswith("ORT quantize_dynamic"):
            why.append("the peer's own ONNX Runtime graph")
        return f"{head}: " + "; ".join(why)
    if batch == "b1":
        why.append(f"auto decides at batch 256, where its choice is {auto_row['b256']['speedup']:.2f}x")
        if chosen.startswith(("bf16", "fp16")):
            why.append("PyTorch's per-call overhead at batch 1 against ONNX Runtime")
        elif "int8" in chosen:
            why.append("at batch 1 quantizing the activations costs about what the int8 kernels save")
        return f"{head}: " + "; ".join(why)
    if "int8-static" in chosen and "quantize_static" in peer:  # the whole-graph peers and the pruned chain
        why.append("the same ONNX Runtime int8 kernels" + (", for fewer multiply-adds where a layer is factorized"
                                                          if "lowrank" in chosen.split(ROUTED, 1)[0] else ""))
    if peer.startswith("Torch-Pruning") and "prune-structured" in chosen:
        why.append("the peer's pruned widths run as fast")
    pruned = case.get("pruned") or {}
    if "prune-structured" not in chosen and pruned.get("rejected"):
        n = pruned["rejected"]
        part = f"every pruned candidate made failed the rule ({n} made)"
        if pruned.get("best_agreement") is not None:
            part += f": best agreement {pruned['best_agreement']:.1%}, {pruned['required']:.1%} required"
            part += f"; {pruned['over_budget']} over the accuracy budget" if pruned["over_budget"] else ""
        why.append(part)
    tie = re.search(r"best balance .* within 10% of the fastest \(([^)]+)\)", case.get("reason") or "")
    if tie:  # a routed choice's reason starts with its route, then the choice's own reason
        why.append(f"auto's near-tie rule took it, within 10% of its fastest ({tie.group(1)}), for a better "
                   f"balance of size and speed")
    return f"{head}: " + ("; ".join(why) if why else "no faster candidate passed the rule")


NOISY = 0.25  # an interquartile range over a quarter of the median speed-up: flagged, not a measured speed-up


def _speed(cell: dict) -> str:
    flag = " ⚠" if cell["iqr"] > NOISY * cell["speedup"] else ""
    return f"{cell['speedup']:.2f}x ({cell['iqr']:.2f}){flag}"


def contender_table(cases: list[dict], key: str = "case", header: str = "case") -> list[str]:
    """One markdown row per contender of every case (`key`: the case's label field), peers that failed named."""
    lines = [f"| {header} | contender | accuracy | drop (pts) | agreement | smaller | faster b1 (IQR) | faster b256 (IQR) | "
             "eligible |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        for name, r in c["rows"].items():
            lines.append(f"| {c[key]} | {name} | {r['accuracy']:.4f} | {r['drop_points']:+.2f} | {r['agreement']:.3f} | "
                         f"{r['size_ratio']:.2f}x | {_speed(r['b1'])} | {_speed(r['b256'])} | {'yes' if r['eligible'] else 'no'} |")
        for peer, why in c["failed"].items():
            lines.append(f"| {c[key]} | {peer} | failed: {why} | | | | | | |")
    return lines


def markdown(cases: list[dict]) -> str:
    lines = contender_table(cases)
    lines += ["", "| case | auto chose | auto s | best eligible peer b256 | auto / best peer b256 | best peer b1 | "
              "auto / best peer b1 | b256 (target 1.2x) | b1 (target 1.0x) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda x: f"{x:.2f}x" if x is not None else "–"  # noqa: E731
    for c in cases:
        v = c["verdict"]
        lines.append(f"| {c['case']} | {c['chosen']} | {c['auto_seconds']} | {v['b256']['best_peer']} | "
                     f"{fmt(v['b256']['auto_over_best_peer'])} | {v['b1']['best_peer']} | {fmt(v['b1']['auto_over_best_peer'])} | "
                     f"{why_short(c, 'b256')} | {why_short(c, 'b1')} |")
    told = [c for c in cases if "b1_told" in c["verdict"]]
    if told:
        lines += ["", "Auto told the model serves one request at a time (`serving_batch=1`):", "",
                  "| case | auto chose | eligible | best peer b1 | auto / best peer b1 | b1 (target 1.0x) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in told:
            t = c["verdict"]["b1_told"]
            ratio = t["auto_over_best_peer"]
            mark = ("–" if ratio is None else "met" if ratio >= 1.0 else "tie" if abs(ratio - 1) <= TIE
                    else "peer wins")
            lines.append(f"| {c['case']} | {t['chosen']} | {'yes' if t['eligible'] else 'no'} | {t['best_peer']} | "
                         f"{fmt(ratio)} | {mark} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--data", nargs="+", default=["digits", "signals", "features40"])
    parser.add_argument("--quick", action="store_true", help="digits MLP only, 10 epochs, 5 rounds")
    parser.add_argument("--auto-options", default="", help='JSON options for auto, e.g. \'{"distill_epochs": 8}\'')
    parser.add_argument("--no-serving-one", action="store_true",
                        help="skip the second auto run told the model serves one request at a time")
    args = parser.parse_args(argv)
    if args.quick:
        args.families, args.data, args.epochs, args.rounds = ["mlp"], ["digits"], 10, 5
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    makers = {"signals": make_signals, "features40": make_features40}
    specs = [str(makers[d](args.out / f"{d}.npz")) if d in makers else d for d in args.data]
    from trainers.env import environment

    cases = []
    for spec in specs:
        for family in args.families:
            cases.append(run_case(spec, family, args.out / "runs", args.epochs, args.rounds, log,
                                  json.loads(args.auto_options) if args.auto_options else None,
                                  serving_one=not args.no_serving_one))
            (args.out / "compress_vs_peers.json").write_text(json.dumps({"env": environment(), "cases": cases},
                                                                        indent=1, default=str))
            (args.out / "compress_vs_peers.md").write_text(markdown(cases) + "\n")
    print(markdown(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
