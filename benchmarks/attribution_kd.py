"""Does matching the teacher's input gradients lower attribution drift at equal accuracy?

    python benchmarks/attribution_kd.py [--data digits signals] [--families mlp cnn] [--seeds 0 1 2]
                                        [--weights 0 1] [--epochs 30] [--distill-epochs 30]
                                        [--finetune-epochs 10] [--samples 200] [--kd-peer] [--quick] [--out FILE]

Per data set and family a model is trained once (seed 0, --epochs). For every seed and `attribution_weight`
in --weights, it is compressed two ways: `distill` (default student, --distill-epochs, mixup off to keep it
short) and `prune-structured` at 50% (--finetune-epochs). Each row holds the variant's test accuracy, its
agreement with the original's predictions, and the attribution drift against the original on --samples test
samples (`explain.attribution_drift`, feature ablation: the top-k overlap of the two models' attributions,
1.0 = the same top features), plus the wall time of the compression. The summary pairs weight 0 with each
other weight on the same seed: the median over seeds of the overlap and accuracy differences. --kd-peer adds
the output-matching peer, prune-50 fine-tuned with the unpruned model as teacher (`teacher=True`), at each weight:
does matching the outputs alone already keep the attributions?
"signals" is the 1-D set of benchmarks/compress_vs_peers.py (1 x 64, four waveform classes).
--quick: digits MLP, seeds 0 1 2, weights 0 and 1, 20 distill / 10 fine-tune epochs, 150 samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress.distill import distill  # noqa: E402
from compress.prune import structured_prune  # noqa: E402
from explain import attribution_drift  # noqa: E402
from trainers import TrainConfig, accuracy, load_data, predict, train  # noqa: E402


def measure(name, original, variant_model, data, samples, seconds) -> dict:
    x = data.x_test[:samples]
    drift = attribution_drift(original, variant_model, x, method="feature_ablation")
    agree = float((predict(variant_model, data.x_test).argmax(1) == predict(original, data.x_test).argmax(1)).mean())
    return {"method": name, "accuracy": accuracy(variant_model.module, data.x_test, data.y_test),
            "agreement": agree, "topk_overlap": drift["topk_overlap"], "topk": drift["topk"],
            "status": drift["status"], "seconds": round(seconds, 2)}


def run(data_name, data, family, args, log) -> list[dict]:
    original = train(data, family, TrainConfig(epochs=args.epochs, device="cpu", seed=0), progress=False).model
    base = accuracy(original.module, data.x_test, data.y_test)
    log(f"{data_name} {family}: original test accuracy {base:.4f}")
    rows = []
    for seed in args.seeds:
        for weight in args.weights:  # interleaved: both weights run back to back on each seed
            tick = time.perf_counter()
            [d] = distill(original, data, epochs=args.distill_epochs, mixup=0.0, seed=seed, attribution_weight=weight)
            rows.append({"data": data_name, "family": family, "seed": seed, "weight": weight, "original_accuracy": base,
                         **measure("distill", original, d.model, data, args.samples, time.perf_counter() - tick)})
            tick = time.perf_counter()
            [p] = structured_prune(original, data, ratio=0.5, finetune_epochs=args.finetune_epochs, seed=seed,
                                   attribution_weight=weight)
            rows.append({"data": data_name, "family": family, "seed": seed, "weight": weight, "original_accuracy": base,
                         **measure("prune-50", original, p.model, data, args.samples, time.perf_counter() - tick)})
            if args.kd_peer:  # the output-matching peer: the unpruned model as teacher of the outputs too
                tick = time.perf_counter()
                [k] = structured_prune(original, data, ratio=0.5, finetune_epochs=args.finetune_epochs, seed=seed,
                                       teacher=True, attribution_weight=weight)
                rows.append({"data": data_name, "family": family, "seed": seed, "weight": weight,
                             "original_accuracy": base,
                             **measure("prune-50 kd", original, k.model, data, args.samples, time.perf_counter() - tick)})
            for row in rows[-3 if args.kd_peer else -2:]:
                log(json.dumps(row))
    return rows


def summary(rows: list[dict]) -> str:
    lines = ["| data | family | method | weight | accuracy (median) | top-k overlap (median) | "
             "overlap - weight 0 (median of per-seed) | accuracy - weight 0, points (median of per-seed) | s/run |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["data"], r["family"], r["method"]) for r in rows})
    for data, family, method in keys:
        group = [r for r in rows if (r["data"], r["family"], r["method"]) == (data, family, method)]
        plain = {r["seed"]: r for r in group if r["weight"] == 0}
        for weight in sorted({r["weight"] for r in group}):
            these = [r for r in group if r["weight"] == weight]
            d_overlap = [r["topk_overlap"] - plain[r["seed"]]["topk_overlap"] for r in these if r["seed"] in plain]
            d_acc = [100 * (r["accuracy"] - plain[r["seed"]]["accuracy"]) for r in these if r["seed"] in plain]
            lines.append(f"| {data} | {family} | {method} | {weight:g} | "
                         f"{statistics.median(r['accuracy'] for r in these):.4f} | "
                         f"{statistics.median(r['topk_overlap'] for r in these):.3f} | "
                         f"{statistics.median(d_overlap):+.3f} | {statistics.median(d_acc):+.2f} | "
                         f"{statistics.median(r['seconds'] for r in these):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits", "signals"])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--distill-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--kd-peer", action="store_true", help="also prune-50 fine-tuned with teacher=True")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.families, args.distill_epochs, args.samples = ["digits"], ["mlp"], 20, 150
    if 0.0 not in args.weights:
        args.weights = [0.0, *args.weights]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            if name == "signals":
                from compress_vs_peers import make_signals

                data = load_data(str(make_signals(Path(tmp) / "signals.npz")))
            else:
                data = load_data(name)
            for family in args.families:
                rows += run(name, data, family, args, log)
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
