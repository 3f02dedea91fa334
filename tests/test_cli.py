"""`toolkit train` and `toolkit env` through the real entry point, help read from the registries, thin
command modules, and the bad inputs of `toolkit train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compress
import explain
from cli.main import main
from trainers import list_models, load_model

TOOLKIT = [sys.executable, "-m", "cli.main"]
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    return subprocess.run([*TOOLKIT, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_help_does_not_import_torch():
    code = ("import sys; from cli.main import main; code = main(['--help']); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok', code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().endswith("ok 0"), out.stderr
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli.main", "--help"], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0
    for command in ("train", "compress", "explain", "report", "pipeline", "env"):
        assert command in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [name for name in imported if name.split(".")[0] in ("torch", "compress", "explain")]


# command -> {option: the registry that lists its choices}
REGISTRY_CHOICES = {
    "train": {"--model": list_models},
    "compress": {"--method": compress.list_methods},
    "explain": {"--method": explain.list_methods},
    "pipeline": {"--model": list_models, "--method": compress.list_methods, "--explain-method": explain.list_methods},
}


def test_the_names_help_lists_are_the_registries_in_order():
    """Help lists built-in names without importing the registries (PyTorch): they must be the registries' own."""
    from cli import help as cli_help

    assert list(cli_help.FAMILIES) == list_models()
    assert list(cli_help.COMPRESSION_METHODS) == compress.list_methods()
    assert list(cli_help.EXPLANATION_METHODS) == explain.list_methods()


@pytest.mark.parametrize("command", list(REGISTRY_CHOICES))
def test_a_commands_help_does_not_import_torch(command):
    """`toolkit train --help` took 3 s, most of it PyTorch's import for the list of families and the defaults."""
    code = (f"import sys; from cli.main import main; code = main(['{command}', '--help']); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok', code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.stdout.strip().endswith("ok 0"), out.stderr[-2000:]


@pytest.mark.parametrize("command", list(REGISTRY_CHOICES))
def test_command_help_lists_every_registered_name(command):
    result = subprocess.run([*TOOLKIT, command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400", "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for option, registry in REGISTRY_CHOICES[command].items():
        line = next(line for line in lines if option in line.split()[:3])  # the option's row of the table
        assert "Choices:" in line and all(name in line for name in registry()), (option, line)


def test_command_modules_are_thin():
    for module in sorted((ROOT / "cli").glob("*.py")):
        assert len(module.read_text(encoding="utf-8").splitlines()) < 120, module.name


def test_train_subprocess_writes_artifact_and_json(tmp_path):
    result = run_cli("train", "iris", "--model", "mlp", "--epochs", "3", "--out", tmp_path / "run", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["stage"] == "train" and payload["family"] == "mlp" and payload["epochs_run"] == 3
    assert 0.0 <= payload["metrics"]["test_accuracy"] <= 1.0
    assert load_model(tmp_path / "run").spec.family == "mlp"


def test_train_human_output_prints_artifact_path(tmp_path, capsys):
    assert main(["train", "wine", "--model", "cnn", "--epochs", "2", "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "r")
    assert "test accuracy" in captured.err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "iris", "--model", "mlp", "--epochs", "1", "--out", out]) == 0
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "iris", "--model", "mlp", "--epochs", "1", "--out", out, "--seed", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    assert main(["train", "iris", "--model", "mlp", "--epochs", "1", "--out", out, "--seed", "5", "--overwrite"]) == 0
    assert (tmp_path / "r" / "model.safetensors").read_bytes() != before


def test_env_json():
    result = run_cli("env", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["versions"]["torch"] == torch.__version__
    assert info["device"] in ("cpu", "cuda")
    for name in ("onnxruntime", "shap", "captum"):
        assert name in info["versions"]


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


def _csv(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return str(path)


X, Y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2
GOOD_CSV = "a,b,t\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30))

BAD_INPUTS = {
    "missing file": (lambda p: [str(p / "nope.npz"), "--model", "mlp"], "not found"),
    "unknown builtin": (lambda p: ["mnist", "--model", "mlp"], "unknown data"),
    "npz without x/y": (lambda p: [_npz(p, a=X), "--model", "mlp"], "missing array"),
    "x/y lengths": (lambda p: [_npz(p, x=X, y=Y[:10]), "--model", "mlp"], "samples but y has"),
    "nan in x": (lambda p: [_npz(p, x=np.full_like(X, np.nan), y=Y), "--model", "mlp"], "NaN"),
    "inf in x": (lambda p: [_npz(p, x=np.full_like(X, np.inf), y=Y), "--model", "mlp"], "infinite"),
    "infinite labels": (lambda p: [_npz(p, x=X, y=np.where(Y, np.inf, 0.3)), "--model", "mlp"], "a finite number"),
    "one class": (lambda p: [_npz(p, x=X, y=np.ones(30, int)), "--model", "mlp"], "only one class"),
    "csv target": (lambda p: [_csv(p, GOOD_CSV), "--model", "mlp", "--target", "zz"], "target column 'zz'"),
    "csv one class": (lambda p: [_csv(p, "a,b,t\n" + "x,1,0\n" * 20), "--model", "mlp"], "has 1 classes in 20 rows"),
    "unknown model": (lambda p: ["iris", "--model", "transformer"], "unknown model family 'transformer'"),
    "epochs 0": (lambda p: ["iris", "--model", "mlp", "--epochs", "0"], "--epochs: input should be greater than"),
    "negative lr": (lambda p: ["iris", "--model", "mlp", "--lr", "-0.1"], "--lr: input should be greater than 0"),
    "bad device": (lambda p: ["iris", "--model", "mlp", "--device", "tpu"],
                   "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    "oversubscribe without a launch": (lambda p: ["iris", "--model", "mlp", "--oversubscribe"],
                                       "--oversubscribe need --nproc-per-node"),
    "bad arch json": (lambda p: ["iris", "--model", "mlp", "--arch", "{oops"], "--arch"),
    # --arch and its key as typed, not the family config's name for them ("mlp config width")
    "unknown arch key": (lambda p: ["iris", "--model", "mlp", "--arch", '{"width": 3}'], "--arch width: unknown option"),
    "negative width": (lambda p: ["iris", "--model", "mlp", "--arch", '{"hidden": -1}'],
                       "--arch hidden: input should be a valid list, got -1"),
    "zero channels": (lambda p: ["digits", "--model", "cnn", "--arch", '{"channels": [8, 0]}'],
                      "--arch channels.1: input should be greater than or equal to 1, got 0"),
    "even kernel": (lambda p: ["digits", "--model", "cnn", "--arch", '{"kernel_size": 2}'], "--arch kernel_size: "),
    "lstm flag": (lambda p: ["digits", "--model", "lstm", "--arch", '{"bidirectional": 1}'],
                  "--arch bidirectional: input should be a valid boolean, got 1"),
    "too many layers": (lambda p: ["iris", "--model", "mlp", "--arch", json.dumps({"hidden": [1] * 300})],
                        "--arch hidden: 300 layers, more than the limit of 256"),
    "unknown option": (lambda p: ["iris", "--model", "mlp", "--frobnicate"], "No such option"),
    "resume nothing": (lambda p: ["iris", "--model", "mlp", "--resume", "--out", str(p / "fresh")], "nothing to resume"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, expected = BAD_INPUTS[case]
    args = make(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "fresh").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(tmp_path, capsys):
    assert main(["train", "iris", "--model", "mlp", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_input_in_a_real_subprocess_has_no_traceback(tmp_path):
    result = run_cli("train", tmp_path / "missing.csv", "--model", "lstm")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: data file not found: {tmp_path / 'missing.csv'}"]


def test_compress_serving_batch_flag_reaches_auto(tmp_path, monkeypatch):
    """`--serving-batch 1` is auto's `serving_batch`: the choice is made at batch 1, and the run's config
    records it with auto's other options (merged with --options, not replacing them)."""
    import compress.auto as auto

    batches = []
    choose = auto.choose
    monkeypatch.setattr(auto, "choose", lambda b, v, d, batch=256, by_batch=False:
                        batches.append(batch) or choose(b, v, d, batch, by_batch))
    assert main(["train", "digits", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "m"),
                 "--arch", '{"hidden": [16]}']) == 0
    options = ('{"auto": {"prune_ratios": [0.5], "finetune_epochs": 1, "distill_epochs": 0, "unstructured_ratio": 0.0,'
               ' "latency_budget_s": 0.02}}')
    assert main(["compress", str(tmp_path / "m"), "--data", "digits", "--serving-batch", "1", "--options", options,
                 "--out", str(tmp_path / "c")]) == 0
    assert batches and set(batches) == {1}
    recorded = json.loads((tmp_path / "c" / "config.json").read_text())["options"]["auto"]
    assert recorded["serving_batch"] == 1 and recorded["prune_ratios"] == [0.5]


def test_a_bad_value_is_named_as_typed_on_the_command_line_and_by_field_from_python():
    """`--epochs 0` is told about --epochs; `TrainConfig`/`parse` from Python keep the field names they were given."""
    from compress.base import check_method_options
    from trainers import TrainConfig
    from trainers.errors import ToolkitError
    from trainers.options import option_flags, parse

    with pytest.raises(ToolkitError, match=r"^epochs: input should be greater than or equal to 1, got 0$"):
        parse(TrainConfig, {"epochs": 0})
    with pytest.raises(ToolkitError, match=r"^--batch-size: input should be greater than or equal to 1, got 0$"):
        parse(TrainConfig, {"batch_size": 0}, flags=option_flags(["batch_size"]))
    with pytest.raises(ToolkitError, match=r"^compression method 'auto': serving_batch: value error, must be 1 or 256"):
        check_method_options("auto", {"serving_batch": 8})
