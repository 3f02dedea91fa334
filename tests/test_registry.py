"""The registry form and the options mechanism every plug-in and stage option goes through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import pytest
from pydantic import Field

from trainers.errors import ToolkitError
from trainers.options import FORBID_EXTRA, Float, PositiveInt, Ratio, Str, check, parse
from trainers.registry import Entry, Registry


@dataclass
class _Method(Entry):
    role: str = "runtime"


def _registry():
    registry = Registry("test method", _Method, positional=2)

    @registry.register("shrink", families=("mlp",), role="transform", refusal={"lstm": "no recurrent layers"})
    def shrink(model, data, ratio: Ratio = 0.5, epochs: PositiveInt = 3, lr: Float = 1e-3):
        """Make it smaller."""
        return ratio, epochs, lr

    return registry, shrink


def test_register_records_capabilities_and_docstring():
    registry, _ = _registry()
    entry = registry.get("shrink")
    assert entry.description == "Make it smaller."
    assert entry.role == "transform" and entry.families == ("mlp",)
    assert registry.names() == ["shrink"] and registry.names("mlp") == ["shrink"] and registry.names("cnn") == []
    assert registry.options("shrink") == {"ratio": 0.5, "epochs": 3, "lr": 1e-3}


def test_unknown_capability_field_is_a_programming_error():
    registry = Registry("test method", _Method)
    with pytest.raises(TypeError, match="unknown capability field"):
        registry.register("x", sampled=True)


@pytest.mark.parametrize("options, message", [
    ({"ratio": 1.5}, "ratio: input should be less than 1, got 1.5"),
    ({"epochs": True}, "epochs: input should be a valid integer, got True"),
    ({"epochs": 0}, "epochs: input should be greater than or equal to 1, got 0"),
    ({"lr": "fast"}, "lr: input should be a valid number, got 'fast'"),
    ({"bogus": 1}, "bogus: unknown option"),
])
def test_calls_are_checked_against_the_signature(options, message):
    registry, shrink = _registry()
    with pytest.raises(ToolkitError) as caught:
        shrink(None, None, **options)
    assert str(caught.value) == f"test method 'shrink': {message}"
    with pytest.raises(ToolkitError):
        registry.call("shrink", None, None, **options)


def test_valid_call_passes_values_through_and_ints_are_floats():
    registry, shrink = _registry()
    assert registry.call("shrink", None, None, ratio=0.25, lr=1) == (0.25, 3, 1.0)


def test_get_refuses_unknown_names_and_unsupported_families_in_one_line():
    registry, _ = _registry()
    with pytest.raises(ToolkitError, match="unknown test method 'grow'; choose from shrink"):
        registry.get("grow")
    with pytest.raises(ToolkitError, match="cannot handle a lstm model: no recurrent layers"):
        registry.get("shrink", "lstm")
    with pytest.raises(ToolkitError, match="it supports mlp"):
        registry.get("shrink", "cnn")
    with pytest.raises(ToolkitError, match="unknown option.*it takes ratio, epochs, lr"):
        registry.check_options("shrink", {"rate": 0.1})


@dataclass
class _Inner:
    __pydantic_config__ = FORBID_EXTRA
    epochs: Annotated[int, Field(ge=1)] = 10
    name: Str = "x"


@dataclass
class _Outer:
    __pydantic_config__ = FORBID_EXTRA
    inner: _Inner = field(default_factory=_Inner)
    methods: list[Str] = field(default_factory=lambda: ["auto"])


def test_parse_names_the_nested_key_and_keeps_defaults():
    assert parse(_Outer, {"inner": {"epochs": 3}}) == _Outer(_Inner(3, "x"), ["auto"])
    with pytest.raises(ToolkitError, match=r"^config inner.epochs: input should be greater than or equal to 1, got 0$"):
        parse(_Outer, {"inner": {"epochs": 0}}, "config")
    with pytest.raises(ToolkitError, match=r"^config inner.epoch: unknown option"):
        parse(_Outer, {"inner": {"epoch": 3}}, "config")
    with pytest.raises(ToolkitError, match=r"methods.1: input should be a valid string, got 3"):
        parse(_Outer, {"methods": ["a", 3]})
    with pytest.raises(ToolkitError, match="must be a table of options"):
        parse(_Outer, ["inner"], "config")
    with pytest.raises(ToolkitError, match="inner.epochs"):
        check(_Outer(_Inner(epochs=-1)))
