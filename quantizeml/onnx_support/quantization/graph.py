"""OnnxGraph, the read-only view of a float ONNX model that pattern mappers receive, and the
float-graph rewrites applied before quantization (constants to initializers, identities
removed, BatchNormalization folded)."""
import collections

import numpy as np
import onnx
from onnx import helper as onnx_helper
from onnx import numpy_helper


def node_label(node, index=None):
    """``'name' (OpType)`` for error messages (the first output names an unnamed node)."""
    name = node.name or (f"<output {node.output[0]}>" if node.output else f"<node #{index}>")
    return f"{name!r} ({node.op_type})"


class OnnxGraph:
    """A read-only view of a float ONNX model: nodes, initializers (numpy), producers,
    consumers and inferred shapes.

    Args:
        model (ModelProto): the model.
    """

    def __init__(self, model):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.inputs = [vi for vi in graph.input if vi.name not in self.initializers]
        self.outputs = list(graph.output)
        self.output_names = {vi.name for vi in graph.output}
        self.producers = {name: node for node in self.nodes for name in node.output if name}
        self._consumers = collections.defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                if name:
                    self._consumers[name].append(node)
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - shapes are a convenience: unknown when inference fails
            inferred = graph
        self._shapes = {}
        for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            tensor_type = vi.type.tensor_type
            if tensor_type.HasField("shape"):
                self._shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                              for d in tensor_type.shape.dim)

    def get_initializer(self, name):
        """The numpy value of initializer ``name``, or None when it is not an initializer."""
        return self.initializers.get(name)

    def get_shape(self, name):
        """The inferred shape of tensor ``name`` (None for unknown dimensions), or None."""
        return self._shapes.get(name)

    def consumers(self, name):
        """The nodes that read tensor ``name``."""
        return list(self._consumers.get(name, []))

    def is_output(self, name):
        """Whether tensor ``name`` is a graph output."""
        return name in self.output_names

    @staticmethod
    def get_attribute(node, name, default=None):
        """The python value of attribute ``name`` of ``node`` (``default`` when absent)."""
        for attr in node.attribute:
            if attr.name == name:
                value = onnx_helper.get_attribute_value(attr)
                return value.decode() if isinstance(value, bytes) else value
        return default


def _rebuild(model, nodes, initializers):
    """A copy of ``model`` with new nodes and initializers (dict name -> numpy array)."""
    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    del new.graph.initializer[:]
    new.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k)
                                 for k, v in initializers.items())
    dropped = {t.name for t in model.graph.initializer} - set(initializers)
    inputs = [vi for vi in new.graph.input if vi.name not in dropped]
    del new.graph.input[:]
    new.graph.input.extend(inputs)
    return new


def constants_to_initializers(model):
    """Replaces ``Constant`` nodes (tensor values) by initializers.

    Returns:
        ModelProto: the new model (``model`` when there is nothing to do).
    """
    graph = OnnxGraph(model)
    nodes, inits, changed = [], dict(graph.initializers), False
    for node in graph.nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and \
                len(node.attribute) == 1 and node.attribute[0].name == "value":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            changed = True
        else:
            nodes.append(node)
    return _rebuild(model, nodes, inits) if changed else model


def _rename_input(nodes, old, new):
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def remove_identities(model):
    """Removes ``Identity`` and inference ``Dropout`` nodes (their mask output unused),
    rewiring their consumers (or renaming their producer's output when they produce a graph
    output).

    Returns:
        ModelProto: the new model (``model`` when there is nothing to do).
    """
    graph = OnnxGraph(model)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.nodes]
    changed = False
    for node in list(nodes):
        if node.op_type not in ("Identity", "Dropout") or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Dropout" and (len(node.input) > 2 and node.input[2] or
                                          len(node.output) > 1 and node.output[1]):
            continue
        src, dst = node.input[0], node.output[0]
        if graph.is_output(dst):
            producer = next((n for n in nodes if src in n.output), None)
            if producer is None or graph.is_output(src) or \
                    sum(src in n.input for n in nodes) != 1:
                continue
            producer.output[list(producer.output).index(src)] = dst
        else:
            _rename_input(nodes, dst, src)
        nodes.remove(node)
        changed = True
    return _rebuild(model, nodes, graph.initializers) if changed else model


def _bn_factors(bn, graph):
    """(scale, offset) of an inference BatchNormalization: ``y = x * scale + offset``."""
    values = [graph.get_initializer(name) for name in bn.input[1:5]]
    if any(v is None for v in values) or graph.get_attribute(bn, "training_mode", 0):
        return None
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in values)
    scale = gamma / np.sqrt(var + graph.get_attribute(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def _unique(name, taken):
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def fold_batchnorms(model):
    """Folds each inference ``BatchNormalization`` into the ``Conv`` or ``Gemm`` that feeds it
    alone (constant weights): ``W' = W * k`` per output channel, ``b' = b * k + (beta - mean *
    k)`` with ``k = gamma / sqrt(var + epsilon)``. Other BatchNormalizations are kept.

    Returns:
        ModelProto: the new model (``model`` when nothing was folded).
    """
    graph = OnnxGraph(model)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.nodes]
    inits = dict(graph.initializers)
    taken = set(inits) | {name for n in nodes for name in list(n.input) + list(n.output)}
    changed = False
    for bn in [n for n in nodes if n.op_type == "BatchNormalization"]:
        producer = next((n for n in nodes if bn.input[0] in n.output), None)
        if producer is None or producer.op_type not in ("Conv", "Gemm") or \
                len(graph.consumers(bn.input[0])) != 1 or graph.is_output(bn.input[0]) or \
                len(bn.output) > 1 and any(bn.output[1:]):
            continue
        factors = _bn_factors(bn, graph)
        weights = inits.get(producer.input[1])
        if factors is None or weights is None:
            continue
        scale, offset = factors
        bias = inits.get(producer.input[2]) if len(producer.input) > 2 and \
            producer.input[2] else None
        if producer.op_type == "Conv":
            if weights.shape[0] != scale.shape[0]:
                continue
            new_w = weights * scale.reshape((-1,) + (1,) * (weights.ndim - 1))
            new_b = (np.zeros(scale.shape) if bias is None else bias) * scale + offset
        else:
            if graph.get_attribute(producer, "transA", 0) or bias is not None and \
                    np.size(bias) not in (1, scale.shape[0]):
                continue
            alpha = graph.get_attribute(producer, "alpha", 1.0)
            beta = graph.get_attribute(producer, "beta", 1.0)
            kernel = weights.T if graph.get_attribute(producer, "transB", 0) else weights
            if kernel.ndim != 2 or kernel.shape[1] != scale.shape[0]:
                continue
            new_w = alpha * kernel * scale[None, :]
            full_bias = np.zeros(scale.shape) if bias is None else \
                beta * np.broadcast_to(np.reshape(bias, -1), scale.shape)
            new_b = full_bias * scale + offset
            del producer.attribute[:]
        dtype = weights.dtype
        w_name = _unique(f"{producer.name or producer.output[0]}_folded_weights", taken)
        b_name = _unique(f"{producer.name or producer.output[0]}_folded_bias", taken)
        inits[w_name], inits[b_name] = new_w.astype(dtype), new_b.astype(dtype)
        del producer.input[1:]
        producer.input.extend([w_name, b_name])
        producer.output[0] = bn.output[0]
        nodes.remove(bn)
        changed = True
    if not changed:
        return model
    used = {name for n in nodes for name in n.input}
    return _rebuild(model, nodes, {k: v for k, v in inits.items()
                                   if k in used or k not in graph.initializers})


def prepare(model):
    """The float-graph rewrites applied before quantization, in order: constants to
    initializers, identities removed, BatchNormalization folded.

    Returns:
        ModelProto: the rewritten model.
    """
    return fold_batchnorms(remove_identities(constants_to_initializers(model)))
