"""A CSV table read by pyarrow's multithreaded reader straight into typed columns.

Numeric columns land in one preallocated float32 matrix (column-major, so each column is contiguous and
pandas holds the matrix as one block without a copy); each arrow column is freed once copied, so the peak
is about one float32 copy of the data plus the block being converted. Text, boolean and large-integer
columns stay their own pandas columns, at their place in the file's column order.

Measured on a 2.4M-row x 10-column CSV (docs/results.md): the pandas chunked reader peaks at about
14x the file's float32 size because every cell of a chunk passes through Python objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

EXACT_FLOAT32 = 2**24  # integers beyond it lose digits in float32 (an ID column would stop being unique)


class ArrowUnreadable(Exception):
    """pyarrow cannot read this file; the caller falls back to the pandas reader."""


def read_csv_arrow(path: Path, sep: str, missing: list[str]) -> pd.DataFrame:
    """Read `path` (UTF-8, a header row; a BOM is skipped) with separator `sep`; `missing` cells become NaN.

    Raises:
        ArrowUnreadable: pyarrow refused the file (see `tables.read_table`).
        DataError: a ragged line (pyarrow names its text, not its number: the file is too large for the
            line-numbering pass in `tables._check_ragged`).
    """
    import pyarrow as pa
    from pyarrow import csv

    from pandas._libs.parsers import STR_NA_VALUES

    ragged = []

    def on_ragged(row):
        ragged.append(row)
        return "error"

    nulls = sorted(set(missing) | set(STR_NA_VALUES))
    parse = csv.ParseOptions(delimiter=sep, newlines_in_values=True, invalid_row_handler=on_ragged)
    read = csv.ReadOptions(block_size=4 << 20)
    pool = pa.system_memory_pool()  # malloc returns large freed buffers to the system at once
    try:
        first = _first_block_types(path, read, parse, nulls, pool)
        # Floats parse straight to float32 (half of arrow's default float64); dates and times stay the text
        # they were, as with pandas, so they are encoded as categories or found ID-like.
        types = {name: (pa.float32() if pa.types.is_floating(t) else pa.string())
                 for name, t in first.items() if pa.types.is_floating(t) or _is_temporal(t)}
        convert = csv.ConvertOptions(null_values=nulls, strings_can_be_null=True, quoted_strings_can_be_null=True,
                                     column_types=types)
        table = csv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert, memory_pool=pool)
    except pa.ArrowInvalid as exc:
        if ragged:
            row = ragged[0]
            raise DataError(f"{path}: a line has {row.actual_columns} fields, the header has {row.expected_columns} "
                            f"({row.text[:60]!r}; separator {sep!r}, force another with --sep)") from None
        raise ArrowUnreadable(str(exc)) from None
    except (pa.ArrowException, OSError) as exc:
        raise ArrowUnreadable(str(exc)) from None
    return _to_frame(path, table)


def _first_block_types(path: Path, read, parse, nulls, pool) -> dict:
    """Column types pyarrow infers from the file's first block."""
    from pyarrow import csv

    convert = csv.ConvertOptions(null_values=nulls, strings_can_be_null=True, quoted_strings_can_be_null=True)
    with csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert,
                      memory_pool=pool) as stream:
        return {field.name: field.type for field in stream.schema}


def _is_temporal(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_temporal(kind) or pa.types.is_decimal(kind)


def _to_frame(path: Path, table) -> pd.DataFrame:
    """Arrow table -> DataFrame: numeric columns copied into one float32 matrix, each freed once copied."""
    names = [str(n).strip() or f"Unnamed: {i}" for i, n in enumerate(table.column_names)]
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column name '{name}' appears twice in the header; rename one")
        seen.add(name)
    kinds = [_kind(table.column(i)) for i in range(table.num_columns)]
    numeric = [i for i, k in enumerate(kinds) if k == "float32"]
    matrix = np.empty((table.num_rows, len(numeric)), dtype=np.float32, order="F")
    others = {}
    slot = {i: j for j, i in enumerate(numeric)}
    for i in range(len(names)):
        column = table.column(0)
        table = table.remove_column(0)  # the arrow column is freed when `column` goes
        if i in slot:
            _copy_into(column, matrix[:, slot[i]])
        else:
            others[i] = _other_column(column, kinds[i])
        del column
    frame = pd.DataFrame(matrix, columns=[names[i] for i in numeric], copy=False)
    for i, values in sorted(others.items()):
        frame.insert(i, names[i], values)
    return frame


def _kind(column) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_floating(kind) or pa.types.is_null(kind):
        return "float32"
    if pa.types.is_integer(kind):
        if column.null_count == len(column):
            return "float32"
        low, high = pc.min_max(column).values()
        return "float32" if max(abs(low.as_py()), abs(high.as_py())) <= EXACT_FLOAT32 else "int"
    if pa.types.is_boolean(kind):
        return "bool"
    return "text"


def _copy_into(column, target: np.ndarray) -> None:
    """An arrow column (float, integer or all-null) into a float32 slot; missing cells become NaN."""
    import pyarrow as pa

    start = 0
    for chunk in column.chunks:
        n = len(chunk)
        if pa.types.is_null(chunk.type):
            target[start:start + n] = np.nan
        else:
            target[start:start + n] = chunk.to_numpy(zero_copy_only=False)  # nulls arrive as NaN
        start += n


def _other_column(column, kind: str):
    """A text column stripped of surrounding spaces; booleans and large integers as they are."""
    if kind == "text":
        values = column.cast("string").to_pandas()
        return values.str.strip()
    if kind == "int" and column.null_count == 0:
        return column.to_numpy()
    return column.to_pandas()
