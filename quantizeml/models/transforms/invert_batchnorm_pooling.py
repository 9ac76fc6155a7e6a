"""Moves BatchNormalization layers that follow a pooling layer before it."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, last_axis_only, rebuild

__all__ = ["invert_batchnorm_pooling"]

_MAX_POOLS = (keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D)
_AVG_POOLS = (keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D)


def _candidates(graph):
    """``{pool node index: bn node}`` for the pooling -> BatchNormalization patterns."""
    found = {}
    for node in graph.nodes:
        pool = graph.chain(node, _MAX_POOLS + _AVG_POOLS, (keras.layers.BatchNormalization,))
        rank = node.inputs[0].shape.rank if pool is not None else None
        if pool is not None and rank is not None and channels_last(pool.layer) \
                and last_axis_only(node.layer, rank):
            found[pool.index] = node
    return found


def _gamma_positive(bn):
    return bn.gamma is None or bool(np.all(bn.gamma.numpy() > 0))


def invert(model, strict=True):
    """Implements :func:`invert_batchnorm_pooling`.

    Args:
        model (keras.Model): a model.
        strict (bool, optional): raise on non-positive gammas. When False, a
            BatchNormalization with non-positive gammas is only moved before an average
            pooling (where the inversion is exact whatever the sign). Defaults to True.

    Returns:
        keras.Model: the original model or the updated model.
    """
    graph = Graph(model)
    found = {}
    for index, bn_node in _candidates(graph).items():
        bn = bn_node.layer
        if not _gamma_positive(bn):
            if strict:
                raise RuntimeError(
                    f"BatchNormalization gamma expected strictly positive values to invert it "
                    f"with the pooling before it. Received: layer {bn.name} with gamma="
                    f"{bn.gamma.numpy().tolist()}")
            if isinstance(graph.nodes[index].layer, _MAX_POOLS):
                continue
        found[index] = bn_node
    if not found:
        return model
    moved = {bn_node.index for bn_node in found.values()}

    def rewrite(node, rb):
        if node.index in moved:
            return rb.map(node.inputs[0])
        if node.index in found:
            bn = found[node.index].layer
            new_bn = rb.clone(bn, axis=-1)
            x = rb.apply(found[node.index], layer=new_bn, args=(node.args[0],), kwargs={},
                         weights=bn.get_weights())
            return rb.apply(node, args=(x,) + tuple(node.args[1:]))
        return None

    return rebuild(graph, rewrite)


def invert_batchnorm_pooling(model):
    """Inverts pooling and BatchNormalization layers in a model to have BN layer before
    pooling.

    Returns a new model where pooling and batch normalization layers are inverted. From a
    Keras model where pooling layers (MaxPooling2D, GlobalMaxPooling2D, AveragePooling2D,
    GlobalAveragePooling2D) precede batch normalization layers, this function places the BN
    layers before pooling layers. This is the first step before folding BN layers into
    processing layers. A pattern is inverted when the BN is the only consumer of the pooling,
    normalizes the channels (last) axis and neither layer is called more than once.

    Note:
        Inversion of layers is equivalent only if the gammas of BN layers are positive. The
        function raises an error if not.

    Args:
        model (keras.Model): a model

    Returns:
        keras.Model: the original model or the updated model

    Raises:
        RuntimeError: if a candidate BatchNormalization layer has gamma values that are not
            strictly positive.

    Example:
        ```python
        model = invert_batchnorm_pooling(model)  # ... -> BN -> MaxPool2D -> ...
        ```
    """
    return invert(model, strict=True)
