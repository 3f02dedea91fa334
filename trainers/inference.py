"""Predictions on raw rows for deployment: read the rows, run any model artifact (PyTorch or ONNX), tabulate.

`predict_file` is what `toolkit predict` calls: it reads a CSV (columns matched to the model's feature names),
an `.npz` (array `x`) or an `.npy` file, runs the model in batches and returns a table of predicted class,
its index and one probability column per class.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .artifact import PREDICT_BATCH, LoadedModel, artifact_of_onnx, load_model, predict
from .data import check_inputs
from .errors import DataError, ToolkitError
from .fileio import check_regular_file, read_json
from .inputrange import checked_once
from .progress import reporter
from .streaming import written_parquet


def check_predictions_out(out: str | Path, overwrite: bool, data: str | Path | None = None) -> None:
    """Refuse, in one line, an `--out` for predictions that would cost a file: the `data` file being predicted
    (by any path to it), a directory, or an existing file unless `overwrite` is given and the file holds
    predictions the toolkit wrote: a Parquet file it marked as such, or a CSV/TSV whose first line is
    `PREDICTIONS_HEADER` (after a `file` column for images) and then only `p_<class>` columns. So the input rows,
    a model's files and any file of the user's (predictions with a column of their own added) are never
    replaced."""
    out = Path(out)
    if data is not None and _same_file(out, Path(data)):
        raise ToolkitError(f"--out {out} is the data file being predicted; choose another --out")
    if out.is_dir():
        raise ToolkitError(f"--out {out} is a directory; give the name of the file to write")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ToolkitError(f"{out} exists; --overwrite replaces it if it holds predictions the toolkit wrote")
    if not _toolkit_predictions(out):
        raise ToolkitError(f"refusing to overwrite {out}: it does not hold predictions the toolkit wrote (its header "
                           "is not that of predictions); choose another --out")


def _same_file(out: Path, data: Path) -> bool:
    """Whether `out` is `data`: the same path once resolved, or another name (a hard link) of the same file."""
    try:
        return data.exists() and (out.resolve() == data.resolve() or (out.exists() and out.samefile(data)))
    except OSError:
        return False


def _toolkit_predictions(path: Path, limit: int = 1 << 22) -> bool:
    """Whether `path` holds predictions the toolkit wrote: its marked Parquet file, or a CSV/TSV of them (whose
    header `_toolkit_header` checks; None where there is no first line within `limit` bytes or it is not text)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(limit)
    except OSError as exc:
        raise ToolkitError(f"cannot read {path}: {exc.strerror}") from None
    if head.startswith(b"PAR1"):
        return written_parquet(path)
    if b"\n" not in head and len(head) == limit:
        return False
    try:
        return _toolkit_header(head.split(b"\n", 1)[0].rstrip(b"\r").decode())
    except UnicodeDecodeError:
        return False


def _toolkit_header(line: str) -> bool:
    """Whether `line` is a header `predict_table` writes, comma or tab separated:
    `[file,]predicted,predicted_index,p_<class>,...`."""
    import csv

    sep = "\t" if line.removeprefix("file\t").startswith("predicted\t") else ","
    line = line.removeprefix(f"file{sep}")
    if not line.startswith(PREDICTIONS_HEADER.replace(",", sep)):
        return False
    columns = next(csv.reader([line], delimiter=sep))
    return len(columns) > 2 and all(name.startswith("p_") for name in columns[2:])


def write_predictions(out: str | Path, content, overwrite: bool, existed: bool) -> None:
    """Write the predictions to `out`: `content` is the CSV text, or a function that streams them into a binary
    handle (`streaming.write_table_file`), written into a temporary file beside `out` and renamed over it once
    complete (never a half-written file there). `out` is checked again just before the rename: a file that
    appeared there while the rows were predicted (another run's, or one of the user's) is not replaced, and one
    that was there is replaced only as `check_predictions_out` allows. A symlink is written through, as run
    directories are. `existed`: whether `out` existed when the command began."""
    from .fileio import atomic_file

    out = Path(out)
    with atomic_file(out.resolve() if out.is_symlink() else out) as handle:
        content(handle) if callable(content) else handle.write(content.encode("utf-8"))
        if (out.exists() or out.is_symlink()) and not existed:
            raise ToolkitError(f"{out} appeared while the rows were predicted (another run, or a file of yours); "
                               "not replaced: choose another --out")
        check_predictions_out(out, overwrite)


PREDICTIONS_HEADER = "predicted,predicted_index,"  # the first columns of every predictions CSV (`predict_table`)


def resolve_artifact(path: str | Path, variant: str | None = None) -> Path:
    """The model directory to predict with: `path` itself, one of its variants by name, or its chosen variant.

    `path` may be a model artifact, a compress run (`variants/NAME`) or a pipeline run (`compress/variants/NAME`);
    without `variant`, a run directory gives the variant its compress stage chose.
    """
    path = Path(path)
    if variant is not None and (variant in ("", ".", "..") or any(c in variant for c in "/\\")):
        raise ToolkitError(f"--variant takes a variant's name (a folder under variants/), not a path: {variant!r}")
    if not (path.exists() or path.is_symlink()):
        raise ToolkitError(f"{path}: not found (a model artifact, a compress or pipeline run, or an .onnx file)")
    from .usermodel import refuse_pickle

    refuse_pickle(path)  # with what to do instead, as compress and explain say it
    if variant is None and path.suffix.lower() == ".onnx" and not path.is_dir():
        check_regular_file(path, "ONNX file")  # a FIFO would block its reader
        return artifact_of_onnx(path) or path  # a variant's own model.onnx (or .raw.onnx): served as its artifact
    if variant is None and (path / "model.json").is_file():
        return path
    runs = [d for d in (path, path / "compress") if (d / "result.json").is_file() or (d / "variants").is_dir()]
    if variant is not None:
        for run in runs:
            if (run / "variants" / variant / "model.json").is_file():
                return run / "variants" / variant
        names = sorted(p.name for run in runs for p in (run / "variants").glob("*") if (p / "model.json").is_file())
        listed = f"; variants: {', '.join(names)}" if names else ""
        raise ToolkitError(f"no variant '{variant}' under {path}{listed}")
    for run in runs:
        record = read_json(run / "result.json", "result.json") if (run / "result.json").is_file() else {}
        chosen = record.get("chosen") or {}
        if not isinstance(chosen.get("path"), str):
            continue
        if chosen.get("checksum") or Path(chosen["path"]).is_absolute():  # the original was kept: the user's model
            from .kept import find

            return find(run, chosen, record.get("parent"))
        if (run / chosen["path"] / "model.json").is_file():
            return run / chosen["path"]
    raise ToolkitError(f"{path} is not a model artifact (no model.json) nor a run with a chosen variant")


def read_rows(path: str | Path, model: LoadedModel) -> tuple[np.ndarray, list[str] | None]:
    """Raw inputs for `model` from a CSV (a header; columns picked by the model's feature names, others ignored;
    for a model trained on a table, its raw rows as a DataFrame, from a CSV or Parquet file),
    an `.npz` (array `x`), an `.npy` file or a folder of images (sorted by path, sub-folders too); checked
    against the model's input shape. Returns (inputs, each row's file for a folder of images, else None)."""
    path = Path(path)
    if path.is_dir():  # a folder of images, read as the model's (C, H, W) inputs
        from .images import read_image_files

        return read_image_files(path, tuple(model.spec.input_shape))
    check_regular_file(path, "data file", DataError)
    table = model.spec.preprocessing.get("table")
    if table is not None and path.suffix.lower() in (".csv", ".parquet"):
        # Raw rows of a table, preprocessed by `predict` (in Python, or inside the variant's model.raw.onnx).
        from .tables import read_table

        return read_table(path, (table.get("read") or {}).get("sep")), None
    raw = (model.spec.extra or {}).get("raw_rows")
    if raw is not None and path.suffix.lower() == ".csv":  # a model.raw.onnx on its own: NaN cells are its to fill
        return _raw_graph_rows(path, model.spec.feature_names, raw["reads"]), None
    if path.suffix.lower() == ".csv":
        x = _csv_rows(path, model.spec.feature_names, tuple(model.spec.input_shape))
    elif path.suffix.lower() in (".npz", ".npy"):
        from .data import MAX_DATA_BYTES_ENV, check_npz_file, data_budget

        if path.suffix.lower() == ".npz":
            check_npz_file(path)  # a zip bomb or a lying header: refused before anything is inflated
        elif path.stat().st_size > data_budget():
            raise DataError(f"{path}: {path.stat().st_size:,} bytes, more than the data budget of {data_budget():,} "
                            f"(set {MAX_DATA_BYTES_ENV} to allow more)")
        try:
            # a .npy is memory-mapped (as train reads it): rows are read batch by batch, not all at once
            loaded = np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix.lower() == ".npy" else None)
            x = loaded if path.suffix.lower() == ".npy" else loaded["x"]
        except KeyError:
            raise DataError(f"{path}: no array 'x' in the .npz file") from None
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    else:
        raise DataError(f"{path}: predict reads .csv, .npz or .npy files")
    return check_inputs(x, tuple(model.spec.input_shape), f"rows of {path.name}"), None


def _csv_rows(path: Path, feature_names, input_shape) -> np.ndarray:
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as CSV: {str(exc).splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if feature_names:
        missing = [name for name in feature_names if name not in table.columns]
        if missing:
            raise DataError(f"{path}: missing feature column(s) {', '.join(missing[:5])}")
        table = table[list(feature_names)]
    elif table.shape[1] != int(np.prod(input_shape)):
        raise DataError(f"{path}: {table.shape[1]} columns, the model takes {int(np.prod(input_shape))} features")
    bad = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise DataError(f"{path}: column '{bad[0]}' is not numeric")
    if table.isna().any().any():
        raise DataError(f"{path}: missing value in column '{table.columns[table.isna().any()][0]}'")
    return table.to_numpy(np.float32).reshape(len(table), *input_shape)


def _raw_graph_rows(path: Path, columns: list[str], reads: list[str]) -> np.ndarray:
    """Rows for a toolkit's raw-row graph served alone (`usermodel._raw_columns`), as the graph takes them: its
    input holds every column of the training table, but it reads only `reads`, where missing cells (NaN) are
    imputed inside it. So only those are required and checked; the others (a dropped id) are passed as NaN."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as CSV: {str(exc).splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [name for name in reads if name not in table.columns]
    if missing:
        raise DataError(f"{path}: missing feature column(s) {', '.join(missing[:5])}")
    bad = [c for c in reads if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise DataError(f"{path}: column '{bad[0]}' is not numeric")
    x = np.full((len(table), len(columns)), np.nan, np.float32)
    for i, name in enumerate(columns):
        if name in reads:
            x[:, i] = table[name].to_numpy(np.float32)
    if np.isinf(x).any():
        raise DataError(f"{path}: an infinite value in column '{columns[int(np.isinf(x).any(axis=0).argmax())]}'")
    return x


def predict_table(model: LoadedModel, x: np.ndarray, *, batch_size: int = PREDICT_BATCH, progress=None,
                  check_outputs: bool = False):
    """A DataFrame with one row per input: `predicted` (class name), `predicted_index`, and `p_<class>` per class.

    Runs `trainers.predict` in calls of `batch_size` rows (`prediction_tables`), sending a `ProgressEvent`
    (stage "predict") after each chunk of rows.
    `check_outputs`: warn where the outputs look like probabilities rather than logits (a variant of a user's
    model that ends in a softmax: its flattened 'probabilities' would pass unremarked).
    """
    import pandas as pd

    from .streaming import chunk_rows, sliced

    tables = prediction_tables(model, sliced(x, chunk_rows(batch_size)), batch_size=batch_size, progress=progress,
                               check_outputs=check_outputs, total=-(-len(x) // chunk_rows(batch_size)))
    return pd.concat(list(tables), ignore_index=True)


def prediction_tables(model: LoadedModel, chunks, *, batch_size: int = PREDICT_BATCH, progress=None,
                      check_outputs: bool = False, files: list[str] | None = None, total: int | None = None):
    """One predictions table (`tabulate`) per chunk of raw rows; a table of no rows where there are none.

    Each chunk is preprocessed as one block and run in calls of `batch_size` rows; a routed model serves every
    call with the member for `batch_size` (`trainers.predict`'s `call_rows`), the last, shorter one too, so a
    row's answer does not depend on the file's length. `files`: each row's file (a folder of images), as the
    first column.
    """
    report = reporter(progress, "predict", total)
    done = step = 0
    for step, chunk in enumerate(chunks, 1):
        logits = predict(model, chunk, batch_size=batch_size, call_rows=batch_size)
        if check_outputs and done == 0:
            from .usermodel import _warn_if_probabilities

            _warn_if_probabilities(logits[:64], model.source)
        yield _with_files(tabulate(model, logits), files, done)
        done += len(logits)
        report(step, f"{done} rows")
    if step == 0:
        yield _with_files(tabulate(model, np.zeros((0, model.spec.num_classes), np.float32)), files, 0)


def _with_files(table, files: list[str] | None, start: int):
    if files is not None:  # a folder of images: each row names its file
        table.insert(0, "file", files[start:start + len(table)])
    return table


def tabulate(model: LoadedModel, logits: np.ndarray):
    """Logits -> the predictions table: `predicted`, `predicted_index` and a `p_<class>` column per class."""
    import pandas as pd

    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    names = list(model.spec.class_names)
    index = probabilities.argmax(axis=1)
    if all(isinstance(name, str) for name in names):  # Arrow's take: 3 ms for 65,536 rows, pandas' own text 15 ms
        import pyarrow as pa

        predicted = pa.array(names, pa.string()).take(index).to_pandas()  # pandas' str dtype, as from the objects
    else:
        predicted = np.array(names, dtype=object)[index]
    table = pd.DataFrame({"predicted": predicted, "predicted_index": index})
    # One block for all the classes: a column at a time took minutes for 5,000 classes (each insert copies).
    return pd.concat([table, pd.DataFrame(probabilities, columns=[f"p_{name}" for name in names])], axis=1)


def predict_file(model, data: str | Path, *, variant: str | None = None, batch_size: int = PREDICT_BATCH,
                 progress=None, device: str = "cpu"):
    """Load the model (see `resolve_artifact`) to serve on `device` (`load_model`), read `data` (see `read_rows`)
    and return (model, predict_table)."""
    import pandas as pd

    model, tables = stream_file(model, data, variant=variant, batch_size=batch_size, progress=progress,
                                device=device)
    return model, pd.concat(list(tables), ignore_index=True)


def stream_file(model, data: str | Path, *, variant: str | None = None, batch_size: int = PREDICT_BATCH,
                progress=None, device: str = "cpu"):
    """`predict_file` a chunk at a time: (model, an iterator of predictions tables, one per chunk of rows).

    A CSV of a table's raw rows is read a chunk at a time (`streaming.table_chunks`), so memory is bounded by
    the chunk, not the file; levels training never saw are named once per file, when the last chunk is done.
    """
    from .streaming import UnseenLevels, chunk_rows, sliced, table_chunks

    checked = False   # whether its outputs are checked for probabilities here (as_model checks a user's file)
    if not isinstance(model, LoadedModel):
        where = resolve_artifact(model, variant)
        if where.suffix.lower() == ".onnx" and where.is_file():  # a user's ONNX file (`usermodel.as_model`)
            import dataclasses

            from .artifact import check_device
            from .usermodel import as_model

            check_device(device)  # its session is opened again where it serves
            model = dataclasses.replace(as_model(where), device=device, _session=None)   # it warns itself
        else:
            model = load_model(where, device=device, twin=False)  # predicting needs no PyTorch twin
            checked = True
    if batch_size < 1:
        raise ToolkitError("--batch-size must be at least 1")
    rows, fitted, path = chunk_rows(batch_size), model.spec.preprocessing.get("table"), Path(data)
    x = files = None
    if fitted is not None and path.suffix.lower() in (".csv", ".parquet") and not path.is_dir():
        check_regular_file(path, "data file", DataError)
        chunks, total = table_chunks(path, fitted, rows), None
    else:
        x, files = read_rows(data, model)
        chunks, total = sliced(x, rows), -(-len(x) // rows)
    unseen = UnseenLevels(fitted)

    def tables():
        # rows off the training scale: one warning for the file, not one per chunk (a table's raw rows: no record)
        with checked_once(model, x, images=files is not None) if x is not None else contextlib.nullcontext():
            yield from prediction_tables(model, _noting(chunks, unseen), batch_size=batch_size, progress=progress,
                                         check_outputs=checked, files=files, total=total)
        unseen.warn()
    return model, tables()


def _noting(chunks, unseen):
    for chunk in chunks:
        unseen.add(chunk)
        yield chunk
