"""The requantization: ``y = clip(round(x * m), low, high)``, a rounded shift (``m = 2^s``, a
FixedPoint) or a QFloat's quantized scales times a shift (``m = s_int * 2^s``), then the clip
to the output range, with a straight-through gradient.

:func:`requantize_reference` is the op-by-op body; :func:`requantize` runs it, or a fast path
of :mod:`~quantizeml.recipes.fast_paths` (one fused kernel, on the float32 parts of a deferred
accumulator, or differentiated in one expression in train steps).
"""
import tensorflow as tf

from ..tensors.carrier import MAX_VALUE_BITS, carrier_dtype, round_half_up, round_shifted_half_up
from ..tensors.fixed_point import FixedPoint, shift_values
from ..tensors.gradients import custom_gradient
from ..tensors.qfloat import QFloat
from . import fast_paths

__all__ = ["requantize", "requantize_reference", "clip_in_carrier", "rounded_shift",
           "rounded_multiply", "rounded_scaling", "qfloat_to_fixed_point",
           "qfloat_requantization"]


def clip_in_carrier(values, low, high, scalar_top=True):
    """``min(max(values, low), high)`` in the dtype of ``low`` (integer bounds), with the
    gradient of a clip (``dy`` where nothing was clipped, 0 elsewhere) from one comparison.

    Integer maths: ``y = min(max(x, low), high)``.

    Casting to the narrower carrier first is exact within the bounds and monotonic outside,
    so the clip is the same. The bounds get no gradient (integer constants). ``scalar_top``
    clips with a scalar when a per-channel ``high`` is the same on every channel (False in
    fused kernels, where broadcasting costs nothing).
    """
    @custom_gradient
    def clip(values):
        cast = tf.cast(values, low.dtype)
        floor = tf.maximum(cast, low)
        if high.shape.rank and scalar_top:
            # a per-channel bound (a ReLU's maximum) broadcasts 2-3 times slower than a
            # scalar: use its largest value when it is the same for every channel
            top = tf.reduce_max(high)
            clipped = tf.cond(tf.reduce_min(high) < top, lambda: tf.minimum(floor, high),
                              lambda: tf.minimum(floor, top))
        else:
            clipped = tf.minimum(floor, high)

        def grad(dy):
            return tf.cast(dy * tf.cast(tf.equal(clipped, cast), dy.dtype), values.dtype)
        return clipped, grad
    return clip(values)


def rounded_shift(value_bits):
    """``rounded(values, shift)``: the rounded shift ``round(x * 2^shift)`` (half up), in the
    carrier of the wider of the values and ``value_bits`` (see
    :func:`~quantizeml.tensors.fixed_point.shift_values`); its slope is ``2^shift``."""
    return lambda values, shift: shift_values(values, shift, value_bits)


def rounded_multiply(values, multiplier):
    """``round(x * m)`` (half up) with a float64 multiplier ``m`` (an integer times a power of
    two, so that the product is an exact shifted integer)."""
    return round_shifted_half_up(tf.cast(values, tf.float64) * multiplier)


def rounded_scaling(x, frac_bits):
    """``round(x * 2^frac_bits)`` (half up) of float inputs, in float32 (a power-of-two
    scaling: exact; an overflow to +-inf is clipped like any saturated value)."""
    return round_half_up(x * tf.pow(2.0, frac_bits))


def requantize_reference(rounded, args, low, high, record=None):
    """The op-by-op reference of :func:`requantize`: the rounded values, reported to
    ``record(values)`` (the saturation report), then clipped.

    Integer maths: ``y = clip(round(x * m), low, high)``.
    """
    values = rounded(*args)
    if record is not None:
        record(values)
    return clip_in_carrier(values, low, high)


def requantize(rounded, args, low, high, slope=None, record=None, multiplier_slope=None):
    """The requantization ``clip(rounded(*args), low, high)`` in the dtype of ``low``.

    Integer maths: ``y = clip(round(x * m), low, high)``, equal to
    :func:`requantize_reference` bit for bit (and its gradient: the straight-through rounding
    times the clip's mask).

    Where saturation is recorded (``record`` given: eager and compiled eager calls) the
    reference body runs. In graphs both run as one fused kernel (on the float32 parts of a
    deferred accumulator when ``args[0]`` is one). Under a gradient tape in graphs (train
    steps), ``slope(*args[1:])`` (the float32 derivative of ``rounded`` in ``args[0]`` with a
    straight-through rounding, broadcast on the values) gives the gradient of the whole chain
    in one expression (see :func:`~quantizeml.recipes.fast_paths.ste_requantized`).

    Args:
        rounded (callable): ``rounded(values, *args[1:])``, exact rounded integers.
        args (tuple): the values to requantize, then the other arguments of ``rounded``.
        low (tf.Tensor): the lower bound, in the output carrier.
        high (tf.Tensor): the upper bound (scalar or per channel), in the output carrier.
        slope (callable, optional): ``slope(*args[1:])``, see above. Defaults to None.
        record (callable, optional): ``record(values)``, the saturation report of the
            rounded values (given only where saturation is observed). Defaults to None.
        multiplier_slope (callable, optional): ``multiplier_slope(args[0])``, the derivative
            of ``rounded`` in ``args[1]``: in train steps ``args[1]`` (a multiplier of the
            values) then gets its gradient too. Defaults to None (a constant of the step).

    Returns:
        tf.Tensor: the requantized integer values.
    """
    path = fast_paths.requantize_path(args[0], record is not None, slope is not None)
    if path == fast_paths.REFERENCE:
        return requantize_reference(rounded, args, low, high, record)
    if path == fast_paths.STE:
        return fast_paths.ste_requantized(rounded, args, low, high, slope(*args[1:]),
                                          multiplier_slope)

    def kernel(values, low, high, *args):
        return clip_in_carrier(rounded(values, *args), low, high, scalar_top=False)
    return fast_paths.fused_requantized(kernel, args, low, high)


def qfloat_to_fixed_point(inputs, scale_bits, narrow=False):
    """A QFloat as a FixedPoint: the values times the scales quantized on ``scale_bits``.

    Integer maths: ``y = x * s_int`` with ``frac_y = frac_x + frac_s``, an exact product wider
    than the buffer (``value_bits + scale_bits + 1`` bits) that the requantization shifts
    back (or that the caller clips to its buffer).

    Args:
        inputs (QFloat): the QFloat.
        scale_bits (int): the bits of the quantized scales.
        narrow (bool, optional): carry the product in the narrowest exact carrier (float32 up
            to 23 value bits) instead of float64. Defaults to False.
    """
    scales = QFloat.quantize_scales(inputs.scales, scale_bits)
    exact_bits = inputs.value_bits + scales.value_bits + 1
    value_bits = min(exact_bits, MAX_VALUE_BITS)
    dtype = carrier_dtype(value_bits) if narrow else tf.float64
    values = tf.cast(inputs.values, dtype) * tf.cast(scales.values, dtype)
    return FixedPoint(values, value_bits, inputs.frac_bits + scales.frac_bits,
                      clip=exact_bits > MAX_VALUE_BITS)


def qfloat_requantization(scales, frac_in_bits, frac_bits, scale_bits, low, value_bits,
                          relu=False, max_value=None):
    """The parameters of a QFloat's requantization in one exact rounded multiplication.

    Integer maths: ``y = clip(round(x * s_int * 2^(frac_out - frac_in - s_frac)))``: the
    quantized scales and the shift form one float64 multiplier (an 8-bit integer times a power
    of two), and the product with the values is the exact integer ``x * s_int`` shifted, so
    :func:`rounded_multiply` rounds it exactly. With ``relu``, the values are clipped at 0 and
    at ``max_value`` (floored on the input grid, then rounded on the output one) first
    (rounding is monotonic: clipping before or after it is the same).

    Returns:
        tuple: ``(multiplier, low, high, relu_high)``: the float64 multiplier of the values,
        the output bounds (``high`` None for the output range's) and the ReLU bound on the
        output grid (None without one).
    """
    scales = QFloat.quantize_scales(scales, scale_bits)
    frac_in = frac_in_bits + scales.frac_bits
    shift = tf.cast(frac_bits - frac_in, tf.float64)
    two = tf.constant(2.0, tf.float64)
    multiplier = tf.cast(scales.values, tf.float64) * tf.pow(two, shift)
    high, relu_high = None, None
    if relu:
        low = 0.0
        if max_value is not None:
            # the ReLU bound on the input grid (floored), then on the output one
            max_int = tf.floor(float(max_value) * tf.pow(two, tf.cast(frac_in, tf.float64)))
            relu_high = round_shifted_half_up(max_int * tf.pow(two, shift))
            high = tf.minimum(relu_high, 2.0**value_bits - 1)
    return multiplier, low, high, relu_high
