"""Folds the offset (and per-channel scales) of a Rescaling layer into the next layer."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, rebuild

__all__ = ["align_rescaling"]

# exact class -> axis of the kernel that indexes the input channels
_NEXT = {keras.layers.Conv2D: 2, keras.layers.DepthwiseConv2D: 2, keras.layers.Dense: 0}


def _per_channel(value, channels):
    """A Rescaling scale/offset as a per-channel float64 vector, or None."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > 1 or value.size not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).copy()


def _plan(graph, node):
    """``(next node, scale, offset, new scale)`` to align the Rescaling of ``node``, or None."""
    if type(node.layer) is not keras.layers.Rescaling or len(node.inputs) != 1:
        return None
    channels = node.inputs[0].shape[-1]
    config = node.layer.get_config()
    scale = _per_channel(config["scale"], channels)
    offset = _per_channel(config["offset"], channels)
    if channels is None or scale is None or offset is None:
        return None
    if not np.any(offset) and np.all(scale == scale[0]):
        return None  # already aligned
    nxt = graph.sole_consumer(node)
    if nxt is None or not graph.single_call(node) or not graph.single_call(nxt) \
            or type(nxt.layer) not in _NEXT or not channels_last(nxt.layer):
        return None
    next_config = nxt.layer.get_config()
    if next_config.get("groups", 1) != 1:
        return None
    if np.any(offset) and next_config.get("padding", "valid") != "valid":
        return None  # the padded zeros would receive the offset
    new_scale = float(np.max(np.abs(scale)))
    if new_scale == 0:
        return None
    return nxt, scale, offset, new_scale


def _aligned_weights(layer, scale, offset, new_scale):
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    kernel = weights[0]
    axis = _NEXT[type(layer)]
    shape = [1] * kernel.ndim
    shape[axis] = -1
    # offset contribution: sum of kernel * offset over the window and the input channels
    contribution = kernel * offset.reshape(shape)
    if type(layer) is keras.layers.DepthwiseConv2D:
        contribution = contribution.sum(axis=(0, 1)).reshape(-1)
    else:
        contribution = contribution.sum(axis=tuple(range(kernel.ndim - 1)))
    weights[0] = kernel * (scale / new_scale).reshape(shape)
    bias = weights[1] if layer.get_config()["use_bias"] else np.zeros_like(contribution)
    return [weights[0].astype(np.float32), (bias + contribution).astype(np.float32)]


def align_rescaling(model):
    """Aligns the Rescaling layer of the model to make it quantization ready.

    This folds the offset into the bias of next layer: a Rescaling ``x * scale + offset``
    followed by a Conv2D, DepthwiseConv2D (both with 'valid' padding when the offset is not
    zero) or Dense layer becomes a Rescaling ``x * s`` with a scalar ``s`` and no offset, the
    per-channel ratios ``scale / s`` going into the next layer's kernel and the offset into its
    bias (``b' = b + sum(W * offset)``; a bias is created where there was none).

    The resulting Rescaling is therefore compatible with a quantization to a
    QuantizedRescaling.

    If the source model does not contain a Rescaling or if its Rescaling is already aligned,
    then the original model is returned. A Rescaling that cannot be aligned exactly (a 'same'
    padding after an offset, several consumers, another next layer) is left as is.

    Args:
        model (keras.Model): the source Keras model

    Returns:
        keras.Model: the original model or a new model with Rescaling layer aligned

    Example:
        ```python
        # Rescaling(1 / 127.5, offset=-1) -> Conv2D(8, 3) becomes
        # Rescaling(1 / 127.5) -> Conv2D(8, 3) with bias b - sum(W)
        model = align_rescaling(model)
        ```
    """
    graph = Graph(model)
    plans = {}
    for node in graph.nodes:
        plan = _plan(graph, node)
        if plan is not None:
            plans[node.index] = plan
    if not plans:
        return model
    targets = {plan[0].index: plan for plan in plans.values()}

    def rewrite(node, rb):
        if node.index in plans:
            new_scale = plans[node.index][3]
            return rb.apply(node, layer=rb.clone(node.layer, scale=new_scale, offset=0.0))
        if node.index in targets:
            _, scale, offset, new_scale = targets[node.index]
            new = rb.clone(node.layer, use_bias=True)
            return rb.apply(node, layer=new,
                            weights=_aligned_weights(node.layer, scale, offset, new_scale))
        return None

    return rebuild(graph, rewrite)
