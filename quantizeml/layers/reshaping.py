"""Quantized reshaping: QuantizedFlatten, QuantizedReshape, QuantizedPermute.

They move integer values only (exact). Per-axis fractional bits and scales follow the last
axis: a reshaping that changes the last axis of a per-axis input raises a ValueError.
"""
import functools
import operator

import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import register_twin


def _check_last_axis(layer, x, output_last_dim):
    """Raises a ValueError naming the layer when a per-axis input loses its last axis."""
    if not x.per_tensor and (output_last_dim is None or output_last_dim != x.shape[-1]):
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected a per-tensor "
                         "input, or a reshaping that keeps the last (quantization) axis. "
                         f"Received: a per-axis input of shape {x.shape}, output last "
                         f"dimension {output_last_dim}")


def _reshape(layer, x, dims):
    """Reshapes a QTensor to ``[batch] + dims`` (static ``dims`` without -1, or None)."""
    if dims is not None and all(d is not None for d in dims):
        _check_last_axis(layer, x, dims[-1] if dims else None)
        return tf.reshape(x, [-1] + [int(d) for d in dims])
    return None


@register_keras
@register_twin(keras.layers.Flatten, pass_through=True, per_tensor_inputs=True, export="flatten")
class QuantizedFlatten(QuantConfigMixin, keras.layers.Flatten):
    """A Flatten layer that operates on quantized inputs.

    Integer maths: ``y = reshape(x, [batch, -1])`` (exact), then the output quantizer if
    configured.

    Args:
        data_format (str, optional): as keras.layers.Flatten. Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, data_format=None, quant_config=None, **kwargs):
        super().__init__(data_format=data_format, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        rank = x.shape.rank
        if self._channels_first and rank and rank > 2:
            _check_last_axis(self, x, None)
            x = tf.transpose(x, [0] + list(range(2, rank)) + [1])
        if rank == 1:
            _check_last_axis(self, x, 1)
            return self._quantize_output(tf.reshape(x, [-1, 1]))
        non_batch = x.shape[1:]
        if non_batch.is_fully_defined():
            dims = [functools.reduce(operator.mul, non_batch, 1)]
            output = _reshape(self, x, dims)
        else:
            _check_last_axis(self, x, None)
            output = tf.reshape(x, tf.stack([tf.shape(x.values)[0], -1]))
        return self._quantize_output(output)


def _changes_last_axis(layer):
    """Whether a float Reshape may move values across its input's last axis: unless its
    input and output last dimensions are known and equal (row-major order then keeps each
    value's channel), its quantized inputs must be per-tensor."""
    try:
        before, after = layer.input_shape[-1], layer.output_shape[-1]
    except (AttributeError, RuntimeError, TypeError, IndexError):  # not called, or shared
        return True
    return before is None or before != after


@register_keras
@register_twin(keras.layers.Reshape, pass_through=True, per_tensor_inputs=_changes_last_axis,
               export="reshape")
class QuantizedReshape(QuantConfigMixin, keras.layers.Reshape):
    """A Reshape layer that operates on quantized inputs.

    Integer maths: ``y = reshape(x, [batch] + target_shape)`` (exact), then the output
    quantizer if configured.

    Args:
        target_shape (tuple of ints): Target shape, does not include the samples dimension
            (batch size).
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, target_shape, quant_config=None, **kwargs):
        super().__init__(target_shape=target_shape, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        dims = None
        if x.shape[1:].is_fully_defined():
            dims = list(self.compute_output_shape(x.shape))[1:]
        output = _reshape(self, x, dims)
        if output is None:
            last = self.target_shape[-1] if self.target_shape else None
            _check_last_axis(self, x, None if last == -1 else last)
            shape = tf.concat([tf.shape(x.values)[:1],
                               tf.constant(self.target_shape, tf.int32)], 0)
            output = tf.reshape(x, shape)
        return self._quantize_output(output)


@register_keras
@register_twin(keras.layers.Permute, pass_through=True, per_tensor_inputs=True,
               export="permute")
class QuantizedPermute(QuantConfigMixin, keras.layers.Permute):
    """A Permute layer that operates on quantized inputs.

    Note: Keras Permute layer simply wraps the Tensorflow transpose op.

    Integer maths: ``y = transpose(x, [0] + dims)`` (exact), then the output quantizer if
    configured.

    Args:
        dims (tuple of ints): Permutation pattern does not include the samples dimension.
            Indexing starts at 1. For instance, (2, 1) permutes the first and second dimensions
            of the input.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, dims, quant_config=None, **kwargs):
        super().__init__(dims=dims, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        perm = [0] + list(self.dims)
        if perm[-1] != x.shape.rank - 1:
            _check_last_axis(self, x, None)
        return self._quantize_output(tf.transpose(x, perm))
