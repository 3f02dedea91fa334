"""The resume checkpoint holds no pickle: tensors in safetensors, the rest in JSON, read back exactly and as a pair."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fake_runs import ctrl_c_in_epoch

from cli.main import main
from trainers import TrainConfig, TrainingInterrupted, train
from trainers.statetree import flatten, unflatten

CONFIG = dict(epochs=5, seed=1, patience=100, refit=False, model={"hidden": [8]})
TRAIN = ["train", "iris", "--model", "mlp", "--epochs", "5", "--seed", "1", "--no-refit",
         "--arch", json.dumps({"hidden": [8]})]


def _same(a, b) -> bool:
    """Equal with the same types all the way down, nan equal to nan, tensors equal bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        bits = [t.reshape(-1).view(torch.uint8) for t in (a, b)]
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*bits)
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) and all(
            _same(a[k], b[k]) for k in a)
    return a == b


def test_an_optimizer_state_round_trips_exactly_through_json_and_tensors():
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tree = {"optimizer": optimizer.state_dict(),  # int keys, tuples (betas), 0-dim tensors, None
            "odd": {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "zero": -0.0, "tiny": 5e-324,
                    "third": 1 / 3, "big": 2**70, "flag": True, (1, "a"): None, 2.5: [(), []]},
            "tensors": [torch.tensor([1.5, -0.0], dtype=torch.bfloat16), torch.zeros(0, 3, dtype=torch.int64)]}
    encoded, tensors = flatten(tree)
    text = json.dumps(encoded, allow_nan=False)  # strict JSON: no NaN or Infinity tokens
    assert _same(unflatten(json.loads(text), tensors), tree)


@pytest.mark.parametrize("encoded", [{"tensor": "t9"}, {"pickle": "x"}, {"dict": [1]}, {"items": [[[1], 2]]},
                                     {"float": "1e999"}, {"a": 1, "b": 2}])
def test_a_state_no_flatten_wrote_is_a_value_error(encoded):
    with pytest.raises(ValueError):
        unflatten({"dict": {"x": encoded}}, {})


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run stopped by Ctrl-C in its fourth epoch, with three epochs in its checkpoint."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with ctrl_c_in_epoch(4), pytest.raises(TrainingInterrupted):
        train("iris", "mlp", TrainConfig(**CONFIG), out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The weights of the same run uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train("iris", "mlp", TrainConfig(**CONFIG), out=out, progress=False)
    return load_file(out / "model.safetensors")


def test_the_checkpoint_is_json_and_safetensors_and_resuming_never_calls_torch_load(interrupted, reference,
                                                                                     tmp_path, monkeypatch):
    names = sorted(p.name for p in interrupted.iterdir() if p.name.startswith("checkpoint"))
    assert len(names) == 2 and names[0].endswith(".safetensors") and names[1] == "checkpoint.json"
    header = json.loads((interrupted / "checkpoint.json").read_text())
    assert header["tensors"] == names[0]
    shutil.copytree(interrupted, tmp_path / "run")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called while resuming")

    monkeypatch.setattr(torch, "load", no_unpickling)
    resumed = train("iris", "mlp", TrainConfig(**CONFIG), out=tmp_path / "run", resume=True, progress=False)
    assert resumed.epochs_run == 5 and not resumed.interrupted
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert list(weights) == list(reference) and all(torch.equal(weights[k], reference[k]) for k in reference)
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint")]


def test_a_stop_between_the_tensors_and_the_json_leaves_the_previous_pair_whole(reference, tmp_path, monkeypatch):
    """The third epoch's tensors are on disk when the stop comes, its JSON is not: the second epoch's pair is
    still whole, and resuming from it ends with the weights of an uninterrupted run."""
    import trainers.checkpoint as checkpoint

    write, jsons = checkpoint.atomic_write_text, []

    def stopped_before_the_third_json(path, text):
        if Path(path).name == "checkpoint.json":
            jsons.append(path)
            if len(jsons) == 3:
                raise KeyboardInterrupt
        write(path, text)

    monkeypatch.setattr(checkpoint, "atomic_write_text", stopped_before_the_third_json)
    with pytest.raises(TrainingInterrupted):
        train("iris", "mlp", TrainConfig(**CONFIG), out=tmp_path / "run", progress=False)
    monkeypatch.setattr(checkpoint, "atomic_write_text", write)
    assert len(list((tmp_path / "run").glob("checkpoint-*.safetensors"))) == 2  # epoch 2's and epoch 3's
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["state"]["dict"]["epoch"] == 2
    train("iris", "mlp", TrainConfig(**CONFIG), out=tmp_path / "run", resume=True, progress=False)
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def _tensors(run: Path) -> Path:
    return run / json.loads((run / "checkpoint.json").read_text())["tensors"]


def _retag(run: Path, edit) -> None:
    header = json.loads((run / "checkpoint.json").read_text())
    edit(header)
    (run / "checkpoint.json").write_text(json.dumps(header))


def _shrunk(part: str):
    """A tampered pair whose checksum still matches: a weight of another shape in `part` of the state."""
    def tamper(run: Path) -> None:
        from safetensors.torch import save

        header = json.loads((run / "checkpoint.json").read_text())
        tensors = load_file(run / header["tensors"])
        first = next(iter(header["state"]["dict"][part]["dict"].values()))["tensor"]
        tensors[first] = torch.zeros(1)
        blob = save(tensors)
        header["sha256"] = hashlib.sha256(blob).hexdigest()
        header["tensors"] = f"checkpoint-{header['sha256'][:16]}.safetensors"
        (run / header["tensors"]).write_bytes(blob)
        (run / "checkpoint.json").write_text(json.dumps(header))
    return tamper


def _as_an_earlier_version(run: Path) -> None:
    """The run as an earlier version left it: its checkpoint a pickle, `checkpoint.pt`, listed in the marker."""
    for path in run.glob("checkpoint*"):
        path.unlink()
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"model": 1}))
    marker = json.loads((run / ".toolkit-run.json").read_text())
    marker["files"] = [name for name in marker["files"] if not name.startswith("checkpoint")] + ["checkpoint.pt"]
    (run / ".toolkit-run.json").write_text(json.dumps(marker))


BROKEN = {
    "the tensors file altered": (lambda run: _tensors(run).write_bytes(_tensors(run).read_bytes()[:-4] + b"\0" * 4),
                                 "checksum differs"),
    "the tensors file missing": (lambda run: _tensors(run).unlink(), "not found"),
    "the json truncated": (lambda run: (run / "checkpoint.json").write_text('{"format": "toolkit checkp'),
                           "corrupt"),
    "the json a pickle": (lambda run: (run / "checkpoint.json").write_bytes(pickle.dumps({"model": 1})), "corrupt"),
    "a path outside the run": (lambda run: _retag(run, lambda h: h.update(tensors="../model.safetensors")),
                               "names no tensors file"),
    "a newer version": (lambda run: _retag(run, lambda h: h.update(version=99)), "another version"),
    "a weight of another shape": (_shrunk("model"), "does not fit this model"),
    "a best weight of another shape": (_shrunk("best_weights"), "do not fit this model"),
    "an old checkpoint.pt": (lambda run: _as_an_earlier_version(run), "earlier version"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_checkpoint_is_one_line_and_exit_2(name, interrupted, tmp_path, monkeypatch, capsys):
    breaks, expected = BROKEN[name]
    shutil.copytree(interrupted, tmp_path / "run")
    breaks(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*TRAIN, "--out", "run", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err and "weights_only" not in err


def test_an_old_checkpoint_pt_still_marks_an_interrupted_run_and_overwrite_starts_anew(interrupted, tmp_path,
                                                                                       monkeypatch, capsys):
    shutil.copytree(interrupted, tmp_path / "run")
    _as_an_earlier_version(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert main([*TRAIN, "--out", "run"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*TRAIN, "--out", "run", "--overwrite"]) == 0
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
