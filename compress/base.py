"""What every compression method shares: the `Variant` result, the method registry and the source checks.

Every method answers the same call::

    variants = method(model, data, **options)   # -> list[Variant]

where `model` is a `trainers.LoadedModel` (a toolkit family, a user's module or ONNX graph: `trainers.as_model`)
and `data` a `trainers.DataBundle`. What a method can take is declared as capability fields (`families`,
`needs`, `excludes`) and checked against the model itself.
A method is registered once with `@register_method`, which declares its
capabilities (`Method`); the CLI choices, `auto`, the reports and the contract
suite (`compress.checks`) read the registry. Options are the method's keyword
parameters, annotated with `trainers.options` types: every call is checked
against them, and so is the model it starts from (`check_source`).

This module imports no torch, so `import compress` stays light.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from trainers.errors import ToolkitError
from trainers.options import check_arguments
from trainers.registry import Entry, Registry

ROLES = ("runtime", "transform", "search")


@dataclass(repr=False)
class Variant:
    """One compressed model, ready to measure and save as an artifact.

    Attributes:
        name: unique, file-system safe, e.g. "int8-static-onnx" or "prune-structured-50".
        model: the model (its `spec.lineage` holds `parent` and `recipe`).
        recipe: how it was made: {"method": ..., options...}.
        onnx_bytes: the ONNX file, for variants that run in ONNX Runtime.
        measurements: filled by `measure`: accuracy, size, latency, parity.
        notes: plain-language remarks (e.g. "slower than fp32 at batch 1").
        small: the variant that answers calls on fewer than `model.spec.serve["below_batch"]` rows, where this
            one routes calls by batch size (`compress.auto.by_batch`); None: this variant answers every call.
    """

    name: str
    model: object
    recipe: dict
    onnx_bytes: bytes | None = None
    measurements: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    small: "Variant | None" = None

    def __repr__(self) -> str:
        """One short line, as the results' reprs: `onnx_bytes` alone would print the whole file (megabytes of
        escaped bytes at the end of a notebook cell), and `model` its full spec."""
        from trainers.display import short_repr

        return short_repr("Variant", name=self.name, recipe=self.recipe, measurements=self.measurements or None)


@dataclass
class Method(Entry):
    """A registered compression method and what `auto` needs to know about it.

    Attributes:
        role: "runtime" converts or quantizes the model it is given (ONNX, int8, fp16); "transform" makes a
            smaller fp32 PyTorch model (pruning, distillation); "search" tries other methods (auto).
        auto: `(family, settings) -> list[dict]`, the option sets auto tries on a `family` model (`settings`:
            auto's options, and `device`, where the variants serve); None: auto does not try the method.
        chain: auto chains it with the other side: a runtime method with `chain` also runs on the output of
            every transform with `chain` (pruned -> int8 ONNX).
        chain_devices: where a runtime method's `chain` holds: the device types ("cpu", "cuda") auto must be
            timing on for it to run on a transform's output; empty: every device. Half precision pays on a GPU
            only (PyTorch on a CPU has few fp16 kernels), so there a pruned model is tried in fp16 too.
        fallback: option names whose values in a later auto step are a fallback: a step that differs from an
            earlier step of the method only in these options is made only when the earlier one failed the
            fidelity rule (int8 at the stricter default agreement after int8 at auto's own; a pruned model
            fine-tuned with the original as teacher after the one fine-tuned on the labels).
        keeps_speed: its variant computes what the model given computes, at that model's speed: only what is
            stored changes (unstructured pruning's zeros are stored sparse but multiplied dense). Auto does not
            make it once a candidate made before it is clearly faster than the original (`auto.OUTPACED`).
    """

    role: str = "runtime"
    auto: Callable[[str, dict], list[dict]] | None = None
    chain: bool = False
    chain_devices: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    keeps_speed: bool = False

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"compression method role must be one of {', '.join(ROLES)}, got {self.role!r}")


METHODS: Registry[Method] = Registry("compression method", Method, positional=2)


# Why the int8 methods exclude the `quantized` tag: ORT's quantizers fail on QDQ/QOperator nodes (duplicate node
# names, missing scales), and rounding int8 weights again only adds error to a graph that is no faster.
ALREADY_QUANTIZED = ("the graph is already quantized (int8): give the fp32 model or graph it was made from, or "
                     "measure this one as it is with -m onnx-fp32")


def register_method(name: str, **capabilities):
    """Decorator: register a compression method `name` with its capability fields (see `Method`).

    The registered function refuses, before any work, options its signature does not allow and a model it
    cannot start from (`check_source`, then the families it declares).
    """

    def decorator(func):
        @functools.wraps(func)
        def method(model, data, *args, **options):
            check_source(model, f"compression method '{name}'")
            METHODS.get(name, model)  # the model's family and the capabilities read from it
            return func(model, data, *args, **options)

        return METHODS.register(name, **capabilities)(method)

    return decorator


def list_methods(family=None) -> list[str]:
    """Registered method names, optionally only those that handle `family` (a family name, a model or tags)."""
    return METHODS.names(family)


def get_method(name: str, family=None) -> Method:
    """The method `name`; one clear ToolkitError when unknown or when it cannot handle a `family` model."""
    return METHODS.get(name, family)


def check_method_options(name: str, options: dict | None) -> dict:
    """`options` checked against method `name`'s signature without running it; returns them converted."""
    options = METHODS.check_options(name, options)
    return check_arguments(METHODS.get(name).func, options, f"{METHODS.kind} '{name}':", METHODS.positional)


def default_options(family: str, settings: dict) -> list[dict]:
    """An `auto` capability: try the method once, with its default options."""
    return [{}]


def check_source(model, who: str) -> None:
    """Refuse, in one line, a model compression cannot start from: fp32 PyTorch weights of a registered family or
    of a user's own module, or a user's own fp32 ONNX graph (`trainers.as_model`)."""
    from trainers.artifact import CUSTOM_FAMILY, ONNX_FAMILY, LoadedModel
    from trainers.models import list_models

    if not isinstance(model, LoadedModel):
        raise ToolkitError(f"{who} needs a trainers.LoadedModel, got {type(model).__name__}")
    if model.spec.family == ONNX_FAMILY:
        if model.onnx_model_bytes() is None:
            raise ToolkitError(f"{who} needs the ONNX graph of an onnx model; this one has none")
        return
    if model.module is None and model.spec.runtime == "torch" and model.spec.family == CUSTOM_FAMILY:
        raise ToolkitError(f"{who} needs the module of this artifact's own architecture: from Python, "
                           "load_model(dir, module=YourNet()) and pass that, or give its ONNX graph")
    if model.module is None and model.spec.runtime == "torch":
        raise ToolkitError(f"{who} needs a PyTorch model; this artifact has no PyTorch weights")
    if model.spec.runtime != "torch" or model.spec.dtype != "float32":
        precision = (model.spec.onnx or {}).get("precision") if model.spec.runtime == "onnxruntime" else None
        graph = "; to compress its ONNX graph as it is, give its model.onnx file" if precision else ""
        raise ToolkitError(f"{who} needs an fp32 PyTorch model (a trained model, not a compressed variant); "
                           f"this one is {precision or model.spec.dtype} in {model.spec.runtime}{graph}")
    if model.spec.family not in list_models() and model.spec.family != CUSTOM_FAMILY:
        raise ToolkitError(f"{who} cannot handle a {model.spec.family} model: no such model family is registered")


def failed_on_user_model(model, exc: BaseException) -> str | None:
    """The reason line for a method that raised `exc` on a user's own module or ONNX graph, or None where the
    failure is a bug to see: a user's model can fail in ways no check foresees (ORT's quantizer on a graph it
    cannot read), and that is one line about the model, never an "unexpected error"."""
    from trainers.artifact import CUSTOM_FAMILY, ONNX_FAMILY

    if not isinstance(exc, (RuntimeError, TypeError, ValueError)) or model.spec.family not in (CUSTOM_FAMILY,
                                                                                               ONNX_FAMILY):
        return None
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"failed on this model ({type(exc).__name__}: {first})"


def lineage(parent, recipe: dict) -> dict:
    """The `lineage` of a model made from `parent` (a LoadedModel) by `recipe`; with the checksum of the parent's
    file where it has one (`parent_sha256`), so a model replaced at the same path is not taken for the parent."""
    from trainers.artifact import parent_checksum

    digest = parent_checksum(parent.spec.weights, parent.spec.onnx)
    return {"parent": parent.source, "recipe": recipe, **({"parent_sha256": digest} if digest else {})}


def derive_model(parent, module, recipe: dict, **spec_changes):
    """A LoadedModel for `module`, made from `parent` by `recipe`: the parent's spec with `spec_changes` and lineage."""
    from trainers.artifact import LoadedModel, ModelSpec

    raw = {**parent.spec.to_dict(), **spec_changes, "lineage": lineage(parent, recipe)}
    return LoadedModel(module=module, spec=ModelSpec.from_dict(raw), origin=parent.origin)
