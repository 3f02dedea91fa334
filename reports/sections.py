"""Turn a `Run` into report sections: plain numbers (for report.json) and figures (PNG bytes).

Every builder returns None when its stage did not run, and tolerates missing
optional keys: a section shows what its stage wrote and nothing more.
"""

from __future__ import annotations

import re
import shlex

from . import figures
from .collect import Run, dig, first, image_file, number

# ---------------------------------------------------------------- overview


def _data_name(run: Run) -> str | None:
    for stage in ("train", "compress", "explain"):
        data = dig(run.results, stage, "data")
        if isinstance(data, dict) and data.get("name"):
            return str(data["name"])
        if isinstance(data, str):
            return data
    return dig(run.model_json, "data", "name") or run.pipeline_config.get("data")


def _cli_data(source) -> str | None:
    if not isinstance(source, str) or not source:
        return None
    return source.split(":", 1)[1] if source.startswith("builtin:") else source


def reproduce_command(run: Run) -> str | None:
    """The command line that reproduces the run, built from the saved config.json."""
    if isinstance(run.pipeline_config.get("command"), str):
        return run.pipeline_config["command"]
    for stage in ("train", "compress", "explain"):
        if isinstance(run.configs.get(stage, {}).get("command"), str):
            return run.configs[stage]["command"]
    cfg = run.configs.get("train")
    if not cfg or run.is_pipeline:
        return None
    data = _cli_data(cfg.get("data")) or _data_name(run)
    if not data or not cfg.get("family"):
        return None
    parts = ["toolkit", "train", data, "--model", str(cfg["family"])]
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("lr", "--lr"), ("seed", "--seed"),
                      ("device", "--device"), ("target", "--target")):
        if cfg.get(key) is not None:
            parts += [flag, str(cfg[key])]
    if cfg.get("model"):
        import json

        parts += ["--arch", json.dumps(cfg["model"], separators=(",", ":"))]
    parts += ["--out", str(run.root)]
    return shlex.join(parts)


def overview(run: Run) -> dict:
    train = run.results.get("train", {})
    data = train.get("data") if isinstance(train.get("data"), dict) else dig(run.model_json, "data") or {}
    seconds = {s: number(r.get("seconds")) for s, r in run.results.items()}
    stage_status = run.pipeline.get("stages") if isinstance(run.pipeline.get("stages"), list) else []
    for row in stage_status:
        if isinstance(row, dict) and row.get("name") and number(row.get("seconds")) is not None:
            seconds.setdefault(row["name"], number(row["seconds"]))
    total = number(run.pipeline.get("seconds")) or (sum(v for v in seconds.values() if v) or None)
    versions = run.env.get("versions") if isinstance(run.env.get("versions"), dict) else dig(run.model_json, "versions")
    rows = [
        ("data set", _data_name(run)),
        ("source", data.get("source") if isinstance(data, dict) else None),
        ("input shape", " x ".join(map(str, data["input_shape"])) if isinstance(data.get("input_shape"), list) else None),
        ("classes", data.get("num_classes")),
        ("samples (train / validation / test)",
         " / ".join(str(data.get(k, "?")) for k in ("n_train", "n_val", "n_test")) if data.get("n_train") else None),
        ("model family", first(train, "family") or run.model_json.get("family") or run.pipeline_config.get("family")),
        ("device", first(train, "device") or run.env.get("device")),
        ("platform", run.env.get("platform")),
        ("python", run.env.get("python")),
        ("CPU cores", run.env.get("cpu_count")),
        ("GPUs", ", ".join(map(str, run.env["gpus"])) if run.env.get("gpus") else None),
        ("stages run", ", ".join(run.results) or "none"),
        ("time taken", f"{total:.1f} s" if total else None),
    ]
    return {
        "rows": [(k, v) for k, v in rows if v not in (None, "")],
        "stage_seconds": {k: v for k, v in seconds.items() if v is not None},
        "versions": [(k, v) for k, v in (versions or {}).items() if v],
        "command": reproduce_command(run),
        "stages": stage_status,
    }


# ---------------------------------------------------------------- training


def training(run: Run) -> dict | None:
    result = run.results.get("train")
    if not result:
        return None
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    class_names = run.model_json.get("class_names") or [r.get("class") for r in metrics.get("test_per_class") or []
                                                          if isinstance(r, dict)]
    scores = [(split, number(metrics.get(f"{split}_accuracy")), number(metrics.get(f"{split}_loss")))
              for split in ("train", "val", "test")]
    per_class = [r for r in metrics.get("test_per_class") or [] if isinstance(r, dict)]
    history = result.get("history") if isinstance(result.get("history"), list) else []
    return {
        "scores": [{"split": s, "accuracy": a, "loss": l} for s, a, l in scores if a is not None or l is not None],
        "epochs_run": result.get("epochs_run"),
        "best_epoch": result.get("best_epoch"),
        "seconds": number(result.get("seconds")),
        "interrupted": bool(result.get("interrupted")),
        "per_class": [{"class": str(r.get("class", i)), "precision": number(r.get("precision")),
                       "recall": number(r.get("recall")), "f1": number(r.get("f1")), "support": r.get("support")}
                      for i, r in enumerate(per_class)],
        "confusion_matrix": metrics.get("test_confusion_matrix"),
        "class_names": [str(c) for c in class_names] if class_names else [],
        "size_bytes": number(metrics.get("size_bytes")) or number(run.model_metrics.get("size_bytes")),
        "parameters": metrics.get("parameters") or run.model_metrics.get("parameters"),
        "architecture": run.model_json.get("config"),
        "_figures": {
            "learning curves (loss and accuracy per epoch)": figures.learning_curves(history),
            "confusion matrix on the test split": figures.confusion_matrix(metrics.get("test_confusion_matrix"),
                                                                           class_names),
        },
    }


# ---------------------------------------------------------------- compression


def _flatten(obj, prefix="") -> dict:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def _latency(flat: dict, batch: int, pct: int) -> float | None:
    """Find latency at `batch` and percentile `pct` whatever the nesting (latency.b1.p50_ms, latency_ms_p50_b1...)."""
    for key, value in flat.items():
        low = key.lower()
        if "lat" not in low or f"p{pct}" not in low or number(value) is None:
            continue
        rest = low.replace(f"p{pct}", "")
        if re.search(rf"(?:^|[^0-9]){batch}(?:[^0-9]|$)", rest):
            return number(value)
    return None


def _variant_row(raw: dict) -> dict:
    m = raw.get("measurements") if isinstance(raw.get("measurements"), dict) else {}
    merged = {**raw, **m}
    flat = _flatten(merged)
    parity = first(merged, "parity", "agreement", "prediction_agreement", "top1_agreement")
    if isinstance(parity, dict):
        parity = first(parity, "agreement", "top1_agreement", "match", "max_abs_diff", "max_abs_error")
    return {
        "name": str(raw.get("name", "?")),
        "method": first(merged, "method", "recipe.method"),
        "accuracy": number(first(merged, "accuracy", "test_accuracy", "accuracy.test")),
        "drop": number(first(merged, "accuracy_drop", "drop", "accuracy_drop_points", "drop_points")),
        "disk": number(first(merged, "size_bytes", "disk_bytes", "file_bytes", "bytes_on_disk", "size.disk_bytes",
                             "size.disk", "on_disk_bytes")),
        "nominal": number(first(merged, "nominal_bytes", "size.nominal_bytes", "size.nominal", "nominal_size_bytes")),
        "lat1_p50": _latency(flat, 1, 50), "lat1_p95": _latency(flat, 1, 95),
        "lat256_p50": _latency(flat, 256, 50), "lat256_p95": _latency(flat, 256, 95),
        "speedup": number(first(merged, "speedup", "speedup_b1", "speedup.1", "speedup.b1", "speedup_batch1")),
        "size_ratio": number(first(merged, "size_ratio", "compression_ratio", "size_ratio_vs_fp32")),
        "parity": parity if isinstance(parity, (int, float, str)) and not isinstance(parity, bool) else None,
        "passes": raw.get("passes", raw.get("within_budget", m.get("within_budget"))),
        "notes": [str(n) for n in (raw.get("notes") or []) if n] if isinstance(raw.get("notes"), list) else [],
        "error": raw.get("error"),
    }


def _variants(result: dict) -> list[dict]:
    table = first(result, "variants", "table", default=[])
    if isinstance(table, dict):
        table = [{"name": k, **v} for k, v in table.items() if isinstance(v, dict)]
    return [_variant_row(v) for v in table if isinstance(v, dict)]


def _derive(rows: list[dict]) -> None:
    """Fill speedup and size ratio against the fp32 baseline where the stage did not write them."""
    base = next((r for r in rows if r["name"] in ("fp32", "original", "baseline") or r["method"] in ("fp32",
                                                                                                    "baseline")), None)
    if base is None:
        return
    for r in rows:
        if r["speedup"] is None and base["lat1_p50"] and r["lat1_p50"]:
            r["speedup"] = base["lat1_p50"] / r["lat1_p50"]
        if r["size_ratio"] is None and base["disk"] and r["disk"]:
            r["size_ratio"] = base["disk"] / r["disk"]
        if r["drop"] is None and base["accuracy"] is not None and r["accuracy"] is not None:
            r["drop"] = (base["accuracy"] - r["accuracy"]) * 100


def _sensitivity_curves(raw) -> tuple[dict, str]:
    rows = raw.get("rows", raw.get("layers")) if isinstance(raw, dict) and ("rows" in raw or "layers" in raw) else raw
    curves: dict[str, list] = {}
    ylabel = "accuracy"
    if isinstance(rows, list):
        for r in rows:
            if not isinstance(r, dict):
                continue
            x = number(first(r, "ratio", "amount", "sparsity", "fraction"))
            y = number(first(r, "accuracy", "val_accuracy"))
            if y is None and number(r.get("drop")) is not None:
                y, ylabel = number(r["drop"]), "accuracy drop (points)"
            if x is not None and y is not None:
                curves.setdefault(str(r.get("layer", "?")), []).append((x, y))
    elif isinstance(rows, dict):
        for layer, points in rows.items():
            if isinstance(points, dict):
                pairs = [(number(_float(k)), number(v)) for k, v in points.items()]
            elif isinstance(points, list):
                pairs = [(number(first(p, "ratio", "amount", "sparsity")), number(first(p, "accuracy")))
                         for p in points if isinstance(p, dict)]
            else:
                continue
            pairs = [p for p in pairs if None not in p]
            if pairs:
                curves[str(layer)] = pairs
    return curves, ylabel


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def compression(run: Run) -> dict | None:
    result = run.results.get("compress")
    if not result:
        return None
    rows = _variants(result)
    _derive(rows)
    chosen = result.get("chosen") if isinstance(result.get("chosen"), dict) else (
        {"name": result["chosen"]} if isinstance(result.get("chosen"), str) else {})
    chosen_name = chosen.get("name")
    for r in rows:
        r["chosen"] = r["name"] == chosen_name
    curves, ylabel = _sensitivity_curves(first(result, "sensitivity", "pruning_sensitivity"))
    pareto_points = [{"name": r["name"], "latency": r["lat1_p50"], "accuracy": r["accuracy"], "size": r["disk"]}
                     for r in rows]
    return {
        "variants": rows,
        "chosen": {"name": chosen_name, "reason": chosen.get("reason"), "path": chosen.get("path")} if chosen else None,
        "max_drop": number(first(result, "max_drop", "options.max_drop", "config.max_drop")),
        "methods": first(result, "methods", "methods_run"),
        "notes": [str(n) for n in result.get("notes", []) if n] if isinstance(result.get("notes"), list) else [],
        "errors": result.get("errors") if isinstance(result.get("errors"), (list, dict)) else None,
        "sensitivity": curves,
        "_figures": {
            "accuracy against latency (Pareto)": figures.pareto(pareto_points, chosen_name),
            "per-layer pruning sensitivity": figures.sensitivity(curves, ylabel),
            "nominal against on-disk size": figures.size_bars(rows),
        },
        "_stage_figures": stage_figures(run, "compress"),
    }


# ---------------------------------------------------------------- explanation


def stage_figures(run: Run, stage: str) -> dict[str, bytes]:
    """The PNG figures a stage wrote, in the order its result.json lists them, then any others in figures/."""
    directory = run.dirs.get(stage)
    if directory is None:
        return {}
    listed = run.results[stage].get("figures")
    names: list[tuple[str, str]] = []
    if isinstance(listed, dict):
        for caption, value in listed.items():
            for f in value if isinstance(value, list) else [value]:
                if isinstance(f, str):
                    names.append((f"{caption}" if not isinstance(value, list) else f"{caption}: {f}", f))
    elif isinstance(listed, list):
        for item in listed:
            if isinstance(item, str):
                names.append((item, item))
            elif isinstance(item, dict) and isinstance(first(item, "file", "path", "name"), str):
                names.append((str(first(item, "caption", "title", "name")), first(item, "file", "path", "name")))
    fig_dir = directory / "figures"
    seen = {n for _, n in names}
    if fig_dir.is_dir():
        for path in sorted(fig_dir.glob("*.png")):
            if path.name not in seen and f"figures/{path.name}" not in seen:
                names.append((path.stem.replace("_", " ").replace("-", " "), path.name))
    out = {}
    for caption, name in names:
        data = image_file(directory, name)
        if data is not None and len(data) <= 2_000_000:
            out.setdefault(_caption(caption), data)
    return out


def _caption(text: str) -> str:
    text = re.sub(r"\.png$", "", str(text))
    return text.replace("figures/", "")


def _table(value) -> dict | None:
    """A list of flat dicts (or a dict of dicts) as {"columns": [...], "rows": [[...]]}; nested values as text."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        value = [{"name": k, **v} for k, v in value.items()]
    if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
        return None
    columns: list[str] = []
    for r in value:
        columns += [k for k, v in r.items() if k not in columns and not isinstance(v, (dict, list))]
    rows = [[r.get(c) for c in columns] for r in value]
    return {"columns": columns, "rows": rows}


def _importance_items(value) -> list[tuple[str, float]]:
    if isinstance(value, dict):
        if all(number(v) is not None for v in value.values()):
            return sorted(((str(k), number(v)) for k, v in value.items()), key=lambda kv: -abs(kv[1]))
        return []
    if isinstance(value, list):
        items = []
        for r in value:
            if isinstance(r, dict):
                name = first(r, "feature", "name", "input")
                score = number(first(r, "importance", "score", "mean_abs", "value"))
                if name is not None and score is not None:
                    items.append((str(name), score))
        return items
    return []


def explanation(run: Run) -> dict | None:
    result = run.results.get("explain")
    if not result:
        return None
    methods = first(result, "methods", default=[])
    if isinstance(methods, dict):
        methods = list(methods)
    importance = first(result, "global_importance", "importance", "attribution_summary", "summaries")
    importance_tables, importance_figs = [], {}
    if isinstance(importance, dict):
        for method, value in importance.items():
            items = _importance_items(value)
            if items:
                importance_tables.append({"method": str(method), "top": items[:10]})
                if not stage_figures(run, "explain"):
                    importance_figs[f"global importance ({method})"] = figures.importance_bars(items, str(method))
    quality = first(result, "quality")
    quality_rows = []
    if isinstance(quality, dict):
        for method, q in quality.items():
            if isinstance(q, dict):
                verdicts = q.get("verdicts") if isinstance(q.get("verdicts"), (list, dict)) else q.get("verdict")
                if isinstance(verdicts, dict):
                    verdicts = [f"{k}: {v}" for k, v in verdicts.items()]
                elif isinstance(verdicts, str):
                    verdicts = [verdicts]
                scores = {k: v for k, v in q.items() if k not in ("verdict", "verdicts") and
                          isinstance(v, (int, float, str)) and not isinstance(v, bool)}
                quality_rows.append({"method": str(method), "scores": scores,
                                     "verdicts": [str(v) for v in verdicts or []]})
    elif isinstance(quality, list):
        for q in quality:
            if isinstance(q, dict):
                verdict = q.get("verdict") or q.get("verdicts")
                quality_rows.append({"method": str(q.get("method", "?")),
                                     "scores": {k: v for k, v in q.items() if k not in ("method", "verdict", "verdicts")
                                                and isinstance(v, (int, float, str)) and not isinstance(v, bool)},
                                     "verdicts": [str(v) for v in (verdict if isinstance(verdict, list) else
                                                                   [verdict] if verdict else [])]})
    drift = first(result, "drift")
    drift_rows = drift.get("rows", drift.get("table")) if isinstance(drift, dict) and (
        "rows" in drift or "table" in drift) else drift
    flags = first(result, "flags", "drift_flags") or (drift.get("flags") if isinstance(drift, dict) else None)
    return {
        "methods": [str(m) for m in methods] if isinstance(methods, list) else [],
        "samples": first(result, "samples", "n_samples"),
        "importance": importance_tables,
        "quality": quality_rows,
        "drift": _table(drift_rows),
        "flags": [str(f) if not isinstance(f, dict) else "; ".join(f"{k}: {v}" for k, v in f.items())
                  for f in (flags if isinstance(flags, list) else [])],
        "compared": first(result, "compare", "compared", "variants"),
        "_figures": {k: v for k, v in importance_figs.items() if v},
        "_stage_figures": stage_figures(run, "explain"),
    }
