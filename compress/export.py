"""ONNX export of every model family, with a parity check against PyTorch.

`export_onnx` tries the TorchScript exporter first (fast on small models; kept only
where its graph matches PyTorch) and falls back to the dynamo exporter
(`torch.onnx.export(dynamo=True)`, via `torch.export`); both keep the batch axis dynamic. `onnx_parity` compares the
exported graph, run in ONNX Runtime, with the PyTorch module on held-out data.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from trainers.artifact import LoadedModel
from trainers.data import DataBundle
from trainers.errors import ToolkitError
from trainers.ortsession import first_output, inference_session

from .base import Variant, default_options, derive_model, register_method

INPUT_NAME, OUTPUT_NAME = "input", "logits"
Exporter = Literal["auto", "dynamo", "legacy"]
EXPORTERS = get_args(Exporter)
# An export takes up to seconds per model; several variants of one model (fp32, int8 dynamic/static)
# share one export. Keyed by module identity, checked against a weight fingerprint.
_CACHE: dict = {}


@dataclass
class ExportInfo:
    """How an export went: which exporter produced the file and how long it took."""

    exporter: str
    seconds: float
    fallback_reason: str | None = None


def _fp32_module(model) -> nn.Module:
    module = model.module if isinstance(model, LoadedModel) else model
    if module is None:
        raise ToolkitError("ONNX export needs a PyTorch model; this artifact has no PyTorch weights")
    return copy.deepcopy(module).cpu().float().eval()


def _sample_input(model, data: DataBundle | None) -> torch.Tensor:
    if data is not None and len(data.x_test) >= 2:
        return torch.from_numpy(np.ascontiguousarray(data.x_test[:2], dtype=np.float32))
    shape = model.spec.input_shape if isinstance(model, LoadedModel) else model.input_shape
    return torch.zeros((2, *shape), dtype=torch.float32)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings; keep stderr for our own messages."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(module: nn.Module, sample: torch.Tensor, opset: int | None) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    kwargs = {"opset_version": opset} if opset else {}
    program = torch.onnx.export(module, (sample,), None, dynamo=True, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False, **kwargs)
    return program.model_proto.SerializeToString()


def _export_legacy(module: nn.Module, sample: torch.Tensor, opset: int | None) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(module, (sample,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset or 17)
    return buffer.getvalue()


def export_with_info(model, data: DataBundle | None = None, *, exporter: str = "auto",
                     opset: int | None = None) -> tuple[bytes, ExportInfo]:
    """Export to ONNX bytes and say how (see `export_onnx`)."""
    if exporter not in EXPORTERS:
        raise ToolkitError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    source = model.module if isinstance(model, LoadedModel) else model
    key = (id(source), exporter, opset)
    cached = _CACHE.get(key)
    if cached is not None and cached[0] is source and cached[1] == _fingerprint(source):
        return cached[2], cached[3]
    onnx_bytes, info = _export(model, data, exporter, opset)
    _CACHE[key] = (source, _fingerprint(source), onnx_bytes, info)
    while len(_CACHE) > 8:
        _CACHE.pop(next(iter(_CACHE)))
    return onnx_bytes, info


def _fingerprint(module) -> tuple:
    """Cheap identity of a module's weights, so a cached export is never stale."""
    if module is None:
        return ()
    return tuple((k, float(v.float().sum())) for k, v in module.state_dict().items())


def _export(model, data, exporter, opset) -> tuple[bytes, ExportInfo]:
    """"auto" tries the TorchScript (legacy) exporter first: on these small models it takes tens of
    milliseconds where the dynamo exporter takes seconds (measured: MLP 0.06 s against 1.5-5 s), and auto
    exports every pruned and distilled model. Its graph is kept only when it matches PyTorch on the sample
    (`_matches`); otherwise, or where it fails, the dynamo exporter runs."""
    module, sample = _fp32_module(model), _sample_input(model, data)
    start, reasons = time.perf_counter(), []
    order = {"auto": ("legacy", "dynamo"), "legacy": ("legacy",), "dynamo": ("dynamo",)}[exporter]
    for name in order:
        try:
            with _quiet():
                onnx_bytes = (_export_legacy if name == "legacy" else _export_dynamo)(module, sample, opset)
            onnx_bytes = _without_zero_states(onnx_bytes)
            _check_batch_axis(onnx_bytes, sample)
            if exporter == "auto":
                _matches(onnx_bytes, module, sample)
            reason = "; ".join(reasons) or None
            return onnx_bytes, ExportInfo(name, time.perf_counter() - start, reason)
        except Exception as exc:  # any exporter failure: the next exporter gets its chance
            text = _ANSI.sub("", str(exc)).strip()       # torch.export colours its messages for a terminal
            first = text.splitlines()[0][:200] if text else ""
            reasons.append(f"{name}: {type(exc).__name__}: {first}")
    if len(order) == 1:
        raise ToolkitError(f"ONNX export ({order[0]}) failed: {reasons[0].split(': ', 2)[-1] or reasons[0]}")
    hint = ("; a module wrapped by torch.compile exports as its original (module._orig_mod)"
            if hasattr(module, "_orig_mod") else "")
    raise ToolkitError(f"ONNX export failed with both exporters: {' | '.join(reasons)}{hint}")


def _without_zero_states(onnx_bytes: bytes) -> bytes:
    """The exported graph without its recurrent layers' zero initial states (`compress.layout.drop_zero_states`:
    exact by ONNX's definition, 3-4% faster at batch 1); the graph as exported where the pass does not apply."""
    from .layout import drop_zero_states

    try:
        return drop_zero_states(onnx_bytes) or onnx_bytes
    except Exception:  # noqa: BLE001 -- a pass that cannot read the graph leaves it as it is
        return onnx_bytes


def _matches(onnx_bytes: bytes, module: nn.Module, sample: torch.Tensor) -> None:
    """The graph's logits on `sample` match the module's (float32 rounding apart); RuntimeError otherwise."""
    same, difference = graph_matches(ort_session(onnx_bytes), module, sample.numpy())
    if not same:
        raise RuntimeError(f"exported graph differs from PyTorch by {difference:.2e}")


def graph_matches(session, module: nn.Module, sample: np.ndarray) -> tuple[bool, float]:
    """Whether an ONNX Runtime session's logits on `sample` match `module`'s (rtol 1e-3, atol 1e-4: float32
    rounding), and their largest absolute difference."""
    got = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(sample, np.float32)})[0]
    with torch.inference_mode():
        want = module(torch.as_tensor(sample)).float().numpy()
    if got.shape != want.shape:
        return False, float("inf")
    return same_logits(got, want), float(np.abs(got - want).max())


def same_logits(got: np.ndarray, want: np.ndarray) -> bool:
    """Two runs' logits equal up to float32 rounding (rtol 1e-3, atol 1e-4)."""
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-3, atol=1e-4))


def runtime_twin(model, sample: np.ndarray, threads: int = 1):
    """An ONNX Runtime session on the TorchScript export of `model`, its 1-D convolutions run as 2-D ones
    (`compress.layout`), or None when the export fails or its logits differ from PyTorch's on `sample` beyond
    float32 rounding. For callers that run many forward passes (explain's black-box estimators): the session
    is faster than eager PyTorch, and None leaves them on PyTorch."""
    from .layout import lift_1d

    try:
        graph = export_onnx(model, exporter="legacy")
        session = ort_session(lift_1d(graph) or graph, threads=threads)
        same, _ = graph_matches(session, model.module, sample)
    except Exception:  # noqa: BLE001 - any export or runtime failure: the caller keeps PyTorch
        return None
    return session if same else None


def export_onnx(model, data: DataBundle | None = None, *, exporter: str = "auto", opset: int | None = None) -> bytes:
    """Export a model (LoadedModel or nn.Module, any family) to ONNX with a dynamic batch axis.

    Args:
        model: the fp32 model; a copy is exported, the original is left alone.
        data: supplies a real sample input (else zeros of the model's input shape).
        exporter: "auto" (TorchScript exporter where its graph matches PyTorch, else dynamo), "dynamo" or "legacy".
        opset: ONNX opset (default: the exporter's).

    Returns:
        The serialized ONNX model; input "input" (N, *input_shape), output "logits" (N, classes).
    """
    return export_with_info(model, data, exporter=exporter, opset=opset)[0]


def export_onnx_raw_rows(model: LoadedModel, data: DataBundle | None = None, *, exporter: str = "auto") -> bytes:
    """Export a model trained on a numeric table to ONNX that takes raw rows: input "rows" (N, columns) in
    the table's column order (dropped columns included, missing cells as NaN), the recorded preprocessing
    (column selection, imputation, missing indicators) inside the graph, output "logits".

    Raises:
        ToolkitError: the model was not trained on a table, or the table has text columns (their encoding
            needs strings, which this graph does not take; export the encoded model with `export_onnx`).
    """
    from trainers.preprocess import numeric_only

    table = model.spec.preprocessing.get("table") if isinstance(model, LoadedModel) else None
    if table is None:
        raise ToolkitError("ONNX export of raw rows needs a model trained on a table (CSV, Parquet, DataFrame)")
    if not numeric_only(table):
        text = [s["column"] for s in table["steps"] if s["kind"] != "numeric"]
        wide = [s["column"] for s in table["steps"] if "offset" in s]
        why = (f"columns {', '.join(text)} are text: their encoding cannot run inside the ONNX graph" if text else
               f"columns {', '.join(wide)} need float64 (float32 rows would lose their digits before the graph "
               "could centre them)")
        raise ToolkitError(f"{why}; export the encoded model (export_onnx) and encode the rows before it")
    return prepend_table_steps(export_onnx(model, data, exporter=exporter), table)


def raw_rows_onnx(onnx_bytes: bytes, spec) -> bytes | None:
    """The raw-row twin of an ONNX variant (`model.raw.onnx`): the numeric table steps prepended, so the graph
    takes input "rows" (N, the table's columns, missing cells NaN) and gives the same "logits".

    Returns None for a model not trained on a table, or with text columns (their encoding needs strings).
    """
    from trainers.preprocess import numeric_only

    table = (spec.preprocessing or {}).get("table")
    if table is None or not numeric_only(table):
        return None
    return with_metadata(prepend_table_steps(onnx_bytes, table), spec, takes="raw rows")


def prepend_table_steps(onnx_bytes: bytes, table: dict) -> bytes:
    """The numeric steps of a fitted table (select, impute, indicate missing) as ONNX nodes before the model."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    steps = table["steps"]
    picked = np.array([table["columns"].index(s["column"]) for s in steps], dtype=np.int64)
    fills = np.array([s["fill"] for s in steps], dtype=np.float32)
    flagged = np.array([i for i, s in enumerate(steps) if s["indicator"]], dtype=np.int64)
    order, k = [], len(steps)  # encoded order: each value, then its indicator
    for i, s in enumerate(steps):
        order.append(i)
        if s["indicator"]:
            order.append(k + int(np.flatnonzero(flagged == i)[0]))
    consts = [numpy_helper.from_array(picked, "pre_columns"), numpy_helper.from_array(fills, "pre_fills"),
              numpy_helper.from_array(flagged, "pre_flagged"),
              numpy_helper.from_array(np.array(order, dtype=np.int64), "pre_order")]
    nodes = [helper.make_node("Gather", ["rows", "pre_columns"], ["pre_picked"], axis=1),
             helper.make_node("IsNaN", ["pre_picked"], ["pre_nan"]),
             helper.make_node("Where", ["pre_nan", "pre_fills", "pre_picked"], ["pre_filled"])]
    parts = ["pre_filled"]
    if len(flagged):
        nodes += [helper.make_node("Cast", ["pre_nan"], ["pre_nanf"], to=TensorProto.FLOAT),
                  helper.make_node("Gather", ["pre_nanf", "pre_flagged"], ["pre_flags"], axis=1)]
        parts.append("pre_flags")
    nodes += [helper.make_node("Concat", parts, ["pre_cat"], axis=1),
              helper.make_node("Gather", ["pre_cat", "pre_order"], ["encoded"], axis=1)]
    graph = helper.make_graph(
        nodes, "table_preprocessing",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", len(table["columns"])])],
        [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["batch", len(table["outputs"])])], consts)
    pre = helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
    pre.ir_version = model.ir_version
    merged = compose.merge_models(pre, model, io_map=[("encoded", model.graph.input[0].name)])
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _check_batch_axis(onnx_bytes: bytes, sample: torch.Tensor) -> None:
    """Run the graph at batch 1 and batch 3: a frozen batch axis fails here, not later."""
    session = ort_session(onnx_bytes)
    for n in (1, 3):
        x = np.repeat(sample[:1].numpy(), n, axis=0)
        try:
            out = session.run(None, {session.get_inputs()[0].name: x})[0]
        except Exception:
            out = None
        if out is None or out.shape[0] != n:
            got = "fails" if out is None else f"returns batch {out.shape[0]}"
            raise RuntimeError(f"the exported graph {got} at batch {n}: it has a fixed batch size (a size the "
                               "forward read from the input, such as len(x), became a constant; x.shape[0] inside "
                               "torch operations keeps it)")


def ort_session(onnx_bytes: bytes, threads: int | None = None, spin: bool = False, device: str = "cpu"):
    """An ONNX Runtime session on in-memory bytes; `threads` sets intra-op threads (None: ORT default); `device`:
    where it serves (`trainers.ortsession.providers_for`: a GPU where this ONNX Runtime build has CUDA's provider).

    `spin`: let idle worker threads busy-wait for the next op. ORT spins by default, which is fastest on an
    idle machine and ruinous on a busy one (spinning threads take the cores the other processes, and our own
    training, wait for); only latency timing asks for it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the caller as exceptions: no ORT log lines on stderr
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return inference_session(onnx_bytes, options, device)


def run_onnx(session_or_bytes, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    session = ort_session(session_or_bytes) if isinstance(session_or_bytes, bytes) else session_or_bytes
    run = first_output(session)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def onnx_parity(onnx_bytes: bytes, model, x: np.ndarray) -> dict:
    """Compare ONNX Runtime's logits with PyTorch's on `x` (held-out data).

    Returns:
        {"max_abs_diff": float, "top1_agreement": float in [0, 1], "n": samples}.
    """
    from trainers.artifact import predict

    reference = predict(model, x)
    got = run_onnx(onnx_bytes, x)
    return {"max_abs_diff": float(np.abs(got.astype(np.float64) - reference).max()),
            "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()), "n": int(len(x))}


def onnx_variant_model(model: LoadedModel, twin: nn.Module, recipe: dict, dtype: str = "float32") -> LoadedModel:
    """A LoadedModel for an ONNX Runtime variant: spec with runtime/onnx/lineage set, `twin` as PyTorch module."""
    return derive_model(model, twin, recipe, runtime="onnxruntime", dtype="float32",
                        weights={"file": "model.safetensors", "codec": "dense"},
                        onnx={"file": "model.onnx", "precision": dtype, "opset": None})


@register_method("onnx-fp32", role="runtime", auto=default_options, chain=True)
def onnx_fp32(model: LoadedModel, data: DataBundle, exporter: Exporter = "auto") -> list[Variant]:
    """fp32 ONNX export, run in ONNX Runtime (parity with PyTorch measured on the test split); a user's ONNX
    graph gets ONNX Runtime's basic (portable) graph optimisations instead."""
    if model.module is None:
        return [_optimized_variant(model, data)]
    onnx_bytes, info = export_with_info(model, data, exporter=exporter)
    onnx_bytes, layout = fast_graph(onnx_bytes, data.x_test)
    parity = onnx_parity(onnx_bytes, model, data.x_test)
    recipe = {"method": "onnx-fp32", "exporter": info.exporter}
    variant_model = onnx_variant_model(model, _fp32_module(model), recipe)
    variant_model.onnx_bytes = onnx_bytes
    notes = [f"exported with the {info.exporter} exporter in {info.seconds:.1f}s", *layout]
    if info.fallback_reason:
        notes.append(f"exported with {info.exporter} after another exporter failed ({info.fallback_reason})")
    return [Variant(name="onnx-fp32", model=variant_model, recipe=recipe, onnx_bytes=onnx_bytes,
                    measurements={"parity": parity}, notes=notes)]


def on_a_gpu(family: str, settings: dict) -> list[dict]:
    """An `auto` capability: try the method once, with its default options, where auto times on a GPU
    (`settings["device"]`, which `auto.plan` passes)."""
    return [{}] if settings.get("device", "cpu") != "cpu" else []


@register_method("onnx-fp16", role="runtime", auto=on_a_gpu, chain=True, chain_devices=("cuda",))
def onnx_fp16(model: LoadedModel, data: DataBundle, exporter: Exporter = "auto") -> list[Variant]:
    """fp16 ONNX graph with float32 input and logits, for ONNX Runtime's CUDA provider: half the file size."""
    (fp32,) = onnx_fp32(model, data, exporter=exporter)
    # ONNX Runtime's own converter (onnxruntime.transformers.float16): it keeps the ops without fp16 kernels in
    # float32 behind casts, and with keep_io_types the graph takes and returns float32 as every other variant.
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every constant it clamps to fp16's range
        onnx_bytes = convert_float_to_float16(onnx.load_from_string(fp32.onnx_bytes),
                                              keep_io_types=True).SerializeToString()
    parity = onnx_parity(onnx_bytes, model, data.x_test) if model.module is not None else None
    recipe = {"method": "onnx-fp16", "exporter": fp32.recipe.get("exporter"), "io": "float32"}
    variant_model = onnx_variant_model(model, fp32.model.module, recipe, dtype="float16")
    variant_model.onnx_bytes = onnx_bytes
    notes = [*fp32.notes, "float16 weights and activations, float32 input and logits (ONNX Runtime's converter); "
             "ONNX Runtime's CPU provider has few float16 kernels: expect it to be slower than fp32 there"]
    return [Variant(name="onnx-fp16", model=variant_model, recipe=recipe, onnx_bytes=onnx_bytes,
                    measurements={"parity": parity} if parity else {}, notes=notes)]


def _optimized_variant(model: LoadedModel, data: DataBundle) -> Variant:
    """A user's ONNX graph with ORT's basic optimisations (constant folding, redundant nodes removed) saved in."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="toolkit-ort-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the caller as exceptions: no ORT log lines on stderr
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.onnx_model_bytes(), options, providers=["CPUExecutionProvider"])
        onnx_bytes = (Path(tmp) / "optimized.onnx").read_bytes()
    onnx_bytes, layout = fast_graph(onnx_bytes, data.x_test)
    recipe = {"method": "onnx-fp32", "exporter": None, "optimization": "ORT basic"}
    variant_model = onnx_variant_model(model, None, recipe)
    variant_model.onnx_bytes = onnx_bytes
    parity = onnx_parity(onnx_bytes, model, data.x_test)
    return Variant(name="onnx-fp32", model=variant_model, recipe=recipe, onnx_bytes=onnx_bytes,
                   measurements={"parity": parity}, notes=["the user's ONNX graph with ONNX Runtime's basic "
                                                           "graph optimisations saved in", *layout])


def fast_graph(onnx_bytes: bytes, x: np.ndarray, any_scale: bool = True) -> tuple[bytes, list[str]]:
    """The graph with the toolkit's rewrites for ONNX Runtime's CPU kernels, each used only where the rewritten
    graph gives the same logits on `x` (float32 rounding apart): the input's standardization folded into the first
    layer or run as one node (`input_fold`), and 1-D convolutions run as 2-D ones (`compress.layout.lift_1d`: the
    faster blocked-layout kernels). `any_scale` False: the standardization is folded into the first layer's
    weights only where it is one mean and one std for every value (a graph whose weights are then rounded to
    int8). Returns (graph, notes)."""
    onnx_bytes, notes = input_fold(onnx_bytes, x, any_scale)
    lifted, lift_notes = lift_checked(onnx_bytes, x)
    return lifted, notes + lift_notes


def lift_checked(onnx_bytes: bytes, x: np.ndarray) -> tuple[bytes, list[str]]:
    """The graph with its 1-D convolutions and pools as 2-D ones (`compress.layout.lift_1d`) where that gives the
    same logits on `x`, else the graph as it is. Returns (graph, notes)."""
    from .layout import lift_1d

    return _checked_rewrite(onnx_bytes, lift_1d(onnx_bytes), x, "1-D convolutions kept as they are",
                            "1-D convolutions and pools run as 2-D ones (ONNX Runtime's blocked-layout kernels)")


def input_fold(onnx_bytes: bytes, x: np.ndarray, any_scale: bool = False) -> tuple[bytes, list[str]]:
    """The graph with its input standardization folded into the first layer's weights (`first_layer_fold`), or
    else with the standardization and Flatten as one BatchNormalization node (`compress.layout.fold_input_scaling`),
    each where that gives the same logits on `x`; for any graph, int8 ones too (the BatchNormalization rewrite is
    upstream of the first QuantizeLinear). Returns (graph, notes)."""
    from .layout import fold_input_scaling

    folded, notes = first_layer_fold(onnx_bytes, x, not any_scale)
    if folded is not onnx_bytes:
        return folded, notes
    return _checked_rewrite(onnx_bytes, fold_input_scaling(onnx_bytes), x, "the input's standardization kept as it is",
                            "the input's standardization and Flatten run as one BatchNormalization node")


def first_layer_fold(onnx_bytes: bytes, x: np.ndarray, uniform_only: bool) -> tuple[bytes, list[str]]:
    """The graph with its input standardization folded into the first Gemm's weights
    (`compress.layout.fold_input_into_gemm`) where that gives the same logits on `x`, else the graph as it is.
    `uniform_only`: only where one mean and one std hold for every value (a graph about to be quantized).
    Returns (graph, notes)."""
    from .layout import fold_input_into_gemm

    return _checked_rewrite(onnx_bytes, fold_input_into_gemm(onnx_bytes, uniform_only), x,
                            "the input's standardization kept as it is",
                            "the input's standardization folded into the first layer's weights")


def _checked_rewrite(onnx_bytes: bytes, rewritten: bytes | None, x: np.ndarray, kept: str, used: str
                     ) -> tuple[bytes, list[str]]:
    """`rewritten` (a graph pass's output; None: the pass did not apply) where it gives the same logits as
    `onnx_bytes` on the first 256 rows of `x`, else `onnx_bytes`, with a note saying which."""
    if rewritten is None:
        return onnx_bytes, []
    rows = np.ascontiguousarray(x[:256], np.float32)
    try:
        want, got = run_onnx(onnx_bytes, rows), run_onnx(rewritten, rows)
    except Exception as exc:  # noqa: BLE001 -- a rewrite ONNX Runtime refuses is not used, never a failure
        return onnx_bytes, [f"{kept} (the rewrite failed: {type(exc).__name__})"]
    if not same_logits(got, want):
        return onnx_bytes, [f"{kept} (the rewrite changed the logits)"]
    return rewritten, [used]


def with_metadata(onnx_bytes: bytes, spec, takes: str = "encoded inputs") -> bytes:
    """The ONNX model with `metadata_props` a deployment needs: class and feature names, input shape and layout,
    preprocessing (JSON), the recipe that made it and the toolkit version. Values are strings (the ONNX rule).
    `takes`: "raw rows" for `model.raw.onnx`, whose feature names and input shape are the table's raw columns."""
    import json

    import onnx

    from trainers.env import toolkit_version

    proto = onnx.load_from_string(onnx_bytes)
    names, shape = spec.feature_names, list(spec.input_shape)
    if takes == "raw rows":  # the raw graph's input: the table's columns (dropped ones too), not the encoded ones
        names = list(spec.preprocessing["table"]["columns"])
        shape = [len(names)]
    props = {"toolkit.version": toolkit_version(), "family": spec.family, "class_names": json.dumps(spec.class_names),
             "feature_names": json.dumps(names), "input_shape": json.dumps(shape),
             "layout": spec.layout, "preprocessing": json.dumps(spec.preprocessing),
             "recipe": json.dumps((spec.lineage or {}).get("recipe")), "input": takes}
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()
