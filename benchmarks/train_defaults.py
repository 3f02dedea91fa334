"""Training defaults on small public time-series sets: the schedule counted in epochs only against the
default (epochs and patience covering a least number of optimizer steps, `TrainConfig.for_data`).

    pip install aeon --no-deps      # only for its bundled UCR files; nothing of aeon is imported
    python benchmarks/train_defaults.py [--sets GunPoint ItalyPowerDemand ArrowHead ACSF1 OSULeaf]
                                        [--families mlp cnn] [--seeds 0 1 2] [--out result.json]
                                        [--heads flatten gap]   # the CNN's two heads instead of the schedules
                                        [--selections val_loss val_accuracy_then_loss]  # or the epoch kept
                                        [--npz digits my.npz]   # the toolkit's own sets beside the UCR ones
                                        [--waveform 4000]        # Breiman's waveform-40, with its Bayes ceiling
                                        [--before]               # the defaults against those the issue measured
                                        [--peers]                # scikit-learn's one-liners on the same rows

Each set is the UCR archive's own train/test split, read from the `.ts` files that the aeon package ships
(`--ts-dir` to give another copy). Every configuration is trained with each seed on the same data; the table
gives the test accuracy per seed and the mean, and, where aeon's example results file holds it, the accuracy
published for InceptionTime on the same split (an ensemble of five deep networks: a reference, not a peer of
these small models).

`--waveform N` adds Breiman's waveform benchmark in its 40-feature version (Breiman, Friedman, Olshen & Stone,
"Classification and Regression Trees", 1984; UCI "Waveform Database Generator (Version 2)"), generated from its
published definition: N rows to train and validate on (the toolkit splits them as any data) and 5,000 test rows
per seed. Its optimal (Bayes) accuracy is computed exactly on the same test rows (`waveform_bayes`), a ceiling
that no classifier can pass on average, so the table says how far each default stays under the best possible.
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


# Breiman's three base waves over 21 positions: h1(m) = max(6 - |m - 11|, 0), h2(m) = h1(m - 4), h3(m) = h1(m + 4).
_M = np.arange(1, 22)
WAVES = np.stack([np.maximum(6 - np.abs(_M - 11 - shift), 0) for shift in (0, 4, -4)]).astype(np.float64)
PAIRS = ((0, 1), (0, 2), (1, 2))  # class c mixes WAVES[a] and WAVES[b]: x = u a + (1 - u) b + noise, u ~ U(0, 1)


def make_waveform(n: int, seed: int, noise_features: int = 19) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows of waveform-40: 21 noisy mixtures of two base waves (unit Gaussian noise), then `noise_features`
    columns of pure unit Gaussian noise; the three classes equally likely."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    u = rng.random((n, 1))
    a, b = (np.array([WAVES[PAIRS[c][i]] for c in y]) for i in (0, 1))
    signal = u * a + (1 - u) * b + rng.standard_normal((n, 21))
    return np.hstack([signal, rng.standard_normal((n, noise_features))]).astype(np.float32), y


def waveform_bayes(x: np.ndarray, grid: int = 2001) -> np.ndarray:
    """The Bayes classifier's class for each row: the noise columns carry no information, and the class
    likelihood of the first 21 is the Gaussian density averaged over the mixing weight u (a fine midpoint rule
    over [0, 1]; the log-likelihoods are combined with log-sum-exp so no row underflows)."""
    u = (np.arange(grid) + 0.5) / grid
    signal = x[:, :21].astype(np.float64)
    scores = []
    for a, b in PAIRS:
        means = u[:, None] * WAVES[a] + (1 - u[:, None]) * WAVES[b]  # (grid, 21)
        d2 = (signal ** 2).sum(1)[:, None] - 2 * signal @ means.T + (means ** 2).sum(1)[None, :]
        log = -0.5 * d2
        peak = log.max(1, keepdims=True)
        scores.append(peak[:, 0] + np.log(np.exp(log - peak).mean(1)))
    return np.argmax(np.stack(scores, 1), 1)


def waveform_npz(rows: int, seed: int, out: Path, test_rows: int = 5000) -> tuple[Path, float]:
    """An .npz of `rows` training rows and `test_rows` test rows drawn with `seed`, and the Bayes classifier's
    accuracy on those test rows."""
    x, y = make_waveform(rows + test_rows, seed)
    path = out / f"waveform40_s{seed}.npz"
    np.savez(path, x=x[:rows], y=y[:rows], x_test=x[rows:], y_test=y[rows:],
             class_names=np.array(["h1+h2", "h1+h3", "h2+h3"]))
    return path, float((waveform_bayes(x[rows:]) == y[rows:]).mean())


def _sklearn_lr(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def _sklearn_mlp(seed: int):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(early_stopping=True, random_state=seed, max_iter=1000))


# What a user could fit instead in one line (scikit-learn's defaults, the inputs standardized, the MLP with its
# own early stopping on a 10% validation split of the rows it is given).
PEERS = {"sklearn LogisticRegression": _sklearn_lr, "sklearn MLPClassifier (early stopping)": _sklearn_mlp}


def peer_accuracy(estimator, data) -> float:
    """A scikit-learn estimator fitted on the toolkit's training and validation rows (flattened), scored on its
    test rows: the same rows the toolkit's model learns from and is scored on."""
    x = np.concatenate([np.asarray(data.x_train), np.asarray(data.x_val)]).reshape(-1, int(np.prod(data.input_shape)))
    y = np.concatenate([data.y_train, data.y_val])
    estimator.fit(x, y)
    return float(estimator.score(np.asarray(data.x_test).reshape(len(data.y_test), -1), data.y_test))


def published(root: Path | None) -> dict[str, float]:
    """InceptionTime's accuracy on each set's own split (first column of aeon's example results file)."""
    path = root and root / "testing/example_results_files/classification/accuracy/InceptionTime_accuracy.csv"
    if not path or not path.is_file():
        return {}
    rows = (line.strip().split(",") for line in path.read_text().splitlines()[1:])
    return {row[0]: float(row[1]) for row in rows if len(row) > 1}


def main(argv=None) -> dict:
    from trainers import TrainConfig, load_data, train
    from trainers.trainconfig import EPOCHS, LR_PATIENCE, PATIENCE

    fixed = {"epochs": EPOCHS, "patience": PATIENCE, "lr_patience": LR_PATIENCE}  # in epochs, whatever the data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS), help="UCR sets (none: `--sets` alone)")
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
    parser.add_argument("--waveform", type=int, metavar="ROWS",
                        help="add waveform-40 with ROWS rows to train on, drawn anew for each seed (module docstring)")
    parser.add_argument("--before", action="store_true",
                        help="compare the defaults with those the issue measured (the lowest validation loss kept, "
                             "no refit) instead of the schedules")
    parser.add_argument("--peers", action="store_true",
                        help="add scikit-learn's LogisticRegression and MLPClassifier (early stopping), fitted on the "
                             "same training and validation rows and scored on the same test rows")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.before:
        arms = {"before (val_loss, no refit)": {"select": "val_loss", "refit": False}, "default": {}}
    elif args.heads:
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
        # Each set: its name and, per seed, its data and the Bayes ceiling where known. Only the waveform is drawn
        # anew for each seed; the others are read once.
        sets = []
        for name in [*args.sets, *args.npz]:
            own = name in args.npz
            data = load_data(name if own else str(to_npz(name, ts_dir, Path(tmp))))
            sets.append((Path(name).stem if own else name, lambda seed, data=data: (data, None)))
        if args.waveform:
            bayes: dict[int, tuple] = {}

            def waveform(seed: int) -> tuple:
                if seed not in bayes:
                    path, ceiling = waveform_npz(args.waveform, seed, Path(tmp))
                    bayes[seed] = (load_data(str(path)), ceiling)
                return bayes[seed]

            sets.append(("waveform40", waveform))
        for name, data_for in sets:
            for family in args.families:
                row = {"set": name, "family": family, "train_rows": int(len(data_for(args.seeds[0])[0].y_train)),
                       "published_inceptiontime": reference.get(name)}
                for label, options in arms.items():
                    started, runs = time.perf_counter(), []
                    for seed in args.seeds:
                        data, ceiling = data_for(seed)
                        result = train(data, family, TrainConfig(device="cpu", seed=seed, **options), progress=False)
                        runs.append({"seed": seed, "test_accuracy": result.metrics["test_accuracy"],
                                     "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                                     **({} if ceiling is None else {"bayes_accuracy": ceiling})})
                    row[label] = {"runs": runs, "mean": float(np.mean([r["test_accuracy"] for r in runs])),
                                  "seconds": round(time.perf_counter() - started, 1)}
                if args.peers:
                    for label, make in PEERS.items():
                        runs = []
                        for seed in args.seeds:
                            data = data_for(seed)[0]
                            runs.append({"seed": seed, "test_accuracy": peer_accuracy(make(seed), data)})
                        row[label] = {"runs": runs, "mean": float(np.mean([r["test_accuracy"] for r in runs]))}
                ceilings = [data_for(seed)[1] for seed in args.seeds]
                if None not in ceilings:
                    row["bayes_accuracy"] = float(np.mean(ceilings))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.peers:
        arms = {**arms, **PEERS}
    print("| set | family | train rows | " + " | ".join(f"{label}: mean (per seed)" for label in arms)
          + " | InceptionTime (published) | Bayes (exact) |")
    print("| --- | --- | ---: | " + " | ".join("---" for _ in arms) + " | ---: | ---: |")
    for r in rows:
        cells = []
        for label in arms:
            seeds = ", ".join(f"{x['test_accuracy']:.3f}" for x in r[label]["runs"])
            cells.append(f"{r[label]['mean']:.3f} ({seeds})")
        ref, ceiling = r["published_inceptiontime"], r.get("bayes_accuracy")
        print(f"| {r['set']} | {r['family']} | {r['train_rows']} | {' | '.join(cells)} | "
              f"{'' if ref is None else f'{ref:.3f}'} | {'' if ceiling is None else f'{ceiling:.3f}'} |")
    results = {"rows": rows}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
