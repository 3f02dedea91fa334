"""Structured pruning on the dependency graph: 50% of the units, fine-tuned with and without the unpruned model
as teacher, L1 against L2 importance, per built-in family, several seeds.

    python benchmarks/prune_finetune.py [--work DIR] [--families mlp cnn lstm residual gru] [--seeds 0 1 2]
                                        [--criteria l1 l2] [--teacher off on] [--epochs 10] [--quick] [--out FILE]

Each family's model is trained once with the default recipe (cached under --work, the same models as
benchmarks/prune_distill.py) on digits. For every (criterion, teacher, seed) the model is pruned by
`compress.prune.structured_prune` (allocation: the family default) and fine-tuned for --epochs; the row holds
the test accuracy, its drop in points against the unpruned model, the widths and the parameter ratio.
"residual" and "gru" are user-style modules that are no toolkit family (a residual 1-D CNN with BatchNorm
and a 2-layer GRU, reading the image rows as 8 channels / 8 steps), trained 30 epochs by the training loop;
their pruned variants are ONNX artifacts. The summary gives, per family and setting, the mean test accuracy over the seeds and the seed-0 drop.
--quick: one seed, 2 fine-tune epochs, the default criterion only (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compress.prune import structured_prune  # noqa: E402
from trainers import LoadedModel, ModelSpec, accuracy, load_data, load_model, train  # noqa: E402
from trainers.loop import LoopOptions, split_tensors, training_loop  # noqa: E402
from trainers.models import register_family  # noqa: E402

USER_FAMILY = "benchmark-user"  # no toolkit family: the model is only its module


class Residual1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block1 = nn.Conv1d(8, 32, 3, padding=1), nn.Conv1d(32, 32, 3, padding=1)
        self.norm, self.block2, self.head = nn.BatchNorm1d(32), nn.Conv1d(32, 32, 3, padding=1), nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x.flatten(1, 2) / 16))
        h = h + torch.relu(self.norm(self.block1(h)))
        return self.head((h + torch.relu(self.block2(h))).mean(-1))


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.GRU(8, 64, num_layers=2, batch_first=True), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.rnn(x.flatten(1, 2) / 16)[0][:, -1])


USER_MODELS = {"residual": Residual1d, "gru": GRUNet}


def user_model(data, name: str) -> LoadedModel:
    @dataclasses.dataclass
    class NoConfig:
        pass

    register_family(USER_FAMILY, NoConfig)(nn.Module)
    torch.manual_seed(0)
    module = USER_MODELS[name]()
    training_loop(module, split_tensors(data, torch.device("cpu"), ("train", "val")),
                  LoopOptions(epochs=30, lr=3e-3, select="val_accuracy"))
    spec = ModelSpec(family=USER_FAMILY, config={}, input_shape=list(data.input_shape), layout="image",
                     class_names=[str(c) for c in range(data.num_classes)])
    return LoadedModel(module=module.eval(), spec=spec)


def teacher(data, family: str, work: Path):
    if family in USER_MODELS:
        return user_model(data, family)
    path = work / family
    if not (path / "model.json").is_file():
        train(data, family, out=path, progress=False)
    return load_model(path)


def run(model, data, criterion: str, use_teacher: bool, seed: int, epochs: int) -> dict:
    start = time.perf_counter()
    [variant] = structured_prune(model, data, ratio=0.5, finetune_epochs=epochs, criterion=criterion,
                                 teacher=use_teacher, seed=seed)
    base, acc = accuracy(model, data.x_test, data.y_test), accuracy(variant.model.module, data.x_test, data.y_test)
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
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "lstm"],
                        choices=["mlp", "cnn", "lstm", *USER_MODELS])
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
