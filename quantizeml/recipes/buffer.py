"""The integer buffer: ``clip(v, -2^(B-1), 2^(B-1) - 1)`` on a ``B``-bit buffer (32 by default),
and the exact sums that it bounds.

Saturation is the caller's to record: ``record(values, value_bits)`` (e.g. a layer's
``record_saturation(layer, "buffer", ...)``) is called with the values before each clip.
"""
import tensorflow as tf

from ..tensors.fixed_point import FixedPoint
from ..tensors.qfloat import QFloat
from .reduction import max_abs

__all__ = ["clip_to_buffer", "buffer_add", "buffer_bounds", "fits_buffer"]


def buffer_bounds(buffer_bits):
    """(low, high): the integer bounds of a ``buffer_bits`` buffer, as Python floats."""
    return -2.0**(buffer_bits - 1), 2.0**(buffer_bits - 1) - 1


def clip_to_buffer(fp, buffer_bits, record=None):
    """Clips a FixedPoint to the integer buffer (nothing to do when its value bits fit).

    Integer maths: ``y = clip(x, -2^(B-1), 2^(B-1) - 1)`` with ``B = buffer_bits``.

    Args:
        fp (FixedPoint): the values.
        buffer_bits (int): the buffer bitwidth, sign bit included.
        record (callable, optional): ``record(values, value_bits)`` before the clip (the
            saturation report). Defaults to None.

    Returns:
        FixedPoint: the clipped values (``fp`` itself when they fit).
    """
    value_bits = buffer_bits - 1
    if fp.value_bits <= value_bits:
        return fp
    if record is not None:
        record(fp.values, value_bits)
    return FixedPoint(fp.values, value_bits, fp.frac_bits)


def buffer_add(x, y, buffer_bits, record=None):
    """Exact sum of two QTensors on the same grid (FixedPoints with equal frac_bits, or QFloats
    with equal scales and frac_bits), clipped to the buffer.

    Integer maths: ``y = clip(x + y, -2^(B-1), 2^(B-1) - 1)``.
    """
    fx = x.fp if isinstance(x, QFloat) else x
    fy = y.fp if isinstance(y, QFloat) else y
    value_bits = max(fx.value_bits, fy.value_bits) + 1
    dtype = tf.float64 if value_bits > 23 else tf.float32
    total = FixedPoint(tf.cast(fx.values, dtype) + tf.cast(fy.values, dtype),
                       min(value_bits, 52), fx.frac_bits, clip=value_bits > 52)
    total = clip_to_buffer(total, buffer_bits, record)
    return QFloat(total, x.scales) if isinstance(x, QFloat) else total


def fits_buffer(value_bits, bound, values_fn, bias_fp, buffer_bits):
    """bool tensor: whether ``max|acc| + max|b|`` fits the buffer, so that no buffer clip of
    ``clip(clip(acc) + b)`` can change a value.

    ``max|acc|`` comes from the accumulator's value bits, else from ``bound`` (its run-time
    bound, None if unknown) when that proves it, else from its values (``values_fn()``, read
    only then).
    """
    int_max = 2.0**(buffer_bits - 1) - 1
    bias_max = tf.cast(tf.reduce_max(tf.abs(bias_fp.values)), tf.float64)
    if value_bits <= buffer_bits - 1:
        acc_max = tf.constant(2.0**value_bits, tf.float64)
    elif bound is None:
        acc_max = max_abs(values_fn())
    else:
        acc_max = tf.cond(bound + bias_max <= int_max, lambda: bound,
                          lambda: max_abs(values_fn()))
    return acc_max + bias_max <= int_max
