"""Quantized spatial shape operations: QuantizedZeroPadding2D, QuantizedCropping2D,
QuantizedUpSampling2D.

They only move integer values (and write zeros), on channels_last data: the channel axis, which
carries per-axis fractional bits and scales, is untouched, so FixedPoint and QFloat inputs,
per-tensor or per-axis, keep their parameters and the result is exact. A zero is exact on every
symmetric grid (``0 * 2^-f * s == 0``), so padding needs no alignment.

``quantize()`` looks through them (``pass_through=True``). ``unsupported_reason(layer)`` tells
why a float layer of this family has no exact twin (channels_first data, a non-nearest
upsampling): it is the twins' registry ``refuses``, so quantize() reports such a layer as
unsupported up front, with the reason, and the twins refuse those configurations when built.
"""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import register_twin

__all__ = ["QuantizedCropping2D", "QuantizedUpSampling2D", "QuantizedZeroPadding2D",
           "unsupported_reason"]


def unsupported_reason(layer):
    """Why a ZeroPadding2D, Cropping2D or UpSampling2D (float or quantized) has no exact twin.

    Args:
        layer (keras.layers.Layer): a layer of this family.

    Returns:
        str or None: the reason (``"data_format='channels_first'"``,
        ``"interpolation='bilinear'"``), or None when the twin supports the layer.
    """
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"data_format={layer.data_format!r}"
    interpolation = getattr(layer, "interpolation", "nearest")
    if interpolation != "nearest":
        return f"interpolation={interpolation!r}"
    return None


def _check_supported(layer):
    reason = unsupported_reason(layer)
    if reason is None:
        return
    expected = ("interpolation='nearest' (the only integer-exact upsampling)"
                if reason.startswith("interpolation") else
                "data_format='channels_last' (per-axis parameters follow the last axis)")
    raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected {expected}. "
                     f"Received: {reason}")


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
@register_twin(keras.layers.UpSampling2D, pass_through=True,
               export="upsample_nearest", refuses=unsupported_reason)
class QuantizedUpSampling2D(QuantConfigMixin, keras.layers.UpSampling2D):
    """A nearest-neighbour UpSampling2D layer that operates on quantized inputs
    (channels_last).

    Integer maths: ``y[n, i, j, c] = x[n, i // sh, j // sw, c]`` (same frac_bits and scales),
    then the output quantizer if configured.

    Args:
        size (int or tuple, optional): the upsampling factors ``(sh, sw)``. Defaults to (2, 2).
        data_format (str, optional): 'channels_last' only (None: the Keras image data format).
            Defaults to None.
        interpolation (str, optional): 'nearest' only (the other interpolations are not
            integer-exact). Defaults to 'nearest'.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for channels_first data or an interpolation other than 'nearest'.
    """

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest",
                 quant_config=None, **kwargs):
        super().__init__(size=size, data_format=data_format, interpolation=interpolation,
                         **kwargs)
        _check_supported(self)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        rows, cols = self.size
        return _map_values(self, inputs, lambda v: tf.repeat(tf.repeat(v, rows, axis=1),
                                                             cols, axis=2))
