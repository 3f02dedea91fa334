"""`toolkit predict` streams a file: rows read, preprocessed and predicted a chunk at a time, the predictions
written as they come into a file that appears only when complete. Chunked or not, the answers, their order, the
warnings and the errors are the same; `--out` writes the format its suffix names."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import trainers.artifact as artifact
import trainers.csvread as csvread
import trainers.streaming as streaming
from cli.main import main
from trainers import TrainConfig, load_model, predict, train
from trainers.inference import predict_file, tabulate
from trainers.tables import read_table


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n).round(3), "b": rng.normal(size=n).round(3),
                          "color": rng.choice(["red", "green", "blue"], size=n)})
    frame.loc[rng.choice(n, n // 10, replace=False), "a"] = np.nan
    return frame


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    frame = _frame(200)
    frame["label"] = np.where(frame.a.fillna(0) + frame.b > 0, "yes", "no")
    frame.to_csv(root / "train.csv", index=False)
    train(str(root / "train.csv"), "mlp", TrainConfig(epochs=2, model={"hidden": [8]}), target="label",
          out=root / "model", progress=False)
    return root / "model"


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 rows and pyarrow blocks of 512 bytes, so a small file is read in many pieces."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 64)
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 512)


def _whole(model_dir, path, batch_size=16):
    """The predictions of the file read at once, in calls of `batch_size` (what predict did before streaming)."""
    loaded = load_model(model_dir)
    return tabulate(loaded, predict(loaded, read_table(path), batch_size=batch_size))


def test_chunked_predictions_equal_the_whole_file_in_order(model, tmp_path, small_chunks, monkeypatch):
    rows = _frame(300, seed=1)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    calls = []
    real = artifact.raw_rows_to_inputs
    monkeypatch.setattr(artifact, "raw_rows_to_inputs", lambda m, x: calls.append(len(x)) or real(m, x))
    _, table = predict_file(model, tmp_path / "rows.csv", batch_size=16)
    # the rows are preprocessed a chunk at a time (64 rows, 4 calls of 16), not once per call of 16 rows
    assert calls == [64, 64, 64, 64, 44]
    pd.testing.assert_frame_equal(table, _whole(model, tmp_path / "rows.csv"))
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--batch-size", "16", "--out",
                 str(tmp_path / "p.csv")]) == 0
    written = pd.read_csv(tmp_path / "p.csv")
    assert written["predicted"].tolist() == table["predicted"].tolist()
    np.testing.assert_array_equal(written.filter(like="p_").to_numpy(np.float32), table.filter(like="p_").to_numpy())


def test_a_file_the_streaming_reader_gives_up_on_midway_is_read_whole(model, tmp_path, small_chunks, capsys):
    """Text in a numeric column after the first block: the whole-file reader's message, and no --out file."""
    rows = _frame(300, seed=2).astype({"b": object})
    rows.loc[250, "b"] = "hello"
    rows.to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "p.csv")]) == 2
    out, err = capsys.readouterr()
    assert "column 'b' was numeric at training but holds text here ('hello')" in err and out == ""
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.csv"]  # no half-written file, no temporary one
    assert main(["predict", str(model), str(tmp_path / "bad.csv")]) == 2
    assert capsys.readouterr().out == ""  # nothing on stdout: the CSV is printed only once every row is predicted


def test_unseen_levels_are_named_once_per_file_across_chunks(model, tmp_path, small_chunks, capsys):
    rows = _frame(300, seed=3)
    rows.loc[5, "color"], rows.loc[280, "color"] = "purple", "teal"
    rows.to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "never saw" in line]
    assert warnings == ["warning: column 'color' holds levels training never saw ('purple', 'teal'); they are "
                        "encoded as no known level"]


def test_out_writes_the_format_its_suffix_names(model, tmp_path, capsys):
    _frame(50, seed=4).to_csv(tmp_path / "rows.csv", index=False)
    expected = _whole(model, tmp_path / "rows.csv", batch_size=256)
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.parquet")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), expected, check_dtype=False)
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.parquet"),
                 "--overwrite"]) == 0  # its own Parquet predictions may be replaced
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.tsv")]) == 0
    assert pd.read_csv(tmp_path / "p.tsv", sep="\t")["predicted"].tolist() == expected["predicted"].tolist()
    capsys.readouterr()
    for name in ("p.json", "p.npz", "p.xlsx"):
        assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "written as .csv, .tsv or .parquet" in err
        assert not (tmp_path / name).exists()


def test_the_cli_and_trainers_predict_share_one_default_batch(model, tmp_path, monkeypatch):
    """An int8-dynamic graph's answers depend on its calls: both entry points make the same calls by default."""
    sizes = []
    real = artifact._runner

    def recording(m, raw, device):
        run = real(m, raw, device)
        return lambda chunk: sizes.append(len(chunk)) or run(chunk)

    monkeypatch.setattr(artifact, "_runner", recording)
    _frame(600, seed=5).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    cli, sizes[:] = list(sizes), []
    predict(load_model(model), read_table(tmp_path / "rows.csv"))
    assert cli == sizes == [256, 256, 88]


def test_predicting_with_an_onnx_variant_imports_no_pytorch(model, tmp_path):
    """PyTorch's import was 1.0-1.3 s of a 2.3 s `toolkit predict` on 10,000 rows where a 20-line ONNX Runtime
    script took 0.5 s: an artifact that ONNX Runtime runs is served without its PyTorch twin, and the same
    predictions come out."""
    import subprocess
    import sys

    from compress import compress_model

    compress_model(load_model(model), str(model.parent / "train.csv"), methods=["onnx-fp32"], out=tmp_path / "c")
    variant = tmp_path / "c" / "variants" / "onnx-fp32"
    _frame(50, seed=3).to_csv(tmp_path / "rows.csv", index=False)
    script = ("import sys\nfrom cli.main import main\n"
              f"code = main(['predict', {str(variant)!r}, {str(tmp_path / 'rows.csv')!r}, '--out', "
              f"{str(tmp_path / 'p.csv')!r}])\n"
              "print(code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr[-2000:]  # after the path of the file written
    expected = tabulate(load_model(variant), predict(load_model(variant), read_table(tmp_path / "rows.csv")))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), expected, check_dtype=False)


def test_a_parquet_file_streams_in_chunks_with_the_whole_files_answers(model, tmp_path, small_chunks, monkeypatch):
    """Parquet is read a chunk at a time too (a row group per 100 rows here, regrouped into chunks of 64): the same
    answers as the file read whole, a category column and an index pandas stored included."""
    rows = _frame(300, seed=5)
    rows["color"] = rows["color"].astype("category")
    rows.index = rows.index * 7 + 3
    rows.to_parquet(tmp_path / "rows.parquet", row_group_size=100)
    expected = _whole(model, tmp_path / "rows.parquet")
    calls = []
    real = artifact.raw_rows_to_inputs
    monkeypatch.setattr(artifact, "raw_rows_to_inputs", lambda m, x: calls.append(len(x)) or real(m, x))
    import trainers.tables as tables

    monkeypatch.setattr(tables, "_read_parquet", lambda path: pytest.fail("the whole file was read"))
    _, table = predict_file(model, tmp_path / "rows.parquet", batch_size=16)
    assert calls == [64, 64, 64, 64, 44]
    pd.testing.assert_frame_equal(table, expected)


def test_a_parquet_chunk_past_the_data_budget_is_one_line_and_no_file(model, tmp_path, small_chunks, capsys,
                                                                     monkeypatch):
    """Each chunk is counted before it is decoded: a file whose chunks fit streams (the whole file read at once
    would be over the budget); a chunk of text that decodes past it is refused with one line and no --out."""
    rows = _frame(300, seed=6)
    rows.to_parquet(tmp_path / "rows.parquet")
    monkeypatch.setenv("TOOLKIT_MAX_DATA_BYTES", str(6_000))   # 64 rows fit; the file's 300 rows do not
    assert main(["predict", str(model), str(tmp_path / "rows.parquet"), "--batch-size", "16", "--out",
                 str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 300
    rows["color"] = "x" * 1_000   # 64 rows of it: 64,000 bytes decoded
    rows.to_parquet(tmp_path / "long.parquet")
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "long.parquet"), "--batch-size", "16", "--out",
                 str(tmp_path / "q.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "64 of its rows decode to more than 6,000 bytes" in err
    assert not (tmp_path / "q.csv").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "long.parquet", "p.csv", "rows.parquet"]


def test_a_parquet_file_without_a_column_the_model_needs_gets_the_whole_readers_message(model, tmp_path, capsys):
    _frame(50, seed=7).drop(columns="color").to_parquet(tmp_path / "rows.parquet")
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "rows.parquet")]) == 2
    assert "color" in capsys.readouterr().err



@pytest.mark.parametrize("kind, sep", [("csv", ","), ("tsv", "\t")])
def test_the_written_predictions_are_pandas_cells_and_quotes_with_arrows_numbers(kind, sep):
    """Arrow writes the rows (pandas' to_csv was half of `toolkit predict` on 1M rows): the header, the text cells,
    the quotes only where a cell needs them (a chunk holding such a cell is written by pandas) and the empty cells
    of missing values are pandas' text; a number is Arrow's shortest text of the same float32 (`5e-8`, `1`, not
    pandas' `5e-08`, `1.0`)."""
    import csv
    import io

    def table(names, p):
        return pd.DataFrame({"predicted": names, "predicted_index": np.arange(len(names)),
                             "p_a,b": np.asarray(p, np.float32), "p_c": np.float32(1) - np.asarray(p, np.float32)})

    tables = [table(["x", "y", "z", "w"], [5e-8, np.nan, 1 / 3, 0.0]),  # Arrow's chunk
              table(['a,b', 'q"x', "l\nm", "t\tu"], [np.inf, 0.1, 1e-30, 0.5]),  # cells to quote: pandas' chunk
              table([], [])]
    handle = io.BytesIO()
    streaming.write_table_file(iter(tables), handle, kind)
    text = handle.getvalue().decode()
    expected = pd.concat(tables, ignore_index=True).to_csv(index=False, sep=sep)

    def cells(written):
        header, *rows = csv.reader(io.StringIO(written, newline=""), delimiter=sep)
        return [header] + [row[:2] + [np.float32(cell) if cell else cell for cell in row[2:]] for row in rows]

    got, want = cells(text), cells(expected)
    assert got == want and len(got) == 9  # the text cells as pandas writes them, numbers the same float32 values
    lines = text.splitlines()
    header = 'predicted,predicted_index,"p_a,b",p_c' if sep == "," else "predicted\tpredicted_index\tp_a,b\tp_c"
    assert lines[0] == header  # pandas' header, quoted where needed
    assert lines[1:5] == [sep.join(r) for r in (["x", "0", "5e-8", "0.99999994"], ["y", "1", "", ""],
                                                ["z", "2", "0.33333334", "0.6666666"], ["w", "3", "0", "1"])]
    assert text.endswith(tables[1].to_csv(index=False, header=False, sep=sep))  # a chunk to quote: pandas' text


def _file_too_large(monkeypatch):
    """The predictions' writer as under `ulimit -f`: some bytes out, then EFBIG from a write() (no file named)."""
    import errno
    import os

    def write_table_file(tables, handle, kind):
        handle.write(b"predicted,")
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(streaming, "write_table_file", write_table_file)


@pytest.mark.parametrize("to_stdout", [False, True])
def test_a_failed_write_names_the_file_or_the_spool_that_holds_stdouts_csv(model, tmp_path, monkeypatch, capsys,
                                                                          to_stdout):
    _frame(20).to_csv(tmp_path / "rows.csv", index=False)
    _file_too_large(monkeypatch)
    out = [] if to_stdout else ["--out", str(tmp_path / "p.csv")]
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    named = "the spool file in " if to_stdout else f"cannot write {tmp_path / 'p.csv'}: "
    assert named in err and "File too large" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


def test_a_later_predict_removes_the_temporary_file_a_killed_one_left_and_no_other(model, tmp_path):
    import subprocess
    import sys

    _frame(20).to_csv(tmp_path / "rows.csv", index=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID no process has now: what `kill -9` of a predict leaves in the name of its temporary file
    stale = tmp_path / f".p.csv.{gone.pid}.abcd_123.tmp"
    stale.write_bytes(b"predicted,predicted_index,p_no\n" * 1000)
    alive = tmp_path / f".p.csv.{os.getppid()}.abcd_123.tmp"  # a running process's: perhaps writing p.csv now
    keep = [tmp_path / ".p.csv.abcd_123.tmp", tmp_path / f".q.csv.{gone.pid}.abcd_123.tmp", alive,
            tmp_path / f".p.csv.{gone.pid}.notes.tmp"]  # the old form, another file's, the user's
    for path in keep:
        path.write_text("keep")
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert not stale.exists() and all(p.read_text() == "keep" for p in keep)
    assert (tmp_path / "p.csv").is_file()
