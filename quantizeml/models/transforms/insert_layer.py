"""Inserts an OutputQuantizer or a Dequantizer after a layer."""
import tensorflow as tf

from ... import layers
from ..graph import Graph, rebuild

__all__ = ["insert_layer"]


def insert_layer(model, target_layer_name, new_layer):
    """Inserts the given layer in the model after the layer with the name target_layer_name.

    Note that new_layer type is restricted to (OutputQuantizer, Dequantizer). Every consumer
    of the target layer's output (and the model output it may be) then reads the output of
    ``new_layer``; ``new_layer`` itself is used in the new model (it is not cloned). The
    target may be an input layer; nested models are flattened in the new model.

    Args:
        model (keras.Model): the model to update
        target_layer_name (str): name of the layer after which to insert a layer
        new_layer (keras.layers.Layer): layer to insert

    Raises:
        ValueError: when target_layer_name is not found in model or new_layer is not in
            (OutputQuantizer, Dequantizer)

    Returns:
        keras.Model: the new model

    Example:
        ```python
        model = insert_layer(model, "logits", Dequantizer())
        ```
    """

    if not isinstance(new_layer, (layers.OutputQuantizer, layers.Dequantizer)):
        raise ValueError(f"new_layer expected an OutputQuantizer or a Dequantizer instance. "
                         f"Received: new_layer={new_layer!r}")
    graph = Graph(model)
    names = graph.layer_names()
    if target_layer_name not in names:
        raise ValueError(f"target_layer_name expected the name of a layer of the model "
                         f"(one of {names}). Received: target_layer_name={target_layer_name!r}")

    def insert(outputs):
        if len(tf.nest.flatten(outputs)) != 1:
            raise ValueError(f"target_layer_name expected a layer with a single output. "
                             f"Received: target_layer_name={target_layer_name!r}")
        return new_layer(outputs)

    def rewrite(node, rb):
        if node.layer.name == target_layer_name:
            return insert(rb.apply(node))
        return None

    def rewrite_input(layer, tensor, rb):
        return insert(tensor) if layer.name == target_layer_name else tensor

    return rebuild(graph, rewrite, rewrite_input)
