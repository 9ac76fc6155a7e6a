"""QuantizedDense: a Dense layer on quantized inputs and weights."""
import tensorflow as tf
import tf_keras as keras

from .base import register_keras, register_quantize_target
from .reduction import QuantizedReduction

__all__ = ["QuantizedDense"]


@register_keras
@register_quantize_target(keras.layers.Dense)
class QuantizedDense(QuantizedReduction, keras.layers.Dense):
    """A Dense layer that operates on quantized inputs and weights.

    Integer maths: ``y = clip_buffer(x_int @ w_int + b_int)`` with
    ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales`` (then the
    output quantizer, if any). Inputs have rank 2 (batch, features) or 3 (batch, tokens,
    features).

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

    def _check_rank(self, rank):
        if rank not in (2, 3):
            raise ValueError(f"Layer {self.name} (QuantizedDense) expected inputs of rank 2 or 3."
                             f" Received: inputs of rank {rank}")

    def build(self, input_shape):
        self._check_rank(tf.TensorShape(input_shape).rank)
        super().build(input_shape)

    def call(self, inputs, training=None):
        self._check_rank(inputs.shape.rank)
        x, x_scales = self.aligned_inputs(inputs)
        w = self.quantize_weights("weight_quantizer", self.kernel, training)
        bias = self.bias if self.use_bias else None
        acc = self.reduce(tf.linalg.matmul, x, w, x_scales, bias, training)
        return self.finalize(acc)
