"""Carrier primitives: the 2-operation rounded shift, ceil_log2, exact reductions' gradients."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from quantizeml.tensors.carrier import exact_reduction, round_half_up, round_shifted_half_up
from quantizeml.tensors.fixed_point import ceil_log2

from .reference import SETTINGS


@SETTINGS
@given(st.sampled_from([(np.float32, 23), (np.float64, 52)]), st.integers(-60, 30),
       st.data())
def test_round_shifted_half_up_is_exact(dtype_bits, shift, data):
    """floor(n * 2^s + 0.5) for integers n of the carrier, against int64 floor division."""
    dtype, bits = dtype_bits
    vb = data.draw(st.integers(1, bits))
    n = np.asarray(data.draw(st.lists(st.integers(-2**vb, 2**vb - 1), min_size=1,
                                      max_size=20)), np.int64)
    # ties and their neighbours, where a rounded sum would go wrong
    if shift < 0 and -shift <= 62:
        half = 1 << (-shift - 1)
        n = np.concatenate([n, np.clip([half, half - 1, -half, -half - 1, 3 * half],
                                       -2**vb, 2**vb - 1)])
    x = tf.constant(n.astype(dtype) * dtype(2.0)**shift)
    got = round_shifted_half_up(x).numpy()
    if shift >= 0:
        expected = n * (1 << shift) if shift < 62 - vb else None
    else:
        expected = (n + (1 << (-shift - 1))) >> -shift if -shift < 62 else np.zeros_like(n)
    if expected is None:
        return
    int_max = 2.0**bits - 1
    # beyond the carrier's exact integers, a value may be off by one: callers clip it there
    inside = np.abs(expected) < int_max
    np.testing.assert_array_equal(got[inside], expected[inside])
    np.testing.assert_array_equal(got[inside], round_half_up(x).numpy()[inside])


def test_rounding_gradients_are_identity():
    x = tf.constant([0.3, 1.5, -2.5, 7.0])
    for fn in (round_half_up, round_shifted_half_up):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x) * tf.constant([1.0, 2.0, 3.0, 4.0])
        np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 2.0, 3.0, 4.0])


@SETTINGS
@given(st.lists(st.floats(2.0**-126, float(np.float32(3.0e38)), width=32, allow_subnormal=False), min_size=1,
                max_size=30))
def test_ceil_log2_matches_frexp(values):
    x = np.asarray(values, np.float32)
    mantissa, exponent = np.frexp(x.astype(np.float64))
    expected = np.where(mantissa == 0.5, exponent - 1, exponent)
    np.testing.assert_array_equal(ceil_log2(tf.constant(x)).numpy(), expected)


def test_ceil_log2_powers_of_two_and_neighbours():
    powers = np.float32(2.0) ** np.arange(-126, 128, dtype=np.float32)
    x = np.concatenate([powers, np.nextafter(powers, np.float32(np.inf)),
                        np.nextafter(powers[1:], np.float32(0))])
    mantissa, exponent = np.frexp(x.astype(np.float64))
    expected = np.where(mantissa == 0.5, exponent - 1, exponent)
    np.testing.assert_array_equal(ceil_log2(tf.constant(x)).numpy(), expected)


@pytest.mark.parametrize("magnitude", [2**6, 2**14], ids=["float32-branch", "float64-branch"])
def test_exact_reduction_values_and_float32_gradients(magnitude):
    """Above 2^24 the sums run in float64 (exact); the gradients are float32 ones."""
    rng = np.random.RandomState(0)
    x = rng.randint(-magnitude, magnitude, (4, 64)).astype(np.float64)
    w = rng.randint(-127, 128, (64, 8)).astype(np.float64)
    xt, wt = tf.constant(x), tf.constant(w)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xt, wt])
        y = exact_reduction(tf.linalg.matmul, xt, wt, max_abs_sum_bits_static=40)
        loss = tf.reduce_sum(y * tf.constant(rng.uniform(-1, 1, (4, 8))))
    expected = x.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(y.numpy().astype(np.int64), expected)
    if magnitude > 2**10:  # the float32 bound fails: the float64 branch ran
        assert np.abs(x).max() * np.abs(w).sum(0).max() > 2**24
    gx, gw = tape.gradient(loss, [xt, wt])
    dy = tape.gradient(loss, y)
    # the float32 gradients of the matmul, cast back to the operands' dtype
    np.testing.assert_allclose(gx.numpy(), (dy.numpy().astype(np.float32)
                                            @ w.astype(np.float32).T), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(gw.numpy(), (x.astype(np.float32).T
                                            @ dy.numpy().astype(np.float32)), rtol=1e-5, atol=1e-2)
    assert gx.dtype == tf.float64 and gw.dtype == tf.float64


@pytest.mark.parametrize("x_bits, magnitude", [(None, 2**6), (7, 2**6), (None, 2**14), (15, 2**14)])
def test_exact_reduction_bound(x_bits, magnitude):
    """with_bound: a bound of the result magnitudes (add_bias skips its clips with it), the
    run-time bound ``max|x| * L1(w)`` (or ``2^x_bits * L1(w)`` when it proves float32)."""
    rng = np.random.RandomState(1)
    x = rng.randint(-magnitude, magnitude, (4, 64)).astype(np.float32)
    w = rng.randint(-127, 128, (64, 8)).astype(np.float32)
    y, bound = exact_reduction(tf.linalg.matmul, tf.constant(x), tf.constant(w),
                               max_abs_sum_bits_static=40, x_bits=x_bits, with_bound=True)
    np.testing.assert_array_equal(y.numpy().astype(np.int64),
                                  x.astype(np.int64) @ w.astype(np.int64))
    l1 = np.abs(w.astype(np.float64)).sum(0).max()
    by_values = float(np.abs(x).max()) * l1
    assert np.abs(y.numpy()).max() <= bound.numpy()
    if x_bits is not None and 2.0**x_bits * l1 <= 2**24:
        assert bound.numpy() == 2.0**x_bits * l1
    else:
        assert bound.numpy() == min(by_values, 2.0**40)
    _, static = exact_reduction(tf.linalg.matmul, tf.constant(x[:, :2] % 4),
                                tf.constant(w[:2] % 4), max_abs_sum_bits_static=5,
                                with_bound=True)
    assert static.numpy() == 2.0**5
