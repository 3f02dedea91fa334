"""Peak memory and time of loading a large CSV and training an MLP on it.

    python benchmarks/data_memory.py [--rows 1000000] [--cols 50] [--csv /tmp/big.csv] [--epochs 1]

Writes (once, if the file does not exist) a CSV of `rows` x `cols` (cols - 1 float features, an integer
label), then runs, each in a fresh subprocess so the peak is its own: `load` (`trainers.load_data`) and
`load+train` (`load_data` then `trainers.train`, MLP, `--epochs`, batch 512, CPU). The peak resident
memory of each subprocess comes from `resource.getrusage(RUSAGE_SELF).ru_maxrss`; the baseline is the
peak of a subprocess that only imports the toolkit (torch, pandas). "Copies" = (peak - baseline) /
bytes of the data as float32 (rows x cols x 4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
import trainers, pandas, torch
from trainers import TrainConfig, load_data, train
mode, path, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
start = time.perf_counter()
seconds = {}
if mode != "baseline":
    data = load_data(path)
    seconds["load"] = time.perf_counter() - start
    if mode == "load+train":
        tick = time.perf_counter()
        result = train(data, "mlp", TrainConfig(epochs=epochs, batch_size=512, device="cpu"), progress=False)
        seconds["train"] = time.perf_counter() - tick
        seconds["test_accuracy"] = result.metrics["test_accuracy"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_bytes": peak, **seconds}))
"""


def write_csv(path: Path, rows: int, cols: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    w = rng.normal(size=cols - 1)
    with open(path, "w") as out:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            x = rng.normal(size=(n, cols - 1)).astype(np.float32)
            frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(cols - 1)])
            frame["label"] = (x @ w > 0).astype(int) + (x[:, 0] > 1).astype(int)
            frame.to_csv(out, index=False, header=start == 0, float_format="%.5g")


def run(mode: str, path: Path, epochs: int) -> dict:
    tick = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(epochs)], check=True,
                         capture_output=True, text=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - tick}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--csv", type=Path, default=Path("/tmp/data_memory.csv"))
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if not args.csv.exists():
        write_csv(args.csv, args.rows, args.cols)
    data_bytes = args.rows * args.cols * 4
    base = run("baseline", args.csv, args.epochs)["peak_bytes"]
    print(f"{args.csv} ({args.csv.stat().st_size / 2**20:.0f} MiB on disk), {args.rows} x {args.cols}: "
          f"{data_bytes / 2**20:.0f} MiB as float32; baseline (imports) {base / 2**20:.0f} MiB")
    for mode in ("load", "load+train"):
        r = run(mode, args.csv, args.epochs)
        extra = r["peak_bytes"] - base
        timing = f"load {r['load']:.1f}s" + (f", train {r['train']:.1f}s ({args.epochs} epoch(s), test accuracy "
                                             f"{r['test_accuracy']:.3f})" if "train" in r else "")
        print(f"{mode:>10}: peak RSS {r['peak_bytes'] / 2**20:.0f} MiB, above baseline {extra / 2**20:.0f} MiB "
              f"= {extra / data_bytes:.2f} copies of the data; {timing}")


if __name__ == "__main__":
    main()
