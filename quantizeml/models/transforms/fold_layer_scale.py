"""Folds ConvNeXt's LayerScale (a per-channel ``x * gamma``) into the layer that produces its
input."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, rebuild
from .fold_batchnorms import _FOLDABLE

__all__ = ["fold_layer_scale", "is_layer_scale"]

#: The config keys of a LayerScale besides those of keras.layers.Layer.
_LAYER_SCALE_KEYS = {"init_values", "projection_dim"}
#: The keys of keras.layers.Layer.get_config.
_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape"}


def is_layer_scale(layer):
    """Whether ``layer`` is a LayerScale: ``x * gamma`` with one per-channel weight ``gamma``.

    ConvNeXt's ``LayerScale`` (``tf_keras.applications.convnext``) is not part of the public
    tf_keras API, so it is matched on its class name, its config (``init_values`` and
    ``projection_dim`` and nothing else) and its single weight, named gamma, of shape
    ``(projection_dim,)``.

    Args:
        layer (keras.layers.Layer): a layer.

    Returns:
        bool: True for a built LayerScale.
    """
    if type(layer).__name__ != "LayerScale" or len(layer.weights) != 1:
        return False
    config = layer.get_config()
    if set(config) - _BASE_KEYS != _LAYER_SCALE_KEYS:
        return False
    gamma = layer.weights[0]
    return gamma.name.split("/")[-1].startswith("gamma") and \
        tuple(gamma.shape) == (config["projection_dim"],)


def _foldable(graph, node):
    """The node that the LayerScale of ``node`` folds into, or None."""
    if not is_layer_scale(node.layer):
        return None
    first = graph.chain(node, tuple(_FOLDABLE))
    if first is None:
        return None
    layer = first.layer
    if layer.get_config().get("activation", "linear") != "linear" or not channels_last(layer) \
            or node.inputs[0].shape[-1] != node.layer.weights[0].shape[0]:
        return None
    return first


def _scaled_weights(layer, gamma):
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    if layer.get_config()["use_bias"]:
        weights[-1] = weights[-1] * gamma
        weights[-2] = _FOLDABLE[type(layer)](weights[-2], gamma)
    else:
        weights[-1] = _FOLDABLE[type(layer)](weights[-1], gamma)
    return [w.astype(np.float32) for w in weights]


def fold_layer_scale(model):
    """Returns a new model where LayerScale layers are folded into the layer before them.

    A LayerScale (``y = x * gamma`` per channel, ConvNeXt) whose input is produced by a
    Conv2D, DepthwiseConv2D, SeparableConv2D (pointwise kernel), Dense or Conv2DTranspose
    without activation, of which it is the only consumer (both called once), is removed and
    that layer's kernel and bias are scaled per output channel: ``W' = W * gamma``,
    ``b' = b * gamma``. Other LayerScale layers stay. The outputs are unchanged up to float32
    rounding, the input model is not modified.

    Args:
        model (keras.Model): a functional or Sequential model.

    Returns:
        keras.Model: the original model, or a new model without the folded LayerScale layers.

    Example:
        ```python
        model = fold_layer_scale(keras.applications.ConvNeXtTiny(weights=None))
        assert not any(type(l).__name__ == "LayerScale" for l in model.layers)
        ```
    """
    graph = Graph(model)
    folds = {}  # producer node index -> LayerScale node
    for node in graph.nodes:
        target = _foldable(graph, node)
        if target is not None:
            folds[target.index] = node
    if not folds:
        return model
    bypassed = {node.index for node in folds.values()}

    def rewrite(node, rb):
        if node.index in bypassed:
            return rb.map(node.inputs[0])
        if node.index in folds:
            gamma = folds[node.index].layer.get_weights()[0].astype(np.float64)
            return rb.apply(node, layer=rb.clone(node.layer),
                            weights=_scaled_weights(node.layer, gamma))
        return None

    return rebuild(graph, rewrite)
