"""fake_quant_with_min_max_vars against TF's fake-quant ops (values and gradients)."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizeml.quantizers import fake_quant_with_min_max_vars
from quantizeml.quantizers.fake_quant import nudge


def assert_same(ours, oracle):
    """Outputs and input gradients bit-exact; min/max gradients are sums (order may differ)."""
    for name, a, b in zip(("outputs", "d_inputs"), ours, oracle):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for name, a, b in zip(("d_min", "d_max"), ours[2:], oracle[2:]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)


def values_and_grads(fn, x, min_vals, max_vals):
    """fn(x, min, max) and the gradients of sum(fn * u) w.r.t. x, min and max."""
    x = tf.constant(x)
    mn, mx = tf.Variable(min_vals, dtype=tf.float32), tf.Variable(max_vals, dtype=tf.float32)
    upstream = tf.constant(np.random.default_rng(1).uniform(0.5, 2, x.shape), x.dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x, mn, mx)
        loss = tf.reduce_sum(y * upstream)
    return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, mn, mx])]


def inputs_with_boundaries(min_val, max_val, num_bits, narrow_range, size=400):
    """Random inputs plus the nudged bounds, the levels and the midpoints between levels."""
    nmin, nmax, scale = [t.numpy() for t in nudge(tf.constant(min_val, tf.float32),
                                                  tf.constant(max_val, tf.float32),
                                                  num_bits, narrow_range)]
    rng = np.random.default_rng(0)
    levels = nmin + scale * np.arange(0, min((1 << num_bits), 64))
    special = np.concatenate([[nmin, nmax, 0.0, min_val, max_val], levels, levels + scale / 2,
                              np.nextafter(np.float32([nmin, nmax]), np.float32(0))])
    spread = max(abs(min_val), abs(max_val), 1.0) * 1.5
    return np.concatenate([rng.uniform(-spread, spread, size), special]).astype(np.float32)


RANGES = [(-1.0, 1.0), (-6.0, 6.0), (-0.3, 2.7), (0.25, 3.0), (-3.0, -0.5), (-1e-3, 2e-3),
          (0.0, 0.0), (-2.5, 0.0)]
RANGE_IDS = ["sym1", "sym6", "asym", "min_positive", "max_negative", "tiny", "zero", "max_zero"]


@pytest.mark.parametrize("min_val, max_val", RANGES, ids=RANGE_IDS)
@pytest.mark.parametrize("num_bits", [2, 4, 8, 16], ids=lambda b: f"{b}bits")
@pytest.mark.parametrize("narrow_range", [False, True], ids=["wide", "narrow"])
def test_per_tensor_equals_tf_op(min_val, max_val, num_bits, narrow_range):
    x = inputs_with_boundaries(min_val, max_val, num_bits, narrow_range)
    ours = values_and_grads(
        lambda t, mn, mx: fake_quant_with_min_max_vars(t, mn, mx, num_bits, narrow_range),
        x, min_val, max_val)
    oracle = values_and_grads(
        lambda t, mn, mx: tf.quantization.fake_quant_with_min_max_vars(
            t, mn, mx, num_bits=num_bits, narrow_range=narrow_range),
        x, min_val, max_val)
    assert_same(ours, oracle)


PER_CHANNEL_MIN = [-1.0, -0.3, 0.2, 0.0, -4.0]
PER_CHANNEL_MAX = [1.0, 0.7, 2.5, 0.0, -1.0]


@pytest.mark.parametrize("num_bits", [3, 8], ids=lambda b: f"{b}bits")
@pytest.mark.parametrize("narrow_range", [False, True], ids=["wide", "narrow"])
def test_per_channel_last_axis_equals_tf_op(num_bits, narrow_range):
    x = np.random.default_rng(0).uniform(-5, 3, (6, 4, 5)).astype(np.float32)
    ours = values_and_grads(
        lambda t, mn, mx: fake_quant_with_min_max_vars(t, mn, mx, num_bits, narrow_range,
                                                       axis=-1),
        x, PER_CHANNEL_MIN, PER_CHANNEL_MAX)
    oracle = values_and_grads(
        lambda t, mn, mx: tf.quantization.fake_quant_with_min_max_vars_per_channel(
            t, mn, mx, num_bits=num_bits, narrow_range=narrow_range),
        x, PER_CHANNEL_MIN, PER_CHANNEL_MAX)
    assert_same(ours, oracle)


@pytest.mark.parametrize("axis", [0, 1, -2], ids=["axis0", "axis1", "axis-2"])
def test_per_channel_any_axis_equals_tf_op_on_transposed_inputs(axis):
    x = np.random.default_rng(0).uniform(-5, 3, (5, 5, 3)).astype(np.float32)
    last = x.ndim - 1
    perm = list(range(x.ndim))
    perm[axis], perm[last] = perm[last], perm[axis]
    ours = values_and_grads(
        lambda t, mn, mx: fake_quant_with_min_max_vars(t, mn, mx, 6, axis=axis),
        x, PER_CHANNEL_MIN, PER_CHANNEL_MAX)
    oracle = values_and_grads(
        lambda t, mn, mx: tf.transpose(tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.transpose(t, perm), mn, mx, num_bits=6), perm),
        x, PER_CHANNEL_MIN, PER_CHANNEL_MAX)
    assert_same(ours, oracle)


def test_float16_inputs_are_computed_in_float32():
    x = np.random.default_rng(0).uniform(-2, 2, 100).astype(np.float16)
    ours = fake_quant_with_min_max_vars(x, -1.0, 1.5, 5)
    oracle = tf.quantization.fake_quant_with_min_max_vars(x.astype(np.float32), -1.0, 1.5, 5)
    assert ours.dtype == tf.float16
    np.testing.assert_array_equal(ours.numpy(), oracle.numpy().astype(np.float16))


def test_graph_mode_and_scalar_of_shape_one():
    x = np.random.default_rng(0).uniform(-2, 2, (3, 7)).astype(np.float32)
    mn, mx = tf.Variable([-1.2]), tf.Variable([0.8])
    fn = tf.function(lambda t: fake_quant_with_min_max_vars(t, mn, mx, 4, True))
    oracle = tf.quantization.fake_quant_with_min_max_vars(x, -1.2, 0.8, num_bits=4,
                                                          narrow_range=True)
    np.testing.assert_array_equal(fn(x).numpy(), oracle.numpy())


def test_graph_mode_min_greater_than_max_fails_at_run_time():
    mn, mx = tf.Variable(1.0), tf.Variable(-1.0)
    fn = tf.function(lambda t: fake_quant_with_min_max_vars(t, mn, mx))
    with pytest.raises(tf.errors.InvalidArgumentError, match="min_vals <= max_vals"):
        fn(tf.zeros((2,)))


@settings(max_examples=40, deadline=None)
@given(st.floats(-8, 4, allow_subnormal=False), st.floats(1e-3, 10), st.integers(2, 16),
       st.booleans())
def test_property_equals_tf_op(min_val, width, num_bits, narrow_range):
    max_val = min_val + width
    x = inputs_with_boundaries(min_val, max_val, num_bits, narrow_range, size=64)
    ours = fake_quant_with_min_max_vars(x, min_val, max_val, num_bits, narrow_range)
    oracle = tf.quantization.fake_quant_with_min_max_vars(x, min_val, max_val,
                                                          num_bits=num_bits,
                                                          narrow_range=narrow_range)
    np.testing.assert_array_equal(ours.numpy(), oracle.numpy())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_bits=1), ValueError, r"num_bits expected an int in \[2, 16\]"),
    (dict(num_bits=17), ValueError, r"num_bits expected an int in \[2, 16\]"),
    (dict(num_bits=8.0), ValueError, "num_bits expected"),
    (dict(min_vals=1.0, max_vals=-1.0), ValueError, "min_vals <= max_vals"),
    (dict(min_vals=[-1.0, -1.0], max_vals=[1.0, 1.0]), ValueError, "scalar min_vals"),
    (dict(min_vals=[-1.0, -1.0], max_vals=[1.0, 1.0], axis=0), ValueError, r"shape \(3,\)"),
    (dict(axis=2), ValueError, "axis"),
    (dict(narrow_range=1), TypeError, "narrow_range expected a bool"),
    (dict(inputs=np.zeros((3, 3), np.int32)), TypeError, "float inputs"),
], ids=["bits1", "bits17", "float_bits", "min_gt_max", "vector_per_tensor", "wrong_channels",
        "bad_axis", "int_narrow", "int_inputs"])
def test_bad_arguments(kwargs, error, match):
    args = dict(inputs=np.zeros((3, 3), np.float32), min_vals=-1.0, max_vals=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fake_quant_with_min_max_vars(**args)
