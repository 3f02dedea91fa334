"""Notebook views of results: short reprs, HTML blocks and pandas tables (pandas imported only when asked).

Jupyter shows `_repr_html_` when a result is the last value of a cell and `repr` everywhere else, so a
repr stays one short line (under `MAX_REPR` characters) and the tables go into the HTML.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: pandas is imported when a table is asked for
    import pandas

MAX_REPR = 300
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
METRIC_SPLITS = ("train", "val", "test")


def short_repr(kind: str, /, **fields) -> str:
    """`Name(key=value, ...)` with None fields left out, cut to `MAX_REPR` characters."""
    text = f"{kind}({', '.join(f'{k}={v!r}' for k, v in fields.items() if v is not None)})"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR - 4] + "...)"


def frame(rows: list[dict], columns) -> "pandas.DataFrame":
    """A DataFrame with exactly `columns`, in order (missing values as NaN/None)."""
    import pandas as pd

    return pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=list(columns))


def html_block(title: str, table=None, lines=(), note: str | None = None) -> str:
    """A titled HTML block: an optional table (escaped by pandas), an optional note and a list of lines."""
    parts = [f"<div><strong>{escape(title)}</strong>"]
    if note:
        parts.append(f"<p>{escape(note)}</p>")
    if table is not None:
        parts.append(table.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}"))
    if lines:
        parts.append("<ul>" + "".join(f"<li>{escape(str(line))}</li>" for line in lines) + "</ul>")
    return "".join(parts) + "</div>"


def history_frame(history: list[dict]) -> "pandas.DataFrame":
    """One row per history entry (per epoch), columns `HISTORY_COLUMNS`."""
    return frame(history, HISTORY_COLUMNS)


def metrics_frame(metrics: dict) -> "pandas.DataFrame":
    """One row per split (train, val, test), columns split, loss, accuracy."""
    return frame([{"split": s, "loss": metrics.get(f"{s}_loss"), "accuracy": metrics.get(f"{s}_accuracy")}
                  for s in METRIC_SPLITS], ("split", "loss", "accuracy"))
