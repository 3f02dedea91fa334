"""The one training loop: `train`, the fine-tune after pruning and distillation all run it.

Readable top to bottom: `training_loop()` makes the optimizer (AdamW), the LR schedule and the
gradient scaler, then runs epochs; each epoch is `train_epoch` + `evaluate` on the validation split,
the selection of the best weights, early stopping and the caller's `after_epoch`. What differs between
the callers is data, not code: `LoopOptions` (schedule, selection criterion, patience, mixed precision)
and two small hooks, `loss(logits, batch)` (knowledge distillation) and `transform(batch)` (mixup).

Randomness is seeded per epoch from `options.seed` (the shuffle, dropout, whatever a transform draws),
so a resumed run continues exactly like an uninterrupted one, and two runs that differ only in their
loss consume the same random numbers. The data are tensors already on the training device (moved
once), batches are index slices; an input array that stays a NumPy array (memory-mapped, larger than
memory) is read batch by batch instead (`rows`). On CUDA the forward pass may run under autocast (`amp`; bf16 where
supported, else fp16 with a gradient scaler). Under torchrun every process runs the loop
(DistributedDataParallel, sharded batches, metrics summed over ranks): see `distributed.py`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from . import distributed
from .checkpoint import cpu_state
from .errors import ToolkitError
from .interrupts import Interrupts

SCHEDULES = ("plateau", "cosine", "none", "replay")
# `LoopOptions.wait_for_signal`: a validation loss under this fraction of `chance_loss` has left chance.
SIGNAL_MARGIN = 0.98
SELECTIONS = ("val_loss", "val_accuracy", "val_accuracy_then_loss", "last")


@dataclass
class LoopOptions:
    """How to train: optimizer settings, LR schedule, which weights to keep, when to stop.

    schedule: "plateau" multiplies the LR by 0.3 after `lr_patience` epochs without a lower validation
        loss; "cosine" anneals it to 0 over all the steps, stepping per batch; "none" keeps it; "replay" runs
        epoch e at `lrs[e - 1]` (a refit replays the LRs its selection run used).
    select: keep the weights of the lowest "val_loss" (by more than 1e-4), the highest "val_accuracy" (the
        first epoch that reached it), or "val_accuracy_then_loss": the highest validation accuracy, and of the
        epochs that share it the lowest validation loss (a small validation split reaches its top accuracy
        early and stays there while the loss still falls); "last": the final epoch's (a refit, whose validation
        rows are in its training split, has nothing held out to choose by).
    score_start: the starting weights compete as epoch 0 (a fine-tune then never returns a worse model).
    patience: stop after this many epochs without a better selection score (None: never).
    wait_for_signal: the patience and the plateau schedule start counting once the validation loss is under
        SIGNAL_MARGIN times the loss of predicting the training split's class frequencies (`chance_loss`). Before
        that, a model still at chance is not stopped nor slowed: an LSTM reading 64 steps of a signal sat at chance
        for 16 epochs in 2 of 3 seeds and was stopped there (34% and 44% test accuracy); left to wait, it took
        off and kept epochs 45 and 69 (92% and 88%). `train` turns it on; a fine-tune starts from a model past chance.
    interruptible: Ctrl-C ends the loop with the best weights so far instead of propagating.
    """

    epochs: int
    lr: float
    batch_size: int = 64  # the global batch per optimizer step, shared between ranks
    weight_decay: float = 1e-4
    seed: int = 0
    schedule: str = "none"
    lrs: tuple[float, ...] = ()  # the "replay" schedule's LR of each epoch
    lr_patience: int = 5
    select: str = "val_loss"
    score_start: bool = False
    patience: int | None = None
    amp: bool = False
    interruptible: bool = False
    wait_for_signal: bool = False


@dataclass
class Batch:
    """A training batch. A transform may append rows to `x` after the `len(y)` original ones (the
    accuracy counts those first rows only) and leave what its loss needs in `extra`."""

    x: torch.Tensor
    y: torch.Tensor
    extra: dict = field(default_factory=dict)


@dataclass
class LoopState:
    """What the loop carries from epoch to epoch; a checkpoint saves it and a resumed run restores it."""

    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler
    best_weights: dict
    best_score: float
    epoch: int = 0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False

    BOOKKEEPING: ClassVar[tuple[str, ...]] = ("epoch", "best_score", "best_epoch", "bad_epochs", "history", "best_weights")

    def bookkeeping(self) -> dict:
        return {name: getattr(self, name) for name in self.BOOKKEEPING}


Loss = Callable[[torch.Tensor, Batch], torch.Tensor]
Transform = Callable[[Batch], Batch]


def training_loop(module: nn.Module, tensors: dict[str, torch.Tensor], options: LoopOptions, *,
                  loss: Loss | None = None, transform: Transform | None = None,
                  ctx: distributed.DistContext = distributed.DistContext(),
                  restore: Callable[[LoopState], None] | None = None,
                  after_epoch: Callable[[LoopState, dict], None] | None = None,
                  interrupts: Interrupts | None = None) -> LoopState:
    """Train `module` in place; it ends holding the selected weights, in eval mode.

    Args:
        module: the model, on the tensors' device.
        tensors: "x_train", "y_train", "x_val", "y_val" on the training device (`split_tensors`).
        options: see `LoopOptions`.
        loss: `loss(logits, batch)` to minimise; default: cross-entropy against `batch.y`.
        transform: applied to every training batch before the forward pass (e.g. mixup).
        ctx: this process's place in a torchrun job (one process by default).
        restore: called once with the fresh state, to load a checkpoint into it (resume).
        after_epoch: called with the state and the epoch's history row (checkpoint, progress).
        interrupts: held signals (`interrupts.held_interrupts`), asked once per step: the ranks stop together.

    Returns the final state: history rows, best epoch, whether Ctrl-C ended the loop.
    """
    if options.schedule not in SCHEDULES:
        raise ToolkitError(f"schedule must be one of {', '.join(SCHEDULES)}, got {options.schedule!r}")
    if options.select not in SELECTIONS:
        raise ToolkitError(f"select must be one of {', '.join(SELECTIONS)}, got {options.select!r}")
    if options.schedule == "replay" and len(options.lrs) < options.epochs:
        raise ToolkitError(f"the replay schedule has {len(options.lrs)} LRs for {options.epochs} epochs")
    device = tensors["y_train"].device
    amp = amp_dtype(device, options.amp)
    model = distributed.wrap(module, ctx, device)  # DDP with several processes, else `module` itself
    state = _start(model, module, tensors, options, amp, ctx)
    if restore is not None:
        restore(state)
    chance = chance_loss(tensors["y_train"]) * SIGNAL_MARGIN if options.wait_for_signal else math.inf
    signal = left_chance(state.history, chance)  # a resumed run's epochs
    try:
        for epoch in range(state.epoch + 1, options.epochs + 1):
            if options.patience is not None and state.bad_epochs >= options.patience:
                break  # here, not after the epoch: a checkpoint that had run out of patience trains no more
            tick = time.perf_counter()
            if options.schedule == "replay":
                for group in state.optimizer.param_groups:
                    group["lr"] = options.lrs[epoch - 1]
            train_loss, train_acc = train_epoch(model, state, tensors, options, epoch, loss or _cross_entropy,
                                                transform, amp, ctx, interrupts)
            val_loss, val_acc = evaluate_ranks(module, tensors["x_val"], tensors["y_val"], amp, ctx)
            signal = signal or val_loss < chance
            if options.schedule == "plateau" and signal:
                state.scheduler.step(val_loss)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                   "val_accuracy": val_acc, "lr": state.optimizer.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - tick, 4)}
            _check_finite(row, options)
            state.history.append(row)
            state.epoch = epoch
            _select(state, module, options, row)
            if not signal:
                state.bad_epochs = 0
            if after_epoch is not None:
                after_epoch(state, row)
    except KeyboardInterrupt:
        if not options.interruptible:
            raise
        state.interrupted = True
    module.load_state_dict(state.best_weights)
    module.eval()
    return state


def chance_loss(labels: torch.Tensor) -> float:
    """The cross-entropy of predicting the class frequencies of `labels` for every row: their entropy."""
    counts = torch.bincount(labels.detach().cpu()).double()
    prior = counts[counts > 0] / counts.sum()
    return float(-(prior * prior.log()).sum())


def left_chance(history: list[dict], threshold: float) -> bool:
    """Whether an epoch of `history` had a validation loss under `threshold` (SIGNAL_MARGIN x `chance_loss`)."""
    return any(row.get("val_loss", math.inf) < threshold for row in history)


def _check_finite(row: dict, options: LoopOptions) -> None:
    """A NaN or infinite loss means training diverged: a failure, never a model silently kept from epoch 0."""
    for key in ("train_loss", "val_loss"):
        if not math.isfinite(row[key]):
            raise ToolkitError(f"training diverged at epoch {row['epoch']}: the {key.replace('_', ' ')} is "
                               f"{row[key]}; lower the learning rate (lr {options.lr:g})")


def _start(model, module, tensors, options: LoopOptions, amp, ctx) -> LoopState:
    """A fresh state: optimizer, schedule, scaler; the starting weights scored as epoch 0 if asked."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay,
                                  **_fused(model))
    scheduler = None
    if options.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=options.lr_patience)
    elif options.schedule == "cosine":
        steps = options.epochs * _steps_per_epoch(len(tensors["y_train"]), options.batch_size, ctx)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    worst = float("inf") if options.select == "val_loss" else float("-inf")
    state = LoopState(optimizer, scheduler, scaler, best_weights=cpu_state(module), best_score=worst)
    if options.score_start:
        val_loss, val_acc = evaluate_ranks(module, tensors["x_val"], tensors["y_val"], amp, ctx)
        state.history.append({"epoch": 0, "val_loss": val_loss, "val_accuracy": val_acc})
        state.best_score = state.history[0][_scored(options.select)]
    return state


def _fused(model: nn.Module) -> dict:
    """AdamW's fused kernel (one pass over each parameter, instead of PyTorch's default multi-tensor ops) where it
    exists: float parameters on CPU or CUDA. The same update up to float rounding, and 7-18% less time per step on
    the three families on 2 CPU cores (MLP 1.52 -> 1.24 ms, CNN 5.36 -> 4.91, LSTM 5.74 -> 5.32 at batch 64)."""
    params = list(model.parameters())
    ok = params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {}


def _scored(select: str) -> str:
    """The history column a selection criterion keeps as `LoopState.best_score`."""
    return "val_loss" if select == "val_loss" else "val_accuracy"


def _select(state: LoopState, module: nn.Module, options: LoopOptions, row: dict) -> None:
    """Keep a copy of the weights when the epoch beats the best score so far; count the epochs that do not."""
    score = row[_scored(options.select)]
    if options.select == "last":
        better = True
    elif options.select == "val_loss":
        better = score < state.best_score - 1e-4
    else:
        better = score > state.best_score
        if options.select == "val_accuracy_then_loss" and score == state.best_score:
            best = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
            better = best is not None and row["val_loss"] < best["val_loss"] - 1e-4
    if better:
        state.best_score, state.best_epoch, state.bad_epochs = score, row["epoch"], 0
        state.best_weights = cpu_state(module)
    else:
        state.bad_epochs += 1


def train_epoch(model, state: LoopState, tensors, options: LoopOptions, epoch: int, loss: Loss,
                transform: Transform | None, amp, ctx: distributed.DistContext,
                interrupts: Interrupts | None = None) -> tuple[float, float]:
    """One pass over this rank's shard of the training split; the mean loss and accuracy over all ranks.
    A held signal (`interrupts`) ends it before the next step, on every rank at the same step."""
    model.train()
    tick = time.perf_counter()
    x, y = tensors["x_train"], tensors["y_train"]
    device = y.device
    # Seeded per epoch, so a resumed run shuffles and drops out exactly as an uninterrupted one; the
    # shuffle is shared by all ranks (each takes its shard), dropout differs per rank.
    order = distributed.epoch_indices(len(y), options.seed * 100_003, epoch, ctx).to(device)
    seed_device(options.seed * 100_003 + epoch + 1_000_003 * ctx.rank, device)
    batch_size = distributed.per_rank_batch(options.batch_size, ctx)
    # Bookkeeping costs one op per batch (the loss summed in place), an argmax every few batches (the detached logits
    # kept until STASH_VALUES of them, then written into one buffer) and one comparison per epoch: per-batch
    # `==`/`sum`/`+=` tensors were 5% of an MLP epoch on CPU, and an argmax per batch 1.4% more.
    loss_sum = torch.zeros((), device=device)
    predictions = torch.empty(len(order), device=device, dtype=torch.long)
    stash, stashed, predicted = [], 0, 0  # logits not yet argmaxed, their count, the rows of `predictions` written
    real = len(range(ctx.rank, len(y), ctx.world_size))  # the rows after these repeat others (the sampler's padding)
    for start in range(0, len(order), batch_size):
        if interrupts is not None and interrupts.at_step():
            raise KeyboardInterrupt
        index = order[start:start + batch_size]
        if not isinstance(x, torch.Tensor):
            index = index.sort().values  # the same batch, read from the file front to back
            order[start:start + len(index)] = index  # ... and its predictions compared in that order
        batch = Batch(rows(x, index, device), y[index], {"index": index})  # rows of the split: a loss may look up
        if transform is not None:
            batch = transform(batch)
        with autocast(device, amp):
            logits = model(batch.x)
            value = loss(logits, batch)
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler.is_enabled():
            state.scaler.scale(value).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:  # the disabled scaler's calls are pure Python overhead per batch
            value.backward()
            state.optimizer.step()
        if options.schedule == "cosine":
            state.scheduler.step()
        n = len(batch.y)
        # A batch's mean loss counts for its real rows: the padding is one row of the last batch at most.
        loss_sum.add_(value.detach(), alpha=max(0, min(n, real - start)))
        stash.append(logits.detach() if len(logits) == n else logits[:n].detach())  # a transform's rows left out
        stashed += stash[-1].numel()
        if stashed >= STASH_VALUES:
            predicted, stashed = _argmax_into(stash, predictions, predicted), 0
    _argmax_into(stash, predictions, predicted)
    correct = (predictions[:real] == y[order[:real]]).sum()
    # One device-to-host sync (and one all-reduce) per epoch, not per batch.
    figures = [loss_sum.item(), correct.item(), real, time.perf_counter() - tick]
    total_loss, total_correct, count, seconds = distributed.all_sum(figures, ctx, device)
    if interrupts is not None:
        interrupts.pace(seconds / ctx.world_size / max(1, -(-len(order) // batch_size)))
    return total_loss / count, total_correct / count


# Training logits held at most before their argmax (`train_epoch`): 1 MiB in float32.
STASH_VALUES = 1 << 18


def _argmax_into(stash: list, predictions: torch.Tensor, start: int) -> int:
    """Write the predicted classes of the stashed logits into `predictions` from row `start`; empty the stash and
    return the next row. The argmax of each row is its own, so one call over many batches predicts what a call per
    batch would."""
    if not stash:
        return start
    logits = torch.cat(stash) if len(stash) > 1 else stash[0]
    torch.argmax(logits, 1, out=predictions[start:start + len(logits)])
    stash.clear()
    return start + len(logits)


def seed_device(seed: int, device: torch.device) -> None:
    """Seed the random generator that training on `device` draws from (dropout, a transform's draws).

    On CPU only the CPU generator: `torch.manual_seed` in a process that has not started CUDA also queues the seed
    for CUDA, XPU and MTIA, each with a formatted stack trace (file reads included), 0.4-1 ms a call, which was 2-4%
    of an MLP epoch. Elsewhere `torch.manual_seed`, which seeds the CPU generator as well, as it always did."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def rows(x, index, device: torch.device) -> torch.Tensor:
    """Rows `index` (or a slice) of a tensor, or of a NumPy array (memory-mapped) read into a tensor on `device`."""
    if isinstance(x, torch.Tensor):
        return x[index]
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(x[index], dtype=np.float32)).to(device)


def _cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, batch.y)


def _steps_per_epoch(samples: int, batch_size: int, ctx: distributed.DistContext) -> int:
    per_rank = -(-samples // ctx.world_size)  # DistributedSampler pads every shard to this
    return -(-per_rank // distributed.per_rank_batch(batch_size, ctx))


def evaluate_ranks(module, x, y, amp, ctx: distributed.DistContext) -> tuple[float, float]:
    """`evaluate` on this rank's share of the split, summed over ranks: the same figures on every rank. The labels
    name the device: `x` may be a memory-mapped array (a `.npy` file's split), which has none."""
    if not ctx.enabled:
        return evaluate(module, x, y, amp)
    x, y = distributed.shard(x, ctx), distributed.shard(y, ctx)
    loss, acc = evaluate(module, x, y, amp)
    loss_sum, correct, count = distributed.all_sum([loss * len(y), acc * len(y), len(y)], ctx, y.device)
    return loss_sum / max(count, 1), correct / max(count, 1)


# Rows per forward pass when only scoring. One size for every scoring pass: a second, larger batch left
# 39 MiB more resident after the final test predictions of a 1M x 50 table (torch's CPU buffers, measured).
EVAL_BATCH = 2048


@torch.inference_mode()
def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype=None, batch_size: int = EVAL_BATCH,
             predictions: list | None = None):
    """Mean cross-entropy and accuracy of `module` on tensors already on its device. `predictions`: a list to
    append each batch's predicted classes to (a NumPy array), so a caller that needs them runs no second pass."""
    was_training = module.training
    module.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = rows(x, slice(start, start + batch_size), y.device), y[start:start + batch_size]
        with autocast(y.device, amp_dtype):
            logits = module(xb).float()
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        predicted = logits.argmax(1)
        correct += (predicted == yb).sum().item()
        if predictions is not None:
            predictions.append(predicted.cpu().numpy())
    module.train(was_training)
    return loss_sum / max(len(y), 1), correct / max(len(y), 1)


def in_memory(data, splits=("train", "val")) -> bool:
    """Whether `split_tensors` makes tensors of these splits (not a memory-mapped array read batch by batch)."""
    from .images import RowView

    return not any(isinstance(getattr(data, f"x_{split}"), (np.memmap, RowView)) for split in splits)


def split_tensors(data, device: torch.device, splits=("train", "val", "test")) -> dict[str, torch.Tensor]:
    """The splits of a `DataBundle` as tensors on `device`, moved once (small data sets fit easily); a
    memory-mapped input array (or a `RowView` of one) stays one, read batch by batch by the loop."""
    from .images import RowView

    out = {}
    for split in splits:
        x = getattr(data, f"x_{split}")
        out[f"x_{split}"] = x if isinstance(x, (np.memmap, RowView)) else torch.from_numpy(x).to(device)
        out[f"y_{split}"] = torch.from_numpy(getattr(data, f"y_{split}")).to(device)
    return out


def autocast(device: torch.device, amp_dtype):
    """Autocast to `amp_dtype`, or no context at all when mixed precision is off (cheaper per batch)."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


def amp_dtype(device: torch.device, enabled: bool):
    """bf16 on CUDA where supported, else fp16; None (full precision) off CUDA or when disabled."""
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
