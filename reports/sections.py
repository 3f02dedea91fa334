"""Turn a `Run` into report sections: plain numbers (for report.json) and figures (PNG bytes).

Every builder returns None when its stage did not run. Results are typed (trainers.schema), so a section
reads fields by name; only config.json, env.json and model.json are read as plain JSON.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from trainers.schema import DriftRow, ExplainResultFile, VariantRow

from . import figures
from .collect import Run, image_file, number

MAX_FIGURE_BYTES = 2_000_000

# ---------------------------------------------------------------- overview


def _cli_data(source) -> str | None:
    if not isinstance(source, str) or not source:
        return None
    return source.split(":", 1)[1] if source.startswith("builtin:") else source


def _rerun_dir(run: Run) -> str:
    """A new folder beside the run (absolute), so the command runs again without touching this one."""
    root = Path(run.root).resolve()
    return str(root.with_name(root.name + "-rerun"))


def reproduce_command(run: Run) -> str | None:
    """The command line that reproduces the run, built from the saved config.json: absolute paths (as the
    stage recorded them) and a new output folder beside this one, so it runs from any directory."""
    config = run.pipeline_config
    if isinstance(config.get("data"), str) and isinstance(config.get("family"), str):
        # Built here, not read from the record: the run's config.yaml is where the run is now (in <out>.partial
        # for an interrupted run), and the command writes a new folder.
        root = Path(run.root).resolve()
        return shlex.join(["toolkit", "pipeline", config["data"], "--model", config["family"],
                           "--config", str(root / "config.yaml"), "--out", _rerun_dir(run)])
    if isinstance(config.get("command"), str):
        return config["command"]
    if run.is_pipeline:
        return None
    for stage in ("compress", "explain"):
        if run.configs.get(stage):
            return _stage_command(run, stage)
    cfg = run.configs.get("train")
    if not cfg:
        return None
    data = _cli_data(cfg.get("data")) or (run.data.name if run.data else None)
    if not data or not cfg.get("family"):
        return None
    parts = ["toolkit", "train", data, "--model", str(cfg["family"])]
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("lr", "--lr"), ("seed", "--seed"),
                      ("device", "--device"), ("target", "--target"), ("select", "--select")):
        if cfg.get(key) is not None:
            parts += [flag, str(cfg[key])]
    if isinstance(cfg.get("refit"), bool):            # as it was settled, so the run does the same
        parts.append("--refit" if cfg["refit"] else "--no-refit")
    if cfg.get("amp") is True:
        parts.append("--amp")
    if cfg.get("model"):
        parts += ["--arch", json.dumps(cfg["model"], separators=(",", ":"))]
    read = ((run.model_json.get("preprocessing") or {}).get("table") or {}).get("read") or {}
    for key, flag in (("keep", "--keep"), ("drop", "--drop")):     # the table's columns, as the user named them
        for column in read.get(key) or () if isinstance(read.get(key), list) else ():
            parts += [flag, str(column)]
    if isinstance(read.get("sep"), str):
        parts += ["--sep", read["sep"]]
    parts += ["--out", _rerun_dir(run)]
    return shlex.join(parts)


def _stage_command(run: Run, stage: str) -> str | None:
    """`toolkit compress|explain MODEL --data DATA ...` from that stage's config.json (docs/results.md)."""
    cfg = run.configs[stage]
    data = _cli_data(cfg.get("data")) or (run.data.name if run.data else None)
    if not isinstance(cfg.get("model"), str) or not data:
        return None
    parts = ["toolkit", stage, cfg["model"], "--data", str(data)]
    for method in cfg.get("methods") or []:
        parts += ["--method", str(method)]
    if stage == "compress":
        for key, flag in (("max_drop", "--max-drop"), ("ratio", "--ratio"), ("min_agreement", "--min-agreement"),
                          ("budget_seconds", "--budget-seconds")):
            if number(cfg.get(key)) is not None:
                parts += [flag, f"{cfg[key]:g}"]
        if isinstance(cfg.get("options"), dict) and cfg["options"]:
            parts += ["--options", json.dumps(cfg["options"], separators=(",", ":"))]
        if isinstance(cfg.get("device"), str) and cfg["device"] != "cpu":
            parts += ["--device", cfg["device"]]
    if stage == "explain":
        for variant in cfg.get("compare") or []:
            parts += ["--compare", str(variant)]
        if cfg.get("samples") is not None:
            parts += ["--samples", str(cfg["samples"])]
        if cfg.get("seed") is not None:
            parts += ["--seed", str(cfg["seed"])]
        if cfg.get("checks") not in (None, "all"):    # the checks it ran, so a rerun costs what the run did
            parts += ["--checks", str(cfg["checks"])]
    parts += ["--out", _rerun_dir(run)]
    return shlex.join(parts)


def overview(run: Run) -> dict:
    data = run.data
    seconds = {stage: r.seconds for stage, r in run.results.items()}
    stages = [_rendered(_unfinished(s.dump())) for s in run.pipeline.stages] if run.pipeline else []
    for s in stages:
        if s["status"] == "done" and s["name"] in ("train", "compress", "explain") and s["name"] not in run.results:
            s["status"], s["reason"] = "result missing", (f"{s['name']}/result.json is not in the run directory "
                                                          "(removed or moved since): its section is left out")
        if s["seconds"] is not None:
            seconds.setdefault(s["name"], s["seconds"])
    total = (run.pipeline.seconds if run.pipeline else None) or sum(seconds.values()) or None
    versions = run.env.get("versions") or run.model_json.get("versions") or {}
    rows = [
        ("data set", data.name if data else run.pipeline.data if run.pipeline else run.pipeline_config.get("data")),
        ("source", data.source if data else None),
        ("input shape", " x ".join(map(str, data.input_shape)) if data else None),
        ("classes", data.num_classes if data else None),
        ("samples (train / validation / test)", f"{data.n_train} / {data.n_val} / {data.n_test}" if data else None),
        ("model family", run.family or run.model_json.get("family") or run.pipeline_config.get("family")),
        ("warning", run.replaced),
        ("device", run.train.device if run.train else run.env.get("device")),
        ("platform", run.env.get("platform")),
        ("python", run.env.get("python")),
        ("CPU cores", run.env.get("cpu_count")),
        ("GPUs", ", ".join(map(str, run.env["gpus"])) if run.env.get("gpus") else None),
        ("stages run", ", ".join(run.results) or "none"),
        ("run status", _run_status(run)),
        ("time taken", f"{total:.1f} s" if number(total) else None),
    ]
    return {
        "rows": [(k, v) for k, v in rows if v not in (None, "")],
        "stage_seconds": {k: v for k, v in seconds.items() if number(v) is not None},
        "versions": [(k, v) for k, v in versions.items() if v],
        "command": reproduce_command(run),
        "stages": stages,
    }


def _unfinished(stage: dict) -> dict:
    """A stage a stopped run left `running` or `pending` (pipeline.json is written before each stage)."""
    if stage["status"] == "running":
        return {**stage, "status": "unfinished", "reason": "the run stopped during this stage (or is still running)"}
    if stage["status"] == "pending":
        return {**stage, "status": "not run", "reason": "the run stopped before this stage"}
    return stage


# What pipeline.json says of a report stage that started and did not finish (a Ctrl-C or an error while rendering)
REPORT_UNFINISHED = ("unfinished", "interrupted", "failed")


def _rendered(stage: dict) -> dict:
    """The report stage as this page shows it: done, whatever pipeline.json says of an earlier try, since the page
    being read is the report (rendered again by `toolkit report`)."""
    if stage["name"] == "report" and stage["status"] in REPORT_UNFINISHED:
        return {**stage, "status": "done", "seconds": None,
                "reason": f"rendered by `toolkit report`; the pipeline's own rendering was {stage['status']}"}
    return stage


def stage_errors(run: Run) -> list:
    """The pipeline's stage errors, without the report's: a page rendered since shows that error is past."""
    return [e for e in (run.pipeline.errors if run.pipeline else []) if e.stage != "report"]


def _run_status(run: Run) -> str | None:
    """Only for a pipeline that did not finish: what happened, in words."""
    state = getattr(run.pipeline, "status", None)
    stopped = [s.name for s in run.pipeline.stages if s.status in ("running", "interrupted")] if run.pipeline else []
    if state == "running":
        return f"unfinished: stopped during {', '.join(stopped) or 'a stage'} (killed, or still running)"
    if state == "interrupted":
        how = next((s.reason for s in run.pipeline.stages if s.status == "interrupted" and s.reason), "Ctrl-C")
        return f"interrupted ({how}) during {', '.join(stopped) or 'a stage'}"
    return None


# ---------------------------------------------------------------- training


def training(run: Run) -> dict | None:
    result = run.train
    if result is None:
        return None
    m = result.metrics
    class_names = [str(c) for c in run.model_json.get("class_names") or [r.class_name for r in m.test_per_class]]
    scores = [("train", m.train_accuracy, m.train_loss), ("val", m.val_accuracy, m.val_loss),
              ("test", m.test_accuracy, m.test_loss)]
    return {
        "scores": [{"split": s, "accuracy": a, "loss": l} for s, a, l in scores],
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": result.seconds,
        "interrupted": result.interrupted,
        "refit": ({"epochs": result.refit.epochs, "rows": result.refit.rows, "seconds": result.refit.seconds}
                  if getattr(result, "refit", None) is not None else None),  # schema version 1 has none
        "per_class": [{"class": r.class_name, "precision": r.precision, "recall": r.recall, "f1": r.f1,
                       "support": r.support} for r in m.test_per_class],
        "confusion_matrix": m.test_confusion_matrix,
        "class_names": class_names,
        "size_bytes": number(run.model_metrics.get("size_bytes")),  # metrics.json of the artifact
        "parameters": run.model_metrics.get("parameters"),
        "architecture": run.model_json.get("config"),
        "columns": _columns((run.model_json.get("preprocessing") or {}).get("table")),
        "_figures": {
            "learning curves (loss and accuracy per epoch)": figures.learning_curves([e.dump() for e in result.history]),
            "confusion matrix on the test split": figures.confusion_matrix(m.test_confusion_matrix, class_names),
        },
    }


def _columns(table: dict | None) -> dict | None:
    """A table's target, the columns dropped (with why) and how each kept column was encoded."""
    if not table:
        return None
    kinds = {"numeric": "number", "onehot": "one-hot", "ordinal": "ordinal codes"}
    return {"target": (table.get("read") or {}).get("target"),
            "dropped": [{"column": c, "reason": r} for c, r in table.get("dropped", {}).items()],
            "kept": [{"column": s["column"], "encoding": kinds.get(s["kind"], s["kind"]), "levels": len(s.get("levels", [])),
                      "missing": "median/mode + indicator" if s.get("indicator") else ""} for s in table.get("steps", [])]}


# ---------------------------------------------------------------- compression

BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int4": 4}


def _parity(v: VariantRow) -> str | None:
    p = v.parity
    return None if p is None else f"{100 * p.top1_agreement:.1f}% agree, max |Δ| {p.max_abs_diff:.1e}"


def _agreement(v: VariantRow) -> str | None:
    f = v.fidelity
    return None if f is None else (f"{100 * f.agreement:.1f}% (95% CI {100 * f.wilson_low:.1f}-"
                                   f"{100 * f.wilson_high:.1f}%, n={f.n})")


def _variant_row(v: VariantRow, chosen: str) -> dict:
    lat = v.latency_ms
    return {
        "name": v.name, "method": v.method, "runtime": v.runtime, "dtype": v.dtype,
        # a routed variant (schema 3): its member's runtime, and the calls it answers
        "small_runtime": serve.small_runtime if (serve := getattr(v, "serve", None)) else None,
        "small_batch": f"calls under {serve.below_batch} rows: {serve.small_runtime} ({serve.small})" if serve else None,
        "accuracy": v.accuracy, "drop": v.accuracy_drop, "disk": v.size_bytes,
        "nominal": None,   # filled by `compression`: a routed variant's `_nominal` reads its member's row
        "parameters": v.parameters, "speedup": v.speedup.b1_t1, "speedup256": v.speedup.b256_t1,
        "size_ratio": v.size_ratio, "parity": _parity(v), "passes": v.within_budget, "agreement": _agreement(v),
        # the same figure as numbers, for the model card's metadata
        "fidelity": (None if (f := v.fidelity) is None else
                     {"agreement": f.agreement, "low": f.wilson_low, "high": f.wilson_high, "n": f.n}),
        "noisy": "b256_t1" in v.noisy or "b1_t1" in v.noisy,
        # per batch size: a speed-up whose per-round ratios spread too widely is marked where it is shown
        "noisy1": "b1_t1" in v.noisy, "noisy256": "b256_t1" in v.noisy,
        "slower": v.slower_than_fp32, "flips": v.flips, "pareto": v.pareto, "chosen": v.name == chosen,
        "path": v.path, "notes": v.notes,
        "device": getattr(v, "device", "cpu"),  # schema 6: where it computed while timed
        "lat1_p50": lat.b1_t1.p50, "lat1_p95": lat.b1_t1.p95, "lat256_p50": lat.b256_t1.p50,
        "lat256_p95": lat.b256_t1.p95, "lat1_p50_all": lat.b1_tall.p50, "lat1_p95_all": lat.b1_tall.p95,
        "lat256_p50_all": lat.b256_tall.p50, "lat256_p95_all": lat.b256_tall.p95,
    }


def _weight_bits(recipe: dict, dtype: str) -> int | None:
    """The bit width the weights are stored with: the last step's `weight_type` (int8-weights computes in
    float32, its `dtype`, from int8 weights), else the variant's dtype."""
    steps = recipe.get("steps") if isinstance(recipe.get("steps"), list) else [recipe]
    for step in reversed(steps):
        if isinstance(step, dict) and step.get("weight_type") in BITS:
            return BITS[step["weight_type"]]
    return BITS.get(dtype)


def _nominal(v: VariantRow, rows: dict[str, dict]) -> float | None:
    """Parameters x the stored weights' bit width, in bytes; a routed variant (schema 3) adds the nominal of
    its small-batch member (a row of its own). None where it cannot be known: no parameter count, an unknown
    width, a member not among the rows."""
    recipe = v.recipe.model_dump()
    serve = getattr(v, "serve", None)
    bits = _weight_bits(recipe.get("large") if serve and isinstance(recipe.get("large"), dict) else recipe, v.dtype)
    if v.parameters is None or bits is None:
        return None
    own = v.parameters * bits / 8
    if serve is None:
        return own
    small = (rows.get(serve.small) or {}).get("nominal")
    return None if small is None else own + small


def _threads_timed(result) -> int:
    """The threads the all-threads settings were timed with: every core, or the cores free when timing began
    where auto's search notes say fewer were."""
    import re

    for note in getattr(result, "search_notes", None) or []:
        found = re.match(r"the all-threads settings timed with (\d+) thread", note)
        if found:
            return int(found.group(1))
    return result.threads.all


def compression(run: Run) -> dict | None:
    result = run.compress
    if result is None:
        return None
    chosen = result.chosen
    rows = [_variant_row(v, chosen.name) for v in result.variants]
    by_name = {r["name"]: r for r in rows}
    for v, r in zip(result.variants, rows):     # plain members first: a routed variant adds its member's
        if getattr(v, "serve", None) is None:
            r["nominal"] = _nominal(v, by_name)
    for v, r in zip(result.variants, rows):
        if getattr(v, "serve", None) is not None:
            r["nominal"] = _nominal(v, by_name)
    pareto_points = [{"name": r["name"], "lat1": r["lat1_p50"], "lat256": r["lat256_p50"], "accuracy": r["accuracy"],
                      "size": r["disk"]} for r in rows]
    return {
        "variants": rows,
        "chosen": chosen.dump(),
        # where the chosen artifact is from the report's run directory (a pipeline's compress/ included)
        "artifact": (os.path.relpath(run.dirs["compress"] / chosen.path, run.root)
                     if chosen.path and not Path(chosen.path).is_absolute() else chosen.path),
        "max_drop": result.max_drop,
        "min_agreement": getattr(result, "min_agreement", None),
        "methods": result.methods,
        "skipped": [{"method": s.method, "reason": s.reason} for s in result.skipped],
        "threads": {**result.threads.dump(), "timed": _threads_timed(result)},
        "notes": list(getattr(result, "search_notes", None) or []),
        # schema 6: where the variants were timed; `gpu` names it when it is not the CPU, else None
        "gpu": None if (device := getattr(result, "device", "cpu")) == "cpu" else device,
        "_figures": {
            "accuracy against latency (Pareto)": figures.pareto(pareto_points, chosen.name),
            "nominal against on-disk size": figures.size_bars(rows),
        },
    }


# ---------------------------------------------------------------- explanation

QUALITY_SCORES = ("completeness_error", "estimated_error", "estimated_error_max", "unconverged", "deletion_auc",
                  "insertion_auc", "infidelity", "randomization_spearman", "randomization_topk", "noise_floor_topk",
                  "noise_floor_spearman", "empty_share")


def _scores(q) -> dict:
    """The quality figures to show: a sampled method's estimated error in place of its completeness."""
    shown = {k: getattr(q, k, None) for k in QUALITY_SCORES}
    if shown["estimated_error"] is not None or getattr(q, "axiom_holds", True) is False:
        shown.pop("completeness_error")   # a sampled method's error replaces it; where it is not expected, no figure
    return {k: v for k, v in shown.items() if v is not None}


def stage_figures(run: Run, result: ExplainResultFile) -> dict[str, bytes]:
    """The PNG figures the explain stage listed in result.json, in its order (missing or not-PNG files left out)."""
    out = {}
    for caption, name in result.figures.items():
        data = image_file(run.dirs["explain"], name)
        if data is not None and len(data) <= MAX_FIGURE_BYTES:
            out[caption] = data
    return out


def _top_inputs(values: dict[str, float | None]) -> list[tuple[str, float]]:
    items = [(name, v) for name, v in values.items() if number(v) is not None]
    return sorted(items, key=lambda kv: -abs(kv[1]))


def _interval(row: DriftRow, metric: str) -> dict | None:
    value = getattr(row, metric)
    if number(value) is None:
        return None
    return {"value": value, "lo": getattr(row, f"{metric}_lo"), "hi": getattr(row, f"{metric}_hi")}


def _drift_row(r: DriftRow) -> dict:
    return {"variant": r.variant, "method": r.method, "ran": r.ran if r.ran != r.method else None,
            "runtime": r.runtime, "accuracy": r.accuracy, "drop": r.accuracy_drop, "topk": r.topk,
            "overlap": _interval(r, "topk_overlap"), "cosine": _interval(r, "cosine"),
            "spearman": _interval(r, "spearman"), "sign": _interval(r, "sign_agreement"),
            "noise_floor": r.noise_floor_topk, "random_floor": r.random_floor_topk, "flag": r.flag,
            "verdict": r.verdict, "status": r.status, "threshold": r.threshold, "relation": r.relation,
            "cosine_threshold": getattr(r, "cosine_threshold", None),   # schema 5
            "weakest_share": _weakest_share(r), "top_features": [f.dump() for f in r.top_features or []]}


def _weakest_share(r: DriftRow) -> dict | None:
    """The original's top input whose share of the attribution the variant keeps least (the share ratio the
    third drift test reads, with its interval); None before schema 5 or without top inputs."""
    shares = [f for f in r.top_features or [] if number(f.share_ratio) is not None]
    if not shares:
        return None
    f = min(shares, key=lambda f: (f.share_ratio_hi if number(f.share_ratio_hi) is not None else f.share_ratio,
                                   f.share_ratio))
    return {"feature": f.feature, "value": f.share_ratio, "lo": f.share_ratio_lo, "hi": f.share_ratio_hi}


def explanation(run: Run) -> dict | None:
    result = run.explain
    if result is None:
        return None
    listed = stage_figures(run, result)
    importance, drawn = [], {}
    for method, values in result.global_importance.items():
        items = _top_inputs(values)
        if items:
            importance.append({"method": method, "top": items[:10]})
            if not listed:
                drawn[f"global importance ({method})"] = figures.importance_bars(items, method)
    quality = [{"method": method, "flagged": q.flagged, "verdicts": q.verdicts,
                "scores": _scores(q),
                "sanity": q.sanity.verdict if getattr(q, "sanity", None) else None}
               for method, q in result.quality.items()]
    # None: a method that weighs a column as a whole (lime) gives its one-hot levels no importance of their own
    encoded = [{"method": m, "top": _top_inputs(v)[:10], "whole_columns": sorted(n for n, x in v.items() if x is None)}
               for m, v in (getattr(result, "global_importance_encoded", None) or {}).items()]
    return {
        "methods": result.methods,
        "samples": result.samples,
        "importance": importance,
        "importance_encoded": encoded,
        "quality": quality,
        "drift_rows": [_drift_row(r) for r in result.drift.rows],
        "runs": [r.dump() for r in result.runs],
        "flags": result.flags,
        "drift_flags": list(getattr(result.drift, "flags", None) or []),
        "compared": [name for name in result.runtimes if name != "original"],
        "relations": {name: r.dump() for name, r in (getattr(result, "relations", None) or {}).items()},
        "_figures": {k: v for k, v in drawn.items() if v},
        "_stage_figures": listed,
    }
