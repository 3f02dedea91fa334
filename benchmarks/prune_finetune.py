"""Structured pruning on the dependency graph: 50% of the units, fine-tuned with and without the unpruned model
as teacher, L1 against L2 importance, per built-in family, several seeds.

    python benchmarks/prune_finetune.py [--work DIR] [--families mlp cnn lstm] [--seeds 0 1 2]
                                        [--criteria l1 l2] [--teacher off on] [--epochs 10] [--quick] [--out FILE]

Each family's model is trained once with the default recipe (cached under --work, the same models as
benchmarks/prune_distill.py) on digits. For every (criterion, teacher, seed) the model is pruned by
`compress.prune.structured_prune` (allocation: the family default) and fine-tuned for --epochs; the row holds
the test accuracy, its drop in points against the unpruned model, the widths and the parameter ratio.
The summary gives, per family and setting, the mean test accuracy over the seeds and the seed-0 drop.
--quick: one seed, 2 fine-tune epochs, the default criterion only (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.prune import structured_prune  # noqa: E402
from trainers import accuracy, load_data, load_model, train  # noqa: E402


def teacher(data, family: str, work: Path):
    path = work / family
    if not (path / "model.json").is_file():
        train(data, family, out=path, progress=False)
    return load_model(path)


def run(model, data, criterion: str, use_teacher: bool, seed: int, epochs: int) -> dict:
    start = time.perf_counter()
    [variant] = structured_prune(model, data, ratio=0.5, finetune_epochs=epochs, criterion=criterion,
                                 teacher=use_teacher, seed=seed)
    base, acc = accuracy(model, data.x_test, data.y_test), accuracy(variant.model, data.x_test, data.y_test)
    before, after = variant.recipe["parameters"]
    return {"criterion": criterion, "teacher": use_teacher, "seed": seed, "accuracy": acc,
            "drop_points": round(100 * (base - acc), 2), "widths": variant.recipe["widths_after"],
            "allocation": variant.recipe["allocation"], "parameter_ratio": round(before / after, 2),
            "seconds": round(time.perf_counter() - start, 1)}


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["family"], r["criterion"], r["teacher"]) for r in rows}):
        group = [r for r in rows if (r["family"], r["criterion"], r["teacher"]) == key]
        seed0 = [r["drop_points"] for r in group if r["seed"] == 0]
        out.append({"family": key[0], "criterion": key[1], "teacher": key[2], "seeds": len(group),
                    "mean_accuracy_pct": round(100 * float(np.mean([r["accuracy"] for r in group])), 2),
                    "seed0_drop_points": seed0[0] if seed0 else None,
                    "parameter_ratio": group[0]["parameter_ratio"]})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "prune_distill_teachers")
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--criteria", nargs="+", default=["l1", "l2"], choices=["l1", "l2"])
    parser.add_argument("--teacher", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.criteria = args.seeds[:1], 2, args.criteria[:1]
    data = load_data("digits")
    rows = []
    for family in args.families:
        model = teacher(data, family, args.work)
        base = accuracy(model, data.x_test, data.y_test)
        for seed in args.seeds:  # seeds outermost within a family: the settings are interleaved
            for criterion in args.criteria:
                for flag in args.teacher:
                    row = {"family": family, "base_accuracy": base,
                           **run(model, data, criterion, flag == "on", seed, args.epochs)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"rows": rows, "summary": summary(rows)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    main()
