"""Training defaults on small public time-series sets: the schedule counted in epochs only against the
default (epochs and patience covering a least number of optimizer steps, `TrainConfig.for_data`).

    pip install aeon --no-deps      # only for its bundled UCR files; nothing of aeon is imported
    python benchmarks/train_defaults.py [--sets GunPoint ItalyPowerDemand ArrowHead ACSF1 OSULeaf]
                                        [--families mlp cnn] [--seeds 0 1 2] [--out result.json]
                                        [--heads flatten gap]   # the CNN's two heads instead of the schedules
                                        [--selections val_loss val_accuracy_then_loss]  # or the epoch kept
                                        [--npz digits my.npz]   # the toolkit's own sets beside the UCR ones

Each set is the UCR archive's own train/test split, read from the `.ts` files that the aeon package ships
(`--ts-dir` to give another copy). Every configuration is trained with each seed on the same data; the table
gives the test accuracy per seed and the mean, and, where aeon's example results file holds it, the accuracy
published for InceptionTime on the same split (an ensemble of five deep networks: a reference, not a peer of
these small models).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = ("GunPoint", "ItalyPowerDemand", "ArrowHead", "ACSF1", "OSULeaf")


def aeon_dir() -> Path | None:
    spec = importlib.util.find_spec("aeon")
    return Path(spec.origin).parent if spec and spec.origin else None


def read_ts(path: Path) -> tuple[np.ndarray, list[str]]:
    """A univariate or equal-length multivariate `.ts` file: (series (N, C, L), labels)."""
    xs, labels, body = [], [], False
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("@data"):
                body = True
            elif body:
                *channels, label = line.split(":")
                xs.append([[float(v) for v in channel.split(",")] for channel in channels])
                labels.append(label)
    return np.asarray(xs, np.float32), labels


def to_npz(name: str, ts_dir: Path, out: Path) -> Path:
    """`name`'s split as an .npz; `NAME_eq` is the equal-length copy aeon keeps in NAME's folder."""
    folder = ts_dir / name.removesuffix("_eq")
    x, y = read_ts(folder / f"{name}_TRAIN.ts")
    x_test, y_test = read_ts(folder / f"{name}_TEST.ts")
    classes = sorted(set(y) | set(y_test))
    index = {c: i for i, c in enumerate(classes)}
    path = out / f"{name}.npz"
    np.savez(path, x=x, y=np.array([index[c] for c in y]), x_test=x_test,
             y_test=np.array([index[c] for c in y_test]), class_names=np.array(classes))
    return path


def published(root: Path | None) -> dict[str, float]:
    """InceptionTime's accuracy on each set's own split (first column of aeon's example results file)."""
    path = root and root / "testing/example_results_files/classification/accuracy/InceptionTime_accuracy.csv"
    if not path or not path.is_file():
        return {}
    rows = (line.strip().split(",") for line in path.read_text().splitlines()[1:])
    return {row[0]: float(row[1]) for row in rows if len(row) > 1}


def main(argv=None) -> dict:
    from trainers import TrainConfig, load_data, train
    from trainers.fit import EPOCHS, LR_PATIENCE, PATIENCE

    fixed = {"epochs": EPOCHS, "patience": PATIENCE, "lr_patience": LR_PATIENCE}  # in epochs, whatever the data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ts-dir", type=Path, help="a folder of <set>/<set>_TRAIN.ts and _TEST.ts files "
                                                     "(default: the installed aeon package's)")
    parser.add_argument("--heads", nargs="+", choices=["flatten", "gap"],
                        help="compare the CNN's heads (`arch.head`) on the default schedule instead of the schedules")
    parser.add_argument("--selections", nargs="+", choices=["val_loss", "val_accuracy", "val_accuracy_then_loss"],
                        help="compare the epoch kept (`select`) on the default schedule instead of the schedules")
    parser.add_argument("--npz", nargs="+", default=[], help="data sets of the toolkit's own (.npz, or a built-in "
                                                              "name such as digits), compared beside the UCR sets")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.heads:
        arms = {f"head {head}": {"model": {"head": head}} for head in args.heads}
    elif args.selections:
        arms = {f"select {name}": {"select": name} for name in args.selections}
    else:
        arms = {"epochs only": fixed, "default": {}}
    root = aeon_dir()
    ts_dir = args.ts_dir or (root / "datasets/data" if root else None)
    if args.sets and (ts_dir is None or not ts_dir.is_dir()):
        print("no .ts files: pip install aeon --no-deps, or pass --ts-dir", file=sys.stderr)
        raise SystemExit(2)
    reference = published(root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [*args.sets, *args.npz]:
            own = name in args.npz
            data = load_data(name if own else str(to_npz(name, ts_dir, Path(tmp))))
            name = Path(name).stem if own else name
            for family in args.families:
                row = {"set": name, "family": family, "train_rows": int(len(data.y_train)),
                       "published_inceptiontime": reference.get(name)}
                for label, options in arms.items():
                    started, runs = time.perf_counter(), []
                    for seed in args.seeds:
                        result = train(data, family, TrainConfig(device="cpu", seed=seed, **options), progress=False)
                        runs.append({"seed": seed, "test_accuracy": result.metrics["test_accuracy"],
                                     "epochs_run": result.epochs_run, "best_epoch": result.best_epoch})
                    row[label] = {"runs": runs, "mean": float(np.mean([r["test_accuracy"] for r in runs])),
                                  "seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print("| set | family | train rows | " + " | ".join(f"{label}: mean (per seed)" for label in arms)
          + " | InceptionTime (published) |")
    print("| --- | --- | ---: | " + " | ".join("---" for _ in arms) + " | ---: |")
    for r in rows:
        cells = []
        for label in arms:
            seeds = ", ".join(f"{x['test_accuracy']:.3f}" for x in r[label]["runs"])
            cells.append(f"{r[label]['mean']:.3f} ({seeds})")
        ref = r["published_inceptiontime"]
        print(f"| {r['set']} | {r['family']} | {r['train_rows']} | {' | '.join(cells)} | "
              f"{'' if ref is None else f'{ref:.3f}'} |")
    results = {"rows": rows}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
