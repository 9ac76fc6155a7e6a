"""QuantizedDense: a Dense layer on quantized inputs and weights."""
import tensorflow as tf
import tf_keras as keras

from ..recipes.matmul import last_axis_matmul
from .base import register_keras
from .reduction import QuantizedReduction
from .registry import BLOCK_END, register_twin

__all__ = ["QuantizedDense"]


@register_keras
@register_twin(keras.layers.Dense, weights=("weight_quantizer",), output=BLOCK_END, export="dense")
class QuantizedDense(QuantizedReduction, keras.layers.Dense):
    """A Dense layer that operates on quantized inputs and weights.

    Integer maths: ``y = clip_buffer(x_int @ w_int + b_int)`` with
    ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales`` (then the
    output quantizer, if any). As ``keras.layers.Dense``, inputs have any rank >= 2
    (batch, ..., features): the product acts on the last axis, the leading axes are batch axes
    (a 2-D product on the inputs reshaped to ``(-1, features)``, :func:`last_axis_matmul`).

    Args: as ``keras.layers.Dense`` (activation must be None or 'linear'), plus:
        quant_config (dict, optional): the serialized quantization configuration, with keys
            'weight_quantizer', 'bias_quantizer', 'output_quantizer', 'buffer_bitwidth'.
            Defaults to None.
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, quant_config=None, **kwargs):
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self.init_reduction(quant_config, activation)

    def call(self, inputs, training=None):
        x, x_scales = self.aligned_inputs(inputs)
        w = self.quantize_weights("weight_quantizer", self.kernel, training)
        bias = self.bias if self.use_bias else None
        acc = self.reduce(last_axis_matmul, x, w, x_scales, bias, training)
        return self.finalize(acc)
