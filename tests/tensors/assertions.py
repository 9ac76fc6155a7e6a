"""Building FixedPoints from numpy integers, and asserting their exact contents."""
import numpy as np
import tensorflow as tf

from quantizeml.tensors import FixedPoint


def ints(t):
    """The integer values of a tensor as int64, checking that they are integers."""
    v = np.asarray(t.numpy() if hasattr(t, "numpy") else t, np.float64)
    np.testing.assert_array_equal(v, np.round(v), err_msg="values are not integers")
    return v.astype(np.int64)


def fixed_point(values, value_bits, frac_bits):
    return FixedPoint(tf.constant(np.asarray(values, np.float64)), value_bits, frac_bits)


def check(fp, values, value_bits, frac_bits):
    """Asserts a FixedPoint has exactly these values, value bits, fractional bits and carrier."""
    assert isinstance(fp, FixedPoint)
    assert fp.value_bits == value_bits
    assert fp.values.dtype == (tf.float32 if value_bits <= 23 else tf.float64)
    np.testing.assert_array_equal(ints(fp.values), np.asarray(values, np.int64))
    np.testing.assert_array_equal(fp.frac_bits.numpy(), np.asarray(frac_bits, np.float32),
                                  strict=True)  # same shape: per-tensor or per-axis
