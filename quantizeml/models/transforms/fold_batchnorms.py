"""Folds BatchNormalization layers into the processing layer that precedes them."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, last_axis_only, rebuild

__all__ = ["fold_batchnorms"]


def _scale_last(kernel, a):
    return kernel * a


def _scale_depthwise(kernel, a):
    # (kh, kw, channels, multiplier): output channel c * multiplier + m
    return kernel * a.reshape(kernel.shape[2], kernel.shape[3])


def _scale_depthwise_1d(kernel, a):
    # (k, channels, multiplier): output channel c * multiplier + m
    return kernel * a.reshape(kernel.shape[1], kernel.shape[2])


def _scale_transpose(kernel, a):
    # (kh, kw, filters, channels)
    return kernel * a[:, None]


# exact class -> how its (last) kernel is scaled per output channel
_FOLDABLE = {
    keras.layers.Conv2D: _scale_last,
    keras.layers.Dense: _scale_last,
    keras.layers.SeparableConv2D: _scale_last,   # the pointwise kernel
    keras.layers.DepthwiseConv2D: _scale_depthwise,
    keras.layers.Conv2DTranspose: _scale_transpose,
    keras.layers.Conv1D: _scale_last,
    keras.layers.SeparableConv1D: _scale_last,   # the pointwise kernel
    keras.layers.DepthwiseConv1D: _scale_depthwise_1d,
}


def batchnorm_scale_offset(bn):
    """The per-channel ``(a, b)`` with ``bn(x) = a * x + b`` at inference (float64).

    Args:
        bn (keras.layers.BatchNormalization): a built BatchNormalization layer.

    Returns:
        tuple: the scale and offset numpy arrays.
    """
    mean = bn.moving_mean.numpy().astype(np.float64)
    var = bn.moving_variance.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.gamma is not None else 1.0
    beta = bn.beta.numpy().astype(np.float64) if bn.beta is not None else 0.0
    a = gamma / np.sqrt(var + bn.epsilon)
    return a * np.ones_like(mean), beta - a * mean


def _foldable(graph, bn_node):
    """The node that ``bn_node`` folds into, or None."""
    if type(bn_node.layer) is not keras.layers.BatchNormalization:
        return None
    node = graph.chain(bn_node, tuple(_FOLDABLE))
    if node is None:
        return None
    layer = node.layer
    rank = bn_node.inputs[0].shape.rank
    if layer.get_config().get("activation", "linear") != "linear" or not channels_last(layer) \
            or rank is None or not last_axis_only(bn_node.layer, rank):
        return None
    return node


def _folded_weights(layer, bn):
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    a, b = batchnorm_scale_offset(bn)
    bias = weights.pop() if layer.get_config()["use_bias"] else np.zeros_like(a)
    weights[-1] = _FOLDABLE[type(layer)](weights[-1], a)
    weights.append(bias * a + b)
    return [w.astype(np.float32) for w in weights]


def fold_batchnorms(model):
    """Returns a new model where BatchNormalization layers are folded into previous layers.

    From a Keras model where BN layers follow processing layers, this function removes the BN
    layers and updates the preceding layers weights and bias accordingly (a bias is created
    where there was none). The new model is equivalent to the previous one at inference
    (``W' = W * a``, ``b' = (b - moving_mean) * a + beta`` with
    ``a = gamma / sqrt(moving_variance + epsilon)``).

    A BatchNormalization on the last (channels) axis is folded when it directly follows a
    Conv2D, DepthwiseConv2D, SeparableConv2D (into its pointwise kernel), Dense or
    Conv2DTranspose layer without activation, is that layer's only consumer, and neither layer
    is called more than once. Other BatchNormalization layers stay. Nested models are
    flattened in the new model.

    Args:
        model (keras.Model): a model

    Returns:
        keras.Model: the original model or a model with BN folded

    Example:
        ```python
        folded = fold_batchnorms(model)
        assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
        ```
    """
    graph = Graph(model)
    folds = {}  # processing node index -> bn node
    for node in graph.nodes:
        target = _foldable(graph, node)
        if target is not None:
            folds[target.index] = node
    if not folds:
        return model
    bypassed = {bn_node.index for bn_node in folds.values()}

    def rewrite(node, rb):
        if node.index in bypassed:
            return rb.map(node.inputs[0])
        if node.index in folds:
            layer = node.layer
            new = rb.clone(layer, use_bias=True)
            return rb.apply(node, layer=new,
                            weights=_folded_weights(layer, folds[node.index].layer))
        return None

    return rebuild(graph, rewrite)
