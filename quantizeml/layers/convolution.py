"""Convolutions: PaddedConv2D (float), QuantizedConv2D and QuantizedConv2DTranspose."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint
from .base import register_keras
from .reduction import QuantizedReduction, refuses_channels_first, to_single_frac_bits
from .registry import BLOCK_END, register_twin

__all__ = ["PaddedConv2D", "QuantizedConv2D", "QuantizedConv2DTranspose"]


# ---- padding helpers ---------------------------------------------------------------------------
def check_padding_value(layer_name, padding_value):
    """Normalizes a padding value to None, a float or a list of floats (JSON-native)."""
    if padding_value is None:
        return None
    try:
        value = np.asarray(tf.get_static_value(padding_value)
                           if isinstance(padding_value, (tf.Tensor, tf.Variable))
                           else padding_value, dtype=np.float64)
    except (TypeError, ValueError):
        value = None
    if value is None or value.ndim > 1 or value.size == 0 or not np.all(np.isfinite(value)):
        raise ValueError(f"Layer {layer_name}: padding_value expected a finite float or a list "
                         f"of finite floats. Received: padding_value={padding_value!r}")
    if value.ndim == 0 or value.size == 1:
        return float(value.reshape(()))
    return [float(v) for v in value]


def same_pad_amounts(size, kernel, stride, dilation):
    """(before, after) padding of a 'SAME' convolution along one axis, as TensorFlow does it.

    ``out = ceil(size / stride)``, ``total = max((out - 1) * stride + (kernel - 1) * dilation
    + 1 - size, 0)``, ``before = total // 2``.
    """
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = tf.maximum((out - 1) * stride + effective - size, 0)
    return tf.stack([total // 2, total - total // 2])


def pad_same(x, kernel_size, strides, dilation_rate, value):
    """Pads NHWC ``x`` for a 'SAME' convolution with ``value`` (scalar or per channel).

    The border is ``tf.pad`` zeros plus ``value`` times a border mask, exact for integer
    carriers.
    """
    shape = tf.shape(x)
    paddings = tf.stack([tf.zeros(2, tf.int32)]
                        + [same_pad_amounts(shape[i + 1], kernel_size[i], strides[i],
                                            dilation_rate[i]) for i in range(2)]
                        + [tf.zeros(2, tf.int32)])
    padded = tf.pad(x, paddings)
    border = 1 - tf.pad(tf.ones_like(x[..., :1]), paddings)
    return padded + border * tf.cast(value, x.dtype)


def deconv_length(size, kernel, padding, output_padding, stride, dilation):
    """Output length of a transposed convolution along one axis (as Keras computes it)."""
    kernel = kernel + (kernel - 1) * (dilation - 1)
    if output_padding is None:
        if padding == "valid":
            return size * stride + max(kernel - stride, 0)
        return size * stride
    pad = kernel // 2 if padding == "same" else 0
    return (size - 1) * stride + kernel - 2 * pad + output_padding


def transpose_output_shape(layer, inputs, channels):
    """The NHWC output shape of a transposed convolution: (dynamic tensor, static list)."""
    dyn = tf.shape(inputs)
    static = []
    dynamic = [dyn[0]]
    out_pad = layer.output_padding or (None, None)
    for i in range(2):
        size = inputs.shape[i + 1]
        args = (layer.kernel_size[i], layer.padding, out_pad[i], layer.strides[i],
                layer.dilation_rate[i])
        static.append(None if size is None else deconv_length(size, *args))
        dynamic.append(static[-1] if size is not None else deconv_length(dyn[i + 1], *args))
    return tf.stack(dynamic + [channels]), [inputs.shape[0], *static, channels]


# ---- float layer -------------------------------------------------------------------------------
@register_keras
class PaddedConv2D(keras.layers.Conv2D):
    """A convolutional layer that can use custom padding values.

    Note that when padding values are provided, padding 'SAME' will be applied with the provided
    value (overriding 'padding' parameter).

    Args: as ``keras.layers.Conv2D``, plus:
        padding_value (float, list, tensor, optional): the value or the list of values used
            when padding for the 'same' convolution type. Padding is per-tensor if one value is
            provided or per-channel otherwise. If None, zero-padding is used. Defaults to None.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, padding_value=None, **kwargs):
        padding_value = check_padding_value(kwargs.get("name", type(self).__name__),
                                            padding_value)
        if padding_value is not None:
            padding = "same"
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        if padding_value is not None and self.data_format != "channels_last":
            raise ValueError(f"Layer {self.name}: padding_value expected data_format "
                             f"'channels_last'. Received: data_format={self.data_format!r}")
        self.padding_value = padding_value

    def convolution_op(self, inputs, kernel):
        if self.padding_value is None:
            return super().convolution_op(inputs, kernel)
        padded = pad_same(inputs, self.kernel_size, self.strides, self.dilation_rate,
                          tf.constant(self.padding_value, inputs.dtype))
        return tf.nn.convolution(padded, kernel, strides=list(self.strides), padding="VALID",
                                 dilations=list(self.dilation_rate))

    def get_config(self):
        return {**super().get_config(), "padding_value": self.padding_value}


# ---- quantized layers --------------------------------------------------------------------------
@register_keras
@register_twin(keras.layers.Conv2D, PaddedConv2D, weights=("weight_quantizer",), output=BLOCK_END,
               export="conv", refuses=refuses_channels_first)
class QuantizedConv2D(QuantizedReduction, keras.layers.Conv2D):
    """A convolutional layer that operates on quantized inputs and weights.

    Integer maths: ``y = clip_buffer(conv(x_int, w_int) + b_int)`` with
    ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales`` (then the
    output quantizer, if any).

    Grouped convolutions (``groups = g > 1``, kernel ``(kh, kw, C / g, filters)``) sum each
    output over the ``kh * kw * C / g`` inputs of its group, exactly as ``groups = 1`` (the
    grouped ``tf.nn.convolution`` runs forward in the float32 and float64 carriers; its
    gradients, which CPU kernels only have in float32, are always computed in float32). Per-axis
    FixedPoint inputs are aligned on their largest fractional bits by shifting the inputs
    themselves (their channels are not axis -2 of a grouped kernel).

    Note that when padding values are provided, padding 'SAME' will be applied with the provided
    value (overriding 'padding' parameter). The padding value is quantized on the grid of the
    (aligned) inputs, ``round(padding_value / x.scales * 2^x.frac_bits)`` clipped to the input
    value bits, and padded explicitly before a 'VALID' convolution.

    Args: as ``keras.layers.Conv2D`` (activation must be None or 'linear', data_format
    'channels_last'), plus:
        quant_config (dict, optional): the serialized quantization configuration, with keys
            'weight_quantizer', 'bias_quantizer', 'output_quantizer', 'buffer_bitwidth'.
            Defaults to None.
        padding_value (float, list, tensor, optional): the value or the list of values used
            when padding for the 'same' convolution type. Padding is per-tensor if one value is
            provided or per-channel otherwise. If None, zero-padding is used. Defaults to None.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, quant_config=None,
                 padding_value=None, **kwargs):
        padding_value = check_padding_value(kwargs.get("name", type(self).__name__),
                                            padding_value)
        if padding_value is not None:
            padding = "same"
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self.padding_value = padding_value
        self.init_reduction(quant_config, activation, self.data_format)

    def call(self, inputs, training=None):
        x, x_scales = self.aligned_inputs(inputs)
        w = self.quantize_weights("weight_quantizer", self.kernel, training)
        padding = self.padding.upper()
        if self.groups > 1 or self.padding_value is not None:
            # grouped kernels: the input channels are not axis -2 of the kernel, where
            # accumulate() would apply the alignment shifts; a padding value lies on the
            # aligned grid
            x = to_single_frac_bits(x)
        if self.padding_value is not None:
            value = tf.constant(self.padding_value, tf.float32)
            if x_scales is not None:
                value = value / x_scales
            pad = FixedPoint.quantize(value, x.value_bits, x.frac_bits).values
            x = FixedPoint(pad_same(x.values, self.kernel_size, self.strides,
                                    self.dilation_rate, pad), x.value_bits, x.frac_bits)
            padding = "VALID"

        def conv(xv, wv):
            return tf.nn.convolution(xv, wv, strides=list(self.strides), padding=padding,
                                     dilations=list(self.dilation_rate))

        bias = self.bias if self.use_bias else None
        acc = self.reduce(conv, x, w, x_scales, bias, training)
        return self.finalize(acc)

    def get_config(self):
        return {**super().get_config(), "padding_value": self.padding_value}


@register_keras
@register_twin(keras.layers.Conv2DTranspose, weights=("weight_quantizer",), output=BLOCK_END,
               export="conv_transpose", refuses=refuses_channels_first)
class QuantizedConv2DTranspose(QuantizedReduction, keras.layers.Conv2DTranspose):
    """A transposed convolutional layer that operates on quantized inputs and weights.

    Integer maths: ``y = clip_buffer(conv2d_transpose(x_int, w_int) + b_int)`` with
    ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales``. The kernel
    (kh, kw, filters, in_channels) is quantized per output channel (its axis -2, i.e. the last
    axis of the transposed view (kh, kw, in_channels, filters) that the weight quantizer sees).

    Args: as ``keras.layers.Conv2DTranspose`` (activation None or 'linear'), plus:
        quant_config (dict, optional): the serialized quantization configuration, with keys
            'weight_quantizer', 'bias_quantizer', 'output_quantizer', 'buffer_bitwidth'.
            Defaults to None.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, quant_config=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         output_padding=output_padding, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self.init_reduction(quant_config, activation, self.data_format)

    def quantizer_kernel(self):
        """The kernel as the weight quantizer sees it: (kh, kw, in_channels, filters)."""
        return tf.transpose(self.kernel, (0, 1, 3, 2))

    def call(self, inputs, training=None):
        x, x_scales = self.aligned_inputs(inputs)
        w = self.quantize_weights("weight_quantizer", self.quantizer_kernel(), training)
        output_shape, static_shape = transpose_output_shape(self, x.values, self.filters)

        def conv_transpose(xv, wv):
            kernel = tf.transpose(wv, (0, 1, 3, 2))
            shape = tf.cast(output_shape, tf.int32)
            if tuple(self.dilation_rate) != (1, 1):
                # the CPU kernel of a dilated conv2d_transpose only runs eagerly: use the
                # atrous form (as Keras does; dilation requires strides 1)
                out = tf.nn.atrous_conv2d_transpose(xv, kernel, shape,
                                                    rate=self.dilation_rate[0],
                                                    padding=self.padding.upper())
            else:
                out = tf.nn.conv2d_transpose(xv, kernel, shape, strides=list(self.strides),
                                             padding=self.padding.upper())
            out.set_shape(static_shape)
            return out

        bias = self.bias if self.use_bias else None
        acc = self.reduce(conv_transpose, x, w, x_scales, bias, training)
        return self.finalize(acc)
