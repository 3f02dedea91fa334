"""Notebook views of an `ExplainResult`: its tables as pandas DataFrames, its figures and its HTML."""

from __future__ import annotations

from trainers import display
from trainers.errors import ToolkitError

DRIFT_COLUMNS = ("variant", "method", "ran", "runtime", "accuracy_drop", "topk", "topk_overlap", "topk_overlap_lo",
                 "topk_overlap_hi", "cosine", "spearman", "sign_agreement", "noise_floor_topk", "random_floor_topk",
                 "threshold", "status", "relation", "flag", "verdict")
TABLES = ("importance", "drift")


def to_frame(summary: dict, table: str = "importance"):
    """`importance`: one row per input element (feature, time step or pixel), columns `element` and one per method
    (mean |attribution|); `drift`: one row per (variant, method) comparison, columns `DRIFT_COLUMNS`."""
    if table == "drift":
        return display.frame(summary["drift"]["rows"], DRIFT_COLUMNS)
    if table != "importance":
        raise ToolkitError(f"unknown table {table!r}: choose one of {', '.join(TABLES)}")
    importance = summary["global_importance"]
    names = list(next(iter(importance.values()), {}))
    rows = [{"element": name, **{m: values.get(name) for m, values in importance.items()}} for name in names]
    return display.frame(rows, ("element", *importance))


def figures(summary: dict) -> dict:
    """{caption: matplotlib Figure}: global importance per method, and the drift chart when variants were compared."""
    from . import plots

    drawn = {f"global importance ({m})": plots.importance_bars(values, f"global importance: {m}")
             for m, values in summary["global_importance"].items() if values}
    if summary["drift"]["rows"]:
        drawn["drift: top-k overlap vs floors"] = plots.drift_chart(summary["drift"]["rows"])
    return drawn


def html(title: str, summary: dict) -> str:
    verdicts = [f"{m}: " + "; ".join(q.get("verdicts", [])) for m, q in summary["quality"].items()]
    parts = [display.html_block(title, lines=verdicts)]
    if summary["drift"]["rows"]:
        parts.append(display.html_block("drift against compressed variants",
                                        to_frame(summary, "drift").drop(columns=["topk_overlap_lo", "topk_overlap_hi"])))
    if summary["flags"]:
        parts.append(display.html_block("flags", lines=summary["flags"]))
    return "".join(parts)
