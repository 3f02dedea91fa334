"""The toolkit's `auto` choice against the field's one-liners, side by side in one process.

Per family (MLP, CNN, LSTM) on digits and on a generated 1-D signal set:
- fp32 PyTorch (the baseline every ratio is taken against),
- the toolkit's `compress_model(..., methods=["auto"], max_drop=0.5)` choice,
- `torch.ao.quantization.quantize_dynamic` (Linear + LSTM, qint8; deprecated, here only as the thing compared against),
- `onnxruntime.quantization.quantize_dynamic` with its defaults on the fp32 ONNX export.
All four are re-measured together (`compress.measure`) so latencies are comparable.
Also records the other compression figures from auto's candidate table
(structured pruning at 50%, prune + int8 + sparse storage, distillation gap closed, ONNX parity).

Usage: python benchmarks/compress_vs_peers.py [--out benchmarks/results] [--epochs 100] [--families mlp cnn lstm]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_signals(path: Path, n: int = 1600, length: int = 64, seed: int = 0) -> Path:
    """1-D signals (1, 64): four classes of noisy waveforms (sine, square, sawtooth, chirp) with random phase/frequency."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length, dtype=np.float32)
    x = np.empty((n, 1, length), np.float32)
    y = rng.integers(0, 4, n)
    for i, c in enumerate(y):
        f, p = rng.uniform(2, 5), rng.uniform(0, 2 * np.pi)
        base = [np.sin(2 * np.pi * f * t + p), np.sign(np.sin(2 * np.pi * f * t + p)),
                2 * ((f * t + p / (2 * np.pi)) % 1) - 1, np.sin(2 * np.pi * (f + 4 * t) * t + p)][c]
        x[i, 0] = base * rng.uniform(0.5, 2) + rng.normal(0, 0.6, length)
    np.savez(path, x=x, y=y, class_names=np.array(["sine", "square", "sawtooth", "chirp"]))
    return path


def peer_torch_ao(model, data):
    from compress.base import Variant
    from trainers.artifact import LoadedModel

    quantized = torch.ao.quantization.quantize_dynamic(model.module, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)  # the peer's own format (a pickle); our artifacts never use it
    return Variant("torch.ao-dynamic-int8", LoadedModel(module=quantized, spec=model.spec), {"method": "torch.ao.quantize_dynamic"},
                   measurements={"size_bytes": len(buffer.getvalue())})


def peer_ort_dynamic(model, data):
    from onnxruntime.quantization import quantize_dynamic

    from compress.base import Variant
    from compress.export import export_onnx
    from trainers.artifact import LoadedModel

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(export_onnx(model, data))
        quantize_dynamic(str(Path(tmp) / "fp32.onnx"), str(Path(tmp) / "int8.onnx"))  # defaults
        onnx_bytes = (Path(tmp) / "int8.onnx").read_bytes()
    return Variant("ort-dynamic-int8-defaults", LoadedModel(module=model.module, spec=model.spec),
                   {"method": "onnxruntime.quantization.quantize_dynamic"}, onnx_bytes=onnx_bytes)


def target_speedup(family: str) -> float:
    return 2.5 if family in ("mlp", "cnn") else 2.0


def run_case(data_spec: str, family: str, root: Path, epochs: int, log, auto_options: dict | None = None) -> dict:
    from compress import compress_model
    from compress.auto import baseline_variant
    from compress.base import Variant
    from compress.measure import LatencyConfig, measure_all
    from trainers import TrainConfig, load_data, load_model, train

    data = load_data(data_spec)
    name = f"{Path(data_spec).stem}-{family}"
    t0 = time.perf_counter()
    train(data, family, TrainConfig(epochs=epochs, device="cpu"), out=root / name / "train", overwrite=True, progress=False)
    model = load_model(root / name / "train")
    log(f"{name}: trained in {time.perf_counter() - t0:.0f}s")
    t0 = time.perf_counter()
    result = compress_model(model, data, methods=["auto"], max_drop=0.5, out=root / name / "compress", overwrite=True,
                            options={"auto": auto_options} if auto_options else None,
                            progress=lambda m: log(f"{name}: {m}"))
    auto_seconds = time.perf_counter() - t0
    log(f"{name}: auto in {auto_seconds:.0f}s, chose {result.chosen.name}")
    table = result.to_dict()

    # Re-measure the baseline, auto's choice and both peers together, in one process.
    baseline = baseline_variant(model)
    chosen = result.chosen
    contenders = [] if chosen is result.baseline else [Variant(f"auto:{chosen.name}", chosen.model, chosen.recipe,
                                                                chosen.onnx_bytes,
                                                                {"size_bytes": chosen.measurements["size_bytes"]})]
    contenders += [peer_torch_ao(model, data), peer_ort_dynamic(model, data)]
    measure_all(contenders, baseline, data, 0.5, LatencyConfig(budget_s=1.0, min_reps=20))
    rows = {}
    for v in [baseline, *contenders]:
        m = v.measurements
        rows[v.name] = {"accuracy": m["accuracy"], "accuracy_drop": m["accuracy_drop"], "size_bytes": m["size_bytes"],
                        "size_ratio": m["size_ratio"], "latency_ms": m["latency_ms"], "speedup": m["speedup"],
                        "slower_than_fp32": m["slower_than_fp32"]}
    auto_row = rows.get(f"auto:{chosen.name}")
    acceptance = None
    if auto_row:
        acceptance = {"speedup_b256_t1": auto_row["speedup"]["b256_t1"], "target_speedup": target_speedup(family),
                      "speedup_ok": auto_row["speedup"]["b256_t1"] >= target_speedup(family),
                      "drop_ok": auto_row["accuracy_drop"] <= 0.5, "size_ok": auto_row["size_ratio"] >= 3.5,
                      "never_slower": not auto_row["slower_than_fp32"]}
    by_name = {v["name"]: v for v in table["variants"]}
    extra = {k: {f: by_name[k][f] for f in ("accuracy_drop", "size_ratio", "speedup", "parity")} for k in by_name
             if k.startswith(("prune-", "distill-")) or k.startswith("int8") or k == "onnx-fp32"}
    distill = next((v["recipe"] for v in table["variants"] if v["recipe"].get("method") == "distill"), None)
    return {"case": name, "data": data_spec, "family": family, "auto_seconds": round(auto_seconds, 1),
            "chosen": table["chosen"], "side_by_side": rows, "acceptance": acceptance, "auto_candidates": extra,
            "distill_gap_closed": distill and distill.get("gap_closed"), "skipped": table["skipped"]}


def markdown(cases: list[dict]) -> str:
    lines = ["| case | variant | accuracy | drop (pts) | size KB | smaller | b256 t1 ms | faster b256 t1 | faster b1 t1 | faster b256 all |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        for name, r in c["side_by_side"].items():
            lines.append(f"| {c['case']} | {name} | {r['accuracy']:.4f} | {r['accuracy_drop']:+.2f} | {r['size_bytes'] / 1024:.1f} | "
                         f"{r['size_ratio']:.2f}x | {r['latency_ms']['b256_t1']['p50']:.3f} | {r['speedup']['b256_t1']:.2f}x | "
                         f"{r['speedup']['b1_t1']:.2f}x | {r['speedup']['b256_tall']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--data", nargs="+", default=["digits", "signals"])
    parser.add_argument("--auto-options", default="", help='JSON options for auto, e.g. \'{"distill_epochs": 8}\'')
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    specs = [str(make_signals(args.out / "signals.npz")) if d == "signals" else d for d in args.data]
    cases = []
    for spec in specs:
        for family in args.families:
            cases.append(run_case(spec, family, args.out / "runs", args.epochs, log,
                                  json.loads(args.auto_options) if args.auto_options else None))
            (args.out / "compress_vs_peers.json").write_text(json.dumps(cases, indent=1, default=str))
    from trainers.env import environment

    (args.out / "compress_vs_peers.json").write_text(json.dumps({"env": environment(), "cases": cases}, indent=1, default=str))
    table = markdown(cases)
    (args.out / "compress_vs_peers.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
