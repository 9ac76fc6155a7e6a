"""Carrier dtypes for exact integer arithmetic.

quantizeml stores the integer values of a :class:`FixedPoint` in a floating-point tensor, the
*carrier*, because TensorFlow's CPU kernels for float32 are 2-3 times faster than their int32
counterparts, and int32 kernels wrap silently on overflow.

A float carrier is exact as long as every integer it holds, and every partial sum computed
while reducing, stays within its contiguous integer range:

* float32 holds every integer of magnitude up to 2^24, so it carries values of up to 23 value
  bits (plus the sign);
* float64 holds every integer up to 2^53, so it carries everything a 32-bit buffer (31 value
  bits plus the sign) can hold, and the products and sums of such values, up to 52 bits.

The carrier of a FixedPoint is chosen from its ``value_bits`` (a static Python int), so the dtype
of its values is known when a graph is traced. Reductions (matmul, convolutions) choose their
compute dtype from a bound of their partial sums: statically when the bitwidths prove float32
exact, otherwise at run time from the actual magnitudes of the operands (see
:func:`quantizeml.recipes.reduction.exact_reduction`).
"""
import tensorflow as tf

from .gradients import custom_gradient

#: Largest number of value bits a float32 carrier holds exactly.
FLOAT32_VALUE_BITS = 23
#: Largest number of value bits quantizeml supports (float64 carrier).
MAX_VALUE_BITS = 52
#: Default integer buffer of quantized operations, sign bit included.
BUFFER_BITS = 32


def carrier_dtype(value_bits):
    """Returns the float dtype that holds integers of ``value_bits`` bits (plus sign) exactly.

    Args:
        value_bits (int): the number of value bits, sign excluded.

    Returns:
        tf.DType: tf.float32 up to 23 value bits, tf.float64 beyond.
    """
    return tf.float32 if value_bits <= FLOAT32_VALUE_BITS else tf.float64


def check_value_bits(value_bits, name="value_bits"):
    """Validates a number of value bits and returns it as an int."""
    if isinstance(value_bits, bool) or not isinstance(value_bits, int):
        try:
            as_int = int(value_bits)
        except (TypeError, ValueError):
            as_int = None
        if as_int is None or as_int != value_bits or isinstance(value_bits, bool):
            raise TypeError(f"{name} expected an int. Received: {name}={value_bits!r}")
        value_bits = as_int
    if not 0 <= value_bits <= MAX_VALUE_BITS:
        raise ValueError(f"{name} expected an int in [0, {MAX_VALUE_BITS}]. "
                         f"Received: {name}={value_bits}")
    return value_bits


@custom_gradient
def round_half_up(x):
    """Rounds to the nearest integer, halves towards +inf (what a rounded right shift does).

    The gradient is the straight-through estimator (identity), so that quantization-aware
    training reaches the float weights.
    """
    # floor(x + 0.5) computed without rounding the sum: x + 0.5 rounds up to the next integer
    # for the largest float below a half (0.49999997 + 0.5 == 1.0 in float32). ``x - floor(x)``
    # is exact (Sterbenz for |x| >= 1, and rounds monotonically around 0.5 in (-1, 0)).
    floored = tf.floor(x)
    rounded = floored + tf.cast(x - floored >= tf.constant(0.5, x.dtype), x.dtype)

    def grad(dy):
        return dy
    return rounded, grad


@custom_gradient
def round_shifted_half_up(x):
    """``floor(x + 0.5)`` for integers scaled by a power of two, gradient identity (STE).

    Exact (equal to :func:`round_half_up`) when ``x = n * 2^s`` with an integer ``n`` that
    its carrier holds exactly (``|n| < 2^23`` in float32, ``2^52`` in float64), as the values
    of a FixedPoint shifted by ``2^s`` are:

    * ``s >= 0``: ``x`` is an integer and ``x + 0.5`` is exact below ``2^23`` (``2^52``);
      beyond, a tie may round up to ``x + 1``, which the clipping to the value bits of the
      carrier that follows absorbs;
    * ``-(bits(n) + 1) <= s < 0``: ``x + 0.5 = (n + 2^(-s-1)) * 2^s`` with
      ``|n + 2^(-s-1)| < 2^(bits(n) + 1)``, exact;
    * ``s < -(bits(n) + 1)``: ``|x| < 1/4`` and ``x + 0.5`` stays in ``(1/4, 3/4)``: 0.

    Two operations instead of the five of the general rounding, and no straight-through
    ``x + stop_gradient(r - x)`` arithmetic.
    """
    rounded = tf.floor(x + tf.constant(0.5, x.dtype))

    def grad(dy):
        return dy
    return rounded, grad


#: Largest static bound (bits) of the results that two float32 parts (``hi + lo``) hold exactly
#: (see :func:`quantizeml.recipes.reduction.reduction_parts`).
SPLIT_VALUE_BITS = 2 * (FLOAT32_VALUE_BITS + 1)
