"""A user's own model as a `LoadedModel`: an artifact directory, any `torch.nn.Module`, or an ONNX graph.

`as_model` is what every stage calls on the model it is given, so `compress_model`, `explain.attribute`,
`explain_model`, the reports and `trainers.predict` take the same three forms. Everything a stage relies on is
checked here, once, with one ToolkitError line each: the forward pass on the data's inputs, logits of shape
(batch, classes), one float input with a free batch axis, a graph ONNX Runtime can run.

Pickled checkpoints are refused. `.pt`/`.pth`/`.pkl`/`.ckpt` files are pickles (loading one runs code), and so
is a `torch.export` program: `torch.export.load` reads its weights and constants with torch's full unpickler
(weights_only switched off) and the pickle module (torch 2.13, torch/export/pt2_archive/_package.py;
tests/test_own_model.py checks this still holds). The Python route is to build the module in one's own code
and pass it, or to export it to ONNX.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from .artifact import CUSTOM_FAMILY, ONNX_FAMILY, LoadedModel, ModelSpec, is_module, load_model, refuse_frozen
from .data import MAX_CLASSES
from .errors import ToolkitError, memory_refusal, warn
from .fileio import check_regular_file
from .ortsession import inference_session

if TYPE_CHECKING:
    from torch import nn

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".pt2")
PYTHON_ROUTE = ("build the module in your own Python code and pass it (compress.compress_model(MyNet(), data)), "
                "or export it to ONNX (torch.onnx.export) and pass the .onnx file")
EXAMPLE_SAMPLES = 3  # the forward check runs on this many samples (a batch above 1 catches a fixed batch axis)


def refuse_pickle(path: Path) -> None:
    """One line with what to do instead where `path` names a pickle (or a torch.export program): every command
    that takes a model (compress, explain, predict) gives this same advice."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not path.is_dir():
        what = "a torch.export program, which torch.export.load unpickles" if suffix == ".pt2" else "a pickle"
        raise ToolkitError(f"{path.name} is {what}; the toolkit never loads pickles (they run code): "
                           f"{PYTHON_ROUTE}")


@contextmanager
def modes_kept(*models):
    """Every submodule's `training` flag of the user's modules among `models` as it was, after the block: the
    stages evaluate in eval mode, and a notebook's `net.train()` (or a submodule left in train mode) stands."""
    modes = [(m, m.training) for model in models if is_module(model) for m in model.modules()
             if isinstance(getattr(m, "training", None), bool)]   # a frozen TorchScript module has no flag
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def grads_kept(*models):
    """Each parameter's `.grad` of the user's modules among `models` as it was, after the block: shap's explainers
    call `model.zero_grad()`, and a notebook mid fine-tuning may hold gradients it has not stepped on yet. The
    values are copied (zero_grad may zero them in place) and written back into the same tensors."""
    import torch

    kept = [(p, p.grad, None if p.grad is None else p.grad.detach().clone())
            for model in models if is_module(model) for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, grad, values in kept:
                if grad is not None:
                    grad.copy_(values)
                param.grad = grad


def as_model(model, data=None, *, class_names=None, module: nn.Module | None = None) -> LoadedModel:
    """The model a stage works on, from what the user has.

    Args:
        model: a `LoadedModel` (returned as it is); a toolkit artifact directory; a `torch.nn.Module` (fp32,
            taking a batch of the data's inputs and returning (batch, classes) logits); a path to an `.onnx`
            file, or its bytes.
        data: a `DataBundle`, a data spec (`trainers.load_data`) or an array of inputs: where a module's
            example input, input shape and class names come from. An ONNX graph needs it only where its
            input shape or class count is not fixed in the graph.
        class_names: names of the classes when the data has none.
        module: for an artifact of a user architecture, a fresh instance of its class (`load_model`).

    Raises:
        ToolkitError: one line saying what is wrong with the model, and what to do instead where there is a way.
    """
    if isinstance(model, LoadedModel):
        return model
    if is_module(model):
        return _from_module(model, _bundle(data), class_names)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return from_onnx(bytes(model), data, class_names=class_names, origin="<onnx bytes>")
    if isinstance(model, (str, Path)):
        path = Path(model)
        suffix = path.suffix.lower()
        refuse_pickle(path)
        if suffix == ".onnx":
            check_regular_file(path, "ONNX file")
            onnx_bytes, proto = read_onnx_file(path)
            return from_onnx(onnx_bytes, data, class_names=class_names, origin=str(path.absolute()), proto=proto)
        return load_model(path, module=module)  # an artifact directory (its own one-line refusals otherwise)
    raise ToolkitError(f"a model is an artifact directory, a torch.nn.Module, or an .onnx file or its bytes; "
                       f"got {type(model).__name__}")


def read_onnx_file(path: Path):
    """An `.onnx` file as one self-contained graph, (its bytes, its parsed proto or None where it does not parse): tensors the exporter kept in separate files (external data:
    `torch.onnx.export` writes `NAME.onnx.data` beside the graph) are read in from the file's own folder, so
    neither the working directory nor the file's place later matters. A tensor whose data is said to lie
    outside that folder, or in a file that is not there, is one ToolkitError line; a file in the folder that is a
    symbolic link is followed (`_names_a_file_in`)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    raw = path.read_bytes()
    try:
        proto = onnx.load_from_string(raw)
    except Exception:  # not a graph: `from_onnx` says so in its own words
        return raw, None
    tensors = [t for t in _all_tensors(proto) if uses_external_data(t)]
    if not tensors:
        return raw, proto
    base = path.parent.resolve()
    for tensor in tensors:
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if not _names_a_file_in(base, location):
            raise ToolkitError(f"{path}: tensor '{tensor.name}' keeps its data in {location!r}, which is not a file "
                               f"in {base}; keep the graph's data files beside it")
    try:
        for tensor in tensors:  # from the file a link in the folder leads to: ONNX's reader refuses links
            entry = next(e for e in tensor.external_data if e.key == "location")
            target = (base / entry.value).resolve()
            entry.value = target.name
            load_external_data_for_tensor(tensor, str(target.parent))
        return proto.SerializeToString(), proto
    except Exception as exc:  # a data file shorter than its tensors, a graph over protobuf's 2 GB
        raise ToolkitError(f"{path}: cannot read its external data ({_first_line(exc)})") from None


def _names_a_file_in(base: Path, location: str) -> bool:
    """Whether an external-data `location` names a file inside the folder `base`.

    The location string is what a crafted graph controls: empty, absolute or climbing out with '..' is refused,
    whatever lies there. A name inside the folder may be a symbolic link, and is followed: the user put it there
    (the Hugging Face hub cache links each file of a snapshot into ../../blobs/, and ONNX Runtime loads it so)."""
    parts = Path(location).parts
    return bool(location) and not Path(location).is_absolute() and ".." not in parts and (base / location).is_file()


def _all_tensors(proto):
    """Every tensor of a graph: initializers and constants, in subgraphs too."""
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(proto))


def _bundle(data):
    """The data as a DataBundle, an array of inputs as it is, or None."""
    from .data import DataBundle, load_data

    if data is None or isinstance(data, DataBundle):
        return data
    if isinstance(data, np.ndarray):
        return data
    return load_data(data)


def _inputs_of(data) -> np.ndarray | None:
    if data is None:
        return None
    x = data if isinstance(data, np.ndarray) else (data.x_test if len(data.x_test) else data.x_train)
    return np.ascontiguousarray(np.asarray(x, np.float32)[:EXAMPLE_SAMPLES])


def _warn_if_probabilities(out: np.ndarray, where: str) -> None:
    """One warning line where a model's outputs on the example rows look like probabilities (each row non-negative
    and summing to 1): the toolkit takes logits, and a softmax of probabilities flattens them toward uniform (a
    class at 0.99 reads as 0.58 of three), though the predicted class stays the same."""
    if np.ndim(out) == 2 and _looks_like_probabilities(out):
        warn(f"{where} returns probabilities (each row sums to 1), not logits: predict's probabilities would be a "
             "softmax of them; return the scores before the softmax (or log-probabilities)")


def _names(data, class_names, width: int, where: str) -> list[str]:
    names = list(class_names) if class_names is not None else getattr(data, "class_names", None)
    if names is None:
        names = [str(i) for i in range(width)]
    names = [str(n) for n in names]
    if width > MAX_CLASSES:  # as for the toolkit's own models: reports and a confusion matrix are k x k
        raise ToolkitError(f"{where} returns {width:,} class scores, more than the limit of {MAX_CLASSES:,} classes")
    if len(names) != width:
        raise ToolkitError(f"{where} returns {width} class scores, the data has {len(names)} classes")
    return names


def _spec(family: str, config: dict, x: np.ndarray, data, names: list[str], runtime: str, **extra) -> ModelSpec:
    from .env import package_versions

    return ModelSpec(family=family, config=config, input_shape=[int(d) for d in x.shape[1:]],
                     layout=getattr(data, "layout", None) or _layout(x.shape[1:]), class_names=names,
                     feature_names=getattr(data, "feature_names", None), preprocessing={"kind": "none"},
                     data={"name": getattr(data, "name", None)}, versions=package_versions(), runtime=runtime,
                     extra=extra)


def _layout(shape) -> str:
    return {1: "features", 2: "signal", 3: "image"}.get(len(shape), "tensor")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# ---------------------------------------------------------------- a torch.nn.Module


def _from_module(module: nn.Module, data, class_names) -> LoadedModel:
    import torch

    x = _inputs_of(data)
    if x is None:
        raise ToolkitError("a torch.nn.Module needs data (a DataBundle, a data spec or an array of inputs): "
                           "the example input, input shape and classes come from it")
    refuse_frozen(module)
    param = next(iter(module.parameters()), None)
    if param is not None and param.dtype != torch.float32:
        raise ToolkitError(f"the module's weights are {str(param.dtype).replace('torch.', '')}; the toolkit "
                           "starts from an fp32 model (module.float())")
    device = param.device if param is not None else torch.device("cpu")
    try:
        with modes_kept(module), torch.no_grad():  # each submodule's train/eval flag comes back as it was
            module.eval()
            out = module(torch.from_numpy(x).to(device))
    except Exception as exc:  # the user's forward may raise anything: one line saying the shapes
        raise ToolkitError(f"the model's forward fails on the data's inputs of shape {tuple(x.shape)} "
                           f"({_first_line(exc)})") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape is None or len(shape) != 2 or shape[0] != len(x) or shape[1] < 2:
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise ToolkitError(f"the model returns {got} for inputs of shape {tuple(x.shape)}; the toolkit needs "
                           f"logits of shape (batch, classes), one tensor")
    _warn_if_probabilities(out.detach().cpu().numpy(), "the module")
    names = _names(data, class_names, shape[1], "the model")
    config = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    spec = _spec(CUSTOM_FAMILY, config, x, data if not isinstance(data, np.ndarray) else None, names, "torch",
                 origin="torch.nn.Module")
    return LoadedModel(module=module, spec=spec, origin=f"<{type(module).__name__} module>",
                       notes=[f"a user's own {type(module).__name__}: saved as ONNX; its PyTorch weights need its "
                              "class to be rebuilt (trainers.load_model(dir, module=...))"])


# ---------------------------------------------------------------- an ONNX graph


def from_onnx(onnx_bytes: bytes, data=None, *, class_names=None, origin: str = "<onnx bytes>",
              proto=None) -> LoadedModel:
    """A LoadedModel for an ONNX graph, run by ONNX Runtime (module None); see `as_model`. `proto`: the graph
    already parsed from these bytes (`read_onnx_file`), so it is not parsed twice."""
    import onnx

    try:
        proto = proto if proto is not None else onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ToolkitError(f"{origin} is not an ONNX model ({_first_line(exc)})") from None
    graph = proto.graph
    _check_tensors(proto, origin)
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ToolkitError(f"{origin} has {len(inputs)} inputs ({', '.join(i.name for i in inputs) or 'none'}); "
                           "the toolkit feeds a model one input tensor")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ToolkitError(f"{origin}: input '{inputs[0].name}' is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                           "the toolkit feeds float32 inputs")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if not dims:
        raise ToolkitError(f"{origin}: input '{inputs[0].name}' has no declared shape; export it with one")
    if dims[0] is not None:
        raise ToolkitError(f"{origin}: the batch dimension of input '{inputs[0].name}' is fixed at {dims[0]} "
                           f"(shape {dims}); export it with a dynamic batch axis (dynamic_axes or dynamic_shapes)")
    meta = {p.key: p.value for p in proto.metadata_props}
    data = _bundle(data)
    x = _inputs_of(data)
    if x is None:
        x = _example_from_graph(dims, meta, origin)
    elif any(d is not None and d != s for d, s in zip(dims[1:], x.shape[1:])) or len(dims) != x.ndim:
        raise ToolkitError(f"{origin} takes inputs of shape {['batch', *dims[1:]]}, the data's are "
                           f"{list(x.shape[1:])} per sample")
    session = _session(onnx_bytes, origin)
    class_names = class_names if class_names is not None else _meta_names(meta)
    if len(session.get_outputs()) > 1:
        known = class_names if class_names is not None else getattr(data, "class_names", None)
        chosen = _logits_output(session, x, None if known is None else len(known), origin)
        proto = _only_output(proto, chosen)
        onnx_bytes = proto.SerializeToString()
        session = _session(onnx_bytes, origin)
    out = _run_checked(session, x, origin)
    notes = ["an ONNX graph: gradient methods and PyTorch transforms need a PyTorch module"]
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if _looks_like_probabilities(out) and opset < 8:  # Max broadcasts its tiny floor from opset 8
        _warn_if_probabilities(out, origin)
    elif _looks_like_probabilities(out):
        proto, note = _log_of_probabilities(proto, out.dtype)
        onnx_bytes = proto.SerializeToString()
        session = _session(onnx_bytes, origin)
        notes.append(note)
        warn(f"{origin}: {note}")
        out = _run_checked(session, x, origin)
    names = _names(data, class_names, out.shape[1], origin)
    spec = _spec(ONNX_FAMILY, {"inputs": inputs[0].name, "opset": opset or None},
                 x, data if not isinstance(data, np.ndarray) else None, names, "onnxruntime", origin="onnx")
    spec.onnx = {"file": "model.onnx", "precision": "float32", "opset": spec.config["opset"]}
    if spec.feature_names is None:  # a toolkit export's own names (model.raw.onnx: the table's raw columns)
        spec.feature_names = _meta_features(meta, spec.input_shape)
    reads = _raw_columns(meta, spec.feature_names)
    if reads is not None:  # a toolkit's model.raw.onnx: predict gives it what it takes (`inference.read_rows`)
        spec.extra["raw_rows"] = {"reads": reads}
    spec.weights = {}
    model = LoadedModel(module=None, spec=spec, origin=origin, onnx_bytes=onnx_bytes, notes=notes)
    model._session = session
    return model


def _log_of_probabilities(proto, dtype: np.dtype):
    """(the graph returning the logarithm of its probabilities, a note saying so), for a graph whose output is
    probabilities (every scikit-learn classifier skl2onnx exports, a network ending in Softmax).

    The toolkit reads logits and takes their softmax wherever it needs probabilities (predict's columns, log loss,
    the black-box explainers' probability space); the softmax of probabilities flattened them (a forest's 1.0
    was written 0.576). The softmax of their logarithm is the probabilities again, so every reader gets them as
    the graph gives them, and the predicted class is unchanged. Zeros are read as the dtype's smallest positive
    number first: log(0) is minus infinity."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    name = graph.output[0].name
    logged = f"{name}_log"
    tiny = numpy_helper.from_array(np.array(np.finfo(dtype).tiny, dtype), f"{name}_tiny")
    changed = onnx.ModelProto()
    changed.CopyFrom(proto)
    changed.graph.initializer.append(tiny)
    changed.graph.node.extend([helper.make_node("Max", [name, tiny.name], [f"{name}_positive"]),
                               helper.make_node("Log", [f"{name}_positive"], [logged])])
    output = changed.graph.output[0]
    output.name = logged
    return changed, (f"the graph returns probabilities (each row sums to 1): the toolkit reads their logarithm "
                     f"('{logged}') as its logits, so predict writes the probabilities as they are; its variants' "
                     f"graphs return log-probabilities")


def _logits_output(session, x: np.ndarray, classes: int | None, origin: str) -> str:
    """The name of the output of a graph of several that holds the logits; one ToolkitError line where none can be
    told apart.

    The toolkit reads one (batch, classes) tensor. Candidates are the 2-D outputs of at least two columns; with
    the class count known (the data's classes, the class names given or the toolkit's metadata), those of that
    width. Outputs that look like probabilities give way to others (a graph returning logits and their softmax,
    in either order, is read by its logits); then the first candidate is taken. Without a class count the
    candidates must all be of one width: an embedding of 32 beside logits of 10 was read as 32 classes.
    """
    outputs = [o.name for o in session.get_outputs()]
    maps = {o.name for o in session.get_outputs() if o.type.startswith("seq(map")}  # skl2onnx's ZipMap
    values = session.run(outputs, {session.get_inputs()[0].name: x})
    shapes = {name: tuple(np.shape(v)) for name, v in zip(outputs, values)}
    listed = ", ".join(f"'{n}' " + ("a list of {class: probability} maps (ZipMap)" if n in maps else
                                    str(list(('batch', *shapes[n][1:])))) for n in outputs)
    candidates = [(n, v) for n, v in zip(outputs, values)
                  if n not in maps and np.ndim(v) == 2 and len(v) == len(x) and v.shape[1] >= 2]
    fits = [(n, v) for n, v in candidates if classes is None or v.shape[1] == classes]
    remedy = "export the graph with the logits as its only output (onnx.utils.extract_model names the outputs kept)"
    if maps and not fits:  # the probabilities exist only after ZipMap: no output to extract, the export decides
        remedy = ("export a scikit-learn model without ZipMap, skl2onnx's to_onnx(model, X, options={id(model): "
                  "{'zipmap': False}}), for a (batch, classes) tensor of probabilities")
    if not fits:
        need = f"(batch, {classes}) for the data's {classes} classes" if classes is not None else "(batch, classes)"
        raise ToolkitError(f"{origin} has {len(outputs)} outputs ({listed}) and none is {need}: {remedy}")
    if classes is None and len({v.shape[1] for _, v in fits}) > 1:
        raise ToolkitError(f"{origin} has {len(outputs)} outputs ({listed}): which one holds the logits cannot be told "
                           f"without the class count (compress and explain take it from the data, predict has "
                           f"none): {remedy}")
    logits = [(n, v) for n, v in fits if not _looks_like_probabilities(v)] or fits
    chosen = logits[0][0]
    if chosen != outputs[0] or len(logits) > 1:
        warn(f"{origin} has {len(outputs)} outputs ({listed}): the toolkit reads '{chosen}' as the logits"
             + (f"; {len(logits)} of them fit, the first is taken ({remedy})" if len(logits) > 1 else ""))
    return chosen


def _looks_like_probabilities(out: np.ndarray) -> bool:
    """Each row non-negative and summing to 1."""
    out = np.asarray(out, dtype=np.float64)
    return bool(len(out)) and bool((out >= 0).all()) and bool(np.allclose(out.sum(1), 1.0, atol=1e-3))


def _only_output(proto, name: str):
    """A copy of the graph with `name` its only output: the nodes and initializers only other outputs need are
    dropped, so every reader downstream (int8 quantizers, the layout passes, `first_output`) sees one graph
    output and the same one."""
    import onnx

    trimmed = onnx.ModelProto()
    trimmed.CopyFrom(proto)
    graph = trimmed.graph
    needed, kept = {name}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_inputs(node))
    for field, items in (("node", kept[::-1]), ("output", [o for o in graph.output if o.name == name]),
                         ("initializer", [t for t in graph.initializer if t.name in needed])):
        copies = [type(i)() for i in items]
        for copy, item in zip(copies, items):
            copy.CopyFrom(item)
        del getattr(graph, field)[:]
        getattr(graph, field).extend(copies)
    return trimmed


def _subgraph_inputs(node) -> set[str]:
    """Every name a node's subgraphs (If, Loop, Scan) read, which may come from the graph around them."""
    names = set()
    for attribute in node.attribute:
        for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names


# The most elements a tensor that a graph builds from a constant shape may have (256 MiB of float32): a
# 350-byte file with ConstantOfShape([15000, 15000]) took 2.2 GB to run, one of [200000, 200000] asked for 160 GB.
MAX_BUILT_ELEMENTS = 2**26


def _check_tensors(proto, origin: str) -> None:
    """Refuse, in one line, weights that are NaN or infinite, and a tensor the graph would build at a fixed size too
    large to allocate (from constant shapes: ConstantOfShape, Expand, Tile, Range...), before ONNX Runtime runs
    it. The sizes are ONNX's own shape inference without data propagation (which would compute such a tensor's
    values: a Range over 400 million steps exhausted the memory). Tensors with a batch axis grow with the batch
    and are not bounded here; sizes computed from the input's values cannot be known before a run."""
    from onnx import TensorProto, numpy_helper, shape_inference

    for tensor in _all_tensors(proto):
        _check_stored_size(tensor, origin)
        if tensor.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            values = numpy_helper.to_array(tensor)
            if not np.isfinite(values.astype(np.float32, copy=False)).all():
                raise ToolkitError(f"{origin}: weight '{tensor.name}' contains NaN or infinite values; the model "
                                   "cannot be measured or compressed")
    _check_loops(proto.graph, {}, origin)
    try:
        inferred = shape_inference.infer_shapes(proto).graph
    except Exception:  # an op ONNX cannot infer (a custom domain): ONNX Runtime's own checks decide
        return
    for value in [*inferred.value_info, *inferred.output]:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if dims and None not in dims and np.prod(np.asarray(dims, dtype=np.float64)) > MAX_BUILT_ELEMENTS:
            raise ToolkitError(f"{origin}: tensor '{value.name}' would have the fixed shape {dims}, over "
                               f"{MAX_BUILT_ELEMENTS:,} elements; refused")


# The most iterations a graph's Loops may run, nested ones multiplied. ONNX Runtime's run is one native call that
# neither Ctrl-C nor SIGTERM interrupts: a Loop of 10**15 trips in a 1 KB file ran until killed with -9.
MAX_LOOP_TRIPS = 100_000


def _check_loops(graph, constants: dict, origin: str, outer: int = 1) -> None:
    """Refuse a Loop (in subgraphs of Loop, Scan and If too) whose trip count is not a constant, an initializer
    or a Constant node in its scope, or which runs, times the Loops around it, more than MAX_LOOP_TRIPS times."""
    from onnx import numpy_helper

    constants = {**constants, **{t.name: t for t in graph.initializer},
                 **{n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                    if a.name == "value"}}
    for node in graph.node:
        trips = outer
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            tensor = constants.get(node.input[0] if node.input else "")
            count = numpy_helper.to_array(tensor).reshape(-1) if tensor is not None else np.zeros(0)
            if count.size != 1 or count.dtype.kind not in "iu" or not 0 <= int(count[0]) * outer <= MAX_LOOP_TRIPS:
                shown = f"{int(count[0]):,} times" if count.size == 1 and count.dtype.kind in "iu" else \
                    "without a constant trip count"
                inside = " inside other loops" * (outer > 1)
                raise ToolkitError(f"{origin}: Loop '{node.name or node.output[0]}' runs {shown}{inside}; the toolkit "
                                   f"runs graphs whose loops take at most {MAX_LOOP_TRIPS:,} steps, a constant trip "
                                   "count (ONNX Runtime's run cannot be interrupted)")
            trips = outer * int(count[0])
        for attribute in node.attribute:
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                _check_loops(sub, constants, origin, max(trips, 1))


def _check_stored_size(tensor, origin: str) -> None:
    """Refuse a tensor whose data is not what its dims and type claim, before NumPy reshapes it: a FLOAT
    [100000, 100000] with no data ended in "cannot reshape array of size 0" as an unexpected error, and so did
    external data whose location was the graph file itself. Data still kept outside (`read_onnx_file` reads a
    file's into the graph) is refused too: NumPy would look for it in the working directory."""
    from onnx import TensorProto, helper
    from onnx.external_data_helper import uses_external_data

    if uses_external_data(tensor):
        raise ToolkitError(f"{origin}: tensor '{tensor.name}' keeps its data in an external file; pass the .onnx "
                           "file (its data files beside it), not its bytes")
    if tensor.data_type == TensorProto.UNDEFINED:
        return
    count = int(np.prod(np.asarray(tensor.dims, dtype=np.float64)))
    kind = TensorProto.DataType.Name(tensor.data_type)
    if tensor.HasField("raw_data"):
        present, per = len(tensor.raw_data), helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    else:
        present, per = len(getattr(tensor, helper.tensor_dtype_to_field(tensor.data_type))), 1 + kind.startswith("COMPLEX")
    needed = -(-count // 2) if kind in ("INT4", "UINT4", "FLOAT4E2M1") else count * per  # 4-bit: two a byte
    if present != needed:
        raise ToolkitError(f"{origin}: tensor '{tensor.name}' claims shape {list(tensor.dims)} "
                           f"({kind}) but holds {present:,} "
                           f"{'bytes' if tensor.HasField('raw_data') else 'values'}, not {needed:,}; the file is "
                           "truncated or malformed")


def _example_from_graph(dims: list, meta: dict, origin: str) -> np.ndarray:
    """Zeros of the graph's input shape (from the toolkit's metadata or the graph's own fixed dims)."""
    import json

    shape = json.loads(meta["input_shape"]) if "input_shape" in meta else dims[1:]
    if any(d is None or d < 1 for d in shape):
        raise ToolkitError(f"{origin} does not fix its input shape ({['batch', *dims[1:]]}): pass the data")
    return np.zeros((EXAMPLE_SAMPLES, *shape), np.float32)


def _meta_features(meta: dict, input_shape) -> list[str] | None:
    """The feature names a toolkit export records (`compress.export.with_metadata`), where they fit the input."""
    import json

    try:
        names = json.loads(meta["feature_names"]) if "feature_names" in meta else None
    except ValueError:
        return None
    fits = isinstance(names, list) and len(input_shape) == 1 and len(names) == input_shape[0]
    return [str(n) for n in names] if fits and all(isinstance(n, str) for n in names) else None


def _raw_columns(meta: dict, names: list[str] | None) -> list[str] | None:
    """The columns a toolkit's raw-row graph (`compress.export.raw_rows_onnx`) reads of its input: those its
    table steps take. The others (an id column training dropped) are gathered by no node, and the steps impute
    missing (NaN) cells inside the graph. None for any other graph."""
    import json

    if meta.get("input") != "raw rows" or names is None:
        return None
    try:
        steps = json.loads(meta.get("preprocessing", "{}")).get("table", {}).get("steps", [])
        reads = [step["column"] for step in steps]
    except (ValueError, AttributeError, TypeError, KeyError):
        return None
    return reads if reads and set(reads) <= set(names) else None


def _meta_names(meta: dict):
    import json

    try:
        names = json.loads(meta["class_names"]) if "class_names" in meta else None
    except ValueError:
        return None
    return names if isinstance(names, list) else None


def _session(onnx_bytes: bytes, origin: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the caller as exceptions: no ORT log lines on stderr
    try:
        return inference_session(onnx_bytes, options)
    except Exception as exc:  # ORT's own exception types: an op it cannot run, an invalid graph
        raise ToolkitError(f"ONNX Runtime cannot run {origin} ({_first_line(exc)})") from None


def _run_checked(session, x: np.ndarray, origin: str) -> np.ndarray:
    """Run at batch 1 and at batch len(x): a batch size frozen inside the graph fails here, not later."""
    name = session.get_inputs()[0].name
    out = None
    for n in (1, len(x)):
        try:
            out = session.run(None, {name: x[:n]})[0]
        except Exception as exc:  # ORT's own exception types
            refused = memory_refusal(exc)
            if refused is not None:
                raise ToolkitError(f"{origin}: {refused}") from None
            raise ToolkitError(f"{origin} fails at batch {n} on inputs of shape {tuple(x[:n].shape)}: a shape inside "
                               f"the graph is fixed or does not fit ({_first_line(exc)})") from None
        if out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
            raise ToolkitError(f"{origin} returns shape {tuple(out.shape)} for a batch of {n}; the toolkit needs "
                               "logits of shape (batch, classes) as the first output")
    return out
