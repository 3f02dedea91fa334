"""Load data per the data contract: built-in sets, `.npz` and `.csv` files.

Every loader ends in `_finish`, which validates the arrays once, splits them
(stratified, seeded) and computes the training-split normalisation and the
fingerprint. Arrays stay raw (unnormalised): the statistics travel with the
model, whose first layer applies them.
"""

from __future__ import annotations

import csv
import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
LAYOUTS = {1: "features", 2: "signal", 3: "image"}
TEST_FRACTION = 0.2
VAL_FRACTION = 0.15


@dataclass(repr=False)
class DataBundle:
    """Train/validation/test splits plus everything a model needs to know about them.

    Attributes:
        name: the built-in name or the file name the data came from.
        x_*/y_*: float32 inputs of shape (N, *input_shape) and int64 labels.
        input_shape: per-sample shape, channels first.
        layout: "features" (F,), "signal" (C, L) or "image" (C, H, W).
        mean, std: per-feature (layout features) or per-channel statistics of
            the training split, shaped to broadcast against one sample.
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        from .display import short_repr

        return short_repr("DataBundle", name=self.name, input_shape=tuple(self.input_shape), layout=self.layout,
                          num_classes=self.num_classes, n_train=len(self.y_train), n_val=len(self.y_val),
                          n_test=len(self.y_test))

    def summary(self) -> dict:
        """Plain-data description, as recorded in model.json and result.json."""
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "input_shape": list(self.input_shape),
            "layout": self.layout,
            "num_classes": self.num_classes,
            "n_train": int(len(self.y_train)),
            "n_val": int(len(self.y_val)),
            "n_test": int(len(self.y_test)),
            "split": self.split,
        }


def load_data(spec: str | Path, *, target: str | None = None, seed: int = 0) -> DataBundle:
    """Load a data set from a built-in name, a `.npz` file or a `.csv` file.

    Args:
        spec: `digits`, `iris`, `wine`, `breast_cancer`, or a path.
        target: label column of a CSV file (default: the last column).
        seed: seed of the stratified train/validation/test split.

    Raises:
        DataError: with a one-line message for anything unusable.
    """
    text = str(spec)
    if text in BUILTIN_DATASETS:
        return _load_builtin(text, seed)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        if not path.exists():
            raise DataError(
                f"unknown data '{text}': not a built-in set ({', '.join(BUILTIN_DATASETS)}) "
                "and not an existing .npz or .csv file"
            )
        raise DataError(f"unsupported data file '{text}': expected a .npz or .csv file")
    if not path.exists():
        raise DataError(f"data file not found: {text}")
    if path.is_dir():
        raise DataError(f"data path is a directory, expected a file: {text}")
    if suffix == ".npz":
        return _load_npz(path, seed)
    return _load_csv(path, target, seed)


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


def _load_npz(path: Path, seed: int) -> DataBundle:
    if not zipfile.is_zipfile(path):
        # np.load would try other formats (even pickle detection) on a non-zip file.
        raise DataError(f"cannot read {path} as a .npz file: not a zip archive (truncated or another format)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        # np.load refuses object arrays without allow_pickle: never unpickle user files.
        raise DataError(f"{path}: contains object arrays, which would need unpickling; refused ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
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
            names[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    return _finish(
        path.stem, str(path), arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"),
        names.get("class_names"), names.get("feature_names"), seed,
    )


def _load_csv(path: Path, target: str | None, seed: int) -> DataBundle:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    column = target if target is not None else header[-1]
    if column not in header:
        raise DataError(f"{path}: target column '{column}' not found; columns are {', '.join(header)}")
    t = header.index(column)
    body = rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
    features = [j for j in range(len(header)) if j != t]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target '{column}'")
    x = np.empty((len(body), len(features)), dtype=np.float32)
    for col, j in enumerate(features):
        for i, row in enumerate(body):
            cell = row[j].strip()
            if cell == "":
                raise DataError(f"{path}: missing value in column '{header[j]}' at line {i + 2}; fill or drop it first")
            try:
                x[i, col] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: column '{header[j]}' is not numeric (line {i + 2}: {cell!r}); "
                    "encode text columns as numbers or drop them"
                ) from None
    labels = [row[t].strip() for row in body]
    if any(v == "" for v in labels):
        raise DataError(f"{path}: missing label in target column '{column}'")
    y, class_names = _encode_labels(labels)
    return _finish(path.stem, str(path), x, y, None, None, class_names, [header[j] for j in features], seed)


def _encode_labels(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """CSV labels: integer strings keep their order, anything else is sorted by name."""
    try:
        ints = np.array([int(v) for v in labels], dtype=np.int64)
    except ValueError:
        names = sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[v] for v in labels], dtype=np.int64), names
    values = np.unique(ints)
    return np.searchsorted(values, ints).astype(np.int64), [str(v) for v in values]


def _as_labels(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} must be one-dimensional (N,), got shape {tuple(y.shape)}")
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what} must be integer class labels, found non-integer values")
        return y.astype(np.int64)
    raise DataError(f"{what} must be integer class labels, got dtype {y.dtype}")


def _as_inputs(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(
            f"{what} must have shape (N, F), (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if 0 in x.shape:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)})")
    x = x.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise DataError(f"{what} contains {bad} NaN or infinite value(s)")
    return x


def _finish(name, source, x, y, x_test, y_test, class_names, feature_names, seed) -> DataBundle:
    x, y = _as_inputs(x, "x"), _as_labels(y, "y")
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} samples but y has {len(y)} labels")
    if x_test is not None:
        x_test, y_test = _as_inputs(x_test, "x_test"), _as_labels(y_test, "y_test")
        if len(x_test) != len(y_test):
            raise DataError(f"x_test has {len(x_test)} samples but y_test has {len(y_test)} labels")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"x_test samples have shape {x_test.shape[1:]}, x samples {x.shape[1:]}")
    all_labels = y if y_test is None else np.concatenate([y, y_test])
    if all_labels.min() < 0:
        raise DataError("labels must be non-negative class indices")
    num_classes = int(all_labels.max()) + 1
    if class_names is not None:
        if len(class_names) < num_classes:
            raise DataError(f"label {num_classes - 1} is out of range for {len(class_names)} class names")
        num_classes = len(class_names)
    else:
        class_names = [str(i) for i in range(num_classes)]
    if len(np.unique(y)) < 2:
        raise DataError("the training data has only one class; a classifier needs at least two")
    input_shape = tuple(int(d) for d in x.shape[1:])
    if feature_names is not None and (len(input_shape) != 1 or len(feature_names) != input_shape[0]):
        raise DataError(f"{len(feature_names)} feature names for samples of shape {input_shape}")
    splits, split_info = _split(x, y, x_test, y_test, seed)
    mean, std = _normalisation(splits[0], len(input_shape))
    return DataBundle(
        name=name, source=source,
        x_train=splits[0], y_train=splits[1], x_val=splits[2], y_val=splits[3],
        x_test=splits[4], y_test=splits[5],
        class_names=list(class_names), feature_names=feature_names,
        input_shape=input_shape, layout=LAYOUTS[len(input_shape)],
        mean=mean, std=std, fingerprint=_fingerprint(x, y, x_test, y_test), split=split_info,
    )


def _split(x, y, x_test, y_test, seed):
    from sklearn.model_selection import train_test_split

    def split(xs, ys, fraction):
        counts = np.bincount(ys)
        stratify = ys if counts[counts > 0].min() >= 2 else None
        try:
            return train_test_split(xs, ys, test_size=fraction, random_state=seed, stratify=stratify)
        except ValueError:
            return train_test_split(xs, ys, test_size=fraction, random_state=seed, stratify=None)

    if len(y) < 10:
        raise DataError(f"only {len(y)} samples; at least 10 are needed to train and validate")
    if x_test is None:
        x_rest, x_test, y_rest, y_test = split(x, y, TEST_FRACTION)
        given = False
    else:
        x_rest, y_rest, given = x, y, True
    x_train, x_val, y_train, y_val = split(x_rest, y_rest, VAL_FRACTION)
    info = {"seed": seed, "test_given": given, "test_fraction": None if given else TEST_FRACTION,
            "val_fraction": VAL_FRACTION, "stratified": True}
    return (x_train, y_train, x_val, y_val, x_test, y_test), info


def _normalisation(x_train: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature statistics for feature vectors, per-channel for signals and images."""
    if rank == 1:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    else:
        axes = tuple(i for i in range(x_train.ndim) if i != 1)
        shape = (-1,) + (1,) * (rank - 1)
        mean = x_train.mean(axis=axes).reshape(shape)
        std = x_train.std(axis=axes).reshape(shape)
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def _fingerprint(*arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        digest.update(str((a.shape, a.dtype.str)).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def check_inputs(x: np.ndarray, input_shape: tuple[int, ...], what: str = "inputs") -> np.ndarray:
    """Validate a batch of inputs against a model's per-sample shape (downstream stages use this)."""
    x = _as_inputs(x, what)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{what} have per-sample shape {tuple(x.shape[1:])}, the model expects {tuple(input_shape)}")
    return x
