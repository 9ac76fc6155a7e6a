"""Helpers shared by the QTensor dispatchers."""
import numpy as np
import tensorflow as tf

from ..carrier import BUFFER_BITS
from ..fixed_point import FixedPoint, fold_static, static_max

#: Largest value bits a dispatched operation may produce (the 32-bit buffer, sign excluded).
MAX_RESULT_BITS = BUFFER_BITS - 1


def bits_for(bound):
    """Value bits that hold every integer of magnitude up to ``bound`` (a Python number), at
    least 1 (the fewest a FixedPoint has: a zero bound, e.g. ``x * 0`` or ``x + 0``, gets 1)."""
    return max(int(np.ceil(bound)).bit_length(), 1)


def check_result_bits(value_bits, op):
    """Raises ValueError when a result needs more value bits than the 32-bit buffer."""
    if value_bits > MAX_RESULT_BITS:
        raise ValueError(
            f"{op} expected a result that fits the {BUFFER_BITS}-bit buffer "
            f"({MAX_RESULT_BITS} value bits). Received: operands whose exact result needs "
            f"{value_bits} value bits; reduce their bitwidth (FixedPoint.rescale) first")
    return value_bits


def to_fixed_point_like(t, like, op):
    """Converts a tensor or Python number to a FixedPoint on the grid of ``like``.

    The tensor is quantized with the fractional bits of ``like``. When its value is known
    statically, it gets the exact value bits it needs; otherwise the value bits of ``like``,
    and a run-time check raises (InvalidArgumentError) rather than clip a value to them.
    """
    if isinstance(t, FixedPoint):
        return t
    t = tf.cast(tf.convert_to_tensor(t), tf.float32)
    static = tf.get_static_value(t)
    frac = tf.get_static_value(like.frac_bits)
    if static is not None and frac is not None:
        scaled = np.floor(np.asarray(static, np.float64) * 2.0 ** np.asarray(frac) + 0.5)
        bound = float(np.max(np.abs(scaled))) if scaled.size else 0.0
        value_bits = check_result_bits(bits_for(bound), op)
    else:
        value_bits = like.value_bits
        # round(scaled) lies in [-2^value_bits, 2^value_bits - 1] iff scaled lies in
        # [-2^value_bits - 0.5, 2^value_bits - 0.5)
        scaled = tf.cast(t, tf.float64) * tf.pow(tf.constant(2.0, tf.float64),
                                                 tf.cast(like.frac_bits, tf.float64))
        message = (f"{op}: a tensor operand does not fit the {value_bits} value bits of the "
                   "FixedPoint it is added to")
        high = tf.constant(2.0**value_bits - 0.5, tf.float64)
        low = tf.constant(-2.0**value_bits - 0.5, tf.float64)
        checks = [tf.debugging.assert_less(tf.reduce_max(scaled), high, message=message),
                  tf.debugging.assert_greater_equal(tf.reduce_min(scaled), low,
                                                    message=message)]
        with tf.control_dependencies(checks):
            t = tf.identity(t)
    return FixedPoint.quantize(t, value_bits, like.frac_bits)


def aligned_pair(x, y, op):
    """Aligns two FixedPoints on the element-wise maximum of their fractional bits.

    Returns:
        tuple: the aligned values of x and y, their common value bits (the widest), and the
        fractional bits.
    """
    if x.frac_bits is y.frac_bits:
        return x, y, x.frac_bits
    frac_bits = fold_static(tf.maximum, x.frac_bits, y.frac_bits)
    # Operands are widened to one bit below the buffer so that their sum fits it.
    xa = _aligned(x, frac_bits, op, MAX_RESULT_BITS - 1)
    ya = _aligned(y, frac_bits, op, MAX_RESULT_BITS - 1)
    return xa, ya, frac_bits


def _aligned(x, frac_bits, op, dynamic_bits):
    shift = fold_static(tf.subtract, frac_bits, x.frac_bits)
    max_shift = static_max(shift)
    if max_shift is not None and max_shift == 0:
        return x
    return x._left_align(frac_bits, None, op, dynamic_bits)[0]


def static_int(value):
    """``value`` as a Python int when it is an integer known statically, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None
