"""Peak memory and time of loading a large CSV and training an MLP on it.

    python benchmarks/data_memory.py [--rows 1000000] [--cols 50] [--csv /tmp/big.csv] [--epochs 1] [--trace]
    python benchmarks/data_memory.py --compare-reader --before-tree /path/to/older/checkout [--quick]

Writes (once, if the file does not exist) a CSV of `rows` x `cols` (cols - 1 float features, an integer
label), then runs, each in a fresh subprocess so the peak is its own: `load` (`trainers.load_data`) and
`load+train` (`load_data` then `trainers.train`, MLP, `--epochs`, batch 512, CPU). The peak resident
memory of each subprocess comes from `resource.getrusage(RUSAGE_SELF).ru_maxrss`; the baseline is the
peak of a subprocess that only imports the toolkit (torch, pandas, pyarrow). "Copies" = (peak - baseline) /
bytes of the data as float32 (rows x cols x 4).

`--trace` instead runs `load+train` (`load` alone with `--epochs 0`) in one subprocess and prints the resident
memory (VmRSS) and each step's peak (VmHWM, reset before every step) from /proc/self/status around the steps
of loading and training, in MiB above the memory after the imports (Linux): where the peak comes from.

`--compare-reader` measures two code trees side by side (this one and `--before-tree`, each put first on
the subprocess's PYTHONPATH), in interleaved rounds: `read` (`tables.read_table` only) and `load` on a
2.4M x 10 CSV, then `load+train` on the `--rows` x `--cols` CSV. `--quick` shrinks both to a tenth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
import trainers, pandas, torch, pyarrow.csv  # library imports: the baseline
from trainers import TrainConfig, load_data, train
mode, path, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
start = time.perf_counter()
seconds = {}
if mode == "read":
    from pathlib import Path
    from trainers.tables import read_table
    frame = read_table(Path(path))
    seconds["load"] = time.perf_counter() - start
elif mode != "baseline":
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

TRACE = """
import functools, sys, time
import trainers, pandas, torch, pyarrow.csv
from trainers import TrainConfig, data, fit, load_data, loop, tables, train

def status():
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
            if k in ("VmRSS", "VmHWM")}

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

start = status()["VmRSS"]

def traced(module, name):
    inner = getattr(module, name)

    @functools.wraps(inner)
    def step(*args, **kwargs):
        before = status()["VmRSS"]
        reset_peak()
        tick = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            now = status()
            print(f"{name:<16} before {(before - start) / 2**20:6.0f}  peak {(now['VmHWM'] - start) / 2**20:6.0f}  "
                  f"after {(now['VmRSS'] - start) / 2**20:6.0f}  ({time.perf_counter() - tick:.1f}s)", flush=True)
            reset_peak()
    setattr(module, name, step)

steps = [(tables, "read_table"), (tables, "_numeric_labels"), (data, "split_indices"), (tables, "drop_reasons"),
         (tables, "fit_table"), (tables, "transform"), (data, "_normalisation"), (data, "_fingerprint"),
         (loop, "train_epoch"), (fit, "_final_metrics")]
for module, name in steps:
    if hasattr(module, name):
        traced(module, name)
torch.set_num_threads(2)
bundle = load_data(sys.argv[1])
if int(sys.argv[2]):
    train(bundle, "mlp", TrainConfig(epochs=int(sys.argv[2]), batch_size=512, device="cpu"), progress=False)
print(f"held at the end {(status()['VmRSS'] - start) / 2**20:.0f} MiB above the imports")
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


def run(mode: str, path: Path, epochs: int, tree: Path | None = None) -> dict:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    tick = time.perf_counter()
    # `python -c` puts its working directory first on sys.path, before PYTHONPATH: run in the tree measured.
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(epochs)], check=True,
                         capture_output=True, text=True, env=env, cwd=tree)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - tick}


def compare(args) -> None:
    """Peak RSS and time of two code trees, interleaved rounds; medians of per-round ratios (before / after)."""
    here = Path(__file__).resolve().parents[1]
    trees = {"before": args.before_tree.resolve(), "after": here}
    scale = 10 if args.quick else 1
    wide = args.csv.with_name(f"rows{2_400_000 // scale // 1000}k_cols10.csv")
    big = args.csv.with_name(f"rows{args.rows // scale // 1000}k_cols{args.cols}.csv")
    cases = [("read", wide, 2_400_000 // scale, 10), ("load", wide, 2_400_000 // scale, 10),
             ("load+train", big, args.rows // scale, args.cols)]
    for mode, path, rows, cols in cases:
        if not path.exists() and (not args.only or mode in args.only):
            write_csv(path, rows, cols)
    base = {name: run("baseline", wide, 1, tree)["peak_bytes"] for name, tree in trees.items()}
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; {args.rounds} round(s)")
    for mode, path, rows, cols in cases:
        if args.only and mode not in args.only:
            continue
        data_bytes = rows * cols * 4
        found = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                found[name].append(run(mode, path, args.epochs, tree))
        print(f"{mode} on {path.name} ({path.stat().st_size / 1e6:.0f} MB, {rows} x {cols}, "
              f"{data_bytes / 2**20:.0f} MiB as float32):")
        for name in trees:
            peak = statistics.median(r["peak_bytes"] for r in found[name])
            seconds = statistics.median(r["load"] + r.get("train", 0.0) for r in found[name])
            print(f"  {name:>6}: peak RSS {peak / 2**20:.0f} MiB ({(peak - base[name]) / data_bytes:.2f} copies above "
                  f"the import baseline), {seconds:.1f}s")
        ratios = [(b["peak_bytes"] - base["before"]) / max(a["peak_bytes"] - base["after"], 1)
                  for b, a in zip(found["before"], found["after"])]
        times = [(b["load"] + b.get("train", 0.0)) / (a["load"] + a.get("train", 0.0))
                 for b, a in zip(found["before"], found["after"])]
        print(f"  median per-round ratio before/after: memory above baseline {statistics.median(ratios):.1f}x, "
              f"time {statistics.median(times):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--csv", type=Path, default=Path("/tmp/data_memory.csv"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="memory around each step of load+train, in-process")
    parser.add_argument("--compare-reader", action="store_true", help="this tree against --before-tree")
    parser.add_argument("--before-tree", type=Path, help="checkout of the code to compare against")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows (compare mode)")
    parser.add_argument("--only", nargs="*", choices=["read", "load", "load+train"], help="these cases only")
    args = parser.parse_args()
    if args.compare_reader:
        if args.before_tree is None:
            parser.error("--compare-reader needs --before-tree")
        compare(args)
        return
    if not args.csv.exists():
        write_csv(args.csv, args.rows, args.cols)
    if args.trace:
        print(f"MiB above the imports; one copy of the data is {args.rows * args.cols * 4 / 2**20:.0f} MiB")
        subprocess.run([sys.executable, "-c", TRACE, str(args.csv), str(args.epochs)], check=True)
        return
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
