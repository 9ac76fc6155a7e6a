"""TF op dispatch on QTensors, eager and inside tf.function, against numpy int64 references."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantizeml.tensors import FixedPoint, QFloat, concat

from . import reference as ref
from .reference import SETTINGS, int_arrays
from .assertions import check, fixed_point

SMALL_BITS = st.sampled_from([1, 4, 7, 8, 12])


@st.composite
def fixed_point_pairs(draw, value_bits=SMALL_BITS, frac_lo=-3, frac_hi=6):
    """Two FixedPoints (values, value_bits, frac_bits) of broadcastable shapes, each per-tensor
    or per-axis, with different fractional and value bits."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    shape_a = (n, c)
    shape_b = draw(st.sampled_from([(n, c), (1, c), (c,)]))
    out = []
    for shape in (shape_a, shape_b):
        bits = draw(value_bits)
        values = draw(int_arrays(bits, shape))
        frac_bits = draw(ref.frac_bits_for(shape, None, frac_lo, frac_hi))
        out.append((values, bits, frac_bits))
    return out


def aligned(values, value_bits, frac_bits, target):
    """Reference of the alignment of an operand on ``target`` fractional bits: the shifted
    values and the value bits widened by the largest shift."""
    shift = np.asarray(target) - np.asarray(frac_bits)
    return values << shift, value_bits + int(np.max(shift))


# ---- add, subtract ----------------------------------------------------------------------------
@SETTINGS
@given(fixed_point_pairs())
def test_add_fixed_points(run, pair):
    (va, ba, fa), (vb, bb, fb) = pair
    target = np.maximum(fa, fb)
    xa, bits_a = aligned(va, ba, fa, target)
    xb, bits_b = aligned(vb, bb, fb, target)
    out = run(lambda: fixed_point(va, ba, fa) + fixed_point(vb, bb, fb))
    check(out, xa + xb, max(bits_a, bits_b) + 1, target)
    out = run(lambda: tf.math.add(fixed_point(vb, bb, fb), fixed_point(va, ba, fa)))
    check(out, xa + xb, max(bits_a, bits_b) + 1, target)


@SETTINGS
@given(fixed_point_pairs())
def test_subtract_fixed_points(run, pair):
    (va, ba, fa), (vb, bb, fb) = pair
    target = np.maximum(fa, fb)
    xa, bits_a = aligned(va, ba, fa, target)
    xb, bits_b = aligned(vb, bb, fb, target)
    for out, expected in run(lambda: [
            (fixed_point(va, ba, fa) - fixed_point(vb, bb, fb), xa - xb),
            (tf.math.subtract(fixed_point(vb, bb, fb), fixed_point(va, ba, fa)), xb - xa)]):
        assert ref.value_bits_for(expected) <= out.value_bits <= max(bits_a, bits_b) + 2
        check(out, expected, out.value_bits, target)


OTHERS = {
    "python_float": 1.375,
    "python_int": -3,
    "numpy_array": np.array([0.5, -2.25, 3.0], np.float32),
    "tf_constant": tf.constant([[1.1, -0.3, 7.0]]),
}


@pytest.mark.parametrize("other", OTHERS.values(), ids=OTHERS.keys())
@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
def test_add_subtract_plain_operands_both_sides(run, other, per_axis):
    values = np.array([[100, -128, 7], [0, 127, -1]])
    frac_bits = np.array([1, 3, 2]) if per_axis else 2
    q = ref.round_half_up(np.asarray(other, np.float32) * np.exp2(frac_bits))  # other's grid

    def fn():
        fp = fixed_point(values, 7, frac_bits)
        return fp + other, other + fp, fp - other, other - fp

    for out, expected in zip(run(fn), [values + q, q + values, values - q, q - values]):
        assert ref.value_bits_for(expected) <= out.value_bits <= 10
        check(out, expected, out.value_bits, frac_bits)


def test_add_runtime_tensor_operand():
    """A tensor only known at run time is quantized on the FixedPoint's grid and value bits:
    it is exact when it fits them, and refused (never clipped) when it does not."""
    @tf.function(input_signature=[tf.TensorSpec((2,), tf.float32)])
    def fn(t):
        fp = fixed_point([1, -128], 7, 3)
        return fp + t, t - fp

    t = np.float32([15.875, -16.0])  # 127 and -128 on the grid of 3 fractional bits
    total, diff = fn(t)
    check(total, [1 + 127, -128 - 128], 8, 3)
    check(diff, [127 - 1, -128 + 128], 9, 3)
    for bad in ([15.9375, 0.0], [0.0, -16.125], [1000.0, -1000.0]):  # 127.5 and -129
        with pytest.raises(tf.errors.InvalidArgumentError, match="does not fit"):
            fn(np.float32(bad))


def test_add_dynamic_frac_bits_widens_to_the_buffer(run):
    x = np.array([[0.3, -1.7], [2.9, 0.01]], np.float32)
    y = np.array([[5.5, -0.25], [0.0, 100.0]], np.float32)

    def fn(x, y):
        # quantize without frac_bits: deduced from the data (at run time in a graph)
        return FixedPoint.quantize(x, 7) + FixedPoint.quantize(y, 7)

    out = run(fn, x, y)
    fx, fy = ref.max_frac_bits(7, np.max(np.abs(x))), ref.max_frac_bits(7, np.max(np.abs(y)))
    target = max(fx, fy)
    expected = (ref.quantize(x, 7, fx) << (target - fx)) + (ref.quantize(y, 7, fy) << (target - fy))
    # eager: 7 bits widened by the shift, plus 1; graph: the shift is only known at run time,
    # the operands are widened to one bit below the 32-bit buffer
    expected_bits = 7 + abs(int(fx - fy)) + 1 if run.mode == "eager" else 31
    check(out, expected, expected_bits, target)


def test_add_qfloats():
    a = QFloat(fixed_point([3, -4], 7, [1, 2]), np.float32([0.5, 0.25]))
    b = QFloat(fixed_point([1, 1], 7, 0), np.float32([0.5, 0.25]))
    out = a + b
    assert isinstance(out, QFloat)
    check(out.fp, [3 + 2, -4 + 4], 7 + 2 + 1, [1, 2])  # b is shifted by up to 2
    np.testing.assert_array_equal(out.to_float().numpy(),
                                  a.to_float().numpy() + b.to_float().numpy())


ADD_ERRORS = {
    "qfloat_plus_fixed_point": (lambda: QFloat(fixed_point([1], 7, 0), 0.5)
                                + fixed_point([1], 7, 0), TypeError, "QFloat"),
    "fixed_point_plus_qfloat": (lambda: fixed_point([1], 7, 0)
                                + QFloat(fixed_point([1], 7, 0), 0.5), TypeError, "QFloat"),
    "qfloat_plus_tensor": (lambda: QFloat(fixed_point([1], 7, 0), 0.5) + tf.constant([1.0]),
                           TypeError, "QFloat"),
    "qfloats_different_scales": (lambda: QFloat(fixed_point([1], 7, 0), 0.5)
                                 + QFloat(fixed_point([1], 7, 0), 0.25), ValueError, "scales"),
    "incompatible_shapes": (lambda: fixed_point(np.zeros((2, 3)), 7, 0)
                            + fixed_point(np.zeros((2, 2)), 7, 0), ValueError, "shapes"),
    "beyond_the_buffer": (lambda: fixed_point([1], 31, 0) + fixed_point([1], 31, 0),
                          ValueError, "32-bit buffer"),
    "shift_beyond_the_buffer": (lambda: fixed_point([1], 20, 0) + fixed_point([1], 4, 12),
                                ValueError, "32-bit buffer"),
}


@pytest.mark.parametrize("fn,error,match", ADD_ERRORS.values(), ids=ADD_ERRORS.keys())
def test_add_errors(run, fn, error, match):
    with pytest.raises(error, match=match):
        run(fn)


# ---- multiply ---------------------------------------------------------------------------------
@SETTINGS
@given(fixed_point_pairs())
def test_multiply_fixed_points(run, pair):
    (va, ba, fa), (vb, bb, fb) = pair
    out_ab, out_ba = run(lambda: (fixed_point(va, ba, fa) * fixed_point(vb, bb, fb),
                                  tf.math.multiply(fixed_point(vb, bb, fb),
                                                   fixed_point(va, ba, fa))))
    frac_bits = np.asarray(fa) + np.asarray(fb)
    check(out_ab, va * vb, ba + bb + 1, frac_bits)
    check(out_ba, vb * va, ba + bb + 1, frac_bits)


@pytest.mark.parametrize("k", [0, 1, -1, 2, 3, -5, 1000], ids=lambda k: f"k{k}")
def test_multiply_by_python_int_widens_exactly(run, k):
    values = np.array([-128, -1, 0, 1, 127])
    out_r, out_l = run(lambda: (fixed_point(values, 7, 3) * k, k * fixed_point(values, 7, 3)))
    bits = max(ref.bit_length(2**7 * abs(k)), 1)  # x * 0: 1 value bit, the fewest
    for out in (out_r, out_l):
        check(out, values * k, bits, 3)
        assert ref.value_bits_for(values * k) <= out.value_bits


@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
@pytest.mark.parametrize("factor", [0.3, np.float32([0.5, 1.5, -2.0])], ids=["scalar", "vector"])
def test_multiply_by_float_gives_qfloat(run, per_axis, factor):
    values = np.array([[100, -128, 7], [0, 127, -1]])
    frac_bits = np.array([1, 3, 2]) if per_axis else 2
    out_r, out_l = run(lambda: (fixed_point(values, 7, frac_bits) * tf.constant(factor),
                                factor * fixed_point(values, 7, frac_bits)))
    for out in (out_r, out_l):
        assert isinstance(out, QFloat)
        check(out.fp, values, 7, frac_bits)
        np.testing.assert_array_equal(out.scales.numpy(), np.float32(factor))
        np.testing.assert_array_equal(
            out.to_float().numpy(),
            ref.to_float(values, frac_bits).astype(np.float32) * np.float32(factor))


def test_multiply_qfloats(run):
    def fn():
        a = QFloat(fixed_point([[3, -4]], 7, [1, 2]), np.float32([0.5, 0.25]))
        b = QFloat(fixed_point([[5, 6]], 4, 1), np.float32(3.0))
        return a * b, a * fixed_point([[-2, 2]], 2, 0), fixed_point([[-2, 2]], 2, 0) * a

    ab, af, fa = run(fn)
    check(ab.fp, [[15, -24]], 12, [2, 3])
    np.testing.assert_array_equal(ab.scales.numpy(), [1.5, 0.75])
    for out in (af, fa):
        assert isinstance(out, QFloat)
        check(out.fp, [[-6, -8]], 10, [1, 2])
        np.testing.assert_array_equal(out.scales.numpy(), [0.5, 0.25])


def test_multiply_errors(run):
    with pytest.raises(ValueError, match="32-bit buffer"):
        run(lambda: fixed_point([1], 16, 0) * fixed_point([1], 15, 0))
    with pytest.raises(ValueError, match="32-bit buffer"):
        run(lambda: fixed_point([1], 24, 0) * 2**8)
    with pytest.raises(ValueError, match="shapes"):
        run(lambda: fixed_point(np.zeros((2, 3)), 7, 0) * fixed_point(np.zeros((4,)), 7, 0))
    with pytest.raises(ValueError, match="shapes"):
        run(lambda: fixed_point(np.zeros((2, 3)), 7, 0) * tf.ones((2,)))


def test_negative_and_abs(run):
    values = np.array([[-128, -3, 0, 127]])

    def fn():
        fp = fixed_point(values, 7, [0, 1, 2, 3])
        q = QFloat(fp, np.float32([1, 2, 3, 4]))
        return -fp, tf.math.negative(fp), tf.math.abs(fp), tf.abs(q)

    neg, neg2, absolute, qabs = run(fn)
    for out in (neg, neg2):
        check(out, -values, 8, [0, 1, 2, 3])
    check(absolute, np.abs(values), 8, [0, 1, 2, 3])
    check(qabs.fp, np.abs(values), 8, [0, 1, 2, 3])
    np.testing.assert_array_equal(qabs.scales.numpy(), [1, 2, 3, 4])


# ---- matmul -----------------------------------------------------------------------------------
@st.composite
def matmul_operands(draw):
    m, k, n = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 3))
    ba, bb = draw(st.sampled_from([1, 4, 7, 8, 12])), draw(st.sampled_from([1, 4, 7, 8]))
    va = draw(int_arrays(ba, (m, k)))
    vb = draw(int_arrays(bb, (k, n)))
    fa = draw(ref.frac_bits_for((m, k), False))
    fb = draw(ref.frac_bits_for((k, n), None))
    return (va, ba, fa), (vb, bb, fb)


@SETTINGS
@given(matmul_operands())
def test_matmul_fixed_points(run, operands):
    (va, ba, fa), (vb, bb, fb) = operands
    k = va.shape[-1]

    def fn():
        a, b = fixed_point(va, ba, fa), fixed_point(vb, bb, fb)
        return (a @ b, tf.linalg.matmul(a, b),
                tf.linalg.matmul(fixed_point(va.T, ba, fa), b, transpose_a=True))

    bits = ref.bit_length(k * 2**(ba + bb))
    for out in run(fn):
        check(out, va @ vb, bits, np.asarray(fa) + np.asarray(fb))
    if np.ndim(fb) == 0:  # transpose_b needs a per-tensor right operand
        out = run(lambda: tf.linalg.matmul(fixed_point(va, ba, fa), fixed_point(vb.T, bb, fb),
                                           transpose_b=True))
        check(out, va @ vb, bits, fa + fb)


@SETTINGS
@given(matmul_operands(), st.data())
def test_matmul_fixed_point_by_per_axis_qfloat(run, operands, data):
    (va, ba, fa), (vb, bb, fb) = operands
    scales = data.draw(hnp.arrays(np.float32, (vb.shape[-1],),
                                  elements=st.floats(2.0**-10, 2.0**10, width=32)))
    out = run(lambda: fixed_point(va, ba, fa) @ QFloat(fixed_point(vb, bb, fb), scales))
    assert isinstance(out, QFloat)
    check(out.fp, va @ vb, ref.bit_length(va.shape[-1] * 2**(ba + bb)),
          np.asarray(fa) + np.asarray(fb))
    np.testing.assert_array_equal(out.scales.numpy(), scales)


def test_batched_matmul(run):
    rng = np.random.default_rng(0)
    va = rng.integers(-128, 128, (2, 3, 5))
    vb = rng.integers(-8, 8, (5, 4))
    out = run(lambda: fixed_point(va, 7, 2) @ fixed_point(vb, 3, [0, 1, 2, 3]))
    check(out, va @ vb, ref.bit_length(5 * 2**10), [2, 3, 4, 5])


@pytest.mark.parametrize("shape", [(16, 1, 10, 5), (4, 1, 1, 5), (16, 3, 1, 5)])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_broadcast_matmul_with_size1_batch_axes(run, shape, transpose_b):
    """A rank-4 operand with size-1 batch axes times a 2-D one: TF 2.21's oneDNN broadcast
    float32 matmul gets these wrong (and corrupts the heap); the recipe takes a 2-D product."""
    rng = np.random.default_rng(0)
    va = rng.integers(-128, 128, shape)
    vb = rng.integers(-128, 128, (5, 4))
    other = vb.T if transpose_b else vb
    out = run(lambda: tf.linalg.matmul(fixed_point(va, 7, 0), fixed_point(other, 7, 0),
                                       transpose_b=transpose_b))
    check(out, va @ vb, ref.bit_length(5 * 2**14), 0)


def worst_case_operands():
    """8-bit x 8-bit dot product over K = 2^15 terms. The first half are (-128) * (-128),
    whose sum is 2^28; the second half are odd products, added to partial sums above 2^24
    where float32 can no longer hold odd integers."""
    k = 2**15
    rng = np.random.default_rng(0)
    a = np.full((1, k), -128, np.int64)
    b = np.full((k, 1), -128, np.int64)
    a[0, k // 2:] = rng.integers(-64, 64, k // 2) * 2 + 1
    b[k // 2:, 0] = rng.integers(-64, 64, k // 2) * 2 + 1
    return a, b


def test_matmul_worst_case_needs_30_bits(run):
    a, b = worst_case_operands()
    exact = a @ b  # int64
    # a float32-only accumulation would be wrong: this data catches a carrier regression
    f32 = tf.linalg.matmul(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy()
    assert f32.item() != exact.item()
    assert exact.item() % 2 == 0 and abs(exact.item()) > 2**24 + 2**14
    assert np.float32(2**28) + np.float32(1) == np.float32(2**28)  # why float32 loses bits

    out = run(lambda: fixed_point(a, 7, 0) @ fixed_point(b, 7, 0))
    check(out, exact, 30, 0)
    # every term at its most negative: 2^15 * 2^14 = 2^29 needs 30 value bits
    full = np.full((1, 2**15), -128)
    out = run(lambda: fixed_point(full, 7, 0) @ fixed_point(full.T, 7, 0))
    check(out, [[2**29]], 30, 0)


def test_matmul_exact_with_runtime_operands():
    """Operands only known at run time: the reduction checks their magnitudes and switches to
    float64 when float32 would not be exact."""
    a, b = worst_case_operands()

    @tf.function(input_signature=[tf.TensorSpec(a.shape, tf.float32),
                                  tf.TensorSpec(b.shape, tf.float32)])
    def fn(x, w):
        out = FixedPoint(x, 7, 0) @ FixedPoint(w, 7, 0)
        return out.values

    np.testing.assert_array_equal(fn(a.astype(np.float32), b.astype(np.float32)).numpy(),
                                  a @ b)
    small = np.ones_like(a)
    np.testing.assert_array_equal(fn(small.astype(np.float32), b.astype(np.float32)).numpy(),
                                  small @ b)


MATMUL_ERRORS = {
    "beyond_the_buffer": (lambda: fixed_point(np.zeros((1, 2**17)), 7, 0)
                          @ fixed_point(np.zeros((2**17, 1)), 7, 0), ValueError,
                          "32-bit buffer"),
    "inner_dims": (lambda: fixed_point(np.zeros((2, 3)), 7, 0)
                   @ fixed_point(np.zeros((4, 2)), 7, 0), ValueError, "inner dimensions"),
    "per_axis_left": (lambda: fixed_point(np.zeros((2, 3)), 7, [0, 1, 2])
                      @ fixed_point(np.zeros((3, 2)), 7, 0), ValueError, "per-tensor"),
    "per_axis_transpose_b": (lambda: tf.linalg.matmul(
        fixed_point(np.zeros((2, 3)), 7, 0), fixed_point(np.zeros((2, 3)), 7, [0, 1, 2]),
        transpose_b=True), ValueError, "per-tensor"),
    "per_axis_qfloat_left": (lambda: QFloat(fixed_point(np.zeros((2, 3)), 7, 0),
                                            np.float32([1, 2, 3]))
                             @ fixed_point(np.zeros((3, 2)), 7, 0), ValueError, "per-tensor"),
    "float_operand": (lambda: tf.linalg.matmul(tf.zeros((2, 3)),
                                               fixed_point(np.zeros((3, 2)), 7, 0)),
                      TypeError, "QTensors"),
}


@pytest.mark.parametrize("fn,error,match", MATMUL_ERRORS.values(), ids=MATMUL_ERRORS.keys())
def test_matmul_errors(run, fn, error, match):
    with pytest.raises(error, match=match):
        run(fn)


# ---- shape operations -------------------------------------------------------------------------
VALUES = np.arange(24).reshape(2, 3, 4) - 12
PER_AXIS = np.array([0, 1, 2, 3])

SHAPE_OPS = {
    # name: (fn on a tensor-like, whether it keeps the last axis)
    "reshape_keep_last": (lambda t: tf.reshape(t, (6, 4)), True),
    "reshape_flatten": (lambda t: tf.reshape(t, (24,)), False),
    "transpose_keep_last": (lambda t: tf.transpose(t, (1, 0, 2)), True),
    "transpose_move_last": (lambda t: tf.transpose(t, (2, 1, 0)), False),
    "transpose_default": (lambda t: tf.transpose(t), False),
    "expand_dims_front": (lambda t: tf.expand_dims(t, 0), True),
    "expand_dims_last": (lambda t: tf.expand_dims(t, -1), False),
    "squeeze_front": (lambda t: tf.squeeze(tf.expand_dims(t, 0), 0), True),
}


@pytest.mark.parametrize("fn,keeps_last", SHAPE_OPS.values(), ids=SHAPE_OPS.keys())
@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
def test_shape_ops(run, fn, keeps_last, per_axis):
    frac_bits = PER_AXIS if per_axis else 3
    expected = fn(tf.constant(VALUES)).numpy()
    if per_axis and not keeps_last:
        with pytest.raises(ValueError, match="per-axis"):
            run(lambda: fn(fixed_point(VALUES, 7, frac_bits)))
        with pytest.raises(ValueError, match="per-axis"):
            run(lambda: fn(QFloat(fixed_point(VALUES, 7, 3), np.float32([1, 2, 3, 4]))))
        return
    out = run(lambda: fn(fixed_point(VALUES, 7, frac_bits)))
    check(out, expected, 7, frac_bits)
    np.testing.assert_array_equal(out.to_float().numpy(),
                                  fn(ref.to_float(VALUES, frac_bits)).numpy())
    q = run(lambda: fn(QFloat(fixed_point(VALUES, 7, frac_bits), np.float32(0.5))))
    assert isinstance(q, QFloat)
    check(q.fp, expected, 7, frac_bits)


def test_squeeze_last_axis_of_per_axis_raises():
    fp = fixed_point(np.zeros((3, 1)), 7, [2])
    check(tf.squeeze(fp, -1), [0, 0, 0], 7, [2])  # one fractional bit: per-tensor
    with pytest.raises(ValueError, match="per-axis"):
        tf.squeeze(fixed_point(np.zeros((1, 3)), 7, [1, 2, 3]))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([1, 4, 7, 12]), st.booleans(), st.integers(1, 3)),
                min_size=1, max_size=3), st.data())
def test_concat(run, specs, data):
    operands = []
    for bits, per_axis, rows in specs:
        values = data.draw(int_arrays(bits, (rows, 3)))
        operands.append((values, bits, data.draw(ref.frac_bits_for((rows, 3), per_axis))))
    target = max(np.max(f) for _, _, f in operands)
    expected = np.concatenate([v << (target - np.asarray(f)) for v, _, f in operands])
    bits = max(b + int(np.max(target - np.asarray(f))) for _, b, f in operands)
    out_tf, out_fn = run(lambda: (tf.concat([fixed_point(*o) for o in operands], 0),
                                  concat([fixed_point(*o) for o in operands], 0)))
    for out in (out_tf, out_fn):
        check(out, expected, bits, target)


def test_concat_errors():
    with pytest.raises(ValueError, match="matching shapes"):
        concat([fixed_point(np.zeros((2, 3)), 7, 0), fixed_point(np.zeros((2, 2)), 7, 0)], 0)
    with pytest.raises(TypeError, match="FixedPoint"):
        concat([fixed_point(np.zeros((2, 3)), 7, 0), tf.zeros((2, 3))], 0)


# ---- reductions -------------------------------------------------------------------------------
REDUCE_AXES = {"all": None, "first": 0, "middle": 1, "last": -1, "first_last": (0, 2)}


@pytest.mark.parametrize("axis", REDUCE_AXES.values(), ids=REDUCE_AXES.keys())
@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
@pytest.mark.parametrize("keepdims", [False, True], ids=["drop", "keepdims"])
def test_reduce_sum_and_max(run, axis, per_axis, keepdims):
    rng = np.random.default_rng(1)
    values = rng.integers(-128, 128, (2, 3, 4))
    values[0, 0, 0] = -128
    frac_bits = PER_AXIS if per_axis else 3
    axes = tuple(range(3)) if axis is None else np.atleast_1d(axis) % 3
    reduces_last = 2 in axes
    if per_axis and reduces_last:  # aligned on the largest fractional bit first
        target = np.max(frac_bits)
        values_in, bits_in = values << (target - frac_bits), 7 + int(np.max(target - frac_bits))
    else:
        target, values_in, bits_in = frac_bits, values, 7
    terms = int(np.prod([values.shape[a] for a in axes]))

    out_sum, out_max = run(lambda: (
        tf.reduce_sum(fixed_point(values, 7, frac_bits), axis=axis, keepdims=keepdims),
        tf.reduce_max(fixed_point(values, 7, frac_bits), axis=axis, keepdims=keepdims)))
    red_axes = tuple(int(a) for a in axes)
    check(out_sum, np.sum(values_in, axis=red_axes, keepdims=keepdims),
          ref.bit_length(terms * 2**bits_in), target)
    check(out_max, np.max(values_in, axis=red_axes, keepdims=keepdims), bits_in, target)


def test_reduce_sum_beyond_the_buffer():
    with pytest.raises(ValueError, match="32-bit buffer"):
        tf.reduce_sum(fixed_point(np.zeros((2**9,)), 23, 0))
