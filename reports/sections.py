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
    if run.is_pipeline:
        return None
    if "compress" in run.configs and run.configs["compress"]:
        return _stage_command(run, "compress")
    if "explain" in run.configs and run.configs["explain"]:
        return _stage_command(run, "explain")
    cfg = run.configs.get("train")
    if not cfg:
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


def _stage_command(run: Run, stage: str) -> str | None:
    """`toolkit compress|explain MODEL --data DATA ...` from that stage's config.json (docs/results.md)."""
    cfg = run.configs[stage]
    data = cfg.get("data")
    data = _cli_data(data.get("source") if isinstance(data, dict) else data) or _data_name(run)
    if not isinstance(cfg.get("model"), str) or not data:
        return None
    parts = ["toolkit", stage, cfg["model"], "--data", str(data)]
    for method in cfg.get("methods") or [] if isinstance(cfg.get("methods"), list) else []:
        parts += ["--method", str(method)]
    if stage == "compress" and number(cfg.get("max_drop")) is not None:
        parts += ["--max-drop", f"{cfg['max_drop']:g}"]
    if stage == "explain":
        for variant in cfg.get("compare") or [] if isinstance(cfg.get("compare"), list) else []:
            parts += ["--compare", str(variant)]
        if cfg.get("samples") is not None:
            parts += ["--samples", str(cfg["samples"])]
    parts += ["--out", str(run.root)]
    return shlex.join(parts)


def overview(run: Run) -> dict:
    train = run.results.get("train", {})
    data = train.get("data") if isinstance(train.get("data"), dict) else dig(run.model_json, "data")
    data = data if isinstance(data, dict) else {}
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
        ("model family", first(train, "family") or run.model_json.get("family") or run.pipeline_config.get("family")
         or next((r["family"] for r in run.results.values() if isinstance(r.get("family"), str)), None)),
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


BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int4": 4}


def _timing(merged: dict, flat: dict, batch: int, pct: int, threads: str = "t1") -> float | None:
    """Latency in ms: `latency_ms.b{batch}_{threads}.p{pct}` (docs/results.md), else any key that looks like it."""
    value = number(dig(merged, "latency_ms", f"b{batch}_{threads}", f"p{pct}"))
    return value if value is not None else _latency(flat, batch, pct) if threads == "t1" else None


def _variant_row(raw: dict) -> dict:
    m = raw.get("measurements") if isinstance(raw.get("measurements"), dict) else {}
    merged = {**raw, **m}
    flat = _flatten(merged)
    parity = first(merged, "parity", "agreement", "prediction_agreement")
    if isinstance(parity, dict):
        parts = []
        if number(parity.get("top1_agreement")) is not None:
            parts.append(f"{100 * parity['top1_agreement']:.1f}% agree")
        if number(parity.get("max_abs_diff")) is not None:
            parts.append(f"max |Δ| {parity['max_abs_diff']:.1e}")
        parity = ", ".join(parts) or None
    speedup = merged.get("speedup")
    params, bits = number(merged.get("parameters")), BITS.get(str(merged.get("dtype")))
    nominal = number(first(merged, "nominal_bytes", "size.nominal_bytes", "nominal_size_bytes"))
    if nominal is None and params is not None and bits:
        nominal = params * bits / 8
    row = {
        "name": str(raw.get("name", "?")),
        "method": first(merged, "method", "recipe.method"),
        "runtime": merged.get("runtime"), "dtype": merged.get("dtype"),
        "accuracy": number(first(merged, "accuracy", "test_accuracy")),
        "drop": number(first(merged, "accuracy_drop", "drop", "accuracy_drop_points")),
        "disk": number(first(merged, "size_bytes", "disk_bytes", "file_bytes", "bytes_on_disk", "on_disk_bytes")),
        "nominal": nominal, "parameters": params,
        "speedup": number(dig(speedup, "b1_t1")) if isinstance(speedup, dict) else number(speedup),
        "speedup256": number(dig(speedup, "b256_t1")) if isinstance(speedup, dict) else None,
        "size_ratio": number(first(merged, "size_ratio", "compression_ratio")),
        "parity": parity if isinstance(parity, (int, float, str)) and not isinstance(parity, bool) else None,
        "passes": merged.get("within_budget"),
        "slower": merged.get("slower_than_fp32") is True,
        "flips": merged.get("flips") is True,
        "pareto": merged.get("pareto") is True,
        "path": raw.get("path"),
        "notes": [str(n) for n in (raw.get("notes") or []) if n] if isinstance(raw.get("notes"), list) else [],
        "error": raw.get("error"),
    }
    for batch in (1, 256):
        for pct in (50, 95):
            row[f"lat{batch}_p{pct}"] = _timing(merged, flat, batch, pct)
            row[f"lat{batch}_p{pct}_all"] = _timing(merged, flat, batch, pct, "tall")
    return row


def _variants(result: dict) -> list[dict]:
    table = first(result, "variants", "table", default=[])
    if isinstance(table, dict):
        table = [{"name": k, **v} for k, v in table.items() if isinstance(v, dict)]
    return [_variant_row(v) for v in table if isinstance(v, dict)]


def _derive(rows: list[dict]) -> None:
    """Fill speedup and size ratio against the fp32 baseline where the stage did not write them."""
    base = next((r for r in rows if r["method"] in ("baseline", "fp32") or r["name"] in ("fp32-torch", "fp32")), None)
    if base is None:
        return
    for r in rows:
        if r["speedup"] is None and base["lat1_p50"] and r["lat1_p50"]:
            r["speedup"] = base["lat1_p50"] / r["lat1_p50"]
        if r["speedup256"] is None and base["lat256_p50"] and r["lat256_p50"]:
            r["speedup256"] = base["lat256_p50"] / r["lat256_p50"]
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
    pareto_points = [{"name": r["name"], "lat1": r["lat1_p50"], "lat256": r["lat256_p50"], "accuracy": r["accuracy"],
                      "size": r["disk"]} for r in rows]
    return {
        "variants": rows,
        "chosen": {"name": chosen_name, "reason": chosen.get("reason"), "path": chosen.get("path")} if chosen else None,
        "max_drop": number(first(result, "max_drop", "options.max_drop", "config.max_drop")),
        "methods": first(result, "methods", "methods_run"),
        "notes": [str(n) for n in result.get("notes", []) if n] if isinstance(result.get("notes"), list) else [],
        "skipped": [{"method": str(s.get("method", "?")), "reason": str(s.get("reason", ""))}
                    for s in result.get("skipped") or [] if isinstance(s, dict)]
                   if isinstance(result.get("skipped"), list) else [],
        "threads": result.get("threads") if isinstance(result.get("threads"), dict) else {},
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
    text = re.sub(r"\.png$", "", str(text)).replace("figures/", "")
    return text.replace("_", " ") if " " not in text else text


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
                quality_rows.append({"method": str(method), "scores": scores, "flagged": q.get("flagged") is True,
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
    curated = _drift_rows(drift_rows)
    return {
        "methods": [str(m) for m in methods] if isinstance(methods, list) else [],
        "samples": first(result, "samples", "n_samples"),
        "importance": importance_tables,
        "quality": quality_rows,
        "drift_rows": curated,
        "drift": None if curated else _table(drift_rows),
        "runs": _runs(result.get("runs")),
        "flags": [str(f) if not isinstance(f, dict) else "; ".join(f"{k}: {v}" for k, v in f.items())
                  for f in (flags if isinstance(flags, list) else [])],
        "compared": [k for k in result["runtimes"] if k != "original"] if isinstance(result.get("runtimes"), dict)
        else first(result, "compare", "compared"),
        "_figures": {k: v for k, v in importance_figs.items() if v},
        "_stage_figures": stage_figures(run, "explain"),
    }


def _interval(row: dict, key: str) -> dict | None:
    value = number(row.get(key))
    if value is None:
        return None
    return {"value": value, "lo": number(row.get(f"{key}_lo")), "hi": number(row.get(f"{key}_hi"))}


def _drift_rows(rows) -> list[dict]:
    """Drift rows of docs/results.md (original against variant) with their confidence intervals."""
    if not isinstance(rows, list) or not any(isinstance(r, dict) and "topk_overlap" in r for r in rows):
        return []
    out = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        out.append({"variant": str(r.get("variant", "?")), "method": str(r.get("method", "?")),
                    "ran": r.get("ran") if r.get("ran") != r.get("method") else None, "runtime": r.get("runtime"),
                    "accuracy": number(r.get("accuracy")), "drop": number(r.get("accuracy_drop")),
                    "topk": r.get("topk"), "overlap": _interval(r, "topk_overlap"), "cosine": _interval(r, "cosine"),
                    "spearman": _interval(r, "spearman"), "sign": _interval(r, "sign_agreement"),
                    "noise_floor": number(r.get("noise_floor_topk")), "random_floor": number(r.get("random_floor_topk")),
                    "flag": r.get("flag") is True, "verdict": r.get("verdict")})
    return out


def _runs(rows) -> list[dict]:
    if not isinstance(rows, list):
        return []
    return [{"model": str(r.get("model", "?")), "method": str(r.get("method", "?")), "ran": r.get("ran"),
             "runtime": r.get("runtime"), "routed": r.get("routed"), "baseline": r.get("baseline"),
             "seconds": number(r.get("seconds")), "ms_per_sample": number(r.get("ms_per_sample"))}
            for r in rows if isinstance(r, dict)]
