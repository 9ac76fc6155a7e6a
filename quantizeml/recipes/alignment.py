"""Alignment on one fractional bit: ``x_c * 2^(max(frac) - frac_c)``, an exact left shift.

A per-axis FixedPoint summed over its channels (a convolution, a Dense) is first aligned on its
largest fractional bits. :func:`align` shifts the values; :func:`align_through_weights` gives
the same integer sums by shifting the weights of each input channel instead (the inputs keep
their carrier). :func:`align_reference` is the op-by-op body.
"""
import tensorflow as tf

from ..tensors.carrier import BUFFER_BITS, MAX_VALUE_BITS
from ..tensors.fixed_point import FixedPoint, fold_static, static_max

__all__ = ["align", "align_reference", "aligned_value_bits", "align_through_weights"]


def aligned_value_bits(value_bits, max_shift):
    """Value bits of per-axis values shifted left by at most ``max_shift`` (a static int, or
    None when only known at run time: the 32-bit buffer, checked at run time)."""
    widened = BUFFER_BITS - 1 if max_shift is None else value_bits + int(max_shift)
    return min(max(widened, value_bits), MAX_VALUE_BITS)


def align_reference(fp):
    """The op-by-op reference of :func:`align`: the values times ``2^(max(frac) - frac)`` in
    float64, as a FixedPoint on the largest fractional bits (value bits unchecked).

    Integer maths: ``y_c = x_c * 2^(max(frac) - frac_c)``.
    """
    if fp.per_tensor:
        return fp
    target = tf.reduce_max(fp.frac_bits)
    shift = tf.cast(target - fp.frac_bits, tf.float64)
    values = tf.cast(fp.values, tf.float64) * tf.pow(tf.constant(2.0, tf.float64), shift)
    return FixedPoint(values, MAX_VALUE_BITS, target, clip=False)


def align(fp):
    """Expands a per-axis FixedPoint to one fractional bit (its maximum), exactly.

    Integer maths: ``y_c = x_c * 2^(max(frac) - frac_c)``, equal to :func:`align_reference`.

    The value bits grow by the largest shift when it is known statically, otherwise they are
    widened to the 32-bit buffer (FixedPoint.expand checks at run time that nothing is lost).
    """
    if fp.per_tensor:
        return fp
    max_shift = static_max(tf.reduce_max(fp.frac_bits) - fp.frac_bits)
    return fp.expand(aligned_value_bits(fp.value_bits, max_shift))[0]


def align_through_weights(x, w_values):
    """Per-axis inputs summed over their channels (axis -2 of the weights), aligned on their
    largest fractional bits by shifting the weights of each input channel instead of the
    inputs: same integer sums, and the inputs keep their carrier.

    Integer maths: ``sum_c (x_c * 2^shift_c) * w_c = sum_c x_c * (w_c * 2^shift_c)``.

    Args:
        x (FixedPoint): per-axis inputs.
        w_values (tf.Tensor): the integer weights, input channels on axis -2.

    Returns:
        tuple: the inputs as a FixedPoint on the largest fractional bits (values unchanged),
        the shifted weights, the value bits of the aligned inputs and the run-time checks
        (a list of ops, empty when the shifts are static).
    """
    target = fold_static(tf.reduce_max, x.frac_bits)
    shift = fold_static(tf.subtract, target, x.frac_bits)
    max_shift = static_max(shift)
    x_bits = aligned_value_bits(x.value_bits, max_shift)
    checks = []
    if max_shift is None:
        # as FixedPoint.expand: aligned inputs within the 32-bit buffer, checked
        checks = x._assert_fits(shift, x_bits, f"the inputs aligned on one fractional "
                                               f"bit exceed {x_bits} value bits")
    factors = tf.pow(tf.constant(2.0, w_values.dtype), tf.cast(shift, w_values.dtype))
    w_values = w_values * tf.reshape(factors, [-1, 1])
    return FixedPoint(x.values, x.value_bits, target, clip=False), w_values, x_bits, checks
