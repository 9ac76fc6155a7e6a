"""QuantizedSeparableConv2D: a depthwise then a pointwise convolution, exact in integers."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import is_per_tensor
from .base import clip_to_buffer, register_keras
from .depthwise import depthwise_operands
from .reduction import (QuantizedReduction, refuses_channels_first, split_qtensor,
                        to_single_frac_bits)
from .registry import BLOCK_END, register_twin

__all__ = ["QuantizedSeparableConv2D"]


@register_keras
@register_twin(keras.layers.SeparableConv2D, weights=("dw_weight_quantizer", "pw_weight_quantizer"),
               output=BLOCK_END, export="separable_conv", refuses=refuses_channels_first)
class QuantizedSeparableConv2D(QuantizedReduction, keras.layers.SeparableConv2D):
    """A separable convolutional layer that operates on quantized inputs and weights.

    Integer maths: ``d = clip_buffer(depthwise_conv(x_int, dw_int))``,
    ``y = clip_buffer(conv1x1(d, pw_int) + b_int)`` with
    ``frac_bits = x.frac_bits + dw.frac_bits + pw.frac_bits`` (then the output quantizer).

    The depthwise accumulator is kept exact (no intermediate rounding, no calibration needed):
    it is aligned on one fractional bit (an exact left shift), and its per-channel scales
    ``s_c = x.scales * dw.scales_c`` are folded into the pointwise kernel before it is
    quantized: ``pw_weight_quantizer(pointwise_kernel * s_c / max(s))``, the common factor
    ``max(s)`` becoming the (per-tensor) input scale of the pointwise stage (see
    :meth:`folded_pointwise_kernel`). Per-axis inputs are accepted (the depthwise stage reduces
    each channel alone).

    Args: as ``keras.layers.SeparableConv2D`` (activation None or 'linear'), plus:
        quant_config (dict, optional): the serialized quantization configuration, with keys
            'dw_weight_quantizer' (depthwise kernel, seen as (kh, kw, 1, C * M)),
            'pw_weight_quantizer' (folded pointwise kernel), 'bias_quantizer',
            'output_quantizer', 'buffer_bitwidth'. Defaults to None.
    """

    weight_keys = ("dw_weight_quantizer", "pw_weight_quantizer")
    weight_variables = ("depthwise_kernel", "pointwise_kernel")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, pointwise_constraint=None, bias_constraint=None,
                 quant_config=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         pointwise_initializer=pointwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         pointwise_regularizer=pointwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         pointwise_constraint=pointwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self.init_reduction(quant_config, activation, self.data_format)

    def folded_pointwise_kernel(self, depthwise_scales):
        """The pointwise kernel with the depthwise scales folded in.

        Args:
            depthwise_scales (tf.Tensor): the scales of the depthwise accumulator (None, a
                scalar, or one per depthwise output channel).

        Returns:
            tuple(tf.Tensor, tf.Tensor): the kernel to quantize,
            ``pointwise_kernel * s_c / max(s)`` (unchanged for None or per-tensor scales),
            and the per-tensor scale left to the pointwise stage (``max(s)``, the scalar, or
            None).
        """
        if depthwise_scales is None or is_per_tensor(depthwise_scales):
            return self.pointwise_kernel, depthwise_scales
        common = tf.reduce_max(depthwise_scales)
        ratios = tf.reshape(depthwise_scales / common, (1, 1, -1, 1))
        return self.pointwise_kernel * ratios, common

    def call(self, inputs, training=None):
        def depthwise(xv, wv):
            return tf.nn.depthwise_conv2d(xv, wv, strides=(1, *self.strides, 1),
                                          padding=self.padding.upper(),
                                          dilations=self.dilation_rate)

        operands, grid = depthwise_operands(self, inputs, self.depthwise_kernel, depthwise,
                                            training)
        d = self.accumulate(*operands, **grid)
        d, d_scales = split_qtensor(d)
        d = to_single_frac_bits(clip_to_buffer(self, d, self.buffer_bitwidth))
        kernel, d_scales = self.folded_pointwise_kernel(d_scales)
        pw = self.quantize_weights("pw_weight_quantizer", kernel, training)

        def pointwise(xv, wv):
            return tf.nn.conv2d(xv, wv, strides=1, padding="VALID")

        bias = self.bias if self.use_bias else None
        acc = self.reduce(pointwise, d, pw, d_scales, bias, training)
        return self.finalize(acc)
