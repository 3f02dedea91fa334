"""The training loop: AdamW, LR on plateau, early stopping on validation loss, best weights kept.

Readable top to bottom: `train()` validates, prepares the run directory, then
loops over epochs; each epoch is `_train_epoch` + `evaluate`. The data lives on
the training device as tensors (moved once), batches are index slices, and on
CUDA the forward pass runs under autocast (bf16 where supported, else fp16
with a gradient scaler). Under torchrun the same loop runs in every process
(DistributedDataParallel, sharded batches, metrics summed over ranks; only
rank 0 writes files): the helpers are in `distributed.py`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator, AliasChoices, Field, Strict
from torch import nn

from . import distributed
from .artifact import LoadedModel, ModelSpec, write_artifact
from .checkpoint import cpu_state, load_checkpoint, save_checkpoint
from .data import DataBundle, load_data
from .env import environment, package_versions
from .errors import ToolkitError
from .models import build_model, config_dict, get_family, make_config
from .options import FORBID_EXTRA, Bool, NonNegativeInt, PositiveFloat, PositiveInt, check
from .rundir import RunDir


def _device_name(value: str) -> str:
    if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return value


@dataclass
class TrainConfig:
    """Training options, each default and bound declared once; saved as `config.json` beside the results.

    `model` holds the architecture options of the family (`arch` in config files and on the command line).
    """

    __pydantic_config__ = FORBID_EXTRA

    epochs: PositiveInt = 100
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 3e-3
    weight_decay: Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)] = 1e-4
    patience: PositiveInt = 15
    lr_patience: PositiveInt = 5
    device: Annotated[str, Strict(), AfterValidator(_device_name)] = "auto"
    seed: NonNegativeInt = 0
    amp: Bool = True
    model: Annotated[dict, Field(validation_alias=AliasChoices("arch", "model"), serialization_alias="arch")] = field(
        default_factory=dict)

    def validate(self) -> None:
        """One ToolkitError line naming the first bad option (`trainers.options.check`)."""
        check(self)


@dataclass
class TrainResult:
    """What `train` returns and writes as `result.json`."""

    model: LoadedModel
    metrics: dict
    history: list[dict]
    device: str
    epochs_run: int
    best_epoch: int
    seconds: float
    interrupted: bool = False
    out: Path | None = None
    processes: int = 1

    def to_dict(self) -> dict:
        """The `result.json` object, built through its schema (trainers.schema.TrainResultFile)."""
        from .schema import TrainResultFile

        return TrainResultFile(
            family=self.model.spec.family,
            data=self.model.spec.data,
            metrics=self.metrics,
            device=self.device,
            epochs_run=self.epochs_run,
            best_epoch=self.best_epoch,
            seconds=round(self.seconds, 3),
            interrupted=self.interrupted,
            processes=self.processes,
            history=self.history,
            artifact=str(self.out) if self.out else None,
        ).dump()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ToolkitError("--device cuda was requested but no CUDA GPU is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(data: DataBundle | str, family: str, config: TrainConfig | None = None, *, out: str | Path | None = None,
          overwrite: bool = False, resume: bool = False, progress: bool | None = None,
          target: str | None = None) -> TrainResult:
    """Train a classifier of `family` on `data`; write an artifact to `out` if given.

    Args:
        data: a DataBundle, or a data spec for `load_data` (built-in name or path).
        family: a registered model family (`list_models()`).
        config: training options (defaults are tuned to give a good model).
        out: run directory; the artifact and `result.json` are committed there at the end.
        resume: continue an interrupted run in `out` from its last checkpoint.
        progress: show a progress bar on stderr (default: when stderr is a terminal).

    Under torchrun (WORLD_SIZE > 1) every process calls this; `batch_size` stays the
    global batch per optimizer step, and only rank 0 writes `out`.
    """
    config = config or TrainConfig()
    config.validate()
    get_family(family)
    arch = make_config(family, config.model)
    ctx, device = distributed.context(resolve_device(config.device))
    try:
        distributed.per_rank_batch(config.batch_size, ctx)
        if not isinstance(data, DataBundle):
            data = load_data(data, target=target, seed=config.seed)
        seed_everything(config.seed)  # the same initial weights on every rank
        module = build_model(family, arch, data.input_shape, data.num_classes, data.mean, data.std).to(device)
        spec = _spec(family, arch, data, config)
        run = RunDir(out, overwrite=overwrite, resume=resume) if out is not None and ctx.is_main else None
        resume_from = distributed.resume_dir(out, resume, run, ctx)
        with (run or contextlib.nullcontext()):
            if run is not None:
                run.write_json("config.json", {"stage": "train", "family": family, "data": data.source,
                                               "target": target, "processes": ctx.world_size, **asdict(config)})
                run.write_json("env.json", environment())
            result = _fit(module, spec, data, config, device, run, progress, ctx, resume_from)
            if run is not None:
                result.model.spec = write_artifact(run.path, result.model.module, spec, result.metrics)
                run.write_json("result.json", result.to_dict())
                if not result.interrupted:
                    (run.path / "checkpoint.pt").unlink(missing_ok=True)
                result.out = run.commit()
                result.model.path = result.out
    except BaseException:
        distributed.shutdown(ctx, failed=True)
        raise
    distributed.shutdown(ctx)
    return result


def _spec(family, arch, data: DataBundle, config: TrainConfig) -> ModelSpec:
    return ModelSpec(
        family=family, config=config_dict(arch), input_shape=list(data.input_shape), layout=data.layout,
        class_names=data.class_names, feature_names=data.feature_names,
        preprocessing={"kind": "standardize", "axis": "feature" if data.layout == "features" else "channel",
                       "mean": data.mean.tolist(), "std": data.std.tolist()},
        training=asdict(config), data=data.summary(), versions=_package_versions(),
    )


def _fit(module: nn.Module, spec: ModelSpec, data: DataBundle, config: TrainConfig, device: torch.device,
         run: RunDir | None, progress: bool | None, ctx: distributed.DistContext = distributed.DistContext(),
         resume_from: Path | None = None) -> TrainResult:
    started = time.perf_counter()
    tensors = _to_device(data, device)
    model = distributed.wrap(module, ctx, device)  # DDP with several processes, else `module` itself
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=config.lr_patience)
    amp_dtype = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    state = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": [],
             "best_state": cpu_state(module)}
    if resume_from is not None:
        state = load_checkpoint(resume_from, module, optimizer, scheduler, scaler, spec)
    interrupted = False
    bar = _progress(progress) if ctx.is_main else None
    task = bar.add_task("training", total=config.epochs, completed=state["epoch"]) if bar else None
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            tick = time.perf_counter()
            train_loss, train_acc = _train_epoch(model, optimizer, scaler, tensors, config, epoch, amp_dtype, ctx)
            val_loss, val_acc = _evaluate_ranks(module, tensors["x_val"], tensors["y_val"], amp_dtype, ctx)
            scheduler.step(val_loss)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                   "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - tick, 4)}
            state["history"].append(row)
            state["epoch"] = epoch
            if val_loss < state["best_val_loss"] - 1e-4:
                state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0, best_state=cpu_state(module))
            else:
                state["bad_epochs"] += 1
            if run is not None:
                save_checkpoint(run, row, module, optimizer, scheduler, scaler, spec, state)
            if bar:
                bar.update(task, advance=1, description=f"epoch {epoch} val_acc {val_acc:.3f}")
            if state["bad_epochs"] >= config.patience:
                break
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted: keeping the best model so far (epoch {state['best_epoch']})", file=sys.stderr)
    finally:
        if bar:
            bar.stop()
    module.load_state_dict(state["best_state"])
    module.eval()
    distributed.record_replica_hash(module, ctx)
    metrics = _final_metrics(module, tensors, amp_dtype, spec.class_names)
    return TrainResult(model=LoadedModel(module=module, spec=spec, metrics=metrics), metrics=metrics,
                       history=state["history"], device=str(device), epochs_run=state["epoch"],
                       best_epoch=state["best_epoch"], seconds=time.perf_counter() - started, interrupted=interrupted,
                       processes=ctx.world_size)


def _train_epoch(model, optimizer, scaler, tensors, config, epoch, amp_dtype,
                 ctx: distributed.DistContext = distributed.DistContext()) -> tuple[float, float]:
    model.train()
    x, y = tensors["x_train"], tensors["y_train"]
    # Seeded per epoch, so a resumed run shuffles and drops out exactly as an uninterrupted one; the
    # shuffle is shared by all ranks (each takes its shard), dropout differs per rank.
    order = distributed.epoch_indices(len(y), config.seed * 100_003, epoch, ctx).to(x.device)
    torch.manual_seed(config.seed * 100_003 + epoch + 1_000_003 * ctx.rank)
    batch_size = distributed.per_rank_batch(config.batch_size, ctx)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        xb, yb = x[index], y[index]
        with _autocast(x.device, amp_dtype):
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
    # One device-to-host sync (and one all-reduce) per epoch, not per batch.
    total_loss, total_correct, count = distributed.all_sum([loss_sum.item(), correct.item(), len(order)], ctx, x.device)
    return total_loss / count, total_correct / count


def _evaluate_ranks(module, x, y, amp_dtype, ctx: distributed.DistContext) -> tuple[float, float]:
    """`evaluate` on this rank's share of the split, summed over ranks: the same figures on every rank."""
    if not ctx.enabled:
        return evaluate(module, x, y, amp_dtype)
    x, y = distributed.shard(x, ctx), distributed.shard(y, ctx)
    loss, acc = evaluate(module, x, y, amp_dtype)
    loss_sum, correct, count = distributed.all_sum([loss * len(y), acc * len(y), len(y)], ctx, x.device)
    return loss_sum / max(count, 1), correct / max(count, 1)


@torch.inference_mode()
def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype=None, batch_size: int = 2048):
    """Mean cross-entropy and accuracy of `module` on tensors already on its device."""
    was_training = module.training
    module.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with _autocast(x.device, amp_dtype):
            logits = module(xb).float()
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    module.train(was_training)
    return loss_sum / max(len(y), 1), correct / max(len(y), 1)


@functools.cache
def _package_versions() -> dict:
    """Library versions for model.json, looked up once per process (importlib.metadata is slow)."""
    return package_versions()


def _final_metrics(module, tensors, amp_dtype, class_names) -> dict:
    metrics = {}
    for split in ("train", "val", "test"):
        loss, acc = evaluate(module, tensors[f"x_{split}"], tensors[f"y_{split}"], amp_dtype)
        metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = round(loss, 6), round(acc, 6)
    with torch.inference_mode(), _autocast(tensors["x_test"].device, amp_dtype):
        predicted = module(tensors["x_test"]).argmax(1).cpu().numpy()
    truth = tensors["y_test"].cpu().numpy()
    k = len(class_names)
    # scikit-learn's confusion_matrix and precision_recall_fscore_support(zero_division=0), without their overhead.
    confusion = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    hits, support, predicted_count = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(hits / predicted_count)
        recall = np.nan_to_num(hits / support)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    metrics["test_confusion_matrix"] = confusion.tolist()
    metrics["test_per_class"] = [
        {"class": name, "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
         "support": int(n)} for name, p, r, f, n in zip(class_names, precision, recall, f1, support)
    ]
    return metrics


def _to_device(data: DataBundle, device: torch.device) -> dict[str, torch.Tensor]:
    """All splits as tensors on `device`, moved once (small data sets fit easily)."""
    out = {}
    for split in ("train", "val", "test"):
        out[f"x_{split}"] = torch.from_numpy(getattr(data, f"x_{split}")).to(device)
        out[f"y_{split}"] = torch.from_numpy(getattr(data, f"y_{split}")).to(device)
    return out


def _autocast(device: torch.device, amp_dtype):
    """Autocast to `amp_dtype`, or no context at all when mixed precision is off (cheaper per batch)."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


def _amp_dtype(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _progress(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=False)
    bar.start()
    return bar
