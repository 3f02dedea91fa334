"""One registry form for model families, compression methods and explainers.

Each kind of plug-in has one `Registry`. An entry is registered once, with a
decorator on the function (or module class) that implements it, and its
capabilities are fields of the entry's dataclass (which families it handles,
whether it is sampled, which runtimes it runs on...), never name lists kept
elsewhere. The CLI choices, `auto`, the reports and the contract tests read the
registry.

The registry imports no plug-in code (as timm's): plug-in modules import their
registry, and each package imports its plug-in modules explicitly, so there is
no import cycle and nothing depends on line order.

Options are the keyword parameters of the registered function after its
`positional` leading ones (model and data for a compression method, the
context, inputs and targets for an explainer). `check_options` refuses unknown
option names from the signature itself, so methods carry no opening checks of
their own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Callable, Generic, TypeVar

from .errors import ToolkitError
from .options import validated


@dataclass
class Entry:
    """What every registered plug-in has: a name, the function (or class) that implements it, a description.

    Subclasses add capability fields. `families` is the toolkit model families it handles (empty: every model,
    a user's own included); `needs` and `excludes` are capability tags (`trainers.models.capabilities`: torch,
    onnx, conv, recurrent, dense, norm) the model must have and must not have; `refusal` maps a family or a tag
    to the reason it is refused, for the error message.

    What an entry is asked about (`target`) is a family name (its declared tags), a model (`LoadedModel` or
    `nn.Module`: the tags read from the model itself), a set of tags, or None (anything).
    """

    name: str
    func: Callable
    description: str = ""
    families: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    refusal: dict = field(default_factory=dict)

    def why_not(self, target=None) -> str | None:
        """Why the entry cannot handle `target` (one phrase), or None when it can."""
        family, tags = describe_target(target)
        if family is not None and self.families and family not in self.families:
            return self.refusal.get(family) or f"it supports {', '.join(self.families)} models"
        if tags is None:
            return None
        for tag in self.needs:
            if tag not in tags:
                return self.refusal.get(family) or self.refusal.get(tag) or f"it needs {TAG_WORDS.get(tag, tag)}"
        for tag in self.excludes:
            if tag in tags:
                return (self.refusal.get(family) or self.refusal.get(tag)
                        or f"it does not handle {TAG_WORDS.get(tag, tag)}")
        return None

    def supports(self, target=None) -> bool:
        return self.why_not(target) is None

    def options(self, positional: int) -> dict[str, object]:
        """Keyword options and their defaults: the parameters of `func` after its `positional` leading ones."""
        params = list(inspect.signature(self.func).parameters.values())[positional:]
        return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def capabilities(self) -> dict:
        """The entry's capability fields as plain data (for docs, reports and `--help`)."""
        skip = {"name", "func", "description"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip and not callable(getattr(self, f.name))}


E = TypeVar("E", bound=Entry)

# How a capability tag reads in a refusal ("it needs a PyTorch module").
TAG_WORDS = {"torch": "a PyTorch module", "onnx": "an ONNX graph", "conv": "a convolutional layer",
             "recurrent": "recurrent layers (RNN, LSTM, GRU)", "dense": "a dense (linear) layer",
             "norm": "normalisation layers", "quantized": "an already quantized (int8) graph"}


def describe_target(target) -> tuple[str | None, frozenset | None]:
    """(family name or None, capability tags or None when unknown) of what an entry is asked about."""
    if target is None:
        return None, None
    if isinstance(target, tuple):  # already described: (family, tags)
        return target
    if isinstance(target, (set, frozenset)):
        return None, frozenset(target)
    from . import models  # the registry imports no plug-in code at import time; models imports this module

    if isinstance(target, str):
        return target, models.family_tags(target)
    family = getattr(getattr(target, "spec", None), "family", None)
    return family, frozenset(models.capabilities(target))


class Registry(Generic[E]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, for messages ("compression method").
        entry_cls: the `Entry` subclass holding this kind's capabilities.
        positional: leading parameters of the registered function that the caller fills (not options).
        validate: check every call of a registered function against its annotated signature
            (`trainers.options.validated`); the decorator then returns the checking wrapper.
    """

    def __init__(self, kind: str, entry_cls: type[E], positional: int = 0, validate: bool = True):
        self.kind, self.entry_cls, self.positional, self.validate = kind, entry_cls, positional, validate
        self._entries: dict[str, E] = {}

    def register(self, name: str, **capabilities) -> Callable:
        """Decorator: register the decorated function or class as `name` with the given capability fields.

        The description defaults to the first line of its docstring. Registering a name again replaces the
        entry (a user's own method may take the place of a built-in one).
        """
        if not isinstance(name, str) or not name or any(c.isspace() or c in "/\\" for c in name):
            raise ValueError(f"{self.kind} name must be a non-empty word without spaces or slashes, got {name!r}")
        known = {f.name for f in fields(self.entry_cls)} - {"name", "func"}
        unknown = sorted(set(capabilities) - known)
        if unknown:
            raise TypeError(f"unknown capability field(s) for a {self.kind}: {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")

        def decorator(func):
            description = capabilities.get("description") or (inspect.getdoc(func) or "").split("\n")[0]
            values = {**capabilities, "description": description}
            if "families" in values:
                values["families"] = tuple(values["families"])
            if self.validate:
                func = validated(func, f"{self.kind} '{name}':")
            self._entries[name] = self.entry_cls(name=name, func=func, **values)
            return func

        return decorator

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self, target=None) -> list[str]:
        """Registered names, in registration order; only those that handle `target` (a family name, a model or
        a set of capability tags) when given."""
        return [e.name for e in self.entries(target)]

    def entries(self, target=None) -> list[E]:
        if target is not None and not isinstance(target, (str, set, frozenset, tuple)):
            target = describe_target(target)  # the model is read once, not once per entry
        return [e for e in self._entries.values() if e.supports(target)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, target=None) -> E:
        """The entry `name`; one clear ToolkitError when unknown or when it cannot handle `target` (a family
        name, a model or a set of capability tags)."""
        if not isinstance(name, str):   # a dict of options in a list of names was a raw TypeError (unhashable)
            raise ToolkitError(f"a{'n' if self.kind[0] in 'aeiou' else ''} {self.kind} must be named by a string, "
                               f"got {type(name).__name__} {str(name)[:60]}")
        entry = self._entries.get(name)
        if entry is None:
            raise ToolkitError(f"unknown {self.kind} '{name}'; choose from {', '.join(self._entries) or 'none'}")
        why = entry.why_not(target)
        if why is not None:
            family = describe_target(target)[0]
            what = f"a{'n' if family[0] in 'aeiou' else ''} {family} model" if family else "this model"
            raise ToolkitError(f"{self.kind} '{name}' cannot handle {what}: {why}")
        return entry

    def table(self, skip: tuple[str, ...] = ("refusal",)) -> str:
        """The entries as a Markdown table: name, each capability field (but `skip`), options, description.

        docs/results.md holds these tables; a test checks they match the registry, so the docs cannot drift.
        """
        entries = self.entries()
        columns = [c for c in (entries[0].capabilities() if entries else {}) if c not in skip]
        header = ["name", *(c.replace("_", " ") for c in columns), "options", "description"]
        lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
        for entry in entries:
            caps = entry.capabilities()
            cells = [f"`{entry.name}`", *(_cell(c, caps.get(c)) for c in columns),
                     ", ".join(f"`{o}`" for o in self.options(entry.name)) or "–", entry.description.replace("|", "\\|")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def options(self, name: str) -> dict[str, object]:
        """The options `name` takes and their defaults (`inspect.Parameter.empty` when required)."""
        return self.get(name).options(self.positional)

    def check_options(self, name: str, options: dict | None) -> dict:
        """`options` if every name is an option of `name`; else one clear ToolkitError naming the unknown ones."""
        options = dict(options or {})
        known = self.options(name)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ToolkitError(f"unknown option(s) for {self.kind} '{name}': {', '.join(unknown)}; "
                               f"it takes {', '.join(known) or 'no options'}")
        return options

    def call(self, name: str, *args, family=None, **options):
        """Check `options` against the signature, then call the entry with `args` and them."""
        entry = self.get(name, family)
        return entry.func(*args, **self.check_options(name, options))


def _cell(column: str, value) -> str:
    """A capability value as a table cell: empty `families` means all of them."""
    if column == "families" and not value:
        return "all"
    if isinstance(value, bool):
        return "all" if value and column in ("axiom", "default") else ("yes" if value else "–")
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) or "–"
    return "–" if value is None else str(value)
