"""A CSV table read by pyarrow's streaming reader straight into typed columns.

Numeric columns land in one preallocated float32 matrix (column-major, so each column is contiguous and
pandas holds the matrix as one block without a copy), filled a block of rows at a time; text, boolean and
large-integer columns stay their own pandas columns, at their place in the file's column order.

Why streaming and not `pyarrow.csv.read_csv`: on a 2.4M x 10 CSV (181 MB) `read_csv` peaked 270 MiB
above its 101 MiB table (it keeps parsed blocks until the end), the streaming reader 77 MiB above the
import baseline. The pandas chunked reader kept as the fallback peaks near 14 copies of the float32 data
(docs/results.md), since every cell of a chunk passes through Python objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .buffers import column_matrix, hand_back_freed
from .errors import DataError, shown

EXACT_FLOAT32 = 2**24  # integers beyond it lose digits in float32 (an ID column would stop being unique)
EXACT_FLOAT64 = 2.0**53  # and beyond this in float64: such integer columns are read again as int64
BLOCK_BYTES = 1 << 20
INT64_LIMIT = 2.0**63  # whole numbers at or beyond it (in magnitude) stay float64: int64 cannot hold them


class ArrowUnreadable(Exception):
    """pyarrow cannot read this file; the caller falls back to the pandas reader."""


def read_csv_arrow(path: Path, sep: str, missing: list[str]) -> pd.DataFrame:
    """Read `path` (UTF-8, a header row; a BOM is skipped) with separator `sep`; `missing` cells become NaN.

    Raises:
        ArrowUnreadable: pyarrow refused the file (see `tables.read_table`).
        DataError: a ragged line (named by its text: pyarrow does not count lines, and the file is too large
            for the line-numbering pass in `tables._check_ragged`), or a column name given twice.
    """
    import pyarrow as pa

    from pandas._libs.parsers import STR_NA_VALUES

    ragged = []
    nulls = sorted(set(missing) | set(STR_NA_VALUES))
    try:
        first = open_stream(path, sep, nulls, {}, ragged)
        inferred = list(zip(first.schema.names, first.schema.types))
        first.close()
        plan = [column_plan(kind) for _, kind in inferred]
        names = column_names(path, [name for name, _ in inferred])
        stream = open_stream(path, sep, nulls, {n: p[1] for (n, _), p in zip(inferred, plan) if p[1] is not None}, ragged)
        with stream:
            frame, wide = _fill(path, stream, names, plan)
        if wide:  # rare: numbers float32 would lose (`Precision`, integers past 2**24), read again as float64
            exact = open_stream(path, sep, nulls, {inferred[i][0]: pa.float64() for i in wide}, ragged,
                          include=[inferred[i][0] for i in wide])
            with exact:
                table = exact.read_all()
            past = []
            for i in wide:
                values = table.column(inferred[i][0]).to_numpy()
                # int64 only where every value fits it: 2e19 cast to int64 wrapped to -9.2e18 (a sign flip)
                integral = not np.isnan(values).any() and bool(np.all(values == np.round(values))) and bool(
                    np.all(np.abs(values) < INT64_LIMIT))
                frame[names[i]] = values.astype(np.int64) if integral else values
                if integral and np.abs(values).max(initial=0.0) >= EXACT_FLOAT64:
                    past.append(i)
            _exact_integers(path, sep, nulls, ragged, frame, [(inferred[i][0], names[i]) for i in past])
    except pa.ArrowInvalid as exc:
        if ragged:
            row = ragged[0]
            raise DataError(f"{path}: a line has {row.actual_columns} fields, the header has {row.expected_columns} "
                            f"({row.text[:60]!r}; separator {sep!r}, force another with --sep)") from None
        raise ArrowUnreadable(str(exc)) from None
    except (pa.ArrowException, OSError) as exc:
        raise ArrowUnreadable(str(exc)) from None
    finally:
        hand_back_freed()
    return frame


def _exact_integers(path: Path, sep: str, nulls: list[str], ragged: list, frame: pd.DataFrame,
                    columns: list[tuple[str, str]]) -> None:
    """Integer columns with values past 2**53, read again exactly into `frame` (raw name, name): the float64
    reading rounded them, and a label column's 2**53 and 2**53 + 1 were one class. pyarrow's int64 parser reads
    them; where it refuses one (a "1.0" or "1e17" among the integers) its text is read as decimals."""
    import pyarrow as pa

    for raw, name in columns:
        try:
            with open_stream(path, sep, nulls, {raw: pa.int64()}, ragged, include=[raw]) as exact:
                frame[name] = exact.read_all().column(raw).to_numpy()
            continue
        except pa.ArrowInvalid:
            pass
        with open_stream(path, sep, nulls, {raw: pa.string()}, ragged, include=[raw]) as text:
            whole = _whole_numbers(text.read_all().column(raw).to_pylist())
        if whole is not None:
            frame[name] = whole


def _whole_numbers(cells: list[str]) -> np.ndarray | None:
    """The cells as int64, exactly, where each is a whole number in int64's range written in any notation
    ("1.0", "1e17"); None otherwise (the float64 reading stays)."""
    from decimal import Decimal, InvalidOperation

    try:
        numbers = [Decimal(cell) for cell in cells]
        if not all(n.is_finite() and n == n.to_integral_value() and abs(n) < INT64_LIMIT for n in numbers):
            return None
    except (InvalidOperation, TypeError):
        return None
    return np.array([int(n) for n in numbers], dtype=np.int64)


def open_stream(path: Path, sep: str, nulls: list[str], types: dict, ragged: list, include=None):
    """pyarrow's streaming CSV reader on `path`, BLOCK_BYTES a block: `nulls` are missing cells, `types` the
    columns' types (others inferred from the first block), `include` the columns read (None: all). A ragged
    line is appended to `ragged` and stops the read (the caller names it)."""
    import pyarrow as pa
    from pyarrow import csv

    def on_ragged(row):
        ragged.append(row)
        return "error"

    return csv.open_csv(
        path, read_options=csv.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=csv.ParseOptions(delimiter=sep, newlines_in_values=True, invalid_row_handler=on_ragged),
        convert_options=csv.ConvertOptions(null_values=nulls, strings_can_be_null=True,
                                           quoted_strings_can_be_null=True, column_types=types,
                                           include_columns=include or []),
        memory_pool=pa.system_memory_pool())  # malloc hands large freed buffers back to the system at once


def column_plan(kind) -> tuple[str, object]:
    """(where the column goes, the type to parse it as) from the type inferred on the first block.

    Numbers parse as float64, a block at a time (a later block may hold decimals; the first block fixed the
    type), and land in the float32 matrix unless float32 would lose them (`Precision`); dates and times stay the
    text they were, as with pandas, so they are encoded as categories or found ID-like.
    """
    import pyarrow as pa

    if pa.types.is_integer(kind) or pa.types.is_null(kind) or pa.types.is_floating(kind):
        return "matrix", pa.float64()
    if pa.types.is_boolean(kind):
        return "other", None
    return "other", pa.string()


def column_names(path: Path, raw: list[str]) -> list[str]:
    """Header names stripped; an empty one named as pandas does ("Unnamed: 0"); a name given twice refused."""
    names = [str(n).strip() or f"Unnamed: {i}" for i, n in enumerate(raw)]
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column name {shown(name)} appears twice in the header; rename one")
        seen.add(name)
    return names


def _line_bound(path: Path) -> int:
    """At least the number of data rows: the file's line breaks, "\n", "\r\n" or a classic Mac's lone "\r",
    all of which pyarrow ends a row at (quoted line breaks, and a "\r\n" split between blocks, make it larger)."""
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(16 << 20):
            count += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
    return count + 1


def _fill(path: Path, stream, names: list[str], plan) -> tuple[pd.DataFrame, list[int]]:
    """Batches into the float32 matrix (pages past the last row are never touched, so never resident). The
    matrix has its own memory (`buffers.column_matrix`), so the encoding can hand each column back once done."""
    numeric = [i for i, (where, _) in enumerate(plan) if where == "matrix"]
    slot = {i: j for j, i in enumerate(numeric)}
    matrix = column_matrix(_line_bound(path), len(numeric))
    others = {i: [] for i in range(len(plan)) if i not in slot}
    wide, n = set(), 0
    precision = {i: Precision() for i in numeric}
    for batch in stream:
        rows = batch.num_rows
        for i in range(batch.num_columns):
            column = batch.column(i)
            if i in slot:
                values = column.to_numpy(zero_copy_only=False)  # missing cells arrive as NaN
                if values.dtype == np.float64 and np.nanmax(np.abs(values), initial=0.0) > EXACT_FLOAT32:
                    wide.add(i)
                precision[i].add(values)
                matrix[n:n + rows, slot[i]] = values
            else:
                others[i].append(column)
        n += rows
    frame = pd.DataFrame(matrix[:n], columns=[names[i] for i in numeric], copy=False)
    for i, chunks in sorted(others.items()):
        frame.insert(i, names[i], _other_column(chunks, plan[i][1]))
    wide |= {i for i, p in precision.items() if p.lost()}
    return frame, sorted(wide)


class Precision:
    """Whether float32 keeps a numeric column: its values seen a block at a time, the largest rounding error of
    float32 against the column's range. Float32 has 24 bits: at 1.6e9 (a Unix time in seconds) its values lie
    128 apart, so a column of times that differ by seconds would read as constant. A column whose rounding
    error passes `LOST` of its range is read again as float64 (`preprocess.fit_table` then centres it before
    the model's float32)."""

    LOST = 1e-4

    def __init__(self):
        self.low, self.high, self.error = np.inf, -np.inf, 0.0

    def add(self, values: np.ndarray) -> None:
        if values.dtype != np.float64 or not values.size:
            return
        finite = values[np.isfinite(values)]
        if finite.size:
            self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))
            self.error = max(self.error, float(np.abs(finite - finite.astype(np.float32)).max()))

    def lost(self) -> bool:
        return self.high > self.low and self.error > self.LOST * (self.high - self.low)


def _other_column(chunks: list, kind) -> pd.Series | np.ndarray:
    """A text column stripped of surrounding spaces; a boolean one as it is."""
    import pyarrow as pa

    column = pa.chunked_array(chunks, type=pa.string() if kind is not None else (chunks[0].type if chunks else pa.bool_()))
    if kind is not None:
        return column.to_pandas().str.strip()
    return column.to_pandas()
