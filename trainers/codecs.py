"""How weights are laid out inside `model.safetensors`.

A codec turns a state dict into the flat tensors stored in the file and back.
`dense` stores the state dict as it is; `sparse` and `sparse-int8` store
mostly-zero matrices as non-zero values plus compact positions. Compression methods that store
weights differently (sparse, int8) register a codec here, in the ground floor,
so `trainers.load_model` can read every artifact without importing `compress`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

StateDict = dict[str, torch.Tensor]


@dataclass
class Codec:
    """`decode(tensors, shapes)` rebuilds the state dict; `shapes` (name -> shape the architecture needs),
    when given, bounds every stored size before anything is allocated."""

    name: str
    encode: Callable[[StateDict], StateDict]
    decode: Callable[..., StateDict]


CODECS: dict[str, Codec] = {}


def register_codec(name: str, encode, decode) -> None:
    CODECS[name] = Codec(name, encode, decode)


def _identity(tensors: StateDict, shapes: dict | None = None) -> StateDict:
    return {k: v.contiguous() for k, v in tensors.items()}


register_codec("dense", _identity, _identity)


# ---------------------------------------------------------------- sparse storage
# Deep Compression style (Han et al. 2016): the non-zero weights of every sparse
# matrix are stored in one stream of values plus one stream of uint8 position
# gaps (gap - 1, so gaps of 1..256; a longer gap inserts a filler zero value).
# All sparse tensors share three entries: `__sparse__.index` (JSON, as uint8
# bytes: name, shape, dtype, count, scale), `__sparse__.values` and
# `__sparse__.gaps`, which keeps the safetensors header small. Other tensors
# (biases, normalisation buffers, dense matrices) are stored as they are.

SPARSE_PREFIX = "__sparse__."
MAX_GAP = 256
MAX_SPARSE_ELEMENTS = 1 << 28  # a corrupted shape must not allocate without bound
_MAX_DENSITY = 0.5  # denser matrices are smaller stored dense
_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor int8: returns (q, scale) with weight ~= q * scale."""
    peak = float(weight.detach().abs().max()) if weight.numel() else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    scale = float(np.float32(scale))
    q = torch.clamp(torch.round(weight.detach().float() / scale), -127, 127).to(torch.int8)
    return q, scale


def _sparse_streams(flat: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Positions of the non-zeros as uint8 gaps, with filler entries (value 0) for long gaps."""
    positions = torch.nonzero(flat, as_tuple=False).flatten().numpy().astype(np.int64)
    gaps = np.diff(np.concatenate([[-1], positions]))
    fillers = np.maximum((gaps - 1) // MAX_GAP, 0)
    if fillers.any():  # expand: each long gap becomes several steps of MAX_GAP plus a remainder
        all_positions = []
        prev = -1
        for pos in positions.tolist():
            while pos - prev > MAX_GAP:
                prev += MAX_GAP
                all_positions.append(prev)
            all_positions.append(pos)
            prev = pos
        positions = np.asarray(all_positions, dtype=np.int64)
        gaps = np.diff(np.concatenate([[-1], positions]))
    return torch.from_numpy(positions), (gaps - 1).astype(np.uint8)


def _is_sparse_candidate(tensor: torch.Tensor) -> bool:
    return (tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() > 0
            and float((tensor != 0).float().mean()) <= _MAX_DENSITY)


def _encode_sparse(tensors: StateDict, int8: bool) -> StateDict:
    out: StateDict = {}
    index, values, gaps = [], [], []
    for name, tensor in tensors.items():
        if name.startswith(SPARSE_PREFIX):
            raise ValueError(f"tensor name {name!r} is reserved by the sparse codec")
        if not _is_sparse_candidate(tensor):
            out[name] = tensor.contiguous()
            continue
        flat = tensor.detach().flatten()
        positions, tensor_gaps = _sparse_streams(flat)
        entry = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
                 "count": int(len(positions))}
        picked = flat[positions]
        if int8:
            q, scale = quantize_int8(picked)
            entry["scale"] = scale
            values.append(q)
        else:
            values.append(picked.float())
        index.append(entry)
        gaps.append(tensor_gaps)
    if index:
        out[SPARSE_PREFIX + "index"] = torch.frombuffer(bytearray(json.dumps(index).encode()), dtype=torch.uint8)
        out[SPARSE_PREFIX + "values"] = torch.cat(values).contiguous()
        out[SPARSE_PREFIX + "gaps"] = torch.from_numpy(np.concatenate(gaps)).contiguous()
    return out


def _decode_sparse(tensors: StateDict, int8: bool, shapes: dict | None = None) -> StateDict:
    out = {k: v for k, v in tensors.items() if not k.startswith(SPARSE_PREFIX)}
    present = [k for k in tensors if k.startswith(SPARSE_PREFIX)]
    if not present:
        return out
    index_raw, values, gaps = (tensors[SPARSE_PREFIX + k] for k in ("index", "values", "gaps"))  # KeyError if missing
    if index_raw.dtype != torch.uint8 or gaps.dtype != torch.uint8 or index_raw.dim() != 1 or gaps.dim() != 1:
        raise ValueError("sparse index and gaps must be 1-D uint8 tensors")
    expected_values = torch.int8 if int8 else torch.float32
    if values.dtype != expected_values or values.dim() != 1:
        raise ValueError(f"sparse values must be a 1-D {expected_values} tensor, found {values.dtype} {tuple(values.shape)}")
    index = json.loads(bytes(index_raw.numpy().tobytes()).decode("utf-8"))
    if not isinstance(index, list):
        raise ValueError("sparse index is not a list")
    if sum(_entry_count(e) for e in index) != len(values) or len(values) != len(gaps):
        raise ValueError(f"sparse streams disagree: index counts, {len(values)} values, {len(gaps)} gaps")
    offset = 0
    all_positions = np.cumsum(gaps.numpy().astype(np.int64) + 1)
    for entry in index:
        name, shape, dtype, count = _entry_fields(entry, int8)
        if name in out:
            raise ValueError(f"sparse tensor {name!r} is stored twice")
        if shapes is not None and tuple(shapes.get(name, ())) != tuple(shape):
            needed = "no such tensor" if name not in shapes else f"the architecture needs {tuple(shapes[name])}"
            raise ValueError(f"sparse tensor {name!r} has shape {tuple(shape)}: {needed}")
        numel = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if numel > MAX_SPARSE_ELEMENTS or count > numel:
            raise ValueError(f"sparse tensor {name!r}: shape {shape} with {count} stored values is implausible")
        chunk = slice(offset, offset + count)
        base = all_positions[offset - 1] if offset else 0
        positions = all_positions[chunk] - base - 1
        if count and (positions[-1] >= numel):
            raise ValueError(f"sparse tensor {name!r}: positions run past its {numel} elements")
        dense = torch.zeros(numel, dtype=torch.float32)
        chunk_values = values[chunk].float() * entry["scale"] if int8 else values[chunk]
        dense[torch.from_numpy(positions)] = chunk_values
        out[name] = dense.reshape(shape).to(_FLOAT_DTYPES[dtype])
        offset += count
    return out


def _entry_count(entry) -> int:
    if not isinstance(entry, dict) or not isinstance(entry.get("count"), int) or entry["count"] < 0:
        raise ValueError(f"malformed sparse index entry: {str(entry)[:80]}")
    return entry["count"]


def _entry_fields(entry: dict, int8: bool):
    name, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype")
    if not isinstance(name, str) or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"malformed sparse index entry: {str(entry)[:80]}")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"sparse tensor {name!r}: unknown dtype {dtype!r}")
    if int8:
        scale = entry.get("scale")
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"sparse tensor {name!r}: bad int8 scale {scale!r}")
    return name, shape, dtype, entry["count"]


register_codec("sparse", lambda t: _encode_sparse(t, int8=False),
               lambda t, shapes=None: _decode_sparse(t, int8=False, shapes=shapes))
register_codec("sparse-int8", lambda t: _encode_sparse(t, int8=True),
               lambda t, shapes=None: _decode_sparse(t, int8=True, shapes=shapes))
