"""What the command line prints: `--version`, JSON on stdout for every command, progress on a terminal and in a pipe,
and `toolkit predict` agreeing with `trainers.predict`."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli.main import app
from trainers import load_data, load_model, predict
from trainers.env import toolkit_version

ROOT = Path(__file__).resolve().parents[1]
TOOLKIT = [sys.executable, "-m", "cli.main"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}


def run_cli(*args):
    return subprocess.run([*TOOLKIT, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)


def run_on_terminal(*args) -> str:
    """Run with stderr (and stdout) on a pseudo-terminal; returns what the terminal showed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([*TOOLKIT, *map(str, args)], stdout=follower, stderr=follower, cwd=ROOT, env=ENV)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 0
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of each stage through the real command line, with --json."""
    root = tmp_path_factory.mktemp("cli")
    rows = root / "rows.csv"
    data = load_data("iris")
    pd.DataFrame(data.x_test, columns=data.feature_names).assign(target=data.y_test).to_csv(rows, index=False)
    commands = {
        "train": ("train", "iris", "--model", "mlp", "--epochs", "8", "--out", root / "train"),
        "compress": ("compress", root / "train", "--data", "iris", "--method", "onnx-fp32", "--method",
                     "int8-dynamic", "--out", root / "compress"),
        "explain": ("explain", root / "train", "--data", "iris", "--method", "saliency", "--samples", "4",
                    "--out", root / "explain"),
        "report": ("report", root / "compress"),
        "predict": ("predict", root / "compress", rows, "--variant", "onnx-fp32", "--out", root / "preds.csv"),
        "env": ("env",),
        "pipeline": ("pipeline", "iris", "--model", "mlp", "--epochs", "2", "--method", "fp16",
                     "--explain-method", "saliency", "--samples", "4", "--out", root / "pipeline"),
    }
    return root, rows, {name: run_cli(*args, "--json") for name, args in commands.items()}


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"toolkit {toolkit_version()}"


def test_every_command_has_a_json_flag_shown_without_a_type():
    names = [c.name for c in app.registered_commands]
    assert {"train", "compress", "explain", "report", "pipeline", "predict", "env"} <= set(names)
    for name in names:
        help_text = run_cli(name, "--help").stdout
        assert "--json" in help_text and "<bool>" not in help_text, name


def test_shell_completion_script_is_offered():
    # `--show-completion` detects the calling shell from the process tree, which a detached test run lacks;
    # the environment variable it documents asks for the bash script directly.
    env = {**ENV, "_TOOLKIT_COMPLETE": "source_bash"}
    result = subprocess.run(TOOLKIT, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0 and "_TOOLKIT_COMPLETE=complete_bash" in result.stdout


def test_json_on_every_command_is_the_only_thing_on_stdout(runs):
    _, _, results = runs
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-800:]}"
        assert isinstance(json.loads(result.stdout), dict), name        # one object and nothing else
        assert result.stdout.count("\n") == 1, name
    assert json.loads(results["report"].stdout)["report"].endswith("report.html")


def test_predict_on_raw_csv_rows_agrees_with_trainers_predict(runs):
    root, rows, results = runs
    x = pd.read_csv(rows).drop(columns="target").to_numpy(np.float32)
    expected = predict(load_model(root / "train"), x)
    torch_preds = run_cli("predict", root / "train", rows)
    assert torch_preds.returncode == 0, torch_preds.stderr
    table = pd.read_csv(pd.io.common.StringIO(torch_preds.stdout))
    names = load_model(root / "train").spec.class_names
    assert list(table.columns) == ["predicted", "predicted_index", *[f"p_{n}" for n in names]]
    assert (table["predicted_index"].to_numpy() == expected.argmax(1)).all()
    assert table["predicted"].tolist() == [names[i] for i in expected.argmax(1)]
    softmax = np.exp(expected - expected.max(1, keepdims=True))
    np.testing.assert_allclose(table[[f"p_{n}" for n in names]].to_numpy(), softmax / softmax.sum(1, keepdims=True),
                               atol=1e-5)
    onnx = pd.read_csv(root / "preds.csv")
    assert (onnx["predicted_index"].to_numpy() == expected.argmax(1)).all()
    int8 = run_cli("predict", root / "compress", rows, "--variant", "int8-dynamic-onnx", "--json")
    int8_index = np.array([row["predicted_index"] for row in json.loads(int8.stdout)["predictions"]])
    assert (int8_index == expected.argmax(1)).mean() >= 0.9        # int8 agreement, as compress measures it


def test_progress_is_bars_on_a_terminal_nothing_in_a_pipe_lines_when_asked_and_nothing_when_quiet(tmp_path):
    args = ("train", "iris", "--model", "mlp", "--epochs", "3")
    shown = run_on_terminal(*args, "--out", tmp_path / "tty")
    assert "\x1b[" in shown and "━" in shown and "eta" in shown and "train [1/3]" not in shown
    piped = run_cli(*args, "--out", tmp_path / "pipe")
    assert piped.returncode == 0 and "train [" not in piped.stderr and "\x1b[" not in piped.stderr
    lines = run_cli("--progress", "lines", *args, "--out", tmp_path / "lines")
    assert "train [1/3] val_acc" in lines.stderr and "train [3/3]" in lines.stderr and "\x1b[" not in lines.stderr
    quiet = run_cli("--quiet", *args, "--out", tmp_path / "quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip() == str(tmp_path / "quiet")


def test_predict_on_a_folder_of_images_agrees_with_trainers_predict(tmp_path):
    """Images are read as in training (grey, [0, 1]) and resized to the model's input; sub-folders are read too."""
    from PIL import Image

    from trainers import TrainConfig, train

    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "light")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 120 * k, 30, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "photos" / name / f"{i:02d}.png")
    train(str(tmp_path / "photos"), "cnn", TrainConfig(epochs=2, device="cpu", model={"channels": [4], "hidden": [8]}),
          out=tmp_path / "model")
    (tmp_path / "new").mkdir()
    files = sorted((tmp_path / "photos").rglob("*.png"))[::3]
    for i, file in enumerate(files):  # 16x16 copies: predict resizes them to the model's 8x8
        Image.open(file).resize((16, 16), Image.BILINEAR).save(tmp_path / "new" / f"{i:02d}.png")
    x = np.stack([np.asarray(Image.open(tmp_path / "new" / f"{i:02d}.png").resize((8, 8), Image.BILINEAR),
                             np.float32)[None] / 255.0 for i in range(len(files))])
    expected = predict(load_model(tmp_path / "model"), x).argmax(1)
    done = run_cli("predict", tmp_path / "model", tmp_path / "new")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(pd.io.common.StringIO(done.stdout))
    assert len(table) == len(files) and (table["predicted_index"].to_numpy() == expected).all()
    refused = run_cli("predict", tmp_path / "model", tmp_path / "photos" / "dark" / "00.png")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [
    ("train", "missing.csv", "--model", "mlp"),
    ("compress", "no-model", "--data", "iris"),
    ("explain", "no-model", "--data", "iris"),
    ("report", "no-run"),
    ("predict", "no-model", "rows.csv"),
    ("pipeline", "missing.csv", "--model", "mlp"),
])
def test_json_on_failure_is_one_error_object_on_stdout(args):
    result = run_cli(*args, "--json")  # none of these paths exists: each fails before writing anything
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert set(error) == {"error", "exit_code"} and error["exit_code"] == 2
    assert result.stderr.strip() == f"error: {error['error']}"


@pytest.mark.parametrize("name", ["missing.onnx", "no-model", "runs/no-run"])
def test_predict_says_a_mistyped_model_path_is_not_found(name, tmp_path, capsys):
    """It said "is not a model artifact (no model.json) nor a run with a chosen variant" of a path that is not there."""
    from cli.main import main

    np.save(tmp_path / "rows.npy", np.zeros((2, 4), np.float32))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / name), str(tmp_path / "rows.npy")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / name}: not found (a model artifact, a compress or pipeline " \
                                      "run, or an .onnx file)\n"


def test_every_command_that_takes_a_model_gives_the_same_advice_on_a_pickle(tmp_path, capsys):
    """`predict model.pt` said only "not a model artifact"; compress and explain say what to do instead."""
    from cli.main import main

    (tmp_path / "model.pt").write_bytes(b"never read")
    np.save(tmp_path / "rows.npy", np.zeros((2, 4), np.float32))
    said = {}
    for command, rest in (("predict", [str(tmp_path / "rows.npy")]), ("compress", ["--data", "iris"]),
                          ("explain", ["--data", "iris"])):
        capsys.readouterr()
        out = [] if command == "predict" else ["--out", str(tmp_path / command)]
        assert main([command, str(tmp_path / "model.pt"), *rest, *out]) == 2
        said[command] = capsys.readouterr().err
    assert said["predict"].startswith("error: model.pt is a pickle; the toolkit never loads pickles") and \
        "export it to ONNX" in said["predict"]
    assert said["predict"] == said["compress"] == said["explain"]


@pytest.mark.parametrize("command", ["explain", "compress"])
def test_a_pipeline_run_given_as_the_model_points_to_its_trained_model(command, tmp_path, capsys):
    """`predict` takes a pipeline run (its chosen variant); the stages that start from the trained model say where
    it is instead of "no model.json"."""
    from cli.main import main

    (tmp_path / "run" / "train").mkdir(parents=True)
    (tmp_path / "run" / "train" / "model.json").write_text("{}")
    capsys.readouterr()
    assert main([command, str(tmp_path / "run"), "--data", "iris", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'run'} is a pipeline run, not a model artifact: its "
                                       f"trained model is {tmp_path / 'run' / 'train'}\n")


@pytest.mark.parametrize("args", [
    ("train", "iris", "--model", "mlp", "--json", "--nope"),       # an unknown option
    ("train", "iris", "--model", "mlp", "--json", "--epochs", "x"),  # a value of the wrong type
    ("train", "iris", "--json"),                                     # a missing required option
    ("--progress", "bogus", "train", "iris", "--model", "mlp", "--json"),  # a bad global option
    ("env", "--json", "--bad"),
])
def test_json_on_a_usage_error_is_one_error_object_on_stdout(args, capsys):
    """The errors click finds while parsing keep --json's promise too, as those found after it."""
    from cli.main import main

    assert main(list(args)) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert set(error) == {"error", "exit_code"} and error["exit_code"] == 2
    assert captured.err == f"error: {error['error']}\n"
    assert main([a for a in args if a != "--json"]) == 2 and capsys.readouterr().out == ""  # no --json: stderr only


@pytest.mark.parametrize("args, option", [
    (("train", "iris", "--model", "mlp", "--model", "cnn", "--epochs", "1"), "--model"),  # trained a cnn, no word
    (("train", "iris", "-m", "mlp", "--epochs", "1", "--epochs", "2"), "--epochs"),
    (("--progress", "lines", "--progress", "none", "env"), "--progress"),              # a global option
])
def test_an_option_of_one_value_given_twice_is_refused_in_one_line(args, option, capsys, tmp_path):
    from cli.main import main

    assert main([*args, "--out", str(tmp_path / "run")] if args[0] == "train" else list(args)) == 2
    assert capsys.readouterr().err == f"error: option {option} is given more than once; it takes one value\n"
    assert not list(tmp_path.iterdir())


def test_a_repeatable_option_may_be_given_twice(capsys):
    from cli.main import main

    # reaches the check of --epochs 0: the two --explain-method and two -q were taken
    assert main(["-q", "-q", "pipeline", "iris", "--model", "mlp", "--explain-method", "saliency",
                 "--explain-method", "occlusion", "--epochs", "0"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_predict_reads_a_npy_memory_mapped_and_agrees_with_trainers_predict(runs, tmp_path):
    """A .npy is memory-mapped, as train reads it: rows reach the model batch by batch, not loaded whole."""
    from trainers.inference import read_rows

    root, rows, _ = runs
    x = pd.read_csv(rows).drop(columns="target").to_numpy(np.float32)
    np.save(tmp_path / "rows.npy", x)
    model = load_model(root / "train")
    read, _ = read_rows(tmp_path / "rows.npy", model)
    assert isinstance(read, np.memmap) or isinstance(getattr(read, "base", None), np.memmap)
    result = run_cli("predict", root / "train", tmp_path / "rows.npy", "--json")
    assert "not writable" not in result.stderr        # torch's warning on read-only rows, not the user's concern
    got = np.array([r["predicted_index"] for r in json.loads(result.stdout)["predictions"]])
    assert (got == predict(model, x).argmax(1)).all()
