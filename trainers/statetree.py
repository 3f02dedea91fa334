"""A nested training state as plain JSON plus a flat dict of tensors: what a checkpoint holds, with no pickle.

An optimizer's state dict has int keys, tuples (`betas`), tensors, None and floats that may be inf or nan;
JSON has none of these but None. Each is written as a one-key tag object, so reading gives back the same tree:
`{"dict": {...}}` (str keys), `{"items": [[key, value], ...]}` (other keys), `{"tuple": [...]}`,
`{"float": "inf" | "-inf" | "nan"}`, `{"tensor": name}` (the tensor is stored under `name`). Finite floats are
plain JSON numbers: Python writes the shortest text that reads back as the same float, so they round-trip exactly.
"""

from __future__ import annotations

import math

import torch

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def flatten(tree) -> tuple[object, dict[str, torch.Tensor]]:
    """`tree` as a JSON-ready object and the tensors it names (detached, contiguous CPU copies).

    Raises:
        TypeError: a value of another type (a programming error: state dicts hold none).
    """
    tensors: dict[str, torch.Tensor] = {}
    return _encode(tree, tensors), tensors


def unflatten(encoded, tensors: dict[str, torch.Tensor]):
    """The tree `flatten` was given, from its two results.

    Raises:
        ValueError: an object no `flatten` wrote (an unknown tag, a missing tensor); the message says which.
    """
    return _decode(encoded, tensors)


def _encode(value, tensors: dict):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": "nan" if math.isnan(value) else str(value)}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()  # safetensors wants its own storage
        return {"tensor": name}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, tensors) for item in value]}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {"dict": {key: _encode(item, tensors) for key, item in value.items()}}
        return {"items": [[_encode(key, tensors), _encode(item, tensors)] for key, item in value.items()]}
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _decode(value, tensors: dict):
    if value is None or isinstance(value, (bool, int, str, float)):
        return value
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not (isinstance(value, dict) and len(value) == 1):
        raise ValueError(f"unexpected {type(value).__name__} in the state")
    (tag, inner), = value.items()
    if tag == "dict" and isinstance(inner, dict):
        return {key: _decode(item, tensors) for key, item in inner.items()}
    if tag == "items" and isinstance(inner, list) and all(isinstance(p, list) and len(p) == 2 for p in inner):
        return {_key(_decode(key, tensors)): _decode(item, tensors) for key, item in inner}
    if tag == "tuple" and isinstance(inner, list):
        return tuple(_decode(item, tensors) for item in inner)
    if tag == "float" and inner in _NON_FINITE:
        return _NON_FINITE[inner]
    if tag == "tensor" and isinstance(inner, str):
        if inner not in tensors:
            raise ValueError(f"tensor {inner[:40]!r} is missing")
        return tensors[inner]
    raise ValueError(f"unknown entry {tag[:40]!r} in the state")


def _key(key):
    """A dict key as read back: a list or dict (or a tuple holding one) is no key."""
    try:
        hash(key)
    except TypeError:
        raise ValueError(f"a {type(key).__name__} cannot be a key") from None
    return key
