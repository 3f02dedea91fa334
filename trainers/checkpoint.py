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
from .fileio import atomic_write_bytes, atomic_write_text


def cpu_state(module: nn.Module) -> dict:
    """A detached CPU copy of the weights (the best-so-far model, a checkpoint's model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(run, row, module, state, spec) -> None:
    """Replace `checkpoint.pt` with the loop's whole state, then append the epoch's `row` to `metrics.jsonl`.

    In that order: a stop between the two, the other way round, left a run whose metrics held an epoch that no
    checkpoint did (`--resume` found nothing to resume, or wrote that epoch's row twice); this way round it lacks
    the row at most, and a resumed run rewrites the file from the checkpoint (`restore_metrics`).
    """
    scheduler = state.scheduler.state_dict() if state.scheduler is not None else None
    buffer = io.BytesIO()
    torch.save({**state.bookkeeping(), "model": cpu_state(module), "optimizer": state.optimizer.state_dict(),
                "scheduler": scheduler, "scaler": state.scaler.state_dict(),
                **_identity(spec)}, buffer)
    atomic_write_bytes(run.path / "checkpoint.pt", buffer.getvalue())
    run.keep_on_error = True
    with open(run.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def restore_metrics(run, history: list[dict]) -> None:
    """`metrics.jsonl` as a resumed checkpoint's `history` has it: one row per epoch it kept, no more."""
    atomic_write_text(run.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def read_checkpoint(directory: Path, spec, bookkeeping) -> dict:
    """The checkpoint in `directory`, checked against this run (family, data, seed, architecture) before any write.

    Raises:
        ToolkitError: no checkpoint, an unreadable one, or one made with other options (one line naming them).
    """
    path = directory / "checkpoint.pt"
    if not path.is_file():
        raise ToolkitError(f"nothing to resume: {directory} has no checkpoint yet")
    try:
        # weights_only=True: the toolkit's own resume state, still loaded without unpickling code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        # Never torch's own message: it advises loading the file unsafely, i.e. running its code.
        unsafe = "weights only load failed" in str(exc).lower() or type(exc).__name__ == "UnpicklingError"
        why = "it holds objects that only unpickling could load; refused" if unsafe else "corrupt or not a checkpoint"
        raise ToolkitError(f"cannot resume from {path}: {why} ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(k), dict) for k in ("model", "optimizer")):
        raise ToolkitError(f"cannot resume from {path}: not a checkpoint written by the toolkit")
    for key, now in _identity(spec).items():
        if key in ckpt and ckpt[key] != now:
            raise ToolkitError(f"cannot resume from {path}: it was made with {_NAMES[key]} {_show(ckpt[key])}, "
                               f"not {_show(now)}; pass the same options, or --overwrite to start anew")
    if any(name not in ckpt for name in (*bookkeeping, *_NAMES)):
        raise ToolkitError(f"cannot resume from {path}: it was written by another version of the toolkit")
    return ckpt


def load_checkpoint(ckpt: dict, module, state) -> None:
    """Restore the module and the loop's state (`trainers.loop.LoopState`) from a `read_checkpoint` result."""
    module.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scheduler is not None:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    for name in state.BOOKKEEPING:
        setattr(state, name, ckpt[name])


_NAMES = {"family": "model family", "fingerprint": "data of fingerprint", "seed": "--seed",
          "arch": "--arch"}


def _identity(spec) -> dict:
    """What a resumed run must share with the checkpoint: same model, same data, same split (the seed)."""
    return {"family": spec.family, "fingerprint": spec.data["fingerprint"], "seed": spec.training["seed"],
            "arch": json.dumps(spec.config, sort_keys=True)}


def _show(value) -> str:
    return str(value)[:16] if len(str(value)) == 64 else str(value)  # a sha256 fingerprint, shortened
