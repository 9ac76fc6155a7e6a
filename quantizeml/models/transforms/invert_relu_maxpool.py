"""Moves MaxPool2D layers that follow a ReLU before it."""
import tf_keras as keras

from ..graph import Graph, channels_last, rebuild

__all__ = ["invert_relu_maxpool"]

_POOLS = (keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D)


def invert_relu_maxpool(model):
    """Inverts ReLU and MaxPool2D layers in a model to have MaxPool2D before ReLU.

    This transformation produces a strictly equivalent model: a ReLU (with any ``max_value``,
    ``threshold`` and a non-negative ``negative_slope``) is non-decreasing, so it commutes with
    a max. A ReLU -> MaxPooling2D (or GlobalMaxPooling2D) pattern is inverted when the pooling
    is the only consumer of the ReLU and neither layer is called more than once.

    Args:
        model (keras.Model): a model

    Returns:
        keras.Model: the original model or the updated model

    Example:
        ```python
        model = invert_relu_maxpool(model)  # ... -> MaxPool2D -> ReLU -> ...
        ```
    """
    graph = Graph(model)
    found = {}  # pool node index -> relu node
    for node in graph.nodes:
        relu = graph.chain(node, (keras.layers.ReLU,), _POOLS)
        if relu is not None and channels_last(node.layer) \
                and (relu.layer.get_config().get("negative_slope") or 0) >= 0:
            found[node.index] = relu
    if not found:
        return model
    moved = {relu.index for relu in found.values()}

    def rewrite(node, rb):
        if node.index in moved:
            return rb.map(node.inputs[0])
        if node.index in found:
            relu = found[node.index]
            pooled = rb.apply(node)
            return rb.apply(relu, args=(pooled,) + tuple(relu.args[1:]))
        return None

    return rebuild(graph, rewrite)
