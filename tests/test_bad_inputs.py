"""Every command and `trainers.load_model` against broken inputs, in one table.

Each case builds its broken input in the test's own directory, runs the real
entry point `cli.main.main([...])` in-process, and asserts the contract for bad
input: exit code 2, exactly one line on stderr starting with "error:", no
traceback, and nothing written: neither the output directory nor
`<out>.partial` appears, a pre-existing output directory is unchanged byte for
byte, and the shared model artifacts the case reads are unchanged too.
A few cases also run as real subprocesses (`python -m cli.main ...`).

`tests/test_cli.py` and `tests/test_data.py` hold the basic train/data cases
(missing file, NaN, one class, ...); this table adds the rest and walks
compress, explain, report and pipeline too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cli.main import main
from trainers import ArtifactError, TrainConfig, load_data, load_model, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden": [32]}


# ---------------------------------------------------------------- shared artifacts (built once)


@dataclass
class Artifacts:
    root: Path
    mlp: Path            # digits (1x8x8, 10 classes)
    iris: Path           # iris (4 features, 3 classes)
    binary: Path         # digits inputs, 2 classes
    compress_run: Path   # a finished `toolkit compress` run of `mlp`
    variant: Path        # its int8 ONNX variant


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Artifacts:
    from compress import compress_model

    root = tmp_path_factory.mktemp("artifacts")
    config = TrainConfig(epochs=2, model=TINY)
    train("digits", "mlp", config, out=root / "mlp", progress=False)
    train("iris", "mlp", config, out=root / "iris", progress=False)
    digits = load_data("digits")
    np.savez(root / "binary.npz", x=digits.x_train, y=digits.y_train % 2)
    train(str(root / "binary.npz"), "mlp", config, out=root / "binary", progress=False)
    result = compress_model(root / "mlp", digits, methods=["int8-dynamic"], out=root / "compress")
    variant = result.out / result.paths["int8-dynamic-onnx"]
    return Artifacts(root, root / "mlp", root / "iris", root / "binary", result.out, variant)


# ---------------------------------------------------------------- helpers


def snapshot(path: Path) -> dict | None:
    """Every file under `path` (or `path` itself) as relative path -> bytes; None when absent."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(path.rglob("*"))}


def unwritable(tmp: Path) -> Path:
    """An output location the toolkit cannot write to, also when the tests run as root."""
    if os.geteuid() != 0:
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "out"
    return Path("/proc") / f"toolkit-bad-inputs-{os.getpid()}" / "out"


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def digits_like(n=60, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 8, 8)).astype(np.float32), np.arange(n) % classes


def other_classes() -> dict:
    """Digits-shaped rows labelled 10-12: classes a digits model does not predict (a subset of its own classes
    is data it reads by name)."""
    x, y = digits_like(classes=3)
    return {"x": x, "y": y + 10}


class Ctx:
    """What a case builder gets: its own directory, the shared artifacts, and the output path to check."""

    def __init__(self, tmp: Path, art: Artifacts):
        self.tmp, self.art = tmp, art
        self.out = tmp / "out"

    def file(self, name: str, content: bytes | str = b"") -> str:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def fifo(self, name: str) -> str:
        """A named pipe: a reader blocks until a writer comes, which none here ever does."""
        os.mkfifo(self.tmp / name)
        return str(self.tmp / name)

    def link(self, name: str, target: str) -> str:
        (self.tmp / name).symlink_to(target)
        return str(self.tmp / name)

    def existing_out(self) -> Path:
        """A finished run already in --out (a copy of the trained model's run directory)."""
        copy_model(self.art.mlp, self.out)
        return self.out

    def out_under_file(self) -> Path:
        self.file("regular-file", "x")
        self.out = self.tmp / "regular-file" / "out"
        return self.out

    def out_unwritable(self) -> Path:
        self.out = unwritable(self.tmp)
        return self.out

    def out_in_proc(self) -> Path:
        self.out = Path("/proc") / f"toolkit-bad-inputs-{os.getpid()}"
        return self.out

    def stale_partial_file(self) -> Path:
        self.file("out.partial", "a user's file, not a staging directory")
        return self.out

    def out_is_file(self) -> Path:
        self.file("out", "not a directory")
        return self.out

    def broken_model(self, change: Callable[[Path], None]) -> str:
        model = copy_model(self.art.mlp, self.tmp / "model")
        change(model)
        return str(model)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _drop_sha(model: Path) -> None:
    edit_json(model / "model.json", lambda d: d["weights"].pop("sha256"))


def _nan_weights(model: Path, art: Artifacts | None = None) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim == 2)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(model / "model.safetensors"))
    _drop_sha(model)


def _stored_std(value: float):
    """The weights file's standardisation std set to `value` (model.json's copy untouched), its sha256 dropped."""
    def breaker(model: Path, art: Artifacts) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(model / "model.safetensors"))
        tensors["standardize.std"].fill_(value)
        save_file(tensors, str(model / "model.safetensors"))
        _drop_sha(model)

    return breaker


def _other_weights(model: Path, art: Artifacts) -> None:
    shutil.copy(art.binary / "model.safetensors", model / "model.safetensors")
    _drop_sha(model)


# ---------------------------------------------------------------- broken model directories (load_model and CLI)

# name -> (how to break a copy of the digits model, expected words in the one-line message)
BROKEN_MODELS: dict[str, tuple[Callable[[Path, Artifacts], None], str]] = {
    "no model.json": (lambda m, a: (m / "model.json").unlink(), "no model.json"),
    "empty model.json": (lambda m, a: (m / "model.json").write_bytes(b""), "model.json"),
    "truncated model.json": (lambda m, a: _truncate(m / "model.json"), "model.json"),
    "model.json not an object": (lambda m, a: (m / "model.json").write_text("[1, 2]"), "JSON object"),
    "model.json is a directory": (lambda m, a: ((m / "model.json").unlink(), (m / "model.json").mkdir()),
                                  "model.json"),
    "missing model.json field": (lambda m, a: edit_json(m / "model.json", lambda d: d.pop("family")), "family"),
    "future format version": (lambda m, a: edit_json(m / "model.json", lambda d: d.update(format_version=99)),
                              "format_version"),
    "unknown family": (lambda m, a: edit_json(m / "model.json", lambda d: d.update(family="transformer")),
                       "transformer"),
    "unknown dtype": (lambda m, a: edit_json(m / "model.json", lambda d: d.update(dtype="int4")), "dtype"),
    "widths edited to disagree with weights": (
        lambda m, a: edit_json(m / "model.json", lambda d: d["config"].update(hidden=[16])), "does not match"),
    "class names edited to disagree with weights": (
        lambda m, a: edit_json(m / "model.json", lambda d: d.update(class_names=["a", "b", "c"])), "does not match"),
    "input shape edited to disagree with weights": (
        lambda m, a: edit_json(m / "model.json", lambda d: d.update(input_shape=[1, 4, 4])), "does not match"),
    "weights missing": (lambda m, a: (m / "model.safetensors").unlink(), "missing file"),
    "weights empty": (lambda m, a: (m / "model.safetensors").write_bytes(b""), "model.safetensors"),
    "weights truncated": (lambda m, a: _truncate(m / "model.safetensors"), "model.safetensors"),
    "weights truncated, no checksum": (lambda m, a: (_truncate(m / "model.safetensors"), _drop_sha(m)),
                                       "model.safetensors"),
    "weights are a pickle": (lambda m, a: ((m / "model.safetensors").write_bytes(b"\x80\x04K\x01."), _drop_sha(m)),
                             "model.safetensors"),
    "weights of another model": (_other_weights, "does not match"),
    "NaN in weights": (_nan_weights, "NaN"),
    "zero std in the weights file": (_stored_std(0.0), "standardisation std under"),
    "denormal std in the weights file": (_stored_std(1e-45), "standardisation std under"),
    "unknown architecture option": (
        lambda m, a: edit_json(m / "model.json", lambda d: d["config"].update(width=3)), "width"),
    "weights file outside the directory": (
        lambda m, a: edit_json(m / "model.json", lambda d: d["weights"].update(file="../../../etc/hostname")),
        "plain file name"),
    "unknown weight codec": (lambda m, a: edit_json(m / "model.json", lambda d: d["weights"].update(codec="zip")),
                             "codec"),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_load_model_refuses_broken_artifact(case, art, tmp_path):
    breaker, expected = BROKEN_MODELS[case]
    model = copy_model(art.mlp, tmp_path / "model")
    breaker(model, art)
    before = snapshot(model)
    with pytest.raises(ArtifactError) as info:
        load_model(model)
    message = str(info.value)
    assert "\n" not in message and expected in message, message
    assert snapshot(model) == before


@pytest.mark.parametrize("path", ["missing", "file"])
def test_load_model_refuses_non_directories(path, tmp_path):
    target = tmp_path / "model"
    if path == "file":
        target.write_text("{}")
    with pytest.raises(ArtifactError, match="not found" if path == "missing" else "not a model directory"):
        load_model(target)


# ---------------------------------------------------------------- the command table


@dataclass
class Case:
    build: Callable[[Ctx], list[str]]   # argv after the command name; may set ctx.out
    expect: str                         # words the one-line message must contain
    out_flag: bool = True               # append --out ctx.out unless the argv has one


def _bad_model(change):
    return lambda c: [c.broken_model(change), "--data", "digits"]


COMPRESS_ONE = ["--method", "int8-dynamic"]


def _table_csv(c: Ctx, numeric_colour: bool = False) -> str:
    """40 rows: a float feature `f` (unique), a text column `colour`, a label `t`."""
    colours = ["1", "2", "3"] if numeric_colour else ["red", "green", "blue"]
    rows = "".join(f"{i * 0.37:.2f},{colours[i % 3]},{i % 2}\n" for i in range(40))
    return c.file("numbers.csv" if numeric_colour else "table.csv", "f,colour,t\n" + rows)


def _table_model(c: Ctx) -> str:
    train(_table_csv(c), "mlp", TrainConfig(epochs=1, model=TINY), out=c.tmp / "table-model", progress=False)
    return str(c.tmp / "table-model")


def _nested_parquet(c: Ctx) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = c.tmp / "d.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "tags": [[1, 2], [3]], "t": [0, 1]}), path)
    return str(path)


def _images(c: Ctx, broken: bool = False, odd_size: bool = False, extra: Callable[[str], str] | None = None) -> str:
    """Two class folders of six 8x8 images; `extra(name)` adds one more entry, `img/a/x.png`, to class a."""
    from PIL import Image

    for k, name in enumerate(("a", "b")):
        (c.tmp / "img" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (40 * k, 10 * i, 0)).save(c.tmp / "img" / name / f"{name}{i}.png")
    if broken:
        (c.tmp / "img" / "b" / "b2.png").write_bytes(b"not an image")
    if odd_size:
        Image.new("RGB", (9, 9)).save(c.tmp / "img" / "b" / "b2.png")
    if extra:
        extra("img/a/x.png")
    return str(c.tmp / "img")

CASES: dict[str, dict[str, Case]] = {
    "train": {
        "empty npz": Case(lambda c: [c.file("d.npz"), "--model", "mlp"], "not a zip"),
        "truncated npz": Case(lambda c: [c.file("d.npz", Path(npz(c.tmp / "full.npz", x=np.zeros((40, 4)), y=np.arange(40) % 2)).read_bytes()[:200]), "--model", "mlp"], "d.npz"),
        "csv text in an npz": Case(lambda c: [c.file("d.npz", "a,b\n1,2\n"), "--model", "mlp"], "not a zip"),
        "binary junk in a csv": Case(lambda c: [c.file("d.csv", bytes(range(256)) * 4), "--model", "mlp"], "d.csv"),
        "empty csv": Case(lambda c: [c.file("d.csv"), "--model", "mlp"], "header"),
        "unsupported extension": Case(lambda c: [c.file("d.xlsx", "x"), "--model", "mlp"], "unsupported data file"),
        "parquet that is not parquet": Case(lambda c: [c.file("d.parquet", "x"), "--model", "mlp"], "as Parquet"),
        "parquet with a nested column": Case(lambda c: [_nested_parquet(c), "--model", "mlp"], "column 'tags'"),
        "target column missing": Case(lambda c: [_table_csv(c), "--model", "mlp", "--target", "nope"],
                                      "target column 'nope' not found"),
        "target with one class": Case(lambda c: [c.file("d.csv", "a,t\n" + "".join(f"{i * 0.5},1\n" for i in range(30))),
                                                 "--model", "mlp"], "1 classes"),
        "target with more classes than rows/2": Case(lambda c: [_table_csv(c), "--model", "mlp", "--target", "f"],
                                                     "classes in 40 rows"),
        "csv with a ragged line": Case(lambda c: [c.file("d.csv", "a,b,t\n" + "1.5,2,0\n2.5,3,1\n" * 3 + "1,0\n"),
                                                  "--model", "mlp"], "line 8 has 2 fields"),
        "csv with a line too long": Case(lambda c: [c.file("d.csv", "a,b,t\n" + "1.5,2,0\n2.5,3,1\n" * 3 + "1,2,0,5\n"),
                                                    "--model", "mlp"], "line 8"),
        "nothing left after dropping ID columns": Case(
            lambda c: [c.file("d.csv", "id,code,t\n" + "".join(f"{i},c{i},{i % 2}\n" for i in range(30))),
                       "--model", "mlp"], "no feature columns left after dropping id, code"),
        "--keep a column that does not exist": Case(lambda c: [_table_csv(c), "--model", "mlp", "--keep", "zz"], "'zz'"),
        "csv that is a FIFO": Case(lambda c: [c.fifo("d.csv"), "--model", "mlp"], "FIFO"),
        "image folder with a FIFO": Case(lambda c: [_images(c, extra=c.fifo), "--model", "cnn"], "FIFO"),
        "image folder with a link to /dev/zero": Case(
            lambda c: [_images(c, extra=lambda name: c.link(name, "/dev/zero")), "--model", "cnn"], "device"),
        "image folder with an unreadable file": Case(lambda c: [_images(c, broken=True), "--model", "cnn"], "b2.png"),
        "image folder with differently-sized files": Case(lambda c: [_images(c, odd_size=True), "--model", "cnn"],
                                                          "b2.png: 9x9 pixels"),
        "data path is a directory": Case(lambda c: [(c.tmp / "d.npz").mkdir() or str(c.tmp / "d.npz"), "--model", "mlp"],
                                         "directory"),
        "x is one-dimensional": Case(lambda c: [npz(c.tmp / "d.npz", x=np.zeros(40), y=np.arange(40) % 2), "--model", "mlp"],
                                     "shape"),
        "x has five dimensions": Case(lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 1, 2, 2, 2)), y=np.arange(40) % 2),
                                                 "--model", "mlp"], "shape"),
        "x of strings": Case(lambda c: [npz(c.tmp / "d.npz", x=np.array([["a", "b"]] * 40), y=np.arange(40) % 2),
                                        "--model", "mlp"], "numeric"),
        "labels out of range of class names": Case(
            lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4)), y=np.arange(40) % 3, class_names=np.array(["a", "b"])),
                       "--model", "mlp"], "out of range"),
        "negative labels with class names": Case(
            lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4)), y=np.arange(40) % 2 - 1,
                           class_names=np.array(["a", "b"])), "--model", "mlp"], "class indices 0, 1, ... into"),
        "complex x": Case(lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4), complex), y=np.arange(40) % 2),
                                     "--model", "mlp"], "numeric"),
        "text labels and numeric test labels": Case(
            lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4)), y=np.array(["a", "b"] * 20), x_test=np.zeros((4, 4)),
                           y_test=np.arange(4) % 2), "--model", "mlp"], "both be text labels or both numbers"),
        "2-d labels": Case(lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4)), y=np.zeros((40, 2), int)),
                                      "--model", "mlp"], "one-dimensional"),
        "x_test shape differs from x": Case(
            lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4)), y=np.arange(40) % 2, x_test=np.zeros((10, 5)),
                           y_test=np.arange(10) % 2), "--model", "mlp"], "x_test"),
        "too few samples": Case(lambda c: [npz(c.tmp / "d.npz", x=np.zeros((4, 4)), y=np.arange(4) % 2), "--model", "mlp"],
                                "samples"),
        "csv with a missing label": Case(lambda c: [c.file("d.csv", "a,b,t\n" + "1.5,2,0\n2.5,3,1\n" * 10 + "1,2,\n"),
                                                   "--model", "mlp"], "missing label in target column 't' (line 22)"),
        "--batch-size 0": Case(lambda c: ["iris", "--model", "mlp", "--batch-size", "0"], "error: --batch-size: "),
        "--lr nan": Case(lambda c: ["iris", "--model", "mlp", "--lr", "nan"],
                         "error: --lr: input should be a finite number"),
        "--arch not an object": Case(lambda c: ["iris", "--model", "mlp", "--arch", "[64]"], "--arch"),
        "--epochs not a number": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "many"], "--epochs"),
        "--epochs beyond a million": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "9" * 23],
                                          "error: --epochs: input should be less than or equal to 1000000"),
        "out exists": Case(lambda c: (c.existing_out(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "--overwrite"),
        "out is a file": Case(lambda c: (c.out_is_file(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "not a directory"),
        "out under a file": Case(lambda c: (c.out_under_file(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "out"),
        "out unwritable": Case(lambda c: (c.out_unwritable(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "out"),
        "out directly in /proc": Case(lambda c: (c.out_in_proc(), ["iris", "--model", "mlp", "--epochs", "1"])[1],
                                      "toolkit-bad-inputs"),
        "a file in the way of out.partial": Case(
            lambda c: (c.stale_partial_file(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "out.partial"),
        "a data file name over 255 bytes": Case(lambda c: [str(c.tmp / ("a" * 256 + ".csv")), "--model", "mlp"],
                                                "path too long: "),
        "an out name over 255 bytes": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--out",
                                                      str(c.tmp / ("a" * 256))], "path too long: "),
    },
    "compress": {
        "model dir missing": Case(lambda c: [str(c.tmp / "nope"), "--data", "digits"], "not found"),
        "a model dir name over 255 bytes": Case(lambda c: [str(c.tmp / ("m" * 256)), "--data", "digits"],
                                                "path too long: "),
        "onnx file that is a FIFO": Case(lambda c: [c.fifo("m.onnx"), "--data", "digits"], "FIFO"),
        "model dir is a file": Case(lambda c: [c.file("model"), "--data", "digits"], "not a model directory"),
        "empty directory as model": Case(lambda c: [(c.tmp / "m").mkdir() or str(c.tmp / "m"), "--data", "digits"],
                                         "not a model artifact"),
        "truncated weights": Case(_bad_model(lambda m: _truncate(m / "model.safetensors")), "model.safetensors"),
        "model.json disagrees with weights": Case(
            _bad_model(lambda m: edit_json(m / "model.json", lambda d: d["config"].update(hidden=[8, 8]))),
            "does not match"),
        "a compressed variant as input": Case(lambda c: [str(c.art.variant), "--data", "digits"],
                                              "int8 in onnxruntime; to compress its ONNX graph as it is, give its"),
        "data of another shape": Case(lambda c: [str(c.art.mlp), "--data", "iris", *COMPRESS_ONE], "expects"),
        "data with other classes": Case(  # labels 10-12: classes the digits model does not predict
            lambda c: [str(c.art.mlp), "--data", npz(c.tmp / "d.npz", **other_classes()), *COMPRESS_ONE],
            "has class '10', which the model does not predict"),
        "data missing": Case(lambda c: [str(c.art.mlp), "--data", str(c.tmp / "d.npz")], "not found"),
        "data with infinity": Case(
            lambda c: [str(c.art.mlp), "--data", npz(c.tmp / "d.npz", x=np.full((60, 1, 8, 8), np.inf), y=np.arange(60) % 10)],
            "infinite"),
        "unknown method": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--method", "zip"], "unknown compression method"),
        "a serving batch size auto does not time": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", "--serving-batch", "64"],
            "--serving-batch must be 1 or 256, the batch sizes every variant is timed at, got 64"),
        "a search budget without auto": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE, "--budget-seconds", "5"],
            "--budget-seconds is an option of auto, which this run does not use (--method int8-dynamic)"),
        "a serving batch size without auto": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE, "--serving-batch", "1"], "an option of auto"),
        "a serving batch size twice, disagreeing": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", "--serving-batch", "1", "--options",
                       '{"auto": {"serving_batch": 256}}'], "disagree"),
        "a text column that holds numbers here": Case(
            lambda c: [_table_model(c), "--data", _table_csv(c, numeric_colour=True), *COMPRESS_ONE],
            "column 'colour' was text at training but holds numbers here"),
        "ratio 0": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--method", "prune-structured", "--ratio", "0"],
                        "--ratio"),
        "ratio above 1": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--method", "prune-structured", "--ratio", "1.5"],
                              "--ratio"),
        "negative --max-drop": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--max-drop", "-1"], "--max-drop"),
        "--max-drop nan": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--max-drop", "nan"], "--max-drop"),
        "--max-drop over 100 points": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--max-drop", "101"],
                                           "less than or equal to 100"),
        "--options not JSON": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--options", "{oops"], "--options"),
        "--options for a method not requested": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE, "--options", '{"distill": {}}'], "not requested"),
        "out exists": Case(lambda c: (c.existing_out(), [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE])[1],
                           "--overwrite"),
        "out is a file": Case(lambda c: (c.out_is_file(), [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE])[1],
                              "not a directory"),
        "out under a file": Case(lambda c: (c.out_under_file(), [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE])[1],
                                 "out"),
        "out unwritable": Case(lambda c: (c.out_unwritable(), [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE])[1],
                               "out"),
        "a file in the way of out.partial": Case(
            lambda c: (c.stale_partial_file(), [str(c.art.mlp), "--data", "digits", *COMPRESS_ONE])[1], "out.partial"),
    },
    "explain": {
        "model dir missing": Case(lambda c: [str(c.tmp / "nope"), "--data", "digits"], "not found"),
        "a model dir name over 255 bytes": Case(lambda c: [str(c.tmp / ("m" * 256)), "--data", "digits"],
                                                "path too long: "),
        "NaN weights": Case(_bad_model(_nan_weights), "NaN"),
        "unknown method": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--method", "lime_v9"], "lime_v9"),
        "method not for this family": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--method", "layer_gradcam"],
                                           "cannot handle a mlp"),
        "--samples 0": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--samples", "0"], "--samples"),
        "--samples negative": Case(lambda c: [str(c.art.mlp), "--data", "digits", "--samples", "-5"], "--samples"),
        "data of another shape": Case(lambda c: [str(c.art.mlp), "--data", "iris", "--method", "saliency"], "match"),
        "data with other classes": Case(
            lambda c: [str(c.art.mlp), "--data", npz(c.tmp / "d.npz", **other_classes()), "--method", "saliency"],
            "has class '10', which the model does not predict"),
        "compare variant with other classes": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", "--method", "saliency", "--compare", str(c.art.binary)],
            "class"),
        "compare variant with other inputs": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", "--method", "saliency", "--compare", str(c.art.iris)], "input"),
        "compare variant missing": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", "--method", "saliency", "--compare", str(c.tmp / "v")],
            "not found"),
        "compare variant truncated": Case(
            lambda c: [str(c.art.mlp), "--data", "digits", "--method", "saliency", "--compare",
                       str(_truncated_variant(c))], "model.onnx"),
        "out exists": Case(lambda c: (c.existing_out(), [str(c.art.mlp), "--data", "digits", "--method", "saliency"])[1],
                           "--overwrite"),
        "out under a file": Case(
            lambda c: (c.out_under_file(), [str(c.art.mlp), "--data", "digits", "--method", "saliency"])[1], "out"),
        "out unwritable": Case(
            lambda c: (c.out_unwritable(), [str(c.art.mlp), "--data", "digits", "--method", "saliency"])[1], "out"),
        "out directly in /proc": Case(
            lambda c: (c.out_in_proc(), [str(c.art.mlp), "--data", "digits", "--method", "saliency"])[1],
            "toolkit-bad-inputs"),
    },
    "report": {
        "run dir missing": Case(lambda c: [str(c.tmp / "nope")], "not found", out_flag=False),
        "run dir is a file": Case(lambda c: [c.file("run")], "directory", out_flag=False),
        "empty run dir": Case(lambda c: [(c.tmp / "run").mkdir() or str(c.tmp / "run")], "no results", out_flag=False),
        "truncated result.json": Case(lambda c: [_run_with(c, "result.json", b'{"stage": "tra')], "result", out_flag=False),
        "result.json not an object": Case(lambda c: [_run_with(c, "result.json", b"[]")], "JSON object", out_flag=False),
        "result.json not UTF-8": Case(lambda c: [_run_with(c, "result.json", b"\xff\xfe\x00{")], "result", out_flag=False),
        "pipeline.json truncated": Case(lambda c: [_run_with(c, "pipeline.json", b"{")], "pipeline", out_flag=False),
        "--out is a directory": Case(lambda c: [_valid_run(c), "--out", str(c.tmp)], "directory", out_flag=False),
        "--out under a file": Case(lambda c: [_valid_run(c), "--out", str(c.out_under_file() / "r.html")], "out",
                                   out_flag=False),
        "--out unwritable": Case(lambda c: [_valid_run(c), "--out", str(c.out_unwritable() / "r.html")], "out",
                                 out_flag=False),
    },
    "pipeline": {
        "unknown model": Case(lambda c: ["iris", "--model", "gpt"], "unknown model family 'gpt'"),
        "data missing": Case(lambda c: [str(c.tmp / "d.csv"), "--model", "mlp"], "not found"),
        "data with one class": Case(
            lambda c: [npz(c.tmp / "d.npz", x=np.zeros((40, 4)), y=np.zeros(40, int)), "--model", "mlp"], "one class"),
        "config with an unknown key": Case(lambda c: ["iris", "--model", "mlp", "--config",
                                                      c.file("c.toml", "[train]\nepoch = 3\n")],
                                           "config train.epoch: unknown option"),
        "config with an unknown section": Case(lambda c: ["iris", "--model", "mlp", "--config",
                                                          c.file("c.toml", "[trian]\nepochs = 3\n")], "trian"),
        "config with a wrong type": Case(lambda c: ["iris", "--model", "mlp", "--config",
                                                    c.file("c.yaml", "train:\n  epochs: three\n")], "train.epochs"),
        "config not parseable": Case(lambda c: ["iris", "--model", "mlp", "--config", c.file("c.toml", "[train\n")],
                                     "cannot parse"),
        "config missing": Case(lambda c: ["iris", "--model", "mlp", "--config", str(c.tmp / "c.toml")], "not found"),
        "config is a directory": Case(lambda c: ["iris", "--model", "mlp", "--config",
                                                 (c.tmp / "c.toml").mkdir() or str(c.tmp / "c.toml")], "c.toml"),
        "config linked to /dev/zero": Case(lambda c: ["iris", "--model", "mlp", "--config",
                                                      c.link("c.yaml", "/dev/zero")], "device"),
        "config that is a FIFO": Case(lambda c: ["iris", "--model", "mlp", "--config", c.fifo("c.yaml")], "FIFO"),
        "config over 1 MB": Case(lambda c: ["iris", "--model", "mlp", "--config",
                                            c.file("c.yaml", "#" * (1 << 20) + "\n")], "1,048,576"),
        "config of another format": Case(lambda c: ["iris", "--model", "mlp", "--config", c.file("c.ini", "[train]\n")],
                                         ".toml"),
        "config not a table": Case(lambda c: ["iris", "--model", "mlp", "--config", c.file("c.yaml", "- 1\n- 2\n")],
                                   "table"),
        "report path escaping the run dir": Case(
            lambda c: ["iris", "--model", "mlp", "--config", c.file("c.toml", '[report]\nout = "../../r.html"\n')],
            "report.out"),
        "--epochs 0": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "0"], "config train.epochs"),
        # Options of later stages are checked before training starts: nothing runs, nothing is written.
        "--samples 0": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--samples", "0"],
                            "config explain.samples"),
        "negative --max-drop": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--max-drop", "-1"],
                                    "config compress.max_drop"),
        "unknown compress method": Case(lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--method", "zip"],
                                        "zip"),
        "unknown explain method": Case(
            lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--explain-method", "lime_v9"], "lime_v9"),
        "explain method not for this family": Case(
            lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--explain-method", "layer_gradcam"], "layer_gradcam"),
        "compress options for a method not requested": Case(
            lambda c: ["iris", "--model", "mlp", "--epochs", "1", "--config",
                       c.file("c.toml", '[compress]\nmethods = ["int8-dynamic"]\n[compress.options.distill]\nepochs = 1\n')],
            "distill"),
        "out exists": Case(lambda c: (c.existing_out(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "--overwrite"),
        "out is a file": Case(lambda c: (c.out_is_file(), ["iris", "--model", "mlp", "--epochs", "1"])[1],
                              "not a directory"),
        "out under a file": Case(lambda c: (c.out_under_file(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "out"),
        "out unwritable": Case(lambda c: (c.out_unwritable(), ["iris", "--model", "mlp", "--epochs", "1"])[1], "out"),
    },
}


def _truncated_variant(c: Ctx) -> Path:
    variant = copy_model(c.art.variant, c.tmp / "variant")
    _truncate(variant / "model.onnx")
    return variant


def _run_with(c: Ctx, name: str, content: bytes) -> str:
    run = c.tmp / "run"
    run.mkdir(exist_ok=True)
    (run / name).write_bytes(content)
    return str(run)


def _valid_run(c: Ctx) -> str:
    return str(copy_model(c.art.mlp, c.tmp / "run"))


TABLE = [(command, name) for command, cases in CASES.items() for name in cases]


def assert_one_error_line(err: str, expected: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), f"not one 'error:' line: {err!r}"
    assert expected.lower() in err.lower(), f"{expected!r} not in {err!r}"


@pytest.mark.parametrize("command,case", TABLE, ids=[f"{c}: {n}" for c, n in TABLE])
def test_bad_input(command, case, art, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)  # a default runs/ directory would land here and be caught
    spec = CASES[command][case]
    ctx = Ctx(work, art)
    argv = [command, *spec.build(ctx)]
    if spec.out_flag and "--out" not in argv:
        argv += ["--out", str(ctx.out)]
    out = ctx.out
    before_out, before_work, before_art = snapshot(out), snapshot(work), snapshot(art.root)
    capsys.readouterr()
    try:
        code = main(argv)
        err = capsys.readouterr().err
        print(f"{command} {case}: exit {code}: {err}")
        assert code == 2, f"exit code {code}: {err}"
        assert_one_error_line(err, spec.expect)
        assert snapshot(out) == before_out, "the output directory changed"
        assert not out.with_name(out.name + ".partial").is_dir(), "a staging directory was left behind"
        assert snapshot(work) == before_work, "the command wrote into the case's directory"
        assert snapshot(art.root) == before_art, "the command wrote into the shared artifacts"
        assert not (tmp_path / "runs").exists(), "a default run directory was created"
    finally:
        if str(out).startswith("/proc/"):
            assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_at_least_30_distinct_bad_inputs():
    assert len(TABLE) + len(BROKEN_MODELS) >= 30
    assert {c for c, _ in TABLE} == {"train", "compress", "explain", "report", "pipeline"}


# ---------------------------------------------------------------- real subprocesses


SUBPROCESS_CASES = {
    "train empty npz": ("train", "empty npz"),
    "compress truncated weights": ("compress", "truncated weights"),
    "explain --samples 0": ("explain", "--samples 0"),
    "report empty run dir": ("report", "empty run dir"),
    "pipeline unknown config key": ("pipeline", "config with an unknown key"),
}


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_bad_input_in_a_real_subprocess(name, art, tmp_path):
    command, case = SUBPROCESS_CASES[name]
    spec = CASES[command][case]
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(work, art)
    argv = [command, *spec.build(ctx)]
    if spec.out_flag:
        argv += ["--out", str(ctx.out)]
    before = snapshot(work)
    proc = subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, spec.expect)
    assert proc.stdout == ""
    assert snapshot(work) == before and not (tmp_path / "runs").exists()
