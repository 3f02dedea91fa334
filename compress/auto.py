"""`auto`: try the compressions that fit the family, measure them all, pick the fastest within budget.

The candidates come from the registry: every method with an `auto` capability that handles the family, with
each option set it returns for auto's settings (today: fp32 ONNX, int8 ONNX Runtime dynamic and static, fp16/bf16
PyTorch, structured pruning, unstructured pruning with sparse int8 storage, low-rank factorization,
distillation), and the chains of transforms and runtime methods that declare `chain` (pruned, factorized or
distilled -> ONNX fp32 / int8; a chained method aiming for agreement aims for the room the transform left,
`Screen.chained`). A new method joins auto by its registration alone.

The search is cheap first, thorough last (successive halving):
1. each candidate, as soon as it is made, is evaluated on the test split against the fidelity rule
   (`measure.judge`: accuracy within `max_drop`, top-1 agreement with the fp32 original); one that fails is
   rejected before any timing, the runtime methods are not chained onto a transform that failed, the
   same transform at a larger ratio is not tried (nor at a smaller one after a larger one passed), and a
   step that differs from an earlier one only in the options its method declares as `fallback` (int8 at
   99.5% agreement after int8 at auto's own; a pruned model fine-tuned with the original as teacher after
   the one fine-tuned on the labels) is made only when the earlier variant failed narrowly; a distillation
   far behind its teacher halfway through is given up; steps beyond that core (a smaller ratio after a larger
   one failed, a fallback after a wider miss) are made only where a step is cheap (`Exploration`); a step that
   keeps the original's speed (unstructured pruning) is not made once a candidate made before it is clearly
   faster (`OUTPACED`);
2. the survivors get a short interleaved timing at the deciding setting (`serving_batch`, 256 unless told,
   one thread); one that is clearly slower than the original, or further behind the fastest that may be
   chosen than a quick timing can misread plus the 10% near-tie (a leader whose attributions drifted, or that
   is slower than the original at the other batch size, leaves first: `Pace`), cannot be chosen and is
   rejected;
3. the rest are timed fully (`measure.measure_all`): interleaved rounds in every setting.
Rejected candidates are listed in `skipped` with their figures. Training inside the search (fine-tuning,
distillation) uses the cores other processes leave free (`free_cores`), and ONNX Runtime sessions outside
timing do not spin. `budget_seconds` ends the making of candidates when the search would overrun it.

The choice is the lowest single-thread latency at the serving batch size (256 unless `serving_batch` is 1)
among variants that pass the fidelity rule and are not slower than the fp32 original at batch 256 or batch 1
(one thread); among latencies within 10% of the fastest, the best product of the speed-ups at batch 256 and
batch 1 and the size ratio wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
from pydantic import AfterValidator, Field

from trainers.artifact import LoadedModel, ModelSpec, predict
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.options import Bool, Float, Fraction, Int, EpochsOrNone, PositiveFloat, Ratio
from trainers.progress import ProgressEvent, reporter

from .base import METHODS, Variant, check_method_options, failed_on_user_model, get_method, lineage, register_method
from .measure import (DECISIVE, MIN_AGREEMENT, NOISY_SPREAD, SERVED_THREADS, LatencyConfig, Runner,
                      compare_to_baseline, describe_fidelity, evaluate, fidelity, interleaved_rounds, judge, mark_pareto,
                      measure_all, ratio_summary, size_on_disk, torch_threads, _batch)
from .options import AccuracyPoints

OptionalRatio = Annotated[Float, Field(ge=0, lt=1)]  # 0: off
OptionalDrift = Annotated[Float, Field(ge=0, le=1)] | None
NonNegativeFloat = Annotated[Float, Field(ge=0)]


def smaller(ratio: float) -> str:
    """A size ratio (the original's bytes over the variant's) in words: "2.10x smaller", or "1.13x larger"."""
    return f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"


def accuracy_change(drop: float) -> str:
    """An accuracy drop (points below the original) in words; a negative drop is a gain, said as one."""
    return f"{-drop:.2f} points more accurate" if drop < 0 else f"{drop:.2f} points drop"


def _timed_batch(n: int) -> int:
    if n not in (1, 256):
        raise ValueError("must be 1 or 256, the batch sizes every variant is timed at")
    return n


ServingBatch = Annotated[Int, AfterValidator(_timed_batch)]

# A step's fallback (`Method.fallback`) is not made after a miss of the agreement rule by more than this. The
# teacher fine-tune of a pruned model, measured on the built-in models of signals and the 40-feature set (30%
# pruned): +1.9 to +9.9 points of agreement; it passed after a miss of 0.1 points (1-D CNN) and never after
# misses of 5.4-16 points (MLPs, LSTMs), which cost up to 4.8 s each and took the 40-feature LSTM's auto over
# 30 s. (At 20% it did pass after a miss of 5.3 points on a 40-feature MLP: `Exploration`, up to WIDE_REACH.)
FALLBACK_REACH = 0.05
# Beyond FALLBACK_REACH, up to this miss, a fallback is exploration (`Exploration`): made only where the steps
# are cheap. At 20% the teacher fine-tune passed after a miss of 5.3 points on a 40-feature MLP (96.8% agreement,
# 90.7% on the labels), whose fine-tunes take under a second.
WIDE_REACH = 0.10
# Latencies within 10% of the fastest at the deciding setting are a near-tie: there the best balance of speed
# at batch 256 and batch 1 and file size wins (`_balance`). "The smallest file wins" chose int8-dynamic (8%
# slower, 6% smaller) over int8-static on a 40-feature MLP, and ONNX Runtime's quantize_static defaults were
# 1.14x faster than the choice; "only measured noise is a tie" chose a digits CNN's int8-dynamic chain (3-5%
# faster at batch 256) over its int8-weights twin, 2x larger and 15% slower at batch 1.
LATENCY_TIE = 0.10
SLOWER_CUT = 0.8  # a quick speed-up under this: slower than the original beyond timing noise, never chosen
# A quick timing (3 short interleaved rounds) may misread a ratio of speeds by this factor. Only a candidate within
# LATENCY_TIE of the fastest can be chosen, so one that a quick timing puts OUTPACED times slower than the fastest
# that may be chosen cannot be: it leaves before the full timing, and a step whose method `keeps_speed`
# (unstructured pruning: the original's speed) is not made once such a candidate reads OUTPACED times the
# original's speed. (The cut was 2.5x before: the 40-feature LSTM's fp32 ONNX and int8-weights graphs, 0.87x and
# 0.88x against bf16's 1.62x, were timed fully and could never be chosen.)
QUICK_ERROR = 1.3
OUTPACED = (1 + LATENCY_TIE) * QUICK_ERROR
# Another variant this many times faster than the choice at the other batch size (1 or 256) is worth a line in the
# reason (`_other_batch_hint`), so the quick timing keeps the fastest there for the full timing.
OTHER_BATCH_HINT = 1.5
# With `by_batch` (auto's default), a variant that may be chosen and is this much faster than the choice at the
# other batch size serves that side (`by_batch`): one artifact, each call run by the faster of the two for its
# size. Past the near-tie: within it the choice's balance already weighed both sizes.
BY_BATCH_GAIN = 1 + LATENCY_TIE
# Partners for the other batch size this close in speed are one speed, and the smaller file serves: the pruned
# digits CNN's fp32 graph and its int8-weights twin (3.2x smaller) read 0.0124-0.0126 ms at batch 1 in three runs.
SAME_SPEED = 0.05
# The batch sizes between 1 and 256 at which the two members of a routed variant are timed to find where the
# large-batch member stops being slower (`crossover`).
CUT_SIZES = (2, 4, 8, 16, 32, 64, 128)
# A routed variant's member must be BY_BATCH_GAIN times the choice's speed at its batch size in a timing of the two
# alone (`confirmed_gain`), CONFIRM_ROUNDS interleaved rounds; the CONFIRM_TRIES fastest by the full timing are tried.
CONFIRM_ROUNDS = 9
CONFIRM_TRIES = 2
# `Exploration`: steps beyond the core are made for steps under CHEAP_STEP_S CPU seconds, within EXPLORE_SECONDS
# of the search's CPU time. Measured on the 40-feature set (one pruning step: a fine-tune of 10 epochs, 2 idle
# cores): MLP 0.9-1.5 CPU seconds after a first one of 1.9-2.0 (a warm-up; the median of the steps made
# decides), CNN 2.2-3.5, LSTM 6-12. The MLP's winning step (a retreat to 20% with the teacher) was made 13-15
# CPU seconds into its search; the CNN's seven and the LSTM's two would have cost 10 s and 4 s of wall time, and
# none passed.
CHEAP_STEP_S = 1.6
EXPLORE_SECONDS = 20.0


def plan(target, device: str = "cpu", **settings) -> list[tuple[str, dict, list[str]]]:
    """The candidate list for a model served on `device`: (method, options, methods chained on its output).

    `target` is the model (a `LoadedModel`: its family and the capabilities read from it decide), or a family
    name (its declared capabilities). `settings` are auto's options (the defaults of its signature where not
    given). Each registered method that handles the target and has an `auto` capability contributes one step
    per option set that capability returns (called with the family name and the settings, with `device` added):
    runtime methods first, then transforms, each in registration order (the built-ins in the order
    `register_builtin_methods` imports them). A transform with `chain` gets every runtime method with `chain`
    stacked on its output, where its `chain_devices` (if any) hold `device`'s type.
    """
    from . import register_builtin_methods

    register_builtin_methods()
    settings = {**METHODS.options("auto"), **check_method_options("auto", settings)}
    family = target if isinstance(target, str) else target.spec.family
    methods = sorted(METHODS.entries(target), key=lambda m: m.role != "runtime")  # stable: registration order kept
    kind = device.partition(":")[0]
    chained = [m.name for m in methods if m.role == "runtime" and m.chain and kind in (m.chain_devices or (kind,))]
    steps = []
    for method in methods:
        if method.auto is None:
            continue
        children = chained if method.role == "transform" and method.chain else []
        steps += [(method.name, options, list(children))
                  for options in method.auto(family, {**settings, "device": device})]
    return steps


def free_cores(window: float = 0.2) -> int:
    """The cores other processes leave free, measured now: over `window` seconds, the CPU time the whole machine
    spent busy (/proc/stat, Linux) less this process's own (threads still spinning after its last parallel
    work), as cores. At least one.

    A load average lags: for a minute after a burst (the training just before a pipeline's compress stage, a
    benchmark's background load) it reported a core busy that was idle, and auto ran on half the machine.
    Without /proc/stat (not Linux): the one-minute load average.
    """
    cores = os.cpu_count() or 1
    try:
        before, own = _cpu_ticks(), time.process_time()
        time.sleep(window)
        after, own = _cpu_ticks(), time.process_time() - own
        others = _busy_cores(before, after, cores) - own / window
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        others = 0.0
        with contextlib.suppress(OSError, AttributeError):
            others = os.getloadavg()[0] - 1.0
    return max(1, min(cores, round(cores - max(0.0, others))))


def _cpu_ticks() -> tuple[int, int]:
    """(idle, total) clock ticks of all CPUs since boot: the first line of /proc/stat (idle = idle + iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def _busy_cores(before: tuple[int, int], after: tuple[int, int], cores: int) -> float:
    """Cores busy on average between two `_cpu_ticks` readings."""
    idle, total = after[0] - before[0], after[1] - before[1]
    return cores * (1.0 - idle / total)


@contextlib.contextmanager
def search_threads():
    """PyTorch's thread pool sized to the free cores while the search trains and exports: threads beyond
    them wait on busy cores and slow every other thread of the pool."""
    n = free_cores()
    with torch_threads(n):
        yield n


@dataclass
class SearchBudget:
    """`seconds` for the whole search; each candidate made is expected to need `measure_s` more to time, and the
    next step as long as the median step of its method made so far (of any method before the first of its own):
    a step is not started when it would end past the budget, rather than found over it once it has run."""

    seconds: float | None
    measure_s: float
    start: float = field(default_factory=time.perf_counter)
    steps: dict = field(default_factory=dict)    # method -> wall seconds of each of its steps made

    def record(self, method: str, seconds: float) -> None:
        self.steps.setdefault(method, []).append(seconds)

    def expected(self, method: str | None) -> float:
        own = self.steps.get(method) or [t for times in self.steps.values() for t in times]
        return float(np.median(own)) if own else 0.0

    def exhausted(self, made: int, method: str | None = None) -> bool:
        return self.seconds is not None and (time.perf_counter() - self.start + (made + 1) * self.measure_s
                                             + self.expected(method)) > self.seconds


@dataclass
class Exploration:
    """Steps beyond the plan's core: a smaller pruning ratio after a larger one failed (a retreat), and a
    fallback after an agreement miss between FALLBACK_REACH and `reach`. Each is made only for a cheap step
    (its expected cost, the median CPU time of the steps of its method made so far, at most `step_seconds`)
    and while the search's CPU time so far plus that cost stays within `cpu_seconds`.

    CPU time of this process, not wall time: on a busy machine the same search takes about the same CPU time,
    so other processes do not change what auto tries. The default (no limits, FALLBACK_REACH): retreats always
    made, far fallbacks never."""

    cpu_seconds: float = math.inf
    reach: float = FALLBACK_REACH
    step_seconds: float = math.inf
    start: float = field(default_factory=time.process_time)

    def used(self) -> float:
        return time.process_time() - self.start

    def refuses(self, expected: float) -> str | None:
        """Why a step beyond the core expected to take `expected` CPU seconds is not made, or None."""
        if expected > self.step_seconds:
            return f"its method's steps take {expected:.1f} CPU seconds, over the {self.step_seconds:g} of a cheap step"
        if self.used() + expected > self.cpu_seconds:
            return (f"the search's {self.used():.1f} CPU seconds so far and this step's expected {expected:.1f} are "
                    f"over the {self.cpu_seconds:g} it explores within")
        return None


class Screen:
    """The fidelity rule applied to each candidate as soon as it is made (`__call__`: None, or why it fails)."""

    def __init__(self, baseline: Variant, data: DataBundle, max_drop: float, min_agreement: float,
                 config: LatencyConfig):
        self.data, self.max_drop, self.min_agreement, self.config = data, max_drop, min_agreement, config
        self.original, self._val_classes = baseline.model, None
        self.logits = evaluate(baseline, data, config)
        self.classes = baseline.measurements["_classes"] = self.logits.argmax(1)
        self.accuracy = baseline.measurements["accuracy"]

    def __call__(self, variant: Variant) -> str | None:
        m = variant.measurements
        m["_classes"] = evaluate(variant, self.data, self.config).argmax(1)
        m["accuracy_drop"] = round((self.accuracy - m["accuracy"]) * 100, 4)
        m["fidelity"] = fidelity(m["_classes"], self.classes, self.min_agreement)
        if judge(m, self.max_drop):
            return None
        if not m["within_budget"]:
            return f"accuracy {m['accuracy_drop']:+.2f} points below the original, over the {self.max_drop} budget"
        f = m["fidelity"]
        return (f"{describe_fidelity(f)}, under the {f['min_agreement']:.1%} required less its margin "
                f"{f['margin']:.1%}")

    def chained(self, child: str, source: LoadedModel) -> dict:
        """The options of runtime method `child` chained onto a transform's model `source`: an agreement target
        (with `source`) that keeps the chain within auto's own rule, that is what `source`'s disagreement with
        the original on the validation split leaves of 1 - `min_agreement` (never under `min_agreement`).
        Given only where it is below the method's own default (int8: 99.5%), so a chain onto a transform that
        used up the rule's room searches as before. A low-rank factorization at 99% validation agreement
        leaves int8 98%, where int8's own 99.5% put three of the signals MLP's four Gemms back in fp32."""
        default = METHODS.options(child).get("min_agreement")
        if default is None or not len(self.data.x_val):
            return {}
        if self._val_classes is None:
            self._val_classes = predict(self.original, self.data.x_val).argmax(1)
        used = 1.0 - float((predict(source, self.data.x_val).argmax(1) == self._val_classes).mean())
        target = round(max(self.min_agreement, 1.0 - max(0.0, (1.0 - self.min_agreement) - used)), 4)
        return {"min_agreement": target} if target < default else {}


def _chain(first: Variant, second: Variant, original: LoadedModel) -> Variant:
    """`second` was made from `first`'s model: one variant whose lineage lists both steps from the original."""
    recipe = {"method": "chain", "steps": [first.recipe, second.recipe]}
    second.model.spec = ModelSpec.from_dict({**second.model.spec.to_dict(), "lineage": lineage(original, recipe)})
    return Variant(name=f"{first.name}+{second.name}", model=second.model, recipe=recipe, onnx_bytes=second.onnx_bytes,
                   measurements=dict(second.measurements), notes=[*first.notes, *second.notes])


def _rejected(variant: Variant, reason: str, when: str) -> dict:
    m = variant.measurements
    return {"method": variant.recipe.get("method", variant.name), "name": variant.name,
            "reason": f"rejected {when}: {reason}", "accuracy_drop": m.get("accuracy_drop"),
            "fidelity": m.get("fidelity")}


def build_candidates(model: LoadedModel, data: DataBundle, steps, progress=None, screen: Screen | None = None,
                     budget: SearchBudget | None = None, explore: Exploration | None = None,
                     pace: Callable[[list[Variant]], tuple[Variant, float] | None] | None = None
                     ) -> tuple[list[Variant], list[dict]]:
    """Run every planned step through the registry; returns (variants, skipped).

    With `screen`, a candidate failing the fidelity rule goes to `skipped` (its figures with it) and nothing
    is chained onto it. With `budget`, steps that would overrun it are skipped, each with that reason. With
    `explore`, the steps beyond the plan's core are made only within its CPU seconds (`Exploration`). With
    `pace` (the fastest of the candidates made so far that may be chosen and its quick speed-up, `Pace`), a
    step whose method `keeps_speed` is not made once that speed-up reaches OUTPACED: it could not be chosen.
    """
    family = model.spec.family
    variants, skipped = [], []
    report = reporter(progress, "compress", len(steps) + sum(len(children) for _, _, children in steps))
    done = [0]
    made_any = [False]

    def run(name: str, source: LoadedModel, options: dict) -> list[Variant]:
        method = get_method(name)
        why = method.why_not(source)
        if why is not None:
            skipped.append({"method": name, "reason": f"'{name}' does not handle this model: {why}"})
            return []
        done[0] += 1
        if budget is not None and budget.exhausted(len(variants), name):
            skipped.append({"method": name, "options": options or None,
                            "reason": f"not tried: the search budget of {budget.seconds:g} s would be overrun"})
            return []
        report(done[0], f"auto: {name} {options or ''}".rstrip())
        tick = time.perf_counter()
        try:
            made = method.func(source, data, **options)
            made_any[0] = made_any[0] or bool(made)
            if budget is not None:
                budget.record(name, time.perf_counter() - tick)
            return made
        except ToolkitError as exc:
            skipped.append({"method": name, "options": options, "reason": str(exc)})
            return []
        except (RuntimeError, TypeError, ValueError) as exc:
            reason = failed_on_user_model(source, exc)
            if reason is None:
                raise                      # the toolkit's own models: a failure here is a bug to see
            skipped.append({"method": name, "options": options, "reason": reason})  # that candidate is passed over
            return []

    def keep(variant: Variant) -> bool:
        reason = screen(variant) if screen is not None else None
        if reason is None:
            variants.append(variant)
            return True
        skipped.append(_rejected(variant, reason, "before timing"))
        return False

    failed: list[tuple[str, dict]] = []  # transforms with a `ratio` that failed the rule or were judged unable to pass
    outcome: dict[int, float | None] = {}  # made steps: None passed, else how far it missed the agreement rule
    passed: list[tuple[str, dict]] = []  # steps whose variant passed the rule
    cost: dict[int, float] = {}  # made steps: the CPU seconds making them took
    errored: set[int] = set()  # steps that made nothing and were listed as skipped with the reason
    explore = explore or Exploration()
    for i, (name, options, children) in enumerate(steps):
        if any(j in errored for j in _fallback_sources(steps, i)):
            continue  # a fallback of a step that failed fails the same way: listed once, not made again
        weaker = next((f for f in failed if _removes_more(name, options, *f)), None)
        if weaker is not None:
            skipped.append({"method": name, "options": options or None,
                            "reason": f"not tried: {name} at ratio {weaker[1]['ratio']:g} already failed the fidelity "
                                      f"rule, and ratio {options['ratio']:g} removes more"})
            failed.append((name, options))  # hopeless: so is the same step at a larger ratio still
            continue
        stronger = next((p for p in passed if _removes_less(name, options, *p)), None) if screen is not None else None
        if stronger is not None:
            skipped.append({"method": name, "options": options or None,
                            "reason": f"not tried: {name} at ratio {stronger[1]['ratio']:g} passed the fidelity "
                                      f"rule, and ratio {options['ratio']:g} removes less"})
            continue
        why, hopeless = _no_fallback(steps, i, outcome, explore.reach) if screen is not None else (None, False)
        extra, far = _exploring(steps, i, outcome, failed) if screen is not None and why is None else (None, False)
        refused = explore.refuses(statistics.median([cost[j] for j in cost if steps[j][0] == name] or [0.0])
                                  ) if extra is not None else None
        if refused is not None:
            why, hopeless = f"{extra}, and {refused}", far
        if why is not None:
            skipped.append({"method": name, "options": options or None, "reason": f"not tried: {why}"})
            if hopeless and "ratio" in options:
                failed.append((name, options))
            continue
        lead = pace(variants) if pace is not None and variants and get_method(name).keeps_speed else None
        if lead is not None and lead[1] >= OUTPACED:
            skipped.append({"method": name, "options": options or None,
                            "reason": f"not tried: it runs at the original's speed, and a quick timing puts "
                                      f"{lead[0].name} at {lead[1]:.2f}x that (the serving batch size, one "
                                      f"thread); only a candidate within {LATENCY_TIE:.0%} of the fastest can be "
                                      f"chosen"})
            continue
        began, listed = time.process_time(), len(skipped)
        made_now = run(name, model, options)
        cost[i] = time.process_time() - began
        if not made_now and len(skipped) > listed and not skipped[-1]["reason"].startswith("not tried"):
            errored.add(i)  # refused or failed: not the search budget
        for made in made_now:
            if not keep(made) and screen is not None:
                if outcome.get(i, 1.0) is not None:  # a step passed when any of its variants did (int8's lean twin)
                    outcome[i] = min(outcome.get(i, 1.0), _agreement_miss(made))
                if "ratio" in options:
                    failed.append((name, options))
                skipped += [{"method": child, "reason": f"not chained onto {made.name}, which failed the fidelity rule"}
                            for child in children]
                continue
            outcome[i] = None
            passed.append((name, options))
            source = _chain_source(made.model)
            for child in children:
                for second in run(child, source, screen.chained(child, source) if screen is not None else {}):
                    keep(_chain(made, second, model))
    if not made_any[0] and not any("search budget" in s["reason"] for s in skipped):
        reasons = "; ".join(f"{s['method']}: {s['reason']}" for s in skipped[:3])
        raise ToolkitError(f"auto found no compression method for a {family} model" + (f" ({reasons})" if reasons else ""))
    return variants, skipped


def _chain_source(model: LoadedModel) -> LoadedModel:
    """What a chained method starts from: a transformed user module is saved as ONNX (its widths changed, the
    toolkit cannot rebuild its class) but its PyTorch module is in memory: the chained runtime method gets that
    module as an fp32 PyTorch model, as it gets a built-in family's."""
    if model.spec.runtime != "onnxruntime" or model.module is None:
        return model
    spec = dataclasses.replace(model.spec, runtime="torch", onnx=None)
    return dataclasses.replace(model, spec=spec, onnx_bytes=None, _session=None, _raw_session=None)


DRIFT_SAMPLES = 32  # held-out (validation) samples on which each candidate's attribution drift is measured


def guard_samples(data: DataBundle) -> np.ndarray:
    """The held-out samples the drift guard attributes: the first DRIFT_SAMPLES of validation (else test)."""
    return (data.x_val if len(data.x_val) else data.x_test)[:DRIFT_SAMPLES]


def drift_guard(model: LoadedModel, variant: Variant, data: DataBundle, max_drift: float | None = None,
                reference=None) -> dict:
    """Measure how far `variant`'s attributions moved from the original's (`explain.attribution_drift`, a fast
    deterministic method on held-out samples); a drifted candidate gets a note and is never chosen. `reference`:
    the original's attribution of `guard_samples(data)` (`explain.compare.original_attribution`), computed once
    for every candidate by `drift_check`."""
    from explain import attribution_drift

    from .export import ort_session

    candidate = variant.model
    if variant.onnx_bytes is not None and candidate.path is None:   # not saved yet: its session from the bytes
        candidate = dataclasses.replace(candidate, _session=ort_session(variant.onnx_bytes))
    drift = attribution_drift(model, candidate, guard_samples(data), max_drift=max_drift, reference=reference)
    variant.measurements["attribution_drift"] = drift
    if drift["status"] == "drifted":
        variant.notes.append(f"attributions drifted ({drift['method']}, {drift['samples']} held-out samples): "
                             f"{'; '.join(drift['decided_by'])}: not chosen")
    return drift


def drift_check(model: LoadedModel, data: DataBundle, settings: dict | None) -> Callable[[Variant], bool] | None:
    """`drift_guard` as a test (True: the variant's attributions drifted), or None when auto's `drift_guard_on`
    is off (`settings`: auto's options as given). A variant checked once is not checked again; the original is
    attributed once, at the first check, for all of them."""
    from explain import original_attribution

    settings = {**METHODS.options("auto"), **(settings or {})}
    if not settings["drift_guard_on"]:
        return None
    reference = []

    def drifted(variant: Variant) -> bool:
        if "attribution_drift" not in variant.measurements:
            if not reference:
                reference.append(original_attribution(model, guard_samples(data)))
            drift_guard(model, variant, data, settings["max_drift"], reference=reference[0])
        return _drifted(variant)
    return drifted


def guard_candidates(model: LoadedModel, variants: list[Variant], data: DataBundle, settings: dict,
                     baseline: Variant, max_drop: float, batch: int = 256, by_batch: bool = False) -> None:
    """`drift_guard` on the variant `choose` would pick, then, while the pick drifted, on the next pick, until a
    pick keeps its attributions or none is left; unless auto's `drift_guard_on` is off (`settings`: auto's
    options as given). Only a pick is checked: each check is an attribution pass of the original and the
    candidate, 2.5-4 s per candidate on an LSTM, 12 s for the four candidates that were then not chosen."""
    drifted = drift_check(model, data, settings)
    if drifted is None:
        return
    while True:
        pick, _ = choose(baseline, variants, max_drop, batch, by_batch)
        if pick is baseline or "attribution_drift" in pick.measurements:
            return
        drifted(pick)


def _drifted(v: Variant) -> bool:
    return (v.measurements.get("attribution_drift") or {}).get("status") == "drifted"


def _no_fallback(steps, i: int, outcome: dict[int, float | None], reach: float = FALLBACK_REACH
                 ) -> tuple[str | None, bool]:
    """(why, hopeless): why step `i`, a fallback of earlier steps (they differ from it only in its method's
    `fallback` options), is not made: one of them passed, or missed the agreement rule by more than `reach`
    (then the step counts as failed: `hopeless`); (None, False) when it is not a fallback or neither holds."""
    name = steps[i][0]
    earlier = _fallback_sources(steps, i)
    label = lambda j: f"{name} with {steps[j][1] or 'its defaults'}"  # noqa: E731
    for j in earlier:
        if j in outcome and outcome[j] is None:
            return f"{label(j)} passed the fidelity rule; these options are its fallback", False
        if outcome.get(j) and outcome[j] > reach:
            return (f"{label(j)} missed the agreement rule by {outcome[j]:.1%}, more than a fallback recovers "
                    f"({reach:.0%})"), True
    return None, False


def _exploring(steps, i: int, outcome: dict[int, float | None], failed: list[tuple[str, dict]]
               ) -> tuple[str | None, bool]:
    """(why, far): why step `i` is beyond the plan's core (`Exploration`), or None: a smaller ratio than one of
    its method that failed (differing in nothing else but fallback options), or a fallback after an agreement
    miss over FALLBACK_REACH (`far`: not made, it counts as failed, as a fallback past the reach does)."""
    name, options = steps[i][0], steps[i][1]
    larger = next((f for f in failed if _removes_less(name, options, *f)), None)
    if larger is not None:
        return f"a retreat to ratio {options['ratio']:g} after ratio {larger[1]['ratio']:g} failed", False
    far = [j for j in _fallback_sources(steps, i) if (outcome.get(j) or 0.0) > FALLBACK_REACH]
    if far:
        return (f"a fallback after a miss of the agreement rule by {outcome[far[0]]:.1%}, over {FALLBACK_REACH:.0%}",
                True)
    return None, False


def _fallback_sources(steps, i: int) -> list[int]:
    """The earlier steps that step `i` is a fallback of (`_fallback_of`)."""
    name, options = steps[i][0], steps[i][1]
    return [j for j in range(i) if _fallback_of(name, options, steps[j][0], steps[j][1])]


def _agreement_miss(variant: Variant) -> float:
    """How far a screened variant's agreement is under what the rule requires (0: not under, or not judged)."""
    f = variant.measurements.get("fidelity")
    return max(0.0, f["min_agreement"] - f["margin"] - f["agreement"]) if f else 0.0


def _differing(options: dict, other: dict) -> set[str]:
    """The option names whose values differ between two steps' options (absent counts as a value)."""
    return {k for k in options.keys() | other.keys() if options.get(k) != other.get(k)}


def _fallback_of(name: str, options: dict, earlier_name: str, earlier_options: dict) -> bool:
    """The step (`name`, `options`) differs from an earlier one only in options its method declares as
    `fallback`: it is that step's fallback."""
    keys = set(get_method(name).fallback)
    if name != earlier_name or not keys or options == earlier_options:
        return False
    return _differing(options, earlier_options) <= keys


def _removes_less(name: str, options: dict, other_name: str, other_options: dict) -> bool:
    """The step has a smaller `ratio` than another of its method, and differs from it in nothing else but the
    method's `fallback` options. After one that passed, it is not worth making; after one that failed, it is a
    retreat (`_exploring`)."""
    if name != other_name or "ratio" not in options or "ratio" not in other_options:
        return False
    keys = set(get_method(name).fallback) | {"ratio"}
    return _differing(options, other_options) <= keys and options["ratio"] < other_options["ratio"]


def _removes_more(name: str, options: dict, failed_name: str, failed_options: dict) -> bool:
    """The step (`name`, `options`) differs from a failed one only by a larger `ratio`: it removes more of the
    original and is not expected to keep more of its predictions, so it is not tried."""
    if name != failed_name or "ratio" not in options or "ratio" not in failed_options:
        return False
    return _differing(options, failed_options) <= {"ratio"} and options["ratio"] > failed_options["ratio"]


def quick_latency(variants: list[Variant], baseline: Variant, data: DataBundle, config: LatencyConfig,
                  drifted: Callable[[Variant], bool] | None = None, batch: int = 256,
                  gain: float = OTHER_BATCH_HINT) -> list[dict]:
    """A short interleaved timing at the deciding setting (`batch`, one thread); the variants that cannot be
    chosen leave `variants` (in place) and are returned as `skipped` entries.

    The yardstick for "too far behind" is the fastest candidate that can be chosen (`Pace`): a leader whose
    attributions drifted (with `drifted`, the drift guard as a test) or that is slower than the original at the
    other batch size leaves first. The fastest at the other batch size stays when it is `gain` times the
    speed there of the slowest candidate left in the race (`Pace.best_elsewhere`; OTHER_BATCH_HINT, or
    BY_BATCH_GAIN where auto routes by batch size): it cannot be chosen at this one, but it may serve the other
    side of a routed variant (`by_batch`), and the reason names it (an LSTM's int8 ONNX Runtime graph at
    batch 1, 3x its bf16 choice).
    """
    if not variants:
        return []
    ratios = quick_ratios(variants, baseline, data, config, batch)
    rejected = []
    pace = Pace(baseline, data, config, drifted, batch)
    lead = pace.leader(variants, ratios, drop=rejected)
    best = lead[1] if lead is not None else 0.0
    slower = {id(v) for v in variants if ratios[id(v)] < SLOWER_CUT}
    outpaced = {id(v) for v in variants if id(v) not in slower and ratios[id(v)] * OUTPACED < best}
    # any of those left in the race may be chosen (a near-tie goes to the best balance of speed and size), so the
    # fastest at the other batch size stays when it is `gain` times the slowest of them there
    racing = [v for v in variants if id(v) not in slower | outpaced]
    spares = pace.best_elsewhere(variants, racing, gain) if outpaced else []  # timed only when something is cut
    kept = {id(v) for v in spares}
    other = f"_quick_b{pace.other}"
    top = max((v.measurements[other] for v in variants if other in v.measurements), default=None)
    for v in list(variants):
        ratio = ratios[id(v)]
        # where the other batch size was timed, why this one did not stay to serve that side (relative figures)
        there = ("" if other not in v.measurements else
                 f"; at batch {pace.other} {top / v.measurements[other]:.2f}x behind the fastest there, not kept "
                 "for that side" if v.measurements[other] < top else
                 f"; the fastest at batch {pace.other}, but not {gain:.2f}x the candidates left there")
        why = (f"a quick timing puts it at {ratio:.2f}x the original's speed (batch {batch}, one thread): slower"
               if id(v) in slower else
               # relative to the leader: a few calls of the original read its speed less surely than the two
               # candidates' ratio (quoted against the original, 30.75x where the full timing read 10.35x)
               f"a quick timing (batch {batch}, one thread) puts it {best / ratio:.2f}x behind the fastest candidate "
               f"that may be chosen, beyond the {OUTPACED:.2f}x a quick timing may misread{there}"
               if id(v) in outpaced - kept
               else None)
        if why:
            variants.remove(v)
            rejected.append(_rejected(v, why, "after a quick timing"))
    return rejected


def quick_ratios(variants: list[Variant], baseline: Variant, data: DataBundle, config: LatencyConfig,
                 batch: int = 256, rounds: int = 3) -> dict[int, float]:
    """A short interleaved timing (one thread, CPU clock, `rounds` rounds of up to 20 ms and 20 calls each per
    variant, at most a third of `config`'s budget over 3 rounds) of `variants` against `baseline` at `batch`: each
    one's speed-up over it (the median of per-round ratios), by `id`."""
    quick = dataclasses.replace(config, warmup=2, min_reps=rounds, max_reps=20 * rounds,
                                budget_s=min(0.02, config.budget_s / 9) * rounds, rounds=rounds)
    return _speedups(variants, baseline, data, batch, quick)


def _speedups(variants: list[Variant], baseline: Variant, data: DataBundle, batch: int,
              timing: LatencyConfig) -> dict[int, float]:
    """Each of `variants`' speed-up over `baseline` at `batch` (one thread, CPU clock off a GPU, interleaved
    rounds of `timing`): the median of per-round ratios, by `id`."""
    runners = [Runner(v, 1, device=timing.device) for v in [baseline, *variants]]
    with torch_threads(1):
        timed = interleaved_rounds([r.raw_call() for r in runners], _batch(data.x_test, batch), timing,
                                   cpu_clock=timing.cpu_clock)
    return dict(zip(map(id, variants), (ratio_summary(timed[0]["rounds"], t["rounds"])[0] for t in timed[1:])))


@dataclass
class Pace:
    """The fastest candidate that may be chosen, by a quick timing: the yardstick of "far behind" and of a step
    that `keeps_speed`.

    Speeds are read at `batch` (the serving batch size, one thread). A leader is passed over (and, with `drop`,
    leaves the candidates) when its attributions drifted (`drifted`, the drift guard as a test: checked on
    leaders only, each an attribution pass) or when a quick timing at the other batch size (1 or 256) puts it
    clearly slower than the original there (it is never chosen). Otherwise a fast variant excluded later cuts
    the ones that would have won (a residual 1-D CNN: the 50%-pruned chain led, drifted, and took prune-30 +
    int8-static, 4.3x smaller and 5.1x faster, with it).
    """

    baseline: Variant
    data: DataBundle
    config: LatencyConfig
    drifted: Callable[[Variant], bool] | None = None
    batch: int = 256

    @property
    def other(self) -> int:
        return other_batch(self.batch)

    def __call__(self, variants: list[Variant]) -> tuple[Variant, float] | None:
        return self.leader(variants, quick_ratios(variants, self.baseline, self.data, self.config, self.batch))

    def leader(self, variants: list[Variant], ratios: dict[int, float], drop: list[dict] | None = None
               ) -> tuple[Variant, float] | None:
        for v in sorted(variants, key=lambda v: -ratios[id(v)]):
            if ratios[id(v)] < SLOWER_CUT:
                return None
            why = (v.notes[-1] if self.drifted is not None and self.drifted(v) else
                   f"a quick timing puts it at {other:.2f}x the original's speed at batch {self.other} (one thread): "
                   f"slower" if (other := self.at_other(v)) < SLOWER_CUT else None)
            if why is None:
                return v, ratios[id(v)]
            if drop is not None:
                variants.remove(v)
                drop.append(_rejected(v, why, "after a quick timing"))
        return None

    def at_other(self, variant: Variant) -> float:
        """The variant's quick speed-up at the other batch size (timed once)."""
        self._time_other([variant])
        return variant.measurements[f"_quick_b{self.other}"]

    def best_elsewhere(self, variants: list[Variant], racing: list[Variant], gain: float = OTHER_BATCH_HINT
                       ) -> list[Variant]:
        """The fastest of `variants` at the other batch size by a quick timing, when it is `gain` times the
        speed there of the slowest of `racing` (those that may still be chosen) and not slower than the original,
        and with it the smallest file of those within LATENCY_TIE of it there; and the same for each set of
        weights in the race, among the graphs holding those weights (the partners a route may pair).

        Measured against the leader alone, a 40-feature CNN's factorized int8-weights graph (1.09x the leader's
        speed at batch 1) left, and the near-tie then chose a graph 1.17x slower than it there. With the fastest
        alone, the pruned digits CNN's fp32 graph and its int8-weights twin (the same speed, 3.2x smaller) took
        turns by noise, and the routed artifact was 2.78x smaller instead of 5.3-5.7x."""
        self._time_other(variants, together=True)
        self._confirm_close(variants, racing)
        kept = self._fastest_there(variants, racing, gain)
        # a route pairs graphs of the same weights only (`route_by_batch`), so each set of weights still in the
        # race keeps its own fastest graph there too: kept against the fastest of all, a 40-feature MLP's and
        # CNN's factorized fp32 and int8-weights graphs (1.01-1.12x behind an unfactorized or pruned graph at
        # batch 1) left, no route could be made for the factorized choice, and it read 0.90-0.95x a peer there
        for weights in {_weights_key(v) for v in racing}:
            kept += self._fastest_there([v for v in variants if _weights_key(v) == weights],
                                        [v for v in racing if _weights_key(v) == weights], gain)
        return list({id(v): v for v in kept}.values())

    def _fastest_there(self, variants: list[Variant], racing: list[Variant], gain: float) -> list[Variant]:
        """The fastest of `variants` at the other batch size when it is `gain` times the slowest of `racing`
        there and not slower than the original, with the smallest file within LATENCY_TIE of it; else []."""
        speed = lambda v: v.measurements[f"_quick_b{self.other}"]  # noqa: E731
        fastest = max(variants, key=speed)
        if speed(fastest) < max(1.0, gain * min(map(speed, racing))):
            return []
        near = [v for v in variants if speed(v) * (1 + LATENCY_TIE) >= speed(fastest)]
        smallest = min(near, key=lambda v: v.measurements.get("size_bytes", math.inf))
        return [fastest] if smallest is fastest else [fastest, smallest]

    def _confirm_close(self, variants: list[Variant], racing: list[Variant]) -> None:
        """Those within QUICK_ERROR of the fastest at the other batch size, timed again there together over
        CONFIRM_ROUNDS rounds when one of them is out of the race (it leaves unless it is the fastest there).
        Three rounds of 20 calls at batch 1 (tens of microseconds each) once put a signals MLP's unpruned int8
        graph, in the race, ahead of its factorized int8-weights graph, 1.2x faster there in 15 other searches:
        the latter left, no route was made, and the choice was 0.96x a peer's speed at batch 1."""
        key = f"_quick_b{self.other}"
        top = max(v.measurements[key] for v in variants)
        close = [v for v in variants if v.measurements[key] * QUICK_ERROR >= top]
        if len(close) < 2 or {id(v) for v in close} <= {id(v) for v in racing}:
            return
        ratios = quick_ratios(close, self.baseline, self.data, self.config, self.other, rounds=CONFIRM_ROUNDS)
        for v in close:
            v.measurements[key] = ratios[id(v)]

    def _time_other(self, variants: list[Variant], together: bool = False) -> None:
        """Quick speed-ups at the other batch size, in one interleaved timing, of those not timed there yet, or
        (`together`) of all of them. Each is a ratio to the original in its own timing, so only readings of one
        timing compare: a leader timed alone at batch 1 (`at_other`) read 5.35x where the others, timed
        together, read 6.7-7.3x; on a loaded machine a 40-feature MLP's fp32 graph then read 1.51x behind the
        fastest at batch 1 while it was 1.17x ahead of the choice there, and it left (the choice shipped 1.09x
        slower at batch 1 than a user's own export in ONNX Runtime)."""
        key = f"_quick_b{self.other}"
        new = [v for v in variants if together or key not in v.measurements]
        if new:
            ratios = quick_ratios(new, self.baseline, self.data, self.config, self.other)
            for v in new:
                v.measurements[key] = ratios[id(v)]


def other_batch(batch: int) -> int:
    """The other of the two batch sizes every variant is timed at (1 and 256)."""
    return 256 if batch == 1 else 1


def _timing_threads(config: LatencyConfig, notes: list[str]) -> LatencyConfig:
    """The all-threads settings timed with the cores free now, not every core: a thread pool larger than the
    free cores waits on busy ones (with one other process running, a batch-1 call on two threads took 50x its
    one-thread time and one LSTM's timing 4x as long), which measures the other processes, not the variant."""
    cores, free = config.all_threads, free_cores()
    if free >= cores:
        return config
    notes.append(f"the all-threads settings timed with {free} thread(s), the cores free when timing began "
                 f"({cores} on this machine)" + ("; with one, they are the one-thread settings, timed once"
                                                  if free == 1 else ""))
    return dataclasses.replace(config, threads_all=free)


def search(model: LoadedModel, data: DataBundle, steps, baseline: Variant, *, max_drop: float,
           min_agreement: float = MIN_AGREEMENT, budget_seconds: float | None = None,
           config: LatencyConfig | None = None, progress=None, start: float | None = None,
           guard: dict | None = None, explore_seconds: float = math.inf, batch: int = 256, by_batch: bool = False):
    """Make, screen and quickly time auto's candidates; returns (variants, skipped, notes). The survivors
    are evaluated (accuracy, agreement) but not yet timed; `baseline` is evaluated too. `guard`: auto's
    drift options (`drift_check`), applied to the quick timing's leaders. `explore_seconds`: the CPU seconds
    within which steps beyond the plan's core are made (`Exploration`). `batch`: the serving batch size, where
    the quick timings read speed. `by_batch`: the fastest at the other batch size stays for the full timing when
    it is BY_BATCH_GAIN times the leader's speed there (it may serve that side: `by_batch`)."""
    config = config or LatencyConfig()
    budget = SearchBudget(budget_seconds, measure_s=4 * config.budget_s + 0.1,
                          start=start if start is not None else time.perf_counter())
    drifted = drift_check(model, data, guard)
    with search_threads() as threads:
        screen = Screen(baseline, data, max_drop, min_agreement, config)
        explore = Exploration(explore_seconds, WIDE_REACH, CHEAP_STEP_S)
        variants, skipped = build_candidates(model, data, steps, progress, screen, budget, explore,
                                             Pace(baseline, data, config, drifted, batch))
    skipped += quick_latency(variants, baseline, data, config, drifted, batch,
                             BY_BATCH_GAIN if by_batch else OTHER_BATCH_HINT)
    skipped = [*already_quantized(model), *skipped]
    notes = [f"candidates made with {threads} PyTorch thread(s), the cores free when the search began"]
    over = [s for s in skipped if "search budget" in s["reason"]]
    if over:
        notes.append(f"the search budget of {budget_seconds:g} s ran out: {len(over)} candidate step(s) not tried; "
                     f"the choice is the best of those made")
    return variants, skipped, notes


def already_quantized(model: LoadedModel) -> list[dict]:
    """Skipped entries for the methods auto would try that refuse an already quantized graph (`plan` leaves out
    every method the model's tags exclude): saying why keeps an int8 graph's search from looking as if int8
    had been forgotten."""
    from trainers.models import capabilities

    if "quantized" not in capabilities(model):
        return []
    return [{"method": m.name, "reason": f"'{m.name}' does not handle this model: {m.why_not(model)}"}
            for m in METHODS.entries() if m.auto is not None and "quantized" in m.excludes]


def settle(model: LoadedModel, data: DataBundle, variants: list[Variant], baseline: Variant, *, max_drop: float,
           min_agreement: float, config: LatencyConfig, notes: list[str], progress=None, guard: dict | None = None,
           batch: int = 256, by_batch: bool = False) -> tuple[Variant, str]:
    """Time every candidate fully (the all-threads settings with the cores free now, `_timing_threads`), check
    the attributions of the pick (`guard_candidates`; `guard`: auto's drift options, None: no check) and
    choose at the serving `batch`; returns (chosen, reason). `auto` and `compress_model` both end here.
    `by_batch`: where another variant is BY_BATCH_GAIN times faster than the choice at the other batch size, the
    choice is the two routed by batch size (`by_batch`), added to `variants`."""
    config = _timing_threads(config, notes)
    measure_all(variants, baseline, data, max_drop, config, progress, min_agreement)
    if guard is not None:
        guard_candidates(model, variants, data, guard, baseline, max_drop, batch, by_batch)
    chosen, reason = choose(baseline, variants, max_drop, batch, by_batch)
    if not by_batch or chosen is baseline:
        return chosen, reason
    found = route_by_batch(model, data, chosen, variants, baseline, max_drop=max_drop, min_agreement=min_agreement,
                           config=config, batch=batch, drifted=drift_check(model, data, guard) if guard else None)
    if found is None:
        return chosen, reason
    routed, why = found
    variants.append(routed)
    mark_pareto([baseline, *variants])
    # what ships is both files, whose size `why` gives: the large member's alone would read as the artifact's
    reason = reason.replace(f", {smaller(chosen.measurements['size_ratio'])},", ",", 1)
    return routed, f"{why}; {reason}"


def choose(baseline: Variant, variants: list[Variant], max_drop: float, batch: int = 256,
           by_batch: bool = False) -> tuple[Variant, str]:
    """The fastest variant at `batch` (one thread) passing the fidelity rule (`measure.judge`) that is not
    slower than fp32; else the baseline. A user's ONNX graph re-saved is chosen only when it is LATENCY_TIE
    faster than the graph as given (`_resaved_without_gain`).

    Among the variants whose single-thread p50 at `batch` is within `LATENCY_TIE` of the fastest, the best
    balance of speed at batch 256 and batch 1 and size wins (`_balance`): a difference that small at batch 256
    is worth less than a file half the size or a batch-1 call 15% faster. With `by_batch` (the choice will be
    routed by batch size where another variant is faster at the other one), a variant's speed at the other batch
    size counts as at least the fastest eligible one's there: the route serves that side. Counted as its own,
    a 40-feature CNN told it serves batch 1 chose its factorized int8 graph for its speed at batch 256, 7% slower
    at batch 1 than its int8-weights twin, and read 0.94x ORT's quantize_static there.
    """
    setting = f"b{batch}_t1"
    eligible = _eligible(variants)
    drifted = [v for v in eligible if _drifted(v)]
    eligible = [v for v in eligible if not _drifted(v)]
    excluded = f"; {len(drifted)} excluded: attributions drifted ({', '.join(v.name for v in drifted)})" if drifted else ""
    resaved = [v for v in eligible if _resaved_without_gain(v, baseline, setting)]
    eligible = [v for v in eligible if all(v is not r for r in resaved)]
    excluded += "".join(f"; {v.name} excluded: the given graph re-saved, {v.measurements['speedup'][setting]:.2f}x "
                        f"its speed at batch {batch}, "
                        + ("a timing too noisy to count as a gain" if _noisy(v, setting) else
                           f"within the {LATENCY_TIE:.0%} tie") for v in resaved)
    if not eligible:
        return baseline, (f"no variant is within {max_drop} accuracy points, agrees with the original as required and "
                          f"is faster than the original at batch 256 and batch 1, single thread: the original is "
                          f"kept{excluded}")
    p50 = {id(v): v.measurements["latency_ms"][setting]["p50"] for v in eligible}
    leader = min(eligible, key=lambda v: p50[id(v)])
    tied = [v for v in eligible if p50[id(v)] <= p50[id(leader)] * (1 + LATENCY_TIE)]
    there = f"b{other_batch(batch)}_t1"
    reach = {there: max(v.measurements["speedup"].get(there, 0.0) for v in eligible)} if by_batch else {}
    best = max(tied, key=lambda v: (_balance(v, reach), -p50[id(v)]))
    m = best.measurements
    how = ("fastest" if best is leader else
           f"best balance of speed at batch 256 and 1 and size of the {len(tied)} within 10% of the fastest "
           f"({leader.name})")
    spread = (m.get("speedup_spread") or {}).get(setting, 0.0)
    speed = (f"timing too noisy for a speed-up at batch {batch} single thread (spread {spread:.2f} > {NOISY_SPREAD})"
             if setting in (m.get("noisy") or []) else
             f"{m['speedup'][setting]:.2f}x faster at batch {batch} single thread (spread {spread:.2f})")
    agreement = f", {describe_fidelity(m['fidelity'])}" if m.get("fidelity") else ""
    reason = (f"{how} of {len(eligible)} variants passing the fidelity rule and not slower than fp32: {speed}, "
              f"{smaller(m['size_ratio'])}, accuracy {m['accuracy']:.4f} ({accuracy_change(m['accuracy_drop'])})"
              f"{agreement}{excluded}{_other_batch_hint(best, eligible, batch)}")
    return best, reason



def _resaved_without_gain(variant: Variant, baseline: Variant, setting: str) -> bool:
    """Whether `variant` is a user's ONNX graph re-saved (`onnx-fp32` on a graph given as it is: ONNX Runtime's
    basic optimisations, which a session applies at load anyway, and the toolkit's rewrites) and not faster than
    the graph as given by more than LATENCY_TIE at `setting`. Its file is the user's graph again: within the band
    the choice reads as a tie it adds nothing, and an int8 graph's re-save was chosen at 1.00x. A timing flagged
    noisy at `setting` is no gain either: a random forest's re-save shipped on 1.10x whose reason called it
    "too noisy for a speed-up" (0.099 ms against 0.098 ms)."""
    given_graph = baseline.model is not None and baseline.model.module is None
    return (given_graph and variant.recipe.get("method") == "onnx-fp32"
            and (variant.measurements["speedup"][setting] < 1 + LATENCY_TIE or _noisy(variant, setting)))


def _noisy(variant: Variant, setting: str) -> bool:
    """Whether `variant`'s timing at `setting` is flagged too noisy for its speed-up to be read."""
    return setting in (variant.measurements.get("noisy") or [])


def _eligible(variants: list[Variant]) -> list[Variant]:
    """The variants the choice may take, drifted ones included: within budget, keeping the agreement rule, not
    slower than fp32 at either batch size."""
    return [v for v in variants if v.measurements["within_budget"] and not v.measurements["slower_than_fp32"]
            and not v.measurements.get("flips")]


def route_by_batch(model: LoadedModel, data: DataBundle, chosen: Variant, variants: list[Variant], baseline: Variant,
                   *, max_drop: float, min_agreement: float, config: LatencyConfig, batch: int = 256,
                   drifted: Callable[[Variant], bool] | None = None) -> tuple[Variant, str] | None:
    """`chosen` with the fastest eligible variant at the other batch size (1 or 256) serving that side, as one
    routed variant (`Variant.small`, `ModelSpec.serve`), when that one is BY_BATCH_GAIN times faster there than
    `chosen` and its attributions did not drift (with `drifted`), and the two files together are smaller than
    the original: (the routed variant, the reason to choose it); else None.

    An LSTM's fastest at batch 256 is bf16 PyTorch, 3x slower at batch 1 than ONNX Runtime's dynamic int8; a
    digits MLP's int8-static graph is 1.2x slower at batch 1 than its int8-weights twin. One file each made
    auto choose by the serving batch size; routed, the artifact is the fastest at both, at the cost of holding
    both models (its size ratio counts both files). The batch size where the two swap is timed (`crossover`).
    The routed variant's timings at 1 and 256 are its members' from the full timing (a routed call is the
    member's call after one length test); its accuracy and agreement are measured as it serves: the test
    split at the evaluation batch size and one sample at a time, and the worse of the two is kept.
    """
    other = other_batch(batch)
    setting = f"b{other}_t1"
    p50 = lambda v: v.measurements["latency_ms"][setting]["p50"]  # noqa: E731
    size = lambda v: v.measurements["size_bytes"]  # noqa: E731
    faster = [v for v in sorted(_eligible(variants), key=p50)
              if v is not chosen and p50(chosen) >= p50(v) * BY_BATCH_GAIN]
    other_weights = [v for v in faster if _weights_made_by(v) != _weights_made_by(chosen)]
    if other_weights:
        chosen.notes.append(f"{other_weights[0].name} is faster at batch {other} but holds other weights than this "
                            f"one: not routed (a row's answer would depend on the size of its call)")
        faster = [v for v in faster if v not in other_weights]
    if faster:  # among those as fast as the fastest there, the smallest file first
        tie = p50(faster[0]) * (1 + SAME_SPEED)
        faster = sorted((v for v in faster if p50(v) <= tie), key=size) + [v for v in faster if p50(v) > tie]
    ahead = [v for v in faster if size(chosen) + size(v) < size(baseline)][:CONFIRM_TRIES]
    if faster and not ahead:
        chosen.notes.append(f"routed with {faster[0].name} for batch {other} its two files would be "
                            f"{(size(chosen) + size(faster[0])) / size(baseline):.2f}x the original's size: not made")
    fastest = gain = None
    for candidate in ahead:
        if drifted is not None and drifted(candidate):
            continue
        gain = confirmed_gain(chosen, candidate, data, other, config)
        if gain >= BY_BATCH_GAIN:
            fastest = candidate
            break
        chosen.notes.append(f"{candidate.name} read {p50(chosen) / p50(candidate):.2f}x this one's speed at batch "
                            f"{other} in the full timing, {gain:.2f}x in a longer one: not routed")
    if fastest is None:
        return None
    small, large = (fastest, chosen) if other == 1 else (chosen, fastest)
    below = crossover(small, large, data, config.device)
    routed = _routed(model, small, large, below)
    m = routed.measurements
    for key in ("latency_ms", "rounds_ms"):
        m[key] = {s: (small if s.startswith("b1_") else large).measurements[key][s] for s in large.measurements[key]}
    runner = Runner(routed, SERVED_THREADS, device=config.device)
    x_test = np.ascontiguousarray(data.x_test, dtype=np.float32)
    original = baseline.measurements.get("_classes")
    if original is None:
        original = baseline.measurements["_classes"] = evaluate(baseline, data, config).argmax(1)
    served = [runner.predict(x_test).argmax(1), runner.predict(x_test, batch=1).argmax(1)]
    checks = [(fidelity(c, original, min_agreement), float((c == data.y_test).mean())) for c in served]
    m["fidelity"], m["accuracy"] = min(checks, key=lambda c: (c[0]["agreement"], c[1]))
    m.update({"runtime": large.measurements["runtime"], "size_bytes": size_on_disk(routed),
              "parameters": large.measurements.get("parameters"), "threads": dict(large.measurements["threads"]),
              "device": large.measurements.get("device"), "provider": large.measurements.get("provider")})
    compare_to_baseline(routed, baseline, max_drop, min_agreement)
    if not (m["within_budget"] and not m["flips"]):
        chosen.notes.append(f"routed with {fastest.name} for batch {other} it would not keep the fidelity rule as it "
                            f"serves ({describe_fidelity(m['fidelity'])}): not made")
        return None
    routed.notes.append(f"answers calls of fewer than {below} rows with {small.name} and the rest with {large.name}: "
                        f"{gain:.2f}x faster at batch {other} than {chosen.name} alone (a confirming timing), "
                        f"{smaller(m['size_ratio'])} than the original with both files")
    routed.notes.append(member_agreement(small, large, data, config, below))
    return routed, (f"{large.name} for batches of {below} rows and more, {small.name} below: "
                    f"{m['speedup']['b256_t1']:.2f}x faster than fp32 at batch 256 and {m['speedup']['b1_t1']:.2f}x "
                    f"at batch 1 (single thread), {smaller(m['size_ratio'])} with both files, "
                    f"{describe_fidelity(m['fidelity'])} as it serves")


def member_agreement(small: Variant, large: Variant, data: DataBundle, config: LatencyConfig, below: int) -> str:
    """A note: how often a routed variant's two members give a test row different classes. They hold the same
    weights, but their arithmetic may differ (int8 activations against fp32), so a row served in a call under
    `below` rows may get the other member's answer (`toolkit predict` serves a whole file by its --batch-size)."""
    x_test = np.ascontiguousarray(data.x_test, dtype=np.float32)
    classes = [v.measurements.get("_classes") for v in (small, large)]  # each one's test classes, where measured
    classes = [c if c is not None else Runner(v, SERVED_THREADS, device=config.device).predict(x_test).argmax(1)
               for c, v in zip(classes, (small, large))]
    differ, n = int((classes[0] != classes[1]).sum()), len(classes[0])
    return (f"its two members give the same class on {100 * (n - differ) / max(n, 1):.1f}% of the {n} test rows "
            f"({differ} differ): a row served in a call under {below} rows may get {small.name}'s answer where "
            f"a larger call gives {large.name}'s")


def _weights_made_by(variant: Variant) -> list[dict]:
    """The recipes of the steps that changed `variant`'s weights (its transforms: pruning, factorization,
    distillation), [] for the original's weights in another runtime. Routed partners must share them: an iris
    MLP routed between two differently pruned models gave row 18 one class alone and another in a call of 256."""
    recipe = variant.recipe or {}
    steps = recipe.get("steps", [recipe]) if recipe.get("method") == "chain" else [recipe]
    return [step for step in steps if step.get("method") in METHODS and get_method(step["method"]).role == "transform"]


def _weights_key(variant: Variant) -> str:
    """`_weights_made_by` as a key: variants with equal keys hold the same weights and may be routed together."""
    return json.dumps(_weights_made_by(variant), sort_keys=True, default=str)


def confirmed_gain(chosen: Variant, candidate: Variant, data: DataBundle, batch: int, config: LatencyConfig) -> float:
    """How many times faster `candidate` is than `chosen` at `batch` (one thread): the median of per-round ratios of
    an interleaved timing of the two alone, CONFIRM_ROUNDS rounds. The full timing's p50s of a dozen variants at
    batch 1 (tens of microseconds a call) misread a tie as a 10% gain: a 40-feature MLP was routed to an unpruned
    int8 graph for batch 1 at 1.45x smaller, and measured 7% slower there than its choice."""
    timing = dataclasses.replace(config, warmup=5, min_reps=CONFIRM_ROUNDS * 3, max_reps=CONFIRM_ROUNDS * 40,
                                 budget_s=max(config.budget_s, 0.2), rounds=CONFIRM_ROUNDS)
    return _speedups([candidate], chosen, data, batch, timing)[id(candidate)]


def crossover(small: Variant, large: Variant, data: DataBundle, device: str = "cpu") -> int:
    """The first of CUT_SIZES at which `large` is not slower than `small` by a short interleaved timing (one
    thread, the median of 3 rounds, on `device`); 256 when `small` is faster at every one of them."""
    quick = LatencyConfig(warmup=2, min_reps=3, max_reps=30, budget_s=0.03, rounds=3, device=device)
    calls = [Runner(small, 1, device=device).raw_call(), Runner(large, 1, device=device).raw_call()]
    with torch_threads(1):
        for n in CUT_SIZES:
            t_small, t_large = interleaved_rounds(calls, _batch(data.x_test, n), quick, cpu_clock=quick.cpu_clock)
            if statistics.median(t_large["rounds"]) <= statistics.median(t_small["rounds"]):
                return n
    return 256


def _routed(model: LoadedModel, small: Variant, large: Variant, below: int) -> Variant:
    """One variant: `large` answering calls of `below` rows or more, `small` the rest."""
    from trainers.artifact import SMALL_BATCH_DIR

    recipe = {"method": "by-batch", "below_batch": below, "large": large.recipe, "small": small.recipe}
    spec = ModelSpec.from_dict({**large.model.spec.to_dict(), "lineage": lineage(model, recipe),
                                "serve": {"below_batch": below, "dir": SMALL_BATCH_DIR, "sha256": ""}})
    member = dataclasses.replace(small.model, onnx_bytes=small.onnx_bytes or small.model.onnx_bytes, small=None)
    routed_model = dataclasses.replace(large.model, spec=spec, small=member, _session=None, _raw_session=None)
    name = f"{large.name}+below-b{below}-{small.name}"
    return Variant(name=name, model=routed_model, recipe=recipe, onnx_bytes=large.onnx_bytes,
                   notes=[f"batch >= {below}: {n}" for n in large.notes] + [f"batch < {below}: {n}" for n in small.notes],
                   small=Variant(name=small.name, model=member, recipe=small.recipe, onnx_bytes=small.onnx_bytes,
                                 measurements=small.measurements))


def _other_batch_hint(best: Variant, eligible: list[Variant], batch: int) -> str:
    """A line for the reason when another eligible variant is much faster than the choice at the other batch
    size (an LSTM's bf16 choice against ONNX Runtime's int8 at batch 1: 3x), and how to choose it."""
    other = other_batch(batch)
    setting = f"b{other}_t1"
    timed = [v for v in eligible if setting in v.measurements["latency_ms"]]  # as `_balance`: a setting may be absent
    p50 = lambda v: v.measurements["latency_ms"][setting]["p50"]  # noqa: E731
    fastest = min(timed, key=p50, default=best)
    if all(v is not best for v in timed) or fastest is best or p50(best) < p50(fastest) * OTHER_BATCH_HINT:
        return ""
    return (f"; at batch {other} {fastest.name} is {p50(best) / p50(fastest):.1f}x faster than this choice "
            f"(--serving-batch {other}, auto's serving_batch, chooses for that batch size)")


def _balance(variant: Variant, reach: dict[str, float] | None = None) -> float:
    """The product of a variant's speed-ups at batch 256 and batch 1 (one thread) and its size ratio, in logs:
    what decides among the variants within LATENCY_TIE of the fastest. `reach`: a speed-up a setting counts as at
    least (the other batch size's fastest, where a route will serve it)."""
    m, reach = variant.measurements, reach or {}
    speed = {s: max(m["speedup"].get(s, 1.0), reach.get(s, 0.0)) for s in (DECISIVE, "b1_t1")}
    return sum(math.log(max(x, 1e-9)) for x in (speed[DECISIVE], speed["b1_t1"], m["size_ratio"]))


def baseline_variant(model: LoadedModel) -> Variant:
    if model is not None and model.module is None:  # a user's ONNX graph: fp32, or an int8 graph given as it is
        from trainers.models import capabilities

        kind = "int8" if "quantized" in capabilities(model) else "fp32"
        return Variant(name=f"{kind}-onnx", model=model, recipe={"method": "baseline"},
                       onnx_bytes=model.onnx_model_bytes(),
                       notes=[f"the {kind} ONNX original (ONNX Runtime) every ratio is taken against"])
    return Variant(name="fp32-torch", model=model, recipe={"method": "baseline"},
                   notes=["the fp32 PyTorch original every ratio is taken against"])


@register_method("auto", role="search")
def auto(model: LoadedModel, data: DataBundle, max_drop: AccuracyPoints = 0.5,
         prune_ratios: tuple[Ratio, ...] = (0.3, 0.5, 0.2), finetune_epochs: EpochsOrNone = 10,
         distill_epochs: EpochsOrNone = 30, unstructured_ratio: OptionalRatio = 0.9,
         latency_budget_s: PositiveFloat = 0.25, min_agreement: Fraction = MIN_AGREEMENT,
         budget_seconds: PositiveFloat | None = None, explore_seconds: NonNegativeFloat = EXPLORE_SECONDS,
         max_drift: OptionalDrift = None, drift_guard_on: Bool = True, serving_batch: ServingBatch = 256,
         by_batch: Bool = True, progress: Callable[[ProgressEvent], object] | None = None) -> list[Variant]:
    """Try the candidates that fit the family, measure them, pick the fastest that keeps the fidelity rule.

    Options:
        max_drop: accuracy budget, in percentage points below the original.
        prune_ratios: the structured pruning ratios, tried in this order: a ratio larger than one that failed
            is not tried, nor one smaller than one that passed; a smaller one after a larger one failed (20%
            after 30%) is exploration (`explore_seconds`): on a 40-feature MLP it gave 1.3x its best peer instead
            of a tie; a 40-feature LSTM, whose steps are not cheap, does not try it.
        finetune_epochs: fine-tuning after pruning.
        distill_epochs: the quick student's training (0: no distillation).
        unstructured_ratio: the share of weights unstructured pruning zeroes (0: none).
        latency_budget_s: time spent timing each variant in each setting.
        min_agreement: share of the original's top-1 test predictions a variant must keep (less its margin).
        budget_seconds: make no further candidates when the search would run past this (None: no limit).
        explore_seconds: the search's CPU seconds within which it makes steps beyond its core: a smaller
            pruning ratio after a larger one failed, a fallback after an agreement miss of 5-10 points
            (`Exploration`; 0: none).
        max_drift: the attribution agreement a candidate may lose against the original (0-1): top-k overlap and
            cosine against their noise floors, and each top input's share of the attribution; None: a candidate
            whose top-k overlap or cosine interval lies below 0.7 x its noise floor, or that gives one of the
            original's top inputs under half its share, is never chosen (`explain.compare.decide`).
        drift_guard_on: measure the attribution drift of the variant about to be chosen (`drift_guard`; a drifted
            one is passed over for the next); off: choose on speed alone.
        serving_batch: the batch size the model will be called with, 256 (throughput) or 1 (one request at a
            time): the choice is the fastest there. Every variant is still timed at both, and none slower than the
            original at either is chosen. An LSTM's fastest at 256 (bf16 PyTorch) can be 3x slower at 1 than
            ONNX Runtime's int8: a service that answers one request at a time should say 1.
        by_batch: where another variant is over 10% faster than the choice at the other batch size, choose the
            two as one routed artifact (`route_by_batch`): calls under a timed batch size run one, the rest the
            other; its size counts both files. Off: one model, the fastest at `serving_batch`.

    Returns the candidates that passed the screening, measured; the chosen one has
    `measurements["chosen"] = True` and the reason in `measurements["reason"]` (when no candidate qualifies,
    none is marked); every one carries the rejected candidates in `measurements["auto_skipped"]`.
    """
    start = time.perf_counter()
    steps = plan(model, max_drop=max_drop, prune_ratios=prune_ratios, finetune_epochs=finetune_epochs,
                 distill_epochs=distill_epochs, unstructured_ratio=unstructured_ratio,
                 latency_budget_s=latency_budget_s, min_agreement=min_agreement, budget_seconds=budget_seconds,
                 explore_seconds=explore_seconds, progress=progress)
    baseline = baseline_variant(model)
    config = LatencyConfig(budget_s=latency_budget_s)
    variants, skipped, notes = search(model, data, steps, baseline, max_drop=max_drop, min_agreement=min_agreement,
                                      budget_seconds=budget_seconds, config=config, progress=progress, start=start,
                                      guard={"max_drift": max_drift, "drift_guard_on": drift_guard_on},
                                      explore_seconds=explore_seconds, batch=serving_batch, by_batch=by_batch)
    if not variants and not skipped:
        raise ToolkitError(f"auto found no compression method for a {model.spec.family} model")
    chosen, reason = settle(model, data, variants, baseline, max_drop=max_drop, min_agreement=min_agreement,
                            config=config, notes=notes, progress=progress,
                            guard={"max_drift": max_drift, "drift_guard_on": drift_guard_on}, batch=serving_batch,
                            by_batch=by_batch)
    for v in variants:
        v.measurements["chosen"] = v is chosen
    baseline.measurements["chosen"] = chosen is baseline
    for v in [baseline, *variants]:
        v.measurements["reason"] = reason if v is chosen else None
        v.measurements["auto_skipped"] = skipped
        v.measurements["search_notes"] = notes
    return variants
