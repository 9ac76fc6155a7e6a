"""Quantized pooling: QuantizedMaxPool2D, QuantizedAveragePooling2D,
QuantizedGlobalAveragePooling2D, QuantizedGlobalMaxPooling2D."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, MAX_VALUE_BITS, QFloat, bits_for, carrier_dtype
from .base import check_qtensor, clip_to_buffer, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin


def _check_channels_last(layer, x):
    """Per-axis parameters follow the last axis: they need channels_last data."""
    if layer.data_format == "channels_first" and not x.per_tensor:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected per-tensor "
                         "inputs with data_format='channels_first' (per-axis parameters follow "
                         f"the last axis). Received: per-axis inputs of shape {x.shape}")


def _real_max(x, reduce):
    """``reduce`` (a max over some axes) of the integer values of ``x``, as the maximum of the
    real values: a QFloat channel of negative scale takes the minimum of its values (its
    values times the scales' signs, exact ±1, reduced, times the signs again). The result keeps
    the fractional bits and scales of ``x``."""
    fp = x.fp if isinstance(x, QFloat) else x
    if not isinstance(x, QFloat):
        return FixedPoint(reduce(fp.values), fp.value_bits, fp.frac_bits)
    signs = tf.cast(tf.where(x.scales < 0, -1.0, 1.0), fp.values.dtype)
    values = reduce(fp.values * signs) * signs
    return QFloat(FixedPoint(values, fp.value_bits, fp.frac_bits), x.scales)


@register_keras
@register_twin(keras.layers.MaxPooling2D, pass_through=True, export="max_pool")
class QuantizedMaxPool2D(QuantConfigMixin, keras.layers.MaxPooling2D):
    """A max pooling layer that operates on quantized inputs.

    The maximum is taken on the integer values of each channel, so per-axis inputs (one
    fractional bit or scale per channel) keep their parameters; a QFloat with negative scales
    takes the minimum of its values instead (the maximum of the real values).

    Integer maths: ``y = max_{window} x`` (same frac_bits and scales), then the output
    quantizer if configured.

    Args:
        pool_size (int or tuple, optional): the pooling window. Defaults to (2, 2).
        strides (int or tuple, optional): the pooling strides (None: pool_size).
            Defaults to None.
        padding (str, optional): 'valid' or 'same'. Defaults to 'valid'.
        data_format (str, optional): 'channels_last' or 'channels_first' (per-tensor inputs
            only). Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 quant_config=None, **kwargs):
        super().__init__(pool_size=pool_size, strides=strides, padding=padding,
                         data_format=data_format, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        _check_channels_last(self, x)
        return self._quantize_output(_real_max(x, super().call))


def pool_pads(size, pool, stride, padding):
    """(before, after) padding of a pooling window along one axis, as TensorFlow pads 'SAME'
    (the extra pad at the end); (0, 0) for 'valid'."""
    if padding == "valid":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + pool - size, 0)
    return total // 2, total - total // 2


def pool_counts(size, pool, stride, padding):
    """The number of valid (non-padded) elements of each window along one axis (numpy int64)."""
    before, after = pool_pads(size, pool, stride, padding)
    out = (size + before + after - pool) // stride + 1
    starts = np.arange(out, dtype=np.int64) * stride - before
    return np.minimum(starts + pool, size) - np.maximum(starts, 0)


def average_table(spatial, pool_size, strides, padding):
    """The exact integer form of Keras' divisors ``1 / count`` of an average pooling.

    ``count[i, j]`` is the number of valid elements of the window of output ``(i, j)`` (the
    pool size, smaller on the borders of a 'same' pooling). With ``L = lcm(counts)``,
    ``1 / count = (L / count) * (1 / L)`` where ``L / count`` is an integer: the window sums
    times the integer ``table = L / count`` carry the scale ``1 / L`` (a QFloat scale).

    Args:
        spatial (tuple of int): the static (height, width) of the inputs.
        pool_size (tuple of int): the pooling window.
        strides (tuple of int): the pooling strides.
        padding (str): 'valid' or 'same'.

    Returns:
        (np.ndarray, int): the int64 table (out_h, out_w), all ones unless the windows have
        different counts, and ``L``.
    """
    counts = np.outer(*[pool_counts(spatial[i], pool_size[i], strides[i], padding)
                        for i in range(2)])
    lcm = int(np.lcm.reduce(np.unique(counts)))
    return lcm // counts, lcm


def window_sums(values, pool_size, strides, padding):
    """The sum of each pooling window of NHWC ``values``, zero-padded as TensorFlow pads
    'SAME': the sum of the ``ph * pw`` strided slices (exact in an integer carrier)."""
    pads = [pool_pads(values.shape[1 + i], pool_size[i], strides[i], padding) for i in range(2)]
    if any(sum(p) for p in pads):
        values = tf.pad(values, [(0, 0), pads[0], pads[1], (0, 0)])
    size = [values.shape[1 + i] for i in range(2)]
    out = [(size[i] - pool_size[i]) // strides[i] + 1 for i in range(2)]
    total = None
    for i in range(pool_size[0]):
        for j in range(pool_size[1]):
            part = values[:, i:i + (out[0] - 1) * strides[0] + 1:strides[0],
                          j:j + (out[1] - 1) * strides[1] + 1:strides[1], :]
            total = part if total is None else total + part
    return total


@register_keras
@register_twin(keras.layers.AveragePooling2D, output=BLOCK_END, export="average_pool")
class QuantizedAveragePooling2D(QuantConfigMixin, keras.layers.AveragePooling2D):
    """An average pooling layer that operates on quantized inputs, exactly.

    The window sums are exact in the integer buffer. Keras divides each window by its number
    of valid (non-padded) elements ``count`` (the pool size, smaller on the borders of a 'same'
    pooling). With ``L = lcm`` of the counts that occur, ``1 / count = (L / count) / L``, where
    ``table = L / count`` is an integer per output position: the output is the QFloat
    ``sum * table`` with scales ``1 / L`` (times the input scales). It is exact up to the
    float32 rounding of the scale ``1 / L`` (relative ``2^-24``, as the ``1 / (H * W)`` of the
    global average pooling): no integer rounding. For 'valid' pooling, and 'same' pooling whose
    windows never touch the border, the table is all ones (not applied) and ``L = ph * pw``.
    The values grow to ``max|x| * L`` (``L = 36`` for a 3x3 'same' pooling, 4 for 2x2).

    Integer maths: ``y = clip_buffer(sum_{window} x * (L / count))`` (frac_bits unchanged),
    scales ``x.scales / L``; then the output quantizer if configured.

    Args:
        pool_size (int or tuple, optional): the pooling window. Defaults to (2, 2).
        strides (int or tuple, optional): the pooling strides (None: pool_size).
            Defaults to None.
        padding (str, optional): 'valid' or 'same'. Defaults to 'valid'.
        data_format (str, optional): 'channels_last' or 'channels_first' (per-tensor inputs
            only). Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: when the inputs are not 4D with static spatial dimensions.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 quant_config=None, **kwargs):
        super().__init__(pool_size=pool_size, strides=strides, padding=padding,
                         data_format=data_format, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        _check_channels_last(self, x)
        channels_first = self.data_format == "channels_first"
        axes = [2, 3] if channels_first else [1, 2]
        if x.shape.rank != 4 or any(x.shape[a] is None for a in axes):
            raise ValueError(f"Layer {self.name} (QuantizedAveragePooling2D) expected 4D "
                             "inputs with static spatial dimensions. "
                             f"Received: inputs of shape {x.shape}")
        fp = x.fp if isinstance(x, QFloat) else x
        table, lcm = average_table([x.shape[a] for a in axes], self.pool_size, self.strides,
                                   self.padding)
        value_bits = bits_for(2.0**fp.value_bits * lcm)
        dtype = carrier_dtype(min(value_bits, MAX_VALUE_BITS))
        values = tf.cast(fp.values, dtype)
        if channels_first:
            values = tf.transpose(values, (0, 2, 3, 1))
        total = window_sums(values, self.pool_size, self.strides, self.padding)
        if np.any(table != 1):
            total = total * tf.constant(table[None, :, :, None], dtype)
        if channels_first:
            total = tf.transpose(total, (0, 3, 1, 2))
        total = FixedPoint(total, min(value_bits, MAX_VALUE_BITS), fp.frac_bits,
                           clip=value_bits > MAX_VALUE_BITS)
        total = clip_to_buffer(self, total, self.buffer_bitwidth)
        scales = tf.constant(1.0 / lcm, tf.float32)
        if isinstance(x, QFloat):
            scales = x.scales * scales
        return self._quantize_output(QFloat(total, scales))


@register_keras
@register_twin(keras.layers.GlobalAveragePooling2D, output=BLOCK_END, export="global_average_pool")
class QuantizedGlobalAveragePooling2D(QuantConfigMixin, keras.layers.GlobalAveragePooling2D):
    """A global average pooling layer that operates on quantized inputs.

    The spatial sum is exact in the integer buffer; the division by the number of pixels is a
    QFloat scale, so the output is a QFloat (scales ``1 / (H * W)``, times the input scales for
    a QFloat input) unless an output quantizer is configured.

    Integer maths: ``y = sum_{h,w} x`` (frac_bits unchanged), clipped to the buffer, with
    scales ``1 / (H * W)``; then the output quantizer if configured.

    Args:
        data_format (str, optional): 'channels_last' or 'channels_first' (per-tensor inputs
            only). Defaults to None.
        keepdims (bool, optional): whether to keep the spatial dimensions. Defaults to False.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: when the spatial dimensions are not known statically.
    """

    def __init__(self, data_format=None, keepdims=False, quant_config=None, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        _check_channels_last(self, x)
        axes = [1, 2] if self.data_format == "channels_last" else [2, 3]
        if x.shape.rank != 4 or any(x.shape[a] is None for a in axes):
            raise ValueError(f"Layer {self.name} (QuantizedGlobalAveragePooling2D) expected "
                             "4D inputs with static spatial dimensions. "
                             f"Received: inputs of shape {x.shape}")
        fp = x.fp if isinstance(x, QFloat) else x
        total = tf.math.reduce_sum(fp, axis=axes, keepdims=self.keepdims)
        total = clip_to_buffer(self, total, self.buffer_bitwidth)
        scales = tf.constant(1.0 / (x.shape[axes[0]] * x.shape[axes[1]]), tf.float32)
        if isinstance(x, QFloat):
            scales = x.scales * scales
        return self._quantize_output(QFloat(total, scales))


@register_keras
@register_twin(keras.layers.GlobalMaxPooling2D, pass_through=True, export="global_max_pool")
class QuantizedGlobalMaxPooling2D(QuantConfigMixin, keras.layers.GlobalMaxPooling2D):
    """A global max pooling layer that operates on quantized inputs (the ``pooling="max"`` head
    of the ``keras.applications`` builders).

    As :class:`QuantizedMaxPool2D`, the maximum is taken on the integer values of each channel,
    so per-axis inputs keep their fractional bits or scales, and a QFloat channel with a
    negative scale takes the minimum of its values (the maximum of the real values).

    Integer maths: ``y = max_{h,w} x`` (same frac_bits and scales), then the output quantizer
    if configured.

    Args:
        data_format (str, optional): 'channels_last' or 'channels_first' (per-tensor inputs
            only). Defaults to None.
        keepdims (bool, optional): whether to keep the spatial dimensions. Defaults to False.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, data_format=None, keepdims=False, quant_config=None, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        _check_channels_last(self, x)
        if x.shape.rank != 4:
            raise ValueError(f"Layer {self.name} (QuantizedGlobalMaxPooling2D) expected 4D "
                             f"inputs. Received: inputs of shape {x.shape}")
        axes = [1, 2] if self.data_format == "channels_last" else [2, 3]
        return self._quantize_output(_real_max(
            x, lambda values: tf.reduce_max(values, axis=axes, keepdims=self.keepdims)))
