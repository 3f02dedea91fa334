"""Runs that meet each other or get stopped: two `toolkit compress` into one `--out`, Ctrl-C during a
pipeline's training, and the record a killed pipeline leaves for `toolkit report`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import reports.pipeline as pipeline_module
from cli.main import main
from reports import render_report
from reports.pipeline import run_pipeline
from trainers import TrainConfig, load_model, train

ROOT = Path(__file__).resolve().parents[1]


def _start(*args, cwd=ROOT) -> subprocess.Popen:
    # Ctrl-C at its default in the child, as a terminal gives it: a test run started in the background
    # (`nohup pytest &`) ignores SIGINT, the child would inherit that and never see the test's Ctrl-C.
    return subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"never saw {what}")


def test_two_compress_runs_into_one_out_one_completes_the_other_is_refused_at_once(tmp_path):
    model = tmp_path / "model"
    train("digits", "mlp", TrainConfig(epochs=2, model={"hidden": [64]}), out=model, progress=False)
    out = tmp_path / "compressed"
    first = _start("compress", model, "--data", "digits", "--method", "auto", "--out", out)
    _wait_for(lambda: (tmp_path / ".compressed.lock").exists(), first, "the first run's lock")
    second = _start("compress", model, "--data", "digits", "--method", "int8-dynamic", "--out", out, "--overwrite")
    stdout, stderr = second.communicate(timeout=300)
    assert first.poll() is None, "the second run waited for the first instead of being refused at once"
    assert second.returncode == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: another toolkit run is writing"), stderr
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["methods"] == ["auto"]  # the first run's own result, not a mixture
    assert all(load_model(out / v["path"]) for v in result["variants"][1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compressed", "model"]  # no .partial, no lock left


def test_sigterm_ends_a_command_as_ctrl_c_does_with_exit_143(tmp_path):
    """`kill`, a service manager or a CI timeout sends SIGTERM: the same cleanup as Ctrl-C (no <out>.partial, no
    lock, no temporary file left), one line, exit 143. Before, the process died at once and left them."""
    model = tmp_path / "model"
    train("digits", "mlp", TrainConfig(epochs=2, model={"hidden": [64]}), out=model, progress=False)
    out = tmp_path / "compressed"
    proc = _start("compress", model, "--data", "digits", "--method", "auto", "--out", out)
    _wait_for(lambda: (tmp_path / ".compressed.lock").exists(), proc, "the run's lock")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "error: terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


NATIVE_CALL = """
import numpy as np, onnxruntime as ort
from onnx import TensorProto as T, helper as h, numpy_helper as nh
from trainers import errors
errors.NATIVE_GRACE_S = 1.0
body = h.make_graph([h.make_node("Identity", ["c"], ["c_out"]), h.make_node("Sin", ["v"], ["v_out"])], "body",
                    [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c", T.BOOL, []),
                     h.make_tensor_value_info("v", T.FLOAT, None)],
                    [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, None)])
graph = h.make_graph([h.make_node("Loop", ["m", "c0", "x"], ["y"], body=body)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [None])], [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [nh.from_array(np.array(100_000, np.int64), "m"), nh.from_array(np.array(True), "c0")])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]).SerializeToString(),
                               options, providers=["CPUExecutionProvider"])
with errors.sigterm_as_interrupt():
    print("running", flush=True)
    session.run(None, {"x": np.ones(1 << 20, np.float32)})  # 100,000 sines of a million floats: minutes
"""


def test_sigterm_ends_a_long_native_call_after_the_grace_period(tmp_path):
    """Inside one ONNX Runtime run the Python handler never runs: the watchdog ends the process, one line, 143."""
    proc = subprocess.Popen([sys.executable, "-c", NATIVE_CALL], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "running\n", proc.stderr.read()
    time.sleep(0.5)  # inside the run
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 143 and stderr == "error: terminated\n", stderr[-2000:]
    assert time.monotonic() - sent < 10


def test_a_pipeline_stopped_by_sigterm_records_the_signal(tmp_path, monkeypatch):
    """pipeline.json said 'Ctrl-C' for a run a timeout had stopped."""
    from trainers import errors

    def terminated(*args):
        errors.INTERRUPTED["by"] = "SIGTERM"
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "_train", terminated)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline("iris", "mlp", out=tmp_path / "run", progress=lambda line: None)
    finally:
        errors.INTERRUPTED["by"] = None
    status = json.loads((tmp_path / "run.partial" / "pipeline.json").read_text())
    assert status["stages"][0]["reason"] == "SIGTERM"
    assert "interrupted (SIGTERM) during train" in render_report(tmp_path / "run.partial").read_text()


def test_ctrl_c_during_the_pipelines_training_stops_the_pipeline_and_records_the_stages(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\npatience = 1000\n")
    out = tmp_path / "run"
    proc = _start("pipeline", "digits", "--model", "lstm", "--epochs", "400", "--arch", '{"hidden": [256, 256]}',
                  "--config", tmp_path / "c.toml", "--out", out)
    metrics = tmp_path / "run.partial" / "train.partial" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc, "a trained epoch")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted during the train stage") and "run.partial" in last, last
    assert "[2/4] compress" not in stderr and not out.exists()
    status = json.loads((tmp_path / "run.partial" / "pipeline.json").read_text())
    assert status["status"] == "interrupted"
    assert [(s["name"], s["status"]) for s in status["stages"]] == [
        ("train", "interrupted"), ("compress", "not run"), ("explain", "not run"), ("report", "not run")]
    html = render_report(tmp_path / "run.partial", tmp_path / "report.html").read_text()
    assert "interrupted (Ctrl-C) during train" in html


def test_a_killed_pipeline_leaves_a_record_that_the_report_shows_as_unfinished(tmp_path, monkeypatch):
    """What a SIGKILL during compress leaves on disk is what the run directory holds while compress runs."""
    seen = tmp_path / "as-killed"

    def killed_here(trained, bundle, cfg, run, say, tracker):
        shutil.copytree(run.path, seen)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "_compress", killed_here)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=tmp_path / "run", progress=lambda line: None)
    status = json.loads((seen / "pipeline.json").read_text())
    assert status["status"] == "running"
    assert [(s["name"], s["status"]) for s in status["stages"]] == [
        ("train", "done"), ("compress", "running"), ("explain", "pending"), ("report", "pending")]
    assert main(["report", str(seen), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "unfinished: stopped during compress" in html and "the run stopped during this stage" in html
    assert "The pipeline did not finish" in (tmp_path / "r.md").read_text()  # beside a report elsewhere
    assert not (seen / "MODEL_CARD.md").exists()


def test_ctrl_c_during_compress_with_overwrite_keeps_the_previous_run_as_it_was(tmp_path, monkeypatch, capsys):
    import compress.run as compress_run

    model = tmp_path / "model"
    train("iris", "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), out=model, progress=False)
    out = tmp_path / "compressed"
    assert main(["compress", str(model), "--data", "iris", "--method", "fp16", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compress_run, "_compress", interrupted)
    capsys.readouterr()
    assert main(["compress", str(model), "--data", "iris", "--out", str(out), "--overwrite"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compressed", "model"]  # no .old, .partial or lock


def test_ctrl_c_that_a_library_turns_into_another_error_still_ends_as_an_interrupt(tmp_path, monkeypatch, capsys):
    """matplotlib's layout code caught Ctrl-C and raised ValueError('Invalid bounding box'): `report` exited 1 with
    'unexpected error'. The signal is recorded, so the command ends as interrupted, 130."""
    import reports.render
    from fake_runs import make_run

    run = make_run(tmp_path / "run")

    def layout_swallows_the_interrupt(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ValueError("Invalid bounding box") from None

    monkeypatch.setattr(reports.render, "build_context", layout_swallows_the_interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        capsys.readouterr()
        assert main(["report", str(run)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == "error: interrupted"
    assert not (run / "report.html").exists()


def test_sigterm_during_training_keeps_the_best_model_and_exits_143(tmp_path):
    """Before, an interrupted training run always exited 130, whichever signal stopped it. Random labels never
    leave chance, so early stopping never ends the run before the signal."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "noise.npz", x=rng.normal(size=(2000, 16)).astype(np.float32), y=rng.integers(0, 3, 2000))
    proc = _start("--progress", "lines", "train", tmp_path / "noise.npz", "--model", "mlp", "--epochs", "10000",
                  "--device", "cpu", "--out", tmp_path / "run")
    for line in proc.stderr:
        if line.startswith("train [2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "keeping the best model so far" in stderr
    assert load_model(tmp_path / "run").spec.family == "mlp"


def test_a_signal_during_the_final_evaluation_still_saves_the_trained_model(tmp_path, monkeypatch, capsys):
    """Before, SIGTERM after the last epoch (the final evaluation, the save) left `<out>.partial` without a model."""
    import trainers.fit as fit

    evaluate = fit._final_metrics

    def terminated_meanwhile(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(fit, "_final_metrics", terminated_meanwhile)
    out = tmp_path / "run"
    assert main(["train", "iris", "--model", "mlp", "--epochs", "2", "--device", "cpu", "--out", str(out)]) == 143
    assert "the trained model is saved" in capsys.readouterr().err
    assert load_model(out).spec.family == "mlp" and json.loads((out / "result.json").read_text())["interrupted"]
    assert not (tmp_path / "run.partial").exists()


NOTHING_SAVED = "before the first epoch ended: there is no model to keep, nothing was saved"


def test_a_signal_before_the_first_epoch_ends_saves_nothing_and_keeps_the_previous_run(tmp_path, monkeypatch, capsys):
    """Before, the random initial weights were committed as the run ("keeping the best model so far (epoch 0)"):
    a finished-looking model at chance, with no checkpoint, so `--resume` refused it."""
    import trainers.loop as loop

    epoch = loop.train_epoch

    def terminated_in_it(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # held until the next step, as a real one landing in the epoch
        return epoch(*args, **kwargs)

    out = tmp_path / "run"
    args = ["train", "iris", "--model", "mlp", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(loop, "train_epoch", terminated_in_it)
    assert main([*args, "--overwrite", "--json"]) == 143
    said = capsys.readouterr()
    assert said.err.splitlines() == [f"error: terminated {NOTHING_SAVED}"]
    assert json.loads(said.out) == {"error": f"terminated {NOTHING_SAVED}", "exit_code": 143}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous run, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .partial, no lock


def test_train_interrupted_before_the_first_epoch_ends_raises_with_no_result(tmp_path):
    from fake_runs import ctrl_c_in_epoch

    from trainers import TrainingInterrupted

    with ctrl_c_in_epoch(1), pytest.raises(TrainingInterrupted) as stop:
        train("iris", "mlp", TrainConfig(epochs=3, device="cpu"), out=tmp_path / "run", progress=False)
    assert stop.value.result is None and str(stop.value) == NOTHING_SAVED
    assert list(tmp_path.iterdir()) == []  # no run, no staging directory


def test_an_interrupt_outside_a_commands_handling_is_one_line_and_one_json_object(monkeypatch, capsys):
    """Ctrl-C before a command's own handling (parsing its options) printed a line but no --json object; a second
    signal while the command said its failure line (a launcher passing on the Ctrl-C) printed a second line."""
    import cli.main as entry
    from cli.common import fail

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "app", interrupted)
    assert entry.main(["train", "iris", "--json"]) == 130
    said = capsys.readouterr()
    assert said.err == "error: interrupted\n" and json.loads(said.out) == {"error": "interrupted", "exit_code": 130}

    def interrupted_while_failing(**kwargs):
        try:
            fail("data file not found: d.npz", 2, as_json=True)
        finally:
            raise KeyboardInterrupt  # noqa: B012 (the second signal, landing during the exit)

    monkeypatch.setattr(entry, "app", interrupted_while_failing)
    assert entry.main(["train", "d.npz", "--json"]) == 130
    said = capsys.readouterr()
    assert said.err == "error: data file not found: d.npz\n"
    assert json.loads(said.out) == {"error": "data file not found: d.npz", "exit_code": 2}


def test_after_an_interrupt_the_process_exits_ignoring_a_second_signal(monkeypatch):
    """A worker that had said its line got the launcher's copy of the signal during the interpreter's exit: a
    KeyboardInterrupt traceback from an atexit callback, a second message for one Ctrl-C."""
    from trainers import errors

    handlers = {}
    monkeypatch.setattr(signal, "signal", lambda number, handler: handlers.update({number: handler}))
    monkeypatch.setitem(errors.INTERRUPTED, "by", "SIGINT")
    with pytest.raises(SystemExit) as done:
        errors.exit_with(130)
    assert done.value.code == 130 and handlers == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}
    monkeypatch.setitem(errors.INTERRUPTED, "by", None)
    with pytest.raises(SystemExit):
        errors.exit_with(2)
    assert len(handlers) == 2  # no interrupt: the handlers stay as they were
