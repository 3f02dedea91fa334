"""The compress stage: load, validate, make the requested variants, measure, choose, save.

`compress_model` is what `toolkit compress` calls; with `out` it writes a run
directory (see docs/results.md) through `trainers.RunDir`, so a failed run
leaves nothing half-written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trainers.artifact import LoadedModel, load_model, write_artifact
from trainers.data import DataBundle, check_inputs, load_data
from trainers.errors import ToolkitError
from trainers.options import Ratio, check_value

from .auto import baseline_variant, build_candidates, choose, plan
from .base import METHODS, Variant, check_method_options, check_source, get_method
from .options import AccuracyPoints, CompressOptions
from .measure import LatencyConfig, measure_all

ROW_KEYS = ("accuracy", "accuracy_drop", "size_bytes", "size_ratio", "parameters", "latency_ms", "speedup",
            "slower_than_fp32", "flips", "within_budget", "pareto")


@dataclass
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
    threads: dict = field(default_factory=dict)
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
            agreement_check=m.get("agreement_check"), notes=list(v.notes))

    def to_dict(self) -> dict:
        """The `result.json` object, built through its schema (trainers.schema.CompressResultFile)."""
        from trainers.schema import Chosen, CompressResultFile

        chosen_path = self.parent if self.chosen is self.baseline else self.paths.get(self.chosen.name)
        return CompressResultFile(
            parent=self.parent, family=self.family, data=self.data, methods=self.methods, max_drop=self.max_drop,
            threads=self.threads, baseline=self.row(self.baseline),
            variants=[self.row(v) for v in [self.baseline, *self.variants]],
            chosen=Chosen(name=self.chosen.name, path=chosen_path, reason=self.reason),
            skipped=self.skipped, seconds=round(self.seconds, 2),
        ).dump()


def _dtype(v: Variant) -> str:
    if v.model.spec.runtime == "onnxruntime":
        return (v.model.spec.onnx or {}).get("precision", "float32")
    return v.model.spec.dtype


def _load(model, data, target) -> tuple[LoadedModel, DataBundle]:
    if not isinstance(model, LoadedModel):
        model = load_model(model)
    check_source(model, "compress")
    if not isinstance(data, DataBundle):
        data = load_data(data, target=target)
    check_inputs(data.x_test, tuple(model.spec.input_shape), f"data '{data.name}'")
    if data.num_classes != model.spec.num_classes:
        raise ToolkitError(f"data '{data.name}' has {data.num_classes} classes, the model predicts {model.spec.num_classes}")
    return model, data


# Options of a method that compress_model sets itself, from its own arguments.
_SET_BY_COMPRESS = {"max_drop": "max_drop (--max-drop)", "progress": "progress"}


def _method_options(name: str, options: dict, ratio: float | None) -> dict:
    """The options `name` runs with: those given for it, and the pruning `ratio` where it takes one."""
    opts = dict(options.get(name, {}))
    takes = METHODS.options(name)
    if ratio is not None and "ratio" in takes:
        opts.setdefault("ratio", ratio)
    elif ratio is not None and "prune_ratios" in takes:
        opts.setdefault("prune_ratios", [ratio])
    return opts


def check_request(methods, family: str | None, max_drop, options: dict | None = None, ratio=None):
    """Refuse a bad request before any work: a bad budget or ratio, an unknown method, one the family cannot take,
    options for a method not requested, and every method's options against its signature (names, types, ranges).
    `family=None` skips the family check. Returns (max_drop, ratio)."""
    from . import register_builtin_methods

    register_builtin_methods()
    max_drop = check_value(AccuracyPoints, max_drop, "--max-drop")
    ratio = None if ratio is None else check_value(Ratio, ratio, "--ratio")
    if not isinstance(options, (dict, type(None))):
        raise ToolkitError(f"options must be a table of {{method: {{option: value}}}}, got {type(options).__name__}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise ToolkitError(f"options given for method(s) not requested: {', '.join(unknown)}")
    for name in methods:
        get_method(name, family)  # unknown method or unsupported family: one clear line
        if not isinstance(options.get(name, {}), dict):
            raise ToolkitError(f"options for {name} must be a table of option values, got {options[name]!r}")
        own = sorted(set(options.get(name, {})) & set(_SET_BY_COMPRESS))
        if own:
            raise ToolkitError(f"option {own[0]} of {name} is compress's own: give it as {_SET_BY_COMPRESS[own[0]]}")
        check_method_options(name, _method_options(name, options, ratio))
    return max_drop, ratio


def compress_model(model, data, *, methods=None, max_drop: float = CompressOptions.max_drop, out=None,
                   overwrite: bool = False, options: dict | None = None, ratio: float | None = CompressOptions.ratio,
                   target: str | None = None, progress=None) -> CompressResult:
    """Compress a trained artifact into measured variants and choose one.

    `methods`, `max_drop`, `ratio` and `options` are the fields of `CompressOptions`, whose defaults apply.

    Args:
        model: an artifact directory or a LoadedModel (fp32 PyTorch).
        data: a data spec (`digits`, a .npz/.csv path) or a DataBundle; its test split is used for measuring.
        methods: registered method names (`compress.list_methods()`); "auto" tries the candidates for the family.
        max_drop: accuracy budget, in percentage points below the original.
        out: run directory; with it, variants/<name>/ artifacts, config.json, env.json and result.json are written.
        options: per-method options, e.g. {"prune-structured": {"finetune_epochs": 5}, "auto": {"distill_epochs": 0}}.
        ratio: pruning ratio for the prune methods (and auto's structured pruning).
        progress: callable taking a message (e.g. print to stderr).
    """
    start = time.perf_counter()
    methods = list(methods or CompressOptions().methods)
    options = dict(options or {})
    max_drop, ratio = check_request(methods, None, max_drop, options, ratio)
    model, data = _load(model, data, target)
    check_request(methods, model.spec.family, max_drop, options, ratio)

    run = None
    if out is not None:
        from trainers.rundir import RunDir

        run = RunDir(out, kind="compress", overwrite=overwrite, inputs=[model.path, data.source])
    try:
        result = _compress(model, data, methods, max_drop, options, ratio, progress)
        result.seconds = time.perf_counter() - start
        if run is not None:
            _write(run, result, model, data, methods, max_drop, options, ratio)
    except BaseException:
        if run is not None:
            run.discard()
        raise
    return result


def _compress(model, data, methods, max_drop, options, ratio, progress) -> CompressResult:
    variants: list[Variant] = []
    skipped: list[dict] = []
    for name in methods:
        if name == "auto":  # its candidates are measured below, with the other methods' variants
            steps = plan(model.spec.family, **_method_options(name, options, ratio))
            made, missed = build_candidates(model, data, steps, progress)
            variants += made
            skipped += missed
        else:
            if progress:
                progress(f"{name}")
            variants += get_method(name, model.spec.family).func(model, data, **_method_options(name, options, ratio))
    variants = _unique(variants)
    baseline = baseline_variant(model)
    budget = options.get("auto", {}).get("latency_budget_s", METHODS.options("auto")["latency_budget_s"])
    measure_all(variants, baseline, data, max_drop, LatencyConfig(budget_s=budget), progress)
    chosen, reason = choose(baseline, variants, max_drop)
    for v in [baseline, *variants]:
        v.measurements["chosen"] = v is chosen
    return CompressResult(parent=model.source,
                          family=model.spec.family, data=data.summary(), methods=list(methods), max_drop=max_drop,
                          baseline=baseline, variants=variants, chosen=chosen, reason=reason, skipped=skipped,
                          threads=baseline.measurements["threads"])


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


def _write(run, result: CompressResult, model, data, methods, max_drop, options, ratio) -> None:
    from trainers.env import environment

    run.write_json("config.json", {"stage": "compress", "model": result.parent, "data": data.source or data.name,
                                   "methods": methods, "max_drop": max_drop, "ratio": ratio, "options": options})
    run.write_json("env.json", environment())
    for v in result.variants:
        rel = f"variants/{v.name}"
        directory = run.path / rel
        directory.mkdir(parents=True)
        m = v.measurements
        metrics = {"test_accuracy": m.get("accuracy"), "latency_ms": m.get("latency_ms"), "parity": m.get("parity"),
                   "recipe": v.recipe}
        v.model.spec = write_artifact(directory, v.model.module, v.model.spec, metrics, onnx_bytes=v.onnx_bytes)
        result.paths[v.name] = rel
    run.write_json("result.json", result.to_dict())
    result.out = run.commit()
    for v in result.variants:
        v.model.path = result.out / result.paths[v.name]
