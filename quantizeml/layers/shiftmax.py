"""Shiftmax: a base-2 softmax whose normalization is a shift (float function, Shiftmax and
QuantizedShiftmax layers).

``shiftmax(x)_i = 2^(x_i - m) / 2^round(log2(sum_k 2^(x_k - m)))`` with ``x`` floored and
``m = max(x)``: every output is a power of two, so the integer version only needs a maximum,
shifts, one sum and a leading-bit search (Cardarilli et al., Sci Rep 11, 15307 (2021)).

The integer maths of :class:`QuantizedShiftmax` (also used by QuantizedAttention):

1. ``x_int = floor(x)``: the integer part of the FixedPoint input (``floor(v * 2^-f)``); a
   QFloat input's scales are first quantized on ``scale_bits`` significant bits
   (``floor(v * s_int * 2^-(f + s_f))``, relative scale error <= 2^-scale_bits);
2. ``y = x_int - max(x_int)`` (integers <= 0);
3. ``e = 2^(y + E)`` when ``y + E >= 0`` else 0: exponentials with ``E = exp_bits`` fractional
   bits (terms below ``2^-E`` are dropped);
4. ``s = sum(e)``; ``k = floor(log2(s))``; ``r = k + (s^2 >= 2^(2k + 1))`` is
   ``round(log2(s))`` computed exactly (``log2(s) >= k + 1/2`` iff ``s >= 2^k * sqrt(2)``);
5. ``p = e >> (r - E)``: the output, a FixedPoint with ``E`` fractional bits and ``E + 1`` value
   bits (``p <= 2^E``, i.e. 1.0).

It equals the float :func:`shiftmax` exactly, except that exponentials below ``2^-E`` are
dropped: outputs below ``2^-E`` become 0, and ``r`` differs only when the dropped terms (less
than ``N * 2^-E`` in total, ``N`` the number of logits) move ``s`` across ``2^(k + 1/2)``.

Gradients: the floor and the power-of-two normalization have zero derivative almost
everywhere, so both the float and the integer versions back-propagate the gradient of the smooth
base-2 softmax ``2^x / sum(2^x)`` (a straight-through estimator); forward values are exact.
"""
import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, MAX_VALUE_BITS, QFloat, bits_for
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import register_twin
from .quantizers.quantizers import check_bitwidth

__all__ = ["shiftmax", "Shiftmax", "QuantizedShiftmax"]

#: Default fractional bits of the base-2 exponentials (and of the shiftmax output).
DEFAULT_EXP_BITS = 8
#: quant_config keys of the shiftmax layers.
SHIFTMAX_KEYS = ("exp_bits", *OUTPUT_KEYS)
_LN2 = math.log(2.0)


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _check_logits(logits, axis):
    """Raises InvalidArgumentError for empty logits or an axis beyond the last dimension."""
    rank = logits.shape.rank
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    if rank is not None:
        for a in axes:
            if not -rank <= int(a) < rank:
                raise _invalid(f"shiftmax expected an axis in [{-rank}, {rank}). "
                               f"Received: axis={axis} for logits of rank {rank}")
    size = logits.shape.num_elements()
    if size == 0:
        raise _invalid(f"shiftmax expected non-empty logits. Received: shape={logits.shape}")
    if size is None:
        return [tf.debugging.assert_greater(tf.size(logits), 0,
                                            message="shiftmax expected non-empty logits")]
    return []


def _smooth_softmax2(x, axis):
    """``2^x / sum(2^x)`` along ``axis``: the differentiable surrogate of shiftmax."""
    top = tf.stop_gradient(tf.reduce_max(x, axis=axis, keepdims=True))
    ex = tf.exp((x - top) * tf.constant(_LN2, x.dtype))
    return ex / tf.reduce_sum(ex, axis=axis, keepdims=True)


def shiftmax(logits, axis=-1):
    """Computes softmax-like activations, but using base 2 for the exponential.

    Used as approximation of the softmax activation. This function performs the equivalent of

    ```python
    logits = tf.floor(logits)
    exp = 2 ** logits
    sum_exp_shift = tf.round(tf.log2(tf.reduce_sum(exp, axis, keepdims=True)))
    softmax = exp / 2 ** sum_exp_shift = 2 ** (logits - sum_exp_shift)
    ```

    where ``2 ** sum_exp_shift`` approximates ``sum_exp`` as a power of two. To avoid a high
    exponential (``inf``), ``x0 = max(logits)`` is first subtracted from the logits, which does
    not change the result: ``2^(l - x0) / sum(2^(l - x0)) = 2^l / sum(2^l)``.

    The logits are floored to approximate the results of the quantized operation. Gradient:
    that of ``2^x / sum(2^x)`` (straight-through on the floor and the power-of-two rounding).

    Args:
        logits (tf.Tensor): a non-empty Tensor.
        axis (int, list, optional): the dimension shiftmax would be performed on. The default
            is -1 which indicates the last dimension.

    Returns:
        tf.Tensor: value of shiftmax function with the same type and shape as logits.

    Raises:
        InvalidArgumentError: if logits is empty or axis is beyond the last dimension of logits.
    """
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        logits = tf.cast(logits, tf.float32)
    checks = _check_logits(logits, axis)
    with tf.control_dependencies(checks):
        floored = tf.floor(logits)
        floored = floored - tf.reduce_max(floored, axis=axis, keepdims=True)
        two = tf.constant(2.0, logits.dtype)
        exp = tf.pow(two, floored)
        log2_sum = tf.math.log(tf.reduce_sum(exp, axis=axis, keepdims=True)) / tf.math.log(two)
        exact = tf.pow(two, floored - tf.round(log2_sum))
        exact = tf.stop_gradient(exact)
    smooth = _smooth_softmax2(logits, axis)
    # exact + 0.0: the forward value is the exact shiftmax, the gradient that of ``smooth``
    return exact + (smooth - tf.stop_gradient(smooth))


def check_exp_bits(layer_name, exp_bits):
    """Validates the ``exp_bits`` entry of a quant_config (an int in [1, 30])."""
    return check_bitwidth(exp_bits, layer_name, max_bits=30, name="exp_bits")


def exact_logits(layer, x, scale_bits):
    """The real value of a FixedPoint or QFloat, exactly, as float64.

    A QFloat's scales are quantized on ``scale_bits`` significant bits first
    (``QFloat.quantize_scales``): ``v * s_int * 2^-(f + s_f)``, an exact float64 product.

    Raises:
        ValueError: when the product of the values and scales exceeds the float64 carrier.
    """
    values = tf.cast(x.values, tf.float64)
    frac_bits = tf.cast(x.frac_bits, tf.float64)
    if isinstance(x, QFloat):
        if x.value_bits + scale_bits + 1 > MAX_VALUE_BITS:
            raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected a QFloat "
                             f"of at most {MAX_VALUE_BITS - scale_bits - 1} value bits (the "
                             f"product with its {scale_bits}-bit scales must be exact). "
                             f"Received: value_bits={x.value_bits}")
        scales = QFloat.quantize_scales(x.scales, scale_bits)
        values = values * tf.cast(scales.values, tf.float64)
        frac_bits = frac_bits + tf.cast(scales.frac_bits, tf.float64)
    return values * tf.pow(tf.constant(2.0, tf.float64), -frac_bits)


def floor_logits(layer, x, scale_bits):
    """The integer part ``floor(x)`` of a FixedPoint or QFloat, exactly, as float64 integers.

    A QFloat's scales are quantized on ``scale_bits`` significant bits first
    (``QFloat.quantize_scales``): ``floor(v * s_int * 2^-(f + s_f))``.

    Raises:
        ValueError: when the product of the values and scales exceeds the float64 carrier.
    """
    return tf.floor(exact_logits(layer, x, scale_bits))


def _floor_log2(s):
    """``floor(log2(s))`` for float64 integers ``s >= 1``, exact (log2 corrected by an ulp)."""
    two = tf.constant(2.0, tf.float64)
    k = tf.floor(tf.math.log(s) / tf.math.log(two))
    k = tf.where(tf.pow(two, k) > s, k - 1, k)
    return tf.where(tf.pow(two, k + 1) <= s, k + 1, k)


def integer_shiftmax(layer, logits, exp_bits, buffer_bits):
    """The integer shiftmax of integer logits along the last axis (module docstring, 2-5).

    Args:
        layer (keras.layers.Layer): the calling layer (named in errors).
        logits (tf.Tensor): float64 integer-valued logits ``x_int``.
        exp_bits (int): the fractional bits ``E`` of the exponentials.
        buffer_bits (int): the integer buffer that must hold the sum of exponentials.

    Returns:
        tf.Tensor: the float64 integer outputs ``p`` (``E`` fractional bits, ``p <= 2^E``).
    """
    n = logits.shape[-1]
    if n is None:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected a static last "
                         f"dimension. Received: shape={logits.shape}")
    sum_bits = bits_for(n * 2.0**exp_bits)
    if sum_bits > buffer_bits - 1:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}): exp_bits expected at "
                         f"most {buffer_bits - 1 - bits_for(n)} so that the sum of {n} "
                         f"exponentials fits the {buffer_bits}-bit buffer. "
                         f"Received: exp_bits={exp_bits}")
    two = tf.constant(2.0, tf.float64)
    y = logits - tf.reduce_max(logits, axis=-1, keepdims=True) + exp_bits
    e = tf.where(y >= 0, tf.pow(two, tf.maximum(y, 0.0)), tf.zeros_like(y))
    s = tf.reduce_sum(e, axis=-1, keepdims=True)  # in [2^E, n * 2^E]: exact
    k = _floor_log2(s)
    # round(log2(s)) = k + 1 iff s^2 >= 2^(2k+1), in int64 (s < 2^31, so s^2 < 2^62)
    s_int = tf.cast(s, tf.int64)
    threshold = tf.bitwise.left_shift(tf.ones_like(s_int), tf.cast(2 * k + 1, tf.int64))
    r = k + tf.cast(s_int * s_int >= threshold, tf.float64)
    return tf.floor(e * tf.pow(two, exp_bits - r))


def quantized_shiftmax(layer, x, exp_bits, scale_bits, buffer_bits, smooth_logits):
    """The integer shiftmax of a QTensor as a FixedPoint (``E + 1`` value bits, ``E`` fractional
    bits), with the straight-through gradient of ``2^x / sum(2^x)`` w.r.t. ``smooth_logits``."""
    p = integer_shiftmax(layer, floor_logits(layer, x, scale_bits), exp_bits, buffer_bits)
    smooth = tf.cast(_smooth_softmax2(smooth_logits, -1), tf.float64) * 2.0**exp_bits
    p = p + (smooth - tf.stop_gradient(smooth))  # exactly p: the STE adds 0.0
    return FixedPoint(p, exp_bits + 1, float(exp_bits))


@register_keras
class Shiftmax(keras.layers.Layer):
    """Wrapper class of shiftmax function, that calculates a softmax-like activation.

    Note that shiftmax operation is performed always along the last axis.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, inputs):
        return shiftmax(inputs, axis=-1)


@register_keras
@register_twin(Shiftmax, export="shiftmax")
class QuantizedShiftmax(QuantConfigMixin, Shiftmax):
    """A quantized layer to do a quantized function similar to the softmax, but using base 2
    instead of e. So we replace ``softmax(x_i) = e^x_i / sum(e^x_k)`` with
    ``softmax2(x_i) = 2^x_i / sum(2^x_k)``, and approximate the sum to the closest power of
    two, ``shiftmax(x_i) = 2^x_i / 2^round(log2(sum(2^x_k)))``, so that the division is a shift.

    Inputs are FixedPoint (per-tensor or per-axis: the integer part has no fractional bits) or
    QFloat (scales quantized on the output quantizer's ``scale_bits``, 8 without one).

    Integer maths: ``p = 2^(y + E) >> (round(log2(sum(2^(y + E)))) - E)`` with
    ``y = floor(x) - max(floor(x))`` and terms with ``y + E < 0`` dropped (module docstring);
    ``p`` has ``E = exp_bits`` fractional bits, then the output quantizer if configured.

    Implementation is inspired from this paper: Cardarilli, G.C., Di Nunzio, L., Fazzolari, R.
    et al. A pseudo-softmax function for hardware-based high speed image classification. Sci Rep
    11, 15307 (2021). https://doi.org/10.1038/s41598-021-94691-7

    Args:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "exp_bits" (int, the fractional bits ``E`` of the exponentials and outputs,
            default 8), "output_quantizer" and "buffer_bitwidth" (the sum of exponentials
            must fit it). Defaults to None.
    """

    def __init__(self, quant_config=None, **kwargs):
        super().__init__(**kwargs)
        self._init_quant_config(quant_config, SHIFTMAX_KEYS)
        self.exp_bits = check_exp_bits(
            self.name, self.quant_config.get("exp_bits", DEFAULT_EXP_BITS))

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        out = quantized_shiftmax(self, x, self.exp_bits, self.scale_bits, self.buffer_bitwidth,
                                 x.to_float())
        return self._quantize_output(out)
