"""Inserts a Rescaling layer after the inputs of a model."""
import tf_keras as keras

from ..graph import Graph, rebuild

__all__ = ["insert_rescaling"]


def insert_rescaling(model, scale, offset):
    """Inserts a Rescaling as first layer of the Model (after the Input)

    The new model computes ``model(x * scale + offset)``. A model with several inputs gets
    one Rescaling after each input.

    Args:
        model (keras.Model): the model to update
        scale (float): the Rescaling scale
        offset (float): the Rescaling offset

    Raises:
        ValueError: when the Model does not have an Input layer.

    Returns:
        keras.Model: the new model

    Example:
        ```python
        model = insert_rescaling(model, scale=1 / 255, offset=0)
        ```
    """
    if not isinstance(model, keras.Model) or not model.inputs:
        raise ValueError(f"model expected a model with an Input layer. Received: model="
                         f"{getattr(model, 'name', model)!r} (build it on keras.Input)")
    graph = Graph(model)

    def rewrite_input(layer, tensor, rb):
        return keras.layers.Rescaling(scale, offset, name=rb.unique("rescaling"))(tensor)

    return rebuild(graph, rewrite_input=rewrite_input)
