"""Numpy oracles for the quantized tensor tests: int64 integer arithmetic, float64 where exact.

Nothing here calls quantizeml: every expected value in ``tests/tensors`` comes from these
functions (or from plain numpy in the test itself), never from the code under test.
"""
import math

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: Hypothesis settings shared by the property tests: few examples, no deadline (TF is slow
#: to start and runs on two shared cores).
SETTINGS = settings(max_examples=20, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def int_min(value_bits):
    return -(1 << value_bits)


def int_max(value_bits):
    return (1 << value_bits) - 1


def clip(values, value_bits):
    """Clips int64 values to ``[-2^value_bits, 2^value_bits - 1]``."""
    return np.clip(np.asarray(values, np.int64), int_min(value_bits), int_max(value_bits))


def round_half_up(x):
    """floor(x + 0.5) of float32 (or exactly representable) inputs, exactly, as int64.

    The sum is computed in float64, where it is exact for every float32 input of magnitude
    below 2^28 (and for every integer up to 2^52).
    """
    x = np.asarray(x, np.float64)
    return np.floor(x + 0.5).astype(np.int64)


def quantize(x, value_bits, frac_bits):
    """Expected FixedPoint values of ``x`` with ``frac_bits`` (broadcast on the last axis)."""
    x = np.asarray(x, np.float64) * np.exp2(np.asarray(frac_bits, np.float64))
    return clip(round_half_up(x), value_bits)


def ceil_log2(r):
    """ceil(log2(r)) of a positive float, exactly, with frexp (r = m * 2^e, m in [0.5, 1))."""
    m, e = math.frexp(float(r))
    return e - 1 if m == 0.5 else e


def max_frac_bits(value_bits, ranges, clamp=True):
    """Expected ``FixedPoint.max_frac_bits``: value_bits - ceil(log2(|range|)), value_bits for
    a zero range, at most value_bits when clamped."""
    ranges = np.abs(np.asarray(ranges, np.float64))
    out = np.empty(ranges.shape, np.int64)
    for idx, r in np.ndenumerate(ranges):
        frac = value_bits if r == 0 else value_bits - ceil_log2(r)
        out[idx] = min(frac, value_bits) if clamp else frac
    return out


def shift_left_or_round(values, shift):
    """values * 2^shift, with a rounded (half up) right shift for negative shifts, in int64."""
    values, shift = np.broadcast_arrays(np.asarray(values, np.int64),
                                        np.asarray(shift, np.int64))
    out = np.empty(values.shape, np.int64)
    for idx, (v, s) in enumerate(zip(values.ravel(), shift.ravel())):
        v, s = int(v), int(s)
        out.flat[idx] = v << s if s >= 0 else (v + (1 << (-s - 1))) >> -s
    return out


def shift_left_or_floor(values, shift):
    """values * 2^shift, with a floored (arithmetic) right shift for negative shifts."""
    values, shift = np.broadcast_arrays(np.asarray(values, np.int64),
                                        np.asarray(shift, np.int64))
    out = np.empty(values.shape, np.int64)
    for idx, (v, s) in enumerate(zip(values.ravel(), shift.ravel())):
        v, s = int(v), int(s)
        out.flat[idx] = v << s if s >= 0 else v >> -s
    return out


def to_float(values, frac_bits):
    """values * 2^-frac_bits in float64 (exact for the integers and shifts used here)."""
    return np.asarray(values, np.float64) * np.exp2(-np.asarray(frac_bits, np.float64))


def value_bits_for(values):
    """The fewest value bits whose range ``[-2^n, 2^n - 1]`` holds every value."""
    values = np.asarray(values, np.int64)
    n = 0
    for v in values.ravel().tolist():
        n = max(n, v.bit_length() if v >= 0 else (-v - 1).bit_length())
    return n


def bit_length(bound):
    """Value bits holding every integer of magnitude up to ``bound`` (a Python int)."""
    return int(bound).bit_length()


# ---- hypothesis strategies -------------------------------------------------------------------
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def int_arrays(draw, value_bits, shape=None, in_range=True):
    """int64 arrays of FixedPoint values of ``value_bits`` (a bit beyond when not in_range),
    biased towards the boundaries."""
    shape = draw(SHAPES) if shape is None else shape
    lo, hi = int_min(value_bits), int_max(value_bits)
    if not in_range:
        lo, hi = 2 * lo - 1, 2 * hi + 2
    elements = st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, -1, 1]))
    return draw(hnp.arrays(np.int64, shape, elements=elements))


@st.composite
def frac_bits_for(draw, shape, per_axis=None, lo=-6, hi=12):
    """Integer fractional bits: a scalar, or a vector along the last axis of ``shape``."""
    per_axis = draw(st.booleans()) if per_axis is None else per_axis
    if per_axis:
        return draw(hnp.arrays(np.int64, (shape[-1],), elements=st.integers(lo, hi)))
    return np.int64(draw(st.integers(lo, hi)))


@st.composite
def fixed_points(draw, value_bits=None, per_axis=None, shape=None, frac_lo=-6, frac_hi=12):
    """(values, value_bits, frac_bits) of a FixedPoint, as numpy int64 / Python int."""
    if value_bits is None:
        value_bits = draw(st.sampled_from([1, 4, 7, 8, 15, 23, 24, 31]))
    values = draw(int_arrays(value_bits, shape))
    frac_bits = draw(frac_bits_for(values.shape, per_axis, frac_lo, frac_hi))
    return values, value_bits, frac_bits


def float32_arrays(shape, lo=-100.0, hi=100.0):
    return hnp.arrays(np.float32, shape,
                      elements=st.floats(lo, hi, width=32, allow_subnormal=False))
