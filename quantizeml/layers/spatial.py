"""Quantized spatial shape operations: QuantizedZeroPadding2D, QuantizedCropping2D,
QuantizedUpSampling2D, QuantizedResizing.

They only move integer values (and write zeros), on channels_last data: the channel axis, which
carries per-axis fractional bits and scales, is untouched, so FixedPoint and QFloat inputs,
per-tensor or per-axis, keep their parameters and the result is exact. A zero is exact on every
symmetric grid (``0 * 2^-f * s == 0``), so padding needs no alignment.

``quantize()`` looks through them (``pass_through=True``). ``unsupported_reason(layer)`` tells
why a float layer of this family has no exact twin (channels_first data, an upsampling other
than nearest or bilinear by powers of two): it is the twins' registry ``refuses``, so
quantize() reports such a layer as unsupported up front, with the reason, and the twins refuse
those configurations when built.

A bilinear upsampling by powers of two is exact too, but it computes: its output is a weighted
sum of two neighbours per axis with weights in multiples of ``1 / (2 s)`` (TensorFlow's
half-pixel bilinear resize), i.e. integers with ``log2(2 s)`` more value and fractional bits
per upsampled axis; it ends a block (an OutputQuantizer after it) instead of passing through.
A Resizing to any size (``tf.image.resize``, half-pixel centers) gathers the same way: nearest
moves values only (it passes through); bilinear weighs two neighbours per axis with integer
weights on ``bits`` fractional bits (:func:`resize_axis`: exact where TensorFlow's weights are
binary fractions of at most ``RESIZE_WEIGHT_BITS`` bits, e.g. upsampling by powers of two,
rounded to ``RESIZE_WEIGHT_BITS`` bits otherwise).
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, carrier_dtype
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin

__all__ = ["QuantizedCropping2D", "QuantizedResizing", "QuantizedUpSampling2D",
           "QuantizedZeroPadding2D", "RESIZE_WEIGHT_BITS", "resize_axis", "unsupported_reason"]


def unsupported_reason(layer):
    """Why a ZeroPadding2D, Cropping2D, UpSampling2D or Resizing (float or quantized) has no
    exact twin.

    Args:
        layer (keras.layers.Layer): a layer of this family.

    Returns:
        str or None: the reason (``"data_format='channels_first'"``,
        ``"interpolation='bilinear'"``), or None when the twin supports the layer.
    """
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"data_format={layer.data_format!r}"
    if isinstance(layer, keras.layers.Resizing):
        if layer.interpolation not in ("nearest", "bilinear"):
            return f"interpolation={layer.interpolation!r}"
        if layer.crop_to_aspect_ratio:
            return "crop_to_aspect_ratio=True"
        return None
    interpolation = getattr(layer, "interpolation", "nearest")
    if interpolation == "bilinear":
        size = tuple(int(s) for s in layer.size)
        if not all(s >= 1 and s & (s - 1) == 0 for s in size):
            return f"interpolation='bilinear' with size={size} (powers of two only)"
    elif interpolation != "nearest":
        return f"interpolation={interpolation!r}"
    return None


def _is_bilinear(layer):
    return getattr(layer, "interpolation", "nearest") == "bilinear"


def _check_supported(layer):
    reason = unsupported_reason(layer)
    if reason is None:
        return
    if isinstance(layer, keras.layers.Resizing):
        expected = ("interpolation 'nearest' or 'bilinear' without crop_to_aspect_ratio (the "
                    "resizes with integer weights)")
    elif reason.startswith("interpolation"):
        expected = ("interpolation='nearest', or 'bilinear' with sizes that are powers of two "
                    "(the integer-exact upsamplings)")
    else:
        expected = "data_format='channels_last' (per-axis parameters follow the last axis)"
    raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected {expected}. "
                     f"Received: {reason}")


def bilinear_axis(n, s):
    """TensorFlow's half-pixel bilinear resize of an axis of ``n`` values by ``s`` (a power
    of two), as integers: ``out[o] = (w_lo[o] * x[lo[o]] + w_hi[o] * x[hi[o]]) / (2 s)``.

    The source coordinate of ``o`` is ``(o + 0.5) / s - 0.5``: its fraction is a multiple of
    ``1 / (2 s)`` (exact), its neighbours are clamped to the axis (edges repeat).

    Returns:
        tuple: the int64 numpy arrays ``lo``, ``hi``, ``w_lo``, ``w_hi`` of length ``n * s``
        (``w_lo + w_hi == 2 s``).
    """
    twice = 2 * np.arange(n * s, dtype=np.int64) + 1 - s  # 2 s * coordinate
    lo = np.floor_divide(twice, 2 * s)
    w_hi = twice - lo * 2 * s
    return (np.clip(lo, 0, n - 1), np.minimum(lo + 1, n - 1), 2 * s - w_hi, w_hi)


#: Fractional bits of the bilinear weights of a resize whose weights are not binary fractions
#: of at most this many bits (e.g. 32 -> 20 pixels).
RESIZE_WEIGHT_BITS = 10


def resize_axis(n, out, interpolation):
    """TensorFlow's half-pixel resize of an axis of ``n`` values to ``out`` values
    (``tf.image.resize``, no antialias), as integers:
    ``y[o] = (w_lo[o] * x[lo[o]] + w_hi[o] * x[hi[o]]) / 2^bits``.

    The coordinates are computed as TensorFlow's kernels compute them, in float32 (so the
    neighbours are the same): nearest reads ``x[min(floor((o + 0.5) * n / out), n - 1)]``
    (``bits`` 0); bilinear reads the clamped neighbours of ``c = (o + 0.5) * n / out - 0.5``
    with the weight ``lerp = c - floor(c)`` on the upper one. The weights are exact when every
    ``lerp`` is a multiple of ``2^-bits`` for some ``bits <= RESIZE_WEIGHT_BITS`` (the smallest
    such is used: upsampling by a power of two ``s`` gives ``log2(2 s)``, as
    :func:`bilinear_axis`); otherwise ``w_hi = floor(lerp * 2^10 + 1/2)``, so the result
    differs from the float resize by at most ``2^-11`` of the two neighbours' difference.

    Args:
        n (int): the input size of the axis.
        out (int): the output size of the axis.
        interpolation (str): 'nearest' or 'bilinear'.

    Returns:
        tuple: the int64 numpy arrays ``lo``, ``hi``, ``w_lo``, ``w_hi`` of length ``out``
        (``w_lo + w_hi == 2^bits``) and ``bits`` (int).
    """
    o = np.arange(out, dtype=np.float32)
    scale = np.float32(n) / np.float32(out)
    if interpolation == "nearest":
        index = np.clip(np.floor((o + np.float32(0.5)) * scale).astype(np.int64), 0, n - 1)
        return index, index, np.ones(out, np.int64), np.zeros(out, np.int64), 0
    coord = (o + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(coord)
    lerp = (coord - floor).astype(np.float64)
    lo = np.clip(floor.astype(np.int64), 0, n - 1)
    hi = np.clip(np.ceil(coord).astype(np.int64), 0, n - 1)
    bits = next((b for b in range(RESIZE_WEIGHT_BITS + 1)
                 if np.all(lerp * 2.0**b == np.floor(lerp * 2.0**b))), RESIZE_WEIGHT_BITS)
    w_hi = np.floor(lerp * 2.0**bits + 0.5).astype(np.int64)
    return lo, hi, 2**bits - w_hi, w_hi, bits


def _map_values(layer, inputs, fn):
    """Applies a spatial function to the integer values; frac_bits and scales unchanged."""
    x = check_qtensor(layer, inputs, (FixedPoint, QFloat))
    if x.shape.rank != 4:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected 4D inputs. "
                         f"Received: inputs of shape {x.shape}")
    fp = x.fp if isinstance(x, QFloat) else x
    output = FixedPoint(fn(fp.values), fp.value_bits, fp.frac_bits)
    if isinstance(x, QFloat):
        output = QFloat(output, x.scales)
    return layer._quantize_output(output)


@register_keras
@register_twin(keras.layers.ZeroPadding2D, pass_through=True, export="zero_pad",
               refuses=unsupported_reason)
class QuantizedZeroPadding2D(QuantConfigMixin, keras.layers.ZeroPadding2D):
    """A ZeroPadding2D layer that operates on quantized inputs (channels_last).

    Integer maths: ``y[n, t + i, l + j, c] = x[n, i, j, c]``, 0 elsewhere (same frac_bits and
    scales: zero is exact on every grid), then the output quantizer if configured.

    Args:
        padding (int or tuple, optional): as keras.layers.ZeroPadding2D: an int, a pair
            ``(rows, cols)`` or ``((top, bottom), (left, right))``. Defaults to (1, 1).
        data_format (str, optional): 'channels_last' only (None: the Keras image data format).
            Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for channels_first data.
    """

    def __init__(self, padding=(1, 1), data_format=None, quant_config=None, **kwargs):
        super().__init__(padding=padding, data_format=data_format, **kwargs)
        _check_supported(self)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        (top, bottom), (left, right) = self.padding
        return _map_values(self, inputs, lambda v: tf.pad(
            v, [[0, 0], [top, bottom], [left, right], [0, 0]]))


@register_keras
@register_twin(keras.layers.Cropping2D, pass_through=True, export="crop",
               refuses=unsupported_reason)
class QuantizedCropping2D(QuantConfigMixin, keras.layers.Cropping2D):
    """A Cropping2D layer that operates on quantized inputs (channels_last).

    Integer maths: ``y = x[:, t:H - b, l:W - r, :]`` (same frac_bits and scales), then the
    output quantizer if configured.

    Args:
        cropping (int or tuple, optional): as keras.layers.Cropping2D: an int, a pair
            ``(rows, cols)`` or ``((top, bottom), (left, right))``.
            Defaults to ((0, 0), (0, 0)).
        data_format (str, optional): 'channels_last' only (None: the Keras image data format).
            Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for channels_first data, or a cropping not smaller than the input.
    """

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, quant_config=None,
                 **kwargs):
        super().__init__(cropping=cropping, data_format=data_format, **kwargs)
        _check_supported(self)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        # keras.layers.Cropping2D.call slices (and checks the cropping against the shape)
        return _map_values(self, inputs, super().call)


@register_keras
@register_twin(keras.layers.UpSampling2D,
               pass_through=lambda layer: not _is_bilinear(layer),
               output=lambda layer: BLOCK_END if _is_bilinear(layer) else None,
               export="upsample", refuses=unsupported_reason)
class QuantizedUpSampling2D(QuantConfigMixin, keras.layers.UpSampling2D):
    """An UpSampling2D layer (nearest, or bilinear by powers of two) that operates on
    quantized inputs (channels_last).

    Integer maths, nearest: ``y[n, i, j, c] = x[n, i // sh, j // sw, c]`` (same frac_bits and
    scales). Bilinear (TensorFlow's half-pixel resize, sizes powers of two): per upsampled
    axis, ``y[o] = w_lo[o] * x[lo[o]] + w_hi[o] * x[hi[o]]`` with the integer weights of
    :func:`bilinear_axis` (``w_lo + w_hi = 2 s``), and ``log2(2 s)`` more value and fractional
    bits (same scales): ``y * 2^-f'`` is the float resize of ``x * 2^-f`` exactly. Then the
    output quantizer if configured (quantize() gives a bilinear one).

    Args:
        size (int or tuple, optional): the upsampling factors ``(sh, sw)``. Defaults to (2, 2).
        data_format (str, optional): 'channels_last' only (None: the Keras image data format).
            Defaults to None.
        interpolation (str, optional): 'nearest', or 'bilinear' with sizes that are powers of
            two (the other interpolations are not integer-exact). Defaults to 'nearest'.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for channels_first data or another interpolation.
    """

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest",
                 quant_config=None, **kwargs):
        super().__init__(size=size, data_format=data_format, interpolation=interpolation,
                         **kwargs)
        _check_supported(self)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        rows, cols = self.size
        if _is_bilinear(self):
            return self._bilinear(inputs)
        return _map_values(self, inputs, lambda v: tf.repeat(tf.repeat(v, rows, axis=1),
                                                             cols, axis=2))

    def _bilinear(self, inputs):
        x = _static_image(self, inputs)
        axes = []
        for axis, s in ((1, int(self.size[0])), (2, int(self.size[1]))):
            if s > 1:
                lo, hi, w_lo, w_hi = bilinear_axis(int(x.shape[axis]), s)
                axes.append((axis, lo, hi, w_lo, w_hi, int(np.log2(2 * s))))
        return _interpolate(self, x, axes)


def _is_nearest(layer):
    return layer.interpolation == "nearest"


@register_keras
@register_twin(keras.layers.Resizing, pass_through=_is_nearest,
               output=lambda layer: None if _is_nearest(layer) else BLOCK_END,
               export="resize", refuses=unsupported_reason)
class QuantizedResizing(QuantConfigMixin, keras.layers.Resizing):
    """A Resizing layer (nearest or bilinear, any size; ``tf.image.resize`` with half-pixel
    centers) that operates on quantized inputs of static height and width.

    Integer maths, per resized axis, with the integer weights of :func:`resize_axis`:
    ``y[o] = w_lo[o] * x[lo[o]] + w_hi[o] * x[hi[o]]`` on ``bits`` more value and fractional
    bits (same scales). Nearest only moves values (``bits`` 0: frac_bits and scales unchanged,
    quantize() passes through it); bilinear is the float resize of ``x * 2^-f`` exactly where
    TensorFlow's weights are binary fractions (upsampling by powers of two, halving...), within
    ``2^-11`` of the neighbours' difference otherwise; then the output quantizer if configured
    (quantize() gives a bilinear one).

    Args:
        height (int): the output height.
        width (int): the output width.
        interpolation (str, optional): 'nearest' or 'bilinear'. Defaults to 'bilinear'.
        crop_to_aspect_ratio (bool, optional): False only. Defaults to False.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for another interpolation or a crop to the aspect ratio.
    """

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False,
                 quant_config=None, **kwargs):
        super().__init__(height, width, interpolation=interpolation,
                         crop_to_aspect_ratio=crop_to_aspect_ratio, **kwargs)
        _check_supported(self)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = _static_image(self, inputs)
        axes = [(axis, *resize_axis(int(x.shape[axis]), int(out), self.interpolation))
                for axis, out in ((1, self.height), (2, self.width))]
        return _interpolate(self, x, axes)


def _static_image(layer, inputs):
    """The QTensor inputs of a resize, checked 4D of static height and width."""
    x = check_qtensor(layer, inputs, (FixedPoint, QFloat))
    if x.shape.rank != 4 or None in x.shape[1:3]:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected 4D inputs of "
                         f"static height and width. Received: inputs of shape {x.shape}")
    return x


def _interpolate(layer, x, axes):
    """The weighted gathers of a resize: per ``(axis, lo, hi, w_lo, w_hi, bits)`` of
    ``axes``, ``y = w_lo * x[lo] + w_hi * x[hi]`` on ``bits`` more value and fractional bits
    (a plain gather of ``lo`` when ``bits`` is 0), scales unchanged; then the layer's output
    quantizer."""
    fp = x.fp if isinstance(x, QFloat) else x
    extra = sum(axis[-1] for axis in axes)
    value_bits = fp.value_bits + extra
    values = fp.values if extra == 0 else tf.cast(fp.values, carrier_dtype(value_bits))
    for axis, lo, hi, w_lo, w_hi, bits in axes:
        if bits == 0:
            values = tf.gather(values, lo, axis=axis)
            continue
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        values = (tf.gather(values, lo, axis=axis)
                  * tf.reshape(tf.constant(w_lo, values.dtype), shape)
                  + tf.gather(values, hi, axis=axis)
                  * tf.reshape(tf.constant(w_hi, values.dtype), shape))
    output = FixedPoint(values, value_bits, fp.frac_bits + extra, clip=False)
    if isinstance(x, QFloat):
        output = QFloat(output, x.scales)
    return layer._quantize_output(output)
