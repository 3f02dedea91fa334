"""How weights are laid out inside `model.safetensors`.

A codec turns a state dict into the flat tensors stored in the file and back.
`dense` stores the state dict as it is; `sparse` and `sparse-int8` store
mostly-zero matrices as non-zero values plus compact positions. Compression methods that store
weights differently (sparse, int8) register a codec here, in the ground floor,
so `trainers.load_model` can read every artifact without importing `compress`.
"""

from __future__ import annotations

import json
import zlib
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
# (biases, normalisation buffers, dense matrices) are stored as they are, except that `sparse-int8` stores a
# matrix denser than _MAX_DENSITY whose values are already int8-rounded as every value, without gaps
# (its index entry says `"dense": true`): 1 byte a value where fp32 would take 4.

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


def _on_int8_grid(tensor: torch.Tensor) -> bool:
    """Whether a matrix holds exactly the values its per-tensor int8 rounding decodes to (a pruned layer whose
    survivors were rounded): only such a tensor is stored dense as int8, so the codec stays exact."""
    if not (tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() > 0):
        return False
    q, scale = quantize_int8(tensor)
    return torch.equal(q.float() * scale, tensor.detach().float())


def _encode_sparse(tensors: StateDict, int8: bool) -> StateDict:
    out: StateDict = {}
    index, values, gaps = [], [], []
    for name, tensor in tensors.items():
        if name.startswith(SPARSE_PREFIX):
            raise ValueError(f"tensor name {name!r} is reserved by the sparse codec")
        # an int8 matrix denser than _MAX_DENSITY: every value, no positions (`dense`), 1 byte a value, not 4
        dense = int8 and not _is_sparse_candidate(tensor) and _on_int8_grid(tensor)
        if not _is_sparse_candidate(tensor) and not dense:
            out[name] = tensor.contiguous()
            continue
        flat = tensor.detach().flatten()
        positions, tensor_gaps = ((torch.arange(len(flat)), np.zeros(0, np.uint8)) if dense
                                  else _sparse_streams(flat))
        entry = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
                 "count": int(len(positions)), **({"dense": True} if dense else {})}
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
    total = sum(_entry_count(e) for e in index)
    placed = sum(e["count"] for e in index if not e.get("dense"))  # a dense entry stores no gaps
    if total != len(values) or placed != len(gaps):
        raise ValueError(f"sparse streams disagree: index counts, {len(values)} values, {len(gaps)} gaps")
    offset = gap_offset = 0
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
        if entry.get("dense") and count != numel:
            raise ValueError(f"sparse tensor {name!r}: stored dense with {count} of its {numel} values")
        chunk = slice(offset, offset + count)
        if entry.get("dense"):
            positions = np.arange(count)
        else:
            base = all_positions[gap_offset - 1] if gap_offset else 0
            positions = all_positions[gap_offset:gap_offset + count] - base - 1
            gap_offset += count
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


# ---------------------------------------------------------------- sparse codebook storage
# Weight sharing as in Deep Compression (Han et al. 2016): a tensor with at most CODEBOOK_SIZE distinct
# values (a compression method clusters them, e.g. k-means) is stored as its codebook (float32) plus one
# 4-bit index per stored value. A mostly-zero tensor stores only its non-zeros; their positions are 4-bit
# gaps (g in 0..14: the next value is g + 1 elements on; 15: move 15 on, no value), as Deep Compression's
# relative indices. The codec is exact: it stores the values it is given and refuses nothing (other tensors
# are stored as they are). No library writes this layout into safetensors, hence by hand.
#
# Format 1 (files written before entropy coding; still read): `__codebook__.index` is the JSON list of entries
# (name, shape, dtype, count, gaps, k), `.codebooks`, and `.indices` and `.gaps` with the symbols packed two
# nibbles to a byte, low nibble first.
# Format 2 (written now), Deep Compression's third stage: `__codebook__.index` is one byte, the format (2; a
# format-1 index is JSON and starts with `[`), then the raw-deflated JSON {"tensors": [entries], "streams":
# {"indices": {"coding", "bytes"}, "gaps": {...}}}; `.streams` holds the index then the gap symbols, each coded
# as the index says: "deflate" (one symbol a byte, raw deflate with Huffman coding only) or "nibbles" (packed, as
# format 1, where deflate would not be smaller). Measured on the digits MLP at 87% sparsity (seed 0): deflating
# the JSON index saves 354 of its 512 bytes; the symbols' zeroth-order entropy is only 6% (indices: k-means with
# linear initialisation uses the 16 codes nearly evenly) and 9% (gaps) under 4 bits, and Huffman-only deflate of
# one symbol a byte (1164 / 1213 bytes for 1203 / 1300 packed) came within 3% of it: as small as raw LZMA2 of
# the packed nibbles (1167 / 1213), smaller than deflate with string matching (1298 / 1371), bz2 (1251 / 1352)
# or deflating the packed bytes (1195 / 1252); a hand-written Huffman coder could save at most the 3% more, so
# zlib it is. One `.streams` tensor, not two, saves a safetensors header entry. The whole file: 3951 -> 3434
# bytes (51.6x -> 59.4x). Every decompression is bounded by the size the index gives.

CODEBOOK_PREFIX = "__codebook__."
CODEBOOK_SIZE = 16
_NIBBLE_ESCAPE = 15
_MIN_CODEBOOK_ELEMENTS = 2 * CODEBOOK_SIZE  # smaller tensors: the codebook would not pay for itself
CODEBOOK_FORMAT = 2  # the format written; 1 is still read
_MAX_CODEBOOK_INDEX_BYTES = 1 << 22  # a deflated format-2 index may not inflate past this (about 30,000 tensors)
_STREAMS = ("indices", "gaps")


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.uint8)
    if len(values) % 2:
        values = np.concatenate([values, np.zeros(1, np.uint8)])
    return (values[0::2] | (values[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.empty(2 * len(packed), np.uint8)
    out[0::2], out[1::2] = packed & 0x0F, packed >> 4
    return out[:count]


def _gap_symbols(positions: np.ndarray) -> np.ndarray:
    """Positions (sorted) as 4-bit gap symbols with escapes for long gaps."""
    steps = np.diff(np.concatenate([[-1], positions])) - 1  # elements skipped before each value
    escapes = steps // _NIBBLE_ESCAPE
    symbols = np.empty(len(steps) + int(escapes.sum()), np.uint8)
    ends = np.cumsum(escapes + 1) - 1  # where each value's own symbol goes
    symbols[:] = _NIBBLE_ESCAPE
    symbols[ends] = steps - escapes * _NIBBLE_ESCAPE
    return symbols


def _positions_from_gaps(symbols: np.ndarray) -> np.ndarray:
    escape = symbols == _NIBBLE_ESCAPE
    advance = np.where(escape, _NIBBLE_ESCAPE, symbols.astype(np.int64) + 1)
    return np.cumsum(advance)[~escape] - 1


def codebook_sparse(zeros: float) -> bool:
    """Whether the codebook codec stores a tensor with this share of zeros sparse (its non-zeros and their gaps)
    rather than dense (every value, zero then one of its at most CODEBOOK_SIZE codes)."""
    return zeros >= 0.5


def _codebook_candidate(tensor: torch.Tensor) -> tuple[np.ndarray, bool] | None:
    """(the distinct stored values, sparse?) when `tensor` fits a codebook, else None."""
    if not tensor.is_floating_point() or tensor.numel() < _MIN_CODEBOOK_ELEMENTS:
        return None
    flat = tensor.detach().float().flatten()
    sparse = codebook_sparse(float((flat == 0).float().mean()))
    stored = flat[flat != 0] if sparse else flat
    book = torch.unique(stored).numpy()
    return (book, sparse) if 0 < len(book) <= CODEBOOK_SIZE else None


def _codebook_symbols(tensors: StateDict) -> tuple[StateDict, list[dict], list[np.ndarray], dict[str, np.ndarray]]:
    """(tensors stored as they are, index entries, codebooks, the "indices" and "gaps" symbol streams)."""
    out: StateDict = {}
    index, books, indices, gaps = [], [], [], []
    for name, tensor in tensors.items():
        if name.startswith(CODEBOOK_PREFIX):
            raise ValueError(f"tensor name {name!r} is reserved by the codebook codec")
        found = _codebook_candidate(tensor)
        if found is None:
            out[name] = tensor.contiguous()
            continue
        book, sparse = found
        flat = tensor.detach().float().flatten().numpy()
        positions = np.flatnonzero(flat) if sparse else np.arange(len(flat))
        symbols = _gap_symbols(positions) if sparse else np.zeros(0, np.uint8)
        indices.append(np.searchsorted(book, flat[positions]).astype(np.uint8))
        books.append(book.astype(np.float32))
        gaps.append(symbols)
        index.append({"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
                      "count": int(len(positions)), "gaps": int(len(symbols)), "k": int(len(book))})
    streams = {"indices": np.concatenate(indices) if index else None, "gaps": np.concatenate(gaps) if index else None}
    return out, index, books, streams


def _uint8(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _deflate(data: bytes, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    """Raw deflate (no zlib header or checksum: the file's sha256 in model.json guards the bytes)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy)
    return packer.compress(data) + packer.flush()


def _code_stream(symbols: np.ndarray) -> tuple[str, bytes]:
    """The smaller of the stream's two codings: Huffman-only deflate of one symbol a byte, or packed nibbles
    (a short or evenly spread stream, where deflate's code table does not pay for itself)."""
    deflated, packed = _deflate(symbols.astype(np.uint8).tobytes(), zlib.Z_HUFFMAN_ONLY), _pack_nibbles(symbols)
    return ("deflate", deflated) if len(deflated) < len(packed) else ("nibbles", packed.tobytes())


def _encode_codebook(tensors: StateDict, version: int = CODEBOOK_FORMAT) -> StateDict:
    """Encode in format `version` (2, entropy coded; 1, the earlier packed nibbles, kept to test that such files
    still load)."""
    out, index, books, streams = _codebook_symbols(tensors)
    if not index:
        return out
    out[CODEBOOK_PREFIX + "codebooks"] = torch.from_numpy(np.concatenate(books))
    if version == 1:
        out[CODEBOOK_PREFIX + "index"] = _uint8(json.dumps(index).encode())
        for name in _STREAMS:
            out[CODEBOOK_PREFIX + name] = torch.from_numpy(_pack_nibbles(streams[name]))
        return out
    if version != CODEBOOK_FORMAT:
        raise ValueError(f"codebook format {version} is not one this codec writes (1 or {CODEBOOK_FORMAT})")
    coded = {name: _code_stream(streams[name]) for name in _STREAMS}
    header = {"tensors": index, "streams": {name: {"coding": c, "bytes": len(b)} for name, (c, b) in coded.items()}}
    text = json.dumps(header, separators=(",", ":")).encode()
    out[CODEBOOK_PREFIX + "index"] = _uint8(bytes([CODEBOOK_FORMAT]) + _deflate(text))
    out[CODEBOOK_PREFIX + "streams"] = _uint8(b"".join(b for _, b in coded.values()))
    return out


def _inflate(data: bytes, size: int, what: str, exact: bool = True) -> bytes:
    """Raw-deflated `data`, never inflated past `size` bytes (a few bytes of a crafted file could otherwise ask
    for gigabytes); refused unless it ends there (`exact`) or before, with nothing after its end."""
    unpacker = zlib.decompressobj(wbits=-15)
    try:  # one byte over the bound tells a longer stream from one that ends there (and 0 would mean no bound)
        out = unpacker.decompress(data, size + 1)
    except zlib.error as exc:
        raise ValueError(f"codebook {what} is not a valid deflate stream ({exc})") from None
    if len(out) > size:
        raise ValueError(f"codebook {what} inflates past the {size} bytes the index allows")
    if not unpacker.eof:
        raise ValueError(f"codebook {what} is truncated: its deflate stream does not end")
    if unpacker.unused_data or (exact and len(out) != size):
        raise ValueError(f"codebook {what} holds {len(out)} bytes and {len(unpacker.unused_data)} after its end, "
                         f"where the index says {size}")
    return out


def _decode_stream(name: str, coding, data: bytes, count: int) -> np.ndarray:
    """`count` symbols from one format-2 stream."""
    if coding == "nibbles":
        if len(data) != (count + 1) // 2:
            raise ValueError(f"codebook {name} stream: {len(data)} bytes of nibbles for {count} symbols")
        return _unpack_nibbles(np.frombuffer(data, np.uint8), count)
    if coding == "deflate":
        symbols = np.frombuffer(_inflate(data, count, f"{name} stream"), np.uint8)
        if count and int(symbols.max()) > _NIBBLE_ESCAPE:
            raise ValueError(f"codebook {name} stream holds a symbol past 4 bits ({int(symbols.max())})")
        return symbols
    raise ValueError(f"codebook {name} stream: unknown coding {str(coding)[:40]!r}")


def _codebook_entry(entry, shapes: dict | None) -> tuple[str, list, str, int, int, int]:
    """One index entry, checked: well formed, the shape the architecture needs, sizes that fit it."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), int) and entry[k] >= 0
                                              for k in ("count", "gaps", "k")):
        raise ValueError(f"malformed codebook index entry: {str(entry)[:80]}")
    name, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype")
    if not isinstance(name, str) or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"malformed codebook index entry: {str(entry)[:80]}")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"codebook tensor {name!r}: unknown dtype {dtype!r}")
    if shapes is not None and tuple(shapes.get(name, ())) != tuple(shape):
        needed = "no such tensor" if name not in shapes else f"the architecture needs {tuple(shapes[name])}"
        raise ValueError(f"codebook tensor {name!r} has shape {tuple(shape)}: {needed}")
    numel = int(np.prod(shape, dtype=np.float64)) if shape else 1
    count, n_gaps, k = entry["count"], entry["gaps"], entry["k"]
    if numel > MAX_SPARSE_ELEMENTS or count > numel or not 0 < k <= CODEBOOK_SIZE:
        raise ValueError(f"codebook tensor {name!r}: shape {shape} with {count} values and {k} codes is implausible")
    if (n_gaps == 0 and count != numel) or (n_gaps and (n_gaps < count or n_gaps > count + numel // _NIBBLE_ESCAPE + 1)):
        raise ValueError(f"codebook tensor {name!r}: {n_gaps} gap symbols cannot place {count} of {numel} values")
    return name, shape, dtype, count, n_gaps, k


def _codebook_streams_v1(index, tensors: StateDict, shapes: dict | None):
    """Format 1: (checked entries, index symbols, gap symbols) from the JSON list and the packed nibbles."""
    if not isinstance(index, list):
        raise ValueError("codebook index is not a list")
    packed_indices, packed_gaps = (tensors[CODEBOOK_PREFIX + k] for k in _STREAMS)  # KeyError if missing
    if any(t.dtype != torch.uint8 or t.dim() != 1 for t in (packed_indices, packed_gaps)):
        raise ValueError("codebook index, indices and gaps must be 1-D uint8 tensors")
    entries = [_codebook_entry(e, shapes) for e in index]
    n_values, n_gaps = sum(e[3] for e in entries), sum(e[4] for e in entries)
    if len(packed_indices) != (n_values + 1) // 2 or len(packed_gaps) != (n_gaps + 1) // 2:
        raise ValueError(f"codebook streams disagree with the index: {len(packed_indices)} index bytes for "
                         f"{n_values} values, {len(packed_gaps)} gap bytes for {n_gaps} symbols")
    return (entries, _unpack_nibbles(packed_indices.numpy(), n_values), _unpack_nibbles(packed_gaps.numpy(), n_gaps))


def _codebook_streams_v2(header, tensors: StateDict, shapes: dict | None):
    """Format 2: (checked entries, index symbols, gap symbols) from the inflated header and `.streams`."""
    streams = header.get("streams") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or not isinstance(streams, dict) \
            or not all(isinstance(streams.get(k), dict) and isinstance(streams[k].get("bytes"), int)
                       and streams[k]["bytes"] >= 0 for k in _STREAMS):
        raise ValueError("malformed codebook index: it needs a list of tensors and the bytes of each stream")
    data = tensors[CODEBOOK_PREFIX + "streams"]  # KeyError if missing
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError("codebook streams must be a 1-D uint8 tensor")
    entries = [_codebook_entry(e, shapes) for e in header["tensors"]]
    sizes = [streams[k]["bytes"] for k in _STREAMS]
    if sum(sizes) != len(data):
        raise ValueError(f"codebook streams disagree with the index: {len(data)} bytes where it says {sum(sizes)}")
    raw = data.numpy().tobytes()
    counts = (sum(e[3] for e in entries), sum(e[4] for e in entries))
    codes = _decode_stream("indices", streams["indices"].get("coding"), raw[:sizes[0]], counts[0])
    symbols = _decode_stream("gaps", streams["gaps"].get("coding"), raw[sizes[0]:], counts[1])
    return entries, codes, symbols


def _decode_codebook(tensors: StateDict, shapes: dict | None = None) -> StateDict:
    out = {k: v for k, v in tensors.items() if not k.startswith(CODEBOOK_PREFIX)}
    if not any(k.startswith(CODEBOOK_PREFIX) for k in tensors):
        return out
    index_raw, books = (tensors[CODEBOOK_PREFIX + k] for k in ("index", "codebooks"))  # KeyError if missing
    if index_raw.dtype != torch.uint8 or index_raw.dim() != 1:
        raise ValueError("codebook index must be a 1-D uint8 tensor")
    if books.dtype != torch.float32 or books.dim() != 1:
        raise ValueError(f"codebooks must be a 1-D float32 tensor, found {books.dtype} {tuple(books.shape)}")
    raw = index_raw.numpy().tobytes()
    if raw[:1] == bytes([CODEBOOK_FORMAT]):
        header = json.loads(_inflate(raw[1:], _MAX_CODEBOOK_INDEX_BYTES, "index", exact=False).decode("utf-8"))
        entries, codes, symbols = _codebook_streams_v2(header, tensors, shapes)
    elif raw.lstrip()[:1] == b"[":
        entries, codes, symbols = _codebook_streams_v1(json.loads(raw.decode("utf-8")), tensors, shapes)
    else:
        raise ValueError(f"codebook index of an unknown format (first byte {raw[:1]!r}; this codec reads 1 and "
                         f"{CODEBOOK_FORMAT})")
    if sum(e[5] for e in entries) != len(books):
        raise ValueError(f"codebook streams disagree with the index: {len(books)} codes where it says "
                         f"{sum(e[5] for e in entries)}")
    return {**out, **_rebuild(entries, books.numpy(), codes, symbols, out)}


def _rebuild(entries, books: np.ndarray, codes: np.ndarray, symbols: np.ndarray, stored: StateDict) -> StateDict:
    """The tensors the checked entries describe, from their codebooks and the decoded symbol streams."""
    out: StateDict = {}
    book_at = value_at = gap_at = 0
    for name, shape, dtype, count, gaps, k in entries:
        if name in out or name in stored:
            raise ValueError(f"codebook tensor {name!r} is stored twice")
        numel = int(np.prod(shape, dtype=np.float64)) if shape else 1
        chunk = codes[value_at:value_at + count]
        if count and int(chunk.max()) >= k:
            raise ValueError(f"codebook tensor {name!r}: an index points past its {k} codes")
        values = books[book_at:book_at + k][chunk]
        dense = np.zeros(numel, np.float32)
        if gaps:
            positions = _positions_from_gaps(symbols[gap_at:gap_at + gaps])
            if len(positions) != count or (count and positions[-1] >= numel):
                raise ValueError(f"codebook tensor {name!r}: positions do not fit its {numel} elements")
            dense[positions] = values
        else:
            dense[:] = values
        out[name] = torch.from_numpy(dense).reshape(shape).to(_FLOAT_DTYPES[dtype])
        book_at, value_at, gap_at = book_at + k, value_at + count, gap_at + gaps
    return out


register_codec("sparse-codebook", _encode_codebook, _decode_codebook)
