"""Auto on a GPU (`compress_model(..., device="cuda")`) against what a GPU user does alone, side by side.

For each data set (digits; the signals set of `compress_vs_peers.make_signals`) and family (MLP, CNN, LSTM): the
toolkit trains the model on the GPU, then auto chooses on the GPU. In one process, interleaved rounds, each call
taking host NumPy rows and returning host logits (as `trainers.predict` serves them), one host thread:
- fp32 eager PyTorch on the GPU (the baseline of every ratio);
- the one-liners: `module.half()` and `module.to(torch.bfloat16)`;
- ONNX Runtime fp32 with CUDA's provider, where the installed build has it (onnxruntime-gpu);
- with --compile, `torch.compile(module)` (the default mode), compiled before the timing;
- auto's choice, called as the toolkit calls it on the GPU (`compress.measure.Runner(..., device="cuda")`).
Each row: accuracy, top-1 agreement with fp32, size ratio, and the speed-up over fp32 at batch 1 and 256 (the
median of per-round ratios, with the interquartile range: `compress_vs_peers.interleaved`).

Usage: python benchmarks/gpu_compress.py [--data digits signals] [--families mlp cnn lstm] [--rounds 9]
       [--epochs 20] [--compile] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress_vs_peers import MAX_DROP, Contender, contender_table, make_signals, measured_rows


def _on_device(name: str, module, dtype, size: int, device: str) -> Contender:
    """A PyTorch module on `device` in `dtype`, host rows in and host float32 logits out."""
    module = copy.deepcopy(module).to(device, dtype).eval()

    def call(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(device, dtype)).float().cpu().numpy()

    return Contender(name, call, size)


def _compiled(module, size: int, x: np.ndarray, device: str) -> Contender:
    """`torch.compile` with its defaults, compiled (both batch sizes) before the timing."""
    fast = torch.compile(copy.deepcopy(module).to(device).eval())

    def call(batch):
        with torch.inference_mode():
            return fast(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    for n in (1, 256):
        call(np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])), np.float32))
    return Contender("torch.compile fp32", call, size)


def _ort_cuda(model, data, device: str) -> Contender | None:
    import onnxruntime as ort

    from compress.export import export_onnx
    from trainers.ortsession import CUDA, first_output, inference_session

    if CUDA not in ort.get_available_providers():
        return None
    graph = export_onnx(model, data)
    session = inference_session(graph, device=device)
    return Contender(f"ORT fp32 ({session.get_providers()[0]})", first_output(session), len(graph))


def run_case(data_spec: str, family: str, epochs: int, rounds: int, compile_peer: bool, log,
             device: str = "cuda") -> dict:
    from compress import compress_model
    from compress.measure import Runner
    from trainers import TrainConfig, load_data, train

    data = load_data(data_spec)
    t0 = time.perf_counter()
    model = train(data, family, TrainConfig(epochs=epochs, device=device, seed=0), progress=False).model
    model.module.cpu()
    log(f"{data.name} {family}: trained in {time.perf_counter() - t0:.0f}s")
    t0 = time.perf_counter()
    result = compress_model(model, data, methods=["auto"], max_drop=MAX_DROP, device=device)
    auto_seconds = time.perf_counter() - t0
    chosen = result.chosen
    log(f"{data.name} {family}: auto in {auto_seconds:.0f}s chose {chosen.name} ({result.reason})")
    size = result.baseline.measurements["size_bytes"]
    baseline = _on_device(f"fp32 PyTorch ({device})", model.module, torch.float32, size, device)
    contenders = [_on_device("module.half()", model.module, torch.float16, size // 2, device),
                  _on_device("module.to(bfloat16)", model.module, torch.bfloat16, size // 2, device)]
    failed = {}
    makers = [("ORT fp32, CUDA provider", lambda: _ort_cuda(model, data, device))]
    if compile_peer:
        makers.append(("torch.compile", lambda: _compiled(model.module, size, data.x_test, device)))
    for name, make in makers:
        try:
            peer = make()
        except Exception as exc:  # noqa: BLE001 -- a peer that cannot run here is a finding, not a crash
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            log(f"{data.name} {family}: {name} failed: {failed[name]}")
            continue
        if peer is None:
            failed[name] = "this ONNX Runtime build has no CUDA provider"
        else:
            contenders.append(peer)
    runner = Runner(chosen, 1, device=device)
    auto_name = f"auto: {chosen.name}"
    contenders.append(Contender(auto_name, runner.call, chosen.measurements["size_bytes"],
                                f"computes on {runner.device}" + (f" ({runner.provider})" if runner.provider else "")))
    rows = measured_rows(contenders, baseline, data, rounds, with_baseline=True)
    peers = [r for name, r in rows.items() if name not in (baseline.name, auto_name) and r["eligible"]]
    best = {b: max([1.0, *(r[b]["speedup"] for r in peers)]) for b in ("b1", "b256")}
    auto = rows[auto_name]
    return {"case": f"{data.name}-{family}", "data": data.name, "family": family, "device": torch.cuda.get_device_name() if device != "cpu" else "cpu",
            "auto_seconds": round(auto_seconds, 1), "chosen": chosen.name, "reason": result.reason,
            "rows": rows, "failed": failed, "rounds": rounds,
            "vs_best_peer": {b: auto[b]["speedup"] / best[b] for b in best},
            "candidates": {v.name: {"speedup": v.measurements.get("speedup"), "device": v.measurements.get("device"),
                                    "accuracy": v.measurements.get("accuracy")} for v in result.variants}}


def markdown(cases: list[dict]) -> str:
    lines = contender_table(cases)
    lines += ["", "| case | auto chose | auto s | b256 vs best eligible peer | b1 vs best eligible peer |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['case']} | {c['chosen']} | {c['auto_seconds']} | {c['vs_best_peer']['b256']:.2f}x | "
              f"{c['vs_best_peer']['b1']:.2f}x |" for c in cases]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["digits", "signals"])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"], choices=["mlp", "cnn", "lstm"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--compile", action="store_true", help="add torch.compile (fp32, default mode) as a peer")
    parser.add_argument("--device", default="cuda", help="cpu runs the same script on the CPU (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print("gpu_compress.py: no CUDA GPU here", file=sys.stderr)
        return 2
    from trainers.env import environment

    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    specs = [str(make_signals(args.out / "signals.npz")) if d == "signals" else d for d in args.data]
    cases = []
    for spec in specs:
        for family in args.families:
            cases.append(run_case(spec, family, args.epochs, args.rounds, args.compile, log, args.device))
            (args.out / "gpu_compress.json").write_text(json.dumps({"env": environment(), "cases": cases}, indent=1,
                                                                   default=str))
            (args.out / "gpu_compress.md").write_text(markdown(cases) + "\n")
    print(markdown(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
