"""One way to declare and check options: types and bounds in the signature, checked by pydantic.

Every default and every bound lives in one place, next to the option:

- stage options are dataclasses (`TrainConfig`, `CompressOptions`, ...) whose fields are annotated with the
  types below (`epochs: Annotated[Int, Field(ge=1)] = 100`); `parse(cls, values, where)` builds one from a
  dict (a config-file section, keyword arguments) and `check(obj)` re-validates one built directly;
- registered functions (compression methods, explainers) annotate their keyword options the same way, and
  `validated(func, where)` checks every call against the signature (unknown names, types, bounds), and
  `check_arguments(func, values, where)` checks options the same way before the call (a whole request
  refused before any work).

Either way a bad value becomes one `ToolkitError` line that names the option, the rule and the value, never
pydantic's multi-line report. pydantic is used rather than hand-written checks: it reads the annotations
(nested dataclasses, lists, optionals) that a hand-written checker would have to re-implement.

`Int`, `Float`, `Bool` and `Str` are strict (a `True` is no integer, `"3"` no number); an integer is a
valid `Float`.
"""

from __future__ import annotations

import dataclasses
import json
import functools
import inspect
import os
import sys
import typing
from typing import Annotated, Any, Callable, TypeVar

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, create_model, validate_call

from .errors import ToolkitError

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
# A number of epochs: beyond a million it is a slip of the keyboard (a run of 10**23 epochs was accepted and
# recorded as is), not a schedule anyone means.
MAX_EPOCHS = 1_000_000
Epochs = Annotated[int, Strict(), Field(ge=1, le=MAX_EPOCHS)]
EpochsOrNone = Annotated[int, Strict(), Field(ge=0, le=MAX_EPOCHS)]  # 0: that step is skipped
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**32)]  # numpy and scikit-learn take 32-bit seeds
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]   # [0, 1]
# Where a model serves: the CPU, or a CUDA GPU (its index after a colon).
DEVICE_PATTERN = r"cpu|cuda(:[0-9]+)?"
Device = Annotated[str, Strict(), Field(pattern=f"^({DEVICE_PATTERN})$")]
Ratio = Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]      # (0, 1), e.g. a pruning ratio

# Dataclasses checked by `parse` refuse keys they do not declare; set on each options dataclass.
FORBID_EXTRA = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
_CALL_CONFIG = ConfigDict(arbitrary_types_allowed=True)

T = TypeVar("T")


def one_line(exc: ValidationError, where: str = "", flags: dict[str, str] | None = None) -> str:
    """pydantic's first error as one line: `where option: rule, got value`.

    `flags` maps a field (`""` for a bare value) to the command-line option that set it: a user who typed
    `--epochs 0` is told about `--epochs`, not the field `epochs` (`--device must be ...`, as `check_device`
    says it). The Python API passes none and keeps the field names it was called with."""
    error = exc.errors(include_url=False)[0]
    parts = [str(part) for part in error.get("loc", ())]
    message = error.get("msg", "invalid value")
    if error.get("type") in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown option"
    elif message:
        message = message[0].lower() + message[1:]
    value = error.get("input")
    quiet = error.get("type") in ("missing", "missing_argument", "extra_forbidden", "unexpected_keyword_argument")
    shown = "" if quiet or isinstance(value, dict) else f", got {_short(value)}"
    head = parts[0] if parts else ""
    if flags and head in flags:
        return _as_typed(" ".join([flags[head], *parts[1:]]), message, shown)
    prefix = " ".join(part for part in (where, ".".join(parts)) if part)
    return f"{prefix}: {message}{shown}" if prefix else f"{message}{shown}"


def _as_typed(option: str, message: str, shown: str) -> str:
    """`--option must be ..., got x` for a validator's rule (pydantic's "value error, " left out), else
    `--option: rule, got x`."""
    message = message.removeprefix("value error, ")
    return f"{option} {message}{shown}" if message.startswith("must ") else f"{option}: {message}{shown}"


def option_flags(names, **renamed: str) -> dict[str, str]:
    """The command-line option of each field name: `batch_size` is `--batch-size`, unless `renamed` says
    otherwise (`model="--arch"`)."""
    return {name: renamed.get(name, "--" + name.replace("_", "-")) for name in names}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def parse(cls: type[T], values: dict | None = None, where: str = "", flags: dict[str, str] | None = None) -> T:
    """Build dataclass `cls` from `values`; unknown keys, wrong types and out-of-range values are refused (named
    by their command-line option where `flags` gives one: `one_line`)."""
    if values is not None and not isinstance(values, dict):
        raise ToolkitError(f"{where or cls.__name__} must be a table of options, got {_short(values)}")
    try:
        return _adapter(cls).validate_python(dict(values or {}))
    except ValidationError as exc:
        raise ToolkitError(one_line(exc, where, flags)) from None


def check(obj: T, where: str = "") -> T:
    """Re-validate a dataclass instance built directly (its constructor checks nothing)."""
    return parse(type(obj), as_dict(obj), where)


def as_dict(obj) -> dict:
    """A dataclass's fields as plain data (nested dataclasses too)."""
    return dataclasses.asdict(obj)


def defaults(cls: type) -> dict:
    """The default values of a dataclass's fields."""
    return as_dict(cls())


def validated(func: Callable, where: str) -> Callable:
    """`func` with every call checked against its annotated signature; a bad option is one ToolkitError line."""
    checked = validate_call(config=_CALL_CONFIG)(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return checked(*args, **kwargs)
        except ValidationError as exc:
            if exc.title not in (func.__name__, func.__qualname__):  # raised inside the body: not ours
                raise
            raise ToolkitError(one_line(exc, where)) from None

    return wrapper


def as_items(value) -> list:
    """`value` as a list: one name, path, ONNX bytes or model (a str, bytes, a Path, a module, anything that
    is no collection) is a list of one, not its characters (`methods="shapley"`, `compare="runs/x"`)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)) or not hasattr(value, "__iter__") or _is_module(value):
        return [value]
    return list(value)


def _is_module(value) -> bool:
    torch = sys.modules.get("torch")  # nothing is a module before PyTorch is imported
    return torch is not None and isinstance(value, torch.nn.Module)


def check_value(annotation, value, where: str, *, typed: bool = False):
    """`value` checked against a type such as `Ratio` (the converted value); else one ToolkitError line.
    `typed`: `where` is the option as typed (`--serving-batch must be 1 or 256, got 8`)."""
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        raise ToolkitError(one_line(exc, "" if typed else where, {"": where} if typed else None)) from None


def check_arguments(func: Callable, values: dict, where: str, skip: int = 0) -> dict:
    """`values` checked against `func`'s annotated parameters after its first `skip`, without calling it.

    Unknown names, types and bounds are refused as a call would refuse them, so a caller can check every
    option of a request before any work. Returns the given values, converted (a list becomes a tuple...).
    """
    try:
        checked = _arguments_model(func, skip).model_validate(values)
    except ValidationError as exc:
        raise ToolkitError(one_line(exc, where)) from None
    return {name: getattr(checked, name) for name in values}


@functools.cache
def _arguments_model(func: Callable, skip: int):
    hints = typing.get_type_hints(func, include_extras=True)
    params = list(inspect.signature(func).parameters.values())[skip:]
    fields = {p.name: (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
              for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())
    return create_model(f"{func.__name__}_options", __config__=config, **fields)


def parse_json_option(text: str | None, option: str) -> dict:
    """A command-line option that takes a JSON object (`--arch`, `--options`): {} when not given."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{option} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ToolkitError(f"{option} must be a JSON object, e.g. '{{\"hidden\": [64]}}'")
    return value


def env_limit(name: str, default: int, unit: str) -> int:
    """A size limit: `default`, or the environment variable `name` when set (a positive number of `unit`, e.g.
    "bytes"); anything else there is one ToolkitError line naming the variable."""
    import os

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        limit = int(float(raw))
    except (ValueError, OverflowError):
        raise ToolkitError(f"{name} must be a number of {unit}, got {raw!r}") from None
    if limit < 1:
        raise ToolkitError(f"{name} must be positive, got {raw!r}")
    return limit
