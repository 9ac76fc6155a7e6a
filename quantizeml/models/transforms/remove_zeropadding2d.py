"""Removes ZeroPadding2D layers whose padding is the 'same' padding of the next convolution."""
import math

import tf_keras as keras

from ..graph import Graph, channels_last, rebuild

__all__ = ["remove_zeropadding2d"]

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _is_same_padding(size, pads, kernel, stride, dilation):
    """Whether padding ``size`` with ``pads = (before, after)`` then a 'valid' convolution
    reads the same windows as a 'same' convolution."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    before = max((out - 1) * stride + effective - size, 0) // 2
    padded = size + pads[0] + pads[1]
    return padded >= effective and pads[0] == before \
        and (padded - effective) // stride + 1 == out


def _removable(graph, conv_node):
    zp = graph.chain(conv_node, (keras.layers.ZeroPadding2D,), _CONVS)
    if zp is None:
        return None
    conv = conv_node.layer.get_config()
    if conv["padding"] != "valid" or not channels_last(zp.layer) \
            or not channels_last(conv_node.layer):
        return None
    shape = zp.inputs[0].shape
    pads = zp.layer.get_config()["padding"]
    if shape.rank != 4:
        return None
    for i in range(2):
        if shape[i + 1] is None or not _is_same_padding(
                shape[i + 1], pads[i], conv["kernel_size"][i], conv["strides"][i],
                conv["dilation_rate"][i]):
            return None
    return zp


def remove_zeropadding2d(model):
    """Removes ZeroPadding2D layers from a model.

    ZeroPadding2D layers will not be supported by quantization so this transform adds support
    so that when the ZeroPadding2D layers are immediately followed by a convolution layer
    (Conv2D, DepthwiseConv2D, SeparableConv2D) with 'valid' padding, they are removed and the
    following convolution is updated with a 'same' padding instead. This can however only
    happen when the padding specified in ZeroPadding2D actually corresponds to a 'same'
    padding (for the static input size, kernel size, strides and dilation), when the
    convolution is the only consumer of the ZeroPadding2D and neither layer is called more
    than once.

    Args:
        model (keras.Model): the model to update

    Returns:
        keras.Model: the original model or a new model with ZeroPadding2D removed

    Example:
        ```python
        # ZeroPadding2D(((0, 1), (0, 1))) -> DepthwiseConv2D(3, strides=2) on a 96x96 input
        model = remove_zeropadding2d(model)  # DepthwiseConv2D(3, strides=2, padding='same')
        ```
    """
    graph = Graph(model)
    found = {}  # conv node index -> zero padding node
    for node in graph.nodes:
        zp = _removable(graph, node)
        if zp is not None:
            found[node.index] = zp
    if not found:
        return model
    removed = {zp.index for zp in found.values()}

    def rewrite(node, rb):
        if node.index in removed:
            return rb.map(node.inputs[0])
        if node.index in found:
            new = rb.clone(node.layer, padding="same")
            return rb.apply(node, layer=new, weights=node.layer.get_weights())
        return None

    return rebuild(graph, rewrite)
