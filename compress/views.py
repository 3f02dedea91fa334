"""Notebook views of a `CompressResult`: the variants as a pandas table, its figures and its HTML."""

from __future__ import annotations

from trainers import display

COLUMNS = ("name", "method", "runtime", "device", "small_batch", "dtype", "accuracy", "accuracy_drop", "agreement", "agreement_low",
           "agreement_high", "agrees", "size_bytes", "size_ratio", "parameters", "latency_b1_ms", "latency_b256_ms",
           "speedup_b1", "speedup_b256", "noisy", "slower_than_fp32", "within_budget", "pareto", "chosen")


def _p50(row: dict, key: str):
    return ((row.get("latency_ms") or {}).get(key) or {}).get("p50")


def rows(summary: dict) -> list[dict]:
    """One flat row per variant of a `result.json` object (the original first), keys `COLUMNS`.

    `agreement` (with its 95% Wilson interval `agreement_low`/`agreement_high`) is the top-1 agreement with the
    fp32 original, `agrees` whether it passes the fidelity rule (None in files before schema version 2);
    `noisy` lists the settings whose speed-up the timing spread makes unreliable; `small_batch`, for a routed
    variant, the calls its member answers ("< 16 rows: NAME", NAME a row of its own), else None; `device`, where
    it computed while timed (None in files before schema version 6)."""
    chosen = summary["chosen"]["name"]
    out = []
    for v in summary["variants"]:
        f = v.get("fidelity") or {}
        out.append({**{k: v.get(k) for k in COLUMNS}, "latency_b1_ms": _p50(v, "b1_t1"),
                    "latency_b256_ms": _p50(v, "b256_t1"), "speedup_b1": (v.get("speedup") or {}).get("b1_t1"),
                    "speedup_b256": (v.get("speedup") or {}).get("b256_t1"), "agreement": f.get("agreement"),
                    "agreement_low": f.get("wilson_low"), "agreement_high": f.get("wilson_high"),
                    "agrees": f.get("passes"), "noisy": list(v.get("noisy") or []), "chosen": v["name"] == chosen,
                    "small_batch": f"< {serve['below_batch']} rows: {serve['small']}" if (serve := v.get("serve"))
                    else None})
    return out


def to_frame(summary: dict):
    """The variants as a DataFrame: one row per variant, the original first; columns `COLUMNS`."""
    return display.frame(rows(summary), COLUMNS)


def figures(summary: dict) -> dict:
    """{caption: matplotlib Figure}: accuracy against latency (Pareto) and nominal against on-disk size."""
    from trainers.figures import pareto, size_bars

    flat = rows(summary)
    points = [{"name": r["name"], "lat1": r["latency_b1_ms"], "lat256": r["latency_b256_ms"],
               "accuracy": r["accuracy"], "size": r["size_bytes"]} for r in flat]
    bits = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8}
    sizes = [{"name": r["name"], "disk": r["size_bytes"],
              "nominal": r["parameters"] * bits[r["dtype"]] / 8 if r["parameters"] and r["dtype"] in bits else None}
             for r in flat]
    drawn = {"accuracy against latency": pareto(points, summary["chosen"]["name"]),
             "nominal against on-disk size": size_bars(sizes)}
    return {caption: fig for caption, fig in drawn.items() if fig is not None}


def flags(summary: dict) -> list[str]:
    """What a reader should not miss: variants slower than the original, over the budget, or flipping answers."""
    out = []
    for r in rows(summary):
        if r["slower_than_fp32"]:
            out.append(f"{r['name']}: slower than the fp32 original")
        if r["within_budget"] is False:
            out.append(f"{r['name']}: over the accuracy budget")
        if r["agrees"] is False:
            out.append(f"{r['name']}: agrees with the original on {r['agreement']:.1%}, under the required share")
        if "b256_t1" in r["noisy"]:
            out.append(f"{r['name']}: timing too noisy for a batch-256 speed-up")
    return out


def html(title: str, summary: dict) -> str:
    chosen = summary["chosen"]
    table = to_frame(summary).drop(columns=["parameters", "speedup_b1"])
    return display.html_block(title, table, flags(summary), note=f"chosen: {chosen['name']} ({chosen['reason']})")
