"""Splits Keras' GroupNormalization into the layers quantize() quantizes: reshapes, a
LayerNormalization over each group and a per-channel affine DepthwiseConv2D."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, rebuild

__all__ = ["split_group_normalization"]


#: The most values per group: the LayerNormalization twin's int64 maths takes 8-bit inputs
#: (8 value bits, unsigned) for ``M`` values while ``bits(M^3) <= 44``.
MAX_GROUP_VALUES = 25_000


def _splittable(node):
    """Whether a node is a GroupNormalization over the last axis of a static, unmasked
    ``(batch, ..., channels)`` tensor with at most ``MAX_GROUP_VALUES`` values per group."""
    layer = node.layer
    if type(layer) is not keras.layers.GroupNormalization or len(node.inputs) != 1 \
            or node.kwargs.get("mask") is not None:
        return False
    shape = node.inputs[0].shape
    if shape.rank is None or shape.rank < 3 or any(d is None for d in shape[1:]):
        return False
    per_group = int(np.prod(shape[1:])) // int(layer.groups)
    return layer.axis in (-1, shape.rank - 1) and per_group <= MAX_GROUP_VALUES


def split_group_normalization(model, keep=()):
    """Replaces each GroupNormalization (last axis, static shape) of a model by layers with
    quantized twins, computing the same to float rounding.

    ``GroupNormalization(groups)`` on ``(batch, *spatial, C)`` normalizes each group of
    ``C / groups`` channels over the spatial positions and those channels (mean and biased
    variance, ``epsilon`` added to the variance), then applies a per-channel ``gamma`` and
    ``beta``. It becomes:

    - ``Reshape((P, groups, C / groups))`` (``P`` the product of the spatial dimensions),
      ``Permute((2, 1, 3))`` and ``Reshape((groups, P * C / groups))``: each group's values on
      one axis (``<name>/groups``, ``<name>/group_major``, ``<name>/group_rows``; one Reshape
      when ``groups == 1``);
    - ``LayerNormalization(axis=-1, epsilon, center=False, scale=False)`` (``<name>/norm``):
      the integer mean and variance of quantizeml's LayerNormalization twin;
    - the inverse moves back to ``(*spatial, C)`` (as ``(P, 1, C)`` for 1-D data), and a
      ``DepthwiseConv2D(1)`` holding ``gamma`` as its kernel and ``beta`` as its bias, named
      as the GroupNormalization (for 1-D data a last Reshape restores ``(T, C)``).

    A GroupNormalization over another axis, of a dynamic shape, called with a mask, or with
    more than ``MAX_GROUP_VALUES`` (25,000) values per group stays as it is (quantize()
    reports it; ``q_config={name: 'float'}`` or ``float_fallback=True`` keeps it float): the
    LayerNormalization twin's int64 maths takes inputs of at most ``(60 - bits(M^3)) // 2``
    value bits for ``M`` values, 8 bits up to 25,000 (e.g. 32x32 positions of 16 channels
    per group).

    Args:
        model (keras.Model): a model.
        keep (iterable of str, optional): names of GroupNormalization layers left whole (those
            quantize() keeps float on request: ``q_config={name: 'float'}``). Defaults to ().

    Returns:
        keras.Model: the original model (nothing to split) or the updated model.

    Example:
        ```python
        model = split_group_normalization(model)  # GroupNormalization(8) -> 8 reshapes...
        ```
    """
    graph = Graph(model)
    keep = set(keep)
    found = {node.index for node in graph.nodes
             if node.layer.name not in keep and _splittable(node)}
    if not found:
        return model

    def rewrite(node, rb):
        if node.index not in found:
            return None
        layer = node.layer
        shape = [int(d) for d in node.inputs[0].shape[1:]]
        spatial, channels = shape[:-1], shape[-1]
        groups = int(layer.groups)
        positions, per_group = int(np.prod(spatial)), channels // groups
        name = layer.name
        L = keras.layers
        x = rb.map(node.inputs[0])
        if groups == 1:
            x = L.Reshape((1, positions * channels), name=rb.unique(f"{name}/group_rows"))(x)
        else:
            x = L.Reshape((positions, groups, per_group), name=rb.unique(f"{name}/groups"))(x)
            x = L.Permute((2, 1, 3), name=rb.unique(f"{name}/group_major"))(x)
            x = L.Reshape((groups, positions * per_group),
                          name=rb.unique(f"{name}/group_rows"))(x)
        x = L.LayerNormalization(axis=-1, epsilon=float(layer.epsilon), center=False,
                                 scale=False, name=rb.unique(f"{name}/norm"))(x)
        grid = spatial if len(spatial) == 2 else [positions, 1]
        if groups > 1:
            x = L.Reshape((groups, positions, per_group),
                          name=rb.unique(f"{name}/group_positions"))(x)
            x = L.Permute((2, 1, 3), name=rb.unique(f"{name}/position_major"))(x)
        x = L.Reshape((*grid, channels), name=rb.unique(f"{name}/channels"))(x)
        affine = L.DepthwiseConv2D(1, use_bias=bool(layer.center),
                                   name=rb.name_for(layer) if len(spatial) == 2
                                   else rb.unique(f"{name}/affine"))
        y = affine(x)
        gamma = np.asarray(layer.gamma.numpy() if layer.scale else np.ones(channels),
                           np.float32)
        weights = [gamma.reshape(1, 1, channels, 1)]
        if layer.center:
            weights.append(np.asarray(layer.beta.numpy(), np.float32))
        affine.set_weights(weights)
        if len(spatial) != 2:
            y = L.Reshape((*spatial, channels), name=rb.name_for(layer))(y)
        return y

    return rebuild(graph, rewrite)
