"""Quantized dropout: QuantizedDropout (a pass-through)."""
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import register_twin


@register_keras
@register_twin(keras.layers.Dropout, pass_through=True, export="identity")
class QuantizedDropout(QuantConfigMixin, keras.layers.Dropout):
    """A dropout layer that operates on quantized inputs and weights.

    It is only implemented as a passthrough (in training too: dropping integer values would
    not change their grid, but quantized models are fine-tuned without dropout).

    Integer maths: ``y = x``, then the output quantizer if configured.

    Args:
        rate (float): the dropout rate of the float layer (unused).
        noise_shape (tuple, optional): as keras.layers.Dropout (unused). Defaults to None.
        seed (int, optional): as keras.layers.Dropout (unused). Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, rate, noise_shape=None, seed=None, quant_config=None, **kwargs):
        super().__init__(rate=rate, noise_shape=noise_shape, seed=seed, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs, training=None):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        return self._quantize_output(x)
