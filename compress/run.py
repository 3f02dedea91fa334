"""The compress stage: load, validate, make the requested variants, measure, choose, save.

`compress_model` is what `toolkit compress` calls; with `out` it writes a run
directory (see docs/results.md) through `trainers.RunDir`, so a failed run
leaves nothing half-written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trainers.artifact import (CUSTOM_FAMILY, SMALL_BATCH_DIR, LoadedModel, ModelSpec, check_device, write_artifact,
                               write_member)
from trainers.data import DataBundle, align_classes, check_inputs
from trainers.tables import TableOptions, load_for_model
from trainers.errors import ToolkitError, warn
from trainers.options import Fraction, PositiveFloat, Ratio, as_items, check_value
from trainers.progress import progress_target, reporter

from .auto import baseline_variant, plan, search, settle
from .export import raw_rows_onnx, with_metadata
from .base import METHODS, Variant, check_method_options, check_source, failed_on_user_model, get_method
from .options import AccuracyPoints, CompressOptions
from .measure import LatencyConfig

ROW_KEYS = ("accuracy", "accuracy_drop", "size_bytes", "size_ratio", "parameters", "latency_ms", "speedup",
            "slower_than_fp32", "flips", "within_budget", "pareto", "fidelity", "speedup_spread", "noisy", "rounds", "log_loss")


@dataclass(repr=False)
class CompressResult:
    """What the compress stage returns (and writes as result.json)."""

    parent: str
    family: str
    data: dict
    methods: list[str]
    max_drop: float
    baseline: Variant
    variants: list[Variant]
    chosen: Variant
    reason: str
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    min_agreement: float = CompressOptions.min_agreement
    budget_seconds: float | None = None
    search_notes: list[str] = field(default_factory=list)
    threads: dict = field(default_factory=dict)
    device: str = CompressOptions.device
    out: Path | None = None
    paths: dict = field(default_factory=dict)  # variant name -> path relative to the run dir

    def row(self, v: Variant):
        """One variant's row of result.json, a `trainers.schema.VariantRow`."""
        from trainers.schema import VariantRow

        m = v.measurements
        return VariantRow(
            name=v.name, method=v.recipe.get("method"), recipe=v.recipe,
            path=self.parent if v is self.baseline else self.paths.get(v.name),
            runtime=m.get("runtime"), dtype=_dtype(v), **{k: m.get(k) for k in ROW_KEYS},
            parity=m.get("parity"), twin_agreement=m.get("twin_agreement"),
            agreement_check=m.get("agreement_check"), int8_search=m.get("int8_search"), notes=list(v.notes),
            device=m.get("device", "cpu"), provider=m.get("provider"),
            serve=None if v.small is None else {"below_batch": v.model.spec.serve["below_batch"], "small": v.small.name,
                                                 "small_runtime": v.small.measurements["runtime"]})

    # the repr's names are attributes (`result.chosen_name`), as a notebook reads them
    @property
    def n_variants(self) -> int:
        return len(self.variants)

    @property
    def chosen_name(self) -> str:
        return self.chosen.name

    def __repr__(self) -> str:
        from trainers.display import short_repr

        return short_repr("CompressResult", family=self.family, methods=self.methods, n_variants=self.n_variants,
                          chosen_name=self.chosen_name, max_drop=self.max_drop,
                          out=str(self.out) if self.out else None)

    def to_frame(self):
        """The variants as a pandas DataFrame: one row per variant, the original first (len(variants) + 1 rows);
        columns `compress.views.COLUMNS` (name, method, runtime, device, small_batch, dtype, accuracy, accuracy_drop,
        agreement and its interval, size_bytes, size_ratio, parameters, latency_b1_ms, latency_b256_ms, speedup_b1,
        speedup_b256, noisy, slower_than_fp32, within_budget, pareto, chosen)."""
        from . import views

        return views.to_frame(self.to_dict())

    @property
    def figures(self) -> dict:
        """{caption: matplotlib Figure}: accuracy against latency and nominal against on-disk size."""
        from . import views

        return views.figures(self.to_dict())

    def _repr_html_(self) -> str:
        from . import views

        return views.html(repr(self), self.to_dict())

    def to_dict(self) -> dict:
        """The `result.json` object, built through its schema (trainers.schema.CompressResultFile)."""
        from trainers.kept import record
        from trainers.schema import Chosen, CompressResultFile

        chosen_path, digest = (record(self.baseline.model, self.out) if self.chosen is self.baseline
                               else (self.paths.get(self.chosen.name), None))
        return CompressResultFile(
            parent=self.parent, family=self.family, data=self.data, methods=self.methods, max_drop=self.max_drop,
            threads=self.threads, baseline=self.row(self.baseline),
            variants=[self.row(v) for v in [self.baseline, *self.variants]],
            chosen=Chosen(name=self.chosen.name, path=chosen_path, reason=self.reason, checksum=digest),
            skipped=self.skipped, seconds=round(self.seconds, 2), min_agreement=self.min_agreement,
            budget_seconds=self.budget_seconds, search_notes=self.search_notes, device=self.device,
        ).dump()


def _dtype(v: Variant) -> str:
    if v.model.spec.runtime == "onnxruntime":
        return (v.model.spec.onnx or {}).get("precision", "float32")
    return v.model.spec.dtype


def _load(model, data, target, table) -> tuple[LoadedModel, DataBundle]:
    from trainers.usermodel import as_model

    if not isinstance(model, LoadedModel) and not (isinstance(model, (str, Path)) and Path(model).is_dir()):
        if not isinstance(data, DataBundle):  # a user's module or ONNX graph: its example input comes from the data
            from trainers.data import load_data

            table = table or TableOptions()
            data = load_data(data, table=TableOptions(target or table.target, table.keep, table.drop, table.sep))
        model = as_model(model, data)
    model = as_model(model)
    if (model.spec.family == CUSTOM_FAMILY and model.module is None and model.spec.dtype == "float32"
            and model.onnx_model_bytes() is not None):
        # A variant of a user's own module, saved, read without its class: its fp32 ONNX graph is the model, as
        # if the user had given that file (the ONNX methods apply; the PyTorch ones need the module).
        from trainers.usermodel import from_onnx

        model = from_onnx(model.onnx_model_bytes(), class_names=model.spec.class_names,
                          origin=str(Path(model.source) / model.spec.onnx["file"]))
    check_source(model, "compress")
    if not isinstance(data, DataBundle):
        table = table or TableOptions()
        data = load_for_model(data, model.spec, table=TableOptions(target or table.target, table.keep, table.drop,
                                                                   table.sep))
    check_inputs(data.x_test, tuple(model.spec.input_shape), f"data '{data.name}'")
    if data.num_classes > model.spec.num_classes:
        raise ToolkitError(f"data '{data.name}' has {data.num_classes} classes, the model predicts {model.spec.num_classes}")
    return model, align_classes(data, model.spec.class_names)


# Options of auto that compress_model sets itself, from its own arguments. Only auto's: the int8 methods'
# `min_agreement` is their own layer-fallback target (99.5% by default), not the fidelity rule's --min-agreement.
_SET_BY_COMPRESS = {"max_drop": "max_drop (--max-drop)", "progress": "progress",
                    "min_agreement": "min_agreement (--min-agreement)",
                    "budget_seconds": "budget_seconds (--budget-seconds)"}


def _method_options(name: str, options: dict, ratio: float | None) -> dict:
    """The options `name` runs with: those given for it, and the pruning `ratio` where it takes one."""
    opts = dict(options.get(name, {}))
    takes = METHODS.options(name)
    if ratio is not None and "ratio" in takes:
        opts.setdefault("ratio", ratio)
    elif ratio is not None and "prune_ratios" in takes:
        opts.setdefault("prune_ratios", [ratio])
    return opts


def small_test_split(n: int, max_drop: float, min_agreement: float) -> str | None:
    """A note when the test split is too small for the fidelity rule to mean much (None otherwise): one row
    is more than the accuracy budget AND the agreement margin lets more than 2 rows in 100 flip. On 6 rows, one
    flip is 16.7 points against a 0.5-point budget, and 100% agreement has a 95% interval of 61-100%."""
    from .measure import agreement_margin

    row, margin = 100.0 / n, agreement_margin(min_agreement, n)
    if row <= max_drop or margin <= 0.02:
        return None
    return (f"the test split has {n} rows: one changed prediction is {row:.1f} accuracy points (budget "
            f"{max_drop:g}) and the agreement rule allows {margin:.0%} less than {min_agreement:.0%}; the choice "
            "rests on very few rows (give more test rows: x_test/y_test, or more data)")


# DESIGN's command line names kinds of compression (`--method quantize|prune|distill|auto`); the registry names
# each way of doing one. A kind stands for its registered methods that the model can take, in registry order:
# ONNX Runtime's int8 quantizations, and the structured pruning that really shrinks the model.
KINDS = {"quantize": ("int8-dynamic", "int8-static", "int8-weights"), "prune": ("prune-structured",)}


def expand_kinds(methods: list[str], options: dict | None = None, model=None) -> list[str]:
    """`methods` with each kind (`KINDS`) replaced by its methods (those `model` can take, when given), each
    method once. Options are per method: a kind's name in `options` is one ToolkitError line naming them."""
    given = sorted(set(options or {}) & set(KINDS))
    if given:
        raise ToolkitError(f"options are given per method, not for the kind {given[0]!r}: name its methods "
                           f"({', '.join(KINDS[given[0]])})")
    from . import list_methods

    takes = set(list_methods(model)) if model is not None else None
    out = []
    for name in methods:
        members = [m for m in KINDS.get(name, (name,)) if name not in KINDS or takes is None or m in takes]
        if name in KINDS and not members:
            raise ToolkitError(f"none of the methods of {name!r} ({', '.join(KINDS[name])}) can take this model")
        # a method named and also in a kind runs once; one named twice stays twice (check_request refuses that)
        out += members if name not in KINDS else [m for m in members if m not in out and m not in methods]
    return out


def check_request(methods, family, max_drop, options: dict | None = None, ratio=None,
                  min_agreement=CompressOptions.min_agreement, budget_seconds=None, device=CompressOptions.device):
    """Refuse a bad request before any work: a bad budget, agreement, ratio or device (a GPU this machine does
    not have), an unknown method, one the model cannot take, options for a method not requested, and every
    method's options against its signature (names, types, ranges). `family` is a family name, a model (its
    capabilities decide) or None (no model check). Returns (max_drop, ratio)."""
    from . import register_builtin_methods

    register_builtin_methods()
    max_drop = check_value(AccuracyPoints, max_drop, "--max-drop")
    check_value(Fraction, min_agreement, "--min-agreement")
    if budget_seconds is not None:
        check_value(PositiveFloat, budget_seconds, "--budget-seconds")
    ratio = None if ratio is None else check_value(Ratio, ratio, "--ratio")
    check_device(device)
    if not isinstance(options, (dict, type(None))):
        raise ToolkitError(f"options must be a table of {{method: {{option: value}}}}, got {type(options).__name__}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ToolkitError(f"options given for method(s) not requested: {', '.join(unknown)}")
    twice = [name for i, name in enumerate(methods) if name in methods[:i]]
    if twice:
        raise ToolkitError(f"method {twice[0]} is named twice; each method makes its variants once")
    for name in methods:
        get_method(name, family)  # unknown method or unsupported family: one clear line
        if not isinstance(options.get(name, {}), dict):
            raise ToolkitError(f"options for {name} must be a table of option values, got {options[name]!r}")
        own = sorted(set(options.get(name, {})) & set(_SET_BY_COMPRESS)) if name == "auto" else []
        if own:
            raise ToolkitError(f"option {own[0]} of {name} is compress's own: give it as {_SET_BY_COMPRESS[own[0]]}")
        check_method_options(name, _method_options(name, options, ratio))
    if ratio is not None and not any({"ratio", "prune_ratios"} & set(METHODS.options(name)) for name in methods):
        raise unused_option("--ratio", "the prune methods and auto", methods)
    if budget_seconds is not None and "auto" not in methods:  # only auto's search has candidates to stop making
        raise unused_option("--budget-seconds", "auto", methods)
    return max_drop, ratio


def unused_option(flag: str, takers: str, methods) -> ToolkitError:
    """The refusal of `flag` where none of `methods` takes it (`takers` names those that do): accepted, it would
    do nothing. One wording for every such flag (--ratio, --budget-seconds, --serving-batch, --one-model)."""
    return ToolkitError(f"{flag} is an option of {takers}, which this run does not use (--method {' '.join(methods)})")


def compress_model(model, data, *, methods=None, max_drop: float = CompressOptions.max_drop, out=None,
                   overwrite: bool = False, options: dict | None = None, ratio: float | None = CompressOptions.ratio,
                   target: str | None = None, table=None, progress=None, tracker=None,
                   min_agreement: float = CompressOptions.min_agreement,
                   budget_seconds: float | None = CompressOptions.budget_seconds,
                   device: str = CompressOptions.device) -> CompressResult:
    """Compress a trained artifact into measured variants and choose one.

    `methods`, `max_drop`, `ratio`, `options`, `min_agreement`, `budget_seconds` and `device` are the fields of
    `CompressOptions`, whose defaults apply.

    Args:
        model: an artifact directory or a LoadedModel (fp32 PyTorch).
        data: a data spec (`digits`, a .npz/.csv path) or a DataBundle; its test split is used for measuring.
        methods: registered method names (`compress.list_methods()`), or one; "auto" tries the candidates for
            the family; a kind of compression ("quantize", "prune": `KINDS`) stands for its methods that the model
            can take.
        max_drop: accuracy budget, in percentage points below the original.
        out: run directory; with it, variants/<name>/ artifacts, config.json, env.json and result.json are written.
        options: per-method options, e.g. {"prune-structured": {"finetune_epochs": 5}, "auto": {"distill_epochs": 0}}.
        ratio: pruning ratio for the prune methods (and auto's structured pruning).
        min_agreement: share of the original's top-1 test predictions every variant must keep (less the
            one-sided 95% margin of the test split's size); with max_drop, the fidelity rule of every variant.
        budget_seconds: auto makes no further candidates when its search would run past this many seconds.
        device: where the variants will serve: "cpu", or "cuda" ("cuda:N"). Every variant is timed there and
            auto chooses the fastest there; the artifacts themselves are the same files either way.
        target, table: label column and `TableOptions` of a table; by default those recorded at training.
        progress: a callback receiving `trainers.progress.ProgressEvent`s: each method (each auto candidate)
            and each variant measured; True renders them on stderr, None or False: quiet (as in `train`).
        tracker: records the request, each variant's measurements and the chosen variant
            (`trainers.tracking.open_tracker`).
    """
    from trainers.fit import global_rng_kept
    from trainers.torchstate import standard_torch_mode
    from trainers.usermodel import modes_kept

    # the user's own module is given back in its train/eval mode, and a notebook's random streams as they were
    # (fine-tuning seeds them); fine-tuning and tracing run with gradients on, whatever the notebook set
    with modes_kept(model), global_rng_kept(), standard_torch_mode():
        return _compress_model(model, data, methods, max_drop, out, overwrite, options, ratio, target, table,
                               progress, tracker, min_agreement, budget_seconds, device)


def _compress_model(model, data, methods, max_drop, out, overwrite, options, ratio, target, table, progress, tracker,
                    min_agreement, budget_seconds, device) -> CompressResult:
    start = time.perf_counter()
    methods = as_items(methods) or list(CompressOptions().methods)  # one name is a list of one, not its letters
    options = dict(options or {})
    max_drop, ratio = check_request(expand_kinds(methods, options), None, max_drop, options, ratio, min_agreement,
                                    budget_seconds, device)
    model, data = _load(model, data, target, table)
    methods = expand_kinds(methods, options, model)
    check_request(methods, model, max_drop, options, ratio, min_agreement, budget_seconds, device)
    fidelity = {"min_agreement": min_agreement, "budget_seconds": budget_seconds, "start": start, "device": device}

    run = None
    if out is not None:
        from trainers.rundir import RunDir

        run = RunDir(out, kind="compress", overwrite=overwrite, inputs=[model.path, model.origin, data.source])
    try:
        with progress_target(progress) as target:
            result = _compress(model, data, methods, max_drop, options, ratio, target, **fidelity)
        result.seconds = time.perf_counter() - start
        if run is not None:
            _write(run, result, model, data, methods, max_drop, options, ratio)
    except BaseException:
        if run is not None:
            run.discard()
        raise
    if tracker is not None:
        _track(tracker, result, {"methods": methods, "max_drop": max_drop, "ratio": ratio, "options": options,
                                 "min_agreement": min_agreement, "budget_seconds": budget_seconds, "device": device})
    return result


def _track(tracker, result: CompressResult, request: dict) -> None:
    """The request, each variant's measurements, the chosen variant's name and its files (ONNX or weights)."""
    from trainers.tracking import compress_metrics

    tracker.log_params({"family": result.family, "data": result.data["name"], **request,
                        "chosen": result.chosen.name})
    tracker.log_metrics(compress_metrics(result.to_dict()))
    if result.out is not None:
        tracker.log_artifact(result.out / "result.json")
        chosen = result.paths.get(result.chosen.name)  # none when the original stayed the best
        tracker.log_artifact(result.out / chosen if chosen else Path(result.parent), f"chosen/{result.chosen.name}")


def _compress(model, data, methods, max_drop, options, ratio, progress, *, min_agreement, budget_seconds,
              start, device) -> CompressResult:
    variants: list[Variant] = []
    skipped: list[dict] = []
    not_made: list[dict] = []  # named methods that had nothing to make on this model
    notes: list[str] = []
    report = reporter(progress, "compress", len(methods))
    baseline = baseline_variant(model)
    settings = {**METHODS.options("auto"), **_method_options("auto", options, ratio)}  # auto's, as `auto` reads them
    config = LatencyConfig(budget_s=settings["latency_budget_s"], device=device)
    for step, name in enumerate(methods, 1):
        if name == "auto":  # its candidates are screened here, then measured with the other methods' variants
            steps = plan(model, device, **{**_method_options(name, options, ratio), "max_drop": max_drop,
                                   "min_agreement": min_agreement})
            made, missed, notes = search(model, data, steps, baseline, max_drop=max_drop, min_agreement=min_agreement,
                                         budget_seconds=budget_seconds, config=config, progress=progress, start=start,
                                         guard=options.get("auto", {}), explore_seconds=settings["explore_seconds"],
                                         batch=settings["serving_batch"], by_batch=settings["by_batch"])
            variants += made
            skipped += missed
        else:
            report(step, name)
            method_options = _method_options(name, options, ratio)
            try:
                variants += _named(name, model, data, method_options)
            except ToolkitError as exc:
                if len(methods) == 1:
                    raise
                # One of several named methods that finds nothing to make on this model (no layer to factorize,
                # no weight to store as int8) is listed with its reason; the others' variants are kept.
                not_made.append({"method": name, "options": method_options or None, "reason": str(exc)})
    if not variants and not_made:
        raise ToolkitError(not_made[0]["reason"])
    skipped += not_made
    variants = _unique(variants)
    for v in variants:  # the model says which variant it is, saved or not (explain's comparison names it so)
        v.model.spec.lineage["name"] = v.name
    chosen, reason = settle(model, data, variants, baseline, max_drop=max_drop, min_agreement=min_agreement,
                            config=config, notes=notes, progress=progress,
                            guard=options.get("auto", {}),   # named methods too: a drifted pick is passed over
                            batch=settings["serving_batch"] if "auto" in methods else 256,
                            by_batch="auto" in methods and settings["by_batch"])
    made_from = (model.spec.lineage or {}).get("recipe")
    if made_from:     # the drops and agreements below are against this model, not the one it was made from
        notes.append(f"the original here is itself a compressed model ({made_from.get('method', 'a recipe')}): "
                     f"accuracy drops and agreements are against it, and add to those of its own compression")
    small = small_test_split(len(data.y_test), max_drop, min_agreement)
    if small:
        notes.append(small)
        warn(small)
    if any("search budget" in s["reason"] for s in skipped):
        reason += f" (search ended at --budget-seconds {budget_seconds:g}: the best of the candidates made)"
    for v in [baseline, *variants]:
        v.measurements["chosen"] = v is chosen
    return CompressResult(parent=model.source,
                          family=model.spec.family, data=data.summary(), methods=list(methods), max_drop=max_drop,
                          baseline=baseline, variants=variants, chosen=chosen, reason=reason, skipped=skipped,
                          threads=baseline.measurements["threads"], device=device, min_agreement=min_agreement,
                          budget_seconds=budget_seconds, search_notes=notes)


def _named(name: str, model: LoadedModel, data: DataBundle, options: dict) -> list[Variant]:
    """A named method's variants. On a user's model a failure no check foresaw is one ToolkitError line, as auto
    lists it (`failed_on_user_model`): ORT's quantizer on a graph ORT itself runs was an "unexpected error"."""
    try:
        return get_method(name, model).func(model, data, **options)
    except (RuntimeError, TypeError, ValueError) as exc:
        reason = failed_on_user_model(model, exc)
        if reason is None:
            raise
        raise ToolkitError(f"compression method '{name}' {reason}") from None


def _unique(variants: list[Variant]) -> list[Variant]:
    """Keep names unique (the same method requested twice, or by auto and by name)."""
    seen: dict[str, int] = {}
    for v in variants:
        if v.name in seen:
            seen[v.name] += 1
            v.name = f"{v.name}-{seen[v.name]}"
        else:
            seen[v.name] = 1
    return variants


def _portable_copy(v: Variant, data) -> None:
    """A PyTorch variant of a user's own architecture is saved with an fp32 ONNX export beside its weights: the
    toolkit cannot rebuild the user's class, ONNX Runtime can run the graph (`trainers.load_model`)."""
    from .export import export_onnx

    # The legacy exporter first: on the test zoo's 2-layer GRU it took 0.4 s where the default (dynamo) exporter
    # took 44 s (a loaded 2-core machine); the copy only has to run, and its parity is not a measured figure.
    try:
        v.onnx_bytes = export_onnx(v.model, data, exporter="legacy")
    except ToolkitError:
        v.onnx_bytes = export_onnx(v.model, data)
    v.model.spec.onnx = {"file": "model.onnx", "precision": "float32", "opset": None, "role": "portable copy"}
    v.notes.append(f"saved as ONNX (fp32) beside the PyTorch weights, which need the model's own class "
                   f"({v.model.spec.config.get('class')}) to be rebuilt: trainers.load_model(dir, module=MyNet())")


def _write(run, result: CompressResult, model, data, methods, max_drop, options, ratio) -> None:
    from trainers.data import absolute_source
    from trainers.env import environment

    run.write_json("config.json", {"stage": "compress", "model": absolute_source(result.parent),
                                   "data": absolute_source(data.source) or data.name,
                                   "methods": methods, "max_drop": max_drop, "ratio": ratio, "options": options,
                                   "min_agreement": result.min_agreement, "budget_seconds": result.budget_seconds,
                                   "device": result.device})
    run.write_json("env.json", environment())
    for v in result.variants:
        rel = f"variants/{v.name}"
        directory = run.path / rel
        directory.mkdir(parents=True)
        m = v.measurements
        metrics = {"test_accuracy": m.get("accuracy"), "latency_ms": m.get("latency_ms"), "parity": m.get("parity"),
                   "recipe": v.recipe}
        if v.small is not None:  # the small-batch member first: the routed model.json records its checksum
            small = v.small  # its model is v.model.small (`auto._routed`)
            if small.onnx_bytes is None and small.model.spec.family == CUSTOM_FAMILY:
                _portable_copy(small, data)
            graph = small.onnx_bytes
            serve, small.model.spec = write_member(
                directory, small.model, v.model.spec.serve["below_batch"], metrics={"recipe": small.recipe},
                onnx_bytes=with_metadata(graph, small.model.spec) if graph else None,
                raw_onnx_bytes=raw_rows_onnx(graph, small.model.spec) if graph else None)
            v.model.spec = ModelSpec.from_dict({**v.model.spec.to_dict(), "serve": serve})
        if v.onnx_bytes is None and v.model.spec.family == CUSTOM_FAMILY:
            _portable_copy(v, data)
        onnx_bytes = with_metadata(v.onnx_bytes, v.model.spec) if v.onnx_bytes else None
        raw = raw_rows_onnx(v.onnx_bytes, v.model.spec) if v.onnx_bytes else None
        v.model.spec = write_artifact(directory, v.model.module, v.model.spec, metrics, onnx_bytes=onnx_bytes,
                                      raw_onnx_bytes=raw)
        result.paths[v.name] = rel
    result.out = run.final  # where the run goes: a kept original is recorded relative to it (`trainers.kept`)
    run.write_json("result.json", result.to_dict())
    result.out = run.commit()
    for v in result.variants:
        v.model.path = result.out / result.paths[v.name]
        if v.small is not None:
            v.model.small.path = v.model.path / SMALL_BATCH_DIR
