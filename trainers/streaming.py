"""Predictions streamed through a file: raw rows read a chunk at a time, each chunk preprocessed and predicted
as one block (calls of the batch size), its predictions written before the next chunk is read.

Why: `toolkit predict` on a 1M-row CSV ran 3.2-4.3x slower than 20 lines of pandas and ONNX Runtime, and its
memory grew with the file. Most of the time went to pandas work on every 256-row call (selecting, checking and
converting the columns again per call), and the whole table, its logits and the whole output CSV (one string)
were held at once. Here the columns are converted once per chunk of `CHUNK_ROWS` rows, and memory is bounded by
the chunk, not the file.

A chunk holds a whole number of calls (a multiple of the batch size, but for the last), so the calls, and the
answers of a model whose answer depends on its call (int8-dynamic), are those of the file read at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from .errors import DataError, warn

if TYPE_CHECKING:
    import pandas as pd

CHUNK_ROWS = 65_536  # rows read, preprocessed and written as one block: about 20 MB of a 40-column table
# Rows per call where none is given, for `trainers.predict` and `toolkit predict` alike, and the batch compress
# measures accuracy at (`compress.measure.EVAL_BATCH`): an int8-dynamic graph quantizes each call's activations
# with that call's own scale, so one row's answer depends on the rows sharing its call, and two entry points with
# their own defaults (1024 and 256) gave one row of 800 two classes. Here, where `toolkit predict --help` reads it
# without importing torch.
PREDICT_BATCH = 256


class Unstreamable(Exception):
    """The streaming CSV reader cannot read this file as the whole-file reader does; the caller reads it whole."""


def chunk_rows(batch_size: int) -> int:
    """Rows per chunk: a whole number of calls of `batch_size`, at least one."""
    return max(batch_size, CHUNK_ROWS // batch_size * batch_size)


def sliced(x, rows: int) -> Iterator:
    """`x` (an array or a DataFrame) in consecutive blocks of `rows` rows."""
    for start in range(0, len(x), rows):
        yield x.iloc[start:start + rows] if hasattr(x, "iloc") else x[start:start + rows]


def table_chunks(path: Path, table: dict, rows: int) -> Iterator[pd.DataFrame]:
    """A table file's raw rows, `rows` at a time, with the columns the fitted `table` encodes.

    A CSV (`csv_chunks`) or Parquet file (`parquet_chunks`) is streamed; where that reader gives up (for a CSV
    a ragged line, text in a column its first block read as numbers, bytes that are not UTF-8, an empty file;
    for either a column the model needs that the file lacks), even midway, the file is read whole by
    `tables.read_table`, so the established messages and fallbacks apply, and the rows not yet given follow
    from there.
    """
    from .tables import read_table

    sep = (table.get("read") or {}).get("sep")
    given = 0
    reader = {".csv": lambda: csv_chunks(path, table, sep, rows),
              ".parquet": lambda: parquet_chunks(path, table, rows)}.get(path.suffix.lower())
    if reader is not None:
        try:
            for chunk in reader():
                yield chunk
                given += len(chunk)
            return
        except Unstreamable:
            pass
    yield from sliced(read_table(path, sep).iloc[given:], rows)


def parquet_chunks(path: Path, table: dict, rows: int) -> Iterator[pd.DataFrame]:
    """A Parquet file's rows `rows` at a time, only the columns `table` encodes, typed as the whole-file reader
    types them (`tables._read_parquet`: pyarrow's own conversion). The whole-file reader holds the file and
    counts its decoded size against the data budget first; here each block is counted before it is decoded
    (`tables.decoded_bytes`: text read as dictionaries, so a cell repeated a million times is counted, not
    made), so a file of any length streams in the memory of one chunk. Raises Unstreamable where a column is
    missing (the whole-file reader's message names it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .data import MAX_DATA_BYTES_ENV, data_budget
    from .tables import decoded_bytes, parquet_schema, text_columns

    schema = parquet_schema(path)
    used = [name for name in schema.names if name in {step["column"] for step in table["steps"]}]
    if len(used) < len({step["column"] for step in table["steps"]}):
        raise Unstreamable()
    text = [name for name in text_columns(schema) if name in used]

    def frame(block: "pa.Table") -> pd.DataFrame:
        if decoded_bytes(block) > data_budget():
            raise DataError(f"{path}: {block.num_rows:,} of its rows decode to more than {data_budget():,} bytes "
                            f"(set {MAX_DATA_BYTES_ENV} to allow more)")
        plain = [pc.cast(column, column.type.value_type) if pa.types.is_dictionary(column.type) else column
                 for column in block.columns]
        return pa.table(plain, names=block.column_names).to_pandas()

    try:
        with pq.ParquetFile(path, read_dictionary=text) as parquet:
            yield from regrouped(parquet.iter_batches(batch_size=rows, columns=used), rows, frame)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None


def regrouped(batches: Iterable, rows: int, frame) -> Iterator[pd.DataFrame]:
    """pyarrow record batches (of any lengths) as `frame`s of exactly `rows` rows, but for the last."""
    import pyarrow as pa

    pending, count = [], 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            block = pa.Table.from_batches(pending)
            yield frame(block.slice(0, rows))
            pending, count = block.slice(rows).to_batches(), count - rows
    if count:
        yield frame(pa.Table.from_batches(pending))


def csv_chunks(path: Path, table: dict, sep: str | None, rows: int) -> Iterator[pd.DataFrame]:
    """A CSV's rows `rows` at a time, as `csvread.read_csv_arrow` types them (the first block's types: numbers
    as float32, text stripped), but only the columns `table` encodes, and without a pass over the whole file.

    A column centred in float64 at training (`offset`) stays float64 (the whole-file reader keeps float64 only
    where this file's own values need it). Raises Unstreamable where `table_chunks` must read the file whole.
    """
    import pandas as pd
    import pyarrow as pa
    from pandas._libs.parsers import STR_NA_VALUES

    from .csvread import column_names, column_plan, open_stream
    from .tables import MISSING_TOKENS, check_width, separator, sniff

    sep = separator(sep) or sniff(path)
    check_width(path, sep)
    nulls, ragged = sorted(set(MISSING_TOKENS) | set(STR_NA_VALUES)), []
    try:
        first = open_stream(path, sep, nulls, {}, ragged)
        inferred = list(zip(first.schema.names, first.schema.types))
        first.close()
    except (pa.ArrowException, OSError):
        raise Unstreamable() from None
    used = {step["column"] for step in table["steps"]}
    wide = {step["column"] for step in table["steps"] if "offset" in step}
    names = column_names(path, [n for n, _ in inferred])
    keep = [(raw, name, column_plan(kind)[1]) for (raw, kind), name in zip(inferred, names) if name in used]
    if not keep:
        raise Unstreamable()
    try:
        stream = open_stream(path, sep, nulls, {raw: kind for raw, _, kind in keep if kind is not None}, ragged,
                             include=[raw for raw, _, _ in keep])
    except (pa.ArrowException, OSError):
        raise Unstreamable() from None

    def frame(block: "pa.Table") -> pd.DataFrame:
        columns = {}
        for (_, name, kind), column in zip(keep, block.columns):
            if kind is not None and pa.types.is_floating(kind):  # missing cells are NaN
                values = column.to_numpy()
                columns[name] = values if name in wide else values.astype(np.float32)
            elif kind is not None:
                columns[name] = column.to_pandas().str.strip()
            else:
                columns[name] = column.to_pandas()
        return pd.DataFrame(columns, copy=False)

    def batches():
        with stream:
            while True:
                try:
                    yield stream.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowException, OSError):
                    raise Unstreamable() from None

    yield from regrouped(batches(), rows, frame)


class UnseenLevels:
    """Levels training never saw, gathered over a file's chunks and named once per column at the end."""

    def __init__(self, table: dict | None):
        self.table, self.found = table, {}

    def add(self, frame) -> None:
        if self.table is not None and hasattr(frame, "columns"):
            from .preprocess import unseen_levels

            for column, levels in unseen_levels(self.table, frame).items():
                self.found.setdefault(column, set()).update(levels)

    def warn(self) -> None:
        for column, levels in self.found.items():
            levels = sorted(levels)
            shown = ", ".join(map(repr, levels[:3])) + (f" and {len(levels) - 3} more" if len(levels) > 3 else "")
            warn(f"column '{column}' holds levels training never saw ({shown}); they are encoded as no known level")


class Tally:
    """The prediction tables passed through, counted (rows, classes), and kept where `keep` asks (the JSON of
    `toolkit predict --json` without --out holds every prediction)."""

    def __init__(self, tables: Iterable[pd.DataFrame], keep: bool = False):
        self.tables, self.keep, self.kept, self.rows, self._counts = tables, keep, [], 0, {}

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for table in self.tables:
            self.rows += len(table)
            for name, count in table["predicted"].value_counts(sort=False).items():
                self._counts[name] = self._counts.get(name, 0) + int(count)
            if self.keep:
                self.kept.append(table)
            yield table

    def counts(self) -> dict[str, int]:
        """Rows per predicted class, the most frequent first."""
        return dict(sorted(self._counts.items(), key=lambda item: -item[1]))

    def records(self) -> list[dict]:
        import pandas as pd

        return pd.concat(self.kept, ignore_index=True).to_dict(orient="records") if self.kept else []


# What `--out` writes, by its suffix: any other suffix is refused before any work (a `.parquet`, `.json` or
# `.npz` name was written as CSV text, and the reader of that file failed later).
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", "": "csv", ".parquet": "parquet"}
PARQUET_MARK = {b"toolkit": b"predictions"}  # in the Parquet file's metadata: the toolkit wrote these predictions


def output_format(out: Path) -> str:
    """csv, tsv or parquet, from `out`'s suffix; any other suffix is one ToolkitError line."""
    from .errors import ToolkitError

    kind = OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if kind is None:
        raise ToolkitError(f"--out {out}: predictions are written as .csv, .tsv or .parquet, not "
                           f"{Path(out).suffix}; name the file with one of those")
    return kind


def write_table_file(tables: Iterable[pd.DataFrame], handle, kind: str) -> None:
    """The prediction tables as one file of `kind` (`output_format`) on the binary `handle`."""
    if kind == "parquet":
        return write_parquet(tables, handle)
    write_csv(tables, handle, "\t" if kind == "tsv" else ",")


def write_csv(tables: Iterable[pd.DataFrame], handle, sep: str = ",") -> None:
    """The prediction tables as one CSV on the binary `handle`: the header once, then each table's rows.

    Why Arrow's writer: pandas' `to_csv` was half the time of `toolkit predict` on a 1M-row CSV (3.7 of 7.4 s),
    and a 20-line pyarrow script beat the toolkit 1.4-2.6x. The text is pandas' own but for numbers, Arrow's
    shortest text of the same float32 (`6.1125434e-7` and `1`, where pandas wrote `6.1125434e-07` and `1.0`):
    the header comes from pandas, missing probabilities are empty cells, and a chunk with a text cell that needs
    quotes (a class or file name holding the separator, a quote or a line break) is written by pandas, which
    quotes only that cell (Arrow quotes every text cell, or with "none" refuses the chunk).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, delimiter=sep, quoting_style="none")
    for i, table in enumerate(tables):
        if i == 0:
            handle.write(table.iloc[:0].to_csv(index=False, sep=sep).encode("utf-8"))
        try:
            arrow = pa.Table.from_pandas(table, preserve_index=False)  # NaN -> null: an empty cell, as pandas
        except (pa.ArrowException, TypeError, ValueError):  # a column Arrow cannot type (mixed objects)
            arrow = None
        if arrow is not None and len(arrow):
            sink = pa.BufferOutputStream()
            try:
                pacsv.write_csv(arrow, sink, options)
            except pa.ArrowInvalid:  # a cell that needs quotes ("none" refuses, rather than quote them all)
                arrow = None
            else:
                handle.write(sink.getvalue())
        if arrow is None:
            handle.write(table.to_csv(index=False, header=False, sep=sep).encode("utf-8"))


def write_parquet(tables: Iterable[pd.DataFrame], handle) -> None:
    """The prediction tables as one Parquet file on the binary `handle`, a row group per table, marked as the
    toolkit's (`PARQUET_MARK`), so `--overwrite` may replace it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for table in tables:
            if writer is None:  # typed from the names: a table of no rows has no values to type its text by
                schema = pa.schema([(name, pa.string() if name in ("file", "predicted") else pa.int64()
                                     if name == "predicted_index" else pa.float32()) for name in table.columns],
                                   metadata=PARQUET_MARK)
                writer = pq.ParquetWriter(handle, schema)
            writer.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False))
    finally:
        if writer is not None:
            writer.close()


def written_parquet(path: Path) -> bool:
    """Whether `path` is a Parquet file of predictions the toolkit wrote (`PARQUET_MARK`)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - not Parquet, or unreadable: not ours either way
        return False
    return all(metadata.get(key) == value for key, value in PARQUET_MARK.items())
