"""Tables as people have them: CSV (any usual separator, BOM, quoted fields, CRLF, missing-value tokens),
Parquet, and pandas DataFrames.

`read_table` returns a DataFrame with typed columns: a CSV is read in chunks, numeric columns as
float32, so the frame holds about the data's own size.
`table_bundle` picks the target, drops the columns a model should not see, fits the preprocessing
(`preprocess.py`) on the training split and hands the encoded matrix to `data._finish`.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .buffers import hand_back_freed
from .errors import DataError, warn
from .preprocess import drop_reasons, fit_table, named_columns, read_numbers, transform

MISSING_TOKENS = ["NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?", ""]
SEPARATORS = ",;\t|"
CHUNK_ROWS = 32_768  # the parser holds a chunk as text and float64: keep it small against the frame
MAX_COLUMNS = 20_000  # a table's columns; TOOLKIT_MAX_COLUMNS raises it
MAX_COLUMNS_ENV = "TOOLKIT_MAX_COLUMNS"
HEADER_BYTES = 16 << 20  # the longest header line read to count the columns


@dataclass(frozen=True)
class TableOptions:
    """How to read a table: the label column, columns to keep or drop, the CSV separator."""

    target: str | None = None
    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    sep: str | None = None

    @classmethod
    def of(cls, target=None, keep=None, drop=None, sep=None) -> "TableOptions":
        """From the CLI's options (None for an option not given)."""
        return cls(target, tuple(keep or ()), tuple(drop or ()), sep)

    def to_dict(self) -> dict:
        return {"target": self.target, "keep": list(self.keep), "drop": list(self.drop), "sep": self.sep}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "TableOptions":
        raw = raw or {}
        return cls(raw.get("target"), tuple(raw.get("keep") or ()), tuple(raw.get("drop") or ()), raw.get("sep"))

    def merged(self, given: "TableOptions") -> "TableOptions":
        """These (recorded) options, overridden by what a user gave now. A target or separator given empty is
        given (and refused where it is read), not taken for absent."""
        return TableOptions(self.target if given.target is None else given.target, given.keep or self.keep,
                            given.drop or self.drop, self.sep if given.sep is None else given.sep)


def read_table(path: Path, sep: str | None = None) -> pd.DataFrame:
    """Read a `.csv` or `.parquet` file into a DataFrame with typed columns (numbers as float32)."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    sep = separator(sep) or sniff(path)
    check_width(path, sep)
    _check_ragged(path, sep)
    from .csvread import ArrowUnreadable, read_csv_arrow

    try:
        frame = read_csv_arrow(path, sep, MISSING_TOKENS)
    except ArrowUnreadable:
        # pyarrow refuses what pandas reads or reports better: bytes that are not UTF-8, a column that is
        # numeric in the first block and text later, an empty file. pandas gives the established messages.
        frame = _read_csv_pandas(path, sep)
    frame.attrs["sep"] = sep  # how its numbers are written depends on it (`preprocess.number_format`)
    return frame


def _read_csv_pandas(path: Path, sep: str) -> pd.DataFrame:
    """The slower reader (rows pass through Python objects in each chunk), for files pyarrow cannot read."""
    try:
        chunks = pd.read_csv(path, sep=sep, encoding="utf-8-sig", na_values=MISSING_TOKENS, keep_default_na=True,
                             skipinitialspace=True, chunksize=CHUNK_ROWS, low_memory=False)
        frame = pd.concat([_compact(c) for c in chunks], ignore_index=True, copy=False)
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: {str(exc).splitlines()[-1].replace('C error: ', '')}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header row and data rows") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _compact(chunk: pd.DataFrame) -> pd.DataFrame:
    """Numbers as float32 (half the bytes of pandas' float64) where float32 keeps them, text stripped of
    surrounding spaces."""
    from .csvread import Precision

    for name in chunk.columns:
        column = chunk[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            precision = Precision()  # a chunk's column that float32 would lose stays float64 (concat keeps it so)
            precision.add(column.to_numpy(dtype=np.float64, na_value=np.nan))
            if not (pd.api.types.is_integer_dtype(column) and column.abs().max() > 2**24) and not precision.lost():
                chunk[name] = column.astype(np.float32)
        elif column.dtype == object:
            chunk[name] = column.str.strip() if hasattr(column, "str") else column
    return chunk


def separator(sep: str | None) -> str | None:
    """A CSV separator as given: one character; `\\t` (as a shell passes a typed backslash-t) and `tab` mean a
    tab. Anything else is one DataError line."""
    if sep is None:
        return None
    sep = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)
    if len(sep) != 1 or sep in "\"\r\n":
        raise DataError(f"--sep must be one character (or \\t for a tab), got {sep!r}")
    return sep


def sniff(path: Path) -> str:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            sample = handle.read(1 << 16)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    try:
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        return ","


def _check_ragged(path: Path, sep: str) -> None:
    """A line with fewer fields than the header would be filled with missing values silently: refuse it."""
    if path.stat().st_size > 64 << 20:  # pandas still refuses lines with too many fields
        return
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=sep)
        width = None
        try:
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields, the header has {width} "
                                    f"(separator {sep!r}; force another with --sep)")
        except csv.Error as exc:  # a field over csv's limit (128 KB), a NUL byte
            raise DataError(f"{path}: line {reader.line_num}: {exc}") from None


def max_columns() -> int:
    """The most columns a table may have: MAX_COLUMNS, or TOOLKIT_MAX_COLUMNS when set."""
    from .options import env_limit

    return env_limit(MAX_COLUMNS_ENV, MAX_COLUMNS, "columns")


def _refuse_width(path: Path, count: int) -> None:
    if count > max_columns():
        raise DataError(f"{path}: {count:,} columns, more than the limit of {max_columns():,} (set {MAX_COLUMNS_ENV} "
                        "to allow more)")


def check_width(path: Path, sep: str) -> None:
    """Count the header's columns before parsing: a 1.5 MB CSV of 100,000 columns and 4 rows took 3 minutes
    and 2.2 GB to be refused for having 4 rows (each column is a parsed, typed, converted object); one of a
    million columns ran out of time. The header line is read up to HEADER_BYTES."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            line = handle.readline(HEADER_BYTES)
    except (OSError, UnicodeDecodeError):
        return  # the readers give their own message for a file they cannot read
    if len(line) >= HEADER_BYTES and not line.endswith("\n"):
        raise DataError(f"{path}: the header line is longer than {HEADER_BYTES >> 20} MB")
    _refuse_width(path, line.count(sep) + 1)  # an upper bound: quoted separators count too


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file, after its decoded size is counted against the data budget (`_decoded_bytes`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .data import MAX_DATA_BYTES_ENV, data_budget

    try:
        schema = parquet_schema(path)
        if _decoded_bytes(path, schema, data_budget()) > data_budget():
            raise DataError(f"{path}: its columns decode to more than {data_budget():,} bytes (set "
                            f"{MAX_DATA_BYTES_ENV} to allow more)")
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None
    return table.to_pandas()


def parquet_schema(path: Path):
    """A Parquet file's schema; a nested column is one DataError line (its cells are no feature values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None
    for field in schema:
        if pa.types.is_nested(field.type):
            raise DataError(f"{path}: column '{field.name}' has nested type {field.type}; "
                            "flatten it to plain columns first")
    return schema


def text_columns(schema) -> list[str]:
    """The columns of a Parquet schema holding text or bytes (read as dictionaries to count them undecoded)."""
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]


def decoded_bytes(batch) -> int:
    """The bytes a pyarrow batch takes once decoded; a dictionary column counted as the dictionary's lengths
    taken by the indices, without decoding it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for column in batch.columns:
        for chunk in getattr(column, "chunks", [column]):   # a table's columns are chunked, a batch's are not
            if pa.types.is_dictionary(chunk.type):
                lengths = pc.binary_length(chunk.dictionary).take(chunk.indices)
                total += int(pc.sum(lengths).as_py() or 0) + 8 * len(chunk)
            else:
                total += chunk.nbytes
    return total


def _decoded_bytes(path: Path, schema, stop: int) -> int:
    """The bytes `path`'s columns take once decoded, counted a batch at a time (stops past `stop`), without
    decoding its text: a 49 KB file holding one 10,000-character string a million times (dictionary-encoded,
    which Parquet's metadata does not show) decodes to 10 GB. Text columns are read as dictionaries, and their
    decoded length is the dictionary's lengths taken by the indices."""
    import pyarrow.parquet as pq

    _refuse_width(path, len(schema.names))
    total = 0
    with pq.ParquetFile(path, read_dictionary=text_columns(schema)) as parquet:
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            total += decoded_bytes(batch)
            if total > stop:
                break
    return total


def _numeric_labels(labels: pd.Series):
    """Class indices and names of a numeric label column, without a Python object per row (None: not numeric).

    The same classes as `data._encode_labels` on the text ('1' and '1.0' are one class, numeric order)."""
    if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        return None
    if pd.api.types.is_integer_dtype(labels):  # as integers: float64 merged 2**53 and 2**53 + 1 into one class
        values, y = np.unique(labels.to_numpy(dtype=np.uint64 if labels.dtype.kind == "u" else np.int64),
                              return_inverse=True)
        return y.reshape(-1).astype(np.int64), [str(v) for v in values.tolist()]
    numbers = labels.to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        return None
    values, y = np.unique(numbers, return_inverse=True)
    # A label read as float32 (the CSV reader's numbers) is named by float32's shortest text: -2.3, not
    # -2.299999952316284 (float64's text of the same value).
    text = (lambda v: str(np.float32(v))) if labels.dtype == np.float32 else str
    return y.astype(np.int64), [str(int(v)) if v == int(v) else text(v) for v in values]


def _label_text(labels: pd.Series) -> list[str]:
    """Labels as text; whole numbers read as floats (1.0) are written as integers (1)."""
    if pd.api.types.is_numeric_dtype(labels):
        values = labels.to_numpy(dtype=np.float64)
        if np.all(values == np.round(values)):
            return [str(int(v)) for v in values]
    return [str(v).strip() for v in labels.tolist()]


def _warn_of_case_twins(class_names: list[str], where: str, target: str) -> None:
    """One warning line where two classes differ only in letter case ('Yes' and 'yes'): two classes they stay
    (a label is a value), but a typo usually made them."""
    seen: dict[str, str] = {}
    for name in class_names:
        twin = seen.setdefault(name.casefold(), name)
        if twin != name:
            warn(f"{where}: labels '{twin}' and '{name}' in column '{target}' are two classes; if they are one, "
                 "write them alike")
            return


def _is_number(name) -> bool:
    try:
        float(str(name))
        return True
    except ValueError:
        return False


def _last_filled(frame: pd.DataFrame) -> str:
    """The default target: the last column with a value in it. A line ending in a separator adds an empty
    last column (as a spreadsheet's export often does); it is dropped as constant, never taken for the label."""
    for name in reversed(frame.columns):
        if not frame[name].isna().all():
            return str(name)
    return str(frame.columns[-1])


def load_for_model(data, spec, *, table: TableOptions | None = None, seed: int = 0):
    """`load_data` for a trained model: its recorded target, columns and fitted preprocessing reused, and the
    train/validation/test split it was trained with, so its test rows are rows it never trained on.

    Args:
        data: what `load_data` takes.
        spec: the model's `ModelSpec`; a model trained on a table recorded how the table was read.
        table: options a user gave now; they override the recorded ones.
        seed: the split's seed for a model that records none (a user's own model); a recorded one wins.
    """
    from .data import DataBundle, load_data

    if isinstance(data, DataBundle):
        return data
    recorded = ((spec.data or {}).get("split") or {}).get("seed")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        seed = recorded
    from .images import IMAGE_SIZE_RANGE

    shape = tuple(spec.input_shape)
    if (isinstance(data, (str, Path)) and Path(data).is_dir() and len(shape) == 3 and shape[1] == shape[2]
            and IMAGE_SIZE_RANGE[0] <= shape[1] <= IMAGE_SIZE_RANGE[1]):
        return load_data(data, seed=seed, image_size=shape[1])  # a folder of images, at the model's size
    fitted = spec.preprocessing.get("table")
    given = table or TableOptions()
    if fitted is None:
        return load_data(data, seed=seed, table=given)
    recorded = TableOptions.from_dict(fitted.get("read"))
    _refuse_another_reading(recorded, given)
    return load_data(data, seed=seed, table=recorded.merged(given), fitted=fitted)


def _refuse_another_reading(recorded: TableOptions, given: TableOptions) -> None:
    """A trained model's columns and encoding are fixed by its training: a target, --keep or --drop other than
    the recorded one cannot take effect (a drop was ignored, a target read as a missing column), so it is one
    line naming the difference, as a --keep of no column is. The recorded ones given again are welcome."""
    if given.target not in (None, "") and given.target != recorded.target:  # an empty one: refused where read
        raise DataError(f"--target '{given.target}' differs from the model's recorded target '{recorded.target}'; "
                        "compress and explain read the table as training did: leave --target out")
    for flag, now, then in (("--keep", given.keep, recorded.keep), ("--drop", given.drop, recorded.drop)):
        if now and set(now) != set(then):
            at_training = ", ".join(map(repr, then)) if then else "none"
            raise DataError(f"{flag} {', '.join(map(repr, now))} differs from the model's training ({flag} "
                            f"{at_training}): compress and explain read the table as training did; leave {flag} "
                            "out, or train again with it")


def table_bundle(frame, options: TableOptions, *, name: str, source: str, seed: int, fitted: dict | None = None):
    """A DataBundle from a raw table: target, dropped columns, preprocessing fitted on the training split
    (or the `fitted` preprocessing of a trained model, applied as it is).

    `frame` is a DataFrame, or a function that reads one: then the frame is freed once encoded, and the
    encoded rows are written in split order, so the splits are views; the frame's columns are handed back as
    they are encoded (`preprocess.transform`, `consume`), so the peak stays near one copy of the data.
    """
    from . import data

    owned = callable(frame)
    if owned:
        frame = frame()
    else:
        frame = frame.copy(deep=False)  # the target is popped below; the user's frame stays as it is
    where = source or "table"
    frame = named_columns(frame, where)
    if fitted is None and len(frame.columns) > 1 and all(_is_number(c) for c in frame.columns):
        warn(f"{where}: every column name is a number ({', '.join(map(str, frame.columns[:3]))}, ...): if the file "
             "has no header row, its first row was read as one; add a header line")
    if len(frame) == 0:
        raise DataError(f"{where}: needs a header row and at least one data row")
    if frame.shape[1] < 2:
        raise DataError(f"{where}: needs a label column and at least one feature column, found "
                        f"{frame.shape[1]} column(s) (wrong separator? force it with --sep)")
    target = str(options.target) if options.target is not None else _last_filled(frame)
    if target not in frame.columns:
        raise DataError(f"{where}: target column '{target}' not found; columns are {', '.join(map(str, frame.columns))}")
    for col in (*options.keep, *options.drop):
        if col not in frame.columns or col == target:
            raise DataError(f"{where}: column '{col}' given to --keep/--drop is not a feature column")
    labels = frame.pop(target)
    if labels.isna().any():
        line = int(np.flatnonzero(labels.isna().to_numpy())[0]) + 2
        raise DataError(f"{where}: missing label in target column '{target}' (line {line}); drop those rows")
    y, class_names = _numeric_labels(labels) or data._encode_labels(_label_text(labels))
    _warn_of_case_twins(class_names, where, target)
    if len(class_names) < 2 or len(class_names) > len(y) / 2:
        raise DataError(f"{where}: target column '{target}' has {len(class_names)} classes in {len(y)} rows; "
                        "a classifier needs 2 or more classes and at most rows/2 (wrong --target?)")
    features = frame
    del frame, labels
    hand_back_freed()  # encoding the labels leaves freed blocks behind (np.unique), and so does the split
    split = data.split_indices(y, seed)
    order = np.concatenate(split)
    hand_back_freed()
    if fitted is None:
        formats = read_numbers(features, features.attrs.get("sep", options.sep))
        for column, fmt in formats.items():
            if fmt["missing"]:
                warn(f"{where}: column '{column}' is numbers but for the text "
                     f"{', '.join(map(repr, fmt['missing']))}, read as missing cells")
        dropped = {k: v for k, v in drop_reasons(features, y).items() if k not in options.keep}
        dropped.update({c: "dropped with --drop" for c in options.drop})
        if len(dropped) == features.shape[1]:
            raise DataError(f"{where}: no feature columns left after dropping {', '.join(map(str, dropped))} "
                            "(ID-like or constant); keep one with --keep COL")
        found = [f"{name} ({reason})" for name, reason in dropped.items() if name not in options.drop]
        if found:  # the toolkit's own decision: said once, at training (model.json and the report keep it)
            print(f"note: {where}: dropped column(s) {', '.join(found)}; keep one with --keep COL", file=sys.stderr)
        table = fit_table(features, split[0], dropped, formats)
        table["read"] = {**options.to_dict(), "target": target}
    else:
        table = fitted
    x = transform(table, features, where, order, consume=owned)
    del features
    hand_back_freed()  # what dropping, fitting and encoding freed (30 MiB at 1M x 50)
    bundle = data._finish(name, source, x, y[order], None, None, class_names, table["outputs"], seed,
                          presplit=[len(s) for s in split], constant="centre")
    bundle.table = table
    hand_back_freed()  # and the statistics' blocks: training starts from what the data holds
    return bundle
