"""`explain_model`: the explain stage, from a model (and variants) to result.json and figures."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainers.data import align_classes
from trainers.errors import ToolkitError
from trainers.options import Seed, as_items, check_value
from trainers.progress import progress_target, reporter
from trainers.schema import ExplainResultFile

from .methods import resolve
from .options import Checks, ExplainOptions, Samples
from .registry import default_methods, get_method

QUALITY_SAMPLES = 16      # sanity check and noise floor re-run the method on this many samples
NEAR_CHANCE_SKILL = 0.1   # accuracy less than this share of the way from chance to 1: the model learned ~nothing
BACKGROUND_SAMPLES = 32   # training samples for the methods that declare needs_background


@dataclass(repr=False)
class ExplainResult:
    """What `explain_model` returns; `summary` is what it writes as `result.json` (trainers.schema.ExplainResultFile)."""

    summary: dict
    attributions: dict = field(default_factory=dict)   # {(model name, method): Attribution}
    out: Path | None = None

    # the repr's names are attributes (`result.n_flags`), read from the summary that result.json records
    @property
    def family(self) -> str | None:
        return self.summary.get("family")

    @property
    def methods(self) -> list[str] | None:
        return self.summary.get("methods")

    @property
    def samples(self) -> int | None:
        return self.summary.get("samples")

    @property
    def n_compared(self) -> int:
        """How many variants were compared with the original."""
        return len(self.summary.get("runtimes", {})) - 1

    @property
    def n_flags(self) -> int:
        return len(self.summary.get("flags", []))

    def __repr__(self) -> str:
        from trainers.display import short_repr

        return short_repr("ExplainResult", family=self.family, methods=self.methods, samples=self.samples,
                          n_compared=self.n_compared, n_flags=self.n_flags,
                          out=str(self.out) if self.out else None)

    def to_frame(self, table: str = "importance"):
        """A table as a pandas DataFrame. `importance`: one row per input element (feature, time step or pixel),
        columns `element` and one per method; `drift`: one row per (variant, method), columns
        `explain.views.DRIFT_COLUMNS`."""
        from . import views

        return views.to_frame(self.summary, table)

    @property
    def figures(self) -> dict:
        """{caption: matplotlib Figure}: global importance per method and, with variants, the drift chart."""
        from . import views

        return views.figures(self.summary)

    def _repr_html_(self) -> str:
        from . import views

        return views.html(repr(self), self.summary)

    def to_dict(self) -> dict:
        return self.summary


def _pick_samples(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n test indices, seeded, interleaving classes so that every class appears early."""
    order = np.random.default_rng(seed).permutation(len(y))
    rank = np.zeros(len(y), int)
    seen: dict = {}
    for i in order:
        rank[i] = seen.get(y[i], 0)
        seen[y[i]] = rank[i] + 1
    chosen = sorted(order, key=lambda i: rank[i])[:n]
    return np.asarray(chosen, int)


def _load(item, name: str, data=None):
    from trainers.usermodel import as_model

    if hasattr(item, "spec"):
        return item
    return as_model(_artifact_of(item) or _chosen_of(item) or item, data)


def _chosen_of(item):
    """The variant a compress or pipeline run directory chose (as `toolkit predict` reads a run), or None for
    anything else: `--compare runs/cnn-compressed` compares whatever auto chose, whose name the user cannot
    know before the run."""
    if not isinstance(item, (str, Path)) or not Path(item).is_dir() or (Path(item) / "model.json").is_file():
        return None
    from trainers.inference import resolve_artifact

    return resolve_artifact(item)


def _artifact_of(item):
    """The artifact directory whose ONNX file `item` is (`variants/NAME/model.onnx`), or None: read as its
    directory, a variant keeps its lineage, so the comparison knows what it was compressed from."""
    if not isinstance(item, (str, Path)):
        return None
    from trainers.artifact import artifact_of_onnx

    return artifact_of_onnx(item)


def _is_user_model(item) -> bool:
    """A module or an ONNX graph (not a LoadedModel nor an artifact directory): its example input needs the data."""
    return not hasattr(item, "spec") and not (isinstance(item, (str, Path)) and Path(item).is_dir())


def _unwrapped(item) -> tuple:
    """(model, its name) of a `compress.Variant` from a `compress_model` result; (item, None) for anything else."""
    from compress import Variant

    return (item.model, item.name) if isinstance(item, Variant) else (item, None)


def _name(item, fallback: str) -> str:
    """A compared model's name: its folder's or file's name; an in-memory variant's name in its lineage (as
    `compress_model` named it); a module's class name; else `fallback`."""
    if hasattr(item, "spec"):
        if getattr(item, "path", None):
            return Path(item.path).name
        return (item.spec.lineage or {}).get("name") or fallback
    if not isinstance(item, (str, Path)):
        return type(item).__name__ if hasattr(item, "forward") else fallback     # a module, never its repr
    folder = _artifact_of(item) or _chosen_of(item)
    return (Path(folder) if folder else Path(str(item))).name or fallback


def _unique(name: str, taken) -> str:
    """`name`, or `name-2`, `name-3`, ... when another compared model has it (two runs' `onnx-fp32`)."""
    if name not in taken and name != "original":
        return name
    k = 2
    while f"{name}-{k}" in taken:
        k += 1
    return f"{name}-{k}"


def check_samples(samples) -> int:
    """The number of samples to explain, within `ExplainOptions`' bounds; else one ToolkitError line."""
    return check_value(Samples, samples, "--samples")


def checked(assess, checks: str, *args, **kwargs) -> dict:
    """`assess` with the checks `checks` asks for; each one skipped says so in the verdicts (its figures are null)."""
    quality = assess(*args, sanity=checks == "all", fidelity=checks != "none", **kwargs)
    if checks != "all":
        quality["verdicts"].append(f"sanity check not run (checks={checks})")
    if checks == "none":
        quality["verdicts"].append("deletion/insertion, infidelity and faithfulness not run (checks=none)")
    return quality


def explain_model(model, data, *, methods=ExplainOptions.methods, compare=(), samples: int = ExplainOptions.samples,
                  out=None, overwrite: bool = False, seed: int = ExplainOptions.seed, progress=None,
                  table=None, tracker=None, checks: str = ExplainOptions.checks) -> ExplainResult:
    """Explain `model` on `samples` test samples with `methods`, assess the explanations, and compare variants.

    `methods`, `samples`, `seed` and `checks` are the fields of `ExplainOptions`, whose defaults apply.

    Args:
        model: an artifact path, a `LoadedModel`, a `torch.nn.Module` or an `.onnx` file or its bytes
            (`trainers.as_model`).
        data: a data spec (built-in name or file) or a `DataBundle`.
        methods: registered method names, or one name (default: `default_methods(family)`).
        compare: compressed variants (paths, `LoadedModel`s or `compress.Variant`s), or one, to compare with the
            original, each named as its variant (its folder, or the name `compress_model` gave it).
        samples: number of test samples to explain (at least 1).
        checks: "all" quality checks, "fast" (no sanity check) or "none" (nor deletion/insertion, infidelity,
            faithfulness); what did not run is null in the result, with a "not run" verdict.
        out: run directory to write (config.json, env.json, result.json, figures/); None writes nothing.
        table: `trainers.tables.TableOptions` for a table; by default the target and columns recorded at training.
        tracker: records the request, each method's quality figures and drift (`trainers.tracking.open_tracker`).
        progress: a callback receiving a `trainers.progress.ProgressEvent` per method on each model; True renders
            them on stderr, None or False: quiet (as in `train`).

    Raises:
        ToolkitError: unknown or unsupported method, samples < 1, a variant with other inputs or classes.
    """
    from trainers.fit import global_rng_kept
    from trainers.torchstate import standard_torch_mode
    from trainers.usermodel import grads_kept, modes_kept

    # a user's modules are given back in their train/eval mode with their gradients, and a notebook's random
    # streams as they were (as compress_model does: no draw a method or check makes reaches them)
    compare = as_items(compare)  # one variant, a path among them, is a list of one (not of its characters)
    with modes_kept(model, *compare), grads_kept(model, *compare), global_rng_kept(), standard_torch_mode():
        return _explain(model, data, methods, compare, samples, out, overwrite, seed, progress, table, tracker, checks)


def _explain(model, data, methods, compare, samples, out, overwrite, seed, progress, table, tracker,
             checks) -> ExplainResult:
    from trainers import RunDir, accuracy, environment
    from trainers.tables import load_for_model

    start = time.perf_counter()
    check_samples(samples)
    seed = check_value(Seed, seed, "--seed")
    checks = check_value(Checks, checks, "--checks")
    if _is_user_model(model) and not hasattr(data, "x_test"):
        from trainers.data import load_data

        data = load_data(data, seed=seed, **({"table": table} if table is not None else {}))
    original = _load(model, "original", data if _is_user_model(model) else None)
    methods = as_items(methods) or default_methods(original)
    for method in methods:
        resolve(method, original)                       # unknown or unsupported: refuse before any work
    variants = []
    for i, item in enumerate(compare or ()):
        item, given = _unwrapped(item)
        variant = _load(item, f"variant{i}", data if _is_user_model(item) else None)
        name = _unique(given or _name(item, f"variant{i}"), {n for n, _ in variants})
        from .compare import check_comparable

        check_comparable(original, variant, name)
        for method in methods:
            resolve(method, variant)
        variants.append((name, variant))
    bundle = load_for_model(data, original.spec, table=table, seed=seed)
    if list(bundle.input_shape) != list(original.spec.input_shape):
        raise ToolkitError(f"data inputs {tuple(bundle.input_shape)} do not match the model's "
                           f"{tuple(original.spec.input_shape)}")
    if bundle.num_classes > original.spec.num_classes:
        raise ToolkitError(f"data '{bundle.name}' has {bundle.num_classes} classes, "
                           f"the model predicts {original.spec.num_classes}")
    bundle = align_classes(bundle, original.spec.class_names)
    inputs = [original.path, original.origin, bundle.source, *(v.path for _, v in variants)]
    run = RunDir(out, kind="explain", overwrite=overwrite, inputs=inputs) if out is not None else None
    try:
        with progress_target(progress) as target:
            report = reporter(target, "explain", len(methods) * (1 + len(variants)))
            result = _run(original, variants, bundle, methods, int(samples), seed, report, run, accuracy, checks)
        result.summary = ExplainResultFile.model_validate(
            {**result.summary, "seconds": round(time.perf_counter() - start, 2)}).dump()
        if run is not None:
            from trainers.data import absolute_source

            run.write_json("config.json", {"stage": "explain", "model": absolute_source(_describe(original)),
                                           "data": absolute_source(bundle.source) or bundle.name, "methods": methods,
                                           "compare": [absolute_source(str(v.path)) if v.path is not None else n
                                                       for n, v in variants],
                                           "samples": int(samples), "seed": seed, "checks": checks})
            run.write_json("env.json", environment())
            run.write_json("result.json", result.summary)
            result.out = run.commit()
    except BaseException:
        if run is not None:
            run.discard()
        raise
    if tracker is not None:
        _track(tracker, result, {"methods": methods, "compare": [n for n, _ in variants], "samples": int(samples),
                                 "seed": seed, "checks": checks})
    return result


def _track(tracker, result: ExplainResult, request: dict) -> None:
    from trainers.tracking import explain_metrics

    tracker.log_params({"family": result.summary["family"], "data": result.summary["data"]["name"], **request})
    tracker.log_metrics(explain_metrics(result.summary))
    if result.out is not None:
        tracker.log_artifact(result.out / "result.json")
        tracker.log_artifact(result.out / "figures", "figures")


def _describe(model) -> str:
    """The model's source as lineage records it (`LoadedModel.source`), or the path it was given as."""
    return model.source if hasattr(model, "source") else str(model)


def _run(original, variants, bundle, methods, samples, seed, report, run, accuracy, checks="all") -> ExplainResult:
    from . import plots
    from .compare import drift_row, relation
    from .methods import attribute, baseline_for
    from .quality import assess

    spec = original.spec
    idx = _pick_samples(bundle.y_test, min(samples, len(bundle.y_test)), seed)
    x, y = bundle.x_test[idx], bundle.y_test[idx]
    rng = np.random.default_rng(seed)
    background = bundle.x_train[rng.choice(len(bundle.x_train), min(BACKGROUND_SAMPLES, len(bundle.x_train)), replace=False)]
    fig_dir = run.path / "figures" if run is not None else None
    summary: dict = {"model": _describe(original), "family": spec.family,
                     "layout": spec.layout, "input_shape": list(spec.input_shape), "data": bundle.summary(),
                     "samples": int(len(idx)), "seed": seed, "methods": methods,
                     "runtimes": {"original": spec.runtime, **{n: v.spec.runtime for n, v in variants}},
                     "runs": [], "global_importance": {}, "global_importance_encoded": None, "quality": {}, "drift": {"rows": [], "flags": []},
                     "flags": [], "figures": {}, "relations": {}}
    attributions: dict = {}
    # a user's model records no training mean of its own: the data's training rows give it
    reference, reference_name = baseline_for(spec, bundle.x_train)

    ran_before: dict = {}    # method that ran -> its attribution of the original

    def original_attr(method):
        """The original's attribution for `method`; requests routed to a method that already ran (three gradient
        methods on an ONNX graph all run shapley, with no options passed on) share its one run."""
        if ("original", method) not in attributions:
            ran, _, note = resolve(method, original)
            if ran in ran_before:
                attr = dataclasses.replace(ran_before[ran], requested=method, routed=note)
            else:
                attr = attribute(original, x, None, method, background=background, seed=seed, baseline=reference,
                                 baseline_name=reference_name)
            attributions[("original", method)] = ran_before[ran] = attr
        return attributions[("original", method)]

    routed_quality: dict = {}

    def floors(method, attr):
        """The quality checks of a method a variant was routed to (an ONNX graph has no gradients), run on the
        original for its noise floor: without it the drift threshold would assume a deterministic method's."""
        if method not in routed_quality:
            routed_quality[method] = checked(assess, checks, original, x, attr, seed=seed,
                                             repeat_samples=QUALITY_SAMPLES, background=background, baseline=reference)
        return routed_quality[method]

    acc_original = accuracy(original, bundle.x_test, bundle.y_test)
    chance = chance_note(acc_original, bundle.y_test)
    if chance:
        summary["flags"].append(chance)
    step = 0
    for method in methods:
        step += 1
        report(step, f"{method} on the original ({len(x)} samples, with quality checks)")
        attr = original_attr(method)
        summary["runs"].append({"model": "original", **attr.summary(), "baseline": _baseline_name(attr),
                                "target": "predicted class"})
        # importance, quality and figures are the method's that ran (a routed request's under its replacement),
        # once however many requests it answers; `runs` says which request ran what
        ran = attr.method
        if ran in summary["quality"]:
            continue
        summary["global_importance"][ran] = plots.global_importance(spec, attr.values)
        if spec.preprocessing.get("table"):  # the view of the encoded inputs stays available
            encoded = summary["global_importance_encoded"] or {}
            encoded[ran] = plots.global_importance(spec, attr.values, grouped=False,
                                                   whole_columns=get_method(ran).whole_columns)
            summary["global_importance_encoded"] = encoded
        quality = checked(assess, checks, original, x, attr, seed=seed, repeat_samples=QUALITY_SAMPLES,
                          background=background, baseline=reference)
        if chance:   # no check above reads the accuracy: a map of a model that learned nothing can pass them all
            quality["verdicts"].append(chance)
        summary["quality"][ran] = quality
        if quality["flagged"]:
            summary["flags"].append(f"{ran}: " + "; ".join(v for v in quality["verdicts"] if "FAIL" in v))
        if fig_dir is not None:
            summary["figures"].update(plots.views(spec, x, y, attr.values, ran, fig_dir, targets=attr.targets))

    from trainers.artifact import predict

    for name, variant in variants:
        kind, why = relation(original, variant)
        summary["relations"][name] = {"relation": kind, "reason": why}
        if kind == "unrelated":
            summary["drift"]["flags"].append(f"{name}: no lineage links it to the original ({why}); its drift may "
                                             "compare two separately trained models, not a compression")
        acc = accuracy(variant, bundle.x_test, bundle.y_test)
        changed = None
        for method in methods:
            step += 1
            report(step, f"{method} on {name}")
            targets = attributions[("original", method)].targets
            if changed is None:
                changed = float((predict(variant, x).argmax(1) != targets).mean())
            # the original's reference input for both: attributions from two baselines are not comparable
            var_attr = attribute(variant, x, targets, method, background=background, seed=seed,
                                 baseline=reference, baseline_name=reference_name)
            attributions[(name, method)] = var_attr
            summary["runs"].append({"model": name, **var_attr.summary(), "baseline": _baseline_name(var_attr),
                                "target": "predicted class"})
            if any(r["variant"] == name and r["ran"] == var_attr.method for r in summary["drift"]["rows"]):
                continue                                # several requests routed to the same method: one row
            base = original_attr(var_attr.method)
            ref = summary["quality"].get(var_attr.method) or floors(var_attr.method, base)
            row = drift_row(name, base, var_attr, accuracy=acc, original_accuracy=acc_original,
                            noise_floor_topk=ref.get("noise_floor_topk"), random_floor_topk=ref.get("randomization_topk"),
                            noise_floor_cosine=ref.get("noise_floor_cosine"), changed_predictions=changed,
                            seed=seed, feature_names=plots.element_names(spec))
            row["relation"] = summary["relations"][name]["relation"]
            summary["drift"]["rows"].append(row)
            if row["flag"]:
                summary["drift"]["flags"].append(f"{name} ({row['ran']}): {row['verdict']}")
    summary["flags"] += summary["drift"]["flags"]
    if fig_dir is not None and summary["drift"]["rows"]:
        summary["figures"]["drift: top-k overlap vs floors"] = "figures/" + plots.save(
            plots.drift_chart(summary["drift"]["rows"]), fig_dir / "drift.png")
    return ExplainResult(_clean(summary), attributions)


def chance_note(acc: float, y_test) -> str | None:
    """A sentence when the test accuracy is near chance (the share of the most frequent test class): less than
    `NEAR_CHANCE_SKILL` of the way from there to 1. Its explanations describe a model that learned nothing, and
    the sanity check cannot say so (a CNN trained on shuffled digit labels, accuracy 0.100, looks like a
    re-initialised one, as any model may); None otherwise."""
    y = np.asarray(y_test)
    if not len(y) or not np.isfinite(acc):
        return None
    chance = float(np.bincount(y.astype(np.int64)).max() / len(y))
    if chance >= 1 or (acc - chance) / (1 - chance) >= NEAR_CHANCE_SKILL:
        return None
    return (f"the model's test accuracy {acc:.3f} is near chance ({chance:.3f}, always the most frequent class): "
            "its explanations describe a model that learned nothing")


def _baseline_name(attr) -> str:
    """The baseline as result.json names it: the background of training rows, or what `attribute` used."""
    return f"{BACKGROUND_SAMPLES} training samples" if get_method(attr.method).needs_background else attr.baseline_name


def _clean(obj):
    """JSON-safe: numpy scalars to Python numbers, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return round(value, 6) if np.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


__all__ = ["ExplainResult", "check_samples", "explain_model"]
