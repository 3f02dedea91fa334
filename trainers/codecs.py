"""How weights are laid out inside `model.safetensors`.

A codec turns a state dict into the flat tensors stored in the file and back.
`dense` stores the state dict as it is. Compression methods that store
weights differently (sparse, int8) register a codec here, in the ground floor,
so `trainers.load_model` can read every artifact without importing `compress`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

StateDict = dict[str, torch.Tensor]


@dataclass
class Codec:
    name: str
    encode: Callable[[StateDict], StateDict]
    decode: Callable[[StateDict], StateDict]


CODECS: dict[str, Codec] = {}


def register_codec(name: str, encode, decode) -> None:
    CODECS[name] = Codec(name, encode, decode)


def _identity(tensors: StateDict) -> StateDict:
    return {k: v.contiguous() for k, v in tensors.items()}


register_codec("dense", _identity, _identity)
