"""An ONNX graph pass: 1-D convolutions and pools run as 2-D ones with a height of 1.

ONNX Runtime's CPU provider has a blocked-layout (NCHWc) kernel for 2-D convolutions and pools, which it does not
use for 1-D ones: the same 1-D CNN ran 1.96x faster per row with its layers written as 2-D (kernel (1, k)) than as
exported from `nn.Conv1d` (channels 32/64, 40 steps, batch 1024, one thread: 5.3 vs 10.4 us/row). No converter
does this rewrite (ONNX Runtime's optimizer keeps the rank it is given, and onnxsim/onnxoptimizer do not change
layouts), so it is written here, as a pass over the graph.

Each 1-D Conv/MaxPool/AveragePool gets an input with an axis of size 1 inserted at position 2 and 2-D
attributes (kernel (1, k), pads (0, b, 0, e), ...). Its output stays 4-D through the ops that do not care about
the rank (activations, BatchNormalization, sums of two such tensors, global pools) and is squeezed back only
where an op needs the original rank (Flatten, ReduceMean, a graph output...): a Squeeze/Unsqueeze around every
layer cost a third of the gain. The results are those of the original graph up to float rounding; callers check
that (`compress.export.graph_matches`, `compress.export.fast_graph`) before they use the rewritten graph.
"""

from __future__ import annotations

import numpy as np

# Ops whose output is their first input's shape, whatever its rank (extra inputs are per-channel or scalars).
_ANY_RANK = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
             "HardSigmoid", "HardSwish", "Gelu", "Mish", "Clip", "Neg", "Abs", "Exp", "Log", "Sqrt", "Erf",
             "Identity", "Dropout", "BatchNormalization"}
# Elementwise ops with several inputs: kept 4-D when every input is 4-D or a scalar.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}
_SPATIAL = {"Conv", "MaxPool", "AveragePool"}
LIFTED_AXIS = 2


def lift_1d(onnx_bytes: bytes) -> bytes | None:
    """The graph with its 1-D convolutions and pools written as 2-D ones, or None when it has none."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    if not any(_is_1d(node, helper) for node in graph.node):
        return None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    axes_name = "lift_1d_axes"
    nodes: list = []
    lifted: dict[str, str] = {}          # original tensor -> its 4-D twin
    available = {i.name for i in graph.input} | set(initializers)  # original tensors that exist as themselves
    reshaped: set[str] = set()
    count = [0]

    def new_name(base: str) -> str:
        count[0] += 1
        return f"{base}__lift{count[0]}"

    def axis_node(op: str, source: str, target: str):
        if opset >= 13:
            return helper.make_node(op, [source, axes_name], [target], name=new_name(op))
        return helper.make_node(op, [source], [target], name=new_name(op), axes=[LIFTED_AXIS])

    def four_d(name: str) -> str:
        if name not in lifted:
            lifted[name] = new_name(name)
            nodes.append(axis_node("Unsqueeze", name, lifted[name]))
        return lifted[name]

    def original(name: str) -> None:
        if name and name not in available and name in lifted:
            nodes.append(axis_node("Squeeze", lifted[name], name))
            available.add(name)

    def scalar(name: str) -> bool:
        return name in initializers and int(np.prod(initializers[name].dims)) == 1

    for node in graph.node:
        inputs = list(node.input)
        if _is_1d(node, helper):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: _as_2d(k, v) for k, v in attrs.items()}
            new_inputs = [four_d(inputs[0])]
            if node.op_type == "Conv":
                weight = inputs[1]
                if weight in initializers and all(_is_1d(c, helper) and c.input[0] != weight
                                                  for c in consumers.get(weight, [])):
                    if weight not in reshaped:
                        array = numpy_helper.to_array(initializers[weight])
                        initializers[weight].CopyFrom(numpy_helper.from_array(np.expand_dims(array, LIFTED_AXIS),
                                                                              weight))
                        reshaped.add(weight)
                    new_inputs.append(weight)
                else:
                    new_inputs.append(four_d(weight))
                new_inputs += inputs[2:]
            out = new_name(node.output[0])
            lifted[node.output[0]] = out
            nodes.append(helper.make_node(node.op_type, new_inputs, [out], name=node.name or new_name(node.op_type),
                                          **attrs))
            continue
        carried = bool(inputs) and inputs[0] in lifted
        if carried and (node.op_type in _ANY_RANK or node.op_type in _GLOBAL_POOLS) and len(node.output) == 1 \
                and all(i in available or i == "" for i in inputs[1:]):
            _copy_lifted(node, [lifted[inputs[0]], *inputs[1:]], lifted, new_name, nodes)
            continue
        if node.op_type in _ELEMENTWISE and len(node.output) == 1 and any(i in lifted for i in inputs) \
                and all(i in lifted or scalar(i) for i in inputs):
            _copy_lifted(node, [lifted.get(i, i) for i in inputs], lifted, new_name, nodes)
            continue
        for name in inputs:
            original(name)
        nodes.append(node)
        available.update(node.output)
    for output in graph.output:
        original(output.name)
    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array([LIFTED_AXIS], np.int64), axes_name))
    kept = [v for v in graph.value_info if v.name in available]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


def _is_1d(node, helper) -> bool:
    if node.op_type not in _SPATIAL or (len(node.output) > 1 and node.output[1]):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return len(attrs.get("kernel_shape", ())) == 1


def _as_2d(key: str, value):
    if key in ("kernel_shape", "strides", "dilations"):
        return [1, *value]
    if key == "pads":
        return [0, value[0], 0, value[1]]
    return value


def _copy_lifted(node, inputs, lifted, new_name, nodes) -> None:
    """`node` again on 4-D inputs; its output becomes a lifted tensor."""
    from onnx import helper

    out = new_name(node.output[0])
    lifted[node.output[0]] = out
    copy = helper.make_node(node.op_type, inputs, [out], name=node.name or new_name(node.op_type),
                            domain=node.domain or None)
    copy.attribute.extend(node.attribute)
    nodes.append(copy)


# ---------------------------------------------------------------- the input's standardization as one node

def fold_input_scaling(onnx_bytes: bytes) -> bytes | None:
    """The graph with its input standardization, `Flatten((x - mean) / std)`, run as one BatchNormalization
    (scale 1/std, bias -mean/std) after the Flatten, or None when the graph does not start that way.

    The toolkit's models standardize their input in the graph (Sub, Div) and an MLP flattens it next. At batch 1
    a small MLP's call is a few microseconds per node: on a 40-feature MLP in int8 (ONNX Runtime, one thread)
    one node instead of Sub and Div, and no Flatten where the input is already one row per sample, took
    9.1 instead of 10.5 us at batch 1 (1.17x) and 1.10x at batch 256. ONNX Runtime's optimizer keeps the two
    elementwise ops, and no converter rewrites them, hence this pass. Only the pattern with a Flatten is
    rewritten: there mean and std may differ per value, and after the Flatten each value is a channel of the
    BatchNormalization. The result equals the original up to float rounding; callers check it
    (`compress.export.input_fold`).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    initializers = {t.name: t for t in graph.initializer}
    found = _standardize_chain(graph, inputs, initializers, _consumers(graph))
    if found is None:
        return None
    sub, div, flatten, per_sample = found
    stats = _mean_std(sub, div, per_sample, initializers)
    if stats is None:
        return None
    mean, std = stats
    channels = mean.size
    names = {k: f"input_fold_{k}" for k in ("scale", "bias", "mean", "var", "flat")}
    graph.initializer.extend([numpy_helper.from_array(a.astype(np.float32), names[k]) for k, a in
                              (("scale", 1 / std), ("bias", -mean / std), ("mean", np.zeros(channels)),
                               ("var", np.ones(channels)))])
    source = sub.input[0]
    new = []
    if len(per_sample) > 1:  # the Flatten first, then one channel per value
        new.append(helper.make_node("Flatten", [source], [names["flat"]], name="input_fold_flatten", axis=1))
        source = names["flat"]
    new.append(helper.make_node("BatchNormalization", [source, names["scale"], names["bias"], names["mean"],
                                                       names["var"]], [flatten.output[0]], name="input_fold_bn",
                                epsilon=0.0))
    position = list(graph.node).index(sub)
    for node in (sub, div, flatten):
        graph.node.remove(node)
    for offset, node in enumerate(new):
        graph.node.insert(position + offset, node)
    used = {name for node in graph.node for name in node.input}
    for name in {sub.input[1], div.input[1]} - used:
        graph.initializer.remove(initializers[name])
    return model.SerializeToString()


def fold_input_into_gemm(onnx_bytes: bytes, uniform_only: bool) -> bytes | None:
    """The graph with its input standardization, `Gemm(Flatten((x - mean) / std))`, folded into the Gemm's
    weights: `Gemm(Flatten(x))` with W' = W / std (per input column) and c' = c - W (mean / std); or None when the
    graph does not start that way. `uniform_only`: only where one mean and one std hold for every input value.

    The exact same function in real arithmetic, one node fewer than `fold_input_scaling`'s BatchNormalization:
    on the signals MLP in static int8 (ONNX Runtime, one thread, batch 256) the graph without that node was 7%
    faster (2.40x against 2.57x the fp32 graph's speed). A quantized graph needs `uniform_only`: its first
    QuantizeLinear then sees raw values through one scale, which is the standardized values' scale up to an affine
    map only where the standardization is the same for every value (values with their own mean and std, like a
    table's columns, would share one scale across different ranges). ONNX Runtime's optimizer folds a
    BatchNormalization into a Conv before it, not into a Gemm after it, hence this pass. Callers check the logits
    (`compress.export.first_layer_fold`).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    found = _standardize_chain(graph, inputs, initializers, consumers)
    if found is None:
        return None
    sub, div, flatten, per_sample = found
    gemm = _only_consumer(consumers, flatten.output[0], "Gemm")
    if gemm is None or gemm.input[0] != flatten.output[0] or gemm.input[1] not in initializers:
        return None
    attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
        return None
    has_bias = len(gemm.input) > 2 and gemm.input[2] != ""
    if has_bias and gemm.input[2] not in initializers:
        return None
    if any(len(consumers.get(name, [])) != 1 for name in gemm.input[1:3] if name):  # weights shared elsewhere
        return None
    stats = _mean_std(sub, div, per_sample, initializers)
    if stats is None:
        return None
    mean, std = stats
    if uniform_only and (np.ptp(mean) != 0 or np.ptp(std) != 0):
        return None
    weight = numpy_helper.to_array(initializers[gemm.input[1]]).astype(np.float64)
    weight_in_rows = weight.T if attributes.get("transB", 0) else weight  # (inputs, outputs)
    if weight_in_rows.shape[0] != mean.size:
        return None
    folded = weight_in_rows / std[:, None]
    bias = numpy_helper.to_array(initializers[gemm.input[2]]).astype(np.float64) if has_bias else 0.0
    bias = np.broadcast_to(bias, (folded.shape[1],)) - (mean / std) @ weight_in_rows
    weight_name = gemm.input[1]
    initializers[weight_name].CopyFrom(numpy_helper.from_array(
        (folded.T if attributes.get("transB", 0) else folded).astype(np.float32), weight_name))
    if has_bias:
        initializers[gemm.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), gemm.input[2]))
    else:
        bias_name = f"{weight_name}_folded_bias"
        graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))
        del gemm.input[2:]
        gemm.input.append(bias_name)
    source = sub.input[0]
    graph.node.remove(sub)
    graph.node.remove(div)
    if len(per_sample) > 1:
        flatten.input[0] = source
    else:  # one row per sample already: no Flatten needed
        gemm.input[0] = source
        graph.node.remove(flatten)
    used = {name for node in graph.node for name in node.input}
    for name in {sub.input[1], div.input[1]} - used:
        graph.initializer.remove(initializers[name])
    return model.SerializeToString()


def _mean_std(sub, div, per_sample: tuple[int, ...], initializers) -> tuple[np.ndarray, np.ndarray] | None:
    """The standardization's mean and std, one value per input value (float64), or None where they do not
    broadcast to the input or are not finite, or a std is 0."""
    from onnx import numpy_helper

    mean, std = (numpy_helper.to_array(initializers[n]).astype(np.float64) for n in (sub.input[1], div.input[1]))
    try:
        mean, std = (np.broadcast_to(a, (1, *per_sample)).reshape(-1) for a in (mean, std))
    except ValueError:
        return None
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std != 0).all()):
        return None
    return mean, std


def _standardize_chain(graph, inputs, initializers, consumers):
    """(Sub, Div, Flatten, per-sample input shape) when a graph input goes through exactly Sub(mean), Div(std)
    and Flatten(axis 1), each the only consumer of the one before, with mean and std stored in the graph."""
    for sub in graph.node:
        if sub.op_type != "Sub" or sub.input[0] not in inputs or sub.input[1] not in initializers:
            continue
        div = _only_consumer(consumers, sub.output[0], "Div")
        flatten = _only_consumer(consumers, div.output[0], "Flatten") if div is not None else None
        if (flatten is None or list(div.input) != [sub.output[0], div.input[1]] or div.input[1] not in initializers
                or len(consumers[sub.input[0]]) != 1):
            continue
        axis = next((a.i for a in flatten.attribute if a.name == "axis"), 1)
        dims = inputs[sub.input[0]].type.tensor_type.shape.dim[1:]
        if axis != 1 or not dims or not all(d.HasField("dim_value") for d in dims):
            continue
        if flatten.output[0] in {o.name for o in graph.output}:
            continue
        return sub, div, flatten, tuple(d.dim_value for d in dims)
    return None


def _consumers(graph) -> dict[str, list]:
    """Each tensor name -> the nodes that read it."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _only_consumer(consumers, name: str, op: str):
    found = consumers.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op else None


# Recurrent ops and the input positions of their initial states (ONNX: a state left out starts at zeros).
_STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
# Ops whose output holds only values of their first input: zeros in, zeros out.
_SAME_VALUES = {"Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Transpose", "Identity", "Split"}


def drop_zero_states(onnx_bytes: bytes) -> bytes | None:
    """The graph with the zero initial states of its LSTM/GRU/RNN nodes left out, or None where it has none.

    PyTorch's exporter writes `nn.LSTM`'s default zero state as a subgraph that builds zeros of the batch's size
    on every call (Shape, Gather, Unsqueeze, Concat, ConstantOfShape). ONNX defines a missing initial state as
    zeros, so the node computes the same without it, and the five small ops go: measured on the 40-feature LSTM's
    int8 graph at batch 1 (one thread, 15 interleaved rounds), 3-4% faster, 68 us a call. No optimizer here does
    it (ONNX Runtime's constant folding cannot: the zeros' shape depends on the batch). A state that is not
    provably zero (a ConstantOfShape of another value, a graph input) stays.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    fed = {i.name for i in graph.input}  # an initializer that is also an input may be fed another value
    constants = {i.name: i for i in graph.initializer if i.name not in fed}
    changed = False
    for node in graph.node:
        inputs = list(node.input)
        for i in _STATE_INPUTS.get(node.op_type, ()):
            if i < len(inputs) and inputs[i] and _is_zero(inputs[i], producers, constants, numpy_helper):
                inputs[i], changed = "", True
        while inputs and not inputs[-1]:
            inputs.pop()
        if inputs != list(node.input):
            del node.input[:]
            node.input.extend(inputs)
    if not changed:
        return None
    _drop_dead(graph)
    return proto.SerializeToString()


def _is_zero(name: str, producers, constants, numpy_helper) -> bool:
    """`name` is all zeros by construction: a ConstantOfShape of zero (its default), a zero constant, or a part
    or reshaping of one (a stacked LSTM's exported state is a Slice per layer of one zero tensor)."""
    node = producers.get(name)
    if node is not None and node.op_type in _SAME_VALUES and node.input:
        return _is_zero(node.input[0], producers, constants, numpy_helper)
    if node is not None and node.op_type == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return value is None or not numpy_helper.to_array(value).any()
    if node is not None and node.op_type == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return value is not None and not numpy_helper.to_array(value).any()
    return node is None and name in constants and not numpy_helper.to_array(constants[name]).any()


def _drop_dead(graph) -> None:
    """Remove the nodes and initializers nothing reads any more (a graph output is read)."""
    wanted = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [i for i in graph.initializer if i.name in wanted]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def pool_before_relu(onnx_bytes: bytes) -> bytes | None:
    """Each Relu -> MaxPool pair (the Relu read by the MaxPool alone) as MaxPool -> Relu: the same values, as both
    keep the order of values, on a quarter of the elements for a 2 x 2 pool. None where no pair is found.

    Written for int8 graphs with a layer kept in fp32: there ORT's QDQ propagation moves the next QuantizeLinear
    above a MaxPool that follows the Relu, and the pool then runs in a slow generic int8 kernel (the pruned digits
    CNN's graph, plain ONNX Runtime session: 1.04 ms at batch 256 against 0.30 ms with the propagation off). With
    the Relu after the pool the propagation stops at the Relu, and a plain session runs the graph at 0.30 ms:
    no session option is needed to serve it at its speed.
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    swapped = False
    for i, relu in enumerate(nodes):
        if relu.op_type != "Relu" or relu.output[0] in outputs:
            continue
        pool = _only_consumer(consumers, relu.output[0], "MaxPool")
        if pool is None or len([o for o in pool.output if o]) != 1:
            continue
        j = nodes.index(pool)
        middle = f"{pool.output[0]}_before_relu"
        pool.input[0], relu.input[0] = relu.input[0], middle
        relu.output[0], pool.output[0] = pool.output[0], middle
        nodes[i], nodes[j] = pool, relu
        swapped = True
    if not swapped:
        return None
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


CLAMP_MARGIN = 0.1  # inputs are clamped this share of the training range beyond it (`clamp_input`)


def clamp_input(onnx_bytes: bytes, x_train: np.ndarray, margin: float = CLAMP_MARGIN) -> bytes:
    """The graph with its input clamped, element by element, to the training rows' range widened by `margin` of
    it (a constant element: of its magnitude, at least 1), as Max and Min nodes before everything else.

    For dynamic int8 graphs: ONNX Runtime takes each call's activation scale from its largest value, so one row
    far outside the data shares its scale with every row of the call. A signals LSTM's int8-dynamic choice, one row
    of 120 multiplied by 200: 42 of the other 119 rows changed class (by 50: none). Clamped, a row can coarsen the
    scale no more than the training data's own extremes do; rows inside the widened range are not changed.
    """
    import onnx
    from onnx import helper, numpy_helper

    low = np.full(x_train.shape[1:], np.inf, np.float64)
    high = np.full(x_train.shape[1:], -np.inf, np.float64)
    for start in range(0, len(x_train), 4096):     # memory-mapped rows are read a block at a time
        block = np.asarray(x_train[start:start + 4096], np.float64)
        low, high = np.minimum(low, block.min(0)), np.maximum(high, block.max(0))
    span = high - low
    span = np.where(span > 0, span, np.maximum(np.abs(high), 1.0))
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    source = graph.input[0].name
    fresh = _fresh_names(graph)  # a graph clamped before (the toolkit's int8 model.onnx compressed again) holds these
    clamped, floor, lowest, highest = (fresh(f"{source}__{part}") for part in ("clamped", "floor", "low", "high"))
    for node in graph.node:
        node.input[:] = [clamped if name == source else name for name in node.input]
    graph.initializer.extend([numpy_helper.from_array((low - margin * span).astype(np.float32), lowest),
                              numpy_helper.from_array((high + margin * span).astype(np.float32), highest)])
    nodes = [helper.make_node("Max", [source, lowest], [floor], name=fresh("clamp_input_low")),
             helper.make_node("Min", [floor, highest], [clamped], name=fresh("clamp_input_high")),
             *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


def _fresh_names(graph):
    """A function giving `name`, or `name_1`, `name_2`...: one no node or tensor of `graph` has, nor one given
    before (ONNX Runtime refuses a graph with two nodes or two tensors of one name)."""
    taken = {node.name for node in graph.node}
    taken |= {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {item.name for group in (graph.input, graph.output, graph.initializer, graph.value_info) for item in group}

    def fresh(name: str) -> str:
        candidate, count = name, 0
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate)
        return candidate

    return fresh
