"""Quantized reshaping: QuantizedFlatten, QuantizedReshape, QuantizedPermute, QuantizedSlicing
(and Slicing, the float strided slice it twins).

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


@register_keras
class Slicing(keras.layers.Layer):
    """A strided slice of the non-batch axes: ``y = x[:, b0:e0:s0, b1:e1:s1, ...]``.

    The float layer that ``replace_tfop_arithmetic`` (run by ``sanitize`` and ``quantize()``)
    puts in place of tf_keras' ``SlicingOpLambda`` (``x[..., :16]``, ``x[:, 1:5, ::2]``): a
    plain layer with a config, which has the quantized twin QuantizedSlicing.

    Args:
        begin (list of int): the first index of each non-batch axis (>= 0).
        end (list of int): the end (exclusive) of each non-batch axis (>= begin).
        strides (list of int, optional): the steps (>= 1). Defaults to None (all 1).

    Raises:
        ValueError: for lists of different lengths, negative indices or steps below 1.
    """

    def __init__(self, begin, end, strides=None, **kwargs):
        super().__init__(**kwargs)
        strides = [1] * len(begin) if strides is None else strides
        self.begin, self.end, self.strides = ([int(v) for v in values]
                                              for values in (begin, end, strides))
        if not (len(self.begin) == len(self.end) == len(self.strides)) or \
                any(b < 0 or e < b for b, e in zip(self.begin, self.end)) or \
                any(s < 1 for s in self.strides):
            raise ValueError(f"Layer {self.name} (Slicing) expected begin, end and strides of "
                             "the same length with 0 <= begin <= end and strides >= 1. "
                             f"Received: begin={begin}, end={end}, strides={strides}")

    def slices_last_axis(self, input_shape):
        """bool: whether the slice drops values of the last axis of ``input_shape``."""
        last = input_shape[-1]
        return self.begin[-1] != 0 or self.strides[-1] != 1 or last is None \
            or self.end[-1] < int(last)

    def _slice(self, values):
        rank = len(self.begin) + 1
        if values.shape.rank != rank:
            raise ValueError(f"Layer {self.name} (Slicing) expected inputs of rank {rank}. "
                             f"Received: inputs of shape {values.shape}")
        return tf.strided_slice(values, [0] + self.begin, [0] + self.end, [1] + self.strides,
                                begin_mask=1, end_mask=1)

    def call(self, inputs):
        return self._slice(inputs)

    def compute_output_shape(self, input_shape):
        shape = [input_shape[0]]
        for dim, b, e, s in zip(input_shape[1:], self.begin, self.end, self.strides):
            e = e if dim is None else min(e, int(dim))
            shape.append(max(0, -(-(e - b) // s)))
        return tf.TensorShape(shape)

    def get_config(self):
        return {**super().get_config(), "begin": list(self.begin), "end": list(self.end),
                "strides": list(self.strides)}


def _slices_last_axis(layer):
    """Whether a float Slicing drops values of its input's last axis (its quantized inputs must
    then be per-tensor)."""
    try:
        return layer.slices_last_axis(layer.input_shape)
    except (AttributeError, RuntimeError, TypeError, IndexError):  # not called, or shared
        return True


@register_keras
@register_twin(Slicing, pass_through=True, per_tensor_inputs=_slices_last_axis, export="slice")
class QuantizedSlicing(QuantConfigMixin, Slicing):
    """A Slicing layer that operates on quantized inputs.

    Integer maths: ``y = x[:, b0:e0:s0, ...]`` on the integer values (exact; same frac_bits and
    scales), then the output quantizer if configured. A slice of the last axis takes a
    per-tensor input (quantize() makes its producer's output quantizer per-tensor).

    Args:
        begin, end, strides: as :class:`Slicing`.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, begin, end, strides=None, quant_config=None, **kwargs):
        super().__init__(begin, end, strides, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        if not x.per_tensor and self.slices_last_axis(x.shape):
            _check_last_axis(self, x, None)
        fp = x.fp if isinstance(x, QFloat) else x
        output = FixedPoint(self._slice(fp.values), fp.value_bits, fp.frac_bits)
        if isinstance(x, QFloat):
            output = QFloat(output, x.scales)
        return self._quantize_output(output)
