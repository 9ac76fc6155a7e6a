"""The integer recipes (quantizeml.recipes): every fast path (fused, deferred, custom gradient)
equals the op-by-op reference body bit for bit, the reference bodies equal numpy integer maths,
and only the fast-path module imports tensorflow.python."""
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

import quantizeml
from quantizeml.recipes import alignment, bias, buffer, fast_paths, reduction, requantize
from quantizeml.tensors import FixedPoint
from tests.tensors.test_fusion import must_compile_functions

RNG = np.random.RandomState(0)


def matmul_terms(x_int, w_int, frac=4.0):
    x = FixedPoint(tf.cast(x_int, tf.float32), 8, frac)
    w = FixedPoint(tf.cast(w_int, tf.float32), 7, 3.0)
    return x, w


def numpy_clip(v, bits):
    return np.clip(v, -2.0**(bits - 1), 2.0**(bits - 1) - 1)


def test_only_fast_paths_imports_tensorflow_python():
    root = pathlib.Path(quantizeml.__file__).parent
    importing = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if re.search(r"^\s*(from|import)\s+tensorflow\.python", p.read_text(),
                                    re.MULTILINE))
    assert importing == ["recipes/fast_paths.py"]


@pytest.mark.parametrize("w_scale", [1, 2**14], ids=["float32", "float64"])
def test_exact_reduction_equals_reference_and_numpy(w_scale):
    x_int = RNG.randint(-128, 128, (16, 32)).astype(np.float64)
    w_int = RNG.randint(-128, 128, (32, 6)).astype(np.float64) * w_scale
    addend = tf.constant(RNG.randint(-2**20, 2**20, (6,)).astype(np.float64))
    expected = x_int @ w_int + addend.numpy()
    reference = reduction.exact_reduction_reference(tf.linalg.matmul, x_int, w_int, addend)
    np.testing.assert_array_equal(reference.numpy(), expected)

    @tf.function
    def fast(x, w):
        return reduction.exact_reduction(tf.linalg.matmul, x, w, 40, x_bits=7, addend=addend)
    got = fast(tf.constant(x_int, tf.float32), tf.constant(w_int, tf.float64))
    np.testing.assert_array_equal(got.numpy(), expected)
    # the float32 parts of inference graphs sum to the same integers
    parts, _ = tf.function(lambda x, w: reduction.reduction_parts(
        tf.linalg.matmul, x, w, 40, x_bits=7))(tf.constant(x_int, tf.float32),
                                                tf.constant(w_int, tf.float64))
    np.testing.assert_array_equal(fast_paths.sum_parts(*parts).numpy(), x_int @ w_int)


@pytest.mark.parametrize("buffer_bits", [32, 12], ids=["fits", "saturated"])
def test_add_bias_fast_path_equals_reference(buffer_bits):
    acc = FixedPoint(tf.constant(RNG.randint(-2**12, 2**12, (8, 6)), tf.float32), 20, 5.0)
    b = FixedPoint(tf.constant(RNG.randint(-2**10, 2**10, (6,)), tf.float32), 15, 5.0)
    expected = numpy_clip(numpy_clip(acc.values.numpy(), buffer_bits) + b.values.numpy(),
                          buffer_bits)
    reference = bias.add_bias_reference(acc, b, buffer_bits)
    np.testing.assert_array_equal(reference.numpy(), expected)
    if buffer_bits == 12:
        assert np.any(reference.numpy() != acc.values.numpy() + b.values.numpy())

    fn = tf.function(lambda v: bias.add_bias(FixedPoint(v, 20, 5.0), b, buffer_bits).values)
    graph = fn.get_concrete_function(acc.values).graph
    assert must_compile_functions(graph.as_graph_def())  # the checked path: a fused sum
    np.testing.assert_array_equal(fn(acc.values).numpy(), expected)


@pytest.mark.parametrize("buffer_bits", [32, 14], ids=["fits", "saturated"])
@pytest.mark.parametrize("taped", [False, True], ids=["deferred", "fused"])
def test_reduce_and_add_bias_fast_paths_equal_reference(buffer_bits, taped):
    """Inference graphs defer the sum to the requantization (DEFERRED), train steps add the
    bias in the reduction's kernel (FUSED): both equal the reference composition."""
    x_int = RNG.randint(-128, 128, (8, 32)).astype(np.float32)
    w_int = RNG.randint(-128, 128, (32, 6)).astype(np.float32)
    b_fp = FixedPoint(tf.constant(RNG.randint(-2**12, 2**12, (6,)), tf.float32), 20, 7.0)
    low, high = tf.constant(-128.0), tf.constant(127.0)
    shift = tf.constant(-6.0)
    rounded = requantize.rounded_shift(31)

    def requantized(acc, record=None):
        return requantize.requantize(rounded, (acc.values, shift), low, high,
                                     slope=lambda s: tf.pow(2.0, s), record=record)

    acc_ref = numpy_clip(numpy_clip(x_int.astype(np.float64) @ w_int, buffer_bits)
                         + b_fp.values.numpy(), buffer_bits)
    expected = np.clip(np.floor(acc_ref * 2.0**-6 + 0.5), -128, 127)

    def run(x, w):
        xq, wq = matmul_terms(x, w)
        terms = reduction.ReductionTerms(tf.linalg.matmul, xq, wq)
        acc = bias.reduce_and_add_bias(terms, lambda frac, scales: b_fp, buffer_bits)
        return requantized(acc)

    x, w = tf.constant(x_int), tf.constant(w_int)
    if taped:
        @tf.function
        def step(x, w):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = run(x, w)
            return y, tape.gradient(y, x)
        graph = step.get_concrete_function(x, w).graph
        assert must_compile_functions(graph.as_graph_def())  # the fused custom gradients
        got, _ = step(x, w)
    else:
        fn = tf.function(run)
        graph = fn.get_concrete_function(x, w).graph
        deferred = fast_paths._DEFERRED.get(graph, {})
        assert deferred and all(ref.deref().consumers() == [] for ref in deferred)
        got = fn(x, w)
    np.testing.assert_array_equal(got.numpy(), expected)
    # the op-by-op eager reference (recording both clips)
    records = []
    xq, wq = matmul_terms(x_int, w_int)
    terms = reduction.ReductionTerms(tf.linalg.matmul, xq, wq)
    acc = bias.reduce_and_add_bias(terms, lambda frac, scales: b_fp, buffer_bits,
                                   record=lambda v, vb: records.append(vb))
    np.testing.assert_array_equal(acc.values.numpy(), acc_ref)
    # the reference path ran: it reports the clips the bounds do not prove useless
    assert records == ([] if buffer_bits == 32 else [13, 13])
    np.testing.assert_array_equal(requantized(acc, record=records.append).numpy(), expected)


def test_requantize_ste_gradient_equals_reference():
    """The train-step requantization (one fused expression, STE) has the values and the
    gradient of the op-by-op reference body (straight-through rounding, clip mask)."""
    values = tf.constant(RNG.randint(-2**14, 2**14, (64, 4)).astype(np.float32))
    shift = tf.constant([-5.0, -6.0, -7.0, -8.0])
    low, high = tf.constant(-128.0), tf.constant(127.0)
    rounded = requantize.rounded_shift(15)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(values)
            y = fn()
        return y, tape.gradient(y, values, output_gradients=tf.ones_like(y) * 3.0)

    y_ref, g_ref = grads(lambda: requantize.requantize_reference(rounded, (values, shift), low,
                                                                 high))
    step = tf.function(lambda: grads(lambda: requantize.requantize(
        rounded, (values, shift), low, high, slope=lambda s: tf.pow(2.0, s))))
    graph = step.get_concrete_function().graph
    assert must_compile_functions(graph.as_graph_def())
    y_fast, g_fast = step()
    np.testing.assert_array_equal(y_fast.numpy(), y_ref.numpy())
    np.testing.assert_array_equal(g_fast.numpy(), g_ref.numpy())
    expected = np.clip(np.floor(values.numpy() * 2.0**shift.numpy() + 0.5), -128, 127)
    np.testing.assert_array_equal(y_ref.numpy(), expected)
    assert 0 < np.mean(g_ref.numpy() == 0) < 1  # some values clipped, some kept


def test_requantize_ste_multiplier_gradient_equals_reference():
    """With ``multiplier_slope`` the train-step requantization also gives the multiplier (the
    QFloat requantization scale, per channel) the reference chain's gradient: ``sum(dy * x)``
    over the values kept (numpy oracle)."""
    values = tf.constant(RNG.randint(-2**10, 2**10, (64, 4)).astype(np.float32))
    multiplier = tf.constant([2.0**-3 * 5, 2.0**-4 * 7, 2.0**-5 * 3, 2.0**-6 * 9], tf.float64)
    low, high = tf.constant(-128.0), tf.constant(127.0)
    upstream = tf.constant(RNG.normal(0, 1, (64, 4)).astype(np.float32))

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([values, multiplier])
            y = fn()
        return (y,) + tuple(tape.gradient(y, [values, multiplier], output_gradients=upstream))

    y_ref, gv_ref, gm_ref = grads(lambda: requantize.requantize_reference(
        requantize.rounded_multiply, (values, multiplier), low, high))
    step = tf.function(lambda: grads(lambda: requantize.requantize(
        requantize.rounded_multiply, (values, multiplier), low, high,
        slope=lambda m: tf.cast(m, tf.float32), multiplier_slope=lambda v: v)))
    y_fast, gv_fast, gm_fast = step()
    np.testing.assert_array_equal(y_fast.numpy(), y_ref.numpy())
    np.testing.assert_allclose(gv_fast.numpy(), gv_ref.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gm_fast.numpy(), gm_ref.numpy(), rtol=1e-6)
    x, m = values.numpy().astype(np.float64), multiplier.numpy()
    rounded = np.floor(x * m + 0.5)
    kept = (rounded >= -128) & (rounded <= 127)
    expected = np.where(kept, upstream.numpy() * x, 0.0).sum(0)
    np.testing.assert_allclose(gm_ref.numpy(), expected, rtol=1e-6)
    assert 0 < kept.mean() < 1  # some values clipped, some kept
    # without multiplier_slope the multiplier is a constant of the step, as before
    plain = tf.function(lambda: grads(lambda: requantize.requantize(
        requantize.rounded_multiply, (values, multiplier), low, high,
        slope=lambda m: tf.cast(m, tf.float32))))
    assert plain()[2] is None


def test_align_equals_reference_and_numpy():
    values = RNG.randint(-128, 128, (5, 4)).astype(np.float32)
    frac = np.array([3.0, 5.0, 2.0, 5.0], np.float32)
    fp = FixedPoint(tf.constant(values), 7, tf.constant(frac))
    got, ref = alignment.align(fp), alignment.align_reference(fp)
    expected = values * 2.0**(frac.max() - frac)
    np.testing.assert_array_equal(got.values.numpy(), expected)
    np.testing.assert_array_equal(ref.values.numpy(), expected)
    assert float(got.frac_bits) == float(ref.frac_bits) == 5.0
    # through the weights: the same integer sums
    w = RNG.randint(-8, 8, (4, 3)).astype(np.float32)
    x, w_aligned, _, _ = alignment.align_through_weights(fp, tf.constant(w))
    np.testing.assert_array_equal((x.values @ w_aligned).numpy(), expected @ w)


def test_clip_to_buffer_reports_and_clips():
    fp = FixedPoint(tf.constant([-5000.0, 3.0, 5000.0]), 13, 0.0)
    seen = []
    clipped = buffer.clip_to_buffer(fp, 12, record=lambda v, vb: seen.append(vb))
    np.testing.assert_array_equal(clipped.values.numpy(), [-2048.0, 3.0, 2047.0])
    assert seen == [11]
    assert buffer.clip_to_buffer(fp, 32) is fp
