"""SIGKILL in the middle of `toolkit compress`: the previous run directory stays intact and loadable,
and the same command afterwards replaces the stale staging directory and finishes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from trainers import TrainConfig, load_model, predict, train

ROOT = Path(__file__).resolve().parents[1]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, needle: str, timeout: float = 240) -> list[str]:
    """SIGKILL `proc` as soon as a stderr line contains `needle`; returns the lines seen."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return seen
    proc.kill()
    raise AssertionError(f"never saw {needle!r} before the process ended: {''.join(seen)[-2000:]}")


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_sigkill_during_compress_keeps_the_previous_run_and_a_rerun_finishes(tmp_path):
    model = tmp_path / "model"
    train("digits", "mlp", TrainConfig(epochs=3, model={"hidden": [64]}), out=model, progress=False)
    out = tmp_path / "compressed"
    first = _start("compress", model, "--data", "digits", "--method", "int8-dynamic", "--out", out)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = _files(out)

    # A longer run into the same directory, killed in the middle (after its first candidates are made).
    proc = _start("--progress", "lines", "compress", model, "--data", "digits", "--method", "auto", "--out", out,
                  "--overwrite")
    _kill_when(proc, "auto: prune-structured")
    assert proc.returncode == -signal.SIGKILL
    assert _files(out) == before, "the previous run directory changed"
    result = json.loads((out / "result.json").read_text())
    variant = load_model(out / result["variants"][1]["path"])
    assert predict(variant, np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)
    assert [v["name"] for v in result["variants"]] == ["fp32-torch", "int8-dynamic-onnx"]  # the first run's table

    # The same command again: the stale staging directory is replaced, the run completes and is loadable.
    again = _start("compress", model, "--data", "digits", "--method", "int8-dynamic", "--method", "fp16",
                   "--out", out, "--overwrite", "--json")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert not out.with_name(out.name + ".partial").exists()
    names = [v["name"] for v in json.loads(stdout)["variants"]]
    assert "fp16-torch" in names and all(load_model(out / v["path"]) for v in json.loads(stdout)["variants"][1:])
