"""The pyarrow CSV reader: the same table as the pandas reader, numbers in one float32 block, the pandas reader
as the fallback for what pyarrow refuses, and its own refusals (ragged line, a column name given twice)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainers import DataError, load_data
from trainers import csvread, tables

N = 50


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "a": rng.normal(size=N).round(3), "n": np.arange(N) % 7, "colour": np.array(["red", "green, dark", "blue"])[np.arange(N) % 3],
        "flag": np.arange(N) % 2 == 0, "day": [f"2024-01-{1 + i % 28:02d}" for i in range(N)], "label": np.arange(N) % 2})


def _write(tmp_path, text: str | bytes, name="d.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _missing_cells(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, token in zip((3, 8, 13, 21), ("NA", "?", "", "N/A")):
        cells = lines[i].split(",", 1)
        lines[i] = token + "," + cells[1]
    return "".join(lines)


CASES = {
    "plain": lambda f: f.to_csv(index=False),
    "BOM and CRLF": lambda f: "\ufeff" + f.to_csv(index=False, lineterminator="\r\n"),
    "semicolons": lambda f: f.to_csv(index=False, sep=";"),
    "NA, ?, empty and N/A cells": lambda f: _missing_cells(f.to_csv(index=False)),
    "pandas index column": lambda f: f.to_csv(),
    "spaces after separators": lambda f: f.drop(columns=["colour", "flag"]).to_csv(index=False).replace(",", ", "),
}


@pytest.mark.parametrize("name", list(CASES))
def test_arrow_reader_gives_the_pandas_readers_table(name, tmp_path, monkeypatch):
    path = _write(tmp_path, CASES[name](_frame()))
    sep = tables.sniff(path)
    fallback = []
    monkeypatch.setattr(tables, "_read_csv_pandas", lambda *a: fallback.append(a) or pd.DataFrame())
    got = tables.read_table(path)
    assert not fallback  # pyarrow read it
    monkeypatch.undo()
    expected = tables._read_csv_pandas(path, sep)
    assert list(got.columns) == list(expected.columns)
    for column in got.columns:
        a, b = got[column], expected[column]
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            assert a.dtype == np.float32, column
            np.testing.assert_array_equal(a.to_numpy(np.float32), b.to_numpy(np.float32))
        else:
            assert a.astype(object).where(a.notna(), None).tolist() == b.astype(object).where(b.notna(), None).tolist()


def test_numeric_columns_share_one_float32_block_in_file_order(tmp_path):
    path = _write(tmp_path, _frame().to_csv(index=False))
    frame = tables.read_table(path)
    assert list(frame.columns) == ["a", "n", "colour", "flag", "day", "label"]
    assert frame["a"].dtype == frame["n"].dtype == frame["label"].dtype == np.float32
    assert frame["flag"].dtype == bool and frame["colour"].iloc[1] == "green, dark"
    assert frame["day"].iloc[0] == "2024-01-01"  # a date stays its text, as with pandas
    assert sum(1 for b in frame._mgr.blocks if b.dtype == np.float32) == 1


def test_a_column_numeric_in_the_first_block_and_text_later_falls_back_to_pandas(tmp_path, monkeypatch):
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 64)
    rows = "".join(f"{i * 0.5},{i % 2}\n" for i in range(40)) + "many,1\n"
    path = _write(tmp_path, "a,t\n" + rows)
    with pytest.raises(csvread.ArrowUnreadable):
        csvread.read_csv_arrow(path, ",", tables.MISSING_TOKENS)
    frame = tables.read_table(path)
    assert frame["a"].iloc[-1] == "many" and len(frame) == 41


def test_integers_then_decimals_in_a_later_block_stay_on_the_arrow_path(tmp_path, monkeypatch):
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 64)
    path = _write(tmp_path, "a,t\n" + "".join(f"{i},{i % 2}\n" for i in range(40)) + "2.5,1\n")
    frame = csvread.read_csv_arrow(path, ",", tables.MISSING_TOKENS)
    assert frame["a"].dtype == np.float32 and frame["a"].iloc[-1] == 2.5


def test_a_ragged_line_in_a_file_too_large_for_line_numbers_is_named_by_its_text(tmp_path):
    path = _write(tmp_path, "a,b,t\n" + "1.5,2,0\n2.5,3,1\n" * 3 + "1,0\n")
    with pytest.raises(DataError, match=r"a line has 2 fields, the header has 3 \('1,0'"):
        csvread.read_csv_arrow(path, ",", tables.MISSING_TOKENS)


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_every_line_ending_reads_the_same_table(newline, tmp_path):
    """A classic Mac file ends its lines with a lone "\r": the matrix was sized by "\n" alone, one row."""
    text = "a,b,t\n" + "".join(f"{i * 0.5},{i % 5},{i % 2}\n" for i in range(30))
    expected = tables.read_table(_write(tmp_path, text, "unix.csv"))
    pd.testing.assert_frame_equal(tables.read_table(_write(tmp_path, text.replace("\n", newline))), expected)


def test_a_field_over_the_csv_modules_limit_is_one_line_naming_it(tmp_path):
    path = _write(tmp_path, "a,b,t\n1,2,0\n3," + "x" * 200_000 + ",1\n" + "1.5,2,0\n2.5,3,1\n" * 10)
    with pytest.raises(DataError, match=r"d.csv: line 3: field larger than field limit"):
        load_data(str(path))


def test_a_column_name_given_twice_is_refused(tmp_path):
    path = _write(tmp_path, "a,b,a,t\n" + "1,2,3,0\n4,5,6,1\n" * 10)
    with pytest.raises(DataError, match="column name 'a' appears twice"):
        load_data(str(path))


def test_large_integer_ids_are_read_exactly_and_dropped_as_ids(tmp_path):
    ids = 10**12 + np.random.default_rng(0).permutation(40)
    path = _write(tmp_path, "id,a,t\n" + "".join(f"{i},{k * 0.25},{k % 2}\n" for k, i in enumerate(ids)))
    frame = tables.read_table(path)
    assert frame["id"].dtype == np.int64 and (frame["id"].to_numpy() == ids).all()
    assert load_data(str(path)).table["dropped"] == {"id": "ID-like (unique per row)"}


@pytest.mark.parametrize("big", ["20000000000000000000", "1e30", "-9300000000000000000", "inf"])
def test_whole_numbers_beyond_int64_stay_float64_and_never_wrap(big, tmp_path, recwarn):
    """A whole number past int64 (2e19) wrapped to -9.2e18 when the column was cast to int64: its sign flipped."""
    rows = "".join(f"{0.5 * k},{big if k == 3 else 9 * 10**18 + k},{k % 2}\n" for k in range(12))
    frame = tables.read_table(_write(tmp_path, "a,b,t\n" + rows))
    assert frame["b"].dtype == np.float64 and frame["b"].iloc[3] == float(big)
    assert frame["b"].iloc[4] == float(9 * 10**18 + 4)  # its neighbours, read as float64 too
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_bytes_that_are_not_utf8_get_one_line_from_the_pandas_reader(tmp_path):
    path = _write(tmp_path, b"a,t\n" + b"caf\xe9,1\n" + b"1,0\n" * 20)
    with pytest.raises(DataError, match="d.csv"):
        load_data(str(path))


CHILD = """
import json, resource, sys
from pathlib import Path
import trainers, pandas, torch, pyarrow.csv
from trainers.tables import read_table
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if sys.argv[2] == "read":
    frame = read_table(Path(sys.argv[1]))
print(json.dumps({"base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


@pytest.mark.slow
def test_reading_a_csv_grows_by_about_one_float32_copy_per_row(tmp_path):
    """The marginal peak memory per row (two file sizes) is about the float32 matrix: the reader's own
    buffers are a constant (about 50-80 MiB), which a single size would mix in."""
    cols = 20

    def write(rows):
        x = np.random.default_rng(rows).normal(size=(rows, cols)).astype(np.float32)
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(cols)])
        frame["t"] = (x[:, 0] > 0).astype(int)
        frame.to_csv(tmp_path / f"{rows}.csv", index=False, float_format="%.5g")
        return tmp_path / f"{rows}.csv"

    def peak(path):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), "read"], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)["peak"]

    small, large = 400_000, 1_200_000
    grown = peak(write(large)) - peak(write(small))
    data_grown = (large - small) * (cols + 1) * 4
    assert grown < 1.5 * data_grown, f"{grown / data_grown:.2f} copies per added row"


@pytest.mark.parametrize("odd", [None, "1.0"])
def test_integer_labels_past_2_53_stay_distinct_classes_in_training_compress_and_predict(odd, tmp_path):
    """pyarrow's float64 reading rounded 2**53 + 1 to 2**53: a label column of the two was one class, refused
    as such. The labels are read as int64 (where a "1.0" is among them, from their text, exactly); the model
    trained on them, the table compress and explain read again, and predict's labels keep both classes."""
    from decimal import Decimal

    from trainers import TrainConfig, train
    from trainers.data import _encode_labels
    from trainers.inference import predict_file
    from trainers.tables import load_for_model

    rng = np.random.default_rng(0)
    labels = [str(2**53 + k % 2) for k in range(60)]
    if odd:
        labels[7] = odd
    rows = "".join(f"{rng.normal() + 3 * (k % 2):.3f},{label}\n" for k, label in enumerate(labels))
    path = _write(tmp_path, "a,t\n" + rows)
    frame = tables.read_table(path)
    assert frame["t"].dtype == np.int64 and frame["t"].tolist() == [int(Decimal(v)) for v in labels]
    names = ["9007199254740992", "9007199254740993"] if odd is None else ["1", "9007199254740992", "9007199254740993"]
    assert _encode_labels(labels)[1] == names  # the same classes from the labels' text
    model = train(str(path), "mlp", TrainConfig(epochs=10, model={"hidden": [4]}), out=tmp_path / "m",
                  progress=False).model
    assert model.spec.class_names == names
    assert load_for_model(str(path), model.spec).class_names == names  # as compress and explain read it
    _, predicted = predict_file(tmp_path / "m", path)
    assert set(predicted["predicted"]) <= set(names) and [c for c in predicted.columns if c.startswith("p_")] == [
        f"p_{name}" for name in names]
