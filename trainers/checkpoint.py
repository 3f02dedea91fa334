"""Resume state of a training run: `checkpoint.pt` in the run directory, written after every epoch.

Written atomically by the training loop (rank 0 only) and read back with
`torch.load(weights_only=True)`, so resuming never unpickles code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from .errors import ToolkitError
from .fileio import atomic_write_bytes


def cpu_state(module: nn.Module) -> dict:
    """A detached CPU copy of the weights (the best-so-far model, a checkpoint's model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(run, row, module, optimizer, scheduler, scaler, spec, state) -> None:
    """Append the epoch's `row` to `metrics.jsonl` and replace `checkpoint.pt` with the full loop state."""
    with open(run.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    buffer = io.BytesIO()
    torch.save({**state, "model": cpu_state(module), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "family": spec.family, "fingerprint": spec.data["fingerprint"]}, buffer)
    atomic_write_bytes(run.path / "checkpoint.pt", buffer.getvalue())
    run.keep_on_error = True


def load_checkpoint(directory: Path, module, optimizer, scheduler, scaler, spec) -> dict:
    """Restore module, optimizer, scheduler and scaler from `directory`; return the loop's bookkeeping."""
    path = directory / "checkpoint.pt"
    if not path.is_file():
        raise ToolkitError(f"nothing to resume: {directory} has no checkpoint yet")
    try:
        # weights_only=True: the toolkit's own resume state, still loaded without unpickling code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ToolkitError(f"cannot resume from {path}: {exc}".splitlines()[0]) from None
    if ckpt.get("family") != spec.family or ckpt.get("fingerprint") != spec.data["fingerprint"]:
        raise ToolkitError(f"cannot resume from {path}: it was made with another model family or data set")
    module.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    keys = ("epoch", "best_val_loss", "best_epoch", "bad_epochs", "history", "best_state")
    return {k: ckpt[k] for k in keys}
