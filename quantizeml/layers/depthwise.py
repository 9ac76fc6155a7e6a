"""Depthwise convolutions: QuantizedDepthwiseConv2D, DepthwiseConv2DTranspose (float) and
QuantizedDepthwiseConv2DTranspose."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import is_per_tensor
from .base import register_keras
from .convolution import deconv_length, transpose_output_shape
from .reduction import (QuantizedReduction, check_channels_last, fold_scales,
                        refuses_channels_first)
from .registry import BLOCK_END, register_twin

__all__ = ["QuantizedDepthwiseConv2D", "DepthwiseConv2DTranspose",
           "QuantizedDepthwiseConv2DTranspose"]


def per_output_channel(t, channels, multiplier):
    """Per-input-channel frac_bits or scales repeated for the ``channels * multiplier`` outputs
    of a depthwise convolution (output ``c * multiplier + m`` reads input channel ``c``).
    None and per-tensor values are returned unchanged."""
    if t is None or is_per_tensor(t) or multiplier == 1:
        return t
    return tf.repeat(tf.reshape(t, (channels,)), multiplier)


def depthwise_operands(layer, inputs, kernel, fn, training):
    """The depthwise integer maths shared by the depthwise layers and the separable one.

    ``kernel`` (kh, kw, C, M) is quantized per output channel as (kh, kw, 1, C * M) (the
    weight quantizer's last axis is the output channel); per-axis inputs are accepted as they
    are (each channel is reduced alone). ``fn(x, w)`` runs the convolution on carriers with
    ``w`` of shape (kh, kw, C, M).

    Returns:
        tuple: ``(reduction, x, w)`` and the keyword arguments ``frac_bits``
        (``x.frac_bits + w.frac_bits``) and ``scales`` (``x.scales * w.scales``) per output
        channel, for :meth:`~quantizeml.layers.reduction.QuantizedReduction.accumulate` and
        :meth:`~quantizeml.layers.reduction.QuantizedReduction.reduce`.
    """
    x, x_scales = layer.aligned_inputs(inputs, per_tensor=False)
    kh, kw, channels, multiplier = kernel.shape
    w = layer.quantize_weights(layer.weight_keys[0],
                               tf.reshape(kernel, (kh, kw, 1, channels * multiplier)), training)
    wf = getattr(w, "fp", w)
    frac_bits = per_output_channel(x.frac_bits, channels, multiplier) + wf.frac_bits
    scales = fold_scales(per_output_channel(x_scales, channels, multiplier),
                         getattr(w, "scales", None))

    def depthwise(xv, wv):
        return fn(xv, tf.reshape(wv, (kh, kw, channels, multiplier)))

    return (depthwise, x, w), {"frac_bits": frac_bits, "scales": scales}


@register_keras
@register_twin(keras.layers.DepthwiseConv2D, weights=("weight_quantizer",), output=BLOCK_END,
               export="depthwise_conv", refuses=refuses_channels_first)
class QuantizedDepthwiseConv2D(QuantizedReduction, keras.layers.DepthwiseConv2D):
    """A depthwise convolutional layer that operates on quantized inputs and weights.

    Integer maths: ``y = clip_buffer(depthwise_conv(x_int, w_int) + b_int)`` with
    ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales`` per output
    channel (then the output quantizer, if any). Per-axis inputs are accepted as they are. The
    kernel (kh, kw, C, M) is quantized per output channel: the weight quantizer sees it as
    (kh, kw, 1, C * M), so its ``axis`` is -1 (per output channel) or None (per tensor).

    Args: as ``keras.layers.DepthwiseConv2D`` (activation None or 'linear'), plus:
        quant_config (dict, optional): the serialized quantization configuration, with keys
            'weight_quantizer', 'bias_quantizer', 'output_quantizer', 'buffer_bitwidth'.
            Defaults to None.
    """

    weight_variables = ("depthwise_kernel",)

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, quant_config=None, **kwargs):
        super().__init__(kernel_size, strides=strides, padding=padding,
                         depth_multiplier=depth_multiplier, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self.init_reduction(quant_config, activation, self.data_format)

    def call(self, inputs, training=None):
        def depthwise(xv, wv):
            return tf.nn.depthwise_conv2d(xv, wv, strides=(1, *self.strides, 1),
                                          padding=self.padding.upper(),
                                          dilations=self.dilation_rate)

        operands, grid = depthwise_operands(self, inputs, self.depthwise_kernel, depthwise,
                                            training)
        acc = self.reduce(*operands, bias=self.bias if self.use_bias else None,
                          training=training, **grid)
        return self.finalize(acc)


def _pair(value, name, layer_name, minimum=1):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"Layer {layer_name}: {name} expected an int >= {minimum} or a pair "
                         f"of them. Received: {name}={value!r}")
    return pair


@register_keras
class DepthwiseConv2DTranspose(keras.layers.Layer):
    """A transposed depthwise convolutional layer.

    It performs a transposed depthwise convolution on inputs: each channel ``c`` is
    transposed-convolved with its own kernel ``depthwise_kernel[:, :, c, 0]`` (the gradient of
    a DepthwiseConv2D with respect to its inputs), then the bias is added. The output size
    follows ``keras.layers.Conv2DTranspose``.

    Args:
        kernel_size (int or tuple): the kernel height and width.
        strides (int or tuple, optional): the strides (equal along both axes). Defaults to
            (1, 1).
        padding (str, optional): 'valid' or 'same'. Defaults to 'valid'.
        output_padding (int or tuple, optional): the extra output size along each axis (less
            than the stride). Defaults to None.
        data_format (str, optional): only 'channels_last'. Defaults to None.
        activation (str or callable, optional): the activation. Defaults to None.
        use_bias (bool, optional): whether to add a bias. Defaults to True.
        depthwise_initializer, bias_initializer, depthwise_regularizer, bias_regularizer,
        activity_regularizer, depthwise_constraint, bias_constraint: as in
            ``keras.layers.DepthwiseConv2D``.
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.kernel_size = _pair(kernel_size, "kernel_size", self.name)
        self.strides = _pair(strides, "strides", self.name)
        if self.strides[0] != self.strides[1]:
            raise ValueError(f"Layer {self.name}: strides expected equal along both axes. "
                             f"Received: strides={strides!r}")
        if padding not in ("valid", "same"):
            raise ValueError(f"Layer {self.name}: padding expected 'valid' or 'same'. "
                             f"Received: padding={padding!r}")
        self.padding = padding
        self.output_padding = None if output_padding is None else _pair(
            output_padding, "output_padding", self.name, minimum=0)
        if self.output_padding is not None and any(
                p >= s for p, s in zip(self.output_padding, self.strides)):
            raise ValueError(f"Layer {self.name}: output_padding expected lower than strides "
                             f"{self.strides}. Received: output_padding={output_padding!r}")
        check_channels_last(self.name, data_format)
        self.data_format = "channels_last"
        self.dilation_rate = (1, 1)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = keras.initializers.get(depthwise_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.depthwise_regularizer = keras.regularizers.get(depthwise_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.depthwise_constraint = keras.constraints.get(depthwise_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = tf.TensorShape(input_shape)[-1]
        if channels is None:
            raise ValueError(f"Layer {self.name}: the channel dimension of the inputs expected "
                             f"to be defined. Received: input_shape={input_shape}")
        self.depthwise_kernel = self.add_weight(
            name="depthwise_kernel", shape=(*self.kernel_size, channels, 1),
            initializer=self.depthwise_initializer, regularizer=self.depthwise_regularizer,
            constraint=self.depthwise_constraint)
        self.bias = self.add_weight(
            name="bias", shape=(channels,), initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint) if self.use_bias else None
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        super().build(input_shape)

    def transpose_op(self, inputs, kernel):
        """The transposed depthwise convolution of NHWC ``inputs`` with (kh, kw, C, 1)."""
        output_shape, static_shape = transpose_output_shape(self, inputs, kernel.shape[2])
        outputs = tf.nn.depthwise_conv2d_backprop_input(
            output_shape, kernel, inputs, strides=(1, *self.strides, 1),
            padding=self.padding.upper())
        outputs.set_shape(static_shape)
        return outputs

    def call(self, inputs):
        outputs = self.transpose_op(inputs, self.depthwise_kernel)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        out_pad = self.output_padding or (None, None)
        dims = [None if shape[i + 1] is None else deconv_length(
            shape[i + 1], self.kernel_size[i], self.padding, out_pad[i], self.strides[i], 1)
            for i in range(2)]
        return tf.TensorShape([shape[0], *dims, shape[-1]])

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "output_padding": self.output_padding, "data_format": self.data_format,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "depthwise_initializer": keras.initializers.serialize(
                    self.depthwise_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": keras.regularizers.serialize(
                    self.depthwise_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": keras.regularizers.serialize(
                    self.activity_regularizer),
                "depthwise_constraint": keras.constraints.serialize(
                    self.depthwise_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint)}


@register_keras
@register_twin(DepthwiseConv2DTranspose, weights=("weight_quantizer",), output=BLOCK_END,
               export="depthwise_conv_transpose", refuses=refuses_channels_first)
class QuantizedDepthwiseConv2DTranspose(QuantizedReduction, DepthwiseConv2DTranspose):
    """A transposed depthwise convolutional layer that operates on quantized inputs and weights.

    Integer maths: ``y = clip_buffer(depthwise_conv_transpose(x_int, w_int) + b_int)`` with
    ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales`` per channel
    (then the output quantizer, if any). Per-axis inputs are accepted as they are; the weight
    quantizer sees the kernel as (kh, kw, 1, C).

    Args: as :class:`DepthwiseConv2DTranspose` (activation None or 'linear'), plus:
        quant_config (dict, optional): the serialized quantization configuration, with keys
            'weight_quantizer', 'bias_quantizer', 'output_quantizer', 'buffer_bitwidth'.
            Defaults to None.
    """

    weight_variables = ("depthwise_kernel",)

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, quant_config=None, **kwargs):
        super().__init__(kernel_size, strides=strides, padding=padding,
                         output_padding=output_padding, data_format=data_format,
                         activation=activation, use_bias=use_bias,
                         depthwise_initializer=depthwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self.init_reduction(quant_config, activation, self.data_format)

    def call(self, inputs, training=None):
        operands, grid = depthwise_operands(self, inputs, self.depthwise_kernel,
                                            self.transpose_op, training)
        acc = self.reduce(*operands, bias=self.bias if self.use_bias else None,
                          training=training, **grid)
        return self.finalize(acc)
