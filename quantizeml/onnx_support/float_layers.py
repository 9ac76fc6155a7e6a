"""Float32 ONNX emitters of the spatial and normalization layers quantize() may leave float (a
float preprocessing head, a float island ``q_config={name: "float"}``, the float tail; Conv1D
and the 1D poolings have no quantized twin, so they are always float): merged into
:data:`.exact.FLOAT_EMITTERS` (exact Keras class -> ``(emit, refuses)``).

The tensors stay NHWC / NWC (the Keras layout) between layers; the ONNX operators that want
NCHW / NCW (``Conv``, ``MaxPool``, ``AveragePool``) are wrapped in a ``Transpose`` pair.
TensorFlow's 'same' padding (the extra row/column at the end) is written as explicit ``pads``
computed from the layer's static input shape (Conv1D's 'causal' one all before). Padding,
cropping, nearest upsampling and the max poolings are exact; the convolutions, normalizations
and averages are float32 arithmetic that may differ from TensorFlow's in the last bits
(another summation order).
"""
import numpy as np
import tf_keras as keras

from .exact import (FLOAT_EMITTERS, _activation_name, _float_activation,
                    _float_activation_refuses, _np, _pad_amounts)

__all__ = ["SPATIAL_FLOAT_EMITTERS"]

L = keras.layers


def _f32(b, value, base="f"):
    return b.const(np.asarray(value, np.float32), base)


def _nchw(b, x, rank=4):
    """NHWC (NWC) ``x`` as NCHW (NCW)."""
    return b.node("Transpose", [x], "f_nchw", perm=[0, rank - 1] + list(range(1, rank - 1)))


def _nhwc(b, x, rank=4):
    """NCHW (NCW) ``x`` as NHWC (NWC)."""
    return b.node("Transpose", [x], "f_nhwc", perm=[0] + list(range(2, rank)) + [1])


def _spatial_refuses(layer, rank=4):
    """Why a spatial layer cannot be written (channels_first, another rank, 'same' padding on a
    dynamic size), or None."""
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"data_format {layer.data_format!r} (channels_last only)"
    shape = layer.input_shape
    if not isinstance(shape, tuple) or len(shape) != rank:
        return f"inputs of shape {shape} ({rank}D inputs only)"
    if getattr(layer, "padding", None) == "same" and None in shape[1:rank - 1]:
        return f"'same' padding on a dynamic spatial size {shape}"
    return None


def _both(*checks):
    """A refuses function: the first reason of ``checks`` (functions of the layer), or None."""
    def refuses(layer):
        for check in checks:
            reason = check(layer)
            if reason is not None:
                return reason
        return None
    return refuses


def _pads(layer, kernel, strides, dilation):
    """ONNX ``pads`` (the befores, then the afters of each spatial axis) of TensorFlow's
    padding of the layer: none ('valid'), the extra one at the end ('same'), all before
    ('causal')."""
    sizes = layer.input_shape[1:-1]
    if layer.padding == "causal":
        return [(k - 1) * d for k, d in zip(kernel, dilation)] + [0] * len(kernel)
    if layer.padding == "valid":
        return [0] * (2 * len(kernel))
    amounts = [_pad_amounts(int(n), k, s, d, "same")
               for n, k, s, d in zip(sizes, kernel, strides, dilation)]
    return [a[0] for a in amounts] + [a[1] for a in amounts]


# ---- convolutions ---------------------------------------------------------------------------
def _conv_nchw(b, layer, v, kernel, bias, group, pointwise=False):
    """A float32 ``Conv`` of NCHW (NCW) ``v`` with the ONNX kernel (K, C / group, kh, kw), the
    layer's strides, dilations and padding (none for a pointwise step)."""
    inputs = [v, _f32(b, kernel, "f_w")]
    if bias is not None:
        inputs.append(_f32(b, bias, "f_b"))
    if pointwise:
        return b.node("Conv", inputs, "f_conv", group=1)
    strides, dilations = list(layer.strides), list(layer.dilation_rate)
    return b.node("Conv", inputs, "f_conv", strides=strides, dilations=dilations, group=group,
                  pads=_pads(layer, kernel.shape[2:], strides, dilations))


def _depthwise_kernel(layer):
    """The Keras depthwise kernel (kh, kw, C, M) as ONNX (C * M, 1, kh, kw), output channel
    ``c * M + m`` as TensorFlow's."""
    kh, kw, c, m = layer.depthwise_kernel.shape
    return _np(layer.depthwise_kernel).reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]


def _bias(layer):
    return _np(layer.bias) if layer.use_bias else None


def _float_conv(b, layer, xs):
    """Conv2D, Conv1D: ``Conv`` (kernel (K, C / groups, kh, kw), ``group`` = groups, TF's
    asymmetric 'same' pads, Conv1D's 'causal' ones all before) in NCHW (NCW), then the
    activation."""
    kernel = _np(layer.kernel)
    rank = kernel.ndim
    kernel = kernel.transpose(rank - 1, rank - 2, *range(rank - 2))
    v = _nchw(b, xs[0], rank)
    v = _conv_nchw(b, layer, v, kernel, _bias(layer), int(layer.groups))
    return _float_activation(b, _activation_name(layer.activation), _nhwc(b, v, rank))


def _float_depthwise_conv2d(b, layer, xs):
    """DepthwiseConv2D: ``Conv`` with ``group`` = C (depth_multiplier kernels per channel),
    then the activation."""
    channels = int(layer.depthwise_kernel.shape[2])
    v = _conv_nchw(b, layer, _nchw(b, xs[0]), _depthwise_kernel(layer), _bias(layer), channels)
    return _float_activation(b, _activation_name(layer.activation), _nhwc(b, v))


def _float_separable_conv2d(b, layer, xs):
    """SeparableConv2D: the depthwise ``Conv`` (strides, dilations, padding; no bias), then the
    1x1 pointwise ``Conv`` with the bias, then the activation."""
    channels = int(layer.depthwise_kernel.shape[2])
    v = _conv_nchw(b, layer, _nchw(b, xs[0]), _depthwise_kernel(layer), None, channels)
    pointwise = _np(layer.pointwise_kernel).transpose(3, 2, 0, 1)
    v = _conv_nchw(b, layer, v, pointwise, _bias(layer), 1, pointwise=True)
    return _float_activation(b, _activation_name(layer.activation), _nhwc(b, v))


_conv_refuses = _both(_spatial_refuses, _float_activation_refuses)
_conv1d_refuses = _both(lambda layer: _spatial_refuses(layer, rank=3), _float_activation_refuses)


# ---- normalizations -------------------------------------------------------------------------
def _float_batchnorm(b, layer, xs):
    """BatchNormalization (inference): ``x * a + c`` on the last axis, ``a = gamma /
    sqrt(moving_variance + epsilon)`` and ``c = beta - moving_mean * a`` folded in float64 and
    rounded once to float32."""
    var = _np(layer.moving_variance).astype(np.float64)
    a = 1.0 / np.sqrt(var + float(layer.epsilon))
    if layer.scale:
        a = a * _np(layer.gamma).astype(np.float64)
    c = -_np(layer.moving_mean).astype(np.float64) * a
    if layer.center:
        c = c + _np(layer.beta).astype(np.float64)
    v = b.node("Mul", [xs[0], _f32(b, a, "f_bn_a")], "f_bn_mul")
    return b.node("Add", [v, _f32(b, c, "f_bn_c")], "f_bn")


def _axes(layer):
    """The layer's axes (int or list) as sorted non-negative ints for its input rank."""
    rank = len(layer.input_shape)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return sorted(int(a) % rank for a in axes), rank


def _float_batchnorm_refuses(layer):
    if not isinstance(layer.input_shape, tuple):
        return f"inputs of shape {layer.input_shape}"
    axes, rank = _axes(layer)
    if axes != [rank - 1]:
        return f"a batch normalization on axis {list(layer.axis)} (the last axis only)"
    return None


def _float_layernorm(b, layer, xs):
    """LayerNormalization over trailing axes: the ONNX ``LayerNormalization`` (``axis`` the first
    normalized axis, epsilon) with gamma (ones when scale=False) and beta (none when
    center=False), shaped as the normalized dimensions."""
    axes, _ = _axes(layer)
    shape = tuple(int(layer.input_shape[a]) for a in axes)
    gamma = _np(layer.gamma).reshape(shape) if layer.scale else np.ones(shape, np.float32)
    inputs = [xs[0], _f32(b, gamma, "f_ln_gamma")]
    if layer.center:
        inputs.append(_f32(b, _np(layer.beta).reshape(shape), "f_ln_beta"))
    return b.node("LayerNormalization", inputs, "f_ln", axis=axes[0],
                  epsilon=float(layer.epsilon))


def _float_layernorm_refuses(layer):
    if not isinstance(layer.input_shape, tuple):
        return f"inputs of shape {layer.input_shape}"
    axes, rank = _axes(layer)
    if axes[0] == 0 or axes != list(range(axes[0], rank)):
        return f"a layer normalization on axes {list(layer.axis)} (trailing axes only)"
    if any(layer.input_shape[a] is None for a in axes):
        return f"dynamic normalized dimensions {layer.input_shape}"
    return None


# ---- pooling, padding, cropping, upsampling -------------------------------------------------
def _float_global_pool(op, rank=4):
    """GlobalAveragePooling2D/1D, GlobalMaxPooling2D/1D: ``ReduceMean``/``ReduceMax`` over the
    spatial axes (keepdims as the layer)."""
    def emitter(b, layer, xs):
        return b.node(op, [xs[0]], "f_" + op.lower(), axes=list(range(1, rank - 1)),
                      keepdims=int(bool(layer.keepdims)))
    return emitter


def _float_pool(op, rank=4, **attrs):
    """MaxPooling2D/1D, AveragePooling2D/1D: ``MaxPool``/``AveragePool`` in NCHW (NCW) with TF's
    pads (ignored by the maximum; not counted in the average: Keras' 'same' averages the valid
    cells only)."""
    def emitter(b, layer, xs):
        pool, strides = list(layer.pool_size), list(layer.strides)
        v = b.node(op, [_nchw(b, xs[0], rank)], "f_" + op.lower(), kernel_shape=pool,
                   strides=strides, pads=_pads(layer, pool, strides, [1] * len(pool)), **attrs)
        return _nhwc(b, v, rank)
    return emitter


def _refuses_rank(rank):
    return lambda layer: _spatial_refuses(layer, rank=rank)


def _global_pool_1d_refuses(layer):
    if getattr(layer, "input_mask", None) is not None:
        return "a masked input (the mean over the unmasked steps)"
    return _spatial_refuses(layer, rank=3)


def _float_zero_pad(b, layer, xs):
    """ZeroPadding2D: ``Pad`` with the constant 0 on the rows and columns."""
    (top, bottom), (left, right) = layer.padding
    return b.node("Pad", [xs[0], b.i64([0, top, left, 0, 0, bottom, right, 0]),
                          _f32(b, 0.0)], "f_zero_pad", mode="constant")


def _float_crop(b, layer, xs):
    """Cropping2D: ``Slice`` of the rows and columns (negative ends from the bottom/right)."""
    (top, bottom), (left, right) = layer.cropping
    big = np.iinfo(np.int64).max
    ends = [-bottom if bottom else big, -right if right else big]
    return b.node("Slice", [xs[0], b.i64([top, left]), b.i64(ends), b.i64([1, 2])], "f_crop")


def _float_upsample(b, layer, xs):
    """UpSampling2D (nearest): ``Unsqueeze`` to (N, H, 1, W, 1, C), ``Expand`` to (N, H, sh, W,
    sw, C), ``Reshape`` to (N, H * sh, W * sw, C) (exact copies)."""
    rows, cols = layer.size
    _, h, w_, c = layer.input_shape
    v = b.node("Unsqueeze", [xs[0], b.i64([2, 4])], "f_up_unsq")
    v = b.node("Expand", [v, b.i64([1, 1, rows, 1, cols, 1])], "f_up_expand")
    return b.node("Reshape", [v, b.i64([0, h * rows, w_ * cols, c])], "f_upsample")


def _float_upsample_refuses(layer):
    if layer.interpolation != "nearest":
        return f"interpolation {layer.interpolation!r} (nearest only)"
    reason = _spatial_refuses(layer)
    if reason is None and None in layer.input_shape[1:]:
        return f"dynamic input dimensions {layer.input_shape}"
    return reason


#: Float Keras layer class (exact) -> ``(emit, refuses)``, merged into ``FLOAT_EMITTERS``.
SPATIAL_FLOAT_EMITTERS = {
    L.Conv2D: (_float_conv, _conv_refuses),
    L.Conv1D: (_float_conv, _conv1d_refuses),
    L.DepthwiseConv2D: (_float_depthwise_conv2d, _conv_refuses),
    L.SeparableConv2D: (_float_separable_conv2d, _conv_refuses),
    L.BatchNormalization: (_float_batchnorm, _float_batchnorm_refuses),
    L.LayerNormalization: (_float_layernorm, _float_layernorm_refuses),
    L.GlobalAveragePooling2D: (_float_global_pool("ReduceMean"), _spatial_refuses),
    L.GlobalMaxPooling2D: (_float_global_pool("ReduceMax"), _spatial_refuses),
    L.MaxPooling2D: (_float_pool("MaxPool"), _spatial_refuses),
    L.AveragePooling2D: (_float_pool("AveragePool", count_include_pad=0), _spatial_refuses),
    L.ZeroPadding2D: (_float_zero_pad, _spatial_refuses),
    L.Cropping2D: (_float_crop, _spatial_refuses),
    L.UpSampling2D: (_float_upsample, _float_upsample_refuses),
    L.GlobalAveragePooling1D: (_float_global_pool("ReduceMean", 3), _global_pool_1d_refuses),
    L.GlobalMaxPooling1D: (_float_global_pool("ReduceMax", 3), _refuses_rank(3)),
    L.MaxPooling1D: (_float_pool("MaxPool", 3), _refuses_rank(3)),
    L.AveragePooling1D: (_float_pool("AveragePool", 3, count_include_pad=0), _refuses_rank(3)),
}

# registered with the exporter when imported (by :mod:`.export`)
FLOAT_EMITTERS.update(SPATIAL_FLOAT_EMITTERS)
