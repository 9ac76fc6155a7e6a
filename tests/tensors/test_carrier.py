"""Carrier primitives: the 2-operation rounded shift, ceil_log2, exact reductions (their
gradients, and their float32 parts for inference)."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given
from hypothesis import strategies as st

from quantizeml.recipes.fast_paths import sum_parts
from quantizeml.recipes.reduction import SPLIT_VALUE_BITS, exact_reduction, reduction_parts
from quantizeml.tensors.carrier import round_half_up, round_shifted_half_up
from quantizeml.tensors.dispatch.common import bits_for
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
    if magnitude > 2**10:  # every float32 bound fails: the float64 branch ran
        assert (np.abs(x) @ np.abs(w)).max() > 2**24
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


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 16), st.integers(1, 64), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_reduction_parts_sum_exactly(x_bits, w_bits, terms, traced, seed):
    """The float32 parts of a reduction add up (in float64) to the exact integer result, up to
    the 48-bit static bound: one part (static float32), the float32 result plus a zero
    (run-time bound), or the float64 result split in two float32 halves; in eager calls and
    in graphs (the split fused)."""
    static_bits = bits_for(terms * 2.0**(x_bits + w_bits))
    assume(static_bits <= SPLIT_VALUE_BITS)
    rng = np.random.default_rng(seed)
    # values at the extremes of their ranges (the largest sums), and random ones
    x = rng.choice([-2**x_bits, 2**x_bits - 1, rng.integers(-2**x_bits, 2**x_bits)],
                   (3, terms)).astype(np.float64)
    w = rng.integers(-2**w_bits, 2**w_bits, (terms, 5)).astype(np.float64)
    def parts_fn(x, w):
        return reduction_parts(tf.linalg.matmul, x, w, static_bits, x_bits=x_bits)
    if traced:
        parts_fn = tf.function(parts_fn)
    parts, bound = parts_fn(tf.constant(x), tf.constant(w))
    expected = x.astype(np.int64) @ w.astype(np.int64)
    assert all(p.dtype == tf.float32 for p in parts)
    assert len(parts) == (1 if static_bits <= 24 else 2)
    np.testing.assert_array_equal(sum_parts(*parts).numpy().astype(np.int64), expected)
    assert np.abs(expected).max() <= bound.numpy() <= 2.0**static_bits


def test_reduction_parts_split_float64_sums():
    """Sums past 2^24 (the float64 branch) up to 2^47 are split exactly; above the 48-bit
    static bound the remainder would not fit float32: a clear error."""
    x = np.array([[2.0**23 - 1, -2.0**23, 12345.0], [1.0, 3.0, -7.0]])
    w = np.array([[2.0**23 - 1], [-2.0**23 + 3], [2.0**23 - 5]])
    (hi, lo), _ = reduction_parts(tf.linalg.matmul, tf.constant(x), tf.constant(w), 48)
    expected = x.astype(np.int64) @ w.astype(np.int64)
    assert np.abs(expected).max() > 2**46 and np.abs(lo.numpy()).max() > 0
    np.testing.assert_array_equal(sum_parts(hi, lo).numpy().astype(np.int64), expected)
    with pytest.raises(ValueError, match="max_abs_sum_bits_static expected <= 48"):
        reduction_parts(tf.linalg.matmul, tf.constant(x), tf.constant(w), 49)


@pytest.mark.parametrize("excess", [-1, 0], ids=["terms-below-2^24", "terms-at-2^24"])
def test_exact_reduction_bound_from_the_terms(excess):
    """One large input makes ``max|x| * L1(w)`` far looser than the sums: the largest
    ``sum_k |x_k| |w_k|`` of an output then decides. Below 2^24 the float32 reduction is exact
    (the bound is that largest sum); from 2^24 (where float32 could round 2^24 + 1 down to
    2^24) the float64 one runs."""
    rng = np.random.RandomState(2)
    w = rng.randint(-3, 4, (64, 8)).astype(np.float64)
    w[:, 0], w[0, 1:] = 1.0, 0.0
    x = rng.randint(-3, 4, (4, 64)).astype(np.float64)
    # row 0, column 0: one large input plus 63 ones
    x[0, 0], x[0, 1:] = 2**24 - 63 + excess, 1.0
    magnitudes = np.abs(x) @ np.abs(w)
    assert magnitudes.max() == magnitudes[0, 0] == 2**24 + excess
    loose = np.abs(x).max() * np.abs(w).sum(0).max()
    assert loose > 2**29
    for fn in (tf.linalg.matmul, tf.function(tf.linalg.matmul)):
        y, bound = exact_reduction(fn, tf.constant(x), tf.constant(w),
                                   max_abs_sum_bits_static=40, with_bound=True)
        np.testing.assert_array_equal(y.numpy().astype(np.int64),
                                      x.astype(np.int64) @ w.astype(np.int64))
        # float32 (bounded by the largest sum of magnitudes), or float64 (the loose bound)
        assert bound.numpy() == (2**24 - 1 if excess < 0 else loose)
