"""CUDA checks (training on the GPU, several GPUs through DDP, attribution on the GPU): run with `pytest -m gpu` on a machine with a GPU; they skip without one.

Skipping is done by tests/conftest.py for every `gpu`-marked test when torch.cuda is unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from trainers import TrainConfig, load_data, load_model, predict, train
from trainers import fit, loop

pytestmark = pytest.mark.gpu


def test_cuda_training_in_mixed_precision_when_asked_keeps_the_data_on_the_device(monkeypatch, tmp_path):
    moved = {}
    original = fit.split_tensors

    def spy(data, device):
        moved.update(original(data, device))
        return moved

    monkeypatch.setattr(fit, "split_tensors", spy)
    dtypes = _spy_autocast(monkeypatch)
    amp_dtype = loop.amp_dtype(torch.device("cuda"), True)
    assert amp_dtype in (torch.bfloat16, torch.float16)
    result = train("digits", "cnn", TrainConfig(epochs=5, device="cuda", amp=True), out=tmp_path / "run", progress=False)
    assert dtypes == {amp_dtype}   # every training batch ran under autocast
    assert result.device.startswith("cuda")
    assert moved and all(t.is_cuda for t in moved.values())  # every split moved to the GPU once
    assert result.metrics["test_accuracy"] >= 0.85, result.metrics
    # The artifact is float32 whatever the autocast dtype was, and loads on the CPU.
    model = load_model(tmp_path / "run")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.module.parameters())
    data = load_data("digits")
    cpu_accuracy = float(np.mean(predict(model, data.x_test).argmax(1) == data.y_test))
    assert abs(cpu_accuracy - result.metrics["test_accuracy"]) <= 0.02


def _spy_autocast(monkeypatch) -> set:
    """The autocast dtypes the training loop's batches ran under (None: float32)."""
    seen = set()
    original = loop.autocast

    def spy(device, dtype):
        seen.add(dtype)
        return original(device, dtype)

    monkeypatch.setattr(loop, "autocast", spy)
    return seen


def test_cuda_training_is_float32_by_default(monkeypatch):
    """Mixed precision is opt-in: on an H200 the toolkit's models trained 1.28-1.33x faster without it."""
    dtypes = _spy_autocast(monkeypatch)
    result = train("digits", "mlp", TrainConfig(epochs=2, device="cuda"), progress=False)
    assert result.device.startswith("cuda") and dtypes == {None}


def _toolkit(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([sys.executable, "-m", "cli.main", "--progress", "lines", "train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_one_gpu_torchrun_launch(tmp_path):
    done = _toolkit(["digits", "--model", "mlp", "--epochs", "3", "--device", "cuda", "--nproc-per-node", "1",
                     "--out", "run", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchrun --standalone --nproc-per-node=1" in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device"].startswith("cuda") and result["epochs_run"] == 3
    assert load_model(tmp_path / "run").spec.family == "mlp"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs for an nccl run")
def test_two_gpus_nccl_replicas_identical(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cli.main", "train", "digits", "--model", "cnn", "--epochs", "2",
                           "--device", "cuda", "--nproc-per-node", "2", "--out", "run", "--json"], cwd=tmp_path,
                          env={**os.environ, "TOOLKIT_REPLICA_HASH_DIR": str(tmp_path / "h")}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = {p.read_text() for p in (tmp_path / "h").iterdir()}
    assert len(list((tmp_path / "h").iterdir())) == 2 and len(hashes) == 1
    assert json.loads(done.stdout.strip().splitlines()[-1])["processes"] == 2


def test_cuda_lstm_explained_by_captum_integrated_gradients():
    """cuDNN's RNN backward refuses eval mode; attributions run with cuDNN off for the backward pass."""
    from captum.attr import IntegratedGradients

    result = train("digits", "lstm", TrainConfig(epochs=3, device="cuda"), progress=False)
    module = result.model.module.to("cuda").eval()
    data = load_data("digits")
    x = torch.from_numpy(data.x_test[:16]).to("cuda")
    target = torch.from_numpy(data.y_test[:16]).to("cuda")
    with torch.backends.cudnn.flags(enabled=False):
        attributions, delta = IntegratedGradients(module).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=32, return_convergence_delta=True)
    assert attributions.shape == x.shape and attributions.device.type == "cuda"
    assert torch.isfinite(attributions).all() and attributions.abs().sum() > 0
    # Completeness: attributions add up to f(x) - f(baseline), up to the integral's error.
    assert delta.abs().max().item() < 0.1, delta


def test_compress_on_the_gpu_times_every_variant_there_and_chains_half_precision(tmp_path):
    """`compress --device cuda`: PyTorch variants computed on the GPU (rows say so), ONNX Runtime graphs wherever
    the installed build runs them (rows name the provider), the fp16 ONNX graph tried, pruned models tried in
    half precision, and the chosen variant keeps the fidelity rule."""
    import onnxruntime as ort

    from compress import compress_model
    from compress.checks import tiny_model
    from trainers.schema import read_result

    data = load_data("digits")
    result = compress_model(tiny_model("cnn"), data, methods=["auto"], device="cuda", out=tmp_path / "c",
                            options={"auto": {"prune_ratios": [0.3], "finetune_epochs": 1, "distill_epochs": 0,
                                              "unstructured_ratio": 0.0, "drift_guard_on": False}})
    written = read_result(tmp_path / "c" / "result.json", "compress")
    assert written.device == "cuda"
    rows = {row.name: row for row in written.variants}
    assert all(row.device == "cuda" for row in rows.values() if row.runtime == "torch")
    cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    for row in rows.values():
        if row.runtime == "onnxruntime":
            assert row.provider in ort.get_available_providers()
            assert (row.device == "cuda") == (row.provider == "CUDAExecutionProvider") and (cuda_ep or row.device == "cpu")
    made = {v.name for v in result.variants} | {s["name"] for s in result.to_dict()["skipped"] if s.get("name")}
    assert "onnx-fp16" in made and any(name.endswith(("+fp16-torch", "+bf16-torch", "+onnx-fp16")) for name in made), \
        sorted(made)
    chosen = rows[written.chosen.name]
    assert chosen.within_budget and not chosen.flips


def test_a_runner_on_the_gpu_gives_the_cpu_logits():
    from compress import get_method
    from compress.checks import tiny_model
    from compress.measure import Runner
    from compress.auto import baseline_variant

    model = tiny_model("mlp")
    x = np.ascontiguousarray(load_data("digits").x_test[:64], dtype=np.float32)
    fp32, (half,) = baseline_variant(model), get_method("fp16").func(model, load_data("digits"))
    on_gpu = Runner(fp32, 1, device="cuda")
    assert on_gpu.device == "cuda" and next(fp32.model.module.parameters()).device.type == "cpu"  # a copy moved
    np.testing.assert_allclose(on_gpu(x), Runner(fp32, 1)(x), atol=1e-4)
    assert Runner(half, 1, device="cuda").device == "cuda"
    assert (Runner(half, 1, device="cuda")(x).argmax(1) == on_gpu(x).argmax(1)).mean() >= 0.95


def test_predict_on_the_gpu_gives_the_cpu_predictions(tmp_path):
    from cli.main import main
    from compress.checks import tiny_model

    np.savez(tmp_path / "rows.npz", x=load_data("digits").x_test[:50])
    model = str(tiny_model("cnn").path)
    for device in ("cpu", "cuda"):
        assert main(["predict", model, str(tmp_path / "rows.npz"), "--device", device,
                     "--out", str(tmp_path / f"{device}.csv")]) == 0
    lines = [(tmp_path / f"{d}.csv").read_text().splitlines() for d in ("cpu", "cuda")]
    column = lines[0][0].split(",").index("predicted")
    same = [a.split(",")[column] == b.split(",")[column] for a, b in zip(lines[0][1:], lines[1][1:])]
    assert len(same) == 50 and sum(same) >= 49
    assert load_model(model, device="cuda").module is not None and \
        next(load_model(model, device="cuda").module.parameters()).is_cuda


def _method_names() -> list[str]:
    from compress import list_methods

    return [name for name in list_methods() if name != "auto"]


@pytest.mark.parametrize("name", _method_names())
def test_every_method_s_variants_serve_on_the_gpu_as_on_the_cpu(name):
    """The registry's table on the device: each method's variants (of a CNN where it takes one) give the CPU's
    predictions on the GPU, and a PyTorch variant computes there."""
    from test_compress_contract import FAST

    from compress import get_method
    from compress.checks import digits, tiny_model
    from compress.measure import Runner

    method = get_method(name)
    family = "cnn" if method.supports("cnn") else next(f for f in ("mlp", "lstm") if method.supports(f))
    data = digits()
    x = np.ascontiguousarray(data.x_test, dtype=np.float32)
    for variant in method.func(tiny_model(family), data, **FAST.get(name, {})):
        on_gpu = Runner(variant, 1, device="cuda")
        assert on_gpu.runtime != "torch" or on_gpu.device == "cuda", variant.name
        agree = (on_gpu.predict(x).argmax(1) == Runner(variant, 1).predict(x).argmax(1)).mean()
        assert agree >= 0.97, (variant.name, agree)
