"""A static int8 search that knows what speed costs.

ONNX Runtime's `quantize_static` takes many settings whose effect on speed and on predictions depends on
the model and the CPU: the graph format (QDQ pairs that ORT fuses at load time, or QOperator's fused
QLinear ops), the calibration method (MinMax, Percentile, Entropy), one weight scale per output channel or
one per tensor, and whether ORT's graph optimisations run on the fp32 graph before quantization
(`quant_pre_process`). ORT offers each setting but no search over them; this module is that search.

1. Every configuration of the grid is quantized with all compute layers in int8; its top-1 agreement with
   the fp32 model on held-out samples and its latency are measured. A QDQ configuration under the target is
   measured with its logits left in float too (`float_logits`: the last layer in int8 with a float output).
2. The fastest configurations that miss the agreement target get a greedy fp32 fallback: while agreement is
   under the target, the still-int8 layer with the best agreement gained per latency added moves to fp32.
3. The fastest configuration that reaches the target then gets a greedy speed fallback: while moving one
   more int8 convolution to fp32 makes the graph at least SPEED_GAIN faster and keeps the target, the layer that
   gains most moves (at most SPEED_STEPS layers; the gain confirmed in a second race of the two alone).
   int8 is not faster for every layer: on the digits CNN the first convolution (one input channel, 3x3)
   takes 0.40 ms in ORT's QLinearConv against 0.07 ms in fp32 at batch 256, 60% of the int8 graph's
   time; with it in fp32 the graph is 2.0x faster than fp32 where the all-int8 one is 1.4x (and on the
   pruned CNN 1.6x where the all-int8 one is 0.75x). A graph with fp32 layers carries the session hint of
   `trainers.ortsession` (ORT's QDQ propagation off): without it ORT moves the quantization above the next
   MaxPool, which then runs in a slow generic kernel, and the same graph is 3.6x slower. Each finalist with
   fp32 layers races with and without the hint.
4. Among the configurations that reach the target, the fastest wins; any within TIE_BAND of it with a higher
   agreement wins instead (latency differences that small are within what a busy machine moves).
5. The same tie band's smallest graph, where it is at least LEAN_SAVING smaller than the choice, is kept too
   (`SearchResult.lean`): the smaller file (usually fewer fp32 layers) at the same speed. The search sees
   agreement, not accuracy, so it cannot tell which of the two is safe; the caller offers both and its
   fidelity rule judges them (an all-int8 graph of a 40-feature CNN reached the agreement target and lost
   0.75 points of test accuracy; a residual CNN's all-int8 graph, 1.5x smaller than its choice, passed).
6. Where the tie band chose a graph at least FAST_GAIN slower than the fastest that reaches the target, that
   fastest one is kept too (`SearchResult.fastest`), for the caller's own, longer timing to judge.

Latency is measured interleaved: every round times each candidate and the fp32 ONNX graph in turn (batch
LATENCY_BATCH, one thread) and the figure kept is the median over rounds of the per-round ratio to fp32, so
load that comes and goes hits every candidate alike. Calibration samples and the agreement split are drawn
with `seed`; the quantized graphs and agreements are then exact functions of the seed, and latency changes
the choice only where two configurations differ by more than TIE_BAND.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainers.ortsession import DISABLED_OPTIMIZERS_KEY, first_output

from .export import ort_session, run_onnx

FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "percentile", "entropy")
TIE_BAND = 0.15  # configurations within 15% of the fastest count as equally fast: the higher agreement wins
LATENCY_BATCH = 256
COMPUTE_OPS = ("Gemm", "MatMul", "Conv", "LSTM")
LEAN_SAVING = 0.10  # the lean twin (`lean`) is offered when its file is at least 10% smaller than the choice's
FAST_GAIN = 0.05  # the fastest twin (`fastest`) is offered when it is at least 5% faster than the choice
_COST_FLOOR = 0.01  # a layer whose fp32 copy costs under 1% of fp32 latency counts as costing 1%
# A layer moves to fp32 for speed when the graph gets at least SPEED_GAIN faster, twice timed (a race of every move,
# then of the best one against the graph before it). At 10%, the 40-feature CNN's first convolution in fp32 (its
# 1-D layers as 2-D ones), read 9-13% faster in the races, moved in 4 of 6 searches: the int8 graph auto then chose
# was 1.08x or 1.28x ORT's quantize_static by the run. Two races at 5% still leave a move with no gain out.
SPEED_GAIN = 0.05
SPEED_STEPS = 2  # at most this many layers move to fp32 for speed (each step times every int8 convolution once)
SPEED_OPS = ("Conv",)  # the layers the speed step tries: int8 Gemm/MatMul were faster in every graph measured
SESSION_HINT = ("QDQPropagationTransformer",)  # written into graphs with fp32 layers (see the module's step 3)


@dataclass(frozen=True)
class Int8Config:
    """One point of the search grid (`format`: qdq | qoperator; `calibration`: minmax | percentile | entropy;
    `optimize`: ORT's graph optimisation on the fp32 graph before quantization)."""

    format: str = "qdq"
    calibration: str = "minmax"
    per_channel: bool = True
    optimize: bool = True
    lift: bool = False  # quantized from the graph with its 1-D convolutions and pools as 2-D ones (speed step only)
    float_logits: bool = False  # the last layer's output (the logits) left in float (`float_logits`)
    rank: int = field(default=0, compare=False)  # position in the grid searched: the last tie-breaker

    @property
    def label(self) -> str:
        return (f"{self.format}/{self.calibration}/{'per-channel' if self.per_channel else 'per-tensor'}/"
                f"{'optimized' if self.optimize else 'plain'}{'/2-D' if self.lift else ''}"
                f"{'/float logits' if self.float_logits else ''}")


@dataclass
class Candidate:
    config: Int8Config
    fp32_nodes: list[str]
    onnx_bytes: bytes = field(repr=False)
    agreement: float
    latency_ratio: float | None = None  # median per-round latency / fp32 ONNX latency
    hint: tuple[str, ...] = ()  # ORT optimizers the graph asks its sessions to disable (`trainers.ortsession`)

    def row(self, target: float) -> dict:
        config = {k: v for k, v in asdict(self.config).items() if k != "rank"}
        return {**config, "fp32_nodes": list(self.fp32_nodes), "agreement": self.agreement,
                "latency_ratio": self.latency_ratio, "reached": self.agreement >= target,
                **({"disabled_optimizers": list(self.hint)} if self.hint else {})}


@dataclass
class SearchResult:
    """What `search_int8` chose, and every configuration it measured (`rows`, for the variant's record)."""

    best: Candidate
    rows: list[dict]
    target: float
    fp32_nodes_total: int
    notes: list[str]
    lean: Candidate | None = None  # as fast as `best` (the tie band), a smaller file, reaching the target
    fastest: Candidate | None = None  # the fastest graph reaching the target, where the tie band chose another


class _Calibration:
    """Feeds calibration samples to ORT, a batch at a time (ORT's CalibrationDataReader protocol)."""

    def __init__(self, x: np.ndarray, input_name: str = "input", batch: int = 64):
        # Batches of one size: ORT's histogram calibrators (Percentile, Entropy) stack the batches' outputs into
        # one array and fail on a shorter last batch. The ragged tail is left out (none with the default 512
        # samples; a set under 64 samples is one batch).
        usable = len(x) if len(x) <= batch else len(x) // batch * batch
        self.batches = [{input_name: np.ascontiguousarray(x[i:i + batch], np.float32)} for i in range(0, usable, batch)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self):
        self.position = 0


@contextlib.contextmanager
def root_logger_kept():
    """ONNX Runtime's quantizers log through the root logger (`logging.info(...)`), which gives a root logger
    without handlers a stderr handler at INFO at that moment (`logging.basicConfig`): a notebook's own
    `basicConfig` afterwards does nothing, and every later INFO record of any library reaches stderr. A
    NullHandler on the root logger while they run leaves the user's logging as it was. Also a decorator."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


@root_logger_kept()
def _prepared(fp32: Path, optimize: bool, tmp: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / f"prep-{fp32.stem}-{int(optimize)}.onnx"
    if not out.exists():
        try:
            quant_pre_process(str(fp32), str(out), skip_optimization=not optimize, skip_symbolic_shape=False)
        except Exception:  # pre-processing is an optimisation: a graph it cannot handle is quantized as exported
            return fp32
    return out


def graph_input_name(onnx_bytes: bytes) -> str:
    """The graph's one data input (a user's graph names it as it likes, not necessarily "input")."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


@root_logger_kept()
def _quantize(src: Path, config: Int8Config, calibration_x: np.ndarray, exclude: list[str], tmp: Path) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = tmp / "int8.onnx"
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.calibration]
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress on stdout
        quantize_static(str(src), str(out), _Calibration(calibration_x, graph_input_name(src.read_bytes())),
                        quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                        per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=list(exclude),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    graph = out.read_bytes()
    return (float_logits(graph) or graph) if config.float_logits else graph


def float_logits(onnx_bytes: bytes) -> bytes | None:
    """The QDQ graph without the QuantizeLinear/DequantizeLinear pair on its output, or None where the output is
    not made that way (a QOperator graph's QLinear node, a layer kept in fp32).

    The last layer then runs in int8 with a float output: ONNX Runtime fuses its input and weight
    DequantizeLinear nodes and the Gemm into a QGemm without output scale. Rounding the logits to 256 levels
    is what flips the close calls: on the signals MLP (factorized, 98.0% agreement required) all eight
    configurations of the grid agreed with fp32 exactly as often with float logits as with the whole head in
    fp32, and ran at the all-int8 graph's speed (2.20x the fp32 graph's, against 1.97x with the head in fp32).
    `quantize_static` can keep whole op types' outputs in float (`OpTypesToExcludeOutputQuantization`), not
    one node's, hence this rewrite."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    if len(graph.output) != 1:
        return None
    output = graph.output[0].name
    producers = {name: node for node in graph.node for name in node.output}
    dequantize = producers.get(output)
    quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
    if (dequantize is None or dequantize.op_type != "DequantizeLinear" or quantize is None
            or quantize.op_type != "QuantizeLinear" or quantize.input[0] not in producers):
        return None
    if sum(dequantize.input[0] in node.input for node in graph.node) != 1:  # the quantized logits read elsewhere
        return None
    last = producers[quantize.input[0]]
    if sum(quantize.input[0] in node.input for node in graph.node) != 1:  # the float logits read elsewhere too
        return None
    graph.node.remove(dequantize)
    graph.node.remove(quantize)
    last.output[list(last.output).index(quantize.input[0])] = output
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return model.SerializeToString()


def with_hint(onnx_bytes: bytes, names: tuple[str, ...]) -> bytes:
    """The graph with `names` as its session hint (`trainers.ortsession`); empty `names` removes the hint."""
    import json

    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    kept = [p for p in proto.metadata_props if p.key != DISABLED_OPTIMIZERS_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if names:
        proto.metadata_props.add(key=DISABLED_OPTIMIZERS_KEY, value=json.dumps(list(names)))
    return proto.SerializeToString()


def _quantize_hinted(src: Path, config: Int8Config, calibration_x: np.ndarray, exclude: list[str],
                     tmp: Path) -> tuple[bytes, tuple[str, ...]]:
    """`_quantize`, with the session hint where a layer stays fp32; there, the pools that follow a Relu run first
    (`compress.layout.pool_before_relu`), which gives a plain ONNX Runtime session the hint's speed: the races of
    step 3 then find the hint no faster, and the graph is served without it."""
    from .layout import pool_before_relu

    graph = _quantize(src, config, calibration_x, exclude, tmp)
    if not exclude:
        return graph, ()
    return with_hint(pool_before_relu(graph) or graph, SESSION_HINT), SESSION_HINT


def compute_nodes(path: Path, ops: tuple[str, ...] = COMPUTE_OPS) -> list[str]:
    """Names of the graph's weight-carrying nodes (of `ops`), input to output: the ones whose precision matters."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ops]


def interleaved_latency(graphs: list[bytes], reference: bytes, x: np.ndarray, rounds: int = 5,
                        reps: int = 3) -> list[float | None]:
    """Median over `rounds` of each graph's per-round latency ratio to `reference` (one thread each);
    `rounds` 0: nothing is timed (every figure None).

    Each round times every graph `reps` times (the round's figure is the fastest, the least disturbed) in
    an order rotated from round to round, so a burst of load does not land on one candidate only.
    """
    if rounds == 0:
        return [None] * len(graphs)
    calls = [first_output(ort_session(b, threads=1)) for b in [reference, *graphs]]
    for call in calls:  # warm-up: first calls allocate
        call(x)
        call(x)
    ratios = [[] for _ in graphs]
    for r in range(rounds):
        order = list(range(len(calls)))
        order = order[r % len(order):] + order[:r % len(order)]
        times = [0.0] * len(calls)
        for i in order:
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                calls[i](x)
                best = min(best, time.perf_counter() - t0)
            times[i] = best
        for j in range(len(graphs)):
            ratios[j].append(times[j + 1] / times[0])
    return [float(np.median(r)) for r in ratios]


def _agreement(onnx_bytes: bytes, check_x: np.ndarray, reference: np.ndarray) -> float:
    return float((run_onnx(onnx_bytes, check_x).argmax(1) == reference).mean())


def pick(candidates: list[Candidate], target: float, tie_band: float = TIE_BAND) -> Candidate:
    """Among the candidates reaching `target`, those within `tie_band` of the fastest count as equally fast:
    the highest agreement wins, then the earlier configuration of the grid, then fewer fp32 layers, then the graph
    without the session hint.
    When none reaches the target: the one with the highest agreement (then the fastest)."""
    close = _equally_fast(candidates, target, tie_band)
    if close is not None:  # equally fast and equally faithful: the grid's order decides (not timing noise)
        # then ORT's own optimizers: the session hint only where it is faster beyond the tie band (a 40-feature
        # CNN's graph with its head in fp32 ran as fast on one thread with the hint and 2.4x slower on two)
        return max(close, key=lambda c: (c.agreement, -c.config.rank, -len(c.fp32_nodes), not c.hint))
    if any(c.latency_ratio is None for c in candidates):  # untimed: agreement, then the grid's order
        return max(candidates, key=lambda c: (c.agreement >= target, c.agreement, -c.config.rank, -len(c.fp32_nodes)))
    return max(candidates, key=lambda c: (c.agreement, -(c.latency_ratio or 0.0)))


def lean(candidates: list[Candidate], best: Candidate, target: float, tie_band: float = TIE_BAND) -> Candidate | None:
    """The smallest graph of `best`'s tie band, where it is at least LEAN_SAVING smaller than `best`'s (then
    the higher agreement, then the grid's order); None when there is none or the search was untimed. Fewer
    fp32 layers is what usually makes it smaller, but not always: on a digits MLP an all-int8 QOperator graph
    was 10% larger than a QDQ graph with its last layer in fp32 (scales and zero points per node)."""
    close = _equally_fast(candidates, target, tie_band) or []
    smaller = [c for c in close if len(c.onnx_bytes) <= (1 - LEAN_SAVING) * len(best.onnx_bytes)]
    return min(smaller, key=lambda c: (len(c.onnx_bytes), -c.agreement, c.config.rank)) if smaller else None


def fastest(candidates: list[Candidate], best: Candidate, target: float, leaner: Candidate | None = None
            ) -> Candidate | None:
    """The fastest graph reaching `target`, where the tie band chose a slower one (`pick` prefers agreement
    within TIE_BAND) and it is at least FAST_GAIN faster than `best`; None otherwise, when it is `leaner`, or when
    the search was untimed. The search's short timings put the two apart by less than the band, so the caller
    offers both and times them properly: on a 40-feature CNN the graph with its first convolution in fp32 and
    its 1-D layers as 2-D ones was 11-13% faster than the all-int8 graph the band chose in one run, and the pick
    went the other way in three others."""
    reached = [c for c in candidates if c.agreement >= target and c.latency_ratio is not None]
    if not reached or best.latency_ratio is None:
        return None
    quickest = min(reached, key=lambda c: (c.latency_ratio, -c.agreement))
    if quickest is best or quickest is leaner or quickest.latency_ratio > best.latency_ratio * (1 - FAST_GAIN):
        return None
    return quickest


def _equally_fast(candidates: list[Candidate], target: float, tie_band: float) -> list[Candidate] | None:
    """The candidates reaching `target` within `tie_band` of the fastest of them; None when none reaches it or
    any of them is untimed."""
    reached = [c for c in candidates if c.agreement >= target]
    if not reached or any(c.latency_ratio is None for c in reached):
        return None
    fastest = min(c.latency_ratio for c in reached)
    return [c for c in reached if c.latency_ratio <= fastest * (1 + tie_band)]


def _one_more_in_fp32(current: Candidate, src: Path, calibration_x, check_x, reference, nodes,
                      tmp) -> list[Candidate]:
    """`current` with each of its int8 layers in turn moved to fp32 (agreement measured, latency not yet)."""
    trials = []
    for name in (n for n in nodes if n not in current.fp32_nodes):
        exclude = [*current.fp32_nodes, name]
        graph, hint = _quantize_hinted(src, current.config, calibration_x, exclude, tmp)
        config = current.config
        if config.float_logits and not _quantized_output(graph):  # the last layer in fp32: nothing left to keep float
            config = dataclasses.replace(config, float_logits=False)
        trials.append(Candidate(config, exclude, graph, _agreement(graph, check_x, reference), hint=hint))
    return trials


def _quantized_output(onnx_bytes: bytes) -> bool:
    """Whether the graph's output comes from an int8 layer: a DequantizeLinear (the logits rounded) or a node
    reading a DequantizeLinear's weights (float logits); not a layer in fp32."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    producers = {name: node for node in graph.node for name in node.output}
    last = producers.get(graph.output[0].name)
    return last is not None and (last.op_type == "DequantizeLinear"
                                 or any(getattr(producers.get(i), "op_type", "") == "DequantizeLinear"
                                        for i in last.input[1:2]))


def _fallback(start: Candidate, src: Path, calibration_x, check_x, reference, target, nodes, fp32, x_lat, rounds,
              tmp) -> tuple[Candidate, list[Candidate]]:
    """Greedy: move to fp32 the layer with the best agreement gained per latency added, until `target` holds."""
    current, steps = start, []
    while current.agreement < target and len(current.fp32_nodes) < len(nodes) - 1:
        trials = _one_more_in_fp32(current, src, calibration_x, check_x, reference, nodes, tmp)
        trials = [t for t in trials if t.agreement > current.agreement]
        if not trials:
            break
        for t, ratio in zip(trials, interleaved_latency([t.onnx_bytes for t in trials] + [current.onnx_bytes], fp32,
                                                        x_lat, rounds)[:-1]):
            t.latency_ratio = ratio
        base = current.latency_ratio or 1.0
        best = max(trials, key=lambda t: ((t.agreement - current.agreement)
                                          / max((t.latency_ratio or base) - base, _COST_FLOOR), t.agreement))
        steps.append(best)
        current = best
    return current, steps


def _speed_fallback(start: Candidate, source, calibration_x, check_x, reference, target, fp32, x_lat, rounds,
                    tmp) -> tuple[Candidate, list[Candidate]]:
    """Greedy: move to fp32 the layer whose move makes the graph fastest, while that is at least SPEED_GAIN
    faster than the graph before the move (timed in the same rounds, then again in a race of the two alone) and
    the target still holds. `source(config)`: the prepared fp32 graph a configuration is quantized from; where
    the graph has 1-D convolutions, each move is also tried on the graph with them as 2-D ones (`lift`): an
    fp32 convolution then runs in ORT's blocked-layout kernel (on the 40-feature CNN, the first convolution in
    fp32: 4.08x fp32's speed lifted, 2.84x as exported, 3.60x all in int8)."""
    current, steps, moves = start, [], 0
    if rounds == 0:
        return current, steps
    while moves < SPEED_STEPS:
        src = source(current.config)
        if len(current.fp32_nodes) >= len(compute_nodes(src)) - 1:
            break
        trials = _one_more_in_fp32(current, src, calibration_x, check_x, reference, compute_nodes(src, SPEED_OPS), tmp)
        lifted = dataclasses.replace(current.config, lift=True)
        if not current.config.lift and source(lifted) is not None:  # the 2-D form's own node names
            trials += _one_more_in_fp32(dataclasses.replace(current, config=lifted), source(lifted), calibration_x,
                                        check_x, reference, compute_nodes(source(lifted), SPEED_OPS), tmp)
        ratios = interleaved_latency([t.onnx_bytes for t in trials] + [current.onnx_bytes], fp32, x_lat, rounds)
        for t, ratio in zip(trials, ratios):
            t.latency_ratio = ratio
        steps += trials
        kept = [t for t in trials if t.agreement >= target]
        if not kept:
            break
        best = min(kept, key=lambda t: (t.latency_ratio, -t.agreement))
        if best.latency_ratio > ratios[-1] * (1 - SPEED_GAIN):
            break
        # confirmed in a race of the two alone: a tiny graph's gain in a race of many can be timing noise
        again, before = interleaved_latency([best.onnx_bytes, current.onnx_bytes], fp32, x_lat, rounds)
        if again > before * (1 - SPEED_GAIN):
            break
        current, moves = best, moves + 1
    return current, steps


def _float_logits_twins(missed: list[Candidate], check_x, reference) -> list[Candidate]:
    """Each candidate under the target with its logits in float (`float_logits`), where its graph allows it: the
    same int8 layers, no rounding of the logits (no new calibration needed)."""
    twins = []
    for c in missed:
        graph = float_logits(c.onnx_bytes)
        if graph is not None:
            twins.append(Candidate(dataclasses.replace(c.config, float_logits=True), list(c.fp32_nodes), graph,
                                   _agreement(graph, check_x, reference), hint=c.hint))
    return twins


def _fallback_starts(candidates: list[Candidate], target: float) -> list[Candidate]:
    """The candidates under `target` that the fp32 fallback may start from: one per configuration (a graph and its
    float-logits twin count as one), the more faithful; none for a configuration with a graph reaching it."""
    def base(c: Candidate) -> Int8Config:
        return dataclasses.replace(c.config, float_logits=False)

    done = {base(c) for c in candidates if c.agreement >= target}
    starts: dict[Int8Config, Candidate] = {}
    for c in candidates:
        if c.agreement < target and base(c) not in done and (base(c) not in starts
                                                              or c.agreement > starts[base(c)].agreement):
            starts[base(c)] = c
    return list(starts.values())


def _unhinted_twins(candidates: list[Candidate]) -> list[Candidate]:
    """Each hinted candidate's graph without the hint, to race against it."""
    return [Candidate(c.config, c.fp32_nodes, with_hint(c.onnx_bytes, ()), c.agreement) for c in candidates if c.hint]


def search_int8(fp32_bytes: bytes, calibration_x: np.ndarray, check_x: np.ndarray, reference: np.ndarray,
                target: float, *, formats=FORMATS, calibrations=CALIBRATIONS, per_channel=(True, False),
                optimize=(True, False), fallback_configs: int = 2, rounds: int = 5,
                latency_x: np.ndarray | None = None, lifted: bytes | None = None) -> SearchResult:
    """Search static int8 configurations and fp32 fallback layers for the fastest graph that keeps `target`
    top-1 agreement with fp32 (`reference`: the fp32 model's predicted classes on `check_x`).

    Args:
        fp32_bytes: the fp32 ONNX graph (input "input").
        calibration_x: samples for activation ranges (training split).
        check_x, reference: held-out samples and the fp32 model's classes on them.
        target: the least agreement accepted.
        formats, calibrations, per_channel, optimize: the grid (each a tuple of allowed values).
        fallback_configs: how many of the fastest configurations that miss `target` get the fp32 fallback.
        rounds: interleaved latency rounds; 0: untimed, the choice then depends on the seed only (the most
            faithful configuration, ties to the grid's order, and the greedy fallback by agreement alone).
        latency_x: the batch timed (default: check samples repeated to LATENCY_BATCH rows).
        lifted: the fp32 graph with its 1-D convolutions and pools as 2-D ones (`compress.layout.lift_1d`), for
            the speed step; None: the graph has none, or the speed step uses the graph as exported only.
    """
    if latency_x is None:
        latency_x = np.resize(np.ascontiguousarray(check_x, np.float32), (LATENCY_BATCH, *check_x.shape[1:]))
    latency_x = np.ascontiguousarray(latency_x, np.float32)
    grid = [Int8Config(f, c, p, o, rank=i)
            for i, (f, c, p, o) in enumerate(itertools.product(formats, calibrations, per_channel, optimize))]
    notes, rows = [], []
    with tempfile.TemporaryDirectory(prefix="toolkit-int8-search-") as tmp:
        tmp = Path(tmp)
        (tmp / "fp32.onnx").write_bytes(fp32_bytes)
        sources = {(o, False): _prepared(tmp / "fp32.onnx", o, tmp) for o in sorted({c.optimize for c in grid})}
        if lifted is not None:
            (tmp / "lifted.onnx").write_bytes(lifted)
            sources.update({(o, True): _prepared(tmp / "lifted.onnx", o, tmp) for o, _ in list(sources)})

        def source(config: Int8Config) -> Path | None:
            return sources.get((config.optimize, config.lift))

        nodes = compute_nodes(source(grid[0]))
        candidates = []
        for config in grid:
            graph = _quantize(source(config), config, calibration_x, [], tmp)
            candidates.append(Candidate(config, [], graph, _agreement(graph, check_x, reference)))
        twins = _float_logits_twins([c for c in candidates if c.agreement < target], check_x, reference)
        candidates += twins
        for c, ratio in zip(candidates, interleaved_latency([c.onnx_bytes for c in candidates], fp32_bytes, latency_x,
                                                            rounds)):
            c.latency_ratio = ratio
        missed = sorted(_fallback_starts(candidates, target),
                        key=lambda c: (c.latency_ratio is None, c.latency_ratio or 0.0, -c.agreement))
        finished, tried = list(candidates), list(candidates)
        for start in missed[:fallback_configs]:
            end, steps = _fallback(start, source(start.config), calibration_x, check_x, reference, target,
                                   compute_nodes(source(start.config)), fp32_bytes, latency_x, rounds, tmp)
            tried += steps
            if end is not start:
                finished.append(end)
                notes.append(f"{start.config.label}: {len(end.fp32_nodes)} layer(s) back in fp32 "
                             f"({', '.join(end.fp32_nodes)}) for {end.agreement:.1%} agreement")
        reached = [c for c in finished if c.agreement >= target and c.latency_ratio is not None]
        if reached:
            start = min(reached, key=lambda c: c.latency_ratio)
            end, steps = _speed_fallback(start, source, calibration_x, check_x, reference, target, fp32_bytes,
                                         latency_x, rounds, tmp)
            tried += steps
            if end is not start:
                finished.append(end)
                moved = [n for n in end.fp32_nodes if n not in start.fp32_nodes]
                notes.append(f"{start.config.label}: {len(moved)} layer(s) in fp32 for speed ({', '.join(moved)})"
                             + (", 1-D convolutions and pools as 2-D ones" if end.config.lift else "")
                             + f": {end.latency_ratio:.2f}x the fp32 ONNX latency against {start.latency_ratio:.2f}x")
    # the finalists race once more, together, so the last comparison is like for like
    finalists = [c for c in finished if c.agreement >= target] or finished
    finalists += _unhinted_twins(finalists)
    for c, ratio in zip(finalists, interleaved_latency([c.onnx_bytes for c in finalists], fp32_bytes, latency_x,
                                                       rounds)):
        c.latency_ratio = ratio
    best = pick(finalists, target)
    leaner = lean(finalists, best, target)
    quickest = fastest(finalists, best, target, leaner)
    rows = [c.row(target) for c in tried]
    notes.insert(0, f"int8 search: {len(grid)} configuration(s), chose {best.config.label}"
                    + (f" with {len(best.fp32_nodes)} layer(s) in fp32" if best.fp32_nodes else "")
                    + f": {best.agreement:.1%} agreement"
                    + (f", {best.latency_ratio:.2f}x the fp32 ONNX latency at batch {len(latency_x)}"
                       if best.latency_ratio is not None else " (untimed: the grid's order decided)"))
    if leaner is not None:
        notes.append(f"as fast within {TIE_BAND:.0%} and {1 - len(leaner.onnx_bytes) / len(best.onnx_bytes):.0%} "
                     f"smaller: {leaner.config.label} with {len(leaner.fp32_nodes)} layer(s) in fp32, "
                     f"{leaner.agreement:.1%} agreement, {leaner.latency_ratio:.2f}x")
    if quickest is not None:
        notes.append(f"faster, within the {TIE_BAND:.0%} tie band: {quickest.config.label} with "
                     f"{len(quickest.fp32_nodes)} layer(s) in fp32, {quickest.agreement:.1%} agreement, "
                     f"{quickest.latency_ratio:.2f}x")
    return SearchResult(best=best, rows=rows, target=target, fp32_nodes_total=len(nodes), notes=notes, lean=leaner,
                        fastest=quickest)
