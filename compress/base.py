"""What every compression method shares: the `Variant` result and the method registry.

Every method answers the same call::

    variants = method(model, data, **options)   # -> list[Variant]

where `model` is a `trainers.LoadedModel` and `data` a `trainers.DataBundle`.
A method is registered once with `@register_method`, which also declares the
families it can handle; the CLI choices, `auto`, the reports and the
table-driven tests all read the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from trainers.errors import ToolkitError


@dataclass
class Variant:
    """One compressed model, ready to measure and save as an artifact.

    Attributes:
        name: unique, file-system safe, e.g. "int8-static-onnx" or "prune-structured-50".
        model: the model (its `spec.lineage` holds `parent` and `recipe`).
        recipe: how it was made: {"method": ..., options...}.
        onnx_bytes: the ONNX file, for variants that run in ONNX Runtime.
        measurements: filled by `measure`: accuracy, size, latency, parity.
        notes: plain-language remarks (e.g. "slower than fp32 at batch 1").
    """

    name: str
    model: object
    recipe: dict
    onnx_bytes: bytes | None = None
    measurements: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Method:
    name: str
    func: Callable
    families: tuple[str, ...]
    description: str


METHODS: dict[str, Method] = {}


def register_method(name: str, families: tuple[str, ...] = ("mlp", "cnn", "lstm"), description: str = ""):
    """Decorator: register a compression method under `name` for `families`."""

    def decorator(func):
        METHODS[name] = Method(name, func, tuple(families), description or (func.__doc__ or "").strip().split("\n")[0])
        return func

    return decorator


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names, optionally only those that handle `family`."""
    return [m.name for m in METHODS.values() if family is None or family in m.families]


def get_method(name: str, family: str | None = None) -> Method:
    if name not in METHODS:
        raise ToolkitError(f"unknown compression method '{name}'; choose from {', '.join(METHODS)}")
    method = METHODS[name]
    if family is not None and family not in method.families:
        raise ToolkitError(f"method '{name}' cannot handle a {family} model (it supports {', '.join(method.families)})")
    return method


def check_range(name: str, value, low: float, high: float, *, include_low: bool = False, include_high: bool = False) -> float:
    """`value` as a finite float within (low, high), each end open unless included; else one clear error."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ToolkitError(f"{name} must be a number, got {value!r}") from None
    ok_low = v >= low if include_low else v > low
    ok_high = v <= high if include_high else v < high
    if not (ok_low and ok_high and math.isfinite(v)):
        raise ToolkitError(f"{name} must be in {'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}, got {value!r}")
    return v
