"""Turns a Rescaling inside a model that QuantizedRescaling cannot take (an offset, a negative
or per-channel scale) into a per-channel affine DepthwiseConv2D."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, rebuild

__all__ = ["rescaling_to_depthwise"]


def _preprocessing(graph, ref, seen=None):
    """Whether ``ref`` is computed from the model inputs by layers without weights only (a
    preprocessing head: a Rescaling there stays for quantize()'s float-head rule)."""
    seen = set() if seen is None else seen
    node = graph.producer(ref)
    if node is None:
        return True
    if node.index in seen:
        return True
    seen.add(node.index)
    return not node.layer.weights and all(_preprocessing(graph, t, seen) for t in node.inputs)


def _affine(graph, node):
    """``(scale, offset)`` per channel of a Rescaling node to rewrite, or None."""
    if type(node.layer) is not keras.layers.Rescaling or len(node.inputs) != 1:
        return None
    x = node.inputs[0]
    if _preprocessing(graph, x):
        return None  # from the model inputs: a head (QuantizedRescaling or float)
    shape = x.shape
    if shape.rank is None or not 2 <= shape.rank <= 4 or shape[-1] is None \
            or not x.tensor.dtype.is_floating:
        return None
    channels = int(shape[-1])
    config = node.layer.get_config()
    scale = np.asarray(config["scale"], np.float64)
    offset = np.asarray(config["offset"], np.float64)
    if scale.size not in (1, channels) or offset.size not in (1, channels) \
            or scale.ndim > 1 or offset.ndim > 1:
        return None
    if scale.size == 1 and float(scale.reshape(-1)[0]) > 0 and not np.any(offset):
        return None  # QuantizedRescaling's own case
    return (np.broadcast_to(scale.reshape(-1), (channels,)).astype(np.float32),
            np.broadcast_to(offset.reshape(-1), (channels,)).astype(np.float32))


def rescaling_to_depthwise(model):
    """Replaces each Rescaling inside the model (after a layer with weights: not in the
    preprocessing head that reads the model inputs) whose offset is
    not zero or whose scale is negative or per channel, ``y = x * scale + offset``, by a
    ``DepthwiseConv2D(1)`` of kernel ``scale`` and bias ``offset`` named as it (between
    Reshapes ``<name>/grid`` and ``<name>/flat`` for rank-2 or rank-3 data): the same
    function (float rounding aside), which quantize() quantizes as a depthwise convolution
    (per-channel integer weights, the bias on the accumulator's grid).

    ``x * 2 - 1`` or ``1 - x`` between two nonlinearities (TFOpLambda arithmetic, turned into
    Rescalings by ``replace_tfop_arithmetic``) then quantizes; a Rescaling computed from the
    model inputs by layers without weights stays (a preprocessing head).

    Args:
        model (keras.Model): a model.

    Returns:
        keras.Model: the original model (nothing to replace) or the updated model.

    Example:
        ```python
        model = rescaling_to_depthwise(model)  # Rescaling(2., -1.) -> DepthwiseConv2D(1)
        ```
    """
    graph = Graph(model)
    found = {node.index: plan for node in graph.nodes
             if (plan := _affine(graph, node)) is not None}
    if not found:
        return model

    def rewrite(node, rb):
        if node.index not in found:
            return None
        scale, offset = found[node.index]
        name = rb.name_for(node.layer)
        x = rb.map(node.inputs[0])
        dims = [int(d) for d in x.shape[1:]]
        if len(dims) != 3:
            grid = (dims[0], 1, dims[1]) if len(dims) == 2 else (1, 1, dims[0])
            x = keras.layers.Reshape(grid, name=rb.unique(f"{name}/grid"))(x)
        depthwise = keras.layers.DepthwiseConv2D(
            1, name=name if len(dims) == 3 else rb.unique(f"{name}/affine"))
        y = depthwise(x)
        depthwise.set_weights([scale.reshape(1, 1, -1, 1), offset])
        if len(dims) != 3:
            y = keras.layers.Reshape(tuple(dims), name=name)(y)
        return y

    return rebuild(graph, rewrite)
