"""User-style models (not made by `toolkit train`) through `compress_model(..., methods=["auto"])`, against peers.

Two models a user might bring, built here (no downloads) and trained on 1-D waveforms (`signals`: (1, 64),
four classes of noisy sine/square/sawtooth/chirp, made by `compress_vs_peers.make_signals`):
- `ResidualCNN1d`: Conv1d + BatchNorm + ReLU stem, residual blocks with identity and 1x1-projection skips,
  global average pooling, a Linear head;
- `GRUClassifier`: a 2-layer GRU over the 64 time steps, a Linear head on the last hidden state.
Each is passed to the toolkit as a plain `torch.nn.Module` with its data. In one process, side by side: fp32
eager PyTorch, ORT fp32, ORT quantize_dynamic defaults, ORT quantize_static defaults (QDQ, MinMax, 200
calibration samples), Torch-Pruning alone (50% of the channels, L1 magnitude, head kept, fine-tuned, run in ORT
fp32) and the toolkit's `auto` choice at max_drop 0.5. Each row: accuracy, top-1 agreement with fp32, size
ratio, latency speed-up over fp32 PyTorch at batch 1 and 256 with one thread, in interleaved rounds (the median
of per-round ratios with the interquartile range: `compress_vs_peers.interleaved`).

Targets checked for `auto`: >= 2x faster at batch 256, >= 3.5x smaller, not slower at batch 1.

Usage: python benchmarks/user_models.py [--quick] [--out DIR] [--models rescnn gru] [--epochs 25] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress_vs_peers import (
    MAX_DROP,
    Contender,
    _ort,
    _torch,
    contender_table,
    make_signals,
    measured_rows,
    peer_ort_dynamic,
    peer_ort_static,
    user_export,
)

TARGETS = {"b256": 2.0, "size": 3.5, "b1": 1.0}


# ---------------------------------------------------------------- the user's models

class Block(nn.Module):
    """conv-bn-relu-conv-bn plus a skip (identity, or a strided 1x1 conv + BN where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ResidualCNN1d(nn.Module):
    def __init__(self, classes: int = 4, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, width, 5, padding=2, bias=False), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width), Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(-1))


class GRUClassifier(nn.Module):
    def __init__(self, classes: int = 4, hidden: int = 64):
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):  # x: (batch, 1, steps) -> the GRU reads (batch, steps, 1)
        out, _ = self.gru(x.transpose(1, 2))
        return self.head(out[:, -1])


MODELS = {"rescnn": ResidualCNN1d, "gru": GRUClassifier}


# ---------------------------------------------------------------- Torch-Pruning alone (GRU-aware)

def peer_torch_pruning(module: nn.Module, data, epochs: int) -> Contender:
    """50% of the channels by L1 magnitude (DepGraph), head kept, fine-tuned like auto's pruning, in ORT fp32."""
    import copy

    import torch_pruning as tp

    from compress.prune import finetune

    pruned = copy.deepcopy(module).cpu().float().eval()
    example = torch.from_numpy(np.ascontiguousarray(data.x_test[:2], np.float32))
    pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[pruned.head])
    pruner.step()
    with torch.no_grad():
        pruned(example)  # a graph Torch-Pruning could not keep consistent fails here, not in the export
    pruned, _ = finetune(pruned, data, epochs)
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in module.parameters())
    return _ort("Torch-Pruning 50% + ORT", user_export(pruned, data),
                note=f"{epochs} fine-tune epochs, {kept:.0%} of the parameters kept")


# ---------------------------------------------------------------- one model

def run_model(key: str, data, epochs: int, rounds: int, log) -> dict:
    from compress import compress_model
    from compress.measure import Runner
    from compress.prune import finetune

    torch.manual_seed(0)
    module = MODELS[key]()
    t0 = time.perf_counter()
    module, history = finetune(module, data, epochs, lr=3e-3)  # the toolkit's loop used as any training loop
    module.eval()
    log(f"{key}: trained {epochs} epochs in {time.perf_counter() - t0:.0f}s, "
        f"val accuracy {max(history['val_accuracy']):.3f}")

    t0 = time.perf_counter()
    result = compress_model(module, data, methods=["auto"], max_drop=MAX_DROP)
    auto_seconds = time.perf_counter() - t0
    chosen = result.chosen
    log(f"{key}: auto in {auto_seconds:.0f}s, chose {chosen.name} ({result.reason})")

    fp32_bytes = user_export(module, data)
    baseline = _torch("fp32 PyTorch", module, result.baseline.measurements["size_bytes"])
    contenders = [_ort("ORT fp32", fp32_bytes),
                  Contender(f"auto: {chosen.name}", Runner(chosen, 1).call, chosen.measurements["size_bytes"])]
    makers = [("ORT quantize_dynamic (defaults)", lambda: peer_ort_dynamic(fp32_bytes, data)),
              ("ORT quantize_static (defaults)", lambda: peer_ort_static(fp32_bytes, data)),
              ("Torch-Pruning 50% + ORT", lambda: peer_torch_pruning(module, data, max(3, epochs // 3)))]
    failed = {}
    for peer, make in makers:
        try:
            contenders.append(make())
        except Exception as exc:  # noqa: BLE001 -- a peer that cannot handle the model is a finding, not a crash
            failed[peer] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            log(f"{key}: {peer} failed: {failed[peer]}")

    rows = measured_rows(contenders, baseline, data, rounds, with_baseline=True)
    base_acc = rows[baseline.name]["accuracy"]
    auto = rows[f"auto: {chosen.name}"]
    targets = {"b256 >= 2x": auto["b256"]["speedup"] >= TARGETS["b256"],
               "size >= 3.5x": auto["size_ratio"] >= TARGETS["size"],
               "b1 not slower": auto["b1"]["speedup"] >= TARGETS["b1"]}
    skipped = [{"method": s.get("method"), "options": s.get("options"), "reason": s.get("reason")}
               for s in result.skipped]
    candidates = [{"name": v.name, "accuracy": v.measurements.get("accuracy"),
                   "size_ratio": v.measurements.get("size_ratio"), "speedup": v.measurements.get("speedup"),
                   "within_budget": v.measurements.get("within_budget")} for v in result.variants]
    return {"model": key, "class": type(module).__name__, "parameters": sum(p.numel() for p in module.parameters()),
            "epochs": epochs, "n_test": len(data.y_test), "fp32_accuracy": base_acc,
            "auto_seconds": round(auto_seconds, 1), "chosen": chosen.name, "reason": result.reason,
            "candidates": candidates, "skipped": skipped, "search_notes": result.search_notes,
            "rows": rows, "failed": failed, "targets": targets, "rounds": rounds}


def markdown(cases: list[dict]) -> str:
    lines = contender_table(cases, "class", "model")
    lines += ["", "| model | auto chose | auto s | b256 >= 2x | size >= 3.5x | b1 not slower |",
              "| --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        t = c["targets"]
        lines.append(f"| {c['class']} | {c['chosen']} | {c['auto_seconds']} | " +
                     " | ".join("met" if t[k] else "missed" for k in ("b256 >= 2x", "size >= 3.5x", "b1 not slower"))
                     + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="8 training epochs, 5 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds = 8, 5
    from trainers import load_data
    from trainers.env import environment

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    data = load_data(str(make_signals(args.out / "signals.npz")))
    cases = []
    load = {"loadavg_start": os.getloadavg()}
    for key in args.models:
        cases.append(run_model(key, data, args.epochs, args.rounds, log))
        load["loadavg_end"] = os.getloadavg()
        (args.out / "user_models.json").write_text(json.dumps({"env": environment(), "load": load, "cases": cases},
                                                              indent=1, default=str))
        (args.out / "user_models.md").write_text(markdown(cases) + "\n")
    print(markdown(cases))
    print(f"load average at start {load['loadavg_start']}, at end {load['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
