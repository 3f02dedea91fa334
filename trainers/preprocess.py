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

import re

import numpy as np
import pandas as pd

from .buffers import column_matrix, release
from .errors import DataError, shown

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
        elif n >= 10 and distinct == n and not _is_float(column) and _id_like(str(name), column):
            reasons[name] = "ID-like (unique per row)"
    return reasons


_ID_NAME = re.compile(r"(?:^|[^a-z0-9])(?:id|ids|uuid|guid|key|idx|index|no|nr|num|number|code|ref)$|[a-z0-9]I[dD]$")


def _id_like(name: str, column: pd.Series) -> bool:
    """Whether a column with a different value in every row identifies the rows. Text does (names, UUIDs,
    codes); whole numbers do when the column is named as an identifier (`id`, `customer_no`, `orderId`) or when
    they are as dense as row numbers (at most two values of their range per row: a shuffled row number, a
    sequence). Other whole numbers unique per row are measurements (incomes, prices in cents, counts) and stay."""
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return True
    if _ID_NAME.search(name.lower()) or _ID_NAME.search(name):
        return True
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.nanmax(values) - np.nanmin(values) + 1 <= 2 * len(values))


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


# Text cells that a number format (`number_format`) may leave unread before a column stays text: at most this
# share of the cells, and this many distinct values (a stray "n/a" or "-", not a second kind of data).
STRAY_SHARE, STRAY_VALUES, STRAY_MIN_CELLS = 0.05, 3, 20
SAMPLE_CELLS = 10_000
_GROUPED = r"[+-]?\d{1,3}(?:,\d{3})+"  # 1,234 or 12,345,678: a comma every three digits


def number_format(column: pd.Series, sep: str | None = None) -> dict | None:
    """How a text column's cells read as numbers, as spreadsheets write them, or None when they do not.

    Returns {"decimal": "." or ",", "group": "", "," or "." (thousands separator, removed), "percent": bool
    (the cells end in %, but for stray ones: the number is divided by 100), "missing": [stray text cells read as missing]}.
    A comma is the decimal mark where it is the last of a dot and a comma in a cell (1.234,5), or the only mark
    and not every three digits (0,126); a comma every three digits (1,234) groups thousands, unless the file is
    separated by semicolons, as where the comma is the decimal mark. Stray text (`STRAY_*`) is allowed, and named,
    only in a column of at least `STRAY_MIN_CELLS` cells.
    """
    if pd.api.types.is_numeric_dtype(column):
        return None
    cells = column.dropna()
    text = cells.head(SAMPLE_CELLS).astype(str).str.strip()  # the format is read off a sample: text columns of
    text = text[text != ""]                                  # a million rows cost no more than a thousand
    if not len(text):
        return None
    # percent: the cells end in %, but for a few stray ones ("unknown", "-"), which then become missing cells
    percent = bool(text.str.endswith("%").mean() >= 1 - STRAY_SHARE)
    body = text.str.removesuffix("%").str.strip() if percent else text
    comma, dot = body.str.contains(",", regex=False), body.str.contains(".", regex=False)
    both = body[comma & dot]
    if len(both):
        last_comma = (both.str.rfind(",") > both.str.rfind(".")).mean() > 0.5
        decimal, group = (",", ".") if last_comma else (".", ",")
    elif comma.any():
        commas = body[comma]
        grouped = bool(commas.str.fullmatch(_GROUPED).all())
        if (commas.str.count(",") > 1).any() or (grouped and sep != ";"):
            decimal, group = ".", ","
        else:
            decimal, group = ",", ""
    elif (body.str.count(r"\.") > 1).any() and body[dot].str.fullmatch(r"[+-]?\d{1,3}(?:\.\d{3})+").all():
        decimal, group = ",", "."  # 1.234.567: dots group thousands
    else:
        decimal, group = ".", ""
    fmt = {"decimal": decimal, "group": group, "percent": percent, "missing": []}
    if parse_numbers(text, fmt)[1].mean() > STRAY_SHARE:
        return None  # text (names, codes, levels): decided on the sample, before reading the whole column
    values, bad = parse_numbers(column, fmt)
    stray = column[bad].astype(str).str.strip()
    if not len(stray):
        return fmt if percent or decimal != "." or group or values.notna().any() else None
    tokens = sorted(stray.unique().tolist())
    if len(cells) < STRAY_MIN_CELLS or len(stray) > STRAY_SHARE * len(cells) or len(tokens) > STRAY_VALUES:
        return None
    return {**fmt, "missing": tokens}


def parse_numbers(column: pd.Series, fmt: dict) -> tuple[pd.Series, np.ndarray]:
    """A text column read with `number_format`'s format: (float64 values, NaN where missing or unreadable; the
    mask of cells with text that is not a number and not one of the format's missing cells)."""
    text = column.astype("string").str.strip()
    text = text.mask(text.isin(fmt["missing"]) | (text == ""))
    if fmt["percent"]:
        text = text.str.removesuffix("%").str.strip()
    if fmt["group"]:
        text = text.str.replace(fmt["group"], "", regex=False)
    if fmt["decimal"] != ".":
        text = text.str.replace(fmt["decimal"], ".", regex=False)
    values = pd.to_numeric(text, errors="coerce").astype(np.float64)
    bad = (values.isna() & text.notna()).to_numpy(dtype=bool)
    return (values / 100 if fmt["percent"] else values), bad


def read_numbers(frame: pd.DataFrame, sep: str | None = None) -> dict[str, dict]:
    """Text columns of `frame` that are numbers as spreadsheets write them (`number_format`), replaced in place
    by their values (float32, or float64 where float32 would lose them); returns each one's format, for `fit_table` to record and `transform` to apply again."""
    formats = {}
    for name in frame.columns:
        if _is_text(frame[name]) and not pd.api.types.is_bool_dtype(frame[name]):
            fmt = number_format(frame[name], sep)
            if fmt is not None:
                formats[str(name)] = fmt
                values = parse_numbers(frame[name], fmt)[0]
                frame[name] = values if _float32_loses(values) else values.astype(np.float32)
    return formats


def fit_table(frame: pd.DataFrame, train_rows: np.ndarray, dropped: dict[str, str],
              formats: dict[str, dict] | None = None) -> dict:
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
            step = {"column": str(name), "kind": "numeric", "fill": median, "indicator": missing}
            if _float32_loses(frame[name]):
                # Subtracted in float64 before the model's float32 (`transform`): Unix times in seconds lie 128
                # apart in float32, their differences from the median are exact. Such a column has no raw-row graph.
                step["offset"] = median
            if formats and str(name) in formats:
                step["format"] = formats[str(name)]  # the text was numbers (`number_format`)
            steps.append(step)
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
            fmt = step.get("format", {"decimal": ".", "group": "", "percent": False, "missing": []})
            values, bad = parse_numbers(column, fmt)
            if bad.any():
                raise DataError(f"{where}: column '{name}' was numeric at training but holds text here "
                                f"({column[bad].iloc[0]!r}); give numbers or leave the cell empty")
            column = values
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.where(np.isnan(values), step["fill"], values) - step.get("offset", 0.0)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: column '{name}' contains infinite values, or numbers beyond float32's range "
                            "(3.4e38) that read as infinite")
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


def named_columns(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """`frame` with its column names as text (a DataFrame made from an array has the integers 0, 1, ...; the
    fitted preprocessing names columns as text), not copied where they are already; a name given twice, or
    a column of lists or other unhashable cells, is one DataError line."""
    names = [str(c).strip() for c in frame.columns]
    twice = pd.Index(names)[pd.Index(names).duplicated()]
    if len(twice):
        raise DataError(f"{where}: column name {shown(twice[0])} appears twice; rename one")
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object and len(column):
            cell = column.dropna().head(1000).map(type)
            odd = cell[~cell.isin([str, bool, int, float])]
            if len(odd):
                raise DataError(f"{where}: column '{name}' holds {odd.iloc[0].__name__} cells; give one number or "
                                "text per cell")
    if names != list(frame.columns):
        frame = frame.set_axis(names, axis=1, copy=False)
    return frame


def unseen_levels(table: dict, frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per text column of the fitted `table`, the levels of `frame` that training never saw (`transform` encodes
    them as no level, or as the code after the last one): what `toolkit predict` names once per file."""
    found = {}
    for step in table["steps"]:
        if step["kind"] != "numeric" and step["column"] in frame.columns:
            values = frame[step["column"]].dropna().astype(str).unique()
            unseen = sorted(set(values) - set(step["levels"]))
            if unseen:
                found[step["column"]] = unseen
    return found


def as_frame(table: dict, rows, where: str = "rows") -> pd.DataFrame:
    """Raw rows as a DataFrame: a DataFrame, a list of dicts, or a 2-D array in the raw column order."""
    if isinstance(rows, pd.DataFrame):
        return named_columns(rows, where)
    if isinstance(rows, (list, tuple)) and rows and isinstance(rows[0], dict):
        return named_columns(pd.DataFrame(list(rows)), where)
    array = np.asarray(rows)
    columns = [c for c in table["columns"]]
    if array.ndim != 2 or array.shape[1] != len(columns):
        raise DataError(f"{where}: raw rows need {len(columns)} columns ({', '.join(columns)}), "
                        f"got shape {tuple(array.shape)}")
    return pd.DataFrame(array, columns=columns)


def numeric_only(table: dict) -> bool:
    """Whether every kept column is numeric and float32 keeps it, so the steps can run inside an ONNX graph
    (whose input is float32: a column centred in float64, `offset`, would lose what the centring keeps)."""
    return all(step["kind"] == "numeric" and "offset" not in step for step in table["steps"])


def _float32_loses(column: pd.Series) -> bool:
    """Whether float32 would lose a numeric column's values (`csvread.Precision`): the CSV reader kept it float64."""
    from .csvread import Precision

    if not isinstance(column.dtype, np.dtype) or column.dtype not in (np.float64, np.int64):
        return False
    precision = Precision()
    precision.add(column.to_numpy(dtype=np.float64))
    return precision.lost()
