"""Folds keras.layers.Normalization (a per-channel ``(x - mean) / std`` preprocessing) into the
layer that consumes it, or into the Rescaling before it."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, rebuild

__all__ = ["fold_normalization", "normalization_mean_std"]

# exact class -> axis of the kernel that indexes the input channels
_NEXT = {keras.layers.Conv2D: 2, keras.layers.DepthwiseConv2D: 2, keras.layers.Dense: 0}


def normalization_mean_std(layer, channels):
    """The per-channel float64 ``(mean, std)`` of a built Normalization, or None.

    ``std = max(sqrt(variance), keras.backend.epsilon())`` as the layer divides by it. None
    when the statistics are not per channel of the last axis (or one value for all), or the
    layer inverts.

    Args:
        layer (keras.layers.Normalization): a built Normalization layer.
        channels (int): the size of the last axis of its input.

    Returns:
        tuple or None: the mean and std numpy vectors of ``channels`` values.
    """
    if layer.get_config().get("invert", False) or not hasattr(layer, "mean"):
        return None
    out = []
    for value in (layer.mean, layer.variance):
        value = np.asarray(value, np.float64)
        if value.ndim and (any(d != 1 for d in value.shape[:-1])
                           or value.shape[-1] not in (1, channels)):
            return None
        out.append(np.broadcast_to(value.reshape(-1), (channels,)).copy())
    mean, variance = out
    return mean, np.maximum(np.sqrt(variance), keras.backend.epsilon())


def _pads(layer):
    """Whether a layer pads its inputs (zeros that a fold would see unnormalized)."""
    config = layer.get_config()
    if config.get("padding", "valid") == "valid":
        return False
    return tuple(config.get("kernel_size", (1, 1))) != (1, 1)  # a 1x1 'same' never pads


def _plan(graph, node):
    """``("fold", next node, mean, std)``, ``("rescale", rescaling node, mean, std)`` or None."""
    if type(node.layer) is not keras.layers.Normalization or len(node.inputs) != 1 \
            or not graph.single_call(node):
        return None
    channels = node.inputs[0].shape[-1]
    stats = None if channels is None else normalization_mean_std(node.layer, channels)
    if stats is None:
        return None
    mean, std = stats
    nxt = graph.sole_consumer(node)
    if nxt is not None and graph.single_call(nxt) and type(nxt.layer) in _NEXT \
            and channels_last(nxt.layer) and nxt.layer.get_config().get("groups", 1) == 1 \
            and (not np.any(mean) or not _pads(nxt.layer)):
        return "fold", nxt, mean, std
    prev = graph.parent(node)
    if prev is not None and type(prev.layer) is keras.layers.Rescaling \
            and graph.single_call(prev) and graph.sole_consumer(prev) is node:
        return "rescale", prev, mean, std
    return None


def _folded_weights(layer, mean, std, use_bias):
    """The weights of ``layer`` fed ``x`` instead of ``(x - mean) / std``: ``W' = W / std``
    (per input channel), ``b' = b - sum(W' * mean)``."""
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    kernel = weights[0]
    shape = [1] * kernel.ndim
    shape[_NEXT[type(layer)]] = -1
    kernel = kernel / std.reshape(shape)
    contribution = kernel * mean.reshape(shape)
    if type(layer) is keras.layers.DepthwiseConv2D:
        # (kh, kw, channels, multiplier): output channel c * multiplier + m
        contribution = contribution.sum(axis=(0, 1)).reshape(-1)
    else:
        contribution = contribution.sum(axis=tuple(range(kernel.ndim - 1)))
    new = [kernel.astype(np.float32)]
    if use_bias:
        bias = weights[1] if layer.get_config()["use_bias"] else np.zeros_like(contribution)
        new.append((bias - contribution).astype(np.float32))
    return new


def _merged_rescaling(rescaling, mean, std, channels):
    """The config ``scale``/``offset`` of ``Normalization(Rescaling(x))`` as one Rescaling:
    ``x * scale / std + (offset - mean) / std`` (per channel, lists of floats)."""
    config = rescaling.get_config()
    scale = np.broadcast_to(np.asarray(config["scale"], np.float64).reshape(-1), (channels,))
    offset = np.broadcast_to(np.asarray(config["offset"], np.float64).reshape(-1),
                             (channels,))
    return ([float(v) for v in scale / std], [float(v) for v in (offset - mean) / std])


def fold_normalization(model):
    """Returns a new model where Normalization layers are folded into their neighbours.

    A ``keras.layers.Normalization`` (``(x - mean) / std`` per channel of the last axis,
    ``std = max(sqrt(variance), epsilon)``, e.g. the preprocessing of EfficientNet and
    ConvNeXt) is removed when:

    - its sole consumer is a Conv2D, DepthwiseConv2D or Dense (channels last, one group,
      called once): its kernel takes ``W' = W / std`` per input channel and its bias
      ``b' = b - sum(W' * mean)`` (summed over the window and the input channels; a bias is
      created where the mean is not zero and there was none). A convolution that pads its
      inputs ('same' padding, kernel larger than 1x1) is folded into only when the mean is
      zero: its padded zeros stand for normalized zeros, i.e. for ``x = mean``, which no
      kernel of ``x`` reproduces at the borders;
    - otherwise, when it directly follows a Rescaling (its sole consumer, called once), both
      merge into one Rescaling with per-channel ``scale / std`` and ``(offset - mean) / std``
      (exact; :func:`align_rescaling` then moves what it can into the next layer).

    Other Normalization layers (inverted, statistics not per channel, several consumers, a
    padded consumer with a non-zero mean and no Rescaling before) stay, and quantize() reports
    them. The outputs are unchanged up to float32 rounding, the input model is not modified.

    Args:
        model (keras.Model): a functional or Sequential model.

    Returns:
        keras.Model: the original model, or a new model without the folded Normalization.

    Example:
        ```python
        # Normalization(mean=m, variance=v) -> Conv2D(8, 3) becomes Conv2D(8, 3) with
        # kernel W / sqrt(v) and bias b - sum(W * m / sqrt(v))
        model = fold_normalization(model)
        ```
    """
    graph = Graph(model)
    plans = {}
    for node in graph.nodes:
        plan = _plan(graph, node)
        if plan is not None:
            plans[node.index] = plan
    if not plans:
        return model
    targets = {plan[1].index: (plan, index) for index, plan in plans.items()}

    def rewrite(node, rb):
        if node.index in plans:
            return rb.map(node.inputs[0])
        if node.index not in targets:
            return None
        (kind, _, mean, std), norm_index = targets[node.index]
        layer = node.layer
        if kind == "fold":
            use_bias = layer.get_config()["use_bias"] or bool(np.any(mean))
            new = rb.clone(layer, use_bias=use_bias)
            return rb.apply(node, layer=new,
                            weights=_folded_weights(layer, mean, std, use_bias))
        channels = graph.nodes[norm_index].inputs[0].shape[-1]
        scale, offset = _merged_rescaling(layer, mean, std, channels)
        return rb.apply(node, layer=rb.clone(layer, scale=scale, offset=offset))

    return rebuild(graph, rewrite)
