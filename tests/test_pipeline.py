"""`run_pipeline` and `toolkit pipeline`: config from the stages' dataclasses, precedence and checks, bad inputs,
stage failures, an atomic run directory, digits end to end."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cli.main import main
from compress import compress_model
from compress.options import CompressOptions
from explain import explain_model
from explain.options import ExplainOptions
from reports import pipeline as pipeline_module
from reports import PipelineConfig, StageFailed, resolve_config, run_pipeline
from trainers import TrainConfig
from trainers.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


# ---------------------------------------------------------------- configuration


def test_each_section_is_its_stages_options_dataclass():
    cfg = PipelineConfig()
    assert (cfg.train, cfg.compress, cfg.explain) == (TrainConfig(), CompressOptions(), ExplainOptions())


@pytest.mark.parametrize("options_cls, function", [(CompressOptions, compress_model), (ExplainOptions, explain_model)])
def test_options_are_the_stage_functions_keyword_options(options_cls, function):
    """Every field is a keyword option of the stage function, with the same default (None there: the dataclass's
    default applies, which must then be a non-empty list or dict)."""
    params = inspect.signature(function).parameters
    for f in dataclasses.fields(options_cls):
        assert f.name in params and params[f.name].kind == inspect.Parameter.KEYWORD_ONLY, f.name
        default, ours = params[f.name].default, getattr(options_cls(), f.name)
        default = list(default) if isinstance(default, tuple) else default
        assert default == ours or (default is None and isinstance(ours, (list, dict))), f.name


@pytest.mark.parametrize("name, text", [
    ("c.toml", '[train]\nepochs = 7\nlr = 0.01\n[explain]\nsamples = 9\n[compress]\nmethods = ["int8-dynamic"]\n'),
    ("c.yaml", "train:\n  epochs: 7\n  lr: 0.01\nexplain:\n  samples: 9\ncompress:\n  methods: [int8-dynamic]\n"),
    ("c.json", '{"train": {"epochs": 7, "lr": 0.01}, "explain": {"samples": 9}, "compress": {"methods": ["int8-dynamic"]}}'),
])
def test_config_file_then_command_line(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    cfg = resolve_config(path, {"train.epochs": 3})
    assert cfg.train.epochs == 3, "the command line wins over the file"
    assert cfg.train.lr == 0.01 and cfg.explain.samples == 9, "the file wins over the defaults"
    assert cfg.compress.methods == ["int8-dynamic"]
    assert cfg.train.batch_size == TrainConfig().batch_size, "defaults come from the stage's dataclass"
    cfg = resolve_config(path, {"train.lr": 0.5, "compress.methods": ["fp16"], "target": "label"})
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 7 and cfg.compress.methods == ["fp16"] and cfg.target == "label"


@pytest.mark.parametrize("name, text", [("c.toml", "[train]\nepochs = 7\n"), ("c.yaml", "train:\n  epochs: 7\n"),
                                        ("c.json", '{"train": {"epochs": 7}}')])
def test_a_config_file_saved_with_a_utf8_bom_is_read(tmp_path, name, text):
    """Windows Notepad saves UTF-8 with a byte-order mark; TOML and JSON refused it at line 1, column 1."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert resolve_config(path).train.epochs == 7


def test_resolved_config_round_trips_and_arch_is_the_models_options():
    cfg = resolve_config({"train": {"arch": {"hidden": [8]}, "epochs": 2}})
    assert cfg.train.model == {"hidden": [8]}
    assert cfg.to_dict()["train"]["arch"] == {"hidden": [8]}
    assert resolve_config(cfg.to_dict()) == cfg == resolve_config(cfg)


@pytest.mark.parametrize("config, named", [
    ({"train": {"epoch": 3}}, "train.epoch"),
    ({"trian": {"epochs": 3}}, "trian"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"device": "tpu"}}, "train.device"),
    ({"train": {"arch": [64]}}, "train.arch"),
    ({"compress": {"methods": [1, 2]}}, "compress.methods.0"),
    ({"compress": {"methods": "auto"}}, "compress.methods"),
    ({"compress": {"max_drop": [1]}}, "compress.max_drop"),
    ({"compress": {"max_drop": -1}}, "compress.max_drop"),
    ({"compress": {"ratio": 1.5}}, "compress.ratio"),
    ({"explain": {"samples": 1.5}}, "explain.samples"),
    ({"explain": {"samples": 10**9}}, "explain.samples"),
    ({"train": 3}, "train"),
    ({"target": 3}, "target"),
    ({"report": {"out": "../escape.html"}}, "report.out"),
    ({"report": {"out": "/tmp/abs.html"}}, "report.out"),
    ({"report": {"out": "a/../../b.html"}}, "report.out"),
    ({"report": {"out": "report.json"}}, "report.out"),     # the numbers `toolkit report RUN` writes
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_config_names_the_key(config, named):
    with pytest.raises(ToolkitError, match=rf"^config {named}: "):
        resolve_config(config)


def test_bad_override_is_named_like_a_config_key():
    with pytest.raises(ToolkitError, match=r"^config train.epoch: unknown option"):
        resolve_config(None, {"train.epoch": 3})
    with pytest.raises(ToolkitError, match=r"^config explain.samples: "):
        resolve_config({"explain": {"samples": 5}}, {"explain.samples": 0})


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", "[train\nepochs=", "cannot parse config file"),
    ("c.yaml", "train: [unclosed", "cannot parse config file"),
    ("c.ini", "[train]", "must be .toml, .yaml, .yml or .json"),
    ("c.yaml", "- just\n- a list\n", "must hold a table of sections"),
    ("c.toml", "[train]\nepohcs = 3\n", "config train.epohcs: unknown option"),
    ("c.yaml", "explain:\n  samples: 0\n", "config explain.samples: input should be greater than or equal to 1"),
])
def test_bad_config_file_exits_2_with_one_line_and_writes_nothing(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    result = run_cli("pipeline", "iris", "--model", "mlp", "--config", path, "--out", tmp_path / "run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "config train.epochs: "),
    (["--ratio", "2"], "config compress.ratio: "),
    (["--arch", "[8]"], "--arch must be a JSON object"),
    (["--arch", '{"hidden": [0]}'], "config train.arch hidden.0: "),   # not the family's "mlp config hidden.0"
])
def test_bad_option_names_its_config_key_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    assert main(["pipeline", "iris", "--model", "mlp", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_missing_config_file_and_bad_data_exit_2(tmp_path):
    result = run_cli("pipeline", "iris", "--model", "mlp", "--config", tmp_path / "nope.toml")
    assert result.returncode == 2 and "config file not found" in result.stderr
    result = run_cli("pipeline", tmp_path / "missing.npz", "--model", "mlp", "--out", tmp_path / "run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    result = run_cli("pipeline", "iris", "--model", "transformer")
    assert result.returncode == 2 and "unknown model family 'transformer'" in result.stderr


# ---------------------------------------------------------------- running (iris: a few seconds)


def _quiet(line):
    pass


def _original_kept(trained, bundle, cfg, run, say, tracker=None):
    """A compress stage that keeps the original: explain then has no variant to compare."""
    return SimpleNamespace(chosen=None, baseline=None, paths={}), "skipped by the test"


@pytest.fixture
def no_compress(monkeypatch):
    monkeypatch.setattr(pipeline_module, "_compress", _original_kept)


@pytest.fixture
def train_only(monkeypatch, no_compress):
    monkeypatch.setattr(pipeline_module, "_explain", lambda *args: (None, "skipped by the test"))


def test_existing_run_dir_needs_overwrite_and_is_replaced_whole(tmp_path, train_only):
    out = tmp_path / "run"
    run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, progress=_quiet)
    with pytest.raises(ToolkitError, match="--overwrite"):
        run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, progress=_quiet)
    (out / "notes.txt").write_text("the user's, put there after the run")
    with pytest.raises(ToolkitError, match=r"holds files the toolkit did not write \(notes.txt\)"):
        run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, overwrite=True, progress=_quiet)
    (out / "notes.txt").unlink()
    (out / "train" / "checkpoint-old.pt").write_bytes(b"")  # not the toolkit's either, deeper down
    with pytest.raises(ToolkitError, match="train/checkpoint-old.pt"):
        run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, overwrite=True, progress=_quiet)
    (out / "train" / "checkpoint-old.pt").unlink()
    result = run_pipeline("iris", "mlp", overrides={"train.epochs": 3}, out=out, overwrite=True, progress=_quiet)
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3
    assert result.report == out / "report.html" and result.run_dir == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_interrupted_pipeline_leaves_the_previous_run_untouched(tmp_path, train_only, monkeypatch):
    out = tmp_path / "run"
    run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, progress=_quiet)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline("iris", "mlp", out=out, overwrite=True, progress=_quiet)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # The interrupted run's record stays beside it, in run.partial, saying where it stopped.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.partial"]
    status = json.loads((tmp_path / "run.partial" / "pipeline.json").read_text())
    stage = status["stages"][0]
    assert status["status"] == "interrupted" and stage.pop("seconds") >= 0  # how long it ran before the signal
    assert stage == {"name": "train", "status": "interrupted", "reason": "Ctrl-C"}


def test_ctrl_c_during_the_report_records_it_and_says_where_the_run_is(tmp_path, train_only, monkeypatch):
    """The report renders the committed run: Ctrl-C there cannot keep the previous run, so it says where the new
    one is and how to render it, and pipeline.json no longer claims a report that was never written."""
    import reports.render

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reports.render, "render_report", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match=f"during the report.*toolkit report {out}"):
        run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, progress=_quiet)
    status = json.loads((out / "pipeline.json").read_text())
    stage = status["stages"][-1]
    assert stage.pop("seconds") >= 0 and stage == {"name": "report", "status": "interrupted", "reason": "Ctrl-C"}
    assert status["status"] == "interrupted"  # not "done": the run has no report
    assert not (out / "report.html").exists()


@pytest.mark.parametrize("error, code", [(ToolkitError("no method handles this model"), 2),
                                         (RuntimeError("segfault-ish"), 1)], ids=["bad-input", "unexpected"])
def test_stage_failure_still_writes_the_report(tmp_path, monkeypatch, capsys, error, code):
    def broken(*args):
        raise error

    monkeypatch.setattr(pipeline_module, "_compress", broken)
    out = tmp_path / "run"
    with pytest.raises(StageFailed) as info:
        run_pipeline("iris", "mlp", overrides={"train.epochs": 2}, out=out, progress=_quiet)
    assert info.value.code == code and info.value.stage == "compress" and info.value.__cause__ is error
    assert info.value.report == out / "report.html"
    html = info.value.report.read_text()
    assert "Stages that failed" in html and str(error) in html and 'id="training"' in html
    status = json.loads((out / "pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in status["stages"]] == [
        ("train", "done"), ("compress", "failed"), ("explain", "not run"), ("report", "done")]

    capsys.readouterr()
    assert main(["pipeline", "iris", "--model", "mlp", "--epochs", "2", "--out", str(out), "--overwrite"]) == code
    captured = capsys.readouterr()
    assert "error: compress stage failed: " in captured.err and str(error) in captured.err
    assert captured.out.strip() == str(out / "report.html")
    # --json: pipeline.json's keys, and the error and exit code every command's failure prints
    assert main(["pipeline", "iris", "--model", "mlp", "--epochs", "2", "--out", str(out), "--overwrite",
                 "--json"]) == code
    printed = json.loads(capsys.readouterr().out)
    assert printed["exit_code"] == code and printed["error"].startswith("compress stage failed: ")
    assert printed["status"] == "failed" and printed["report"] == str(out / "report.html")


@pytest.mark.parametrize("config", ['[train]\ndevice = "cuda"\n', '[compress]\ndevice = "cuda"\n'])
def test_a_gpu_that_is_not_here_is_refused_before_any_work(tmp_path, monkeypatch, capsys, config):
    """As `toolkit train --device cuda` and `toolkit compress --device cuda` refuse it: one line, exit 2, before
    the training (a compress device must not wait for it) and before the run directory exists."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pipeline_module, "_train", lambda *args: pytest.fail("trained before the device check"))
    (tmp_path / "c.toml").write_text(config)
    out = tmp_path / "run"
    assert main(["pipeline", "iris", "--model", "mlp", "--config", str(tmp_path / "c.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: no CUDA GPU is available here" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_report_path_from_config_stays_inside_run_dir(tmp_path, train_only):
    config = tmp_path / "c.toml"
    config.write_text('[report]\nout = "html/summary.html"\n[train]\nepochs = 2\n')
    result = run_pipeline("iris", "mlp", config, out=tmp_path / "run", progress=_quiet)
    assert result.report == tmp_path / "run" / "html" / "summary.html" and result.report.is_file()


# ---------------------------------------------------------------- digits end to end


def test_pipeline_digits_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  epochs: 50\n  patience: 3\n  arch: {hidden: [32]}\n"
                      "compress:\n  options:\n    auto: {distill_epochs: 0, finetune_epochs: 1, unstructured_ratio: 0,"
                      " latency_budget_s: 0.02}\n"
                      "explain:\n  samples: 8\n  methods: [saliency]\n")
    out = tmp_path / "run"
    result = run_cli("--progress", "lines", "pipeline", "digits", "--model", "mlp", "--config", config, "--epochs", "2",
                     "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["report"] == str(out / "report.html") and payload["run_dir"] == str(out)
    for stage in ("train", "compress", "explain", "report"):
        assert f"] {stage}" in result.stderr, f"progress of {stage} on stderr"
    assert [(s["name"], s["status"]) for s in payload["stages"]] == [
        ("train", "done"), ("compress", "done"), ("explain", "done"), ("report", "done")]

    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["patience"] == 3 and saved["explain"]["samples"] == 8
    assert saved["command"].startswith("toolkit pipeline digits --model mlp --config ")
    assert resolve_config(out / "config.yaml") == resolve_config(out / "config.json")
    sections = [f.name for f in dataclasses.fields(PipelineConfig)]
    assert resolve_config(out / "config.yaml").to_dict() == {k: v for k, v in saved.items() if k in sections}

    # explain compared the variant that compress chose, and every recorded path names the committed run
    chosen = json.loads((out / "compress" / "result.json").read_text())["chosen"]["name"]
    explained = json.loads((out / "explain" / "result.json").read_text())
    assert chosen == "fp32-torch" or explained["runtimes"].get(chosen), (chosen, explained["runtimes"])
    assert ".partial" not in json.dumps(explained) + (out / "compress" / "result.json").read_text()
    assert not list(tmp_path.glob("*.partial"))

    html = (out / "report.html").read_text()
    assert 'id="training"' in html and 'id="compression"' in html and 'id="explanation"' in html
    assert "http://" not in html and "https://" not in html
    assert (out / "report.html").stat().st_size < 5_000_000
    assert (out / "MODEL_CARD.md").is_file() and (out / "train" / "MODEL_CARD.md").is_file()


def test_hostile_csv_names_show_as_text_in_the_pipeline_report(tmp_path, no_compress):
    import numpy as np

    hostile = "<script>alert(1)</script>"
    rng = np.random.default_rng(0)
    rows = [f'{a:.3f},{b:.3f},{"<b>yes</b>" if a + b > 0 else "$no$"}' for a, b in rng.normal(size=(120, 2))]
    csv = tmp_path / "hostile.csv"
    csv.write_text(f"{hostile},plain,label\n" + "\n".join(rows) + "\n")
    result = run_pipeline(csv, "mlp", overrides={"train.epochs": 2, "explain.samples": 4,
                                                 "explain.methods": ["saliency"]},
                          out=tmp_path / "run", progress=_quiet)
    html = result.report.read_text()
    assert hostile not in html and "<b>yes</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;yes&lt;/b&gt;" in html
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert hostile not in card and "<b>" not in card


def test_readme_config_example_resolves(tmp_path):
    """The TOML example in the README is a valid pipeline config, and its values arrive where it says."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no TOML config example"
    path = tmp_path / "pipeline.toml"
    path.write_text(blocks[0], encoding="utf-8")
    cfg = resolve_config(path, {"train.epochs": 3})
    assert cfg.train.epochs == 3 and cfg.train.model == {"channels": [16, 32]}
    assert cfg.compress.max_drop == 1.0 and cfg.explain.samples == 32
    assert cfg.explain.methods == ["integrated_gradients", "shapley"]


def test_a_train_stage_that_fails_after_its_first_checkpoint_leaves_no_staging_in_the_pipeline_run(
        tmp_path, monkeypatch):
    import errno

    from trainers import loop
    from trainers.rundir import MARKER

    real, calls = loop.train_epoch, []

    def full_disk_in_epoch_2(*args, **kwargs):  # epoch 1 wrote its checkpoint into train.partial
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", full_disk_in_epoch_2)
    out = tmp_path / "pl"
    with pytest.raises(StageFailed):
        run_pipeline("iris", "mlp", overrides={"train.epochs": 3}, out=out, progress=_quiet)
    assert len(calls) == 2 and not (out / "train.partial").exists()
    listed = json.loads((out / MARKER).read_text())["files"]
    assert not [name for name in listed if name.startswith("train.partial/")]
