"""Quantization: int8 through ONNX Runtime (dynamic; static, searched by `compress.int8_search`), fp16 and bf16 in PyTorch.

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
from typing import Literal

import numpy as np
import torch
from torch import nn

from trainers.artifact import LoadedModel, predict
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.models import capabilities
from trainers.options import Bool, Fraction, Int, NonNegativeInt, PositiveInt

from .base import ALREADY_QUANTIZED, Variant, default_options, derive_model, register_method
from .export import (Exporter, ExportInfo, export_with_info, first_layer_fold, input_fold, lift_checked, onnx_parity,
                     onnx_variant_model, run_onnx)
from .int8_search import FORMATS, Candidate, SearchResult, root_logger_kept, search_int8
from .layout import CLAMP_MARGIN, clamp_input

DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM")
QuantFormatName = Literal["qdq", "qoperator"]
CalibrationName = Literal["minmax", "percentile", "entropy"]
# int8 must agree with fp32 on 99% of test predictions; the check runs on the validation split (a few
# hundred samples): the target carries a margin, one flip in 200.
MIN_AGREEMENT = 0.995
CHECK_MIN = 200  # fewest samples the agreement check runs on


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


def fake_quant_twin(module: nn.Module, kinds: tuple[type, ...], per_channel: bool = True,
                    skip: set[str] | frozenset = frozenset()) -> nn.Module:
    """A copy of `module` whose weights in layers of `kinds` (except the submodules named in `skip`, kept fp32)
    sit on the per-channel int8 grid."""
    twin = copy.deepcopy(module).cpu().float().eval()
    with torch.no_grad():
        for name, layer in twin.named_modules():
            if not isinstance(layer, kinds) or name in skip:
                continue
            for pname, param in layer.named_parameters(recurse=False):
                if pname.startswith("weight"):
                    param.copy_(fake_quantize_weight(param, per_channel))
    return twin


# ---------------------------------------------------------------- ONNX Runtime int8

@root_logger_kept()
def _preprocess(src: Path, dst: Path) -> tuple[Path, str | None]:
    """ORT's recommended pre-processing (shape inference + graph optimisation); skipped if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst, None
    except Exception as exc:  # a pre-processing failure is not fatal: quantize the plain graph
        return src, f"ORT pre-processing skipped ({type(exc).__name__})"


@root_logger_kept()
def _quantize_dynamic(src: Path, out: Path, per_channel: bool, exclude: list[str]) -> bytes:
    """Quantize the (pre-processed) fp32 graph at `src` into `out` (dynamic int8); `exclude`d nodes stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # dynamic quantization first rewrites Gemm as MatMul + Add, named "<gemm>_MatMul": exclude that name too
    quantize_dynamic(str(src), str(out), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=per_channel,
                     weight_type=QuantType.QInt8, nodes_to_exclude=[*exclude, *(f"{n}_MatMul" for n in exclude)])
    return out.read_bytes()


# The ops whose weights each int8 method quantizes: a user's graph with none of them has nothing to make int8
STATIC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def quantizable_graph(onnx_bytes: bytes, method: str, ops: tuple[str, ...]) -> bytes:
    """A user's graph as ORT's quantizer can read it, or one ToolkitError line where it cannot quantize it.

    skl2onnx lists the default domain twice in `opset_import` (`('', 17)` twice), which ONNX Runtime runs but its
    quantizer rejects ("Failed to find proper ai.onnx domain"): the copy quantized keeps one entry per domain (the
    highest version). A graph saved by ORT's offline optimiser holds its com.microsoft fused ops (FusedGemm,
    FusedConv), on which both quantizers crash; a graph without any of `ops` (a scikit-learn linear model or
    forest: ai.onnx.ml ops) has nothing to quantize. Both are refused, as int8-weights refuses them.
    """
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    nodes = _all_nodes(proto.graph)
    fused = sorted({n.op_type for n in nodes if n.domain == "com.microsoft" and n.op_type.startswith("Fused")})
    if fused:
        raise ToolkitError(f"compression method '{method}': the graph holds ONNX Runtime's fused ops "
                           f"(com.microsoft {', '.join(fused)}), written by its offline optimiser, which ORT's int8 "
                           "quantizer cannot quantize: pass the graph as exported, before that optimisation, or "
                           "use int8-weights")
    if not any(n.op_type in ops and n.domain in ("", "ai.onnx") for n in nodes):
        found = ", ".join(sorted({f"{n.domain + ' ' if n.domain else ''}{n.op_type}" for n in nodes})[:8])
        raise ToolkitError(f"compression method '{method}': nothing to quantize, the graph has no "
                           f"{', '.join(ops[:-1])} or {ops[-1]} (its ops: {found or 'none'})")
    versions: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    if len(versions) == len(proto.opset_import):
        return onnx_bytes
    del proto.opset_import[:]
    proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    return proto.SerializeToString()


def _all_nodes(graph) -> list:
    """Every node of a graph, those of its subgraphs (If, Loop, Scan) too."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                nodes += _all_nodes(sub)
    return nodes


def _compute_nodes(path: Path) -> list:
    """The graph's weight-carrying nodes, input to output: the ones whose precision matters."""
    import onnx

    return [n for n in onnx.load(str(path)).graph.node if n.op_type in ("Gemm", "MatMul", "Conv", "LSTM", "GRU")]


def _agreement(onnx_bytes: bytes, x: np.ndarray, reference: np.ndarray) -> float:
    return float((run_onnx(onnx_bytes, x).argmax(1) == reference).mean())


def _quantize_to_agreement(onnx_bytes: bytes, per_channel: bool, check_x: np.ndarray, reference: np.ndarray,
                           min_agreement: float) -> tuple[bytes, dict, list[str]]:
    """Quantize, and where int8 changes too many predictions, keep layers in fp32 until it does not.

    Accuracy-driven fallback (what Intel Neural Compressor calls accuracy-aware tuning, TensorRT per-layer
    precision): the int8 graph's top-1 agreement with the fp32 model is measured on `check_x` (the
    validation split, never the test split). Below `min_agreement`, each still-quantized compute node
    is tried in fp32 and the one that raises agreement most is kept so, until the target holds; the last
    quantized node is never given up (the result would not be int8). ORT offers the per-node exclusion but
    not the search, hence this loop.
    """
    notes = []
    with tempfile.TemporaryDirectory(prefix="toolkit-quant-") as tmp:
        tmp = Path(tmp)
        (tmp / "fp32.onnx").write_bytes(onnx_bytes)
        src, note = _preprocess(tmp / "fp32.onnx", tmp / "prep.onnx")
        if note:
            notes.append(note)
        nodes = _compute_nodes(src)

        def attempt(exclude: list[str]) -> tuple[float, bytes]:
            int8 = _quantize_dynamic(src, tmp / "int8.onnx", per_channel, exclude)
            return _agreement(int8, check_x, reference), int8

        exclude: list[str] = []
        agreement, best = attempt(exclude)
        tried = [{"fp32_nodes": [], "agreement": agreement}]
        while agreement < min_agreement and len(exclude) < len(nodes) - 1:
            options = [(attempt(exclude + [n.name]), n.name) for n in nodes if n.name not in exclude]
            (score, candidate), name = max(options, key=lambda o: o[0][0])
            if score <= agreement:
                break
            exclude, agreement, best = exclude + [name], score, candidate
            tried.append({"fp32_nodes": list(exclude), "agreement": agreement})
        weights = {i for n in nodes if n.name in exclude for i in n.input if i.endswith(".weight")}
    check = {"samples": int(len(check_x)), "agreement": agreement, "target": min_agreement,
             "reached": agreement >= min_agreement, "fp32_nodes": exclude,
             "fp32_modules": sorted(w[: -len(".weight")] for w in weights), "steps": tried}
    if exclude:
        notes.append(f"kept {len(exclude)} of {len(nodes)} layers in fp32 ({', '.join(exclude)}) to reach "
                     f"{agreement:.1%} top-1 agreement with fp32 on {len(check_x)} held-out samples")
    if agreement < min_agreement:
        notes.append(f"int8 agrees with fp32 on only {agreement:.1%} of held-out samples (target {min_agreement:.1%}) "
                     f"even with {len(exclude)} of {len(nodes)} layers in fp32: auto never chooses it")
    return best, check, notes


def _split_for_check(data: DataBundle, calibration_samples: int, seed: int, static: bool):
    """Calibration samples (static only) from the training split; the agreement check gets the validation split.

    Not training samples: the model fits them with wide margins, so int8 flips far fewer of them than of
    unseen data (in compress_vs_peers a check on mostly training samples passed variants at 99.6-100% that
    then agreed on 98.9% of the test split). Only a validation split under CHECK_MIN samples is topped up
    with training samples calibration did not use.
    """
    order = np.random.default_rng(seed).permutation(len(data.x_train))
    calibration = np.sort(order[:calibration_samples]) if static else np.array([], dtype=int)
    rest = np.sort(order[len(calibration):])[:max(0, CHECK_MIN - len(data.x_val))]
    check_x = np.concatenate([data.x_val, data.x_train[rest]])
    return (data.x_train[calibration] if static else None), np.ascontiguousarray(check_x, np.float32)


def _int8_dynamic_variant(model: LoadedModel, data: DataBundle, exporter: str, min_agreement: float) -> Variant:
    # ORT's per-channel LSTM weights lose accuracy (about 4% of digits predictions flip in our runs):
    # models with an LSTM (or another recurrent layer) get one scale per tensor.
    per_channel = "recurrent" not in capabilities(model)
    if model.module is not None:
        fp32_bytes, info = export_with_info(model, data, exporter=exporter)
    else:  # a user's ONNX graph: quantized as it is
        fp32_bytes = quantizable_graph(model.onnx_model_bytes(), "int8-dynamic", DYNAMIC_OPS)
        info = ExportInfo("none (the user's ONNX graph)", 0.0)
    _, check_x = _split_for_check(data, 0, 0, static=False)
    reference = predict(model, check_x).argmax(1)
    fp32_bytes, folded = first_layer_fold(fp32_bytes, check_x, uniform_only=True)
    int8_bytes, check, notes = _quantize_to_agreement(fp32_bytes, per_channel, check_x, reference, min_agreement)
    int8_bytes = clamp_input(int8_bytes, data.x_train)
    notes = [*folded, *notes, f"inputs clamped to the training range widened by {CLAMP_MARGIN:.0%} of it: the "
                              f"activation scale is each call's, and one row far outside the data would coarsen it "
                              f"for every row of its call"]
    twin = None if model.module is None else fake_quant_twin(model.module, (nn.Linear, nn.LSTM, nn.GRU), per_channel,
                                                             skip=set(check["fp32_modules"]))
    recipe = {"method": "int8-dynamic", "runtime": "onnxruntime", "exporter": info.exporter,
              "weight_type": "int8", "per_channel": per_channel, "quantized_ops": list(DYNAMIC_OPS),
              "min_agreement": min_agreement, "fp32_nodes": check["fp32_nodes"]}
    return _finish_int8(model, data, "dynamic", twin, recipe, int8_bytes, check, notes)


def _finish_int8(model: LoadedModel, data: DataBundle, mode: str, twin: nn.Module, recipe: dict, int8_bytes: bytes,
                 check: dict, notes: list[str], extra: dict | None = None, name: str | None = None) -> Variant:
    """The int8 Variant: its twin's agreement with the graph, parity with fp32 on the test split, the notes."""
    int8_bytes, folded = input_fold(int8_bytes, data.x_test)
    notes = [*notes, *folded]
    variant_model = onnx_variant_model(model, twin, recipe, dtype="int8")
    variant_model.onnx_bytes = int8_bytes
    twin_agreement = None
    if twin is not None:
        int8_logits = run_onnx(int8_bytes, data.x_test)
        with torch.inference_mode():
            twin_logits = twin(torch.from_numpy(np.ascontiguousarray(data.x_test, np.float32))).numpy()
        twin_agreement = float((twin_logits.argmax(1) == int8_logits.argmax(1)).mean())
        notes.append(f"fake-quant PyTorch twin agrees with the int8 graph on {twin_agreement:.1%} of test samples")
    else:
        notes.append("no PyTorch module: the variant has no fake-quant twin, so it is explained as a black box")
    if mode == "dynamic" and "conv" in capabilities(model):
        notes.append("convolutions stay fp32 (ORT's dynamic ConvInteger is slower than fp32)")
    parity = onnx_parity(int8_bytes, model, data.x_test)  # int8 graph vs the fp32 PyTorch source
    return Variant(name=f"{name or 'int8-' + mode}-onnx", model=variant_model, recipe=recipe, onnx_bytes=int8_bytes,
                   measurements={"parity": parity, "twin_agreement": twin_agreement, "agreement_check": check,
                                 **(extra or {})},
                   notes=notes)


def _auto_int8(family: str, settings: dict) -> list[dict]:
    """What auto tries: the int8 search aiming for auto's own `min_agreement` (checked on validation, before the
    rule checks the test split with its margin) and, only if that variant fails the rule (the search aims for
    agreement, and its fastest configuration can still cost accuracy: 0.75 points on a 40-feature CNN), the
    stricter default of a method called by name. With 99.5% alone, int8 gave layers back to fp32 that the one
    rule did not ask for, and lost to ORT's `quantize_static` defaults at 97.5-99.3% agreement on three of nine
    peer cases (0.54-0.91x at batch 256)."""
    if settings["min_agreement"] >= MIN_AGREEMENT:
        return [{"min_agreement": settings["min_agreement"]}]
    return [{"min_agreement": settings["min_agreement"]}, {}]


@register_method("int8-dynamic", role="runtime", auto=_auto_int8, chain=True, fallback=("min_agreement",),
                 excludes=("quantized",), refusal={"quantized": ALREADY_QUANTIZED})
def int8_dynamic(model: LoadedModel, data: DataBundle, exporter: Exporter = "auto",
                 min_agreement: Fraction = MIN_AGREEMENT) -> list[Variant]:
    """int8 weights, activations quantized on the fly, ONNX Runtime (MatMul/Gemm/LSTM; Conv stays fp32).

    min_agreement: layers go back to fp32, the most helpful first, until int8 and fp32 agree on this share of
        held-out predictions (default MIN_AGREEMENT; 0 = never).
    """
    return [_int8_dynamic_variant(model, data, exporter, min_agreement)]


@register_method("int8-static", role="runtime", auto=_auto_int8, chain=True, excludes=("recurrent", "quantized"),
                 fallback=("min_agreement",),
                 refusal={"recurrent": "ONNX Runtime's static QDQ leaves recurrent layers (LSTM, GRU) in fp32 "
                                       "(use int8-dynamic)", "quantized": ALREADY_QUANTIZED})
def int8_static(model: LoadedModel, data: DataBundle, calibration_samples: PositiveInt = 512, seed: Int = 0,
                exporter: Exporter = "auto", min_agreement: Fraction = MIN_AGREEMENT,
                formats: tuple[QuantFormatName, ...] = FORMATS, calibrations: tuple[CalibrationName, ...] = ("minmax", "percentile"),
                per_channel: tuple[Bool, ...] = (True, False), optimize: tuple[Bool, ...] = (True,),
                fallback_configs: NonNegativeInt = 2, latency_rounds: NonNegativeInt = 5,
                lean: Bool = True, fast: Bool = True) -> list[Variant]:
    """int8 weights and activations in ONNX Runtime, the fastest static configuration that keeps the agreement.

    Searches (`compress.int8_search`) the graph format, calibration method, per-channel or per-tensor scales
    and ORT's graph optimisation before quantization, then which layers stay fp32, by measured latency per
    agreement gained; calibrated on `calibration_samples` training samples drawn with `seed`.

    min_agreement: the least top-1 agreement with fp32 on held-out samples (default MIN_AGREEMENT; 0 = any).
    formats, calibrations, per_channel, optimize: the values searched (fewer values: a faster search;
        "entropy" calibration is the slowest to run).
    fallback_configs: how many of the fastest configurations that miss the target try fp32 layers.
    latency_rounds: interleaved timing rounds per comparison. The quantized graph depends on `seed` alone;
        the choice between configurations uses measured speed only where they differ by more than 15%, so
        timing noise beyond that can change it; 0: untimed (most faithful, then the grid's order), fully
        determined by the seed.
    lean: where the search's equally fast graphs include one at least 10% smaller than its choice (usually
        fewer layers in fp32), offer that one too, as `int8-static-lean-onnx`; the search sees agreement on
        validation, not accuracy, so the fidelity rule on the test split judges the two.
    fast: where the search chose, inside its tie band, a graph at least 5% slower than its fastest one that
        reaches `min_agreement` (the band prefers agreement), offer the fastest too, as `int8-static-fast-onnx`:
        the search times briefly, and the caller's own timing (auto's) judges the two.
    """
    if not formats or not calibrations or not per_channel or not optimize:
        raise ToolkitError("int8-static: formats, calibrations, per_channel and optimize each need at least one value")
    if model.module is not None:
        fp32_bytes, info = export_with_info(model, data, exporter=exporter)
    else:  # a user's ONNX graph: quantized as it is, at an opset that has per-axis scales
        fp32_bytes = quantizable_graph(model.onnx_model_bytes(), "int8-static", STATIC_OPS)
        info = ExportInfo("none (the user's ONNX graph)", 0.0)
    calibration_x, check_x = _split_for_check(data, calibration_samples, seed, True)
    fp32_bytes, converted = static_opset(fp32_bytes, check_x)
    info = ExportInfo(info.exporter + converted, info.seconds) if converted else info
    reference = predict(model, check_x).argmax(1)
    fp32_bytes, folded = first_layer_fold(fp32_bytes, check_x, uniform_only=True)
    lifted, _ = lift_checked(fp32_bytes, check_x)
    found = search_int8(fp32_bytes, calibration_x, check_x, reference, min_agreement, formats=formats,
                        calibrations=calibrations, per_channel=per_channel, optimize=optimize,
                        fallback_configs=fallback_configs, rounds=latency_rounds,
                        lifted=None if lifted is fp32_bytes else lifted)
    found.notes.extend(folded)
    if converted:
        found.notes.append(f"the graph was{converted} first: ORT's per-channel int8 needs it")
    settings = {"exporter": info.exporter, "min_agreement": min_agreement, "calibration_samples": calibration_samples,
                "seed": seed, "samples": len(calibration_x), "check_samples": len(check_x)}
    variants = [_static_variant(model, data, fp32_bytes, found, found.best, settings)]
    if lean and found.lean is not None:
        variants.append(_lean_sized(_static_variant(model, data, fp32_bytes, found, found.lean, settings, "lean"),
                                    variants[0]))
    if fast and found.fastest is not None:
        variants.append(_static_variant(model, data, fp32_bytes, found, found.fastest, settings, "fast"))
    return variants


STATIC_OPSET = 13  # DequantizeLinear's `axis` (per-channel scales), which ORT's static quantizer writes, is opset 13's


def static_opset(onnx_bytes: bytes, check_x: np.ndarray) -> tuple[bytes, str]:
    """The graph at opset STATIC_OPSET or above, and a note where it was converted ("" where it already was).

    ORT's static quantizer writes per-channel `DequantizeLinear` nodes into the graph's own opset, and an opset-11
    graph (a common `torch.onnx.export` setting) then fails to load ("Unrecognized attribute: axis"). ONNX's
    version converter rewrites the ops whose signature changed (Squeeze's axes as an input, ...); its result must
    give the same logits on `check_x`, or int8-static is refused in one line rather than quantizing another model.
    """
    import onnx
    from onnx import version_converter

    proto = onnx.load_from_string(onnx_bytes)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=STATIC_OPSET)
    if opset >= STATIC_OPSET:
        return onnx_bytes, ""
    advice = f"re-export it at opset {STATIC_OPSET} or above (opset_version={STATIC_OPSET}), or use int8-dynamic"
    try:
        converted = version_converter.convert_version(proto, STATIC_OPSET).SerializeToString()
        same = np.allclose(run_onnx(converted, check_x), run_onnx(onnx_bytes, check_x), rtol=1e-4, atol=1e-5)
    except Exception as exc:  # the converter's and ORT's own exception types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ToolkitError(f"int8-static needs an ONNX graph at opset {STATIC_OPSET} or above; this one is at opset "
                           f"{opset} and converting it failed ({type(exc).__name__}: {first}): {advice}") from None
    if not same:
        raise ToolkitError(f"int8-static needs an ONNX graph at opset {STATIC_OPSET} or above; this one is at opset "
                           f"{opset} and its conversion changes its outputs: {advice}")
    return converted, f", converted from opset {opset} to {STATIC_OPSET}"


def _fallback_path(rows: list[dict], config) -> list[dict]:
    """The search's rows of `config` (fp32 layers and agreement), its fp32 fallback's steps in order. A graph with
    its logits in float is its own configuration: measured beside the plain one, it may start the fallback."""
    keys = ("format", "calibration", "per_channel", "optimize", "lift", "float_logits")
    return [{"fp32_nodes": r["fp32_nodes"], "agreement": r["agreement"]} for r in rows
            if all(r.get(k) == getattr(config, k) for k in keys)]


def _static_variant(model: LoadedModel, data: DataBundle, fp32_bytes: bytes, found: SearchResult, chosen: Candidate,
                    settings: dict, role: str = "") -> Variant:
    """The Variant of one of the int8 search's graphs (`chosen`: its best; `role` "lean" or "fast": its lean or
    its fastest twin)."""
    config, min_agreement = chosen.config, settings["min_agreement"]
    notes = list(found.notes)
    if role == "lean":
        notes.append(f"this graph: the search's lean choice, {{size}} bytes and {len(chosen.fp32_nodes)} layer(s) in "
                     f"fp32, against {{best_size}} and {len(found.best.fp32_nodes)}; the fidelity rule judges both")
    elif role == "fast":
        notes.append(f"this graph: the search's fastest, {chosen.latency_ratio:.2f}x the fp32 ONNX latency and "
                     f"{chosen.agreement:.1%} agreement, against its choice's {found.best.latency_ratio:.2f}x and "
                     f"{found.best.agreement:.1%}; the fidelity rule and the caller's timing judge both")
    notes.append(f"static {config.format.upper()} calibrated ({config.calibration}) on {settings['samples']} "
                 "training samples")
    weights = set(_node_weights(fp32_bytes, chosen.fp32_nodes))
    check = {"samples": settings["check_samples"], "agreement": chosen.agreement, "target": min_agreement,
             "reached": chosen.agreement >= min_agreement, "fp32_nodes": list(chosen.fp32_nodes),
             "fp32_modules": sorted(weights), "steps": _fallback_path(found.rows, config)}
    if chosen.hint:
        notes.append(f"timed as the toolkit serves it, with ONNX Runtime's {', '.join(chosen.hint)} off (the graph's "
                     f"metadata asks for it: trainers.ortsession); a plain onnxruntime.InferenceSession runs it "
                     f"slower: pass disabled_optimizers={list(chosen.hint)}")
    if not check["reached"]:
        notes.append(f"int8 agrees with fp32 on only {chosen.agreement:.1%} of held-out samples (target "
                     f"{min_agreement:.1%}) in every configuration searched: auto never chooses it")
    twin = None if model.module is None else fake_quant_twin(model.module, (nn.Linear, nn.Conv1d, nn.Conv2d),
                                                             config.per_channel, skip=weights)
    recipe = {"method": "int8-static", "runtime": "onnxruntime", "exporter": settings["exporter"],
              "weight_type": "int8", "per_channel": config.per_channel, "quantized_ops": "all supported",
              "min_agreement": min_agreement, "fp32_nodes": list(chosen.fp32_nodes),
              "format": "QDQ" if config.format == "qdq" else "QOperator", "activation_type": "uint8",
              "calibration": config.calibration, "graph_optimization": config.optimize,
              "calibration_samples": settings["calibration_samples"], "seed": settings["seed"],
              **({role: True} if role else {}),
              **({"ort_disabled_optimizers": list(chosen.hint)} if chosen.hint else {}),
              **({"layout": "1-D convolutions and pools as 2-D ones"} if config.lift else {}),
              **({"logits": "float (the last layer's output not rounded to int8)"} if config.float_logits else {})}
    return _finish_int8(model, data, "static", twin, recipe, chosen.onnx_bytes, check, notes,
                        extra={"int8_search": found.rows}, name=f"int8-static-{role}" if role else None)


def _lean_sized(lean: Variant, best: Variant) -> Variant:
    """`lean` with its note's sizes filled in: the two files as they ship (`measure.size_on_disk`: with the
    metadata each carries), as its row's size_bytes gives them. The bare graphs' bytes, quoted before, were
    1,177 fewer than the lean file on a digits MLP: not the size one ships."""
    from .measure import size_on_disk

    sizes = {"size": f"{size_on_disk(lean):,}", "best_size": f"{size_on_disk(best):,}"}
    lean.notes = [n.format(**sizes) if n.startswith("this graph: the search's lean choice") else n for n in lean.notes]
    return lean


def _node_weights(onnx_bytes: bytes, names: list[str]) -> list[str]:
    """The PyTorch modules behind the graph nodes `names` (from their ".weight" initializer names)."""
    import onnx

    nodes = [n for n in onnx.load_from_string(onnx_bytes).graph.node if n.name in names]
    return [i[: -len(".weight")] for n in nodes for i in n.input if i.endswith(".weight")]


# ---------------------------------------------------------------- fp16 / bf16 PyTorch

def _half_variant(model: LoadedModel, dtype: str) -> Variant:
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    module = copy.deepcopy(model.module).cpu().to(torch_dtype).eval()
    recipe = {"method": "fp16" if dtype == "float16" else "bf16", "runtime": "torch", "dtype": dtype}
    variant_model = derive_model(model, module, recipe, dtype=dtype, runtime="torch", onnx=None,
                                 weights={"file": "model.safetensors", "codec": "dense"})
    notes = ["PyTorch on CPU has few half-precision kernels: expect it to be slower than fp32 there"]
    return Variant(name=recipe["method"] + "-torch", model=variant_model, recipe=recipe, notes=notes)


@register_method("fp16", role="runtime", auto=default_options, chain=True, chain_devices=("cuda",),
                 needs=("torch",))
def fp16(model: LoadedModel, data: DataBundle) -> list[Variant]:
    """Half-precision (float16) PyTorch weights: half the file size."""
    return [_half_variant(model, "float16")]


@register_method("bf16", role="runtime", auto=default_options, chain=True, chain_devices=("cuda",),
                 needs=("torch",))
def bf16(model: LoadedModel, data: DataBundle) -> list[Variant]:
    """bfloat16 PyTorch weights: half the file size, fp32's range."""
    return [_half_variant(model, "bfloat16")]
