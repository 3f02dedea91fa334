"""Interruption, resume, unsafe files and random corruption of artifacts at the ground floor (trainers)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fake_runs import ctrl_c_in_epoch

from trainers import ArtifactError, DataError, TrainConfig, TrainingInterrupted, load_data, load_model, predict, train

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("trainers", "compress", "explain", "reports", "cli")


def _toolkit(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_epochs(path: Path, epochs: int, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= epochs:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("training did not reach the epoch in time")


def test_sigkill_keeps_previous_artifact_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    first = _toolkit("train", "digits", "--model", "mlp", "--epochs", "2", "--out", out)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # A second, longer run into the same directory, killed in the middle.
    proc = _toolkit("train", "digits", "--model", "lstm", "--epochs", "400", "--out", out, "--overwrite",
                    "--arch", '{"hidden": [256, 256]}')
    _wait_for_epochs(tmp_path / "run.partial" / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_model(out).spec.family == "mlp"
    assert (tmp_path / "run.partial" / "checkpoint.json").is_file()
    done = len((tmp_path / "run.partial" / "metrics.jsonl").read_text().splitlines())
    resumed = _toolkit("train", "digits", "--model", "lstm", "--epochs", str(done + 2), "--out", out, "--resume",
                       "--arch", '{"hidden": [256, 256]}', "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["epochs_run"] == done + 2
    assert [h["epoch"] for h in result["history"]] == list(range(1, done + 3))
    model = load_model(out)
    assert model.spec.family == "lstm" and model.spec.config["hidden"] == [256, 256]
    assert not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("refit", [False, True])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, refit):
    """Also with the refit: the resumed run refits from the same initial weights as an uninterrupted one."""
    data = load_data("iris")
    config = dict(epochs=6, seed=1, patience=100, refit=refit)
    reference = train(data, "mlp", TrainConfig(**config), progress=False)
    with ctrl_c_in_epoch(4), pytest.raises(TrainingInterrupted) as stop:  # Ctrl-C during the fourth epoch
        train(data, "mlp", TrainConfig(**config), out=tmp_path / "r", progress=False)
    stopped = stop.value.result
    assert stopped.interrupted and stopped.epochs_run == 3
    assert load_model(tmp_path / "r").spec.family == "mlp"  # the best-so-far model was saved
    resumed = train(data, "mlp", TrainConfig(**config), out=tmp_path / "r", resume=True, progress=False)
    assert not resumed.interrupted and resumed.epochs_run == 6
    assert (resumed.refit is not None) is refit and (reference.refit is not None) is refit
    assert resumed.metrics == reference.metrics
    np.testing.assert_array_equal(predict(load_model(tmp_path / "r"), data.x_test), predict(reference.model, data.x_test))


def test_a_stop_between_checkpoint_and_metrics_row_leaves_them_consistent_after_resume(tmp_path, monkeypatch):
    """The row of an epoch is written only after its checkpoint, and a resumed run rewrites `metrics.jsonl` from
    the checkpoint. Before, a stop while the third checkpoint was written left rows 1-3 beside checkpoint 2, and
    the resumed run wrote epoch 3 twice."""
    import trainers.checkpoint as checkpoint

    write, calls = checkpoint.atomic_write_bytes, []

    def stopped_at_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(*args)

    config = TrainConfig(epochs=5, seed=1, patience=100, refit=False)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", stopped_at_the_third)
    with pytest.raises(TrainingInterrupted):
        train("iris", "mlp", config, out=tmp_path / "r", progress=False)
    metrics = tmp_path / "r" / "metrics.jsonl"
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])  # as if stopped before row 2 was added
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", write)
    assert not train("iris", "mlp", config, out=tmp_path / "r", resume=True, progress=False).interrupted
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]


class _Payload:
    """Unpickling this creates a marker file: proof that a file was (not) unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payloads_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    for name in ("data.pkl", "data.pt"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(DataError, match="unsupported data file"):
            load_data(str(tmp_path / name))
    # A pickle disguised as .npz (np.load would fall back to unpickling it with allow_pickle).
    (tmp_path / "data.npz").write_bytes(payload)
    with pytest.raises(DataError, match="not a zip archive"):
        load_data(str(tmp_path / "data.npz"))
    # An .npz whose array member is a pickle.
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as zf:
        zf.writestr("x.npy", payload)
        zf.writestr("y.npy", payload)
    with pytest.raises(DataError):
        load_data(str(tmp_path / "obj.npz"))
    # A pickle in place of the weights, and in place of the resume checkpoint.
    train("iris", "mlp", TrainConfig(epochs=1), out=tmp_path / "m", progress=False)
    (tmp_path / "m" / "model.safetensors").write_bytes(payload)
    with pytest.raises(ArtifactError):
        load_model(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    spec["weights"].pop("sha256")
    (tmp_path / "m" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="not safetensors"):
        load_model(tmp_path / "m")
    (tmp_path / "c.partial").mkdir()
    (tmp_path / "c.partial" / "checkpoint.pt").write_bytes(payload)
    with pytest.raises(Exception, match="cannot resume"):
        train("iris", "mlp", TrainConfig(epochs=2), out=tmp_path / "c", resume=True, progress=False)
    assert not marker.exists(), "a pickle payload ran"


def test_no_unsafe_loading_in_the_code():
    pattern = re.compile(r"pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True|(?<![.\w])eval\(|(?<![.\w])exec\(")
    offenders = []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
                if "torch.load(" in line:  # even weights_only=True is an unpickler: the resume checkpoint is JSON
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: torch.load")
    assert offenders == []


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=5, max_side=12), elements=any_float),
       y=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=40), elements=st.integers(-2, 5)))
def test_data_loader_never_crashes_on_random_arrays(tmp_path, x, y):
    path = tmp_path / "r.npz"
    np.savez(path, x=x, y=y)
    try:
        data = load_data(str(path))
    except DataError:
        return
    assert np.isfinite(data.x_train).all()
    assert data.num_classes >= 2 and len(data.x_train) > 0


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "model"
    train("iris", "mlp", TrainConfig(epochs=2, model={"hidden": [8]}), out=out, progress=False)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["model.safetensors", "model.json"]), data=st.data())
def test_artifact_loader_never_loads_corrupted_weights_silently(saved_model, tmp_path, file, data):
    import shutil

    target = tmp_path / "copy"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(saved_model, target)
    raw = bytearray((target / file).read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    position = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[position] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del raw[position:]
    else:
        raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    (target / file).write_bytes(bytes(raw))
    reference = load_model(saved_model)
    x = load_data("iris").x_test
    try:
        model = load_model(target)
    except ArtifactError:
        return
    # Loading succeeded only if the corruption was harmless (e.g. JSON whitespace).
    np.testing.assert_array_equal(predict(model, x), predict(reference, x))
