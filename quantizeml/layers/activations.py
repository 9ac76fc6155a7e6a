"""Quantized activations: QuantizedReLU."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import ACTIVATION, register_twin


def _refuses(layer):
    """A ReLU with a threshold or a negative slope has no QuantizedReLU."""
    config = layer.get_config()
    odd = {key: config.get(key) for key in ("negative_slope", "threshold") if config.get(key)}
    if odd:
        return (f"QuantizedReLU supports negative_slope=0 and threshold=0 only, got {odd} "
                "(quantize() turns such a ReLU into a LeakyReLU or a TableReLU, "
                "replace_leaky_relu)")
    return None


@register_keras
@register_twin(keras.layers.ReLU, output=ACTIVATION, export="relu", refuses=_refuses)
class QuantizedReLU(QuantConfigMixin, keras.layers.ReLU):
    """Quantized version of the ReLU activation layer applicable on FixedPoint tensor.

    A QFloat input is first converted to a FixedPoint (its scales quantized on the output
    quantizer's ``scale_bits``, 8 without one). ``max_value`` is quantized on the input grid
    by flooring, so the clipped output never exceeds it.

    Integer maths: ``y = min(max(x, 0), floor(max_value * 2^frac_bits))`` (same frac_bits),
    then the output quantizer if configured. Gradient: 1 where ``0 < y < max``, else 0.

    Args:
        max_value (float, optional): ReLU maximum value (None: no upper bound). Defaults to 6.
        negative_slope (float, optional): only 0 is supported. Defaults to 0.
        threshold (float, optional): only 0 is supported. Defaults to 0.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for a non-zero negative_slope or threshold.
    """

    def __init__(self, max_value=6, negative_slope=0.0, threshold=0.0, quant_config=None,
                 **kwargs):
        super().__init__(max_value=max_value, negative_slope=negative_slope,
                         threshold=threshold, **kwargs)
        for key, value in (("negative_slope", negative_slope), ("threshold", threshold)):
            if value != 0:
                raise ValueError(f"Layer {self.name} (QuantizedReLU) expected {key}=0 (the "
                                 f"only supported value). Received: {key}={value}")
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        check_qtensor(self, inputs, (FixedPoint, QFloat))
        if self.out_quantizer is not None and self.out_quantizer.fuses(inputs):
            # the ReLU fused with the requantization (same integers, fewer passes)
            return self.out_quantizer(inputs, relu=True, max_value=self.max_value)
        x = self._to_fixed_point(inputs)
        values = tf.maximum(x.values, tf.constant(0.0, x.values.dtype))
        if self.max_value is not None:
            dtype = values.dtype
            max_int = tf.floor(tf.constant(float(self.max_value), dtype)
                               * tf.pow(tf.constant(2.0, dtype), tf.cast(x.frac_bits, dtype)))
            values = tf.minimum(values, max_int)
        # max(x, 0) and min(x, max_int) stay within the value bits of x
        return self._quantize_output(FixedPoint(values, x.value_bits, x.frac_bits, clip=False))

    def get_config(self):
        config = super().get_config()
        for key in ("max_value", "negative_slope", "threshold"):
            if config.get(key) is not None:
                config[key] = float(np.asarray(config[key]))
        return config
