"""Reductions of FixedPoints: reduce_sum (exact, widened) and reduce_max."""
import tensorflow as tf

from ..fixed_point import FixedPoint, fold_static
from .common import bits_for, check_result_bits


def _reduced_axes(x, axis):
    rank = x.shape.rank
    if axis is None:
        return list(range(rank))
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(a % rank for a in axes)


def _per_tensor_input(x, axes, op):
    """Aligns a per-axis FixedPoint whose last axis is reduced (one fractional bit)."""
    if x.per_tensor or (x.shape.rank - 1) not in axes:
        return x
    return x._left_align(fold_static(tf.reduce_max, x.frac_bits), None, op)[0]


@tf.experimental.dispatch_for_api(tf.math.reduce_sum, {"input_tensor": FixedPoint})
def _reduce_sum(input_tensor, axis=None, keepdims=False, name=None):
    x = input_tensor
    axes = _reduced_axes(x, axis)
    x = _per_tensor_input(x, axes, "reduce_sum")
    terms = 1
    for a in axes:
        if x.shape[a] is None:
            raise ValueError("reduce_sum expected static dimensions on the reduced axes. "
                             f"Received: shape={x.shape}, axis={axis}")
        terms *= x.shape[a]
    value_bits = check_result_bits(bits_for(terms * 2.0**x.value_bits), "reduce_sum")
    dtype = tf.float64 if value_bits > 23 else tf.float32
    values = tf.reduce_sum(tf.cast(x.values, dtype), axis=axes, keepdims=keepdims)
    frac_bits = x.frac_bits
    if not x.per_tensor and not keepdims and (x.shape.rank - 1) in axes:
        frac_bits = fold_static(tf.reduce_max, frac_bits)
    return FixedPoint(values, value_bits, frac_bits)


@tf.experimental.dispatch_for_api(tf.math.reduce_max, {"input_tensor": FixedPoint})
def _reduce_max(input_tensor, axis=None, keepdims=False, name=None):
    x = input_tensor
    axes = _reduced_axes(x, axis)
    x = _per_tensor_input(x, axes, "reduce_max")
    values = tf.reduce_max(x.values, axis=axes, keepdims=keepdims)
    return FixedPoint(values, x.value_bits, x.frac_bits)
