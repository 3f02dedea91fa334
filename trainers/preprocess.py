"""Fitted preprocessing of a table, stored as JSON in `model.json` (never a pickle).

`fit_table` looks at the raw columns once: which a model should not see (ID-like, monotonic index,
the unnamed pandas index, constant, equal to the label), how to encode the text columns (one-hot up
to `ONE_HOT_LIMIT` levels, ordinal codes beyond), and, from the training split only, the values that
fill missing cells (median / most frequent level) with an indicator column where cells were missing.
`transform` applies the same steps to raw rows at training and at inference; standardisation stays in
the model's first layer. Each encoded column remembers the user's column it came from (`groups`), so
explanations can be summed back to that column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .buffers import column_matrix, release
from .errors import DataError

ONE_HOT_LIMIT = 10
UNNAMED_INDEX = ("", "Unnamed: 0", "index")


def drop_reasons(frame: pd.DataFrame, labels: np.ndarray) -> dict[str, str]:
    """Columns a model should not see, each with the reason (in column order)."""
    reasons = {}
    n = len(frame)
    for name in frame.columns:
        column = frame[name]
        distinct = column.nunique(dropna=False)
        if str(name) in UNNAMED_INDEX and _is_range(column):
            reasons[name] = "unnamed pandas index column"
        elif distinct <= 1:
            reasons[name] = "constant"
        elif n >= 10 and distinct == len(np.unique(labels)) and _equals_label(column, labels):
            reasons[name] = "equal to the label"
        elif n >= 10 and _is_range(column):
            reasons[name] = "monotonic index (unique per row, increasing)"
        elif n >= 10 and distinct == n and not _is_float(column):
            reasons[name] = "ID-like (unique per row)"
    return reasons


def _is_float(column: pd.Series) -> bool:
    if not pd.api.types.is_numeric_dtype(column):
        return False
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.any(values != np.round(values)))


def _is_range(column: pd.Series) -> bool:
    if not pd.api.types.is_numeric_dtype(column) or column.isna().any() or _is_float(column):
        return False
    values = column.to_numpy(dtype=np.float64)
    return bool(len(values) > 1 and np.all(np.diff(values) == 1))


def _equals_label(column: pd.Series, labels: np.ndarray) -> bool:
    codes = pd.factorize(column, use_na_sentinel=False)[0].astype(np.int64)
    pairs = len(np.unique(codes * (int(labels.max()) + 1) + labels))
    return pairs == len(np.unique(codes)) == len(np.unique(labels))


def fit_table(frame: pd.DataFrame, train_rows: np.ndarray, dropped: dict[str, str]) -> dict:
    """The preprocessing of `frame`'s columns, with statistics from the rows `train_rows`.

    Returns a JSON-ready dict: raw `columns`, `dropped` (name -> reason), `steps`, encoded `outputs`
    and `groups` (encoded name -> user's column).
    """
    steps = []
    for name in frame.columns:
        if name in dropped:
            continue
        column = frame[name].iloc[train_rows]  # one column of the training rows at a time, never the whole split
        missing = bool(column.isna().any())
        if _is_text(column):
            counts = column.dropna().astype(str).value_counts()
            levels = sorted(counts.index.tolist())
            kind = "onehot" if len(levels) <= ONE_HOT_LIMIT else "ordinal"
            fill = str(counts.idxmax()) if len(counts) else ""
            steps.append({"column": str(name), "kind": kind, "levels": levels, "fill": fill, "indicator": missing})
        else:
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            median = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
            steps.append({"column": str(name), "kind": "numeric", "fill": median, "indicator": missing})
    outputs, groups = [], {}
    for step in steps:
        names = [f"{step['column']}={lv}" for lv in step["levels"]] if step["kind"] == "onehot" else [step["column"]]
        if step["indicator"]:
            names.append(f"{step['column']}_missing")
        outputs += names
        groups.update({n: step["column"] for n in names})
    return {"version": 1, "columns": [str(c) for c in frame.columns], "dropped": {str(k): v for k, v in dropped.items()},
            "steps": steps, "outputs": outputs, "groups": groups}


def _is_text(column: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def transform(table: dict, frame: pd.DataFrame, where: str = "rows", order: np.ndarray | None = None, *,
              consume: bool = False) -> np.ndarray:
    """Raw rows (a DataFrame with the training columns) -> the float32 matrix the model takes.

    `order` picks and orders the rows, column by column (no copy of the whole frame). `consume`: the frame is
    read for the last time, and the memory of its columns that came from `buffers.column_matrix` (the CSV
    reader's) is handed back as each is encoded; the frame must not be used afterwards.
    """
    missing = [s["column"] for s in table["steps"] if s["column"] not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; the model was trained on "
                        f"{', '.join(s['column'] for s in table['steps'])}")
    shape = (len(frame) if order is None else len(order), len(table["outputs"]))
    if consume:
        used = {s["column"] for s in table["steps"]}
        for name in frame.columns:
            if name not in used:
                _release(frame[name])
    # A row-major output commits all its pages at its first column; a column-major one a column at a time,
    # as the frame's columns are handed back (1M x 50 CSV: encoding adds 26 MiB to the raw table, not 187).
    out = column_matrix(*shape) if consume else np.empty(shape, dtype=np.float32)
    j = 0
    for step in table["steps"]:
        column = frame[step["column"]]
        if order is not None:
            column = column.iloc[order]
        absent = column.isna().to_numpy()
        block = _encode(step, column, absent, where)
        del column
        if consume:
            _release(frame[step["column"]])
        out[:, j:j + block.shape[1]] = block
        j += block.shape[1]
        if step["indicator"]:
            out[:, j] = absent
            j += 1
    return _row_major(out) if consume else out


def _release(column: pd.Series) -> None:
    if isinstance(column.dtype, np.dtype) and column.dtype == np.float32:
        release(column.to_numpy())


def _row_major(matrix: np.ndarray, rows: int = 65536) -> np.ndarray:
    """A row-major copy of a `column_matrix`, made a block of rows at a time while the copied rows are handed
    back, so the two never hold more than a block of rows twice."""
    out = np.empty(matrix.shape, dtype=matrix.dtype)
    for start in range(0, len(matrix), rows):
        stop = min(start + rows, len(matrix))
        out[start:stop] = matrix[start:stop]
        for c in range(matrix.shape[1]):
            release(matrix[:stop, c])
    return out


def _encode(step: dict, column: pd.Series, absent: np.ndarray, where: str) -> np.ndarray:
    name = step["column"]
    if step["kind"] == "numeric":
        if _is_text(column):
            values = pd.to_numeric(column, errors="coerce")
            bad = column[values.isna() & ~column.isna()]
            if len(bad):
                raise DataError(f"{where}: column '{name}' was numeric at training but holds text here "
                                f"({bad.iloc[0]!r}); give numbers or leave the cell empty")
            column = values
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.where(np.isnan(values), step["fill"], values)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: column '{name}' contains infinite values")
        return values.astype(np.float32)[:, None]
    if pd.api.types.is_numeric_dtype(column) and not absent.all():
        raise DataError(f"{where}: column '{name}' was text at training but holds numbers here; "
                        "give the same kind of values the model was trained on")
    text = column.astype(object).where(~absent, step["fill"]).astype(str).to_numpy()
    index = {level: i for i, level in enumerate(step["levels"])}
    codes = np.array([index.get(v, -1) for v in text], dtype=np.int64)
    if step["kind"] == "ordinal":
        # An unseen level gets the code after the last known one.
        return np.where(codes < 0, len(step["levels"]), codes).astype(np.float32)[:, None]
    block = np.zeros((len(codes), len(step["levels"])), dtype=np.float32)
    seen = codes >= 0
    block[np.flatnonzero(seen), codes[seen]] = 1.0  # an unseen level: all zeros
    return block


def as_frame(table: dict, rows, where: str = "rows") -> pd.DataFrame:
    """Raw rows as a DataFrame: a DataFrame, a list of dicts, or a 2-D array in the raw column order."""
    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, (list, tuple)) and rows and isinstance(rows[0], dict):
        return pd.DataFrame(list(rows))
    array = np.asarray(rows)
    columns = [c for c in table["columns"]]
    if array.ndim != 2 or array.shape[1] != len(columns):
        raise DataError(f"{where}: raw rows need {len(columns)} columns ({', '.join(columns)}), "
                        f"got shape {tuple(array.shape)}")
    return pd.DataFrame(array, columns=columns)


def numeric_only(table: dict) -> bool:
    """Whether every kept column is numeric, so the steps can run inside an ONNX graph."""
    return all(step["kind"] == "numeric" for step in table["steps"])
