"""Flattens nested functional and Sequential models into one functional model."""
from ..graph import Graph, rebuild

__all__ = ["flatten_model"]


def flatten_model(model):
    """Flattens the nested functional and Sequential sub-models of a model.

    The layers of each nested model are called directly in the new functional model, in the
    same order and on the same inputs, so the outputs stay equal. A nested model called several
    times gives shared layers. A layer whose name is already taken gets a ``_<n>`` suffix.
    The ``training`` argument given to a nested model call is not kept.

    Args:
        model (keras.Model): a functional or Sequential model.

    Raises:
        ValueError: if the model or one of its nested models is a subclassed model.

    Returns:
        keras.Model: the original model if it has no nested model, or a new flat model.

    Example:
        ```python
        backbone = keras.applications.MobileNet(input_shape=(96, 96, 3), include_top=False)
        model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D()])
        flat = flatten_model(model)  # the MobileNet layers are now layers of flat
        ```
    """
    graph = Graph(model)
    if not graph.nested:
        return model
    return rebuild(graph)
