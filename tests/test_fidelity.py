"""The fidelity rule every variant is judged by, the interleaved timing's spread figure, and auto's search budget."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from compress import register_builtin_methods
from trainers.errors import ToolkitError

register_builtin_methods()  # the registry's order first: importing compress.auto alone would register it early

from compress.auto import SearchBudget, build_candidates, choose  # noqa: E402
from compress.base import Variant  # noqa: E402
from compress.measure import (NOISY_SPREAD, LatencyConfig, agreement_margin, compare_to_baseline, fidelity,  # noqa: E402
                              interleaved_rounds, is_noisy, judge, measure_all, ratio_summary, wilson_interval)

FAST = LatencyConfig(warmup=1, min_reps=2, max_reps=6, budget_s=0.0, threads_all=1, rounds=2)


# ---------------------------------------------------------------- the margin and the interval


@pytest.mark.parametrize("p,n", [(0.97, 800), (0.97, 100), (0.5, 30), (0.99, 5000)])
def test_margin_is_the_one_sided_95_normal_margin(p, n):
    assert agreement_margin(p, n) == pytest.approx(1.645 * math.sqrt(p * (1 - p) / n))
    assert agreement_margin(p, 4 * n) == pytest.approx(agreement_margin(p, n) / 2)  # shrinks as 1/sqrt(n)


def test_margin_refuses_no_samples_and_rates_outside_0_1():
    with pytest.raises(ToolkitError, match="at least one sample"):
        agreement_margin(0.97, 0)
    with pytest.raises(ToolkitError, match=r"\[0, 1\]"):
        agreement_margin(1.2, 10)


@pytest.mark.parametrize("k,n", [(97, 100), (800, 800), (0, 50), (745, 800)])
def test_wilson_interval_matches_the_closed_form(k, n):
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-6)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-6)
    assert low <= p <= high


@pytest.mark.parametrize("short,passes", [(0.9, True), (1.1, False)])
def test_a_variant_passes_down_to_the_required_share_less_the_margin(short, passes):
    n, required = 2000, 0.97
    agreeing = math.floor(n * (required - short * agreement_margin(required, n)))
    original = np.zeros(n, dtype=int)
    predicted = np.where(np.arange(n) < agreeing, 0, 1)
    f = fidelity(predicted, original, required)
    assert f["agreeing"] == agreeing and f["n"] == n and f["agreement"] == agreeing / n
    assert f["wilson_low"] <= f["agreement"] <= f["wilson_high"]
    assert f["passes"] is passes
    m = {"accuracy_drop": 0.0, "fidelity": f}
    assert judge(m, 0.5) is passes and m["flips"] is (not passes) and m["within_budget"]


# ---------------------------------------------------------------- variants judged against the original


class _Fixed(nn.Module):
    """Predicts class `mapping[argmax(x)]`: a stand-in for a model with known predictions."""

    def __init__(self, mapping):
        super().__init__()
        self.register_buffer("mapping", torch.tensor(mapping))

    def forward(self, x):
        return nn.functional.one_hot(self.mapping[x.argmax(1)], len(self.mapping)).float()


def _variant(name, mapping, recipe):
    model = SimpleNamespace(module=_Fixed(mapping).eval(), spec=SimpleNamespace(runtime="torch"), path=None)
    return Variant(name, model, recipe, measurements={"size_bytes": 100})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    return SimpleNamespace(x_test=x, y_test=x.argmax(1))  # the original is right on every sample


def test_a_chained_variant_is_judged_against_the_original_not_its_intermediate(data):
    """The pruned intermediate maps class 0 to 1; int8 of it agrees with it everywhere, and so its parity (against
    the intermediate) is perfect; against the original, it disagrees on every class-0 sample and is flagged."""
    baseline = _variant("fp32-torch", (0, 1, 2, 3), {"method": "baseline"})
    steps = [{"method": "prune-structured", "ratio": 0.5}, {"method": "int8-dynamic"}]
    chained = _variant("prune-structured-50+int8-dynamic-onnx", (1, 1, 2, 3), {"method": "chain", "steps": steps})
    chained.measurements["parity"] = {"max_abs_diff": 0.0, "top1_agreement": 1.0, "n": 400}  # against the intermediate
    measure_all([chained], baseline, data, max_drop=100.0, config=FAST)
    f = chained.measurements["fidelity"]
    assert f["agreement"] == pytest.approx(1 - (data.x_test.argmax(1) == 0).mean())
    assert chained.measurements["flips"] and not f["passes"]
    assert chained.measurements["parity"]["top1_agreement"] == 1.0
    assert choose(baseline, [chained], 100.0)[0] is baseline


def test_a_pruned_variant_that_flips_predictions_is_flagged_within_its_accuracy_budget(data):
    """Accuracy alone would pass it (budget 100 points); agreement with the original does not."""
    baseline = _variant("fp32-torch", (0, 1, 2, 3), {"method": "baseline"})
    pruned = _variant("prune-structured-30", (0, 1, 3, 3), {"method": "prune-structured", "ratio": 0.3})
    same = _variant("prune-structured-10", (0, 1, 2, 3), {"method": "prune-structured", "ratio": 0.1})
    measure_all([pruned, same], baseline, data, max_drop=100.0, config=FAST)
    assert pruned.measurements["within_budget"] and pruned.measurements["flips"]
    assert any("never chosen" in note for note in pruned.notes)
    assert not same.measurements["flips"] and same.measurements["fidelity"]["agreement"] == 1.0
    assert baseline.measurements["fidelity"]["agreement"] == 1.0 and not baseline.measurements["flips"]


# ---------------------------------------------------------------- timing: rounds, ratios, spread


def test_rounds_interleave_every_call_in_a_rotating_order():
    order = []
    calls = [lambda x, i=i: order.append(i) for i in range(3)]
    config = LatencyConfig(warmup=1, min_reps=3, max_reps=3, budget_s=0.0, rounds=3)
    timed = interleaved_rounds(calls, np.zeros(1), config, cpu_clock=True)
    assert order[:3] == [0, 1, 2]  # warm-up
    assert order[3:] == [0, 1, 2, 1, 2, 0, 2, 0, 1]  # one call each per round, each round one further along
    assert all(len(t["rounds"]) == 3 and len(t["times"]) == 3 for t in timed)


def test_rounds_far_over_their_budget_make_fewer_calls_but_every_round_runs(monkeypatch):
    import compress.measure as measure

    now = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    calls_made = [0, 0]

    def slow(x, i):        # 1 s of (fake) wall time per call: the warm-up's clock does not see it
        calls_made[i] += 1
        now[0] += 1.0

    config = LatencyConfig(warmup=1, min_reps=4, max_reps=400, budget_s=0.1, rounds=4)
    calls = [lambda x: calls_made.__setitem__(0, calls_made[0] + 1), lambda x: slow(x, 1)]
    timed = interleaved_rounds(calls, np.zeros(1), config, cpu_clock=True)
    assert [len(t["rounds"]) for t in timed] == [4, 4]    # every call in every round ...
    # ... the first round as sized from the (fast) warm-up, 100 calls each; 100 s instead of 0.05 s, so every
    # later round makes each call its minimum (min_reps / rounds = 1) instead of 100 more
    assert [len(t["times"]) for t in timed] == [100 + 3, 100 + 3]


def test_all_threads_timing_uses_the_free_cores_and_says_so(monkeypatch):
    import compress.auto as auto

    monkeypatch.setattr(auto.os, "cpu_count", lambda: 4)
    config = LatencyConfig(threads_all=0)
    notes = []
    monkeypatch.setattr(auto, "free_cores", lambda: 4)
    assert auto._timing_threads(config, notes) is config and notes == []
    monkeypatch.setattr(auto, "free_cores", lambda: 1)
    busy = auto._timing_threads(config, notes)
    assert busy.all_threads == 1 and "1 thread(s)" in notes[0]


def test_with_one_thread_for_all_the_two_settings_are_timed_once(monkeypatch, digits):
    import compress.measure as measure
    from compress.auto import baseline_variant
    from compress.checks import tiny_model

    passes = []
    real = measure.interleaved_rounds

    def counted(calls, x, config, cpu_clock):
        passes.append((len(x), cpu_clock))
        return real(calls, x, config, cpu_clock=cpu_clock)

    monkeypatch.setattr(measure, "interleaved_rounds", counted)
    variant = baseline_variant(tiny_model("mlp"))
    measure.time_all([variant], digits, LatencyConfig(budget_s=0.01, threads_all=1))
    assert passes == [(1, True), (256, True)]
    m = variant.measurements
    assert m["latency_ms"]["b256_tall"] == m["latency_ms"]["b256_t1"] and m["rounds_ms"]["b1_tall"] == m["rounds_ms"]["b1_t1"]
    m["rounds_ms"]["b1_tall"].append(0.0)
    assert len(m["rounds_ms"]["b1_t1"]) != len(m["rounds_ms"]["b1_tall"])   # copies, not one shared list
    passes.clear()
    measure.time_all([variant], digits, LatencyConfig(budget_s=0.01, threads_all=2))
    assert passes == [(1, True), (256, True), (1, False), (256, False)]


def test_speedup_is_the_median_of_per_round_ratios_and_spread_flags_noise():
    steady, spread = ratio_summary([10.0] * 7, [5.0] * 7)
    assert steady == pytest.approx(2.0) and spread == 0.0 and not is_noisy(spread)
    # one slow spell in the baseline's round 3 moves the median of ratios not at all
    robust, _ = ratio_summary([10, 10, 10, 40, 10, 10, 10], [5.0] * 7)
    assert robust == pytest.approx(2.0)
    noisy_median, noisy = ratio_summary([10.0] * 7, [5, 9, 3, 5, 8, 2.5, 6])
    assert noisy > NOISY_SPREAD and is_noisy(noisy)
    assert is_noisy(float("inf")) and is_noisy(float("nan"))


def test_a_noisy_setting_is_reported_instead_of_its_speedup():
    settings = ("b1_t1", "b1_tall", "b256_t1", "b256_tall")
    steady, jumpy = [2.0] * 7, [1.0, 1.9, 0.6, 1.0, 1.7, 0.5, 1.2]
    lat = {s: {"p50": 1.0, "p95": 1.0, "reps": 7} for s in settings}
    f = fidelity(np.zeros(50, int), np.zeros(50, int))
    base = Variant("fp32-torch", None, {}, measurements={
        "accuracy": 0.9, "size_bytes": 100, "latency_ms": lat, "rounds_ms": {s: steady for s in settings}, "fidelity": f})
    variant = Variant("v", None, {}, measurements={
        "accuracy": 0.9, "size_bytes": 50, "latency_ms": lat, "fidelity": f,
        "rounds_ms": {**{s: [1.0] * 7 for s in settings}, "b256_t1": jumpy}})
    for v in (base, variant):
        compare_to_baseline(v, base, 0.5)
    m = variant.measurements
    assert m["noisy"] == ["b256_t1"] and m["speedup_spread"]["b256_t1"] > NOISY_SPREAD
    assert m["speedup"]["b1_t1"] == pytest.approx(2.0) and m["speedup_spread"]["b1_t1"] == 0.0
    assert any("too noisy" in n for n in variant.notes)
    m["pareto"] = True
    chosen, reason = choose(base, [variant], 0.5)
    assert chosen is variant and "too noisy for a speed-up" in reason and "x faster" not in reason



@pytest.mark.parametrize("slow_setting", ["b256_t1", "b1_t1"])
def test_a_variant_slower_at_batch_256_or_at_batch_1_is_never_chosen(slow_setting):
    settings = ("b1_t1", "b1_tall", "b256_t1", "b256_tall")
    lat = {s: {"p50": 1.0, "p95": 1.0, "reps": 7} for s in settings}
    f = fidelity(np.zeros(50, int), np.zeros(50, int))
    base = Variant("fp32-torch", None, {}, measurements={
        "accuracy": 0.9, "size_bytes": 100, "latency_ms": lat, "rounds_ms": {s: [2.0] * 7 for s in settings},
        "fidelity": f})
    variant = Variant("v", None, {}, measurements={
        "accuracy": 0.9, "size_bytes": 50, "latency_ms": lat, "fidelity": f,
        "rounds_ms": {**{s: [1.0] * 7 for s in settings}, slow_setting: [3.0] * 7}})  # 2x faster but at one
    for v in (base, variant):
        compare_to_baseline(v, base, 0.5)
    assert variant.measurements["slower_than_fp32"]
    chosen, reason = choose(base, [variant], 0.5)
    assert chosen is base and "batch 256 and batch 1" in reason


def _timed(name: str, rounds: dict, size: int = 50) -> Variant:
    """A variant with its latency rounds (ms) by setting; p50 is their median."""
    f = fidelity(np.zeros(50, int), np.zeros(50, int))
    lat = {s: {"p50": float(np.median(r)), "p95": max(r), "reps": len(r)} for s, r in rounds.items()}
    return Variant(name, None, {}, measurements={"accuracy": 0.9, "size_bytes": size, "latency_ms": lat,
                                                 "rounds_ms": rounds, "fidelity": f})


def test_the_choice_is_the_fastest_at_the_serving_batch_size():
    """A recurrent model's fastest at batch 256 (bf16 PyTorch) can be 3x slower at batch 1 than ONNX Runtime's
    int8: with serving_batch=1 the choice is the fastest at batch 1, and the reason says so."""
    settings = ("b1_t1", "b1_tall", "b256_t1", "b256_tall")
    base = _timed("fp32-torch", {s: [4.0] * 7 for s in settings}, size=100)
    throughput = _timed("bf16", {"b1_t1": [3.5] * 7, "b1_tall": [3.5] * 7, "b256_t1": [2.0] * 7,
                                 "b256_tall": [2.0] * 7})
    requests = _timed("int8", {"b1_t1": [1.0] * 7, "b1_tall": [1.0] * 7, "b256_t1": [3.4] * 7,
                               "b256_tall": [3.4] * 7})
    for v in (base, throughput, requests):
        compare_to_baseline(v, base, 0.5)
    chosen, reason = choose(base, [throughput, requests], 0.5)
    assert chosen is throughput and "at batch 1 int8 is 3.5x faster than this choice (--serving-batch 1" in reason
    chosen, reason = choose(base, [throughput, requests], 0.5, batch=1)
    assert chosen is requests and "4.00x faster at batch 1 single thread" in reason
    assert "at batch 256 bf16 is 1.7x faster than this choice (--serving-batch 256" in reason
    close = _timed("int8-close", {"b1_t1": [2.5] * 7, "b1_tall": [2.5] * 7, "b256_t1": [3.4] * 7,
                                  "b256_tall": [3.4] * 7})
    compare_to_baseline(close, base, 0.5)
    assert "--serving-batch" not in choose(base, [throughput, close], 0.5)[1]   # 1.4x at batch 1: no line


def test_auto_decides_at_the_serving_batch_size_it_is_told(digits, monkeypatch):
    """The option reaches every place that reads speed: the quick timings, the drift guard's picks and the
    choice; any other size is refused before any work."""
    import compress.auto as auto
    from compress.checks import tiny_model

    seen = {"quick": set(), "choose": set()}
    quick = auto.quick_ratios

    def spy_quick(variants, baseline, data, config, batch=256, **kw):
        seen["quick"].add(batch)
        return quick(variants, baseline, data, config, batch, **kw)

    def spy_choose(baseline, variants, max_drop, batch=256, by_batch=False):
        seen["choose"].add(batch)
        return choose(baseline, variants, max_drop, batch, by_batch)

    monkeypatch.setattr(auto, "quick_ratios", spy_quick)
    monkeypatch.setattr(auto, "choose", spy_choose)
    model = tiny_model("mlp")
    variants = auto.auto(model, digits, serving_batch=1, prune_ratios=(0.5,), finetune_epochs=1, distill_epochs=0,
                         unstructured_ratio=0.0, latency_budget_s=0.02, drift_guard_on=False)
    assert seen["choose"] == {1} and 1 in seen["quick"]
    chosen = [v for v in variants if v.measurements["chosen"]]
    if chosen:  # the fastest at batch 1 of the eligible ones
        eligible = [v for v in variants if v.measurements["within_budget"] and not v.measurements["slower_than_fp32"]
                    and not v.measurements.get("flips")]
        fastest = min(v.measurements["latency_ms"]["b1_t1"]["p50"] for v in eligible)
        assert chosen[0].measurements["latency_ms"]["b1_t1"]["p50"] <= fastest * (1 + auto.LATENCY_TIE)
    with pytest.raises(ToolkitError, match="serving_batch: .*1 or 256"):
        auto.auto(model, digits, serving_batch=64)


def test_compress_model_runs_auto_with_every_setting_auto_itself_reads(digits, monkeypatch):
    """`compress_model` (the CLI's path) screens and settles auto's candidates itself: the serving batch size,
    the exploration budget and the timing with the cores free now must reach it as they reach `auto`."""
    import compress.auto as auto
    from compress import compress_model
    from compress.checks import tiny_model

    seen = {}
    search, choose_, timing = auto.search, auto.choose, auto._timing_threads

    def spy_search(*args, **kwargs):
        seen["search"] = {k: kwargs.get(k) for k in ("batch", "explore_seconds")}
        return search(*args, **kwargs)

    def spy_choose(baseline, variants, max_drop, batch=256, by_batch=False):
        seen["choose"] = batch
        return choose_(baseline, variants, max_drop, batch, by_batch)

    def spy_timing(config, notes):
        seen["timing"] = True
        return timing(config, notes)

    monkeypatch.setattr("compress.run.search", spy_search)
    monkeypatch.setattr(auto, "choose", spy_choose)
    monkeypatch.setattr(auto, "_timing_threads", spy_timing)
    options = {"auto": {"serving_batch": 1, "explore_seconds": 3.0, "prune_ratios": [0.5], "finetune_epochs": 1,
                        "distill_epochs": 0, "unstructured_ratio": 0.0, "latency_budget_s": 0.02}}
    compress_model(tiny_model("mlp"), digits, methods=["auto"], options=options)
    assert seen == {"search": {"batch": 1, "explore_seconds": 3.0}, "choose": 1, "timing": True}


def test_a_pruned_user_module_is_handed_to_chained_methods_as_pytorch():
    import dataclasses

    from compress.auto import _chain_source
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    as_onnx = dataclasses.replace(model, spec=dataclasses.replace(model.spec, runtime="onnxruntime"),
                                  onnx_bytes=b"graph")
    source = _chain_source(as_onnx)
    assert source.spec.runtime == "torch" and source.module is model.module and source.onnx_bytes is None
    assert as_onnx.spec.runtime == "onnxruntime"  # the variant itself is left as it is
    assert _chain_source(model) is model


@pytest.mark.parametrize("role", ["runtime", "transform"])
def test_a_step_differing_only_in_fallback_options_is_made_only_when_the_earlier_one_failed(digits, stand_in, role):
    """auto's int8: its own agreement first, the stricter default only if that variant fails the rule; a pruned
    model fine-tuned with the teacher only if the one fine-tuned on the labels fails. A step that differs in any
    other option is always made."""
    from compress.base import Variant
    from compress.checks import tiny_model

    calls = []

    def method(model, data, strict: bool = False, size: int = 1):
        """A stand-in method."""
        calls.append((strict, size))
        return [Variant(f"made-{strict}-{size}", model, {"method": "test-fallback"})]

    stand_in("test-fallback", role=role, fallback=("strict",), func=method)
    model = tiny_model("mlp")
    steps = [("test-fallback", {}, []), ("test-fallback", {"strict": True}, []),
             ("test-fallback", {"size": 2, "strict": True}, [])]
    variants, skipped = build_candidates(model, digits, steps, screen=lambda v: None)
    assert calls == [(False, 1), (True, 2)] and [v.name for v in variants] == ["made-False-1", "made-True-2"]
    assert len(skipped) == 1 and skipped[0]["options"] == {"strict": True}
    assert "passed the fidelity rule; these options are its fallback" in skipped[0]["reason"]
    calls.clear()
    variants, skipped = build_candidates(model, digits, steps,
                                         screen=lambda v: "too loose" if v.name == "made-False-1" else None)
    assert calls == [(False, 1), (True, 1), (True, 2)]
    assert [v.name for v in variants] == ["made-True-1", "made-True-2"] and "too loose" in skipped[0]["reason"]
    calls.clear()
    build_candidates(model, digits, steps)  # no screen: nothing is judged, every step is made
    assert len(calls) == 3


def test_a_failing_step_is_listed_once_and_its_fallback_not_made(digits, stand_in):
    """A step that fails (a ToolkitError, or a user's graph ORT's quantizer rejects) fails the same way with its
    fallback options: result.json listed each failing int8 method twice, with the same reason."""
    from compress.checks import tiny_model

    calls = []

    def method(model, data, strict: bool = False):
        """A stand-in method that cannot handle the model."""
        calls.append(strict)
        raise ToolkitError("cannot handle this model")

    stand_in("test-failing", role="runtime", fallback=("strict",), func=method)
    steps = [("test-failing", {}, []), ("test-failing", {"strict": True}, [])]
    with pytest.raises(ToolkitError, match="no compression method"):
        build_candidates(tiny_model("mlp"), digits, steps, screen=lambda v: None)
    assert calls == [False]
    stand_in("test-other", role="runtime", func=lambda model, data: [Variant("other", model, {"method": "o"})])
    variants, skipped = build_candidates(tiny_model("mlp"), digits, [*steps, ("test-other", {}, [])],
                                         screen=lambda v: None)
    assert [s["method"] for s in skipped] == ["test-failing"] and "cannot handle" in skipped[0]["reason"]


def test_a_step_passes_when_any_of_its_variants_passes(digits, stand_in):
    """int8-static can offer two graphs (its choice and a lean twin): the step's fallback is made only when
    neither passes, whatever order they come in."""
    from compress.base import Variant
    from compress.checks import tiny_model

    calls = []

    def method(model, data, strict: bool = False):
        """A stand-in runtime method with two variants per call."""
        calls.append(strict)
        return [Variant(f"first-{strict}", model, {"method": "test-two"}),
                Variant(f"lean-{strict}", model, {"method": "test-two"})]

    stand_in("test-two", role="runtime", fallback=("strict",), func=method)
    steps = [("test-two", {}, []), ("test-two", {"strict": True}, [])]
    for failing in ("first-False", "lean-False"):
        calls.clear()
        variants, _ = build_candidates(tiny_model("mlp"), digits, steps,
                                       screen=lambda v, failing=failing: "fails" if v.name == failing else None)
        assert calls == [False] and len(variants) == 1
    calls.clear()
    build_candidates(tiny_model("mlp"), digits, steps, screen=lambda v: None if v.name.endswith("True") else "fails")
    assert calls == [False, True]


def test_no_fallback_after_a_far_miss_of_the_agreement_rule(digits, stand_in):
    """A fallback recovers a few points of agreement (FALLBACK_REACH), not more: after a miss by more, it is
    not made, and the skipped entry says by how much the earlier step missed."""
    from compress.auto import FALLBACK_REACH
    from compress.base import Variant
    from compress.checks import tiny_model
    from compress.measure import fidelity

    calls = []

    def method(model, data, teacher: bool = False):
        """A stand-in transform."""
        calls.append(teacher)
        return [Variant(f"made-{teacher}", model, {"method": "test-reach"})]

    def screen_at(agreeing):
        def screen(variant):
            original = np.zeros(100, int)
            predicted = np.where(np.arange(100) < agreeing, 0, 1)
            variant.measurements["fidelity"] = fidelity(predicted, original, 0.97)
            return None if variant.measurements["fidelity"]["passes"] else "agreement"
        return screen

    stand_in("test-reach", role="transform", fallback=("teacher",), func=method)
    model = tiny_model("mlp")
    steps = [("test-reach", {}, []), ("test-reach", {"teacher": True}, [])]
    margin = fidelity(np.zeros(100, int), np.zeros(100, int), 0.97)["margin"]
    near = int(np.ceil(100 * (0.97 - margin - FALLBACK_REACH)))  # a miss within the reach: the fallback runs
    build_candidates(model, digits, steps, screen=screen_at(near))
    assert calls == [False, True]
    calls.clear()
    variants, skipped = build_candidates(model, digits, steps, screen=screen_at(near - 3))
    assert calls == [False] and not variants
    assert "more than a fallback recovers" in skipped[-1]["reason"] and skipped[-1]["options"] == {"teacher": True}


def test_pruning_fallbacks_follow_the_steps_they_stand_in_for(digits, stand_in):
    """Pruning's plan per ratio: labels, teacher, exact widths, both. A passing teacher step ends its ratio's
    fallbacks; after the labels failed at 0.3, they are not tried at 0.5, but the teacher is (it passed at
    0.3), and after it fails narrowly, so are the exact widths. After a far miss at 0.3 nothing more is made."""
    from compress.base import Variant
    from compress.checks import tiny_model

    calls = []

    def method(model, data, ratio: float = 0.5, teacher: bool = False, align: int = 8):
        """A stand-in pruning."""
        calls.append((ratio, teacher, align))
        return [Variant(f"p-{ratio}-{teacher}-{align}", model, {"method": "test-prune"})]

    passing = {"p-0.3-True-8", "p-0.5-True-1"}
    stand_in("test-prune", role="transform", fallback=("teacher", "align"), func=method)
    steps = [("test-prune", {"ratio": r, **extra}, []) for r in (0.3, 0.5)
             for extra in ({}, {"teacher": True}, {"align": 1}, {"align": 1, "teacher": True})]
    variants, skipped = build_candidates(tiny_model("mlp"), digits, steps,
                                         screen=lambda v: None if v.name in passing else "fails narrowly")
    assert calls == [(0.3, False, 8), (0.3, True, 8), (0.5, True, 8), (0.5, False, 1), (0.5, True, 1)]
    assert [v.name for v in variants] == ["p-0.3-True-8", "p-0.5-True-1"]
    reasons = [s["reason"] for s in skipped if s["reason"].startswith("not tried")]
    assert sum("passed the fidelity rule" in r for r in reasons) == 2  # 0.3 exact, 0.3 exact + teacher
    assert sum("removes more" in r for r in reasons) == 1  # 0.5 on the labels
    calls.clear()

    def far(v):
        v.measurements["fidelity"] = {"agreement": 0.5, "min_agreement": 0.97, "margin": 0.01}
        return "far"

    variants, skipped = build_candidates(tiny_model("mlp"), digits, steps, screen=far)
    assert calls == [(0.3, False, 8)] and not variants and len(skipped) == len(steps)  # 1 rejected, 7 not tried


@pytest.mark.parametrize("passing,made", [
    ({"r-0.3"}, [0.3, 0.5]),            # 0.3 passed: 0.5 is tried, 0.2 (smaller than what passed) is not
    (set(), [0.3, 0.2]),                # 0.3 failed: 0.5 removes more and is not tried, 0.2 is its fallback
    ({"r-0.3", "r-0.5"}, [0.3, 0.5]),
])
def test_ratios_in_order_larger_after_a_pass_smaller_after_a_failure(digits, stand_in, passing, made):
    from compress.base import Variant
    from compress.checks import tiny_model

    calls = []

    def method(model, data, ratio: float = 0.5):
        """A stand-in transform."""
        calls.append(ratio)
        return [Variant(f"r-{ratio}", model, {"method": "test-ratios"})]

    stand_in("test-ratios", role="transform", func=method)
    steps = [("test-ratios", {"ratio": r}, []) for r in (0.3, 0.5, 0.2)]
    variants, skipped = build_candidates(tiny_model("mlp"), digits, steps,
                                         screen=lambda v: None if v.name in passing else "fails")
    assert calls == made
    assert all("removes less" in s["reason"] or "removes more" in s["reason"]
               for s in skipped if s["reason"].startswith("not tried"))


def _burn(seconds: float) -> None:
    """Spend `seconds` of this process's CPU time (a stand-in step's cost)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.mark.parametrize("step_seconds,made", [(math.inf, [0.3, 0.2]), (0.01, [0.3])])
def test_a_retreat_to_a_smaller_ratio_is_made_only_for_a_cheap_step(digits, stand_in, step_seconds, made):
    """After 0.3 failed, 0.2 is exploration: made when the method's steps are cheap, else skipped with why."""
    from compress.auto import Exploration
    from compress.base import Variant
    from compress.checks import tiny_model

    calls = []

    def method(model, data, ratio: float = 0.5):
        """A stand-in transform that costs 50 ms of CPU."""
        calls.append(ratio)
        _burn(0.05)
        return [Variant(f"r-{ratio}", model, {"method": "test-explore"})]

    stand_in("test-explore", role="transform", func=method)
    steps = [("test-explore", {"ratio": r}, []) for r in (0.3, 0.2)]
    variants, skipped = build_candidates(tiny_model("mlp"), digits, steps, screen=lambda v: "fails",
                                         explore=Exploration(step_seconds=step_seconds))
    assert calls == made
    if len(made) == 1:
        assert "a retreat to ratio 0.2 after ratio 0.3 failed" in skipped[-1]["reason"]
        assert "over the 0.01 of a cheap step" in skipped[-1]["reason"]


def test_a_far_fallback_is_exploration_within_the_wide_reach_and_the_cpu_budget(digits, stand_in):
    """A miss between FALLBACK_REACH and the exploration's reach: the fallback is made while the search is within
    its CPU seconds; over them it is not, and counts as failed (the larger ratio is not tried either)."""
    from compress.auto import FALLBACK_REACH, WIDE_REACH, Exploration
    from compress.base import Variant
    from compress.checks import tiny_model

    calls = []

    def method(model, data, ratio: float = 0.3, teacher: bool = False):
        """A stand-in pruning."""
        calls.append((ratio, teacher))
        _burn(0.02)
        return [Variant(f"p-{ratio}-{teacher}", model, {"method": "test-far"})]

    def far(v):  # a miss of 7 points: over FALLBACK_REACH, within WIDE_REACH
        v.measurements["fidelity"] = {"agreement": 0.97 - 0.01 - 0.07, "min_agreement": 0.97, "margin": 0.01}
        return "misses by 7 points"

    assert FALLBACK_REACH < 0.07 < WIDE_REACH
    stand_in("test-far", role="transform", fallback=("teacher",), func=method)
    steps = [("test-far", {"ratio": r, **extra}, []) for r in (0.3, 0.5) for extra in ({}, {"teacher": True})]
    build_candidates(tiny_model("mlp"), digits, steps, screen=far, explore=Exploration(reach=WIDE_REACH))
    assert calls == [(0.3, False), (0.3, True)]
    calls.clear()
    variants, skipped = build_candidates(tiny_model("mlp"), digits, steps, screen=far,
                                         explore=Exploration(cpu_seconds=0.0, reach=WIDE_REACH))
    assert calls == [(0.3, False)] and not variants
    reasons = [s["reason"] for s in skipped]
    assert "a fallback after a miss of the agreement rule by 7.0%" in reasons[1] and "explores within" in reasons[1]
    assert all("removes more" in r for r in reasons[2:])  # the refused fallback failed: 0.5 is not tried
    calls.clear()
    build_candidates(tiny_model("mlp"), digits, steps, screen=far)  # no exploration: the 5-point reach
    assert calls == [(0.3, False)]


# ---------------------------------------------------------------- the search budget


def test_budget_ends_the_search_before_the_step_that_would_overrun_it(digits):
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    steps = [("fp16", {}, []), ("bf16", {}, []), ("onnx-fp32", {}, [])]
    variants, skipped = build_candidates(model, digits, steps, budget=SearchBudget(seconds=30.0, measure_s=20.0))
    assert [v.name for v in variants] == ["fp16-torch"]
    assert [s["method"] for s in skipped] == ["bf16", "onnx-fp32"]
    assert all("search budget of 30 s" in s["reason"] for s in skipped)
    unlimited, none_skipped = build_candidates(model, digits, steps[:2], budget=SearchBudget(None, measure_s=20.0))
    assert len(unlimited) == 2 and not none_skipped


def test_budget_counts_the_next_step_as_long_as_its_methods_steps_so_far():
    """A step is not started when its method's median step so far would end past the budget (on 20,000 images a
    10-epoch pruning fine-tune started at 80 of 90 seconds took the search to 165)."""
    budget = SearchBudget(seconds=100.0, measure_s=1.0, start=time.perf_counter() - 50.0)
    assert not budget.exhausted(0, "prune-structured")          # nothing made yet: no expectation
    budget.record("prune-structured", 60.0)
    budget.record("int8-dynamic", 2.0)
    assert budget.exhausted(0, "prune-structured")              # 50 s in, 60 expected: past 100
    assert not budget.exhausted(0, "int8-dynamic")              # 2 expected
    assert budget.expected("distill") == 31.0                   # no step of its own: the median of all


def test_auto_out_of_budget_keeps_the_original_and_says_why(digits):
    from compress import compress_model
    from compress.checks import tiny_model

    result = compress_model(tiny_model("mlp"), digits, methods=["auto"], budget_seconds=0.01,
                            options={"auto": {"latency_budget_s": 0.01}})
    summary = result.to_dict()
    assert summary["schema_version"] == 8 and summary["budget_seconds"] == 0.01
    assert result.chosen is result.baseline and "--budget-seconds 0.01" in result.reason
    assert summary["skipped"] and all("search budget" in s["reason"] for s in summary["skipped"])


@pytest.mark.parametrize("given,option", [({"min_agreement": 1.5}, "--min-agreement"),
                                          ({"budget_seconds": 0}, "--budget-seconds"),
                                          ({"budget_seconds": "soon"}, "--budget-seconds")])
def test_bad_agreement_or_budget_is_refused_before_any_work(given, option):
    from compress import check_request

    with pytest.raises(ToolkitError, match=option):
        check_request(["auto"], None, 0.5, None, None, **given)


def test_version_1_compress_results_are_still_read():
    from fake_runs import before_version_6, compress_result
    from trainers.schema import CompressResultFile, CompressResultFileV1, parse_result

    current = compress_result().dump()
    assert isinstance(parse_result(current, stage="compress"), CompressResultFile)
    old = {k: v for k, v in before_version_6(current).items()
           if k not in ("min_agreement", "budget_seconds", "search_notes")}
    new_row_fields = ("fidelity", "speedup_spread", "noisy", "rounds", "serve")
    for row in [old["baseline"], *old["variants"]]:
        for key in new_row_fields:
            row.pop(key)
    read = parse_result({**old, "schema_version": 1}, stage="compress")
    assert type(read) is CompressResultFileV1 and read.variants[0].fidelity is None
    with pytest.raises(ToolkitError, match="min_agreement"):
        parse_result({**old, "schema_version": 2}, stage="compress")


# ---------------------------------------------------------------- free cores


@pytest.mark.parametrize("idle_ticks, own_seconds, free", [
    (40, 0.0, 2),     # nothing ran: both cores free
    (20, 0.0, 1),     # another process kept one core busy
    (20, 0.2, 2),     # the busy core was this process's own threads spinning down
    (0, 0.0, 1),      # both cores busy elsewhere: still one
])
def test_free_cores_counts_what_other_processes_use_now(monkeypatch, idle_ticks, own_seconds, free):
    import compress.auto as auto

    readings = iter([(1000, 5000), (1000 + idle_ticks, 5040)])  # 2 cores x 0.2 s at 100 ticks per second
    clock = iter([10.0, 10.0 + own_seconds])
    monkeypatch.setattr(auto.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(auto, "_cpu_ticks", lambda: next(readings))
    monkeypatch.setattr(auto.time, "process_time", lambda: next(clock))
    monkeypatch.setattr(auto.time, "sleep", lambda seconds: None)
    assert auto.free_cores(window=0.2) == free


def test_free_cores_falls_back_to_the_load_average_without_proc_stat(monkeypatch):
    import compress.auto as auto

    def missing():
        raise OSError("no /proc/stat")

    monkeypatch.setattr(auto.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(auto, "_cpu_ticks", missing)
    monkeypatch.setattr(auto.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    assert auto.free_cores() == 2


def test_cpu_ticks_read_this_machine():
    from compress.auto import _cpu_ticks

    idle, total = _cpu_ticks()
    assert 0 <= idle <= total and total > 0


def test_a_step_that_keeps_the_original_speed_is_not_made_once_a_candidate_is_clearly_faster(digits, stand_in):
    """Unstructured pruning multiplies its zeros dense: it runs at the original's speed, and only a candidate
    within 10% of the fastest can be chosen. Once a candidate made before it is OUTPACED times faster in a quick
    timing, it is not made; below that, or with nothing made yet, it is."""
    from compress.auto import OUTPACED
    from compress.checks import tiny_model

    calls, asked = [], []

    def runtime(model, data):
        """A stand-in runtime method."""
        calls.append("runtime")
        return [Variant("fast", model, {"method": "test-fast"})]

    def storage(model, data):
        """A stand-in method that changes only what is stored."""
        calls.append("storage")
        return [Variant("sparse", model, {"method": "test-sparse"})]

    stand_in("test-fast", role="runtime", func=runtime)
    stand_in("test-sparse", role="transform", keeps_speed=True, func=storage)
    steps = [("test-fast", {}, []), ("test-sparse", {}, [])]
    for speed, made in ((OUTPACED * 1.01, False), (OUTPACED * 0.99, True)):
        calls.clear()

        def pace(variants, speed=speed):
            asked.append([v.name for v in variants])
            return variants[0], speed
        variants, skipped = build_candidates(tiny_model("mlp"), digits, steps, screen=lambda v: None, pace=pace)
        assert calls == (["runtime", "storage"] if made else ["runtime"]) and asked[-1] == ["fast"]
        assert ("sparse" in [v.name for v in variants]) is made
        if not made:
            assert "runs at the original's speed" in skipped[-1]["reason"] and "fast" in skipped[-1]["reason"]
    asked.clear()
    build_candidates(tiny_model("mlp"), digits, steps[1:], screen=lambda v: None, pace=lambda v: asked.append(v))
    build_candidates(tiny_model("mlp"), digits, steps[:1], screen=lambda v: None, pace=lambda v: asked.append(v))
    assert asked == []  # nothing made before it, or no step that keeps the speed: no timing


def test_the_pace_passes_over_a_leader_slower_than_the_original_at_batch_1(digits, monkeypatch):
    """A candidate slower than the original at batch 1 is never chosen: it is no yardstick, for a step that keeps
    the speed or for the quick timing's cut, and the quick timing drops it."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"slow-at-1": 5.0, "steady": 2.0, "behind": 1.5},    # x the original's speed, by batch size
              1: {"slow-at-1": 0.5, "steady": 1.5, "behind": 1.0}}

    def quick(variants, base, data, config, batch=256, **kw):
        return {id(v): speeds[batch][v.name] for v in variants}

    monkeypatch.setattr(auto, "quick_ratios", quick)
    made = [Variant(name, model, {"method": "test"}) for name in ("slow-at-1", "steady", "behind")]
    pace = auto.Pace(baseline, digits, auto.LatencyConfig())
    leader, speed = pace(made)
    assert leader.name == "steady" and speed == 2.0 and len(made) == 3   # asking does not drop anything
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig())
    assert [v.name for v in made] == ["steady", "behind"]   # 1.5 x 1.43 is within reach of 2.0
    assert [c["name"] for c in cut] == ["slow-at-1"] and "at batch 1" in cut[0]["reason"]
    speeds[256]["behind"] = 1.3 / auto.OUTPACED
    made = [Variant(name, model, {"method": "test"}) for name in ("steady", "behind")]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig())
    assert [v.name for v in made] == ["steady"]
    assert f"{2.0 * auto.OUTPACED / 1.3:.2f}x behind the fastest candidate that may be chosen" in cut[0]["reason"]


def test_the_quick_timing_keeps_the_fastest_at_the_other_batch_size(digits, monkeypatch):
    """An LSTM's int8 ONNX Runtime graph is 1.5x behind bf16 at batch 256 but 3x ahead at batch 1: it cannot be
    chosen at 256, yet it stays for the full timing so that the reason can name it; one only a little faster at
    batch 1 does not."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"bf16": 1.6, "int8": 1.0, "fp32-onnx": 0.9}, 1: {"bf16": 1.2, "int8": 4.0, "fp32-onnx": 1.7}}
    monkeypatch.setattr(auto, "quick_ratios", lambda variants, base, data, config, batch=256, **kw:
                        {id(v): speeds[batch][v.name] for v in variants})
    made = [Variant(name, model, {"method": "test"}) for name in ("bf16", "int8", "fp32-onnx")]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig())
    assert [v.name for v in made] == ["bf16", "int8"] and [c["name"] for c in cut] == ["fp32-onnx"]
    # the cut one's place at batch 1 is in its reason (against the fastest there): why it did not stay
    assert f"at batch 1 {4.0 / 1.7:.2f}x behind the fastest there, not kept for that side" in cut[0]["reason"]
    speeds[1]["int8"] = 1.7   # under 1.5 x bf16's 1.2 at batch 1
    made = [Variant(name, model, {"method": "test"}) for name in ("bf16", "int8", "fp32-onnx")]
    auto.quick_latency(made, baseline, digits, auto.LatencyConfig())
    assert [v.name for v in made] == ["bf16"]


def test_the_quick_timing_keeps_what_is_faster_at_the_other_batch_size_than_any_near_tie(digits, monkeypatch):
    """Any candidate left in the race may be chosen (a near-tie goes to the best balance), so the fastest at batch
    1 stays when it is faster there than the slowest of them, not only than the leader: routed with whichever
    is chosen, it serves batch 1."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"leader": 3.0, "near-tie": 2.9, "fast-at-1": 1.5, "slow": 1.0},
              1: {"leader": 4.0, "near-tie": 3.5, "fast-at-1": 4.2, "slow": 1.1}}
    monkeypatch.setattr(auto, "quick_ratios", lambda variants, base, data, config, batch=256, **kw:
                        {id(v): speeds[batch][v.name] for v in variants})
    made = [Variant(name, model, {"method": "test"}) for name in speeds[256]]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    # 4.2 is 1.05x the leader's 4.0 at batch 1, but 1.2x the near-tie's 3.5
    assert [v.name for v in made] == ["leader", "near-tie", "fast-at-1"] and [c["name"] for c in cut] == ["slow"]
    speeds[1]["near-tie"] = 3.9   # now within 1.1x of every candidate in the race
    made = [Variant(name, model, {"method": "test"}) for name in speeds[256]]
    auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["leader", "near-tie"]


def test_the_quick_timing_keeps_the_smaller_of_two_partners_as_fast(digits, monkeypatch):
    """The fastest at batch 1 and a smaller file within the near-tie of it there both stay: the route then takes
    the smaller (`route_by_batch`), instead of whichever of the two the quick timing's noise put first."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"leader": 3.0, "fp32": 1.5, "twin": 1.5, "slow": 1.0},
              1: {"leader": 2.0, "fp32": 4.2, "twin": 4.0, "slow": 1.1}}
    sizes = {"leader": 10, "fp32": 300, "twin": 100, "slow": 50}
    monkeypatch.setattr(auto, "quick_ratios", lambda variants, base, data, config, batch=256, **kw:
                        {id(v): speeds[batch][v.name] for v in variants})
    made = [Variant(name, model, {"method": "test"}, measurements={"size_bytes": sizes[name]}) for name in speeds[256]]
    auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["leader", "fp32", "twin"]
    speeds[1]["twin"] = 3.0  # no longer as fast
    made = [Variant(name, model, {"method": "test"}, measurements={"size_bytes": sizes[name]}) for name in speeds[256]]
    auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["leader", "fp32"]


def test_the_quick_timing_times_again_what_it_cannot_tell_apart_at_the_other_batch_size(digits, monkeypatch):
    """Three short rounds at batch 1 may put a candidate in the race ahead of a faster one out of it (a signals MLP's
    unpruned int8 graph ahead of its factorized int8-weights graph): the candidates within QUICK_ERROR of the
    fastest there are timed again together over CONFIRM_ROUNDS rounds, and the longer reading decides which
    stays to serve batch 1."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"leader": 4.8, "unpruned": 3.5, "factorized": 2.5, "slow": 1.0},
              1: {"leader": 5.7, "unpruned": 6.2, "factorized": 6.0, "slow": 1.1}}
    longer = {"leader": 5.7, "unpruned": 6.2, "factorized": 6.9}   # the confirming timing's reading at batch 1
    asked = []

    def quick(variants, base, data, config, batch=256, rounds=3):
        asked.append((batch, rounds, sorted(v.name for v in variants)))
        table = longer if rounds == auto.CONFIRM_ROUNDS else speeds[batch]
        return {id(v): table[v.name] for v in variants}

    monkeypatch.setattr(auto, "quick_ratios", quick)
    made = [Variant(name, model, {"method": "test"}) for name in speeds[256]]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["leader", "unpruned", "factorized"] and [c["name"] for c in cut] == ["slow"]
    assert asked[-1] == (1, auto.CONFIRM_ROUNDS, ["factorized", "leader", "unpruned"])   # not the slow one
    assert made[2].measurements["_quick_b1"] == 6.9
    # with the first reading standing (the longer one agrees), 6.0 is under 1.1 x the leader's 5.7: it leaves
    longer["factorized"] = 6.0
    made = [Variant(name, model, {"method": "test"}) for name in speeds[256]]
    auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["leader", "unpruned"]
    # nothing out of the race near the fastest at batch 1: no second timing
    asked.clear()
    speeds[1]["factorized"] = 2.0
    made = [Variant(name, model, {"method": "test"}) for name in speeds[256]]
    auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert asked and all(rounds == 3 for _, rounds, _ in asked)


def test_one_row_far_outside_the_data_does_not_change_the_others_in_dynamic_int8(digits):
    """Dynamic int8 takes each call's activation scale from its largest value; the graph clamps its input to the
    training range (widened by 10%), so a row multiplied by 1,000 leaves the other rows' answers as they were."""
    from compress import get_method
    from compress.export import run_onnx
    from compress.layout import clamp_input
    from trainers import TrainConfig, train

    model = train(digits, "mlp", TrainConfig(epochs=2, device="cpu"), progress=False).model
    [variant] = get_method("int8-dynamic", model).func(model, digits)
    assert any("clamped to the training range" in note for note in variant.notes)
    x = np.ascontiguousarray(digits.x_test[:200], np.float32)
    alone = run_onnx(variant.onnx_bytes, x)
    spoiled = x.copy()
    spoiled[0] *= 1000
    others = run_onnx(variant.onnx_bytes, spoiled)[1:]
    np.testing.assert_array_equal(others.argmax(1), alone[1:].argmax(1))
    np.testing.assert_allclose(others, alone[1:], atol=0.25)    # the scale of the training data's own extremes
    from compress.export import export_onnx

    ranged = clamp_input(export_onnx(model, digits), np.zeros((1, *x.shape[1:]), np.float32))  # range 0: +-0.1
    assert np.abs(run_onnx(ranged, x) - run_onnx(ranged, np.clip(x, -0.1, 0.1))).max() < 1e-5


def test_log_loss_is_measured_and_flattened_probabilities_are_noted(digits):
    """Top-1 agreement cannot see probabilities that flattened: each row's test log-loss is measured, and a
    variant whose log-loss rose 1.5 times the original's says so in its notes."""
    from sklearn.metrics import log_loss as reference

    from compress.auto import baseline_variant
    from compress.base import Variant
    from compress.measure import compare_to_baseline, evaluate, log_loss
    from trainers import TrainConfig, train

    logits = np.random.default_rng(0).normal(size=(50, 4))
    labels = np.arange(50) % 4
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert log_loss(logits, labels) == pytest.approx(reference(labels, softmax, labels=range(4)), rel=1e-9)
    model = train(digits, "mlp", TrainConfig(epochs=2, device="cpu"), progress=False).model
    baseline = baseline_variant(model)
    logits = evaluate(baseline, digits)
    assert baseline.measurements["log_loss"] == pytest.approx(log_loss(logits, digits.y_test))
    flat = Variant(name="flat", model=model, recipe={"method": "flat"}, measurements=dict(baseline.measurements))
    flat.measurements["log_loss"] = 2 * baseline.measurements["log_loss"] + 0.1
    classes = logits.argmax(1)
    for v in (baseline, flat):
        v.measurements["latency_ms"] = {s: {"p50": 1.0} for s in ("b1_t1", "b256_t1", "b1_tall", "b256_tall")}
    compare_to_baseline(flat, baseline, 0.5, 0.97, classes, classes)
    assert any("probabilities fit the test labels worse" in note for note in flat.notes)


def test_the_quick_timing_compares_speeds_at_the_other_batch_size_from_one_timing(digits, monkeypatch):
    """Each quick speed-up is a ratio to the original in its own timing. A leader timed alone at batch 1 (to see it
    is not slower than the original there) on a busy moment may read 1.5-2x high, and an fp32 graph really faster than
    it at batch 1 then read "behind the fastest there" and left: the readings compared must come from one timing."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"leader": 3.0, "fp32-onnx": 1.0}, 1: {"leader": 5.0, "fp32-onnx": 6.0}}
    timings = []

    def quick(variants, base, data, config, batch=256, **kw):
        timings.append(batch)
        scale = 2.0 if timings.count(1) == 1 and batch == 1 else 1.0   # the original slow in the first timing there
        return {id(v): speeds[batch][v.name] * scale for v in variants}

    monkeypatch.setattr(auto, "quick_ratios", quick)
    made = [Variant(name, model, {"method": "test"}) for name in ("leader", "fp32-onnx")]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["leader", "fp32-onnx"] and cut == []
    assert made[0].measurements["_quick_b1"] == 5.0   # read again with the others


def test_the_quick_timing_keeps_each_raced_weights_own_fastest_graph_at_batch_1(digits, monkeypatch):
    """A route pairs graphs holding the same weights: a factorized choice can serve batch 1 only through a
    factorized graph. Measured against the fastest graph of all at batch 1 (an unfactorized int8 graph), the
    factorized fp32 graph left, and a 40-feature CNN's factorized choice read 0.94x a peer at batch 1."""
    import compress.auto as auto
    from compress.checks import tiny_model

    model = tiny_model("mlp")
    baseline = auto.baseline_variant(model)
    speeds = {256: {"lowrank-int8": 2.0, "int8": 1.9, "lowrank-fp32": 1.0},
              1: {"lowrank-int8": 1.0, "int8": 2.0, "lowrank-fp32": 1.9}}
    monkeypatch.setattr(auto, "quick_ratios", lambda variants, base, data, config, batch=256, **kw:
                        {id(v): speeds[batch][v.name] for v in variants})
    chain = lambda last: {"method": "chain", "steps": [{"method": "lowrank"}, {"method": last}]}  # noqa: E731
    made = [Variant("lowrank-int8", model, chain("int8-static")), Variant("int8", model, {"method": "int8-static"}),
            Variant("lowrank-fp32", model, chain("onnx-fp32"))]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["lowrank-int8", "int8", "lowrank-fp32"] and cut == []
    # a graph of weights no longer in the race is no partner: it leaves as before
    speeds[256]["lowrank-int8"] = 1.0
    made = [Variant("lowrank-int8", model, chain("int8-static")), Variant("int8", model, {"method": "int8-static"}),
            Variant("lowrank-fp32", model, chain("onnx-fp32"))]
    cut = auto.quick_latency(made, baseline, digits, auto.LatencyConfig(), gain=auto.BY_BATCH_GAIN)
    assert [v.name for v in made] == ["int8"] and {c["name"] for c in cut} == {"lowrank-int8", "lowrank-fp32"}
