"""`toolkit predict` on a large CSV against 20-line ONNX Runtime scripts (pandas, pyarrow): time, memory, outputs.

    python benchmarks/predict_vs_hand.py [--rows 20000 100000] [--rounds 3] [--work /tmp/predict_bench]
    python benchmarks/predict_vs_hand.py --rows 250000 1000000 --rounds 5 --before-tree /path/to/older/checkout

Makes (once, in --work) a numeric table (6 float columns, one with 5% missing cells, 3 classes), trains an MLP
on 800 of its rows and exports its onnx-fp32 variant, whose `model.raw.onnx` takes raw rows (the preprocessing
inside). Then, for each --rows, writes a CSV of that many rows and runs, in interleaved rounds, each in a fresh
process: `toolkit predict VARIANT rows.csv --out p.csv` (this tree; `--before-tree` adds an older one), and
two peers, each one session on model.raw.onnx called once per chunk, the same CSV written chunk by chunk: `HAND`
(pandas' chunked reader and `to_csv`) and `HAND_ARROW` (pyarrow's streaming CSV reader and writer, 4 MiB blocks;
the competent script the sixth audit wrote, which the pandas one flattered). Every session uses ONNX Runtime's
default thread count. Prints, per size and program, the median seconds and peak resident memory (the child's own
ru_maxrss, from wait4), the median of the per-round ratios to each peer, and whether each peer's output agrees
with the toolkit's (same classes, largest difference of a probability).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HAND = """
import json, sys, numpy as np, pandas as pd, onnxruntime as ort
model, rows, out = sys.argv[1:4]
spec = json.load(open(model + "/model.json"))
names, columns = spec["class_names"], spec["preprocessing"]["table"]["columns"]
session = ort.InferenceSession(model + "/model.raw.onnx", providers=["CPUExecutionProvider"])
first = True
with open(out, "w") as handle:
    for chunk in pd.read_csv(rows, chunksize=65536, dtype=np.float32):
        logits = session.run(None, {session.get_inputs()[0].name: chunk[columns].to_numpy(np.float32)})[0]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        k = p.argmax(1)
        table = pd.DataFrame({"predicted": np.array(names)[k], "predicted_index": k})
        table[[f"p_{n}" for n in names]] = p
        table.to_csv(handle, index=False, header=first)
        first = False
"""

HAND_ARROW = """
import json, sys, numpy as np, pyarrow as pa, pyarrow.csv as pc, onnxruntime as ort
model, rows, out = sys.argv[1:4]
spec = json.load(open(model + "/model.json"))
names, columns = np.array(spec["class_names"]), spec["preprocessing"]["table"]["columns"]
session = ort.InferenceSession(model + "/model.raw.onnx", providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
reader = pc.open_csv(rows, read_options=pc.ReadOptions(block_size=4 << 20), convert_options=pc.ConvertOptions(
    include_columns=columns, column_types={c: pa.float32() for c in columns}))
schema = pa.schema([("predicted", pa.string()), ("predicted_index", pa.int64())]
                   + [(f"p_{n}", pa.float32()) for n in names])
with pc.CSVWriter(out, schema, write_options=pc.WriteOptions(quoting_style="needed")) as writer:
    for batch in reader:
        x = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in columns]).astype(np.float32)
        logits = session.run(None, {name: x})[0]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        k = p.argmax(1)
        writer.write_table(pa.table({"predicted": names[k], "predicted_index": k,
                                     **{f"p_{n}": p[:, i] for i, n in enumerate(names)}}))
"""
PEERS = {"hand": HAND, "arrow": HAND_ARROW}  # program name: its script


def make_rows(path: Path, n: int, seed: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 5] = x[:, 5] * 1000 + 5000
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    frame.loc[rng.choice(n, n // 20, replace=False), "f1"] = np.nan
    if seed == 1:  # the training table has labels
        y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype(int) + (x[:, 3] > 1)
        frame["cls"] = np.array(["lo", "mid", "hi"])[y]
    frame.to_csv(path, index=False, float_format="%.5g")


def toolkit(tree: Path, *args: str) -> list[str]:
    """The toolkit of `tree`, run from there (`-m` puts the working directory first on the path)."""
    return ["sh", "-c", 'cd "$0" && exec "$@"', str(tree), "env", f"PYTHONPATH={tree}", sys.executable, "-m",
            "cli.main", *args]


def make_model(work: Path) -> Path:
    variant = work / "c" / "variants" / "onnx-fp32"
    if (variant / "model.raw.onnx").is_file():
        return variant
    make_rows(work / "train.csv", 800, seed=1)
    for args in (("train", str(work / "train.csv"), "--model", "mlp", "--epochs", "3", "--out", str(work / "m")),
                 ("compress", str(work / "m"), "--data", str(work / "train.csv"), "--method", "onnx-fp32",
                  "--out", str(work / "c"))):
        subprocess.run(toolkit(ROOT, "--quiet", *args), check=True, stdout=subprocess.DEVNULL)
    return variant


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and the child's peak resident bytes."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    process.returncode = 0
    return seconds, usage.ru_maxrss * 1024


def compare(ours: Path, hand: Path) -> str:
    import numpy as np
    import pandas as pd

    a, b = pd.read_csv(ours), pd.read_csv(hand)
    same = int((a["predicted"].to_numpy() == b["predicted"].to_numpy()).sum())
    dp = float(np.abs(a.filter(like="p_").to_numpy() - b.filter(like="p_").to_numpy()).max()) if len(a) else 0.0
    return f"classes agree on {same} of {len(a)} rows, largest |dp| {dp:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/predict_bench"))
    parser.add_argument("--before-tree", type=Path, help="an older checkout to time too")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    variant = make_model(args.work)
    for peer, script in PEERS.items():
        (args.work / f"{peer}.py").write_text(script)
    trees = {"toolkit": ROOT, **({"before": args.before_tree.resolve()} if args.before_tree else {})}
    for n in args.rows:
        rows = args.work / f"rows_{n}.csv"
        if not rows.is_file():
            make_rows(rows, n, seed=2)
        programs = {name: toolkit(tree, "--quiet", "predict", str(variant), str(rows), "--out",
                                  str(args.work / f"{name}_{n}.csv"), "--overwrite") for name, tree in trees.items()}
        for peer in PEERS:
            programs[peer] = [sys.executable, str(args.work / f"{peer}.py"), str(variant), str(rows),
                              str(args.work / f"{peer}_{n}.csv")]
        runs = {name: [] for name in programs}
        for _ in range(args.rounds):
            for name, command in programs.items():
                runs[name].append(timed(command))
        print(f"{n:,} rows ({rows.stat().st_size / 1e6:.0f} MB), {args.rounds} interleaved rounds")
        for peer in PEERS:
            print(f"  toolkit against {peer}: {compare(args.work / f'toolkit_{n}.csv', args.work / f'{peer}_{n}.csv')}")
        for name, measured in runs.items():
            ratios = "  ".join(f"{statistics.median(s / h for (s, _), (h, _) in zip(measured, runs[peer])):.2f}x "
                               f"{peer}" for peer in PEERS)
            print(f"  {name:8s} {statistics.median(s for s, _ in measured):7.2f} s  "
                  f"peak {max(m for _, m in measured) / 2**20:6.0f} MiB  {ratios} (medians of per-round ratios)")


if __name__ == "__main__":
    main()
