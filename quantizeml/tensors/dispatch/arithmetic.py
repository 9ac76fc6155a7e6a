"""Element-wise arithmetic on QTensors: add, subtract, multiply, negative, abs."""
from typing import Union

import numpy as np
import tensorflow as tf

from ..fixed_point import FixedPoint, fold_static
from ..qfloat import QFloat
from ..qtensor import QTensor
from .common import aligned_pair, bits_for, check_result_bits, static_int, to_fixed_point_like


def _check_shapes(x, y, op):
    try:
        tf.broadcast_static_shape(x.shape, y.shape)
    except ValueError:
        raise ValueError(f"{op} expected operands of broadcastable shapes. Received: "
                         f"x.shape={x.shape}, y.shape={y.shape}") from None


def _check_same_scales(x, y, op):
    sx, sy = tf.get_static_value(x.scales), tf.get_static_value(y.scales)
    if sx is not None and sy is not None and not np.array_equal(
            np.broadcast_to(sx, np.broadcast_shapes(np.shape(sx), np.shape(sy))),
            np.broadcast_to(sy, np.broadcast_shapes(np.shape(sx), np.shape(sy)))):
        raise ValueError(f"{op} expected two QFloats with the same scales (quantize one on the "
                         "other with AlignedWeightQuantizer). Received: different scales")


def add_fixed_points(x, y, op="add"):
    """Exact sum of two FixedPoints aligned on their largest fractional bits."""
    _check_shapes(x, y, op)
    xa, ya, frac_bits = aligned_pair(x, y, op)
    value_bits = check_result_bits(max(xa.value_bits, ya.value_bits) + 1, op)
    dtype = tf.float64 if value_bits > 23 else tf.float32
    values = tf.cast(xa.values, dtype) + tf.cast(ya.values, dtype)
    return FixedPoint(values, value_bits, frac_bits)


def _add(x, y, op):
    if isinstance(x, QFloat) or isinstance(y, QFloat):
        if not (isinstance(x, QFloat) and isinstance(y, QFloat)):
            raise TypeError(f"{op} expected a QFloat operand to be added to another QFloat "
                            f"with the same scales. Received: x={type(x).__name__}, "
                            f"y={type(y).__name__}")
        _check_same_scales(x, y, op)
        return QFloat(add_fixed_points(x.fp, y.fp, op), x.scales)
    if not isinstance(x, FixedPoint):
        x = to_fixed_point_like(x, y, op)
    if not isinstance(y, FixedPoint):
        y = to_fixed_point_like(y, x, op)
    return add_fixed_points(x, y, op)


def negative(x):
    """Exact negation (one more value bit, since -(-2^n) = 2^n)."""
    if isinstance(x, QFloat):
        return QFloat(negative(x.fp), x.scales)
    if isinstance(x, FixedPoint):
        return FixedPoint(-x.values, check_result_bits(x.value_bits + 1, "negative"),
                          x.frac_bits)
    return -tf.convert_to_tensor(x)


QTensorLike = Union[FixedPoint, QFloat]
#: A plain operand: only matched when the other operand is a QTensor.
Plain = Union[tf.Tensor, tf.Variable, np.ndarray, float, int]


@tf.experimental.dispatch_for_api(tf.math.add, {"x": QTensorLike})
def _add_x(x, y, name=None):
    return _add(x, y, "add")


@tf.experimental.dispatch_for_api(tf.math.add, {"x": Plain, "y": QTensorLike})
def _add_y(x, y, name=None):
    return _add(x, y, "add")


def _subtract(x, y):
    # A plain y is quantized on the grid of x before it is negated, so that x - y rounds y
    # like y - x and x + y do (negating first would round the halves of -y up).
    if isinstance(x, FixedPoint) and not isinstance(y, QTensor):
        y = to_fixed_point_like(y, x, "subtract")
    return _add(x, negative(y), "subtract")


@tf.experimental.dispatch_for_api(tf.math.subtract, {"x": QTensorLike})
def _sub_x(x, y, name=None):
    return _subtract(x, y)


@tf.experimental.dispatch_for_api(tf.math.subtract, {"x": Plain, "y": QTensorLike})
def _sub_y(x, y, name=None):
    return _subtract(x, y)


def multiply_fixed_points(x, y, op="multiply"):
    """Exact product: values multiply, fractional bits add, value bits add (+1)."""
    _check_shapes(x, y, op)
    value_bits = check_result_bits(x.value_bits + y.value_bits + 1, op)
    dtype = tf.float64 if value_bits > 23 else tf.float32
    values = tf.cast(x.values, dtype) * tf.cast(y.values, dtype)
    return FixedPoint(values, value_bits, fold_static(tf.add, x.frac_bits, y.frac_bits))


def _multiply(x, y):
    op = "multiply"
    if not isinstance(x, QTensor):
        x, y = y, x
    # x is a QTensor from here on
    if isinstance(y, QTensor):
        fx = x.fp if isinstance(x, QFloat) else x
        fy = y.fp if isinstance(y, QFloat) else y
        product = multiply_fixed_points(fx, fy, op)
        scales = None
        for t in (x, y):
            if isinstance(t, QFloat):
                scales = t.scales if scales is None else scales * t.scales
        return product if scales is None else QFloat(product, scales)
    k = static_int(y)
    if k is not None and isinstance(x, FixedPoint):
        value_bits = check_result_bits(bits_for(2.0**x.value_bits * abs(k)), op)
        dtype = tf.float64 if value_bits > 23 else tf.float32
        return FixedPoint(tf.cast(x.values, dtype) * k, value_bits, x.frac_bits)
    # A float factor becomes (part of) the scales of a QFloat: an exact representation.
    y = tf.cast(tf.convert_to_tensor(y), tf.float32)
    try:
        tf.broadcast_static_shape(x.shape, y.shape)
    except ValueError:
        raise ValueError(f"{op} expected operands of broadcastable shapes. Received: "
                         f"x.shape={x.shape}, y.shape={y.shape}") from None
    if isinstance(x, QFloat):
        return QFloat(x.fp, x.scales * y)
    return QFloat(x, y)


@tf.experimental.dispatch_for_api(tf.math.multiply, {"x": QTensorLike})
def _mul_x(x, y, name=None):
    return _multiply(x, y)


@tf.experimental.dispatch_for_api(tf.math.multiply, {"x": Plain, "y": QTensorLike})
def _mul_y(x, y, name=None):
    return _multiply(x, y)


@tf.experimental.dispatch_for_api(tf.math.negative, {"x": QTensorLike})
def _neg(x, name=None):
    return negative(x)


@tf.experimental.dispatch_for_api(tf.math.abs, {"x": QTensorLike})
def _abs(x, name=None):
    if isinstance(x, QFloat):
        return QFloat(x.fp.abs(), tf.abs(x.scales))
    return x.abs()
