"""Resume state of a training run, written after every epoch (rank 0 only), with no pickle anywhere.

`checkpoint.json` holds the loop's bookkeeping, the structure of the optimizer, scheduler and scaler states and
what a resumed run must share with this one; their tensors are in `checkpoint-<sha256>.safetensors`, which it
names with its checksum (`statetree` says how one becomes the other). The tensors go under a new name first and
`checkpoint.json` replaces the previous one last: a stop at any point leaves a whole pair, the old or the new,
never the JSON of one epoch beside the tensors of another. A `checkpoint.pt`, the pickle that versions before
this one wrote, is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from .errors import ToolkitError, parse_failure
from .fileio import atomic_write_bytes, atomic_write_text, check_regular_file
from .rundir import CHECKPOINT, OLD_CHECKPOINT
from .statetree import flatten, unflatten

FORMAT = "toolkit checkpoint"
VERSION = 1
_TENSORS = re.compile(r"^checkpoint-[0-9a-f]{16}\.safetensors$")


def cpu_state(module: nn.Module) -> dict:
    """A detached CPU copy of the weights (the best-so-far model, a checkpoint's model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(run, row, module, state, spec) -> None:
    """Replace the checkpoint with the loop's whole state, then append the epoch's `row` to `metrics.jsonl`.

    In that order: a stop between the two, the other way round, left a run whose metrics held an epoch that no
    checkpoint did (`--resume` found nothing to resume, or wrote that epoch's row twice); this way round it lacks
    the row at most, and a resumed run rewrites the file from the checkpoint (`restore_metrics`).
    """
    scheduler = state.scheduler.state_dict() if state.scheduler is not None else None
    write_checkpoint(run.path, {**state.bookkeeping(), "model": cpu_state(module),
                                "optimizer": state.optimizer.state_dict(), "scheduler": scheduler,
                                "scaler": state.scaler.state_dict(), **_identity(spec)})
    run.keep_on_error = True
    with open(run.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def write_checkpoint(directory: Path, state: dict) -> None:
    """`state` as the pair in `directory`: its tensors under a new name, then the JSON naming them, then the
    previous tensors removed (a stop before that leaves them unnamed, removed by the next write)."""
    from safetensors.torch import save as safetensors_save

    encoded, tensors = flatten(state)
    blob = safetensors_save(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    name = f"checkpoint-{digest[:16]}.safetensors"
    atomic_write_bytes(directory / name, blob)
    header = {"format": FORMAT, "version": VERSION, "tensors": name, "sha256": digest, "state": encoded}
    atomic_write_text(directory / CHECKPOINT, json.dumps(header, allow_nan=False) + "\n")
    _remove_tensors(directory, keep=name)


def discard_checkpoint(directory: Path) -> None:
    """Remove the checkpoint of a run that finished: its JSON first, so no JSON ever names a missing file."""
    (directory / CHECKPOINT).unlink(missing_ok=True)
    _remove_tensors(directory, keep=None)


def _remove_tensors(directory: Path, keep: str | None) -> None:
    for path in directory.iterdir():
        if _TENSORS.match(path.name) and path.name != keep:
            path.unlink(missing_ok=True)


def restore_metrics(run, history: list[dict]) -> None:
    """`metrics.jsonl` as a resumed checkpoint's `history` has it: one row per epoch it kept, no more."""
    atomic_write_text(run.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def read_checkpoint(directory: Path, spec, bookkeeping) -> dict:
    """The checkpoint in `directory`, checked against this run (family, data, seed, architecture) before any write.

    Raises:
        ToolkitError: no checkpoint, an old pickled one, an unreadable or mismatched pair, or one made with other
            options (one line naming them).
    """
    path = directory / CHECKPOINT
    if not path.is_file():
        if (directory / OLD_CHECKPOINT).is_file():
            raise ToolkitError(f"cannot resume from {directory / OLD_CHECKPOINT}: it was written by an earlier "
                               "version of the toolkit (a pickle, never loaded); pass --overwrite to start anew")
        raise ToolkitError(f"nothing to resume: {directory} has no checkpoint yet")
    ckpt = _read_pair(path)
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(k), dict) for k in ("model", "optimizer")):
        raise ToolkitError(f"cannot resume from {path}: not a checkpoint written by the toolkit")
    for key, now in _identity(spec).items():
        if key in ckpt and ckpt[key] != now:
            raise ToolkitError(f"cannot resume from {path}: it was made with {_NAMES[key]} {_show(ckpt[key])}, "
                               f"not {_show(now)}; pass the same options, or --overwrite to start anew")
    if any(name not in ckpt for name in (*bookkeeping, *_NAMES)):
        raise ToolkitError(f"cannot resume from {path}: it was written by another version of the toolkit")
    return ckpt


def _read_pair(path: Path):
    """The state that `path` (checkpoint.json) and the tensors file it names hold together, checksum checked."""
    header = _read_header(path)
    tensors_path = path.parent / header["tensors"]
    try:
        check_regular_file(tensors_path, "its tensors file")
        blob = tensors_path.read_bytes()
    except (ToolkitError, OSError) as exc:
        raise ToolkitError(f"cannot resume from {path}: {exc}") from None
    if hashlib.sha256(blob).hexdigest() != header["sha256"]:
        raise ToolkitError(f"cannot resume from {path}: {tensors_path.name} does not match it (checksum differs): "
                           "modified, truncated or corrupted")
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    try:
        return unflatten(header["state"], safetensors_load(blob))
    except (SafetensorError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ToolkitError(f"cannot resume from {path}: corrupt or not a checkpoint ({parse_failure(exc)})") from None


def _read_header(path: Path) -> dict:
    try:
        check_regular_file(path, "checkpoint")
        header = json.loads(path.read_text(encoding="utf-8"))
    except ToolkitError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolkitError(f"cannot resume from {path}: corrupt or not a checkpoint ({parse_failure(exc)})") from None
    if not (isinstance(header, dict) and header.get("format") == FORMAT):
        raise ToolkitError(f"cannot resume from {path}: not a checkpoint written by the toolkit")
    if header.get("version") != VERSION:
        raise ToolkitError(f"cannot resume from {path}: it was written by another version of the toolkit")
    if not (isinstance(header.get("tensors"), str) and _TENSORS.match(header["tensors"])
            and isinstance(header.get("sha256"), str) and "state" in header):
        raise ToolkitError(f"cannot resume from {path}: corrupt (it names no tensors file of the toolkit's)")
    return header


def load_checkpoint(ckpt: dict, module, state) -> None:
    """Restore the module and the loop's state (`trainers.loop.LoopState`) from a `read_checkpoint` result.

    Raises:
        ToolkitError: a state that does not fit this model or optimizer (a checkpoint edited by hand), in one
            line, never torch's.
    """
    if not _fits(ckpt["best_weights"], module):  # loaded only at the end: checked now, as the model is
        raise ToolkitError("cannot resume: the checkpoint's best weights do not fit this model")
    try:
        module.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if state.scheduler is not None:
            state.scheduler.load_state_dict(ckpt["scheduler"])
        state.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ToolkitError(f"cannot resume: the checkpoint does not fit this model ({type(exc).__name__})") from None
    for name in state.BOOKKEEPING:
        setattr(state, name, ckpt[name])


def _fits(weights, module) -> bool:
    """Whether `weights` has the names, shapes and dtypes of `module`'s state dict."""
    expected = {name: (value.shape, value.dtype) for name, value in module.state_dict().items()}
    return isinstance(weights, dict) and all(isinstance(value, torch.Tensor) for value in weights.values()) and {
        name: (value.shape, value.dtype) for name, value in weights.items()} == expected


_NAMES = {"family": "model family", "fingerprint": "data of fingerprint", "seed": "--seed",
          "arch": "--arch"}


def _identity(spec) -> dict:
    """What a resumed run must share with the checkpoint: same model, same data, same split (the seed)."""
    return {"family": spec.family, "fingerprint": spec.data["fingerprint"], "seed": spec.training["seed"],
            "arch": json.dumps(spec.config, sort_keys=True)}


def _show(value) -> str:
    return str(value)[:16] if len(str(value)) == 64 else str(value)  # a sha256 fingerprint, shortened
