"""One verb, many explainers: `attribute(model, inputs, target, method=...)`.

Every method (registered in `explain.registry`) answers the same call and returns
an `Attribution` shaped like the inputs. Each declares the model families and
runtimes it supports:

- ``torch``: the PyTorch module (fp32, or a float copy of an fp16/bf16 model);
- ``fake-quant``: the PyTorch fake-quant twin carried by an int8 ONNX artifact;
- ``onnx``: the ONNX Runtime session as a black box (no gradients).

`resolve` decides what actually runs: a gradient method on an int8 ONNX
artifact runs on its fake-quant twin when there is one, otherwise it is routed
to the black-box `shapley` estimator; combinations that make no sense (Grad-CAM
without convolutions, DeepLift through LSTM gates) are refused with a ToolkitError.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from trainers.errors import ToolkitError
from trainers.ortsession import first_output

from .registry import METHODS, get_method

ROUTE_BLACK_BOX = "shapley"


@dataclass(repr=False)
class Attribution:
    """Attributions shaped like the inputs, and what produced them.

    Attributes:
        values: (N, *input_shape) attributions of the target logit.
        method: the method that actually ran; `requested` the one asked for.
        runtime: torch | fake-quant | onnx.
        baseline: (*input_shape) reference input (see `baseline_name`), or the mean of the background set.
        reference_output: (N,) target logit at the baseline (expected over the background for background methods).
        delta: (N,) convergence delta where the method reports one, else None.
        routed: why another method or runtime ran, or None.
        standard_error: (N, *input_shape) standard error of each value, for sampled methods (None otherwise).
        error_bound: (N,) relative error ||values - exact|| / ||values|| at 95% confidence, from `standard_error`.
        error_dof: (N,) degrees of freedom of each sample's standard errors (independent draws - 1), None when
            unknown; `interval()` reads its Student-t quantile.
        converged: (N,) the sample reached the method's target (`tolerance`): the error bound of an adaptive
            sampled method, the completeness error of adaptive integrated gradients; None when not adaptive.
        steps: (N,) per-sample effort: model rows (shapley) or integration steps (integrated gradients).
        tolerance: the target `converged` refers to.
        baseline_name: what the baseline is, in words: "training mean", "zeros" (no training mean known),
            "given baseline", or "mean of N background samples" for background methods.
    """

    values: np.ndarray
    method: str
    requested: str
    runtime: str
    baseline: np.ndarray
    targets: np.ndarray
    reference_output: np.ndarray
    delta: np.ndarray | None = None
    routed: str | None = None
    seconds: float = 0.0
    standard_error: np.ndarray | None = None
    error_bound: np.ndarray | None = None
    error_dof: np.ndarray | None = None
    converged: np.ndarray | None = None
    steps: np.ndarray | None = None
    tolerance: float | None = None
    baseline_name: str = "training mean"

    def __repr__(self) -> str:
        """One short line: the arrays (one value per input element and sample) would fill a notebook cell."""
        from trainers.display import short_repr

        return short_repr("Attribution", method=self.method, requested=self.requested, runtime=self.runtime,
                          routed=self.routed, seconds=round(self.seconds, 3), baseline_name=self.baseline_name)

    def interval(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Per-value (lo, hi) at `confidence`, for a sampled method: values -/+ a Student-t quantile on the
        sample's `error_dof` times its standard error. The normal quantile (1.96) would be too narrow for the
        4-16 draws behind a value: see docs/results.md, "Per-value intervals". ValueError for a method without
        error bars."""
        if self.standard_error is None:
            raise ValueError(f"{self.method} gives no standard errors here, so no intervals; a sampled method does "
                             "where it has two independent draws or more (shapley from 3 permutations, or a "
                             "library's estimator run as replicates)")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
        from scipy.stats import norm, t

        upper = 0.5 + confidence / 2
        if self.error_dof is None:
            quantile = np.full(len(self.values), norm.ppf(upper))
        else:
            quantile = t.ppf(upper, np.maximum(np.asarray(self.error_dof, np.float64), 1.0))
        half = quantile.reshape(-1, *([1] * (self.values.ndim - 1))) * self.standard_error.astype(np.float64)
        return self.values - half, self.values + half

    def summary(self) -> dict:
        n = max(len(self.values), 1)
        return {"method": self.requested, "ran": self.method, "runtime": self.runtime, "routed": self.routed,
                "seconds": round(self.seconds, 4), "ms_per_sample": round(1000 * self.seconds / n, 3),
                "steps_mean": None if self.steps is None else round(float(np.mean(self.steps)), 2)}


# ---------------------------------------------------------------- runtime and forward


# Op types only a quantized ONNX graph holds (ONNX Runtime's static, dynamic and weight-only quantization)
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                           "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits"})


def quantized_graph(model) -> bool:
    """The model's ONNX graph is quantized: it holds a quantization op (`QUANTIZED_OPS`, or a QLinear* op)."""
    from trainers.models import onnx_op_types

    data = model.onnx_model_bytes() if hasattr(model, "onnx_model_bytes") else None
    ops = onnx_op_types(data) if data is not None else frozenset()
    return bool(ops & QUANTIZED_OPS) or any(op.startswith("QLinear") for op in ops)


def model_runtime(model) -> str:
    """The runtime gradient methods would use: torch (a PyTorch model, or the twin of an ONNX graph that is not
    quantized: an onnx-fp32 variant's twin is the fp32 module), fake-quant (the twin of a quantized graph) or
    onnx (no twin: black box only)."""
    if model.spec.runtime == "onnxruntime":
        if model.module is None:
            return "onnx"
        return "fake-quant" if quantized_graph(model) else "torch"
    return "torch"


def _twin_note(method: str, model, runtime: str) -> str | None:
    """Why a gradient method on an ONNX artifact ran on its PyTorch twin (None for a PyTorch model)."""
    if model.spec.runtime != "onnxruntime":
        return None
    if runtime == "fake-quant":
        return f"{method} needs gradients; ran on the artifact's fake-quant PyTorch twin"
    return f"{method} needs gradients; ran on the artifact's PyTorch twin (its ONNX graph is not quantized)"


def resolve(method: str, model) -> tuple[str, str, str | None]:
    """(method that runs, runtime it runs on, note) for `method` on `model`; ToolkitError when refused.

    What a method needs is read from the model (`trainers.models.capabilities`), not from its family name: a
    gradient method on a model without a PyTorch module (a user's ONNX graph, an int8 artifact without a twin)
    is routed to the black-box estimator; any other mismatch is refused in one line, as is a gradient method
    where one forward pass of the module shows it cannot run (`explain.probe`).
    """
    from .probe import describe

    m = get_method(method)
    family, tags = described = describe(model)      # the model is probed once (`explain.probe`)
    if m.why_not(described) is not None:
        if "torch" not in tags:
            # the refusal a PyTorch module of this graph would get comes first (Grad-CAM of a graph without a
            # convolution is refused as for the module, not routed): only the missing gradients are routed
            get_method(method, (family, tags | {"torch"}))
        if "torch" in m.needs and "torch" not in tags and get_method(ROUTE_BLACK_BOX).why_not(described) is None:
            return ROUTE_BLACK_BOX, "onnx", (f"{method} needs gradients and this ONNX model has no PyTorch module "
                                             f"(no fake-quant twin): routed to the black-box {ROUTE_BLACK_BOX} estimator")
        get_method(method, described)  # raises the one-line refusal
    is_onnx = model.spec.runtime == "onnxruntime"
    if is_onnx and "onnx" in m.runtimes:
        return method, "onnx", None
    runtime = model_runtime(model)
    if runtime in m.runtimes:
        return method, runtime, _twin_note(method, model, runtime)
    if runtime == "onnx" and ROUTE_BLACK_BOX in METHODS.names(model):
        return ROUTE_BLACK_BOX, "onnx", (f"{method} needs gradients and this int8 ONNX model has none (no fake-quant "
                                         f"twin): routed to the black-box {ROUTE_BLACK_BOX} estimator")
    raise ToolkitError(f"method '{method}' cannot run on runtime '{runtime}' (it supports {', '.join(m.runtimes)})")


class Context:
    """What a method needs: the forward function, the module (if any), baseline, background, device, seed."""

    def __init__(self, model, runtime: str, baseline: np.ndarray, background: np.ndarray | None, seed: int,
                 batch_size: int = 512):
        self.model, self.runtime, self.seed, self.batch_size = model, runtime, seed, batch_size
        self.spec = model.spec
        self.module = None
        if runtime != "onnx":
            module = model.module
            param = next(iter(module.parameters()))
            if param.dtype != torch.float32:  # fp16/bf16 model: attribute a float copy
                module = copy.deepcopy(module).float()
            self.module = module.eval()
            self.device = next(iter(module.parameters())).device
        else:
            self.device = torch.device("cpu")
            self.run_onnx = first_output(model.onnx_session())
        self._session = None  # x -> logits by the ONNX Runtime twin of the module, gradient-free passes (`_compiled`)
        self.baseline_np = np.asarray(baseline, np.float32)
        self.baseline = torch.as_tensor(self.baseline_np, device=self.device).unsqueeze(0)
        self.background_np = background
        self.background = None if background is None else torch.as_tensor(background, device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; differentiable for the torch runtimes."""
        if self.module is not None:
            return self.module(x)
        out = self.forward_numpy(x.detach().cpu().numpy())
        return torch.as_tensor(out, device=x.device)

    def forward_numpy(self, x: np.ndarray) -> np.ndarray:
        """Logits as NumPy, no gradients: what the black-box estimators spend their time in."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        run = self._compiled(x) or (self.run_onnx if self.module is None else None)
        outs = []
        for i in range(0, len(x), 4096):
            if run is not None:
                outs.append(run(x[i:i + 4096]))
            else:
                with torch.no_grad():
                    outs.append(self.module(torch.as_tensor(x[i:i + 4096], device=self.device)).float().cpu().numpy())
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, self.spec.num_classes), np.float32)

    def _compiled(self, x: np.ndarray):
        """For an fp32 PyTorch model on the CPU, an ONNX Runtime session of its export runs the gradient-free
        passes (see COMPILE_ROWS), returned as its call x -> logits (`first_output`); built once per context at
        the first pass of COMPILE_ROWS rows or more, and used only where it matches PyTorch on that pass's first
        rows (else, or where the export fails, PyTorch runs them)."""
        if self._session is False or self.module is None:
            return None
        if self._session is None:
            if len(x) < COMPILE_ROWS or self.runtime != "torch" or self.device.type != "cpu" \
                    or self.module is not self.model.module:
                return None
            session = _ort_twin(self.model, x[:64])
            self._session = first_output(session) if session is not None else False
        return self._session or None

    def grad_context(self):
        """cuDNN's RNNs (LSTM, GRU) have no backward in eval mode: disable cuDNN while attributing one on CUDA."""
        recurrent = self.module is not None and any(isinstance(m, torch.nn.RNNBase) for m in self.module.modules())
        if recurrent and self.device.type == "cuda":
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()

    def target_at(self, x_np: np.ndarray, targets: np.ndarray) -> np.ndarray:
        out = self.forward_numpy(x_np)
        return out[np.arange(len(targets)), targets] if len(out) == len(targets) else out[:, targets].mean(0)

    def reference_at_baseline(self, targets: np.ndarray) -> np.ndarray:
        return self.forward_numpy(self.baseline_np[None])[0, targets]

    def reference_over_background(self, targets: np.ndarray) -> np.ndarray:
        return self.forward_numpy(self.background_np).mean(0)[targets]


# Black-box estimators (shapley, LIME, ablation) spend their time in forward passes of ~1,000 rows. ONNX Runtime
# runs a 1-D CNN's rows 2.3x faster than eager PyTorch in isolation (9 against 21 us a row, one thread), 4x with
# its 1-D layers run as 2-D ones (5 us), and makes `shapley` 2-3x faster on it (1.15x on an MLP; docs/results.md);
# below this many rows a pass is not worth the export (tens of ms, once).
COMPILE_ROWS = 256


def _ort_twin(model, sample: np.ndarray):
    """An ONNX Runtime session that answers as `model` does on `sample`, as many threads as torch uses, or None
    (`compress.runtime_twin`)."""
    from compress import runtime_twin

    return runtime_twin(model, sample, threads=torch.get_num_threads())


TRAINING_MEAN = "training mean"


def default_baseline(spec) -> np.ndarray:
    """The training-split mean broadcast to one input (what the model's Standardize layer maps to 0), or zeros
    for a model whose preprocessing records no mean (see `baseline_for`)."""
    return baseline_for(spec)[0]


def baseline_for(spec, x_train=None) -> tuple[np.ndarray, str]:
    """(baseline, its name): the training mean recorded in the model's preprocessing; else, for a user's model
    (which records none), the mean of `x_train` in the model's input space; else zeros, named as such so that
    no result claims a training mean it did not use."""
    mean = spec.preprocessing.get("mean") if spec.preprocessing else None
    shape = tuple(spec.input_shape)
    if mean is not None:
        return np.broadcast_to(np.asarray(mean, np.float32), shape).copy(), TRAINING_MEAN
    if x_train is not None and len(x_train):
        rows = np.asarray(x_train, np.float32)
        return rows.mean(0, dtype=np.float64).astype(np.float32).reshape(shape), TRAINING_MEAN
    return np.zeros(shape, np.float32), "zeros"


def attribute(model, inputs, target=None, method: str = "integrated_gradients", *, baseline=None, background=None,
              seed: int = 0, batch_size: int = 64, baseline_name: str | None = None, **options) -> Attribution:
    """Attribute the target logit of `model` on `inputs` with a registered method.

    Args:
        model: a `trainers.LoadedModel`, an artifact path, a `torch.nn.Module` or an `.onnx` file or its bytes
            (`trainers.as_model`; a module's example input is taken from `inputs`).
        inputs: raw inputs (N, *input_shape) as the model takes them.
        target: class index, or one per sample; None: the predicted class.
        method: a name from `list_methods()`; routed or refused per `resolve`.
        baseline: reference input (default: the training mean the model's preprocessing records; zeros for a
            model that records none, such as a user's module: pass the training rows' mean, as `explain_model`
            does). `Attribution.baseline_name` says which was used.
        background: reference samples for background methods (default: `baseline` alone).
        baseline_name: what a given `baseline` is, recorded as `Attribution.baseline_name` (default: "given baseline").
        seed: seed of sampled methods.
        batch_size: samples attributed per call of the underlying explainer.
        **options: options of `method` (e.g. n_steps, n_permutations, nsamples), checked against its
            signature; not passed on when the request is routed to another method.
    """
    from trainers.fit import global_rng_kept
    from trainers.torchstate import standard_torch_mode
    from trainers.usermodel import grads_kept, modes_kept

    module = model.module if hasattr(model, "spec") else model
    # evaluated in eval mode, given back in the mode it came in with its gradients; the seeds below are the
    # method's, and a notebook's own random streams go on as they were
    with modes_kept(module), grads_kept(module), global_rng_kept(), standard_torch_mode():
        return _attribute(model, inputs, target, method, baseline=baseline, background=background, seed=seed,
                          batch_size=batch_size, baseline_name=baseline_name, **options)


def _attribute(model, inputs, target, method, *, baseline, background, seed, batch_size, baseline_name,
               **options) -> Attribution:
    from trainers.usermodel import as_model

    if not hasattr(model, "spec"):
        x = np.asarray(inputs, dtype=np.float32)
        model = as_model(model, x if x.ndim > 1 else x[None])
    ran, runtime, note = resolve(method, model)
    options = METHODS.check_options(method, options) if ran == method else {}
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim == len(model.spec.input_shape):
        x = x[None]
    if tuple(x.shape[1:]) != tuple(model.spec.input_shape):
        raise ToolkitError(f"inputs have shape {tuple(x.shape[1:])} per sample, the model takes {tuple(model.spec.input_shape)}")
    if len(x) == 0:
        raise ToolkitError("no inputs to explain")
    shape = tuple(model.spec.input_shape)
    if baseline is None:
        base, name = baseline_for(model.spec)
    else:
        base = _numbers(baseline, "baseline", f"one input {shape}")
        if base.size != int(np.prod(shape)):
            raise ToolkitError(f"baseline has shape {base.shape}; expected one input {shape}")
        base, name = base.reshape(shape), baseline_name or "given baseline"
    bg = base[None] if background is None else _numbers(background, "background", f"(samples, *{shape})")
    if bg.ndim != len(shape) + 1 or tuple(bg.shape[1:]) != shape or not len(bg):
        raise ToolkitError(f"background has shape {bg.shape}; expected (samples, *{shape}), at least one sample")
    ctx = Context(model, runtime, base, bg, seed, batch_size)
    targets = ctx.forward_numpy(x).argmax(1) if target is None else _targets(target, len(x))
    if targets.min() < 0 or targets.max() >= model.spec.num_classes:
        raise ToolkitError(f"target out of range: the model has {model.spec.num_classes} classes")
    entry = get_method(ran)
    start = time.perf_counter()
    values, deltas, reference, extras = [], [], None, []
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    with ctx.grad_context():
        for i in range(0, len(x), batch_size):
            v, ref, d, *more = entry.func(ctx, x[i:i + batch_size], targets[i:i + batch_size], **options)
            values.append(np.asarray(v, np.float32).reshape((-1, *model.spec.input_shape)))
            reference = ref if reference is None else np.concatenate([reference, ref])
            if d is not None:
                deltas.append(np.asarray(d, np.float64).reshape(-1))
            extras.append(more[0] if more else {})
    seconds = time.perf_counter() - start
    reference_input = ctx.background_np.mean(0) if entry.needs_background else base
    if entry.needs_background and background is not None:
        name = f"mean of {len(bg)} background samples"
    attr = Attribution(np.concatenate(values), ran, method, runtime, reference_input, targets,
                       np.asarray(reference, np.float64), np.concatenate(deltas) if deltas else None, note, seconds,
                       baseline_name=name)
    return _with_estimate(attr, extras)


def _numbers(value, name: str, expected: str) -> np.ndarray:
    """`value` as float32, or one ToolkitError naming the argument (a string, a ragged list)."""
    try:
        return np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise ToolkitError(f"{name} must be numbers shaped {expected}") from None


def _targets(target, n: int) -> np.ndarray:
    """One class index, or one per sample, as (n,) int64; a ToolkitError for another length or a value that is
    not a whole number (1.7 was explained as class 1 without a word)."""
    values = np.asarray(target)
    if values.ndim > 1 or (values.ndim == 1 and len(values) != n):
        raise ToolkitError(f"target has shape {values.shape}; expected one class index or one per sample ({n},)")
    if values.dtype.kind not in "iu" and not (values.dtype.kind == "f" and np.all(np.isfinite(values))
                                              and np.all(values == np.round(values))):
        raise ToolkitError(f"target must be whole class indices, not {target!r}")
    return np.broadcast_to(values.astype(np.int64), (n,)).copy()


ESTIMATE_FIELDS = ("standard_error", "error_bound", "error_dof", "converged", "steps")


def _with_estimate(attr: Attribution, extras: list[dict]) -> Attribution:
    """Gather the per-batch error bars a method returned (its optional fourth value) into `attr`."""
    for name in ESTIMATE_FIELDS:
        parts = [e.get(name) for e in extras]
        if parts and all(p is not None for p in parts):
            setattr(attr, name, np.concatenate([np.asarray(p) for p in parts]))
    if attr.standard_error is not None:
        attr.standard_error = attr.standard_error.reshape(attr.values.shape).astype(np.float32)
        if attr.error_bound is None:
            from .shapley import relative_error_bound

            attr.error_bound = relative_error_bound(attr.values, attr.standard_error)
    tolerances = {e.get("tolerance") for e in extras}
    attr.tolerance = tolerances.pop() if len(tolerances) == 1 else None
    return attr

