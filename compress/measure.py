"""Measure every variant the same way, in one process, so ratios are comparable.

For each variant: test accuracy, size on disk of the file its runtime loads,
parameter count, and latency p50/p95 at batch 1 and batch 256 in its own
runtime (PyTorch or ONNX Runtime), with one thread and with all threads, after
warm-up. Ratios are taken against the fp32 PyTorch original (the baseline).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from trainers.codecs import CODECS
from trainers.models import count_parameters

from .base import Variant
from .export import ort_session

SETTINGS = ("b1_t1", "b1_tall", "b256_t1", "b256_tall")
INT8_AGREEMENT = 0.99  # an int8 variant agreeing with fp32 on fewer test predictions is flagged, never chosen
DECISIVE = "b256_t1"  # the setting auto ranks by and `slower_than_fp32` refers to


@dataclass
class LatencyConfig:
    """How long to time each (batch, threads) setting: warm-up calls, then repeats until `budget_s` or `max_reps`."""

    warmup: int = 5
    min_reps: int = 10
    max_reps: int = 300
    budget_s: float = 0.4
    threads_all: int = 0  # 0: every core (os.cpu_count())

    @property
    def all_threads(self) -> int:
        return self.threads_all or os.cpu_count() or 1


def size_on_disk(variant: Variant) -> int:
    """Bytes of the file the variant's runtime loads (model.onnx, else model.safetensors as it will be written)."""
    if variant.onnx_bytes is not None:
        return len(variant.onnx_bytes)
    model = variant.model
    if model.spec.runtime == "onnxruntime" and model.onnx_model_bytes() is not None:
        return len(model.onnx_model_bytes())
    from safetensors.torch import save as safetensors_save

    codec = CODECS[model.spec.weights.get("codec", "dense")]
    tensors = codec.encode({k: v.detach().cpu() for k, v in model.module.state_dict().items()})
    return len(safetensors_save(tensors, metadata={"format": "pt"}))


def _onnx_bytes(variant: Variant) -> bytes | None:
    if variant.onnx_bytes is not None:
        return variant.onnx_bytes
    model = variant.model
    if model.spec.runtime == "onnxruntime":
        return model.onnx_model_bytes()
    return None


class Runner:
    """Calls a variant in its runtime with a fixed thread count."""

    def __init__(self, variant: Variant, threads: int):
        self.threads = threads
        onnx_bytes = _onnx_bytes(variant)
        self.runtime = "onnxruntime" if onnx_bytes is not None else "torch"
        if self.runtime == "onnxruntime":
            self.session = ort_session(onnx_bytes, threads)
            self.input_name = self.session.get_inputs()[0].name
        else:
            self.module = variant.model.module.eval()
            param = next(iter(self.module.parameters()), None)  # packed int8 modules may have none
            self.dtype = param.dtype if param is not None else torch.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self.session.run(None, {self.input_name: x})[0]
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self.module(torch.from_numpy(x).to(self.dtype)).float().numpy()
        finally:
            torch.set_num_threads(previous)

    def timed(self, x: np.ndarray, config: LatencyConfig) -> dict:
        """p50/p95 milliseconds per call, thread count held for the whole loop."""
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            run = self._raw_call()
            for _ in range(config.warmup):
                run(x)
            times, start = [], time.perf_counter()
            while len(times) < config.max_reps and (len(times) < config.min_reps or time.perf_counter() - start < config.budget_s):
                t0 = time.perf_counter()
                run(x)
                times.append((time.perf_counter() - t0) * 1000)
        finally:
            torch.set_num_threads(previous)
        return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "reps": len(times)}

    def _raw_call(self):
        if self.runtime == "onnxruntime":
            return lambda x: self.session.run(None, {self.input_name: x})

        def call(x):
            with torch.inference_mode():
                return self.module(torch.from_numpy(x).to(self.dtype))

        return call


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = int(np.ceil(n / len(x)))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n], dtype=np.float32)


def measure_variant(variant: Variant, data, config: LatencyConfig | None = None) -> dict:
    """Accuracy, size, parameters and latency of one variant; stored in (and returned from) `variant.measurements`."""
    config = config or LatencyConfig()
    x_test = np.ascontiguousarray(data.x_test, dtype=np.float32)
    runners = {"t1": Runner(variant, 1), "tall": Runner(variant, config.all_threads)}
    logits = np.concatenate([runners["tall"](x_test[i:i + 1024]) for i in range(0, len(x_test), 1024)])
    latency = {}
    for batch in (1, 256):
        xb = _batch(x_test, batch)
        for threads, runner in runners.items():
            latency[f"b{batch}_{threads}"] = runner.timed(xb, config)
    module = variant.model.module
    m = variant.measurements
    m.update({
        "runtime": runners["t1"].runtime,
        "accuracy": float((logits.argmax(1) == data.y_test).mean()),
        "size_bytes": m.get("size_bytes") or size_on_disk(variant),  # preset for formats we do not write
        "parameters": count_parameters(module) if module is not None else None,
        "latency_ms": latency,
        "threads": {"single": 1, "all": config.all_threads},
    })
    return m


def compare_to_baseline(variant: Variant, baseline: Variant, max_drop: float) -> None:
    """Ratios against the fp32 PyTorch original and the flags auto decides on."""
    m, b = variant.measurements, baseline.measurements
    m["accuracy_drop"] = round((b["accuracy"] - m["accuracy"]) * 100, 4)
    m["size_ratio"] = b["size_bytes"] / m["size_bytes"]
    m["speedup"] = {s: b["latency_ms"][s]["p50"] / m["latency_ms"][s]["p50"] for s in SETTINGS}
    m["slower_than_fp32"] = variant is not baseline and m["latency_ms"][DECISIVE]["p50"] > b["latency_ms"][DECISIVE]["p50"]
    m["within_budget"] = m["accuracy_drop"] <= max_drop + 1e-9
    # int8 that changes too many predictions: under INT8_AGREEMENT on the test split, or its fp32 fallback
    # missed its target on the validation split (quantize notes that case itself)
    agreement = (m.get("parity") or {}).get("top1_agreement")
    over = "agreement_check" in m and agreement is not None and agreement < INT8_AGREEMENT
    m["flips"] = over or m.get("agreement_check", {}).get("reached") is False
    if over:
        variant.notes.append(f"int8 changes {1 - agreement:.1%} of the fp32 model's test predictions "
                             f"(more than {1 - INT8_AGREEMENT:.0%}): never chosen")
    if variant is not baseline:
        slower = [s for s in SETTINGS if m["speedup"][s] < 1.0]
        if slower:
            variant.notes.append(f"slower than fp32 PyTorch at {', '.join(slower)}")


def pareto_front(variants: list[Variant]) -> list[Variant]:
    """Variants no other variant beats on all of accuracy (up), size (down) and b256_t1 latency (down)."""
    def key(v):
        m = v.measurements
        return (-m["accuracy"], m["size_bytes"], m["latency_ms"][DECISIVE]["p50"])

    front = []
    for v in variants:
        kv = key(v)
        dominated = any(all(a <= b for a, b in zip(key(o), kv)) and key(o) != kv for o in variants if o is not v)
        if not dominated:
            front.append(v)
    return front


def measure_all(variants: list[Variant], baseline: Variant, data, max_drop: float,
                config: LatencyConfig | None = None, progress=None) -> None:
    """Measure the baseline and every variant, then fill ratios, flags and the Pareto mark."""
    from trainers.progress import reporter

    config = config or LatencyConfig()
    report = reporter(progress, "measure", len(variants) + 1)
    for step, v in enumerate([baseline, *variants], 1):
        report(step, v.name)
        measure_variant(v, data, config)
    for v in [baseline, *variants]:
        compare_to_baseline(v, baseline, max_drop)
    front = pareto_front([baseline, *variants])
    for v in [baseline, *variants]:
        v.measurements["pareto"] = any(v is f for f in front)
