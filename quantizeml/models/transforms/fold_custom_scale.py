"""Replaces InceptionResNetV2's residual ``CustomScaleLayer`` (``x + up * scale``) by an Add,
the scale folded into the layer that produces ``up``."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, rebuild
from .fold_layer_scale import _scaled_weights
from .fold_batchnorms import _FOLDABLE

__all__ = ["fold_custom_scale"]


def _is_custom_scale(layer):
    """InceptionResNetV2's CustomScaleLayer (``tf_keras.applications.inception_resnet_v2``,
    not public API): matched on its class name, its one ``scale`` config key and no weight."""
    config = layer.get_config()
    return type(layer).__name__ == "CustomScaleLayer" and not layer.weights \
        and np.size(config.get("scale")) == 1


def _foldable(graph, node):
    """The producer node of ``up`` (the second input) that the scale folds into, or None."""
    if not _is_custom_scale(node.layer) or len(node.inputs) != 2 \
            or not graph.single_call(node):
        return None
    producer = graph.producer(node.inputs[1])
    if producer is None or type(producer.layer) not in _FOLDABLE \
            or not graph.single_call(producer) or graph.sole_consumer(producer) is not node:
        return None
    layer = producer.layer
    if layer.get_config().get("activation", "linear") != "linear" or not channels_last(layer):
        return None
    return producer


def fold_custom_scale(model):
    """Returns a new model where ``CustomScaleLayer([x, up])`` (``x + up * scale``,
    InceptionResNetV2's scaled residuals) becomes ``Add([x, up'])``.

    ``up`` must be produced by a Conv2D, DepthwiseConv2D, SeparableConv2D, Dense or
    Conv2DTranspose without activation whose only consumer is the CustomScaleLayer: its kernel
    and bias are multiplied by ``scale`` (``W' = W * scale``, ``b' = b * scale``). Other
    CustomScaleLayers stay (quantize() reports them). The outputs are unchanged up to float32
    rounding; the input model is not modified.

    Args:
        model (keras.Model): a functional or Sequential model.

    Returns:
        keras.Model: the original model, or a new model without the folded scale layers.

    Example:
        ```python
        model = fold_custom_scale(keras.applications.InceptionResNetV2(weights=None))
        ```
    """
    graph = Graph(model)
    folds = {}  # producer node index -> CustomScaleLayer node
    for node in graph.nodes:
        target = _foldable(graph, node)
        if target is not None:
            folds[target.index] = node
    if not folds:
        return model
    scales = {node.index: node for node in folds.values()}

    def rewrite(node, rb):
        if node.index in scales:
            add = keras.layers.Add(name=rb.name_for(node.layer))
            return rb.apply(node, layer=add, args=([rb.map(node.inputs[0]),
                                                    rb.map(node.inputs[1])],), kwargs={})
        if node.index in folds:
            scale = float(folds[node.index].layer.get_config()["scale"])
            channels = node.outputs[0].shape[-1]
            gamma = np.full((channels,), scale, np.float64)
            return rb.apply(node, layer=rb.clone(node.layer),
                            weights=_scaled_weights(node.layer, gamma))
        return None

    return rebuild(graph, rewrite)
