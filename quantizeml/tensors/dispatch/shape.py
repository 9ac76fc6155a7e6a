"""Shape operations on QTensors: reshape, transpose, concat, expand_dims, squeeze.

Per-axis fractional bits (and scales) follow the last axis: an operation that would move or
change the last axis of a per-axis QTensor raises a ValueError.
"""
from typing import List

import tensorflow as tf

from ..fixed_point import FixedPoint, fold_static
from ..qfloat import QFloat
from .arithmetic import QTensorLike
from .common import check_result_bits


def _map_values(x, fn, op, keeps_last_axis):
    """Applies a shape function to the values, keeping the per-axis parameters valid."""
    per_axis = not x.per_tensor
    if per_axis and not keeps_last_axis:
        raise ValueError(f"{op} expected a per-tensor {type(x).__name__}, or an operation "
                         "that keeps its last (quantization) axis. "
                         f"Received: a per-axis input of shape {x.shape}")
    if isinstance(x, QFloat):
        return QFloat(_map_values(x.fp, fn, op, keeps_last_axis), x.scales)
    return FixedPoint(fn(x.values), x.value_bits, x.frac_bits)


@tf.experimental.dispatch_for_api(tf.reshape, {"tensor": QTensorLike})
def _reshape(tensor, shape, name=None):
    static_shape = tf.get_static_value(shape)
    keeps = (static_shape is not None and len(static_shape) > 0
             and tensor.shape[-1] is not None and int(static_shape[-1]) == tensor.shape[-1])
    return _map_values(tensor, lambda v: tf.reshape(v, shape), "reshape", keeps)


@tf.experimental.dispatch_for_api(tf.transpose, {"a": QTensorLike})
def _transpose(a, perm=None, conjugate=False, name="transpose"):
    rank = a.shape.rank
    keeps = perm is not None and rank is not None and list(perm)[-1] in (rank - 1, -1)
    return _map_values(a, lambda v: tf.transpose(v, perm), "transpose", keeps)


@tf.experimental.dispatch_for_api(tf.expand_dims, {"input": QTensorLike})
def _expand_dims(input, axis, name=None):  # noqa: A002 (tf's argument name)
    rank = input.shape.rank
    keeps = rank is not None and axis not in (-1, rank)
    return _map_values(input, lambda v: tf.expand_dims(v, axis), "expand_dims", keeps)


@tf.experimental.dispatch_for_api(tf.squeeze, {"input": QTensorLike})
def _squeeze(input, axis=None, name=None):  # noqa: A002 (tf's argument name)
    rank = input.shape.rank
    axes = [axis] if isinstance(axis, int) else axis
    keeps = (axes is not None and rank is not None
             and all(a not in (-1, rank - 1) for a in axes))
    return _map_values(input, lambda v: tf.squeeze(v, axis), "squeeze", keeps)


@tf.experimental.dispatch_for_api(tf.concat, {"values": List[FixedPoint]})
def _concat(values, axis, name="concat"):
    return concat(values, axis)


def concat(values, axis):
    """Concatenates FixedPoints, aligned on their largest fractional bit (exact).

    Args:
        values (list of FixedPoint): the tensors to concatenate.
        axis (int): the concatenation axis.

    Returns:
        FixedPoint: a per-tensor FixedPoint holding every input exactly.
    """
    if not values or not all(isinstance(v, FixedPoint) for v in values):
        raise TypeError("concat expected a non-empty list of FixedPoint. "
                        f"Received: values={[type(v).__name__ for v in values]}")
    if all(v.frac_bits is values[0].frac_bits for v in values) and values[0].per_tensor:
        target, aligned = values[0].frac_bits, values
    else:
        target = fold_static(lambda *fs: tf.reduce_max(tf.stack([tf.reduce_max(f) for f in fs])),
                             *[v.frac_bits for v in values])
        aligned = [v._left_align(target, None, "concat")[0] for v in values]
    value_bits = check_result_bits(max(v.value_bits for v in aligned), "concat")
    dtype = tf.float64 if value_bits > 23 else tf.float32
    try:
        out = tf.concat([tf.cast(v.values, dtype) for v in aligned], axis)
    except (ValueError, tf.errors.InvalidArgumentError) as e:
        raise ValueError("concat expected FixedPoints of matching shapes except on axis "
                         f"{axis}. Received: shapes {[v.shape for v in values]}") from e
    return FixedPoint(out, value_bits, target)
