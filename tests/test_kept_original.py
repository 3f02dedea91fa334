"""A compress run that kept its original names it relative to the run, with its checksum: a copied or moved run
serves its own model, and one whose model was replaced is refused in one line (`trainers.kept`)."""

from __future__ import annotations

import json
import shutil

import pytest

from compress import compress_model
from trainers import TrainConfig, ToolkitError, load_model, train
from trainers.inference import resolve_artifact
from trainers.rundir import RunDir
from trainers.schema import CompressResultFileV7, parse_result


def _keep_original(monkeypatch):
    """The choice made deterministic: no variant wins, the original is kept (as when fp16 is slower)."""
    monkeypatch.setattr("compress.auto.choose", lambda baseline, *_, **__: (baseline, "the original is kept"))


def _train(iris, out, seed=0):
    train(iris, "mlp", TrainConfig(epochs=1, device="cpu", seed=seed, model={"hidden": [8]}), out=out,
          progress=False)


@pytest.fixture
def pipeline_run(iris, tmp_path, monkeypatch):
    """A pipeline-shaped run p/: train/ and compress/ written in p.partial, the model named by its final path."""
    _keep_original(monkeypatch)
    with RunDir(tmp_path / "p", kind="pipeline") as run:
        _train(iris, run.path / "train")
        model = load_model(run.path / "train")
        model.path = run.final / "train"  # as the pipeline names it: where it lives once committed
        compress_model(model, iris, methods=["fp16"], out=run.path / "compress")
        run.commit()
    return tmp_path / "p"


def test_a_copied_pipeline_run_serves_its_own_train_stage_not_the_retrained_source(pipeline_run, iris, tmp_path):
    chosen = json.loads((pipeline_run / "compress" / "result.json").read_text())["chosen"]
    assert chosen["path"] == "../train" and chosen["checksum"]
    shutil.copytree(pipeline_run, tmp_path / "copy")
    shutil.rmtree(pipeline_run / "train")  # the source run retrained in place: another model there
    _train(iris, pipeline_run / "train", seed=7)
    assert resolve_artifact(tmp_path / "copy").resolve() == (tmp_path / "copy" / "train").resolve()
    with pytest.raises(ToolkitError, match="holds another model now"):
        resolve_artifact(pipeline_run)  # its train/ is not the model compress kept
    shutil.move(tmp_path / "copy" / "train", tmp_path / "aside")
    with pytest.raises(ToolkitError, match="holds another model now"):
        resolve_artifact(tmp_path / "copy")  # the recorded absolute path holds another model: not served
    shutil.rmtree(pipeline_run)
    with pytest.raises(ToolkitError, match="which is no longer there"):
        resolve_artifact(tmp_path / "copy")


def test_a_moved_compress_run_finds_its_original_by_its_absolute_path_and_checksum(iris, tmp_path, monkeypatch):
    _keep_original(monkeypatch)
    _train(iris, tmp_path / "m")
    compress_model(tmp_path / "m", iris, methods=["fp16"], out=tmp_path / "c")
    assert json.loads((tmp_path / "c" / "result.json").read_text())["chosen"]["path"] == "../m"
    (tmp_path / "sub").mkdir()
    shutil.move(tmp_path / "c", tmp_path / "sub" / "c")  # ../m is gone from there: the recorded `parent` serves
    assert resolve_artifact(tmp_path / "sub" / "c") == tmp_path / "m"


def test_a_result_file_of_version_7_still_serves_its_absolute_path(pipeline_run):
    path = pipeline_run / "compress" / "result.json"
    record = json.loads(path.read_text())
    chosen = {k: v for k, v in record["chosen"].items() if k != "checksum"}
    old = {**record, "schema_version": 7, "chosen": {**chosen, "path": str(pipeline_run / "train")}}
    assert type(parse_result(old, stage="compress")) is CompressResultFileV7
    path.write_text(json.dumps(old))
    assert resolve_artifact(pipeline_run) == pipeline_run / "train"
    shutil.rmtree(pipeline_run / "train")
    with pytest.raises(ToolkitError, match="kept its original model, .*, which is no longer there"):
        resolve_artifact(pipeline_run)
