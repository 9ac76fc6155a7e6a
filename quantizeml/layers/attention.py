"""Dot-product attention: Attention (float, configurable softmax) and QuantizedAttention."""
import math

import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import check_qtensor, clip_to_buffer, register_keras
from .quant_config import QuantConfigMixin
from .registry import BLOCK_END, register_twin
from .shiftmax import (DEFAULT_EXP_BITS, SHIFTMAX_KEYS, check_exp_bits, exact_logits,
                       quantized_shiftmax, shiftmax)

__all__ = ["string_to_softmax", "Attention", "QuantizedAttention", "QuantizedSoftmax"]

_SOFTMAXES = {"softmax": tf.nn.softmax, "shiftmax": shiftmax}


def string_to_softmax(s):
    """Convert a string to a softmax function.

    Available options are 'softmax' for standard softmax, 'shiftmax' for shiftmax.

    Args:
        s (str): string to convert.

    Returns:
        callable: a softmax function, called as ``fn(logits, axis=-1)``.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(s, str) and s in _SOFTMAXES:
        return _SOFTMAXES[s]
    raise ValueError(f"string_to_softmax expected one of {sorted(_SOFTMAXES)}. "
                     f"Received: s={s!r}")


def _layer_error(layer, message):
    return f"Layer {layer.name} ({type(layer).__name__}) {message}"


@register_keras
class Attention(keras.layers.Layer):
    """Dot-product attention layer with configurable softmax.

    Inputs are a tuple (or list) of tensors: a query, a key and a value tensor, each of shape
    ``[batch, tokens, hidden]``. The calculation follows the steps:

    1. split query, key, value per attention heads:
       ``[batch, tokens, hidden] -> [batch, num_heads, tokens, dim]`` (``dim = hidden /
       num_heads``);
    2. cross-token scores as a query-key dot product:
       ``scores = tf.matmul(query, key, transpose_b=True)``, ``[batch, num_heads, tokens,
       tokens]``;
    3. rescale the scores by dividing them by the square root of ``dim``;
    4. ``mask = softmax(scores)`` along the last axis;
    5. combine mask with value: ``output = tf.matmul(mask, value)``, ``[batch, num_heads,
       tokens, dim]``;
    6. merge heads back: ``[batch, num_heads, tokens, dim] -> [batch, tokens, hidden]``.

    Args:
        num_heads (int): the number of attention heads.
        softmax (str, optional): 'softmax' or 'shiftmax'. Defaults to 'softmax'.

    Raises:
        ValueError: for an invalid num_heads or softmax, inputs that are not three tensors of
            the same ``[batch, tokens, hidden]`` shape, or a hidden size that num_heads does
            not divide.
    """

    def __init__(self, num_heads, softmax="softmax", **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(_layer_error(self, "expected num_heads to be a positive int. "
                                                f"Received: num_heads={num_heads!r}"))
        self.num_heads = num_heads
        self.softmax_fn = string_to_softmax(softmax)
        self.softmax = softmax

    def _check_shapes(self, shapes):
        """Validates the three input shapes; returns (tokens, hidden, dim)."""
        if not isinstance(shapes, (list, tuple)) or len(shapes) != 3:
            raise ValueError(_layer_error(self, "expected a list of three inputs (query, key, "
                                                f"value). Received: input_shape={shapes}"))
        shapes = [tf.TensorShape(s) for s in shapes]
        for name, shape in zip(("query", "key", "value"), shapes):
            if shape.rank != 3:
                raise ValueError(_layer_error(
                    self, f"expected {name} of shape [batch, tokens, hidden]. "
                          f"Received: {name}.shape={shape}"))
        if not (shapes[0].is_compatible_with(shapes[1])
                and shapes[0].is_compatible_with(shapes[2])):
            raise ValueError(_layer_error(
                self, "expected query, key and value of the same shape. Received: "
                      f"query.shape={shapes[0]}, key.shape={shapes[1]}, "
                      f"value.shape={shapes[2]}"))
        tokens = next((s[1] for s in shapes if s[1] is not None), None)
        hidden = next((s[2] for s in shapes if s[2] is not None), None)
        if hidden is None:
            raise ValueError(_layer_error(self, "expected a static hidden size. "
                                                f"Received: query.shape={shapes[0]}"))
        if hidden % self.num_heads:
            raise ValueError(_layer_error(
                self, f"expected a hidden size divisible by num_heads={self.num_heads}. "
                      f"Received: hidden={hidden}"))
        return tokens, hidden, hidden // self.num_heads

    def build(self, input_shape):
        self._check_shapes(input_shape)
        super().build(input_shape)

    def _split_heads(self, x, tokens, dim):
        """``[batch, tokens, hidden] -> [batch, num_heads, tokens, dim]``."""
        tokens = tf.shape(x.values if isinstance(x, FixedPoint) else x)[1] \
            if tokens is None else tokens
        x = tf.reshape(x, [-1, tokens, self.num_heads, dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def _merge_heads(self, x, tokens, hidden):
        """``[batch, num_heads, tokens, dim] -> [batch, tokens, hidden]``."""
        x = tf.transpose(x, [0, 2, 1, 3])
        tokens = tf.shape(x.values if isinstance(x, FixedPoint) else x)[1] \
            if tokens is None else tokens
        return tf.reshape(x, [-1, tokens, hidden])

    def call(self, inputs):
        tokens, hidden, dim = self._check_shapes([x.shape for x in inputs]
                                                 if isinstance(inputs, (list, tuple))
                                                 else inputs)
        query, key, value = (self._split_heads(tf.convert_to_tensor(x), tokens, dim)
                             for x in inputs)
        scores = tf.matmul(query, key, transpose_b=True)
        scores = scores / tf.sqrt(tf.cast(dim, scores.dtype))
        mask = self.softmax_fn(scores, axis=-1)
        output = tf.matmul(mask, value)
        return self._merge_heads(output, tokens, hidden)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "softmax": self.softmax}


def _sqrt_shift(dim):
    """``log2(sqrt(dim))`` when dim is a power of 4 (the rescale is then a shift), else None."""
    half = (dim.bit_length() - 1) / 2
    return int(half) if dim == 4**int(half) and half == int(half) else None


def quantized_softmax(layer, x, exp_bits, scale_bits, axis=-1):
    """The rounded float softmax of a QTensor along ``axis`` (the last by default), as a
    FixedPoint.

    ``p = floor(softmax(x) * 2^E + 1/2)`` (``E = exp_bits``), with ``x`` the exact float64 value
    of the scores (a QFloat's scales quantized on ``scale_bits`` first) and ``tf.nn.softmax``
    computed in float64. ``0 <= p <= 2^E`` (a probability of 1.0 is ``2^E``): a FixedPoint with
    ``E + 1`` value bits and ``E`` fractional bits, each entry within ``2^-(E + 1)`` of the
    float64 softmax. Gradient: that of the softmax (straight-through rounding).
    """
    logits = exact_logits(layer, x, scale_bits)
    probs = tf.nn.softmax(logits, axis=axis) * 2.0**exp_bits
    p = tf.floor(tf.stop_gradient(probs) + 0.5)
    p = p + (probs - tf.stop_gradient(probs))  # exactly p: the STE adds 0.0
    return FixedPoint(p, exp_bits + 1, float(exp_bits))


@register_keras
@register_twin(Attention, output=BLOCK_END, per_tensor_inputs=True, export="attention")
class QuantizedAttention(QuantConfigMixin, Attention):
    """An Attention layer that operates on quantized inputs.

    Query, key and value are per-tensor FixedPoints. The steps of :class:`Attention` become:

    * the scores are the exact integer matmul ``S = q_int @ k_int^T`` (fractional bits
      ``f_q + f_k``);
    * the rescale by ``1 / sqrt(dim)`` is exact: a shift of ``log2(dim) / 2`` fractional bits
      when ``dim`` is a power of 4, otherwise the QFloat ``S * (1 / sqrt(dim))``, whose scale
      is quantized on ``scale_bits`` significant bits (the output quantizer's, 8 without one;
      relative error <= 2^-scale_bits);
    * the mask, a FixedPoint with ``E = exp_bits`` fractional bits and ``E + 1`` value bits
      (``0 <= mask_int <= 2^E``, i.e. 1.0), is

      - ``softmax='shiftmax'``: the integer shiftmax of QuantizedShiftmax on the floored
        scores (exact powers of two, terms below ``2^-E`` dropped);
      - ``softmax='softmax'``: the float softmax of the dequantized scores, rounded to the
        nearest multiple of ``2^-E``: ``mask_int = floor(softmax(x) * 2^E + 1/2)`` with ``x``
        the exact float64 scores and ``tf.nn.softmax`` in float64 (each mask entry within
        ``2^-(E + 1)`` of the float softmax). This is the one float step of the layer: on an
        integer-only target it is a lookup (exponentials of the integer scores) and a division;
        the rest stays integer;
    * the output is the exact integer matmul ``mask_int @ v_int`` (fractional bits
      ``E + f_v``), clipped to the buffer, then the output quantizer if configured.

    Integer maths (shiftmax): ``y = shiftmax_E(floor((q_int @ k_int^T) * 2^-(f_q + f_k) /
    sqrt(dim))) @ v_int`` with ``frac_bits = E + f_v``; (softmax) the same with
    ``round(2^E * softmax((q_int @ k_int^T) * 2^-(f_q + f_k) / sqrt(dim)))``.

    Args:
        num_heads (int): the number of attention heads.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "exp_bits" (``E``, the fractional bits of the mask: of the shiftmax exponentials,
            or of the rounded softmax probabilities; default 8), "output_quantizer" and
            "buffer_bitwidth". Defaults to None.
        softmax (str, optional): 'softmax' or 'shiftmax'. Defaults to 'shiftmax'.

    Raises:
        ValueError: for an invalid softmax, per-axis inputs, or the errors of Attention.
        TypeError: for inputs that are not FixedPoints.
    """

    def __init__(self, num_heads, quant_config=None, softmax="shiftmax", **kwargs):
        super().__init__(num_heads=num_heads, softmax=softmax, **kwargs)
        self._init_quant_config(quant_config, SHIFTMAX_KEYS)
        self.exp_bits = check_exp_bits(self.name,
                                       self.quant_config.get("exp_bits", DEFAULT_EXP_BITS))

    def _check_inputs(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise ValueError(_layer_error(self, "expected a list of three inputs (query, key, "
                                                "value). Received: "
                                                f"{type(inputs).__name__} inputs"))
        for name, x in zip(("query", "key", "value"), inputs):
            if not isinstance(x, FixedPoint):
                raise TypeError(_layer_error(self, f"expected FixedPoint inputs. Received: "
                                                   f"{name} of type {type(x).__name__}"))
            if not x.per_tensor:
                raise ValueError(_layer_error(
                    self, f"expected per-tensor inputs (their channels are summed). "
                          f"Received: a per-axis {name} of shape {x.shape}"))
        return self._check_shapes([x.shape for x in inputs])

    def _scaled_scores(self, scores, dim):
        """The scores divided by sqrt(dim), exactly: a FixedPoint or a QFloat."""
        shift = _sqrt_shift(dim)
        if shift is not None:
            return FixedPoint(scores.values, scores.value_bits, scores.frac_bits + shift)
        return QFloat(scores, tf.constant(1.0 / math.sqrt(dim), tf.float32))

    def call(self, inputs):
        tokens, hidden, dim = self._check_inputs(inputs)
        query, key, value = (self._split_heads(x, tokens, dim) for x in inputs)
        scores = tf.linalg.matmul(query, key, transpose_b=True)
        scores = self._scaled_scores(scores, dim)
        if self.softmax == "softmax":
            mask = quantized_softmax(self, scores, self.exp_bits, self.scale_bits)
        else:
            mask = quantized_shiftmax(self, scores, self.exp_bits, self.scale_bits,
                                      self.buffer_bitwidth, scores.to_float())
        output = tf.linalg.matmul(mask, value)
        output = self._merge_heads(output, tokens, hidden)
        output = clip_to_buffer(self, output, self.buffer_bitwidth)
        return self._quantize_output(output)


def softmax_axis(layer):
    """The one axis of a Keras Softmax layer (an int, maybe negative), or None for several."""
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    return int(axis)


def _softmax_refuses(layer):
    if softmax_axis(layer) is None:
        return f"a softmax over several axes {layer.axis}"
    return None


@register_keras
@register_twin(keras.layers.Softmax, float_at_end=True, refuses=_softmax_refuses,
               export="softmax")
class QuantizedSoftmax(QuantConfigMixin, keras.layers.Softmax):
    """A Softmax layer on quantized inputs: the rounded softmax of QuantizedAttention.

    ``p_int = floor(softmax(x) * 2^E + 1/2)`` along ``axis``, with ``x`` the exact float64
    value of the inputs (a FixedPoint, per-tensor or per-axis, or a QFloat whose scales are
    quantized on ``scale_bits``) and ``tf.nn.softmax`` in float64: a FixedPoint of ``E + 1``
    value bits and ``E = exp_bits`` fractional bits (``0 <= p_int <= 2^E``, i.e. 1.0), each
    probability within ``2^-(E + 1)`` of the float softmax. The softmax is the one float step
    (an integer-only target computes it as a table of exponentials and a division); the
    products that use the probabilities (``QuantizedDot``, a Dense) are integer. A Softmax
    that ends the model (no quantized layer after it) stays float (``float_at_end``): its
    float probabilities are the model's output.

    Args:
        axis (int, optional): the softmax axis. Defaults to -1.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "exp_bits" (``E``, default 8), "output_quantizer" and "buffer_bitwidth".
            Defaults to None.

    Raises:
        ValueError: a mask, or several axes.
        TypeError: inputs that are not FixedPoint or QFloat.
    """

    def __init__(self, axis=-1, quant_config=None, **kwargs):
        super().__init__(axis=axis, **kwargs)
        if softmax_axis(self) is None:
            raise ValueError(_layer_error(self, "expected one softmax axis. Received: "
                                                f"axis={axis!r}"))
        self._init_quant_config(quant_config, SHIFTMAX_KEYS)
        self.exp_bits = check_exp_bits(self.name,
                                       self.quant_config.get("exp_bits", DEFAULT_EXP_BITS))

    def call(self, inputs, mask=None):
        if mask is not None:
            raise ValueError(_layer_error(self, "expected no mask (a masked softmax is not "
                                                "quantized). Received: a mask"))
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        out = quantized_softmax(self, x, self.exp_bits, self.scale_bits, softmax_axis(self))
        return self._quantize_output(out)
