"""Loading a CSV hands its raw columns back as they are encoded: the bundle equals the one made from the same
table as a DataFrame (whose columns are left as they are), and the memory handed back leaves the process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainers import buffers, load_data, tables

MiB = 1 << 20


def _table(rows: int = 3000) -> pd.DataFrame:
    """Floats, integers, a one-hot and an ordinal text column, missing cells (indicators), an ID and a constant."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=rows).round(3)
    frame = pd.DataFrame({
        "id": rng.permutation(rows) + 10_000, "a": a, "n": np.arange(rows) % 7,
        "colour": np.array(["red", "green", "blue"])[np.arange(rows) % 3],
        "city": [f"c{i % 23}" for i in range(rows)], "const": 5, "b": rng.normal(size=rows).round(2),
        "label": (a > 0).astype(int) + (np.arange(rows) % 5 == 0)})
    frame["a"] = frame["a"].astype(object)
    frame.loc[::17, "a"] = "NA"
    frame.loc[::29, "colour"] = ""
    return frame


def _same_bundle(got, expected) -> None:
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(got, f"x_{split}"), getattr(expected, f"x_{split}"))
        np.testing.assert_array_equal(getattr(got, f"y_{split}"), getattr(expected, f"y_{split}"))
    assert got.fingerprint == expected.fingerprint
    np.testing.assert_array_equal(got.mean, expected.mean)


def test_a_csv_loads_to_the_bundle_of_its_dataframe_which_stays_intact(tmp_path):
    path = tmp_path / "t.csv"
    _table().to_csv(path, index=False)
    from_file = load_data(str(path))
    frame = tables.read_table(path)  # numbers in memory the loader could hand back
    kept = frame.copy(deep=True)
    from_frame = load_data(frame, target="label")
    _same_bundle(from_file, from_frame)
    pd.testing.assert_frame_equal(frame, kept)  # the caller's frame is never handed back
    table = from_file.table
    assert table["dropped"] == {"id": "ID-like (unique per row)", "const": "constant"}
    assert {"a_missing", "colour=red", "colour_missing", "city"} <= set(table["outputs"])
    assert x_is_row_major(from_file)


def x_is_row_major(bundle) -> bool:
    return all(getattr(bundle, f"x_{s}").flags.c_contiguous for s in ("train", "val", "test"))


def test_a_trained_models_preprocessing_applied_to_a_csv_gives_the_same_rows(tmp_path):
    path = tmp_path / "t.csv"
    _table().to_csv(path, index=False)
    first = load_data(str(path))
    again = load_data(str(path), fitted=first.table)
    _same_bundle(again, first)


def _anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists() or not buffers._RELEASABLE, reason="Linux only")
def test_released_columns_leave_the_process_and_the_rest_keeps_its_values():
    rows, cols = 1 << 20, 16  # 4 MiB a column
    matrix = buffers.column_matrix(rows, cols)
    matrix[:] = np.arange(rows, dtype=np.float32)[:, None] + np.arange(cols, dtype=np.float32)
    before = _anon_bytes()
    for c in range(8):
        buffers.release(matrix[:, c])
    buffers.release(matrix[:5000, 8])  # its first 4096 rows fill whole pages; the rest shares one
    assert before - _anon_bytes() > 28 * MiB
    expected = np.arange(rows, dtype=np.float32)[:, None] + np.arange(cols, dtype=np.float32)
    np.testing.assert_array_equal(matrix[:, 9:], expected[:, 9:])
    np.testing.assert_array_equal(matrix[4096:, 8], expected[4096:, 8])


def test_release_leaves_memory_it_did_not_allocate_alone():
    values = np.arange(1 << 20, dtype=np.float32)
    buffers.release(values)
    frame = pd.DataFrame({"a": values}, copy=False)
    buffers.release(frame["a"].to_numpy())
    np.testing.assert_array_equal(values, np.arange(1 << 20, dtype=np.float32))


CHILD = """
import json, resource, sys
import trainers, pandas, torch, pyarrow.csv, sklearn.model_selection
from trainers import load_data
data = load_data(sys.argv[1])
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


@pytest.mark.slow
def test_loading_a_csv_grows_by_about_one_float32_copy_per_row(tmp_path):
    """The marginal peak per row (two file sizes, so the constants cancel): the raw table and its encoding
    are never both whole. Holding both measured 1.55 copies per added row here, handing the raw columns
    back 0.98."""
    cols = 50

    def write(rows):
        x = np.random.default_rng(rows).normal(size=(rows, cols - 1)).astype(np.float32)
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(cols - 1)])
        frame["t"] = (x[:, 0] > 0).astype(int)
        frame.to_csv(tmp_path / f"{rows}.csv", index=False, float_format="%.5g")
        return tmp_path / f"{rows}.csv"

    def peak(path):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak"]

    small, large = 100_000, 400_000
    grown = peak(write(large)) - peak(write(small))
    data_grown = (large - small) * cols * 4
    assert grown < 1.3 * data_grown, f"{grown / data_grown:.2f} copies per added row"
