"""`toolkit pipeline` and `run_pipeline`: config precedence and checks, bad inputs, stage failures, digits end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import pipeline as pipeline_module
from cli.main import main
from cli.pipeline import SCHEMA, StageFailed, resolve_config, run_pipeline
from trainers.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("name, text", [
    ("c.toml", '[train]\nepochs = 7\nlr = 0.01\n[explain]\nsamples = 9\n[compress]\nmethods = ["prune"]\n'),
    ("c.yaml", "train:\n  epochs: 7\n  lr: 0.01\nexplain:\n  samples: 9\ncompress:\n  methods: [prune]\n"),
])
def test_config_file_then_command_line(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    cfg = resolve_config(path, epochs=3, samples=None)
    assert cfg["train"]["epochs"] == 3, "the command line wins over the file"
    assert cfg["train"]["lr"] == 0.01 and cfg["explain"]["samples"] == 9, "the file wins over the defaults"
    assert cfg["compress"]["methods"] == ["prune"]
    assert cfg["train"]["batch_size"] == SCHEMA["train"]["batch_size"][1]
    cfg = resolve_config(path, train={"lr": 0.5}, compress_methods=["quantize"])
    assert cfg["train"]["lr"] == 0.5 and cfg["train"]["epochs"] == 7 and cfg["compress"]["methods"] == ["quantize"]


@pytest.mark.parametrize("config, named", [
    ({"train": {"epoch": 3}}, "train.epoch"),
    ({"trian": {"epochs": 3}}, "trian"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"compress": {"methods": [1, 2]}}, "compress.methods"),
    ({"compress": {"max_drop": [1]}}, "compress.max_drop"),
    ({"explain": {"samples": 1.5}}, "explain.samples"),
    ({"train": 3}, "train"),
    ({"report": {"out": "../escape.html"}}, "report.out"),
    ({"report": {"out": "/tmp/abs.html"}}, "report.out"),
    ({"report": {"out": "a/../../b.html"}}, "report.out"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_config_names_the_key(config, named):
    with pytest.raises(ToolkitError, match=f"'{named}'"):
        resolve_config(config)


def test_unknown_override_is_named():
    with pytest.raises(ToolkitError, match="'epoch'"):
        resolve_config(None, epoch=3)


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", "[train\nepochs=", "cannot parse config file"),
    ("c.yaml", "train: [unclosed", "cannot parse config file"),
    ("c.ini", "[train]", "must be .toml, .yaml or .yml"),
    ("c.yaml", "- just\n- a list\n", "must hold a table of sections"),
    ("c.toml", "[train]\nepohcs = 3\n", "'train.epohcs'"),
])
def test_bad_config_file_exits_2_with_one_line_and_writes_nothing(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    result = run_cli("pipeline", "iris", "--model", "mlp", "--config", path, "--out", tmp_path / "run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_bad_data_exit_2(tmp_path):
    result = run_cli("pipeline", "iris", "--model", "mlp", "--config", tmp_path / "nope.toml")
    assert result.returncode == 2 and "config file not found" in result.stderr
    result = run_cli("pipeline", tmp_path / "missing.npz", "--model", "mlp", "--out", tmp_path / "run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    result = run_cli("pipeline", "iris", "--model", "transformer")
    assert result.returncode == 2 and "unknown --model" in result.stderr


# ---------------------------------------------------------------- running (iris: a few seconds)


def _quiet(line):
    pass


def test_existing_run_dir_needs_overwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "_compress", lambda *a, **k: {"status": "skipped", "reason": "test"})
    monkeypatch.setattr(pipeline_module, "_explain", lambda *a, **k: {"status": "skipped", "reason": "test"})
    out = tmp_path / "run"
    run_pipeline("iris", "mlp", out=out, epochs=2, progress=_quiet)
    with pytest.raises(ToolkitError, match="--overwrite"):
        run_pipeline("iris", "mlp", out=out, epochs=2, progress=_quiet)
    report = run_pipeline("iris", "mlp", out=out, epochs=3, overwrite=True, progress=_quiet)
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3
    assert report == out / "report.html" and not list(tmp_path.glob(".run.old-*"))


@pytest.mark.parametrize("error, code", [(ToolkitError("no method handles this model"), 2),
                                         (RuntimeError("segfault-ish"), 1)], ids=["bad-input", "unexpected"])
def test_stage_failure_still_writes_the_report(tmp_path, monkeypatch, capsys, error, code):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline_module, "_compress", broken)
    out = tmp_path / "run"
    with pytest.raises(StageFailed) as info:
        run_pipeline("iris", "mlp", out=out, epochs=2, progress=_quiet)
    assert info.value.code == code and info.value.stage == "compress" and info.value.__cause__ is error
    html = info.value.report.read_text()
    assert "Stages that failed" in html and str(error) in html and 'id="training"' in html
    status = json.loads((out / "pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in status["stages"]] == [
        ("train", "done"), ("compress", "failed"), ("explain", "not run"), ("report", "done")]

    capsys.readouterr()
    assert main(["pipeline", "iris", "--model", "mlp", "--epochs", "2", "--out", str(out), "--overwrite"]) == code
    captured = capsys.readouterr()
    assert f"error: compress stage failed: " in captured.err and str(error) in captured.err
    assert captured.out.strip() == str(out / "report.html")


def test_report_path_from_config_stays_inside_run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "_compress", lambda *a, **k: {"status": "skipped", "reason": "test"})
    monkeypatch.setattr(pipeline_module, "_explain", lambda *a, **k: {"status": "skipped", "reason": "test"})
    config = tmp_path / "c.toml"
    config.write_text('[report]\nout = "html/summary.html"\n[train]\nepochs = 2\n')
    report = run_pipeline("iris", "mlp", config=config, out=tmp_path / "run", progress=_quiet)
    assert report == tmp_path / "run" / "html" / "summary.html" and report.is_file()


# ---------------------------------------------------------------- digits end to end


def test_pipeline_digits_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  epochs: 50\n  patience: 3\n"
                      "compress:\n  options:\n    auto: {distill_epochs: 0, finetune_epochs: 1, unstructured_ratio: 0,"
                      " latency_budget_s: 0.02}\n"
                      "explain:\n  samples: 8\n  methods: [saliency]\n")
    out = tmp_path / "run"
    result = run_cli("pipeline", "digits", "--model", "mlp", "--config", config, "--epochs", "2", "--out", out,
                     "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["report"] == str(out / "report.html")
    for stage in ("train", "compress", "explain", "report"):
        assert f"] {stage}" in result.stderr, f"progress of {stage} on stderr"
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["train"]["patience"] == 3 and resolved["explain"]["samples"] == 8
    assert resolved["command"].startswith("toolkit pipeline digits --model mlp --config ")
    assert resolve_config(out / "config.yaml") == {k: v for k, v in resolved.items() if k in SCHEMA}
    html = (out / "report.html").read_text()
    status = {s["name"]: s["status"] for s in payload["stages"]}
    assert status["train"] == "done" and 'id="training"' in html
    for stage, section in (("compress", "compression"), ("explain", "explanation")):
        assert status[stage] in ("done", "skipped")
        assert (f'id="{section}"' in html) == (status[stage] == "done")
    assert "http://" not in html and "https://" not in html
    assert (out / "report.html").stat().st_size < 5_000_000
    assert (out / "MODEL_CARD.md").is_file() and (out / "train" / "MODEL_CARD.md").is_file()


def test_hostile_csv_names_show_as_text_in_the_pipeline_report(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(pipeline_module, "_compress", lambda *a, **k: {"status": "skipped", "reason": "test"})
    hostile = "<script>alert(1)</script>"
    rng = np.random.default_rng(0)
    rows = [f'{a:.3f},{b:.3f},{"<b>yes</b>" if a + b > 0 else "$no$"}' for a, b in rng.normal(size=(120, 2))]
    csv = tmp_path / "hostile.csv"
    csv.write_text(f"{hostile},plain,label\n" + "\n".join(rows) + "\n")
    report = run_pipeline(csv, "mlp", out=tmp_path / "run", epochs=2, samples=4, explain_methods=["saliency"],
                          progress=_quiet)
    html = report.read_text()
    assert hostile not in html and "<b>yes</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;yes&lt;/b&gt;" in html
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert hostile not in card and "<b>" not in card


def test_readme_config_example_resolves(tmp_path):
    """The TOML example in the README is a valid pipeline config, and its values arrive where it says."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no TOML config example"
    path = tmp_path / "pipeline.toml"
    path.write_text(blocks[0], encoding="utf-8")
    cfg = resolve_config(path, epochs=3)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["arch"] == {"channels": [16, 32]}
    assert cfg["compress"]["max_drop"] == 1.0 and cfg["explain"]["samples"] == 32
    assert cfg["explain"]["methods"] == ["integrated_gradients", "shapley"]
