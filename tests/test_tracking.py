"""Experiment tracking: a pipeline read back from a real MLflow file store and a real TensorBoard event file,
the CLI options and the environment variable, run status on failure, and no backend imported unless asked for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main
from reports import run_pipeline
from trainers.errors import ToolkitError
from trainers.tracking import NullTracker, TensorBoardTracker, TrackingOptions, _Both, open_tracker

mlflow = pytest.importorskip("mlflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

ROOT = Path(__file__).resolve().parents[1]
FAST = {"train.epochs": 3, "compress.methods": ["int8-dynamic"], "explain.methods": ["saliency"],
        "explain.samples": 4}


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    """A local MLflow file store (MLflow 3 asks for an explicit opt-in to the file backend)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return (tmp_path / "mlruns").as_uri()


def runs(uri: str, experiment: str = "toolkit") -> list:
    """Through a client: `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI, which the later tests' commands
    (test_cli's subprocesses too) would then track to."""
    client = mlflow.tracking.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return list(client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])) if found else []


def by_name(found) -> dict:
    return {run.info.run_name: run for run in found}


def scalars(directory: Path) -> dict:
    accumulator = event_accumulator.EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_pipeline_round_trip_mlflow_and_tensorboard(tmp_path, file_store):
    board = tmp_path / "tb"
    config = {"tracking": {"mlflow": file_store, "tensorboard": str(board), "experiment": "iris-runs"}}
    result = run_pipeline("iris", "mlp", config, overrides=FAST, out=tmp_path / "run", progress=lambda _: None)

    found = by_name(runs(file_store, "iris-runs"))
    assert sorted(found) == ["compress", "explain", "pipeline", "train"]
    parent = found["pipeline"].info.run_id
    for stage in ("train", "compress", "explain"):
        assert found[stage].data.tags["mlflow.parentRunId"] == parent
    assert all(run.info.status == "FINISHED" for run in found.values())
    assert found["pipeline"].data.params["train.epochs"] == "3"
    assert found["train"].data.params["family"] == "mlp"

    client = mlflow.tracking.MlflowClient(file_store)
    history = client.get_metric_history(found["train"].info.run_id, "val_loss")
    train_result = json.loads((result.run_dir / "train" / "result.json").read_text())
    assert [(m.step, round(m.value, 6)) for m in history] == [
        (row["epoch"], round(row["val_loss"], 6)) for row in train_result["history"]]
    assert found["train"].data.metrics["final.test_accuracy"] == train_result["metrics"]["test_accuracy"]

    compressed = json.loads((result.run_dir / "compress" / "result.json").read_text())
    metrics = found["compress"].data.metrics
    for row in compressed["variants"]:
        assert metrics[f"{row['name']}.accuracy"] == pytest.approx(row["accuracy"])
        assert metrics[f"{row['name']}.latency_ms.b256_t1.p50"] == pytest.approx(row["latency_ms"]["b256_t1"]["p50"])
    chosen = compressed["chosen"]["name"]
    assert found["compress"].data.params["chosen"] == chosen
    explained = json.loads((result.run_dir / "explain" / "result.json").read_text())
    assert "quality.saliency.deletion_auc" in found["explain"].data.metrics or \
        explained["quality"]["saliency"]["deletion_auc"] is None

    top = {f.path for f in client.list_artifacts(parent)}
    assert {"report.html", "MODEL_CARD.md", "config.yaml", "chosen"} <= top
    chosen_files = {Path(f.path).name for f in client.list_artifacts(parent, f"chosen/{chosen}")}
    assert "model.json" in chosen_files and ("model.onnx" in chosen_files or "model.safetensors" in chosen_files)
    local = client.download_artifacts(parent, "report.html", str(tmp_path / "download"))
    assert Path(local).read_bytes() == result.report.read_bytes()

    [pipeline_dir] = board.iterdir()
    train_scalars = scalars(pipeline_dir / "train")
    assert [step for step, _ in train_scalars["val_loss"]] == [row["epoch"] for row in train_result["history"]]
    assert train_scalars["val_loss"][-1][1] == pytest.approx(train_result["history"][-1]["val_loss"], rel=1e-6)
    assert scalars(pipeline_dir / "compress")[f"{chosen}.accuracy"][0][1] == pytest.approx(
        next(r["accuracy"] for r in compressed["variants"] if r["name"] == chosen), rel=1e-6)


def test_cli_flag_and_environment_variable(tmp_path, file_store, monkeypatch, capsys):
    assert main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(tmp_path / "a"),
                 "--mlflow", file_store, "--tensorboard", str(tmp_path / "tb")]) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", file_store)
    assert main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    found = runs(file_store)
    assert [run.info.run_name for run in found] == ["train", "train"]
    assert [len(mlflow.tracking.MlflowClient(file_store).get_metric_history(run.info.run_id, "val_accuracy"))
            for run in found] == [2, 2]
    [board] = (tmp_path / "tb").iterdir()
    assert board.name.endswith("-train") and len(scalars(board)["train_loss"]) == 2


def test_a_failed_block_ends_its_run_as_failed(file_store):
    with pytest.raises(ValueError):
        with open_tracker(TrackingOptions(mlflow=file_store), "train") as tracker:
            tracker.log_metrics({"val_loss": 1.0, "note": "text is left out", "bad": float("nan")}, step=1)
            raise ValueError("boom")
    [run] = runs(file_store)
    assert run.info.status == "FAILED" and run.data.metrics == {"val_loss": 1.0}


def test_a_refused_tracking_uri_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses the file store without it
    out = tmp_path / "run"
    code = main(["pipeline", "iris", "--model", "mlp", "--epochs", "2", "--out", str(out),
                 "--mlflow", (tmp_path / "mlruns").as_uri()])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: mlflow tracking at file://")
    assert not out.exists()


def test_a_missing_mlflow_is_one_line(tmp_path, monkeypatch, capsys):
    """The first record needs the package: the missing-package line, not an ImportError from a later import."""
    for name in ("mlflow", "mlflow.tracking", "mlflow.entities"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    code = main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(out),
                 "--mlflow", "sqlite:///" + str(tmp_path / "m.db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: MLflow tracking needs the mlflow package: pip install 'mlflow>=2.16'"]
    assert not out.exists()


def test_a_new_sqlite_store_adds_no_lines_to_stderr(tmp_path):
    """MLflow logs at INFO when it creates a store's tables; the command's stderr keeps its one summary line."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-m", "cli.main", "train", "iris", "--model", "mlp", "--epochs", "2",
                           "--out", str(tmp_path / "r"), "--mlflow", "sqlite:///" + str(tmp_path / "m.db")],
                          cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)  # MLflow puts artifacts in ./mlruns
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        line for line in done.stderr.splitlines() if line.startswith("mlp on iris:")], done.stderr


def test_the_runs_seconds_are_not_a_point_on_the_epoch_curve(tmp_path, file_store):
    assert main(["train", "iris", "--model", "mlp", "--epochs", "3", "--out", str(tmp_path / "a"),
                 "--mlflow", file_store]) == 0
    [run] = runs(file_store)
    client = mlflow.tracking.MlflowClient(file_store)
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "seconds")] == [1, 2, 3]
    assert run.data.metrics["total_seconds"] == pytest.approx(result["seconds"])


def test_tensorboard_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    for i in range(3):
        with open_tracker(TrackingOptions(tensorboard=str(tmp_path / "tb")), "train") as tracker:
            tracker.log_metrics({"m": float(i)}, step=1)
    folders = sorted((tmp_path / "tb").iterdir())
    assert len(folders) == 3
    assert sorted(scalars(f)["m"][0][1] for f in folders) == [0.0, 1.0, 2.0]


def test_no_tracking_asked_for_is_a_no_op(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert isinstance(open_tracker(TrackingOptions(), "train"), NullTracker)
    assert isinstance(open_tracker(None, "train"), NullTracker)


def test_neither_backend_is_imported_unless_asked_for(tmp_path):
    script = f"""
import sys
import time
from cli.main import main
code = main(["pipeline", "iris", "--model", "mlp", "--epochs", "2", "--method", "int8-dynamic",
             "--explain-method", "saliency", "--samples", "4", "--out", {str(tmp_path / 'run')!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "tensorboard")
                or m == "torch.utils.tensorboard")
print(code, loaded)
"""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stderr[-2000:]


def test_names_mlflow_refuses_are_mapped_the_same_for_both_backends(tmp_path, file_store):
    """A variant of auto's (`...+int8-dynamic-onnx`) or a compared folder `v(int8)` failed the run in MLflow."""
    names = {"prune-structured-20-uniform+int8-dynamic-onnx.accuracy": 0.9, "drift.v(int8).saliency.cosine": 0.5,
             "drift.v_int8_.saliency.cosine": 0.4}
    options = TrackingOptions(mlflow=file_store, tensorboard=str(tmp_path / "tb"))
    with open_tracker(options, "compress") as tracker:
        tracker.log_params({"options": {"a+b": 1}})
        tracker.log_metrics(names, step=1)
        tracker.log_metrics(names, step=2)
    keys = {"prune-structured-20-uniform_plus_int8-dynamic-onnx.accuracy": 0.9, "drift.v_int8_.saliency.cosine": 0.5,
            "drift.v_int8_.saliency.cosine-2": 0.4}
    [run] = runs(file_store)
    assert run.data.metrics == keys and run.data.params == {"options.a_plus_b": "1"}
    [board] = (tmp_path / "tb").iterdir()
    assert {tag: [v for _, v in points] for tag, points in scalars(board).items()} == {
        key: [pytest.approx(value)] * 2 for key, value in keys.items()}


def test_explain_compares_a_folder_whose_name_mlflow_refuses(tmp_path, file_store, capsys):
    assert main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(tmp_path / "m")]) == 0
    shutil.copytree(tmp_path / "m", tmp_path / "v(int8)")
    assert main(["explain", str(tmp_path / "m"), "--data", "iris", "--method", "saliency", "--samples", "4",
                 "--compare", str(tmp_path / "v(int8)"), "--out", str(tmp_path / "e"), "--mlflow", file_store]) == 0
    [run] = runs(file_store)
    assert "drift.v_int8_.saliency.topk_overlap" in run.data.metrics


def test_one_failing_backend_does_not_skip_the_other(tmp_path):
    class Refusing(NullTracker):
        def log_metrics(self, metrics, step=None):
            raise RuntimeError("store gone")

        def finish(self, status="FINISHED"):
            raise RuntimeError("store gone")

    board = TensorBoardTracker(tmp_path / "tb")
    both = _Both([Refusing(), board])
    with pytest.raises(RuntimeError, match="store gone"):
        both.log_metrics({"m": 1.0}, step=1)
    with pytest.raises(RuntimeError, match="store gone"):
        both.finish()
    assert board._writer is None and scalars(tmp_path / "tb")["m"] == [(1, 1.0)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "m"
    assert main(["train", "iris", "--model", "mlp", "--epochs", "2", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("stage", [["compress", "--method", "int8-dynamic"],
                                   ["explain", "--method", "saliency", "--samples", "4"]])
@pytest.mark.parametrize("flag", ["--mlflow", "--tensorboard"])
def test_an_unusable_tracking_target_is_one_line_before_the_work(tmp_path, trained, stage, flag, capsys):
    """compress and explain refused it only after committing --out (a rerun was then refused too); a
    TensorBoard folder under a file was NotADirectoryError, exit 1."""
    (tmp_path / "o.txt").write_text("not a folder")
    under_file = "sqlite:///" + str(tmp_path / "o.txt" / "x.db") if flag == "--mlflow" else str(tmp_path / "o.txt" / "tb")
    out = tmp_path / "run"
    code = main([stage[0], str(trained), "--data", "iris", *stage[1:], "--out", str(out), flag, under_file])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {flag[2:]}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.txt"]


def test_a_server_that_does_not_answer_is_reported_in_seconds(monkeypatch):
    """MLflow's default retries took 259 s; the check bounds them and gives the caller's environment back."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    started = time.perf_counter()
    with pytest.raises(ToolkitError, match="mlflow tracking at http://127.0.0.1:9"):
        open_tracker(TrackingOptions(mlflow="http://127.0.0.1:9"), "train")
    assert time.perf_counter() - started < 30
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_a_new_sqlite_store_is_quiet_from_python_too(tmp_path):
    """The command line set MLFLOW_LOGGING_LEVEL before MLflow's import; a notebook has MLflow imported already."""
    script = f"""
import logging, mlflow
from trainers.tracking import TrackingOptions, open_tracker
before = logging.getLogger("mlflow").level
with open_tracker(TrackingOptions(mlflow="sqlite:///" + {str(tmp_path / 'm.db')!r}), "train") as tracker:
    tracker.log_metrics({{"m": 1.0}}, step=1)
print(before == logging.getLogger("mlflow").level)
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "True", "")


def test_a_training_stopped_by_ctrl_c_ends_its_run_as_killed(tmp_path, file_store):
    """train keeps its best model on Ctrl-C, and the command's block then ended normally: MLflow said FINISHED."""
    from fake_runs import ctrl_c_in_epoch

    with ctrl_c_in_epoch(3):
        assert main(["train", "iris", "--model", "mlp", "--epochs", "20", "--out", str(tmp_path / "a"),
                     "--mlflow", file_store]) == 130
    [run] = runs(file_store)
    assert run.info.status == "KILLED" and run.data.metrics["epochs_run"] == 2


def test_a_training_stopped_by_sigterm_exits_143(tmp_path, file_store, monkeypatch):
    """The command said 130 (Ctrl-C's code) for a training that a timeout or a service manager had stopped."""
    from trainers import errors, loop

    def terminated(*args, **kwargs):
        errors.INTERRUPTED["by"] = "SIGTERM"
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", terminated)
    monkeypatch.setitem(errors.INTERRUPTED, "by", None)
    assert main(["train", "iris", "--model", "mlp", "--epochs", "5", "--out", str(tmp_path / "a"),
                 "--mlflow", file_store]) == 143
    assert [run.info.status for run in runs(file_store)] == ["KILLED"]


def test_a_callers_active_run_holds_the_toolkits_run(file_store, monkeypatch):
    """In a notebook's `with mlflow.start_run():` the toolkit's run was top-level in experiment `toolkit`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", file_store)  # what set_tracking_uri sets, given back after the test
    mlflow.set_tracking_uri(file_store)
    experiment = mlflow.create_experiment("notebook")
    with mlflow.start_run(experiment_id=experiment) as outer:
        with open_tracker(TrackingOptions(mlflow=file_store), "train") as tracker:
            tracker.log_metrics({"m": 1.0}, step=1)
    inner = by_name(runs(file_store, "notebook"))["train"]
    assert inner.data.tags["mlflow.parentRunId"] == outer.info.run_id and inner.info.status == "FINISHED"
    assert mlflow.tracking.MlflowClient(file_store).get_experiment_by_name("toolkit") is None


def test_a_bad_tensorboard_folder_is_found_before_mlflow_makes_its_store(tmp_path):
    (tmp_path / "o.txt").write_text("not a folder")
    options = TrackingOptions(mlflow="sqlite:///" + str(tmp_path / "m.db"), tensorboard=str(tmp_path / "o.txt" / "tb"))
    with pytest.raises(ToolkitError, match="tensorboard directory"):
        open_tracker(options, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.txt"]


def test_a_tensorboard_folder_that_cannot_be_made_is_refused_though_os_access_says_writable(tmp_path, monkeypatch):
    """os.access called /proc writable (as root) and the first record failed there: exit 1. The check makes the
    folder, and removes again what it made."""
    from trainers import tracking
    from trainers.tracking import TensorBoardTracker

    fine = TensorBoardTracker(tmp_path / "a" / "b" / "tb")
    fine.check()
    assert not list(tmp_path.iterdir())  # made and removed again
    monkeypatch.setattr(tracking.os, "access", lambda *args, **kwargs: True)  # as for root under /proc
    with pytest.raises(ToolkitError, match=r"tensorboard directory /proc/toolkit-no-such/.*train: cannot be made in /proc "):
        open_tracker(TrackingOptions(tensorboard="/proc/toolkit-no-such"), "train")
