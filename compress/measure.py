"""Measure every variant the same way, in one process, so ratios are comparable.

For each variant: test accuracy, top-1 agreement with the fp32 original (the fidelity rule: `judge`), size on
disk of the file its runtime loads, parameter count, and latency p50/p95 at batch 1 and batch 256 in its own
runtime (PyTorch or ONNX Runtime), with one thread and with all threads, after warm-up. Ratios are taken
against the fp32 PyTorch original (the baseline).

Timing on a shared machine: the variants of one setting are timed in interleaved rounds (each variant once
per round, the order rotated every round), so a burst of load from another process hits every variant, not
the one that happened to be timed then. A speed-up is the median of the per-round ratios against the
original, with its spread (interquartile range / median of those ratios); a spread over `NOISY_SPREAD`
marks the setting `noisy`. One-thread settings are timed as the calling thread's CPU time: with one
thread, PyTorch and ONNX Runtime compute on the calling thread, and its CPU time leaves out the time the
scheduler gave to other processes, which wall-clock time counts. All-thread settings are timed wall-clock
(the work spans threads).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from trainers.artifact import PREDICT_BATCH, by_size, dynamic_recipe
from trainers.errors import ToolkitError
from trainers.models import count_parameters
from trainers.ortsession import first_output, session_device

from .base import Variant
from .export import ort_session
from .options import CompressOptions

SETTINGS = ("b1_t1", "b1_tall", "b256_t1", "b256_tall")
DECISIVE = "b256_t1"  # the setting auto ranks by
NEVER_SLOWER = ("b256_t1", "b1_t1")  # `slower_than_fp32`: a speed-up under 1 at either (one thread, batch 256 or 1)
MIN_AGREEMENT = CompressOptions.min_agreement  # share of the original's test predictions a variant must keep
Z_ONE_SIDED = 1.645  # one-sided 95%: the margin of the agreement rule
WILSON_CONFIDENCE = 0.95
NOISY_SPREAD = 0.25  # IQR / median of the per-round speed-ups above which a speed-up is not reported
# Accuracy and agreement are computed at this batch size (dynamic int8 depends on the batch): the one predict
# serves at by default, so a variant's measured accuracy is the one `toolkit predict` and `trainers.predict` give.
EVAL_BATCH = PREDICT_BATCH
BATCH_CHECK = 256  # test samples predicted one at a time too, to count how many change with the batch size


# ---------------------------------------------------------------- fidelity


def agreement_margin(p: float, n: int, z: float = Z_ONE_SIDED) -> float:
    """Sampling margin of an agreement rate measured on `n` samples: z * sqrt(p (1 - p) / n).

    With `p` the required rate and z = 1.645, an agreement under p - margin is below p at one-sided 95%
    confidence (the normal approximation of the binomial test).
    """
    if n <= 0:
        raise ToolkitError("the agreement margin needs at least one sample")
    if not 0.0 <= p <= 1.0:
        raise ToolkitError(f"an agreement rate is in [0, 1], got {p}")
    return z * math.sqrt(p * (1.0 - p) / n)


def wilson_interval(agreeing: int, n: int, confidence: float = WILSON_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval (two-sided) of an agreement rate: `agreeing` of `n` samples (SciPy's binomtest)."""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= agreeing <= n:
        raise ToolkitError(f"a Wilson interval needs 0 <= agreeing <= n and n >= 1, got {agreeing} of {n}")
    ci = binomtest(int(agreeing), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def fidelity(predicted: np.ndarray, original: np.ndarray, min_agreement: float = MIN_AGREEMENT) -> dict:
    """Top-1 agreement of a variant's predicted classes with the fp32 original's on the same samples.

    Returns {"agreement", "n", "agreeing", "margin", "wilson_low", "wilson_high", "min_agreement", "passes"}:
    `passes` when agreement >= min_agreement - margin (`agreement_margin(min_agreement, n)`).
    """
    predicted, original = np.asarray(predicted), np.asarray(original)
    if predicted.shape != original.shape or predicted.ndim != 1 or not len(predicted):
        raise ToolkitError(f"fidelity compares two equal-length lists of classes, got shapes "
                           f"{predicted.shape} and {original.shape}")
    n, agreeing = len(predicted), int((predicted == original).sum())
    margin = agreement_margin(min_agreement, n)
    low, high = wilson_interval(agreeing, n)
    return {"agreement": agreeing / n, "n": n, "agreeing": agreeing, "margin": margin, "wilson_low": low,
            "wilson_high": high, "min_agreement": float(min_agreement),
            "passes": agreeing / n >= min_agreement - margin - 1e-12}


def judge(measurements: dict, max_drop: float) -> bool:
    """The one fidelity rule, for every kind of variant: accuracy within `max_drop` points of the original AND
    top-1 agreement with the original (`measurements["fidelity"]`) passing. Sets `within_budget` and `flips`
    (fails the agreement rule); returns whether both hold."""
    measurements["within_budget"] = measurements["accuracy_drop"] <= max_drop + 1e-9
    measurements["flips"] = not measurements["fidelity"]["passes"]
    return measurements["within_budget"] and not measurements["flips"]


def describe_fidelity(f: dict) -> str:
    """'agrees with the original on 97.9% (95% CI 96.6-98.7%, n=800)'."""
    return (f"agrees with the original on {f['agreement']:.1%} (95% CI {f['wilson_low']:.1%}-{f['wilson_high']:.1%}, "
            f"n={f['n']})")


# ---------------------------------------------------------------- running and timing


# The thread count accuracy and agreement are measured with: 0, the runtime's own default, as `trainers.predict`
# serves. ONNX Runtime's int8 LSTM (DynamicQuantizeLSTM) gives logits up to 0.07 apart at 1 and 2 intra-op threads,
# and a variant measured with every core changed class on rows where predict's default did not.
SERVED_THREADS = 0
OVERRUN = 2.0  # timing rounds this many times over their budget make proportionally fewer calls from then on


@dataclass
class LatencyConfig:
    """How long to time each (batch, threads) setting: per variant, warm-up calls, then `rounds` interleaved
    rounds sharing `budget_s` seconds, `min_reps` to `max_reps` calls in all (fewer rounds when max_reps is).

    `device`: where the variants serve, "cpu" or a CUDA device ("cuda", "cuda:1"). On a GPU each call takes
    host NumPy rows and returns host logits, as `trainers.predict` serves them, so the copies are timed with
    the computation, by the wall clock (a CPU clock does not see the GPU working); `threads` are then the
    host's, which still decide a variant that runs on the CPU there (an ONNX Runtime build without CUDA's
    provider, an operator without a CUDA kernel).
    """

    warmup: int = 5
    min_reps: int = 10
    max_reps: int = 300
    budget_s: float = 0.4
    threads_all: int = 0  # 0: every core (os.cpu_count())
    rounds: int = 7
    device: str = "cpu"

    @property
    def all_threads(self) -> int:
        return self.threads_all or os.cpu_count() or 1

    @property
    def round_count(self) -> int:
        return max(1, min(self.rounds, self.max_reps))

    @property
    def cpu_clock(self) -> bool:
        """Whether one-thread timings may read the thread's CPU time (unmoved by other processes): not on a GPU."""
        return self.device == "cpu"


def size_on_disk(variant: Variant) -> int:
    """Bytes of the file the variant's runtime loads (model.onnx, else model.safetensors as it will be written),
    with its small-batch member's."""
    return _file_size(variant) + (size_on_disk(variant.small) if variant.small is not None else 0)


def _file_size(variant: Variant) -> int:
    if variant.onnx_bytes is not None:  # as saved: with the names, shape and recipe a deployment reads
        from .export import with_metadata

        return len(with_metadata(variant.onnx_bytes, variant.model.spec))
    model = variant.model
    if model.spec.runtime == "onnxruntime" and model.onnx_model_bytes() is not None:
        return len(model.onnx_model_bytes())
    from trainers.artifact import weight_file_bytes

    return len(weight_file_bytes(model.module, model.spec.weights.get("codec", "dense")))


def _onnx_bytes(variant: Variant) -> bytes | None:
    if variant.onnx_bytes is not None:
        return variant.onnx_bytes
    model = variant.model
    if model.spec.runtime == "onnxruntime":
        return model.onnx_model_bytes()
    return None


class Runner:
    """Calls a variant in its runtime with a fixed thread count (SERVED_THREADS: the runtime's default).

    `spin`: ONNX Runtime's worker threads may busy-wait for work (fastest while timing an all-thread setting);
    off, they sleep, which leaves the cores to other processes (and to the search's own training).
    `device`: where it computes (`LatencyConfig.device`): a PyTorch variant's module is copied there, an ONNX
    Runtime session gets CUDA's provider where the build has it. `self.device` is where it does compute (the
    CPU for a session without CUDA's provider, or a module that cannot move, as PyTorch's packed int8 kernels),
    `self.provider` the session's first provider (None for PyTorch).
    A variant with a small-batch member (`Variant.small`) calls the member on fewer than `below_batch` rows, as
    `trainers.predict` does: one length test per call, inside every timing.

    `call` (x -> float32 logits) and `raw_call()` (no conversions, for timing; the caller holds the thread count)
    are closures built once: a routed variant's call was two method calls deep before reaching its member's
    graph, and that dispatch alone cost 5.6% of the pruned digits CNN's 10 us call at batch 1 (measured
    interleaved against the bare session call, one thread), which a comparison of graphs must not count.
    """

    def __init__(self, variant: Variant, threads: int, spin: bool = False, device: str = "cpu"):
        onnx_bytes = _onnx_bytes(variant)
        self.runtime = "onnxruntime" if onnx_bytes is not None else "torch"
        self.provider = None
        if self.runtime == "onnxruntime":
            session = ort_session(onnx_bytes, threads, spin=spin, device=device)
            self.device, self.provider = session_device(session), session.get_providers()[0]
            own = raw = first_output(session)
        else:
            shape = () if device == "cpu" else tuple(variant.model.spec.input_shape)  # the device's probe input
            module, self.device = _on_device(variant.model.module.eval(), device, shape)
            param = next(iter(module.parameters()), None)  # packed int8 modules may have none
            dtype = param.dtype if param is not None else torch.float32
            if self.device == "cpu":  # no device moves: a no-op `.cpu()` alone is ~1 us of a 10 us batch-1 call
                def own(x):
                    with torch_threads(threads), torch.inference_mode():
                        return module(torch.from_numpy(x).to(dtype)).float().numpy()

                def raw(x):
                    with torch.inference_mode():
                        return module(torch.from_numpy(x).to(dtype))
            else:
                target = self.device

                def own(x):
                    with torch_threads(threads), torch.inference_mode():
                        return module(torch.from_numpy(x).to(target, dtype)).float().cpu().numpy()

                def raw(x):  # the copy back to the host waits for the GPU's work
                    with torch.inference_mode():
                        return module(torch.from_numpy(x).to(target, dtype)).cpu()
        self.call, self._raw, self._small = own, raw, None
        if variant.small is not None:  # the member answers calls of fewer than `below_batch` rows
            small, below = Runner(variant.small, threads, spin, device), variant.model.spec.serve["below_batch"]
            self.call, self._raw = by_size(own, small.call, below), by_size(raw, small.raw_call(), below)
            self._small = (own, small.call, below)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.call(x)

    def predict(self, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
        """Logits for `x` in batches of `batch` (the last one shorter). A routed variant runs one member for all of
        them, picked by min(batch, len(x)), as `trainers.predict` serves it: the last, shorter call too."""
        call = self.call
        if self._small is not None:
            own, small, below = self._small
            call = small if min(batch, len(x)) < below else own
        return np.concatenate([call(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])

    def raw_call(self):
        """One call without conversions (for timing; the caller holds the thread count)."""
        return self._raw


def _on_device(module: torch.nn.Module, device: str, input_shape: tuple) -> tuple[torch.nn.Module, str]:
    """(`module` where it computes, that device's name): a copy on `device` (the variant keeps its CPU module
    for saving), or `module` itself on the CPU when `device` is the CPU or the copy cannot compute there: it
    cannot move (PyTorch's packed int8 modules have CPU kernels only), or a forward pass on two rows of
    `input_shape` fails there (a kernel the device lacks for the module's dtype). A variant the device cannot run
    is so timed where it runs, and its row says where, instead of failing the whole search."""
    if device == "cpu":
        return module, "cpu"
    try:
        moved = copy.deepcopy(module).to(device)
        tensors = [*moved.parameters(), *moved.buffers()]
        if tensors and any(t.device.type == "cpu" for t in tensors):
            return module, "cpu"
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
        with torch.inference_mode():
            moved(torch.zeros((2, *input_shape), dtype=dtype, device=device))
    except (RuntimeError, NotImplementedError):
        return module, "cpu"
    return moved, device


class torch_threads:
    """Context: PyTorch's intra-op thread count set to `n` (0: left as it is), restored after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.previous = torch.get_num_threads()
        if self.n and self.n != self.previous:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.previous:
            torch.set_num_threads(self.previous)


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = int(np.ceil(n / len(x)))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n], dtype=np.float32)


def interleaved_rounds(calls: list, x: np.ndarray, config: LatencyConfig, cpu_clock: bool) -> list[dict]:
    """Time each of `calls` on `x` in interleaved rounds; per call {"rounds": [median ms per round], "times": [ms]}.

    Each round times every call in turn, starting one further along the list every round, so a slow spell of
    the machine falls on all of them alike. The calls per round of each callable are sized from its warm-up
    so that all rounds together take about `config.budget_s`; when the rounds run far over that (the machine got
    busy after the warm-up: under contention a call with two threads took 50x its warm-up time, and one setting
    of an LSTM's timing 19.5 s instead of 2), the later rounds make fewer calls, never fewer than the minimum,
    so every call still gets every round.
    """
    clock = time.thread_time_ns if cpu_clock else time.perf_counter_ns
    rounds = config.round_count
    fewest = max(math.ceil(config.min_reps / rounds), 1)
    per_round = []
    for call in calls:
        for _ in range(max(1, config.warmup)):
            t0 = time.perf_counter_ns()  # sized by wall time: the budget is the caller's waiting time
            call(x)
            once = max(time.perf_counter_ns() - t0, 1) / 1e9
        wanted = int(config.budget_s / rounds / once)
        per_round.append(max(fewest, min(wanted, max(1, config.max_reps // rounds))))
    out = [{"rounds": [], "times": []} for _ in calls]
    planned = config.budget_s * len(calls)
    start = time.perf_counter()
    for r in range(rounds):
        for i in [(r + j) % len(calls) for j in range(len(calls))]:
            times = []
            for _ in range(per_round[i]):
                t0 = clock()
                calls[i](x)
                times.append((clock() - t0) / 1e6)
            out[i]["rounds"].append(float(np.median(times)))
            out[i]["times"] += times
        overrun = (time.perf_counter() - start) / (planned * (r + 1) / rounds) if planned > 0 else 0.0
        if overrun > OVERRUN:
            per_round = [max(fewest, int(n / overrun)) for n in per_round]
    return out


def ratio_summary(baseline_rounds: list[float], variant_rounds: list[float]) -> tuple[float, float]:
    """(speed-up, spread): the median of the per-round ratios baseline / variant, and the interquartile range
    of those ratios over their median."""
    ratios = np.asarray(baseline_rounds, float) / np.maximum(np.asarray(variant_rounds, float), 1e-12)
    median = float(np.median(ratios))
    q1, q3 = np.percentile(ratios, [25, 75])
    return median, float((q3 - q1) / median) if median > 0 else float("inf")


def is_noisy(spread: float) -> bool:
    return not spread <= NOISY_SPREAD


def evaluate(variant: Variant, data, config: LatencyConfig | None = None) -> np.ndarray:
    """Accuracy, size, parameters and runtime of one variant (into `variant.measurements`); returns its test
    logits, computed as `trainers.predict` serves them (batch EVAL_BATCH, the runtime's default thread count:
    SERVED_THREADS), its worker threads not spinning."""
    config = config or LatencyConfig()
    x_test = np.ascontiguousarray(data.x_test, dtype=np.float32)
    runner = Runner(variant, SERVED_THREADS, device=config.device)
    logits = runner.predict(x_test)
    module = variant.model.module
    m = variant.measurements
    m.update({
        "runtime": runner.runtime,
        "accuracy": float((logits.argmax(1) == data.y_test).mean()),
        "log_loss": log_loss(logits, data.y_test),
        "size_bytes": m.get("size_bytes") or size_on_disk(variant),  # preset for formats we do not write
        "parameters": count_parameters(module) if module is not None else None,
        "threads": {"single": 1, "all": config.all_threads},
        "device": runner.device,
        "provider": runner.provider,
    })
    if dynamic_recipe(variant.recipe):
        n = min(BATCH_CHECK, len(x_test))
        one = runner.predict(x_test[:n], batch=1).argmax(1)
        changed = int((one != logits[:n].argmax(1)).sum())
        variant.notes.append(f"dynamic int8 scales activations per batch, so a prediction can depend on the other "
                             f"samples of its batch: accuracy and agreement are measured at batch {EVAL_BATCH}; "
                             f"{changed} of the first {n} test predictions change at batch 1")
    return logits


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean negative log-likelihood (nats) of `labels` under the softmax of `logits`; None for no rows."""
    if not len(labels):
        return None
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    picked = z[np.arange(len(z)), np.asarray(labels, np.int64)]
    return float(np.mean(np.log(np.exp(z).sum(1)) - picked))


LOG_LOSS_RISE = 1.5  # a variant whose test log-loss exceeds the original's this many times (and by 0.05) is noted


def time_all(variants: list[Variant], data, config: LatencyConfig | None = None) -> None:
    """Latency of every variant in every setting (`SETTINGS`), interleaved within each setting; fills
    `latency_ms` and the per-round medians (`rounds_ms`) of each variant's measurements."""
    config = config or LatencyConfig()
    x_test = np.ascontiguousarray(data.x_test, dtype=np.float32)
    # With one thread for "all" (one free core, or a one-core machine) both settings are one configuration: timed
    # once, the all-threads figures copied from it. Timing it twice was half of auto's timing under two
    # background processes on 2 cores, where the second pass measured the other processes, not the variant.
    pools = (("t1", 1), ("tall", config.all_threads)) if config.all_threads > 1 else (("t1", 1),)
    for threads_key, threads in pools:
        runners = [Runner(v, threads, spin=True, device=config.device) for v in variants]
        with torch_threads(threads):
            for batch in (1, 256):
                setting = f"b{batch}_{threads_key}"
                timed = interleaved_rounds([r.raw_call() for r in runners], _batch(x_test, batch), config,
                                           cpu_clock=threads == 1 and config.cpu_clock)
                for v, t in zip(variants, timed):
                    v.measurements.setdefault("latency_ms", {})[setting] = {
                        "p50": float(np.percentile(t["times"], 50)), "p95": float(np.percentile(t["times"], 95)),
                        "reps": len(t["times"])}
                    v.measurements.setdefault("rounds_ms", {})[setting] = t["rounds"]
        del runners
    if len(pools) == 1:
        for v in variants:
            for batch in (1, 256):
                for key in ("latency_ms", "rounds_ms"):
                    v.measurements[key][f"b{batch}_tall"] = copy.deepcopy(v.measurements[key][f"b{batch}_t1"])


def measure_variant(variant: Variant, data, config: LatencyConfig | None = None) -> dict:
    """Accuracy, size, parameters and latency of one variant on its own; stored in (and returned from)
    `variant.measurements`. Several variants to compare: `measure_all`, which interleaves their timings."""
    evaluate(variant, data, config)
    time_all([variant], data, config)
    return variant.measurements


def compare_to_baseline(variant: Variant, baseline: Variant, max_drop: float, min_agreement: float = MIN_AGREEMENT,
                        original_classes: np.ndarray | None = None, predicted_classes: np.ndarray | None = None) -> None:
    """Ratios against the fp32 PyTorch original, the fidelity figures and the flags auto decides on.

    `original_classes`/`predicted_classes`: top-1 test predictions of the original and of the variant (where
    given, `fidelity` is computed from them; else a `fidelity` already in the measurements is judged).
    """
    m, b = variant.measurements, baseline.measurements
    m["accuracy_drop"] = round((b["accuracy"] - m["accuracy"]) * 100, 4)
    m["size_ratio"] = b["size_bytes"] / m["size_bytes"]
    m["speedup"], m["speedup_spread"], m["noisy"] = {}, {}, []
    for s in SETTINGS:
        base_rounds, rounds = b.get("rounds_ms", {}).get(s), m.get("rounds_ms", {}).get(s)
        if base_rounds and rounds and len(base_rounds) == len(rounds):
            m["speedup"][s], m["speedup_spread"][s] = ratio_summary(base_rounds, rounds)
        else:  # not timed together: the ratio of the p50s, no spread
            m["speedup"][s], m["speedup_spread"][s] = b["latency_ms"][s]["p50"] / m["latency_ms"][s]["p50"], 0.0
        if variant is not baseline and is_noisy(m["speedup_spread"][s]):
            m["noisy"].append(s)
    m["rounds"] = len((m.get("rounds_ms") or {}).get(DECISIVE) or []) or None
    m["slower_than_fp32"] = variant is not baseline and any(m["speedup"][s] < 1.0 for s in NEVER_SLOWER)
    if original_classes is not None and predicted_classes is not None:
        m["fidelity"] = fidelity(predicted_classes, original_classes, min_agreement)
    if "fidelity" not in m:
        raise ToolkitError(f"variant {variant.name} has no agreement with the original measured")
    judge(m, max_drop)
    if variant is baseline:
        return
    f = m["fidelity"]
    if m["flips"]:
        variant.notes.append(f"{describe_fidelity(f)}: under the {f['min_agreement']:.1%} required "
                             f"(less its margin {f['margin']:.1%} for n={f['n']}): never chosen")
    if m["noisy"]:
        variant.notes.append(f"timing too noisy for a speed-up at {', '.join(m['noisy'])} (spread of the per-round "
                             f"ratios over {NOISY_SPREAD:.0%})")
    loss, base_loss = m.get("log_loss"), b.get("log_loss")
    if loss is not None and base_loss is not None and loss > max(LOG_LOSS_RISE * base_loss, base_loss + 0.05):
        variant.notes.append(f"its probabilities fit the test labels worse than the original's (log-loss {loss:.3f} "
                             f"against {base_loss:.3f}), though its classes may agree: a threshold on the "
                             f"probabilities would move")
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
                config: LatencyConfig | None = None, progress=None, min_agreement: float = MIN_AGREEMENT) -> None:
    """Measure the baseline and every variant, then fill ratios, fidelity, flags and the Pareto mark.

    Accuracy and agreement first (variants already evaluated, e.g. by auto's screening, keep their figures:
    `measurements["_classes"]` holds their top-1 test predictions);
    then every variant is timed, interleaved with the others and the baseline.
    """
    from trainers.progress import reporter

    config = config or LatencyConfig()
    report = reporter(progress, "measure", len(variants) + 2)
    classes = {}
    for step, v in enumerate([baseline, *variants], 1):
        report(step, v.name)
        if "accuracy" in v.measurements and "_classes" in v.measurements:
            classes[id(v)] = v.measurements["_classes"]
        else:
            classes[id(v)] = evaluate(v, data, config).argmax(1)
    report(len(variants) + 2, f"timing {len(variants) + 1} models, {config.round_count} interleaved rounds")
    time_all([baseline, *variants], data, config)
    for v in [baseline, *variants]:
        compare_to_baseline(v, baseline, max_drop, min_agreement, classes[id(baseline)], classes[id(v)])
    mark_pareto([baseline, *variants])


def mark_pareto(variants: list[Variant]) -> None:
    """Set each variant's `pareto` measurement: on the front of `variants` (`pareto_front`) or not."""
    front = pareto_front(variants)
    for v in variants:
        v.measurements["pareto"] = any(v is f for f in front)
