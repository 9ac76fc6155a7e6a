"""Op-sequence patterns of a float ONNX graph and the OnnxLayers they map to.

A pattern is a tuple of op types that follow each other in the graph, each node's output read
only by the next node; its mapper ``mapper(nodes, graph) -> OnnxLayer`` builds the quantized
layer (float weights set with ``set_weight``) or raises a ValueError when the nodes do not
fit (attributes, non-constant weights). ``custom_pattern_scope`` registers extra patterns that
take priority over the defaults in ``DEFAULT_PATTERNS``.
"""
import contextlib
import threading

import numpy as np

from ..layers import (
    OnnxLayer,
    QuantizedAdd,
    QuantizedConv2D,
    QuantizedDense1D,
    QuantizedDepthwise2D,
)
from .graph import node_label


def _attr(graph, node, name, default=None):
    return graph.get_attribute(node, name, default)


def _constant(graph, node, index, what):
    """The initializer at input ``index`` of ``node`` (ValueError when it is not one)."""
    name = node.input[index] if len(node.input) > index else ""
    value = graph.get_initializer(name) if name else None
    if value is None:
        raise ValueError(f"{node_label(node)} expected a constant initializer for its {what}. "
                         f"Received: input {name!r}")
    return np.asarray(value, np.float64)


def _conv_pads(graph, conv, kernel_hw):
    """Explicit ``[top, left, bottom, right]`` pads of a Conv (auto_pad resolved)."""
    auto_pad = _attr(graph, conv, "auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        pads = _attr(graph, conv, "pads", [0, 0, 0, 0]) if auto_pad == "NOTSET" else [0] * 4
        return [int(p) for p in pads]
    shape = graph.get_shape(conv.input[0])
    if shape is None or len(shape) != 4 or None in shape[2:]:
        raise ValueError(f"{node_label(conv)} expected a known input shape for "
                         f"auto_pad={auto_pad}. Received: input shape {shape}")
    strides = _attr(graph, conv, "strides", [1, 1])
    begin, end = [], []
    for size, k, s in zip(shape[2:], kernel_hw, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def conv_mapper(nodes, graph):
    """Conv [+ Relu] [+ MaxPool | GlobalAveragePool] (Relu before or after a MaxPool) to a
    QuantizedConv2D, or to a QuantizedDepthwise2D when ``group`` equals the channels."""
    conv = nodes[0]
    kernel = _constant(graph, conv, 1, "weights")
    if kernel.ndim != 4:
        raise ValueError(f"{node_label(conv)} expected a 2D convolution (4D weights). "
                         f"Received: weights of shape {kernel.shape}")
    dilations = _attr(graph, conv, "dilations", [1, 1])
    if list(dilations) != [1, 1]:
        raise ValueError(f"{node_label(conv)} expected dilations [1, 1]. "
                         f"Received: dilations={list(dilations)}")
    strides = list(_attr(graph, conv, "strides", [1, 1]))
    pads = _conv_pads(graph, conv, kernel.shape[2:])
    group = _attr(graph, conv, "group", 1)
    ops = [n.op_type for n in nodes[1:]]
    activation = "Relu" in ops
    name = conv.name or conv.output[0]
    if group == 1:
        pool_type, pool_kwargs = "none", {}
        if "MaxPool" in ops:
            pool = nodes[1 + ops.index("MaxPool")]
            for key, default in (("ceil_mode", 0), ("storage_order", 0),
                                 ("auto_pad", "NOTSET")):
                if _attr(graph, pool, key, default) != default:
                    raise ValueError(f"{node_label(pool)} expected {key}={default!r}. "
                                     f"Received: {key}={_attr(graph, pool, key)!r}")
            if list(_attr(graph, pool, "dilations", [1, 1])) != [1, 1]:
                raise ValueError(f"{node_label(pool)} expected dilations [1, 1].")
            size = list(_attr(graph, pool, "kernel_shape"))
            pool_type = "max"
            pool_kwargs = dict(pool_size=size,
                               pool_strides=list(_attr(graph, pool, "strides", [1] * len(size))),
                               pool_pads=list(_attr(graph, pool, "pads", [0] * 2 * len(size))))
        elif "GlobalAveragePool" in ops:
            pool_type = "gap"
        layer = QuantizedConv2D(strides=strides, pool_type=pool_type, activation=activation,
                                name=name, pads=pads, **pool_kwargs)
    elif group == kernel.shape[0] and kernel.shape[1] == 1:
        if any(op in ops for op in ("MaxPool", "GlobalAveragePool")):
            raise ValueError(f"{node_label(conv)}: QuantizedDepthwise2D expected no pooling. "
                             f"Received: {ops}")
        layer = QuantizedDepthwise2D(strides=strides, activation=activation, name=name,
                                     pads=pads)
    else:
        raise ValueError(f"{node_label(conv)} expected group 1 or a depthwise convolution "
                         f"(group = channels). Received: group={group}")
    layer.set_weight("kernel", kernel)
    if len(conv.input) > 2 and conv.input[2]:
        layer.set_weight("bias", _constant(graph, conv, 2, "bias"))
    return layer


def _check_flatten(graph, node):
    """A Flatten, Reshape or Squeeze must flatten to (batch, features)."""
    if node.op_type == "Flatten":
        axis = _attr(graph, node, "axis", 1)
        if axis != 1:
            raise ValueError(f"{node_label(node)} expected axis=1. Received: axis={axis}")
        return
    in_shape = graph.get_shape(node.input[0])
    if node.op_type == "Squeeze":
        out_shape = graph.get_shape(node.output[0])
        axes = _attr(graph, node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = _constant(graph, node, 1, "axes").astype(np.int64).tolist()
        if axes is not None and in_shape is not None and out_shape is not None and \
                len(out_shape) == 2 and 0 not in [a % len(in_shape) for a in axes]:
            return
        raise ValueError(f"{node_label(node)} expected to squeeze (batch, C, 1, 1) to "
                         f"(batch, C). Received: axes={axes} for an input of shape {in_shape}")
    shape = _constant(graph, node, 1, "shape").astype(np.int64).tolist()
    if shape == [0, -1]:
        return
    if len(shape) == 2 and shape != [-1, -1] and in_shape is not None and \
            None not in in_shape[1:]:
        features = int(np.prod(in_shape[1:]))
        same_batch = shape[0] == 0 or shape[0] == in_shape[0] or \
            (shape[0] == -1 and shape[1] == features)
        if same_batch and shape[1] in (-1, features):
            return
    raise ValueError(f"{node_label(node)} expected a flatten to (batch, features). "
                     f"Received: shape={shape} for an input of shape {in_shape}")


def _nhwc_permutation(graph, transpose):
    """For a Transpose NCHW -> NHWC before a flatten: the NHWC flat index of each NCHW flat
    index (the Dense kernel rows are reordered with it)."""
    perm = list(_attr(graph, transpose, "perm", []))
    shape = graph.get_shape(transpose.input[0])
    if perm != [0, 2, 3, 1] or shape is None or len(shape) != 4 or None in shape[1:]:
        raise ValueError(f"{node_label(transpose)} expected perm [0, 2, 3, 1] (NCHW to NHWC) "
                         f"on an input of known shape. Received: perm={perm}, shape={shape}")
    channels, height, width = shape[1:]
    return np.arange(channels * height * width).reshape(height, width, channels) \
        .transpose(2, 0, 1).ravel()


def dense_mapper(nodes, graph):
    """[Transpose (NCHW -> NHWC)] [Flatten | Reshape | Squeeze] + Gemm | MatMul [+ Add (bias)]
    [+ Relu] to a QuantizedDense1D (a Transpose before the flatten reorders the kernel rows)."""
    permutation = None
    if nodes[0].op_type == "Transpose":
        permutation = _nhwc_permutation(graph, nodes[0])
        nodes = nodes[1:]
    flatten = nodes[0].op_type in ("Flatten", "Reshape", "Squeeze")
    if flatten:
        _check_flatten(graph, nodes[0])
    core = nodes[1 if flatten else 0]
    rest = nodes[(2 if flatten else 1):]
    if not flatten:
        shape = graph.get_shape(core.input[0])
        if shape is not None and len(shape) != 2:
            raise ValueError(f"{node_label(core)} expected a 2D input (or a Flatten before "
                             f"it). Received: input shape {shape}")
    weights = _constant(graph, core, 1, "weights")
    if weights.ndim != 2:
        raise ValueError(f"{node_label(core)} expected 2D weights. Received: weights of shape "
                         f"{weights.shape}")
    bias = None
    if core.op_type == "Gemm":
        if _attr(graph, core, "transA", 0):
            raise ValueError(f"{node_label(core)} expected transA=0.")
        kernel = weights.T if _attr(graph, core, "transB", 0) else weights
        kernel = kernel * _attr(graph, core, "alpha", 1.0)
        if len(core.input) > 2 and core.input[2]:
            bias = _attr(graph, core, "beta", 1.0) * _constant(graph, core, 2, "bias")
    else:
        kernel = weights
    if permutation is not None:
        if kernel.shape[0] != permutation.shape[0]:
            raise ValueError(f"{node_label(core)} expected {permutation.shape[0]} input "
                             f"features. Received: weights of shape {kernel.shape}")
        kernel = kernel[permutation]
    units = kernel.shape[1]
    for node in rest:
        if node.op_type == "Add":
            position = [i for i, name in enumerate(node.input) if graph.get_initializer(name)
                        is not None]
            if len(position) != 1:
                raise ValueError(f"{node_label(node)} expected a constant bias operand.")
            value = _constant(graph, node, position[0], "bias")
            if value.size not in (1, units) or value.ndim > 2:
                raise ValueError(f"{node_label(node)} expected a bias of {units} values. "
                                 f"Received: shape {value.shape}")
            added = np.broadcast_to(value.reshape(-1), (units,))
            bias = added if bias is None else bias + added
    if bias is not None:
        bias = np.broadcast_to(np.reshape(bias, -1), (units,))
    layer = QuantizedDense1D(flatten=flatten, activation=nodes[-1].op_type == "Relu",
                             name=core.name or core.output[0])
    layer.set_weight("kernel", kernel)
    if bias is not None:
        layer.set_weight("bias", bias)
    return layer


def add_mapper(nodes, graph):
    """Add [+ Relu] of two activations (same shape) to a QuantizedAdd."""
    add = nodes[0]
    if any(graph.get_initializer(name) is not None for name in add.input):
        raise ValueError(f"{node_label(add)} expected two activations (a constant operand is "
                         "only supported as the bias of a MatMul).")
    shapes = [graph.get_shape(name) for name in add.input]
    if None not in shapes and shapes[0][1:] != shapes[1][1:]:
        raise ValueError(f"{node_label(add)} expected inputs of the same shape (no "
                         f"broadcasting). Received: shapes {shapes}")
    return QuantizedAdd(name=add.name or add.output[0], activation=len(nodes) > 1)


def _default_patterns():
    patterns = {}
    for tail in [(), ("Relu",), ("MaxPool",), ("Relu", "MaxPool"), ("MaxPool", "Relu"),
                 ("GlobalAveragePool",), ("Relu", "GlobalAveragePool")]:
        patterns[("Conv",) + tail] = conv_mapper
    for head in [(), ("Flatten",), ("Reshape",), ("Squeeze",), ("Transpose", "Flatten"),
                 ("Transpose", "Reshape")]:
        for core in [("Gemm",), ("MatMul",), ("MatMul", "Add")]:
            for tail in [(), ("Relu",)]:
                patterns[head + core + tail] = dense_mapper
    patterns[("Add",)] = add_mapper
    patterns[("Add", "Relu")] = add_mapper
    return patterns


DEFAULT_PATTERNS = _default_patterns()
"""dict: the default patterns (tuple of op types -> mapper)."""

_STATE = threading.local()


def _check_patterns(patterns):
    if not isinstance(patterns, dict):
        raise TypeError("custom_pattern_scope expected a dict (tuple of op types -> mapper). "
                        f"Received: patterns of type {type(patterns).__name__}")
    for key, mapper in patterns.items():
        if not isinstance(key, tuple) or not key or \
                not all(isinstance(op, str) and op for op in key):
            raise ValueError("custom_pattern_scope expected keys that are non-empty tuples of "
                             f"op types (str). Received: key={key!r}")
        if not callable(mapper):
            raise TypeError("custom_pattern_scope expected callable mappers. "
                            f"Received: {key!r} -> {mapper!r}")
    return dict(patterns)


@contextlib.contextmanager
def custom_pattern_scope(patterns):
    """Register a custom pattern in the context to be used at quantization time.

    A pattern is understood as a sequence of continuous operations in the graph, whose
    representation can converge in an OnnxLayer. Custom patterns take priority over the default
    ones (and nested scopes over outer ones); the mapper receives the matched nodes and the
    :class:`OnnxGraph` and returns an :class:`OnnxLayer` (or raises a ValueError when the nodes
    do not fit, so that shorter patterns are tried).

    Args:
        patterns (dict): a list of sequence of nodes (keys) and their mapper function (values).

    Example:
        ```python
        def conv_clip_mapper(nodes, graph):  # Conv + Clip(0, max) as a Conv + ReLU
            layer = QuantizedConv2D(activation=True, name=nodes[0].name)
            layer.set_weight("kernel", graph.get_initializer(nodes[0].input[1]))
            return layer

        with custom_pattern_scope({("Conv", "Clip"): conv_clip_mapper}):
            qmodel = quantize(model)
        ```
    """
    patterns = _check_patterns(patterns)
    previous = getattr(_STATE, "patterns", [])
    _STATE.patterns = [patterns] + previous
    try:
        yield
    finally:
        _STATE.patterns = previous


def get_patterns():
    """The active patterns in priority order: custom ones (innermost scope first), then the
    defaults, each group longest first.

    Returns:
        list: (tuple of op types, mapper) pairs.
    """
    ordered, seen = [], set()
    for group in getattr(_STATE, "patterns", []) + [DEFAULT_PATTERNS]:
        for key in sorted(group, key=len, reverse=True):
            if key not in seen:
                seen.add(key)
                ordered.append((key, group[key]))
    return ordered


def _follow(graph, node, pattern, used):
    """The chain of nodes starting at ``node`` with the op types of ``pattern`` (each output
    read only by the next node, never a graph output), or None."""
    chain = [node]
    for op_type in pattern[1:]:
        last = chain[-1]
        outputs = [name for name in last.output if name]
        if len(outputs) != 1 or graph.is_output(outputs[0]):
            return None
        consumers = graph.consumers(outputs[0])
        if len(consumers) != 1 or consumers[0].op_type != op_type or \
                id(consumers[0]) in used:
            return None
        chain.append(consumers[0])
    return chain


class Block:
    """A matched pattern: its nodes, their OnnxLayer, activation inputs and output."""

    def __init__(self, nodes, layer, graph):
        self.nodes = nodes
        self.layer = layer
        produced = {name for n in nodes for name in n.output}
        self.inputs = []
        for n in nodes:
            for name in n.input:
                if name and name not in produced and graph.get_initializer(name) is None \
                        and name not in self.inputs:
                    self.inputs.append(name)
        self.output = nodes[-1].output[0]


def match_patterns(graph, skip=()):
    """Covers the graph nodes with the active patterns (greedy, in node order, the first
    pattern that matches and maps wins).

    Args:
        graph (OnnxGraph): the float graph.
        skip (list of NodeProto, optional): nodes left out (kept float). Defaults to ().

    Returns:
        tuple: (list of Block, list of str: one message per node left uncovered).
    """
    patterns = get_patterns()
    used, blocks, problems = {id(n) for n in skip}, [], []
    for index, node in enumerate(graph.nodes):
        if id(node) in used:
            continue
        reasons = []
        for pattern, mapper in patterns:
            if pattern[0] != node.op_type:
                continue
            chain = _follow(graph, node, pattern, used)
            if chain is None:
                continue
            try:
                layer = mapper(chain, graph)
            except ValueError as e:
                reasons.append(str(e))
                continue
            if not isinstance(layer, OnnxLayer):
                raise TypeError(f"The mapper of pattern {pattern} expected to return an "
                                f"OnnxLayer. Received: {type(layer).__name__}")
            block = Block(chain, layer, graph)
            if len(block.inputs) != layer.NUM_ACTIVATIONS:
                reasons.append(f"{type(layer).__name__} expected {layer.NUM_ACTIVATIONS} "
                               f"activation input(s). Received: {block.inputs}")
                continue
            blocks.append(block)
            used.update(id(n) for n in chain)
            break
        else:
            label = node_label(node, index)
            if reasons:
                reason = reasons[0]
                problems.append(reason if reason.startswith(label) else f"{label}: {reason}")
            elif any(node.op_type in p for p, _ in patterns):
                problems.append(f"{label}: not part of a supported op sequence")
            else:
                problems.append(f"{label}: unsupported op type")
    return blocks, problems
