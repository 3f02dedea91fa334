"""Quantization: int8 through ONNX Runtime (dynamic and static QDQ), fp16 and bf16 in PyTorch.

The int8 variants run in ONNX Runtime (`torch.ao.quantization` is deprecated and
its int8 LSTMs do not export). Each carries a *fake-quant PyTorch twin*: the
fp32 module with every quantized weight rounded to the same symmetric per-channel
int8 grid, stored as `model.safetensors` next to `model.onnx`, so gradient
explainers still run on (nearly) the model that ships. The twin reproduces the
weight rounding only; static QDQ also quantizes activations, which the twin does
not (its top-1 agreement with the int8 graph is measured and recorded).

Known traps handled here: ORT's dynamic int8 Conv (ConvInteger) is slower than
fp32, so dynamic quantization touches only MatMul/Gemm/LSTM; the fp32 graph is
first run through ORT's pre-processing (shape inference and graph optimisation).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainers.artifact import LoadedModel, ModelSpec
from trainers.data import DataBundle
from trainers.errors import ToolkitError

from .base import Variant, register_method
from .export import export_with_info, onnx_parity, onnx_variant_model, parent_name, run_onnx

DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM")
STATIC_OPS = None  # every op ORT can quantize: Relu/MaxPool stay int8 between Conv/Gemm (faster than only Conv/Gemm)


def _check_unknown(method: str, unknown: dict) -> None:
    if unknown:
        raise ToolkitError(f"unknown option(s) for {method}: {', '.join(sorted(unknown))}")


def _need_module(model: LoadedModel, method: str) -> None:
    if model.module is None:
        raise ToolkitError(f"{method} needs a PyTorch model; this artifact has no PyTorch weights")
    if model.spec.runtime != "torch":
        raise ToolkitError(f"{method} needs an fp32 PyTorch model; this artifact runs in {model.spec.runtime}")


# ---------------------------------------------------------------- fake-quant twin

def fake_quantize_weight(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Round a weight to the symmetric int8 grid, one scale per output channel (dim 0) or one per tensor."""
    w = weight.detach().float()
    if per_channel:
        peak = w.abs().reshape(w.shape[0], -1).max(dim=1).values.clamp_min(1e-12)
        scale = (peak / 127.0).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        scale = w.abs().max().clamp_min(1e-12) / 127.0
    return (torch.clamp(torch.round(w / scale), -127, 127) * scale).to(weight.dtype)


def fake_quant_twin(module: nn.Module, kinds: tuple[type, ...], per_channel: bool = True) -> nn.Module:
    """A copy of `module` whose weights in layers of `kinds` sit on the per-channel int8 grid."""
    twin = copy.deepcopy(module).cpu().float().eval()
    with torch.no_grad():
        for layer in twin.modules():
            if not isinstance(layer, kinds):
                continue
            for name, param in layer.named_parameters(recurse=False):
                if name.startswith("weight"):
                    param.copy_(fake_quantize_weight(param, per_channel))
    return twin


# ---------------------------------------------------------------- ONNX Runtime int8

def _preprocess(src: Path, dst: Path) -> tuple[Path, str | None]:
    """ORT's recommended pre-processing (shape inference + graph optimisation); skipped if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst, None
    except Exception as exc:  # a pre-processing failure is not fatal: quantize the plain graph
        return src, f"ORT pre-processing skipped ({type(exc).__name__})"


class _Calibration:
    """Feeds training samples to ORT's static calibration, a batch at a time."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 64):
        self.batches = [{input_name: np.ascontiguousarray(x[i:i + batch], np.float32)} for i in range(0, len(x), batch)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self):
        self.position = 0


def _quantize_onnx(onnx_bytes: bytes, mode: str, data: DataBundle, calibration_samples: int, seed: int,
                   per_channel: bool) -> tuple[bytes, list[str]]:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    notes = []
    with tempfile.TemporaryDirectory(prefix="toolkit-quant-") as tmp:
        tmp = Path(tmp)
        (tmp / "fp32.onnx").write_bytes(onnx_bytes)
        src, note = _preprocess(tmp / "fp32.onnx", tmp / "prep.onnx")
        if note:
            notes.append(note)
        out = tmp / "int8.onnx"
        if mode == "dynamic":
            quantize_dynamic(str(src), str(out), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=per_channel,
                             weight_type=QuantType.QInt8)
        else:
            rng = np.random.default_rng(seed)
            pick = rng.permutation(len(data.x_train))[:calibration_samples]
            reader = _Calibration(data.x_train[np.sort(pick)], "input")
            quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=STATIC_OPS, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            notes.append(f"static QDQ calibrated on {len(pick)} training samples")
        return out.read_bytes(), notes


def _int8_variant(model: LoadedModel, data: DataBundle, mode: str, kinds, calibration_samples: int, seed: int,
                  exporter: str) -> Variant:
    # ORT's per-channel LSTM weights lose accuracy (about 4% of digits predictions flip in our runs):
    # models with an LSTM get one scale per tensor.
    per_channel = not any(isinstance(m, nn.LSTM) for m in model.module.modules())
    fp32_bytes, info = export_with_info(model, data, exporter=exporter)
    int8_bytes, notes = _quantize_onnx(fp32_bytes, mode, data, calibration_samples, seed, per_channel)
    twin = fake_quant_twin(model.module, kinds, per_channel)
    recipe = {"method": f"int8-{mode}", "runtime": "onnxruntime", "exporter": info.exporter,
              "weight_type": "int8", "per_channel": per_channel,
              "quantized_ops": list(DYNAMIC_OPS) if mode == "dynamic" else "all supported"}
    if mode == "static":
        recipe.update(format="QDQ", activation_type="uint8", calibration_samples=calibration_samples, seed=seed)
    variant_model = onnx_variant_model(model, twin, recipe, dtype="int8")
    int8_logits = run_onnx(int8_bytes, data.x_test)
    with torch.inference_mode():
        twin_logits = twin(torch.from_numpy(np.ascontiguousarray(data.x_test, np.float32))).numpy()
    twin_agreement = float((twin_logits.argmax(1) == int8_logits.argmax(1)).mean())
    notes.append(f"fake-quant PyTorch twin agrees with the int8 graph on {twin_agreement:.1%} of test samples")
    if mode == "dynamic" and model.spec.family == "cnn":
        notes.append("convolutions stay fp32 (ORT's dynamic ConvInteger is slower than fp32)")
    parity = onnx_parity(int8_bytes, model, data.x_test)  # int8 graph vs the fp32 PyTorch source
    return Variant(name=f"int8-{mode}-onnx", model=variant_model, recipe=recipe, onnx_bytes=int8_bytes,
                   measurements={"parity": parity, "twin_agreement": twin_agreement}, notes=notes)


@register_method("int8-dynamic", ("mlp", "cnn", "lstm"))
def int8_dynamic(model: LoadedModel, data: DataBundle, exporter: str = "auto", **unknown) -> list[Variant]:
    """int8 weights, activations quantized on the fly, ONNX Runtime (MatMul/Gemm/LSTM; Conv stays fp32)."""
    _check_unknown("int8-dynamic", unknown)
    _need_module(model, "int8-dynamic")
    return [_int8_variant(model, data, "dynamic", (nn.Linear, nn.LSTM), 0, 0, exporter)]


@register_method("int8-static", ("mlp", "cnn"))
def int8_static(model: LoadedModel, data: DataBundle, calibration_samples: int = 512, seed: int = 0,
                exporter: str = "auto", **unknown) -> list[Variant]:
    """int8 weights and activations (static QDQ, per-channel, calibrated on training samples), ONNX Runtime."""
    _check_unknown("int8-static", unknown)
    _need_module(model, "int8-static")
    if model.spec.family not in ("mlp", "cnn"):
        raise ToolkitError(f"int8-static cannot handle a {model.spec.family} model (it supports mlp, cnn)")
    if not isinstance(calibration_samples, (int, np.integer)) or isinstance(calibration_samples, bool) or calibration_samples < 1:
        raise ToolkitError(f"calibration_samples must be a whole number >= 1, got {calibration_samples!r}")
    return [_int8_variant(model, data, "static", (nn.Linear, nn.Conv1d, nn.Conv2d), int(calibration_samples), seed, exporter)]


# ---------------------------------------------------------------- fp16 / bf16 PyTorch

def _half_variant(model: LoadedModel, dtype: str) -> Variant:
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    module = copy.deepcopy(model.module).cpu().to(torch_dtype).eval()
    recipe = {"method": "fp16" if dtype == "float16" else "bf16", "runtime": "torch", "dtype": dtype}
    raw = {**model.spec.to_dict(), "dtype": dtype, "runtime": "torch", "onnx": None,
           "weights": {"file": "model.safetensors", "codec": "dense"},
           "lineage": {"parent": parent_name(model), "recipe": recipe}}
    notes = ["PyTorch on CPU has few half-precision kernels: expect it to be slower than fp32 there"]
    return Variant(name=recipe["method"] + "-torch", model=LoadedModel(module=module, spec=ModelSpec.from_dict(raw)),
                   recipe=recipe, notes=notes)


@register_method("fp16", ("mlp", "cnn", "lstm"))
def fp16(model: LoadedModel, data: DataBundle, **unknown) -> list[Variant]:
    """Half-precision (float16) PyTorch weights: half the file size."""
    _check_unknown("fp16", unknown)
    _need_module(model, "fp16")
    return [_half_variant(model, "float16")]


@register_method("bf16", ("mlp", "cnn", "lstm"))
def bf16(model: LoadedModel, data: DataBundle, **unknown) -> list[Variant]:
    """bfloat16 PyTorch weights: half the file size, fp32's range."""
    _check_unknown("bf16", unknown)
    _need_module(model, "bf16")
    return [_half_variant(model, "bfloat16")]
