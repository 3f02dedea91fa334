"""Small hostile inputs against the resource limits and validation, in one table.

Each case crafts a small file (a few KB) that used to exhaust memory, be accepted silently or end in
"unexpected error", runs the real command, and checks the contract for bad input: exit code 2, exactly
one `error:` line on stderr naming the cause, no traceback, nothing written. The cases that used to
exhaust memory also run as real subprocesses whose peak RSS (os.wait4's rusage of that one child) must
stay under 1 GB.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from cli.main import main
from trainers import TrainConfig, load_model, train
from trainers.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]
PEAK_RSS_LIMIT = 1 << 30


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("limits") / "iris"
    train("iris", "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), out=out, progress=False)
    return out


# ---------------------------------------------------------------- crafted files


def npy_bytes(shape, descr="<f4", data=b"") -> bytes:
    """A .npy member with any header (shape may claim more than the data holds)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def npz_of(path: Path, members: dict[str, bytes], compress: bool = False) -> str:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as archive:
        for name, content in members.items():
            archive.writestr(name + ".npy", content)
    return str(path)


def array_npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def image_folder(path: Path, side: int) -> str:
    """Two class folders of six side x side RGB images: 12 x 3 x side**2 float32 values once decoded."""
    from PIL import Image

    for k, name in enumerate("ab"):
        (path / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (side, side), (40 * k, 10 * i, 0)).save(path / name / f"{i}.png")
    return str(path)


def wide_csv(path: Path, columns: int) -> str:
    with path.open("w") as handle:
        handle.write(",".join(f"c{i}" for i in range(columns)) + "\n")
        for row in range(4):
            handle.write(",".join([str(row % 2)] * columns) + "\n")
    return str(path)


def text_parquet(path: Path) -> str:
    """20 row groups of 1,000 rows of one 1,000-character string: 20 MB decoded from a few KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("s", pa.string()), ("y", pa.int64())])
    with pq.ParquetWriter(path, schema, use_dictionary=True, compression="zstd") as writer:
        for _ in range(20):
            writer.write_table(pa.table({"s": ["a" * 1000] * 1000, "y": np.arange(1000) % 2}, schema=schema))
    return str(path)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def broken_model(tmp: Path, model_dir: Path, change: Callable[[Path], None]) -> str:
    model = tmp / "model"
    shutil.copytree(model_dir, model)
    change(model)
    return str(model)


def drop_sha(model: Path) -> None:
    edit_json(model / "model.json", lambda d: d["weights"].pop("sha256"))


def sparse_bomb(model: Path) -> None:
    """A ~1 KB sparse-codec file whose index claims 16384 x 16384 matrices (2**28 zeros each)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    index = [{"name": name, "shape": [16384, 16384], "dtype": "float32", "count": 1}
             for name in tensors if name.endswith("weight")]
    stored = {k: v for k, v in tensors.items() if not k.endswith("weight")}
    stored["__sparse__.index"] = torch.frombuffer(bytearray(json.dumps(index).encode()), dtype=torch.uint8)
    stored["__sparse__.values"] = torch.ones(len(index))
    stored["__sparse__.gaps"] = torch.zeros(len(index), dtype=torch.uint8)
    save_file(stored, str(model / "model.safetensors"))
    edit_json(model / "model.json", lambda d: d["weights"].update(codec="sparse"))
    drop_sha(model)


def int8_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    save_file({k: v.to(torch.int8) if k.endswith("weight") else v for k, v in tensors.items()},
              str(model / "model.safetensors"))
    drop_sha(model)


def weights_link_outside(model: Path) -> None:
    outside = model.parent / "elsewhere.safetensors"
    (model / "model.safetensors").rename(outside)
    (model / "model.safetensors").symlink_to(outside)


LAUGHS = "train:\n  arch:\n    a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"    {n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


# ---------------------------------------------------------------- the table


@dataclass
class Case:
    build: Callable[["Ctx"], list[str]]  # argv after `toolkit`
    expect: str                           # words the one error line must contain
    rss: bool = False                     # also run as a subprocess with its peak RSS measured
    env: dict | None = None


class Ctx:
    def __init__(self, tmp: Path, model_dir: Path):
        self.tmp, self.model_dir, self.out = tmp, model_dir, tmp / "out"

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def model(self, change: Callable[[Path], None]) -> str:
        return broken_model(self.tmp, self.model_dir, change)


def _train(data: Callable[[Ctx], str], *extra: str):
    return lambda c: ["train", data(c), "--model", "mlp", "--epochs", "1", "--out", str(c.out), *extra]


def _compress(change: Callable[[Path], None]):
    return lambda c: ["compress", c.model(change), "--data", "iris", "--method", "int8-dynamic", "--out", str(c.out)]


def _pipeline(config_name: str, text: str):
    return lambda c: ["pipeline", "iris", "--model", "mlp", "--config", c.file(config_name, text), "--out", str(c.out)]


def _x(n=40, f=4):
    return np.random.default_rng(0).normal(size=(n, f)).astype(np.float32)


CASES: dict[str, Case] = {
    # data files
    "npz zip bomb (inflates past the budget)": Case(
        _train(lambda c: npz_of(c.tmp / "d.npz", {"x": array_npy(np.zeros((1 << 20, 4), np.float32)),
                                                  "y": array_npy(np.arange(1 << 20) % 2)}, compress=True)),
        "inflate to more than", rss=True, env={"TOOLKIT_MAX_DATA_BYTES": str(1 << 22)}),
    "npz of int8 inputs, 4x their stored bytes as float32": Case(
        _train(lambda c: npz_of(c.tmp / "i8.npz", {"x": array_npy(np.ones((1 << 18, 4), np.int8)),
                                                   "y": array_npy(np.arange(1 << 18, dtype=np.uint8) % 2)})),
        "4,194,304", env={"TOOLKIT_MAX_DATA_BYTES": str(3 << 20)}),
    "image folder decoding past the data budget": Case(
        _train(lambda c: image_folder(c.tmp / "img", 64)), "589,824 bytes",
        env={"TOOLKIT_MAX_DATA_BYTES": str(1 << 19)}),
    "npz header claiming 10**10 rows": Case(
        _train(lambda c: npz_of(c.tmp / "d.npz", {"x": npy_bytes((10**10, 4)), "y": array_npy(np.arange(40) % 2)})),
        "declares shape", rss=True),
    "truncated numeric npz member": Case(
        _train(lambda c: npz_of(c.tmp / "d.npz", {"x": array_npy(_x())[:200], "y": array_npy(np.arange(40) % 2)})),
        "truncated"),
    "npz of object arrays": Case(
        _train(lambda c: npz_of(c.tmp / "d.npz", {"x": npy_bytes((40, 4), "|O"), "y": array_npy(np.arange(40) % 2)})),
        "unpickling"),
    "20,000 classes of one sample each": Case(
        _train(lambda c: npz_of(c.tmp / "d.npz", {"x": array_npy(_x(20_000, 1)), "y": array_npy(np.arange(20_000))},
                                compress=True)), "classes", rss=True),
    "values near float32's limit": Case(
        _train(lambda c: npz_of(c.tmp / "d.npz", {"x": array_npy(np.abs(_x()) * 1e38), "y": array_npy(np.arange(40) % 2)})),
        "too large"),
    "CSV of 100,000 columns and 4 rows (1.5 MB)": Case(_train(lambda c: wide_csv(c.tmp / "w.csv", 100_000)),
                                                     "100,000 columns, more than the limit", rss=True),
    "Parquet of one long string a thousand times (dictionary-encoded)": Case(
        _train(lambda c: text_parquet(c.tmp / "t.parquet")), "decode to more than", rss=True,
        env={"TOOLKIT_MAX_DATA_BYTES": str(1 << 22)}),
    "predict: npz zip bomb (inflates past the budget)": Case(
        lambda c: ["predict", str(c.model_dir), npz_of(c.tmp / "r.npz", {"x": array_npy(np.zeros((1 << 20, 4), np.float32))},
                                                       compress=True), "--out", str(c.out)],
        "inflate to more than", rss=True, env={"TOOLKIT_MAX_DATA_BYTES": str(1 << 22)}),
    "predict: .npy past the data budget": Case(
        lambda c: ["predict", str(c.model_dir), c.file("r.npy", array_npy(np.zeros((1 << 18, 4), np.float32))),
                   "--out", str(c.out)], "more than the data budget", env={"TOOLKIT_MAX_DATA_BYTES": str(1 << 20)}),
    # options
    "seed 2**62": Case(_train(lambda c: "iris", "--seed", str(2**62)), "seed"),
    "lr 1e10": Case(_train(lambda c: "iris", "--lr", "1e10"), "lr"),
    "architecture of 2 G parameters": Case(_train(lambda c: "iris", "--arch", '{"hidden": [45000, 45000]}'),
                                           "parameters", rss=True),
    "--nproc-per-node beyond the cores": Case(
        _train(lambda c: "iris", "--device", "cpu", "--nproc-per-node", str((os.cpu_count() or 1) + 22)), "core"),
    "30,000 one-unit layers": Case(_train(lambda c: "iris", "--arch", json.dumps({"hidden": [1] * 30_000})),
                                               "layers", rss=True),
    # model artifacts
    "sparse codec entries beyond the architecture": Case(_compress(sparse_bomb), "shape", rss=True),
    "model.json with hidden [45000, 45000]": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d["config"].update(hidden=[45000, 45000]))),
        "parameters", rss=True),
    "model.json with 5,000 class names": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d.update(class_names=[str(i) for i in range(5000)]))),
        "classes"),
    "model.json with an input of 10**12 features": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d.update(input_shape=[10**12]))), "inputs of shape"),
    "preprocessing std of zeros": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d["preprocessing"].update(std=[0.0] * 4))),
        "preprocessing.std"),
    "weights stored as int8": Case(_compress(int8_weights), "stored as int8"),
    "weights a symlink out of the artifact": Case(_compress(weights_link_outside), "symbolic link"),
    "class names as dicts": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d.update(class_names=[{"a": 1}] * 3))), "strings"),
    "weights field not a dict": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d.update(weights=[1]))), "'weights'"),
    "model.json 'onnx' a string": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d.update(onnx="x"))), "'onnx' must be an object"),
    "model.json 'dtype' a list": Case(
        _compress(lambda m: edit_json(m / "model.json", lambda d: d.update(dtype=[1]))), "'dtype' must be a string"),
    "report: model.json 'preprocessing' a string": Case(
        lambda c: ["report", c.model(lambda m: edit_json(m / "model.json", lambda d: d.update(preprocessing="x"))),
                   "--out", str(c.out)], "'preprocessing' must be an object"),
    "report: model.json 'class_names' a number": Case(
        lambda c: ["report", c.model(lambda m: edit_json(m / "model.json", lambda d: d.update(class_names=5))),
                   "--out", str(c.out)], "'class_names' must be a list"),
    "report: result.json 'stage' a list": Case(
        lambda c: ["report", c.model(lambda m: edit_json(m / "result.json", lambda d: d.update(stage=[1]))),
                   "--out", str(c.out)], "'stage' is [1]"),
    "report: result.json 'schema_version' an object": Case(
        lambda c: ["report", c.model(lambda m: edit_json(m / "result.json", lambda d: d.update(schema_version={}))),
                   "--out", str(c.out)], "schema_version {}"),
    "deeply nested model.json": Case(
        _compress(lambda m: (m / "model.json").write_text("[" * 100_000 + "]" * 100_000)), "nested too deeply"),
    # configuration files
    "YAML billion laughs in train.arch": Case(_pipeline("c.yaml", LAUGHS), "aliases", rss=True),
    "YAML duplicate keys": Case(_pipeline("c.yaml", "train:\n  epochs: 1\n  epochs: 2\n"), "duplicate key"),
    "JSON duplicate keys": Case(_pipeline("c.json", '{"train": {"epochs": 1, "epochs": 2}}'), "duplicate key"),
    "explain.samples 10**12": Case(_pipeline("c.toml", "[explain]\nsamples = 1000000000000\n"), "explain.samples",
                                   rss=True),
    "typo in train.arch": Case(_pipeline("c.toml", "[train.arch]\nhiden = [8]\n"), "hiden"),
    "deeply nested JSON config": Case(_pipeline("c.json", "[" * 100_000 + "]" * 100_000), "c.json"),
}


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(path.rglob("*")) if not p.is_symlink()}


def check_refused(code: int, err: str, expect: str) -> None:
    assert code == 2, f"exit code {code}: {err}"
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), f"not one 'error:' line: {err!r}"
    assert expect.lower() in err.lower(), f"{expect!r} not in {err!r}"
    assert "weights_only" not in err


@pytest.mark.parametrize("name", list(CASES))
def test_small_hostile_input_is_refused_in_one_line(name, model_dir, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(work, model_dir)
    argv = case.build(ctx)
    before, before_model = snapshot(work), snapshot(model_dir)
    capsys.readouterr()
    code = main(argv)
    check_refused(code, capsys.readouterr().err, case.expect)
    assert snapshot(work) == before and snapshot(model_dir) == before_model
    assert not ctx.out.exists() and not (tmp_path / "runs").exists()


RSS_CASES = [name for name, case in CASES.items() if case.rss]


# Linux carries a process's peak RSS across fork and exec, so a child forked from this (large) test process
# would report at least its size: a small launcher forks the command and reports that child's wait4 rusage.
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss * 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("name", RSS_CASES)
def test_small_hostile_input_stays_under_1_gb(name, model_dir, tmp_path):
    """The same command in a real subprocess: refused, with a peak RSS (that process alone) under 1 GB."""
    case = CASES[name]
    ctx = Ctx(tmp_path, model_dir)
    argv = case.build(ctx)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(case.env or {})}
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "cli.main", *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    peak = int(proc.stdout.split()[-1])
    print(f"{name}: peak RSS {peak / 2**20:.0f} MiB")
    check_refused(proc.returncode, proc.stderr, case.expect)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"


def test_at_least_20_hostile_inputs():
    assert len(CASES) >= 20 and len(RSS_CASES) >= 6


# ---------------------------------------------------------------- beyond the table


def test_a_malformed_env_json_field_is_left_out_of_the_report(model_dir, tmp_path):
    """env.json only informs: a field of the wrong type is not shown, and the report is still written."""
    from reports import render_report
    from reports.collect import load_run

    run = Path(broken_model(tmp_path, model_dir, lambda m: edit_json(
        m / "env.json", lambda d: d.update(versions="x", gpus=5, platform=["a"], python="3.11.7"))))
    assert load_run(run).env == {"python": "3.11.7", "cpu_count": os.cpu_count(), "device": "cpu"}
    assert "3.11.7" in render_report(run).read_text()


def test_labels_are_values_not_indices(tmp_path):
    """A label 10**9 is one class among three, not the last of 10**9 + 1; '1' and '1.0' are one class."""
    from trainers import load_data

    y = np.arange(40) % 3
    y[y == 2] = 10**9
    np.savez(tmp_path / "d.npz", x=_x(), y=y)
    data = load_data(tmp_path / "d.npz")
    assert data.class_names == ["0", "1", "1000000000"]
    (tmp_path / "d.csv").write_text("a,t\n" + "".join(f"{i % 7},{['1', '1.0', '2'][i % 3]}\n" for i in range(30)))
    assert load_data(tmp_path / "d.csv").class_names == ["1", "2"]


def test_constant_feature_of_arrays_is_refused_not_divided_by_zero(tmp_path):
    from trainers import TrainConfig, load_data, train

    x = _x()
    x[:, 1] = 5.0
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    bundle = load_data(tmp_path / "d.npz")   # a user's own model takes the column as it is
    assert list(bundle.constant_columns) == [1] and np.isfinite(bundle.x_train).all()
    with pytest.raises(ToolkitError, match=r"feature column 1 of x is constant"):   # training refuses it
        train(bundle, "mlp", TrainConfig(epochs=1), progress=False)


def test_parameter_limit_can_be_raised(monkeypatch):
    from trainers.models import build_model

    monkeypatch.setenv("TOOLKIT_MAX_PARAMETERS", "100")
    with pytest.raises(ToolkitError, match="TOOLKIT_MAX_PARAMETERS"):
        build_model("mlp", {"hidden": [64]}, (4,), 3)
    monkeypatch.setenv("TOOLKIT_MAX_PARAMETERS", "1000")
    assert sum(p.numel() for p in build_model("mlp", {"hidden": [64]}, (4,), 3).parameters()) == 515


def test_divergence_is_a_failure_not_an_untrained_model(tmp_path, monkeypatch, capsys):
    from trainers import loop

    monkeypatch.setattr(loop, "evaluate_ranks", lambda *args: (float("nan"), 0.0))
    code = main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    check_refused(code, err, "diverged")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["list", "pickled object", "another format"])
def test_checkpoint_that_is_not_the_toolkits_is_refused(content, tmp_path):
    from trainers.checkpoint import read_checkpoint

    payload = {"list": b"[1, 2, 3]", "pickled object": pickle.dumps({"model": Path("x")}),
               "another format": json.dumps({"format": "other", "state": {}}).encode()}[content]
    (tmp_path / "checkpoint.json").write_bytes(payload)
    with pytest.raises(ToolkitError) as info:
        read_checkpoint(tmp_path, None, ())  # refused before the run's own spec is looked at
    message = str(info.value)
    assert "weights_only" not in message and "\n" not in message and "checkpoint.json" in message


def test_warnings_are_not_printed_before_the_error_line(tmp_path, capsys, monkeypatch):
    import warnings

    import trainers.data as data_module

    original = data_module._as_inputs

    def noisy(x, what):
        warnings.warn("overflow encountered in cast", RuntimeWarning)
        return original(x, what)

    monkeypatch.setattr(data_module, "_as_inputs", noisy)
    np.savez(tmp_path / "d.npz", x=_x(), y=np.zeros(40, int))  # one class: refused after the warning
    code = main(["train", str(tmp_path / "d.npz"), "--model", "mlp", "--out", str(tmp_path / "run")])
    check_refused(code, capsys.readouterr().err, "one class")


def test_loaded_artifact_files_are_regular_files(model_dir, tmp_path):
    model = Path(broken_model(tmp_path, model_dir, weights_link_outside))
    with pytest.raises(ToolkitError, match="symbolic link"):
        load_model(model)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="sets a file-size limit (RLIMIT_FSIZE) in the child")
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A write refused by the system (here a 20 KB file-size limit: EFBIG, as ENOSPC for a full disk) is the
    user's to fix: one line, exit 2, not an "unexpected error"; no run directory or staging directory is left."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cli.main", "train", "iris", "--model", "mlp", "--epochs", "1",
                           "--out", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    check_refused(proc.returncode, proc.stderr, "cannot write")
    assert "File too large" in proc.stderr and "unexpected" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, read", [("TOOLKIT_MAX_DATA_BYTES", "trainers.data:data_budget"),
                                        ("TOOLKIT_MAX_COLUMNS", "trainers.tables:max_columns"),
                                        ("TOOLKIT_MAX_PARAMETERS", "trainers.models:parameter_limit")])
def test_every_limit_raised_by_the_environment_reads_it_the_same_way(name, read, monkeypatch):
    import importlib

    module, func = read.split(":")
    limit = getattr(importlib.import_module(module), func)
    monkeypatch.setenv(name, "2e3")
    assert limit() == 2000
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ToolkitError, match=name):
            limit()


@pytest.mark.parametrize("error, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 104857600 bytes. Error code 12 (Cannot allocate memory)"), "allocating (asked for 100.0"),
    (ImportError("libquadmath-96973f99.so.0.0.0: failed to map segment from shared object"), "loading a library"),
    (MemoryError(), "running")])
def test_running_out_of_memory_is_one_line_exit_2_not_an_unexpected_error(error, said, tmp_path, capsys, monkeypatch):
    from trainers import loop

    def no_memory(*args, **kwargs):  # what `ulimit -v` made of a train
        raise error

    monkeypatch.setattr(loop, "train_epoch", no_memory)
    code = main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(tmp_path / "run")])
    check_refused(code, capsys.readouterr().err, f"out of memory while {said}")
    assert not (tmp_path / "run").exists()
