"""Attribution on the GPU against the CPU: the same trained model, the same inputs, the same methods.

    python benchmarks/gpu_attribution.py [--data digits] [--families mlp cnn lstm] [--samples 512] [--rounds 5]
                                         [--batch-sizes 64 512]

Each family is trained once on the CPU (a few epochs: the timing does not depend on accuracy), then copied to
CUDA. Every round times `explain.attribute` on both copies, the two interleaved (CPU first on even rounds, GPU
first on odd ones); the figure is the median of the per-round ratios CPU seconds / GPU seconds, with the
rounds' spread (min-max). The first call on each device is a warm-up and is not timed. Both devices' attributions
are compared: relative L2 difference ||gpu - cpu|| / ||cpu|| over all values (float32 arithmetic in a different
order, and cuDNN's kernels, give ~1e-6 to 1e-4; a sampled method uses the same seed on both). Each batch size
(`explain.attribute(batch_size=...)`: samples per call of the underlying explainer) is timed on both devices.

Needs a CUDA GPU; exits with a line on stderr and code 2 without one.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

METHODS = {"integrated_gradients": {"n_steps": 64}, "gradient_shap": {}, "shapley": {}}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_attribution: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2

    import explain
    from trainers import TrainConfig, load_data, train

    data = load_data(args.data)
    x = data.x_test[:args.samples]
    background = data.x_train[:64]
    rows = []
    for family in args.families:
        cpu_model = train(args.data, family, TrainConfig(epochs=3, device="cpu"), progress=False).model
        gpu_model = copy.copy(cpu_model)
        gpu_model.module = copy.deepcopy(cpu_model.module).cuda().eval()
        for method, batch_size in ((m, b) for m in args.methods for b in args.batch_sizes):
            options = METHODS.get(method, {})

            def run(model):
                return explain.attribute(model, x, None, method, background=background, seed=0,
                                         batch_size=batch_size, **options)

            run(cpu_model), run(gpu_model)   # warm-up: cuDNN/cuBLAS handles, the CPU path's ONNX twin
            ratios, cpu_s, gpu_s = [], [], []
            for r in range(args.rounds):
                order = (cpu_model, gpu_model) if r % 2 == 0 else (gpu_model, cpu_model)
                seconds = {}
                for model in order:
                    seconds[id(model)], result = _timed(lambda: run(model))
                    if model is cpu_model:
                        cpu_values = result.values
                    else:
                        gpu_values = result.values
                cpu_s.append(seconds[id(cpu_model)])
                gpu_s.append(seconds[id(gpu_model)])
                ratios.append(cpu_s[-1] / gpu_s[-1])
            diff = float(np.linalg.norm(gpu_values - cpu_values) / max(np.linalg.norm(cpu_values), 1e-12))
            row = {"family": family, "method": method, "batch_size": batch_size, "samples": len(x), "cpu_s": statistics.median(cpu_s),
                   "gpu_s": statistics.median(gpu_s), "speedup": statistics.median(ratios),
                   "speedup_min": min(ratios), "speedup_max": max(ratios), "rel_diff": diff}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.data}, {len(x)} samples, {torch.cuda.get_device_name(0)}, CPU threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds\n")
    print("| family | method | batch | CPU s | GPU s | GPU speed-up (median, min-max) | rel. difference |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['family']} | {row['method']} | {row['batch_size']} | {row['cpu_s']:.3f} | {row['gpu_s']:.3f} | "
              f"{row['speedup']:.2f}x ({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) | {row['rel_diff']:.1e} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
