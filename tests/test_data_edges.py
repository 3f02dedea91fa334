"""Edges of the data a user brings: constant columns in arrays, a failing pipeline with stderr piped, a resumed
run through a symlinked `--out` that another process wants too, table options in a distributed run, the
stratified split of a memory-mapped `.npy` file, and resizing a folder of images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trainers.distributed as distributed
from cli.main import main
from trainers import DataBundle, TrainConfig, load_data, load_model, train
from trainers.errors import DataError, ToolkitError
from trainers.images import RowView

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def toolkit(*args, cwd=ROOT) -> subprocess.Popen:
    """`toolkit ARGS` in a subprocess, stdout and stderr piped (not a terminal)."""
    return subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_error_line(stderr: str, expected: str) -> None:
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert expected in stderr and "Traceback" not in stderr, stderr


def _features(n: int = 60, width: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return (rng.normal(size=(n, width)) + y[:, None]).astype(np.float32), y


# Constant columns and statistics of array data.

@pytest.mark.parametrize("source", ["npz", "tuple", "from_arrays"])
def test_constant_columns_of_arrays_are_refused_for_training_naming_their_indices(source, tmp_path):
    """Loaded (a user's own model takes them as they are), named in the bundle, and refused by training."""
    x, y = _features()
    x[:, 1] = 0.0
    x[:, 3] = 12345.678  # far from zero: its one-pass std is rounding noise, not 0
    if source == "npz":
        np.savez(tmp_path / "d.npz", x=x, y=y)
        bundle = load_data(tmp_path / "d.npz")
    elif source == "tuple":
        bundle = load_data((x, y))
    else:
        bundle = DataBundle.from_arrays(x, y, feature_names=list("abcde"))
    assert bundle.constant_columns == (1, 3) and bundle.std.reshape(-1)[[1, 3]].tolist() == [1.0, 1.0]
    with pytest.raises(DataError) as refused:
        train(bundle, "mlp", TrainConfig(epochs=1))
    message = str(refused.value)
    assert "\n" not in message and "constant in the training split" in message
    assert "np.delete(x, [1, 3], axis=1)" in message
    assert ("1 ('b'), 3 ('d')" if source == "from_arrays" else "columns 1, 3 of x") in message
    x[:, 1], x[:, 3] = np.random.default_rng(1).normal(size=(2, len(x)))
    assert DataBundle.from_arrays(x, y).constant_columns == ()  # the same data without them trains


def test_a_users_own_model_is_not_refused_an_arrays_constant_column(tmp_path):
    """The refusal is about training (nothing to learn from a constant column); a user's model takes every column
    as it is, and the advice (delete the column) would break it: 8x8 digits flattened have constant border pixels."""
    import torch

    import compress

    x, y = _features(n=90)
    x[:, 0] = 0.0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    bundle = DataBundle.from_arrays(x, y)
    result = compress.compress_model(net, bundle, methods=["onnx-fp32"])
    assert [v.name for v in result.variants][-1] == "onnx-fp32"


def test_training_on_an_npz_with_a_constant_column_is_one_line_and_writes_nothing(tmp_path, capsys):
    x, y = _features()
    x[:, 2] = 7.0
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert main(["train", str(tmp_path / "d.npz"), "--model", "mlp", "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, "feature column 2 of x is constant")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_a_tables_constant_column_is_still_dropped_with_a_note(tmp_path):
    x, y = _features()
    frame = pd.DataFrame(x, columns=list("abcde")).assign(flat=3.0, label=y)
    data = load_data(frame, target="label")
    assert data.table["dropped"] == {"flat": "constant"} and "flat" not in data.feature_names
    assert np.all(np.isfinite(data.std)) and np.all(data.std > 0)


def test_statistics_that_do_not_fit_float32_are_refused():
    x, y = _features()
    x[:, 0] = np.where(y == 0, 3e38, -3e38)
    with pytest.raises(DataError, match="too large for float32 statistics"):
        DataBundle.from_arrays(x, y)


def test_a_constant_image_channel_is_centred_not_refused():
    """A column is a feature of a feature vector; an image channel that is all zero (blue in a red-green set) is
    common and harmless: it is centred and not scaled."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 4, 4)).astype(np.float32)
    x[:, 2] = 0.0
    data = DataBundle.from_arrays(x, np.arange(40) % 2)
    assert data.std.ravel()[2] == 1.0 and np.all(data.std.ravel()[:2] < 1)


# A failing pipeline with stderr piped.

LATE_FAILURE = ["pipeline", "iris", "--model", "mlp", "--epochs", "1", "--method", "distill", "--options",
                '{"distill": {"student_config": {"hidden": [0]}, "epochs": 1}}', "--explain-method", "saliency"]


def test_a_failing_pipeline_prints_one_line_when_stderr_is_piped(tmp_path):
    """The compress stage fails after training (a student width of 0 is found when distillation starts): with
    stderr piped the default progress prints nothing, so stderr is the error line alone."""
    proc = toolkit(*LATE_FAILURE, "--out", tmp_path / "run")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr
    one_error_line(stderr, "error: compress stage failed: ")
    assert stdout.strip() == str(tmp_path / "run" / "report.html")  # the report of what finished, on stdout


@pytest.mark.parametrize("mode", ["lines", "none"])
def test_progress_lines_show_the_steps_before_the_error_line_and_none_shows_none(mode, tmp_path, capsys):
    assert main(["--progress", mode, *LATE_FAILURE, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: compress stage failed: ")
    if mode == "lines":
        assert err.count("\n") > 3 and "train [1/1]" in err and "[2/4] compress ..." in err, err
    else:
        one_error_line(err, "compress stage failed")


def test_a_pipeline_on_a_corrupt_data_file_prints_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    proc = toolkit("pipeline", tmp_path / "bad.npz", "--model", "mlp", "--out", tmp_path / "run", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and stdout == ""
    one_error_line(stderr, "bad.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


# Resuming through a symlinked --out while another process wants the same directory.

def _interrupted_run(out: Path) -> None:
    """A train run stopped by Ctrl-C in its second epoch: it keeps its checkpoint."""
    from fake_runs import interrupted_train

    interrupted_train(out, 40, {"hidden": [8]})


def test_resume_through_a_symlinked_out_locks_the_target_and_refuses_a_second_run_at_once(tmp_path):
    store, links = tmp_path / "store", tmp_path / "links"
    links.mkdir()
    _interrupted_run(store / "target")
    (links / "run").symlink_to(store / "target")
    args = ["train", "iris", "--model", "mlp", "--arch", '{"hidden": [8]}', "--epochs", "40", "--resume"]
    first = toolkit(*args, "--out", links / "run")
    deadline = time.time() + 300
    while not (store / "target.partial").exists():  # staged beside the target: the link was resolved
        if first.poll() is not None or time.time() > deadline:
            first.kill()
            raise AssertionError(f"the resumed run never staged its directory: {first.communicate()[1][-2000:]}")
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # holds the lock while the others try
    try:
        assert (store / ".target.lock").exists() and not (links / ".run.lock").exists()
        others = [toolkit(*args, "--out", links / "run"), toolkit(*args, "--out", store / "target")]
        for other in others:
            stdout, stderr = other.communicate(timeout=300)
            assert other.returncode == 2 and stdout == ""
            one_error_line(stderr, f"another toolkit run is writing {store / 'target'}")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert stdout.strip() == str(store / "target")
    assert (links / "run").is_symlink() and os.readlink(links / "run") == str(store / "target")
    result = json.loads((store / "target" / "result.json").read_text())
    assert result["epochs_run"] > 2  # continued past the interrupted epoch
    assert sorted(p.name for p in links.iterdir()) == ["run"]
    assert sorted(p.name for p in store.iterdir()) == ["target"]  # no .partial, no lock left
    assert load_model(links / "run").spec.config["hidden"] == [8]


# Table options reach the processes of a distributed run.

def _table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    frame = pd.DataFrame({"id": np.arange(n) * 7 + 3, "a": rng.normal(size=n) + y, "label": y,
                          "b": rng.normal(size=n) - y, "noise": rng.normal(size=n)})
    frame.to_csv(tmp_path / "t.csv", sep=";", index=False)
    return tmp_path / "t.csv"


def test_launch_training_passes_the_table_options_and_image_size_to_every_process(tmp_path, monkeypatch):
    from trainers.tables import TableOptions

    seen = {}
    monkeypatch.setattr(distributed, "launch", lambda options, argv, *rest: seen.setdefault("argv", argv) and 0)
    table = TableOptions("label", ("id",), ("noise", "-odd"), ";")
    code = distributed.launch_training(_table(tmp_path), "mlp", TrainConfig(epochs=2), distributed.LaunchOptions(2),
                                       out=tmp_path / "run", table=table, image_size=16)
    assert code == 0
    argv = seen["argv"]
    for flag in ("--target=label", "--keep=id", "--drop=noise", "--drop=-odd", "--sep=;"):
        assert flag in argv
    assert argv[argv.index("--image-size") + 1] == "16"
    assert "--target=other" in distributed._table_args(table, "other")  # an explicit target wins


@pytest.mark.slow
def test_two_gloo_processes_train_on_a_table_with_its_options(tmp_path):
    csv = _table(tmp_path)
    proc = toolkit("train", csv, "--model", "mlp", "--device", "cpu", "--nproc-per-node", "2", "--epochs", "3",
                   "--target", "label", "--keep", "id", "--drop", "noise", "--sep", ";", "--out", tmp_path / "run")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    spec = load_model(tmp_path / "run").spec
    read = spec.preprocessing["table"]["read"]
    assert read == {"target": "label", "keep": ["id"], "drop": ["noise"], "sep": ";"}
    assert spec.preprocessing["table"]["dropped"] == {"noise": "dropped with --drop"}
    assert spec.feature_names == ["id", "a", "b"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["processes"] == 2


# The stratified split of a memory-mapped .npy file.

def test_npy_split_is_stratified_without_reading_the_file(tmp_path):
    counts = np.array([120, 50, 30])
    y = np.repeat([0, 1, 2], counts)  # saved ordered by class: contiguous splits would miss classes
    x = (np.arange(len(y) * 4, dtype=np.float32).reshape(-1, 4) % 17) + y[:, None]
    np.save(tmp_path / "seq.npy", x)
    np.save(tmp_path / "seq.labels.npy", y)
    data = load_data(tmp_path / "seq.npy")
    assert data.split["stratified"]
    share = counts / counts.sum()
    seen = []
    for split in ("train", "val", "test"):
        rows, labels = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert isinstance(rows, RowView) and isinstance(rows.base, np.memmap)  # index arrays into the file
        assert np.all(np.abs(np.bincount(labels, minlength=3) - share * len(labels)) <= 1), (split, labels)
        assert np.array_equal(np.asarray(rows), x[rows.index]) and np.array_equal(y[rows.index], labels)
        assert np.all(np.diff(rows.index) > 0)  # read front to back
        seen.append(rows.index)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(y)))  # disjoint, every row once
    again = load_data(tmp_path / "seq.npy")
    assert np.array_equal(again.x_test.index, data.x_test.index)  # seeded
    assert not np.array_equal(load_data(tmp_path / "seq.npy", seed=1).x_test.index, data.x_test.index)


def test_row_view_reads_rows_as_numpy_would(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "a.npy", x)
    index = np.array([1, 4, 5, 9, 12, 19])
    view = RowView(np.load(tmp_path / "a.npy", mmap_mode="r"), index)
    assert view.shape == (6, 3) and len(view) == 6 and view.ndim == 2 and view.dtype == np.float32
    assert isinstance(view[1:4], RowView) and np.array_equal(np.asarray(view[1:4]), x[index[1:4]])
    assert np.array_equal(view[[0, 5]], x[[1, 19]]) and np.array_equal(view[2], x[5])
    assert np.array_equal(view[:, 1], x[index, 1]) and np.asarray(view, dtype=np.float64).dtype == np.float64
    assert np.array_equal(view[np.array([True, False] * 3)], x[[1, 5, 12]])


def test_npy_labels_are_values_and_a_model_trains_on_the_views(tmp_path):
    x, y = _features(90)
    np.save(tmp_path / "d.npy", x + 2 * y[:, None])  # classes three units apart
    np.save(tmp_path / "d.labels.npy", np.array([0, 10**9, 7])[y])  # no class per integer below 10**9
    data = load_data(tmp_path / "d.npy")
    assert data.class_names == ["0", "7", "1000000000"]
    result = train(data, "mlp", TrainConfig(epochs=30, model={"hidden": [16]}), progress=False)
    assert result.metrics["test_accuracy"] > 0.6  # chance: 1/3


# Resizing a folder of images.

def _images(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "light")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(8):
            side = 10 + 3 * (i % 3)  # three sizes
            pixels = rng.integers(0, 100, (side, side)) + 150 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / "photos" / name / f"{i}.png")
    return root / "photos"


def test_image_size_resizes_a_folder_from_python_and_the_environment(tmp_path, monkeypatch):
    photos = _images(tmp_path)
    monkeypatch.delenv("TOOLKIT_IMAGE_SIZE", raising=False)
    with pytest.raises(DataError, match="--image-size N"):
        load_data(photos)
    assert load_data(photos, image_size=12).input_shape == (1, 12, 12)
    monkeypatch.setenv("TOOLKIT_IMAGE_SIZE", "9")
    assert load_data(photos).input_shape == (1, 9, 9)  # the variable still works
    assert load_data(photos, image_size=14).input_shape == (1, 14, 14)  # the argument wins
    for bad in (3, 2000, True, 8.5):
        with pytest.raises(DataError, match="from 4 to 1024"):
            load_data(photos, image_size=bad)
    for other in ("iris", (np.zeros((20, 2)), np.arange(20) % 2)):
        with pytest.raises(DataError, match="resizes the images of a folder"):
            load_data(other, image_size=12)


def test_image_size_on_train_and_the_model_size_reused_by_compress(tmp_path, capsys):
    from trainers.tables import load_for_model

    photos = _images(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(photos), "--model", "cnn", "--epochs", "1", "--image-size", "12", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.spec.input_shape == [1, 12, 12]
    assert load_for_model(str(photos), model.spec).input_shape == (1, 12, 12)  # no --image-size needed again
    capsys.readouterr()
    assert main(["train", str(photos), "--model", "cnn", "--image-size", "2", "--out", str(tmp_path / "r2")]) == 2
    one_error_line(capsys.readouterr().err, "--image-size must be a whole number of pixels from 4 to 1024")


def test_image_size_in_the_pipeline_config():
    from reports.config import resolve_config

    assert resolve_config({"image_size": 32}).image_size == 32
    assert resolve_config(None, {"image_size": 24}).to_dict()["image_size"] == 24
    with pytest.raises(ToolkitError, match="image_size"):
        resolve_config(None, {"image_size": 2})


def test_the_launcher_names_its_torchrun_command_only_when_progress_is_shown(monkeypatch, capsys):
    import torch.distributed.run as torchrun

    from trainers.distributed import LaunchOptions, launch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    started = []
    monkeypatch.setattr(torchrun, "run", started.append)
    assert launch(LaunchOptions(1), ["iris"], "cpu", announce=False) == 0
    assert capsys.readouterr().err == ""
    assert launch(LaunchOptions(1), ["iris"], "cpu") == 0
    assert "launching: torchrun" in capsys.readouterr().err and len(started) == 2


@pytest.mark.parametrize("names", [None, np.array([b"\xff", b"a", b"b"])], ids=["labels", "class_names"])
def test_bytes_that_are_not_utf8_are_one_data_error_line(names, tmp_path):
    """Bytes labels or class names are decoded as UTF-8, as a CSV is; others ended in UnicodeDecodeError, exit 1."""
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    y = np.array([b"\xff\xfe", b"a", b"b"] * 20) if names is None else np.arange(60) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, **({} if names is None else {"class_names": names}))
    with pytest.raises(DataError, match="holds bytes that are not UTF-8 text"):
        load_data(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "ok.npz", x=x, y=np.array(["café".encode(), b"a", b"b"] * 20))
    assert load_data(str(tmp_path / "ok.npz")).class_names == ["a", "b", "café"]


def test_a_long_class_name_is_cut_in_the_error_line():
    """A 1 MB class name given twice made a 1 MB error line."""
    long = "x" * 1_000_000
    with pytest.raises(DataError) as info:
        DataBundle.from_arrays(np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3,
                               class_names=[long, long, "b"])
    assert len(str(info.value)) < 300 and "(1,000,000 characters)" in str(info.value)


def test_a_class_too_thin_for_a_split_is_named_with_its_counts(tmp_path):
    """Before, a 2-row class (1 training, 0 validation, 1 test row) was reported with recall 0.0 without a word."""
    from fake_runs import toolkit_warnings

    x, y = _features(200)
    y[:2] = 3  # a fourth class of two rows
    np.savez(tmp_path / "thin.npz", x=x, y=y)
    with toolkit_warnings() as said:
        train(str(tmp_path / "thin.npz"), "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), progress=False)
    lines = [line for line in said if "too few to learn or judge" in line]
    # Its second row, alone once the test split took one, is kept for training (it went to validation, unstratified).
    assert lines == ["class '3' has 1 training, 0 validation and 1 test row(s): too few to learn or judge (the split "
                     "is stratified: each split takes its share of every class, rounded, and a class too small for "
                     "all three keeps its rows for training first)"]
    with toolkit_warnings() as said:
        train("iris", "mlp", TrainConfig(epochs=1), progress=False)
    assert not any("too few" in line for line in said)
