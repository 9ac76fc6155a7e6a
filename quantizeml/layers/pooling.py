"""Quantized pooling: QuantizedMaxPool2D, QuantizedGlobalAveragePooling2D."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import check_qtensor, clip_to_buffer, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin


def _check_channels_last(layer, x):
    """Per-axis parameters follow the last axis: they need channels_last data."""
    if layer.data_format == "channels_first" and not x.per_tensor:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected per-tensor "
                         "inputs with data_format='channels_first' (per-axis parameters follow "
                         f"the last axis). Received: per-axis inputs of shape {x.shape}")


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
        fp = x.fp if isinstance(x, QFloat) else x
        if isinstance(x, QFloat):
            signs = tf.where(x.scales < 0, -1.0, 1.0)
            signs = tf.cast(signs, fp.values.dtype)
            values = super().call(fp.values * signs) * signs
        else:
            values = super().call(fp.values)
        output = FixedPoint(values, fp.value_bits, fp.frac_bits)
        if isinstance(x, QFloat):
            output = QFloat(output, x.scales)
        return self._quantize_output(output)


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
