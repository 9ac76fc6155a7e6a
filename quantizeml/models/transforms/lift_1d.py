"""Lifts 1-D layers (Conv1D, pooling 1-D, ...) to their 2-D counterparts on a height of 1."""
import numpy as np
import tf_keras as keras

from ..graph import Graph, channels_last, rebuild

__all__ = ["lift_1d"]

_L = keras.layers

#: Config keys a 1-D convolution shares with its 2-D counterpart, unchanged.
_CONV_KEYS = ("activation", "use_bias", "kernel_initializer", "bias_initializer",
              "kernel_regularizer", "bias_regularizer", "activity_regularizer",
              "kernel_constraint", "bias_constraint", "depthwise_initializer",
              "pointwise_initializer", "depthwise_regularizer", "pointwise_regularizer",
              "depthwise_constraint", "pointwise_constraint", "depth_multiplier", "groups",
              "filters", "trainable", "dtype")


def _one(value):
    """The single entry of a 1-D size (an int or a 1-tuple)."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _conv(cls):
    def make(config, name):
        kwargs = {k: config[k] for k in _CONV_KEYS if k in config}
        kernel = _one(config["kernel_size"])
        dilation = _one(config.get("dilation_rate", 1))
        padding = config["padding"]
        pad = None
        if padding == "causal":  # left zeros, then 'valid': out[t] reads x[t - (k - 1) d .. t]
            pad, padding = (dilation * (kernel - 1), 0), "valid"
        layer = cls(kernel_size=(1, kernel), strides=(1, _one(config["strides"])),
                    padding=padding, dilation_rate=(1, dilation), name=name, **kwargs)
        return layer, pad
    return make


def _conv_transpose(config, name):
    kwargs = {k: config[k] for k in _CONV_KEYS if k in config}
    output_padding = config.get("output_padding")
    output_padding = None if output_padding is None else (0, _one(output_padding))
    return _L.Conv2DTranspose(kernel_size=(1, _one(config["kernel_size"])),
                              strides=(1, _one(config["strides"])), padding=config["padding"],
                              output_padding=output_padding,
                              dilation_rate=(1, _one(config.get("dilation_rate", 1))),
                              name=name, **kwargs), None


def _pooling(cls):
    def make(config, name):
        pool = _one(config["pool_size"])
        strides = config.get("strides")
        strides = pool if strides is None else _one(strides)
        return cls(pool_size=(1, pool), strides=(1, strides), padding=config["padding"],
                   name=name), None
    return make


def _global(cls):
    def make(config, name):
        return cls(keepdims=bool(config.get("keepdims", False)), name=name), None
    return make


def _steps(value):
    """``((0, 0), (left, right))``: a 1-D padding or cropping (an int or a pair) on the width."""
    left, right = value if isinstance(value, (list, tuple)) else (value, value)
    return (0, 0), (int(left), int(right))


def _padding(config, name):
    return _L.ZeroPadding2D(_steps(config["padding"]), name=name), None


def _cropping(config, name):
    return _L.Cropping2D(_steps(config["cropping"]), name=name), None


def _upsampling(config, name):
    return _L.UpSampling2D((1, int(config["size"])), interpolation="nearest", name=name), None


#: exact 1-D class -> how its 2-D counterpart is made: ``make(config, name) -> (layer,
#: causal left/right padding or None)``.
_LIFTS = {
    _L.Conv1D: _conv(_L.Conv2D),
    _L.SeparableConv1D: _conv(_L.SeparableConv2D),
    _L.DepthwiseConv1D: _conv(_L.DepthwiseConv2D),
    _L.Conv1DTranspose: _conv_transpose,
    _L.MaxPooling1D: _pooling(_L.MaxPooling2D),
    _L.AveragePooling1D: _pooling(_L.AveragePooling2D),
    _L.GlobalAveragePooling1D: _global(_L.GlobalAveragePooling2D),
    _L.GlobalMaxPooling1D: _global(_L.GlobalMaxPooling2D),
    _L.ZeroPadding1D: _padding,
    _L.Cropping1D: _cropping,
    _L.UpSampling1D: _upsampling,
}

_GLOBAL = (_L.GlobalAveragePooling1D, _L.GlobalMaxPooling1D)


def _liftable(node):
    layer = node.layer
    if type(layer) not in _LIFTS or len(node.inputs) != 1 or not channels_last(layer):
        return False
    tensor = node.inputs[0].tensor
    # a masked input (Embedding(mask_zero=True)) changes what a global pooling averages
    return tensor.shape.rank == 3 and getattr(tensor, "_keras_mask", None) is None


def lift_1d(model):
    """Replaces the 1-D layers of a model by their 2-D counterparts on inputs of height 1.

    ``Conv1D``, ``SeparableConv1D``, ``DepthwiseConv1D``, ``Conv1DTranspose``, ``MaxPooling1D``,
    ``AveragePooling1D``, ``GlobalAveragePooling1D``, ``GlobalMaxPooling1D``,
    ``ZeroPadding1D``, ``Cropping1D`` and ``UpSampling1D`` (channels last) compute on a
    ``(batch, steps, channels)`` tensor what the 2-D layer with a ``(1, k)`` kernel, pool,
    stride, dilation, padding or size computes on the same tensor reshaped to
    ``(batch, 1, steps, channels)``: each becomes ``Reshape((1, -1, channels))``, the 2-D layer
    (same name, kernels with a leading axis of 1) and ``Reshape((-1, channels'))``, the
    reshapes between two lifted layers dropped. A causal convolution becomes a
    ``ZeroPadding2D`` of ``dilation * (kernel - 1)`` steps on the left and a 'valid' one. The
    reshapes keep the last (channels) axis, so the quantized model keeps per-axis
    activations through them.

    Layers called on a masked input (``Embedding(mask_zero=True)``) or channels first stay as
    they are (quantize() reports them).

    Args:
        model (keras.Model): a model.

    Returns:
        keras.Model: the original model (nothing to lift) or the updated model; the outputs
        are equal.

    Example:
        ```python
        model = lift_1d(model)  # Conv1D(16, 3) -> Reshape, Conv2D(16, (1, 3)), Reshape
        ```
    """
    graph = Graph(model)
    found = {node.index for node in graph.nodes if _liftable(node)}
    if not found:
        return model
    made = {}      # id(1-D layer) -> (2-D layer, causal padding layer or None)
    four_d = {}    # id(rebuilt 3-D tensor) -> the 4-D tensor it was reshaped from

    def rewrite(node, rb):
        if node.index not in found:
            return None
        layer = node.layer
        x = rb.map(node.inputs[0])
        x4 = four_d.get(id(x))
        if x4 is None:
            x4 = _L.Reshape((1, -1, int(x.shape[-1])),
                            name=rb.unique(f"{layer.name}_to_2d"))(x)
        weights = None
        if id(layer) not in made:
            lifted, pad = _LIFTS[type(layer)](layer.get_config(), rb.name_for(layer))
            pad = None if pad is None else _L.ZeroPadding2D(
                ((0, 0), pad), name=rb.unique(f"{layer.name}_causal_padding"))
            made[id(layer)] = (lifted, pad)
            # the kernels (all weights but the bias) take a leading axis of 1
            kernels = len(layer.weights) - int(bool(getattr(layer, "use_bias", False)))
            weights = [np.asarray(w)[None] if i < kernels else np.asarray(w)
                       for i, w in enumerate(layer.get_weights())]
        lifted, pad = made[id(layer)]
        if pad is not None:
            x4 = pad(x4)
        first = not lifted.built
        y4 = lifted(x4)
        if first and weights:
            lifted.set_weights(weights)
        if isinstance(layer, _GLOBAL):
            if y4.shape.rank == 2:  # keepdims=False: (batch, channels) as the 1-D layer
                return y4
            y = _L.Reshape((1, int(y4.shape[-1])), name=rb.unique(f"{layer.name}_to_1d"))(y4)
        else:
            y = _L.Reshape((-1, int(y4.shape[-1])), name=rb.unique(f"{layer.name}_to_1d"))(y4)
        four_d[id(y)] = y4
        return y

    return rebuild(graph, rewrite)
