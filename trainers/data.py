"""Load data per the data contract: built-in sets, `.npz`, tables (`.csv`, `.parquet`, DataFrames, see
`tables.py`), images (`images.py`) and arrays from Python.

Every loader ends in `_finish`, which validates the arrays once, splits them
(stratified, seeded) and computes the training-split normalisation and the
fingerprint. Arrays stay raw (unnormalised): the statistics travel with the
model, whose first layer applies them.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, shown
from .fileio import check_regular_file

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
LAYOUTS = {1: "features", 2: "signal", 3: "image"}
TEST_FRACTION = 0.2
VAL_FRACTION = 0.15
# What a data file may inflate to (checked from the zip directory before reading): a small file must not
# exhaust memory. TOOLKIT_MAX_DATA_BYTES raises it for genuinely large data.
MAX_DATA_BYTES = 4 << 30
MAX_DATA_BYTES_ENV = "TOOLKIT_MAX_DATA_BYTES"
# The confusion matrix and the per-class reports are k x k and k-long.
MAX_CLASSES = 1000


@dataclass(repr=False)
class DataBundle:
    """Train/validation/test splits plus everything a model needs to know about them.

    Attributes:
        name: the built-in name or the file name the data came from.
        x_*/y_*: float32 inputs of shape (N, *input_shape) and int64 labels; the inputs of a `.npy` file are
            `images.RowView`s of its memory map, read when indexed (`np.asarray` reads a whole split).
        input_shape: per-sample shape, channels first.
        layout: "features" (F,), "signal" (C, L) or "image" (C, H, W).
        mean, std: per-feature (layout features) or per-channel statistics of
            the training split, shaped to broadcast against one sample.
        constant_columns: features of an array that are constant in the training split (std 1 here): training
            refuses them (`refuse_constant_columns`); a model of the user's own takes its inputs as they are.
        fingerprint: sha256 of the raw arrays, recorded with every model.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    feature_names: list[str] | None
    input_shape: tuple[int, ...]
    layout: str
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str
    source: str = ""
    split: dict = field(default_factory=dict)
    table: dict | None = None  # the fitted preprocessing of a table (preprocess.py), None for arrays
    from_images: bool = False  # read from a folder of images (pixels scaled to [0, 1]), recorded with the model
    constant_columns: tuple[int, ...] = ()

    @classmethod
    def from_arrays(cls, x, y, *, x_test=None, y_test=None, class_names=None, feature_names=None,
                    name: str = "arrays", seed: int = 0) -> "DataBundle":
        """A bundle from NumPy arrays (or anything `np.asarray` takes): x (N, ...) and labels y (N,), integers or
        text. A DataFrame's column names are the feature names unless `feature_names` is given."""
        if feature_names is None and type(x).__name__ == "DataFrame":
            feature_names = [str(c) for c in x.columns]
        return _finish(name, f"arrays:{name}", x, y, x_test, y_test, class_names, feature_names, seed)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def __repr__(self) -> str:  # each name shown is an attribute holding that value
        from .display import short_repr

        return short_repr("DataBundle", name=self.name, input_shape=tuple(self.input_shape), layout=self.layout,
                          num_classes=self.num_classes, n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)

    def summary(self) -> dict:
        """Plain-data description, as recorded in model.json and result.json."""
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "input_shape": list(self.input_shape),
            "layout": self.layout,
            "num_classes": self.num_classes,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "split": self.split,
        }


def absolute_source(source) -> str | None:
    """A data source as a command line takes it again from any directory: a file path made absolute (a built-in
    name, or a source that is no path, unchanged)."""
    if not isinstance(source, str) or not source or source.startswith("builtin:") or not Path(source).exists():
        return source
    return str(Path(source).resolve())


def load_data(spec, *, target: str | None = None, seed: int = 0, table=None, fitted: dict | None = None,
              image_size: int | None = None) -> DataBundle:
    """Load a data set from a built-in name, a file, a folder of images, arrays or a DataFrame.

    Args:
        spec: `digits`, `iris`, `wine`, `breast_cancer`; a `.npz`, `.npy`, `.csv` or `.parquet` path; a
            folder with one sub-folder of images per class; an `(x, y)` pair of arrays; a pandas DataFrame.
        target: label column of a table (default: the last column).
        seed: seed of the stratified train/validation/test split.
        table: `tables.TableOptions` (target, columns to keep or drop, CSV separator); `target` overrides
            its target.
        fitted: a trained model's table preprocessing, applied instead of fitting one (`tables.load_for_model`).
        image_size: resize a folder's images to this many pixels square (default: TOOLKIT_IMAGE_SIZE when set,
            else the images must share one size); refused for data that is not an image folder.

    Raises:
        DataError: with a one-line message for anything unusable.
    """
    from .tables import TableOptions, read_table, table_bundle

    options = table or TableOptions()
    if target is not None:
        options = TableOptions(target, options.keep, options.drop, options.sep)
    if image_size is not None and not isinstance(spec, (str, Path)):
        raise DataError(f"image size {image_size} resizes the images of a folder; "
                        f"{type(spec).__name__} data is not one")
    table_like = type(spec).__name__ == "DataFrame" or (
        isinstance(spec, (str, Path)) and Path(str(spec)).suffix.lower() in (".csv", ".parquet"))
    if not table_like and fitted is None and (options.target is not None or options.keep or options.drop
                                              or options.sep is not None):  # `--sep ''` is given too
        given = [flag for flag, value in (("--target", options.target), ("--keep", options.keep),
                                          ("--drop", options.drop), ("--sep", options.sep))
                 if value or (flag == "--sep" and value is not None)]
        raise DataError(f"{', '.join(given)} name(s) the columns of a table (.csv, .parquet, a DataFrame); "
                        f"{spec if isinstance(spec, (str, Path)) else type(spec).__name__} is not one")
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise DataError(f"data as a tuple must be (x, y), got {len(spec)} items")
        return DataBundle.from_arrays(spec[0], spec[1], seed=seed)
    if type(spec).__name__ == "DataFrame":
        return table_bundle(spec, options, name="dataframe", source="dataframe", seed=seed, fitted=fitted)
    if not isinstance(spec, (str, Path)):
        raise DataError(f"cannot load data from a {type(spec).__name__}: give a name, a path, (x, y) or a DataFrame")
    text = str(spec)
    if text in BUILTIN_DATASETS and image_size is None:
        return _load_builtin(text, seed)
    path = Path(text)
    suffix = path.suffix.lower()
    if path.is_dir() and suffix in (".npz", ".csv", ".parquet", ".npy"):
        raise DataError(f"data path is a directory, expected a file: {text}")
    if path.is_dir():
        from .images import load_image_folder

        return load_image_folder(path, seed, image_size)
    if image_size is not None:
        raise DataError(f"image size {image_size} resizes the images of a folder; '{text}' is not a folder")
    if suffix not in (".npz", ".csv", ".parquet", ".npy"):
        if not path.exists():
            raise DataError(
                f"unknown data '{text}': not a built-in set ({', '.join(BUILTIN_DATASETS)}) "
                "and not an existing .npz, .npy, .csv or .parquet file or image folder"
            )
        raise DataError(f"unsupported data file '{text}': expected a .npz, .npy, .csv or .parquet file")
    check_regular_file(path, "data file", DataError)
    if suffix == ".npz":
        return _load_npz(path, seed)
    if suffix == ".npy":
        from .images import load_npy_pair

        return load_npy_pair(path, seed)
    return table_bundle(lambda: read_table(path, options.sep), options, name=path.stem, source=str(path), seed=seed,
                        fitted=fitted)


def _load_builtin(name: str, seed: int) -> DataBundle:
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }[name]
    raw = loader()
    x = np.asarray(raw.data, dtype=np.float32)
    feature_names = [str(f) for f in raw.feature_names]
    if name == "digits":
        x = x.reshape(-1, 1, 8, 8)
        feature_names = None
    class_names = [str(c) for c in raw.target_names]
    return _finish(name, f"builtin:{name}", x, raw.target, None, None, class_names, feature_names, seed)


def check_npz_file(path: Path) -> None:
    """Refuse, in one line, a `.npz` that is no zip archive (np.load would try other formats on it, pickle
    detection included), or whose arrays would inflate past the data budget or are not what their headers say
    (`_check_npz_sizes`): every reader of a user's `.npz` calls this before `np.load`."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"cannot read {path} as a .npz file: not a zip archive (truncated or another format)")
    _check_npz_sizes(path)


def _load_npz(path: Path, seed: int) -> DataBundle:
    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        raise DataError(f"cannot read {path} as a .npz file (truncated or malformed): {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error) as exc:
        raise DataError(f"cannot read {path} as a .npz file: {exc}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; a .npz needs 'x' and 'y'")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: 'x_test' and 'y_test' must be given together")
    names = {}
    for key in ("feature_names", "class_names"):
        if key in arrays:
            value = arrays[key]
            if value.dtype.kind not in "UST" and value.dtype.kind not in "iu":
                raise DataError(f"{path}: '{key}' must be an array of strings")
            names[key] = _text(value.reshape(-1), f"{path}: '{key}'").tolist()
    return _finish(
        path.stem, str(path), arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"),
        names.get("class_names"), names.get("feature_names"), seed,
    )


def data_budget() -> int:
    """Bytes a data file may inflate to: MAX_DATA_BYTES, or TOOLKIT_MAX_DATA_BYTES when set."""
    from .options import env_limit

    return env_limit(MAX_DATA_BYTES_ENV, MAX_DATA_BYTES, "bytes")


def _check_npz_sizes(path: Path) -> None:
    """Read every member's size and .npy header from the zip directory, before inflating anything.

    A zip bomb, a header that claims more rows than its bytes hold, a truncated member or an object array is
    refused here with one line, instead of exhausting memory or failing inside `np.load`. An array counts as
    loading holds it: at least 4 bytes an element, since inputs become float32 (a 0.83 MB file of 244 MiB of
    int8 inputs peaked at 3.67 GB when its stored bytes were counted).
    """
    budget, total = data_budget(), 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".npy"):
                    with archive.open(member) as handle:
                        total += _check_npy_header(path, member, handle)
                else:
                    total += member.file_size
                if total > budget:
                    raise DataError(f"{path}: its arrays inflate to more than {budget:,} bytes once loaded "
                                    f"({total:,} counted, 4 bytes an element at least; set {MAX_DATA_BYTES_ENV} "
                                    "to allow more)")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"cannot read {path} as a .npz file (truncated or malformed): {exc}") from None


def _check_npy_header(path: Path, member: zipfile.ZipInfo, handle) -> int:
    """The bytes the member's array takes once loaded, its header checked against its stored bytes."""
    name = member.filename[:-4]
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle, max_header_size=10_000)
    if dtype.hasobject:  # np.load would need to unpickle it: never for user files
        raise DataError(f"{path}: array '{name}' holds Python objects, which would need unpickling; refused")
    elements = int(np.prod(shape, dtype=np.float64))
    declared = elements * dtype.itemsize
    available = member.file_size - handle.tell()
    if declared > available:
        raise DataError(f"{path}: array '{name}' declares shape {tuple(shape)} ({declared:,} bytes) but holds "
                        f"{max(available, 0):,} bytes (truncated or malformed)")
    return elements * max(dtype.itemsize, 4)


def _encode_labels(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """CSV labels: numbers keep their numeric order ('1' and '1.0' are one class), anything else is sorted by name.
    Numbers are read as decimals, exactly: as float64, '9007199254740993' was the class of '9007199254740992'."""
    from decimal import Decimal, InvalidOperation

    try:
        numbers = [Decimal(v) for v in labels]
    except (InvalidOperation, TypeError):
        numbers = None
    if numbers is None or not all(np.isfinite(float(n)) for n in numbers):  # 1e999 is no class number: text
        names = sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[v] for v in labels], dtype=np.int64), names
    values = sorted(set(numbers))
    index = {v: i for i, v in enumerate(values)}
    shown = [str(int(v)) if v == v.to_integral_value() else str(float(v)) for v in values]
    return np.array([index[n] for n in numbers], dtype=np.int64), shown


def _array(values, what: str, keep_subclass: bool = False) -> np.ndarray:
    """`values` as a NumPy array: a torch tensor detached and on the CPU, a memory-mapped array kept one
    (`keep_subclass`); nested lists of unequal lengths are one DataError line."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, gradients and device aside
        values = values.detach().cpu().numpy()
    try:
        return np.asanyarray(values) if keep_subclass else np.asarray(values)
    except (ValueError, TypeError):
        raise DataError(f"{what} is not a rectangular array (rows of unequal length, or mixed types)") from None


def _as_labels(y, what: str, by_name: bool = True) -> np.ndarray:
    """Labels as int64 values, or as text where they are classes by name: text from a list, a NumPy array or a
    pandas column (object, `string` or `category`; sorted by name later, as a table's labels are) and, `by_name`
    (no class_names to index), bools, named 'False' and 'True' as a table's bool column is."""
    given = getattr(y, "dtype", None)  # pandas' dtype, named in a refusal rather than the object array it gives
    y = _array(y, what)
    _refuse_missing(y, what)
    if y.dtype.kind == "O":  # typed as a list of the same values is: str, numbers, bools
        y = _array(y.tolist(), what)
    if y.ndim != 1:
        raise DataError(f"{what} must be one-dimensional (N,), got shape {tuple(y.shape)}")
    if y.dtype.kind == "b" and by_name:
        return y.astype(str)
    if y.dtype.kind in "iub":
        if y.dtype.kind == "u" and len(y) and y.max() > np.iinfo(np.int64).max:
            return _exact_values(y, what)  # a uint64 ID past int64 would wrap to a negative name
        return y.astype(np.int64, copy=False)
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y))
        if len(bad):  # NaN was refused as a missing label above
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise DataError(f"{what} holds {y[bad[0]]} in row {bad[0]}{more}: a label must be a finite number or text")
        if np.all(y == np.round(y)) and np.all(np.abs(y) < 2.0**63):
            return y.astype(np.int64)
        return _exact_values(y, what)
    if y.dtype.kind in "US":  # text labels ("cat", "dog"): the classes are their values, as in a table
        return _text(y, what)
    raise DataError(f"{what} must be integer or text class labels, got dtype {y.dtype if given is None else given}")


def _exact_values(y: np.ndarray, what: str) -> np.ndarray:
    """Numeric labels that int64 cannot hold (fractions such as 0.5, integers past 2**63) as exact Python numbers in
    an object array: whole numbers as ints (1.0 and 1 are one class, named '1', as in a CSV), the rest as floats; a
    float32 label by its shortest text, as a table's float32 column is named (0.1, not 0.10000000149011612).

    Before, a cast to int64 merged 1e19 and 2e19 into one class, named a uint64 label 2**63 + 5 as a negative
    number, and refused the fractions a CSV takes as classes."""
    if y.dtype.kind == "f" and y.dtype.itemsize > 8 and np.any(y.astype(np.float64) != y):
        raise DataError(f"{what} holds labels that float64 cannot hold exactly ({y.dtype}); store them as float64")
    if y.dtype.kind == "f" and y.dtype.itemsize < 8:
        y = y.astype(str).astype(np.float64)
    values = np.empty(len(y), dtype=object)
    values[:] = [v if isinstance(v, int) or v != int(v) else int(v) for v in y.tolist()]
    return values


def _refuse_missing(y: np.ndarray, what: str) -> None:
    """One line counting the missing labels (None, NaN, pd.NA): a row without a class cannot be trained on, and
    as text NaN would become a class 'nan'."""
    if y.dtype.kind not in "Of":
        return
    import pandas as pd

    gaps = np.flatnonzero(pd.isna(y))
    if len(gaps):
        raise DataError(f"{what} has {len(gaps)} missing label(s) (None, NaN or NA), the first in row {gaps[0]}: "
                        f"drop those rows")


def _text(values: np.ndarray, what: str) -> np.ndarray:
    """Strings, bytes decoded as UTF-8 as a CSV is read: bytes that are not UTF-8 are one DataError line, as a CSV
    of them is, rather than names made up of replacement characters that no other file would match."""
    if values.dtype.kind != "S":
        return values.astype(str)
    try:
        return np.char.decode(values, "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} holds bytes that are not UTF-8 text ({exc.object[:20]!r}); "
                        "save text labels as strings") from None


def _as_inputs(x: np.ndarray, what: str) -> np.ndarray:
    x = _array(x, what, keep_subclass=True)  # a memory-mapped array stays one
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(
            f"{what} must have shape (N, F), (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if 0 in x.shape:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)})")
    x = x.astype(np.float32, copy=False)  # a float32 (or memory-mapped) array is not copied
    rows = max(1, (1 << 24) // max(1, x[0].size))  # a block of rows at a time: no full-size mask
    bad = sum(int(np.count_nonzero(~np.isfinite(x[i:i + rows]))) for i in range(0, len(x), rows))
    if bad:
        raise DataError(f"{what} contains {bad} NaN or infinite value(s)")
    return x


def _finish(name, source, x, y, x_test, y_test, class_names, feature_names, seed, presplit=None, *,
            rows=None, constant: str = "refuse") -> DataBundle:
    """Validate, split (or slice rows already in train/val/test order, `presplit` = their counts, or take the
    rows `rows` = three index arrays of a memory-mapped `x`), normalise.

    `constant`: what a feature that is constant in the training split gets: "refuse" (arrays: centred, and
    named in `constant_columns`, which training refuses in one line) or "centre" (tables, whose constant columns
    were dropped before: std 1).
    """
    x, y = _as_inputs(x, "x"), _as_labels(y, "y", class_names is None)
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} samples but y has {len(y)} labels")
    if x_test is not None:
        x_test, y_test = _as_inputs(x_test, "x_test"), _as_labels(y_test, "y_test", class_names is None)
        if len(x_test) != len(y_test):
            raise DataError(f"x_test has {len(x_test)} samples but y_test has {len(y_test)} labels")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"x_test samples have shape {x_test.shape[1:]}, x samples {x.shape[1:]}")
    if y_test is not None and (y.dtype.kind == "U") != (y_test.dtype.kind == "U"):
        raise DataError("y and y_test must both be text labels or both numbers, not one of each")
    text = y.dtype.kind == "U"
    exact = object in (y.dtype, getattr(y_test, "dtype", None))  # numbers int64 cannot hold (`_exact_values`)
    if exact:  # both as Python numbers: int64 beside float64 would be cast to float64, merging large labels
        y, y_test = y.astype(object), (None if y_test is None else y_test.astype(object))
    all_labels = y if y_test is None else np.concatenate([y, y_test])
    if class_names is not None and (text or exact or all_labels.min() < 0):
        raise DataError("with class_names given, labels must be class indices 0, 1, ... into class_names "
                        f"(found {'text labels' if text else 'label ' + str(_not_an_index(all_labels))})")
    if y_test is not None:
        unseen = np.setdiff1d(y_test, y)
        if len(unseen):
            raise DataError(f"y_test holds label {shown(unseen[0])}, which no training row has: a model cannot learn a "
                            "class it never sees (merge the splits, or drop those test rows)")
    if class_names is None and (text or exact or int(all_labels.min()) < 0 or int(all_labels.max()) >= len(all_labels)
                                or len(np.unique(all_labels)) != int(all_labels.max()) + 1):
        # Labels are values, not indices: a class per value seen (labels 1, 2, 3 are three classes named so, 0 and
        # 5 two, -1 and 1 two, "cat" and "dog" two), never a class per integer below the largest, which would add
        # classes no row has.
        values, inverse = np.unique(all_labels, return_inverse=True)
        y, y_test = inverse[:len(y)], (None if y_test is None else inverse[len(y):])
        class_names, all_labels = [str(v) for v in values], inverse
    num_classes = int(all_labels.max()) + 1
    if class_names is not None:
        seen: set[str] = set()
        twice = [n for n in map(str, class_names) if n in seen or seen.add(n)]
        if twice:
            raise DataError(f"class name {shown(twice[0])} is given to two classes; each class needs its own name "
                            "(predictions name their columns by it)")
        if len(class_names) < num_classes:
            raise DataError(f"label {num_classes - 1} is out of range for {len(class_names)} class names")
        num_classes = len(class_names)
    else:
        class_names = [str(i) for i in range(num_classes)]
    if num_classes > min(MAX_CLASSES, len(all_labels)):
        raise DataError(f"{num_classes:,} classes for {len(all_labels):,} samples: at most "
                        f"{min(MAX_CLASSES, len(all_labels)):,} (one per sample, and {MAX_CLASSES:,} in all)")
    if len(np.unique(y)) < 2:
        raise DataError("the training data has only one class; a classifier needs at least two")
    input_shape = tuple(int(d) for d in x.shape[1:])
    if feature_names is not None and (len(input_shape) != 1 or len(feature_names) != input_shape[0]):
        raise DataError(f"{len(feature_names)} feature names for samples of shape {input_shape}")
    if presplit is not None:  # views, no copy of a large table
        a, b = presplit[0], presplit[0] + presplit[1]
        splits = (x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])
        split_info = _split_info(seed, False)
    elif rows is not None:  # row views of a memory-mapped file: nothing read yet
        from .images import RowView

        splits = sum(((RowView(x, part), y[part]) for part in rows), ())
        split_info = _split_info(seed, False)
    else:
        splits, split_info = _split(x, y, x_test, y_test, seed)
    mean, std, constant_columns = _normalisation(splits[0], len(input_shape))
    return DataBundle(
        name=name, source=source,
        x_train=splits[0], y_train=splits[1], x_val=splits[2], y_val=splits[3],
        x_test=splits[4], y_test=splits[5],
        class_names=list(class_names), feature_names=feature_names,
        input_shape=input_shape, layout=LAYOUTS[len(input_shape)],
        mean=mean, std=std, fingerprint=_fingerprint(x, y, x_test, y_test), split=split_info,
        constant_columns=constant_columns if constant == "refuse" else (),
    )


def _not_an_index(labels: np.ndarray):
    """The first label that cannot index class names: the smallest of int64 labels, else a fraction or an integer
    past int64 among exact ones."""
    if labels.dtype != object:
        return labels.min()
    return next(v for v in labels.tolist() if not isinstance(v, int) or not 0 <= v < 2**63)


def align_classes(bundle: DataBundle, class_names: list[str]) -> DataBundle:
    """`bundle` with its labels as indices of a model's `class_names`, so data and model mean the same class by
    the same index: names the model also has are mapped to its indices (a file without one of the classes, or
    one written before labels were values: labels 1-3 once made classes 0-3); data whose classes are the plain
    indices 0..k-1 of a model of k classes is taken as indices. Anything else is one DataError line naming a
    class the model does not predict."""
    import dataclasses

    names, model = [str(n) for n in bundle.class_names], [str(n) for n in class_names]
    if names == model:
        return bundle
    if set(names) <= set(model):
        index = np.array([model.index(n) for n in names], dtype=np.int64)
        return dataclasses.replace(bundle, y_train=index[bundle.y_train], y_val=index[bundle.y_val],
                                   y_test=index[bundle.y_test], class_names=model)
    if names == [str(i) for i in range(len(model))]:
        return dataclasses.replace(bundle, class_names=model)
    unknown = [n for n in names if n not in model]
    raise DataError(f"data '{bundle.name}' has class {shown(unknown[0])}, which the model does not predict (its classes: "
                    f"{', '.join(model[:6])}{', ...' if len(model) > 6 else ''})")


def split_indices(y: np.ndarray, seed: int) -> list[np.ndarray]:
    """Row indices of the train, validation and test splits `_finish` makes of labels `y` with this seed."""
    rows = np.arange(len(y)).reshape(-1, 1)
    splits = _split(rows, y, None, None, seed)[0]
    return [splits[0].reshape(-1), splits[2].reshape(-1), splits[4].reshape(-1)]


def _split(x, y, x_test, y_test, seed):
    if len(y) < 10:
        raise DataError(f"only {len(y)} samples; at least 10 are needed to train and validate")
    given = x_test is not None
    if not given:
        rest, test = _draw(y, TEST_FRACTION, seed)
        x, y, x_test, y_test = x[rest], y[rest], x[test], y[test]
    train, val = _draw(y, VAL_FRACTION, seed)
    return (x[train], y[train], x[val], y[val], x_test, y_test), _split_info(seed, given)


def _draw(ys: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices kept and drawn for a split of `fraction` of the rows, stratified by class.

    scikit-learn's stratified split where it takes the labels (every class of 2 rows or more, and a row of each
    class on both sides), so the splits of such data stay those every earlier run made; else `_share_draw`.
    Before, one class of a single row (or a split smaller than the class count) turned stratification off for
    every class, and a 5% class's test rows varied from 5 to 10 by seed.
    """
    from sklearn.model_selection import train_test_split

    counts = np.bincount(ys)
    if counts[counts > 0].min() >= 2:
        try:
            return train_test_split(np.arange(len(ys)), test_size=fraction, random_state=seed, stratify=ys)
        except ValueError:  # fewer rows on a side than classes
            pass
    return _share_draw(ys, math.ceil(fraction * len(ys)), seed)  # scikit-learn's count of drawn rows


def _share_draw(ys: np.ndarray, n_draw: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept and drawn (shuffled, seeded), each class giving the drawn side its share of `n_draw` rows rounded
    down or up: the rows left over by rounding down go one each to classes with a fraction of a row to spare,
    first those that still keep a row on the kept side, then the larger fractions, ties at random. So a class of
    one row stays for training, and a draw smaller than the class count takes at most one row of a class."""
    rng = np.random.RandomState(seed)
    _, inverse, counts = np.unique(ys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    take, spare = np.divmod(counts * n_draw, len(ys))  # exact shares, in rows and a remainder of rows
    order = np.lexsort((rng.random_sample(len(counts)), -spare, take + 1 >= counts))
    take[order[spare[order] > 0][:n_draw - int(take.sum())]] += 1
    by_class = np.lexsort((rng.random_sample(len(ys)), inverse))  # rows grouped by class, shuffled within each
    first = np.cumsum(counts) - counts
    drawn = np.arange(len(ys)) - first[inverse[by_class]] < take[inverse[by_class]]
    return rng.permutation(by_class[~drawn]), rng.permutation(by_class[drawn])


def thin_classes(bundle: DataBundle) -> str | None:
    """One line naming the classes that a split holds no row of, with their rows in each split, or None: such a
    class is never learned (no training row), never weighed by early stopping (no validation row) or never judged
    (no test row), and its figures say nothing of it (a 2-row class got 1, 0 and 1 rows: recall 0.0 on 1 row). The
    line says how such a class was split, since `data.split.stratified` says only that the split was stratified."""
    k = len(bundle.class_names)
    counts = np.stack([np.bincount(y, minlength=k) for y in (bundle.y_train, bundle.y_val, bundle.y_test)], 1)
    thin = [f"class '{name}' has {a} training, {b} validation and {c} test row(s)"
            for name, (a, b, c) in zip(bundle.class_names, counts) if 0 in (a, b, c)]
    if not thin:
        return None
    return (f"{'; '.join(thin[:3])}{' (and more)' if len(thin) > 3 else ''}: too few to learn or judge (the split is "
            "stratified: each split takes its share of every class, rounded, and a class too small for all three "
            "keeps its rows for training first)")


def _split_info(seed: int, given: bool) -> dict:
    return {"seed": seed, "test_given": given, "test_fraction": None if given else TEST_FRACTION,
            "val_fraction": VAL_FRACTION, "stratified": True}


def _normalisation(x_train, rank: int):
    """Per-feature statistics for feature vectors, per-channel for signals and images, and the indices of the
    features constant in the training split.

    Computed in float64; statistics that do not fit float32 (values near its limit) are refused, since the
    model would compute NaN or a constant. A constant feature would be divided by a std of 0: it is centred and
    not scaled (std 1), as a constant channel of an image always is, and named, so that training refuses it
    (`refuse_constant_columns`) while a user's own model, which takes the data as it is, is not refused it.
    """
    if rank == 1 or not isinstance(x_train, np.ndarray):  # a row view is read a block at a time
        mean, std, constant = _feature_stats(x_train)
        shape = (-1,) + (1,) * (rank - 1)
        mean, std = mean.reshape(shape), std.reshape(shape)
    else:
        axes = tuple(i for i in range(x_train.ndim) if i != 1)
        shape = (-1,) + (1,) * (rank - 1)
        mean = x_train.mean(axis=axes, dtype=np.float64).reshape(shape)
        std = x_train.std(axis=axes, dtype=np.float64).reshape(shape)
        constant = np.zeros(0, dtype=np.int64)
    limit = float(np.finfo(np.float32).max) / 16  # headroom for (x - mean) / std inside the model
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or max(np.abs(mean).max(), std.max()) > limit:
        raise DataError(f"the inputs hold values too large for float32 statistics (above {limit:.1e}); rescale them")
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32), tuple(int(i) for i in constant) if rank == 1 else ()


def refuse_constant_columns(bundle: DataBundle) -> None:
    """One DataError line naming the array's features constant in the training split, where there are any: a
    model trained here would learn nothing from them (and its standardisation divide by a std of 0)."""
    if bundle.constant_columns:
        raise DataError(_constant_message(np.asarray(bundle.constant_columns), bundle.feature_names))


def _constant_message(constant: np.ndarray, feature_names) -> str:
    many = len(constant) > 1
    shown = [f"{i} ({feature_names[i]!r})" if feature_names else str(i) for i in constant[:10].tolist()]
    more = f" and {len(constant) - 10} more" if len(constant) > 10 else ""
    return (f"feature column{'s' if many else ''} {', '.join(shown)}{more} of x {'are' if many else 'is'} constant "
            f"in the training split (zero variance, nothing to learn from): drop {'them' if many else 'it'} "
            f"(np.delete(x, {constant.tolist() if len(constant) <= 10 else '[...]'}, axis=1)), or pass the data as a "
            "table (.csv, DataFrame), which drops constant columns with a note")


def _feature_stats(x, rows: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std in float64 along axis 1 (per feature of (N, F), per channel of (N, C, ...)), a block of
    rows at a time (x.std would copy all of x), and the indices along axis 1 whose every value is the same.

    Constancy is checked on the values (min == max), not on the std: the one-pass std of a constant column
    far from zero is rounding noise, not zero.
    """
    axes = tuple(i for i in range(len(x.shape)) if i != 1)
    width = x.shape[1]
    total, squares, count = np.zeros(width), np.zeros(width), 0
    low, high = np.full(width, np.inf), np.full(width, -np.inf)
    for start in range(0, len(x), rows):
        block = np.array(x[start:start + rows], dtype=np.float64)  # a copy: squared in place below
        total += block.sum(axes)
        low, high = np.minimum(low, block.min(axes)), np.maximum(high, block.max(axes))
        count += block.size // width
        # One float64 block at a time: its square and the next block beside it made this step the peak of
        # loading a 1M x 50 CSV (49 MiB above the encoded matrix; 24 MiB now).
        squares += np.square(block, out=block).sum(axes)
        del block
    n = max(count, 1)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    constant = np.flatnonzero(high == low) if count else np.zeros(0, dtype=np.int64)
    std = np.where(high == low, 0.0, std)
    return mean, std, constant


def _fingerprint(*arrays, block_bytes: int = 1 << 24) -> str:
    """sha256 of each array's shape, dtype and bytes in row-major order; an array that is not row-major (a
    column-major matrix, a view) is hashed a block of rows at a time, never copied whole."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        a = np.asanyarray(a)
        digest.update(str((a.shape, a.dtype.str)).encode())
        if a.flags.c_contiguous:
            digest.update(memoryview(a.reshape(-1)).cast("B"))  # no bytes copy of a large array
            continue
        rows = max(1, block_bytes // max(1, a[0].nbytes if a.ndim > 1 and len(a) else a.itemsize))
        for start in range(0, len(a), rows):
            block = np.ascontiguousarray(a[start:start + rows])
            digest.update(memoryview(block.reshape(-1)).cast("B"))
    return digest.hexdigest()


def check_inputs(x: np.ndarray, input_shape: tuple[int, ...], what: str = "inputs") -> np.ndarray:
    """Validate a batch of inputs against a model's per-sample shape (downstream stages use this)."""
    x = _as_inputs(x, what)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{what} have per-sample shape {tuple(x.shape[1:])}, the model expects {tuple(input_shape)}")
    return x
