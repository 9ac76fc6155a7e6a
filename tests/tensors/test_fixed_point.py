"""FixedPoint: every method against a numpy int64 reference (tests/tensors/reference.py)."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from quantizeml.tensors import FixedPoint, QTensor, carrier_dtype

from . import reference as ref
from .assertions import check, fixed_point, ints
from .reference import SETTINGS, fixed_points, float32_arrays, int_arrays

CARRIER_BITS = [1, 7, 8, 15, 16, 22, 23, 24, 31, 32, 52]


# ---- construction: carrier, clipping, bad inputs ---------------------------------------------
@pytest.mark.parametrize("value_bits", CARRIER_BITS, ids=lambda b: f"vb{b}")
def test_carrier_dtype(value_bits):
    expected = tf.float32 if value_bits <= 23 else tf.float64
    assert carrier_dtype(value_bits) == expected
    assert FixedPoint(tf.zeros((2,)), value_bits, 0).values.dtype == expected
    x = FixedPoint.quantize(tf.constant([0.25, -0.5]), value_bits, 1)
    assert x.values.dtype == expected


@pytest.mark.parametrize("value_bits", CARRIER_BITS, ids=lambda b: f"vb{b}")
def test_clip_at_exact_boundaries(value_bits):
    lo, hi = ref.int_min(value_bits), ref.int_max(value_bits)
    values = [lo - 1, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi + 1, 10 * lo, 10 * hi]
    expected = [lo, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi, lo, hi]
    check(fixed_point(values, value_bits, 3), expected, value_bits, 3)


@SETTINGS
@given(st.data())
def test_clip_property(data):
    value_bits = data.draw(st.integers(1, 40))
    values = data.draw(int_arrays(value_bits, in_range=False))
    check(fixed_point(values, value_bits, 0), ref.clip(values, value_bits), value_bits, 0)


BAD_BITS = {"negative": (-1, ValueError), "53": (53, ValueError), "64": (64, ValueError),
            "float": (8.5, TypeError), "str": ("8", TypeError), "bool": (True, TypeError),
            "none": (None, TypeError), "list": ([8], TypeError)}


@pytest.mark.parametrize("bits,error", BAD_BITS.values(), ids=BAD_BITS.keys())
def test_bad_value_bits(bits, error):
    x = tf.constant([0.5, -1.0])
    with pytest.raises(error, match="value_bits|bits"):
        FixedPoint(x, bits, 0)
    with pytest.raises(error, match="value_bits"):
        FixedPoint.quantize(x, bits, 2)
    with pytest.raises(error, match="value_bits"):
        FixedPoint.max_frac_bits(bits, 1.0)
    with pytest.raises(error, match="bits"):
        FixedPoint.quantize(x, 4, 2).promote(bits)


def test_numpy_int_value_bits_accepted():
    fp = FixedPoint(tf.constant([300.0]), np.int64(8), 0)
    assert fp.value_bits == 8 and isinstance(fp.value_bits, int)
    check(fp, [255], 8, 0)


@pytest.mark.parametrize("bits", [0, -1], ids=["zero", "negative"])
def test_value_bits_below_one_rejected(bits):
    """value_bits < 1 is refused by the constructor and quantize, naming the argument (a
    FixedPoint of 0 value bits would silently hold only -1 and 0)."""
    match = rf"value_bits expected an int in \[{1 if bits == 0 else 0}, 52\].*" \
            rf"Received: value_bits={bits}$"
    with pytest.raises(ValueError, match=match):
        FixedPoint.quantize(tf.constant([0.5, -1.0]), value_bits=bits)
    with pytest.raises(ValueError, match=match):
        FixedPoint.quantize([0.5, -1.0], bits, 2)
    with pytest.raises(ValueError, match=match):
        FixedPoint(tf.constant([0.0, -1.0]), bits, 0)
    with pytest.raises(ValueError, match=match):
        tf.function(lambda x: FixedPoint(x, bits, 0).values)(tf.zeros(2))


NON_INTEGERS = {"python-list": [1.0, 2.5], "python-float": 0.25,
                "numpy-float32": np.array([[1, 2], [3, 4.5]], np.float32),
                "numpy-float64": np.array([1e6 + 0.5]), "numpy-scalar": np.float64(-0.5),
                "eager-float32": tf.constant([3.0, -0.75]),
                "eager-float64": tf.constant([2.0**40 + 0.5], tf.float64)}


@pytest.mark.parametrize("values", NON_INTEGERS.values(), ids=NON_INTEGERS.keys())
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
def test_non_integer_values_rejected(values, clip):
    with pytest.raises(ValueError, match=r"FixedPoint values expected integers.*"
                                         r"Received: values with 1 non-integer value"):
        FixedPoint(values, 45, 0, clip=clip)


@SETTINGS
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=8),
       st.booleans())
def test_integer_check_property(values, eager):
    """Concrete values are accepted exactly when they are all integers (numpy or eager)."""
    array = np.array(values, np.float32)
    inputs = tf.constant(array) if eager else array
    if np.all(array == np.round(array)):
        check(FixedPoint(inputs, 23, 0), array.astype(np.int64), 23, 0)
    else:
        with pytest.raises(ValueError, match="FixedPoint values expected integers"):
            FixedPoint(inputs, 23, 0)


def test_integer_values_of_any_kind_accepted():
    for values in ([1, -2], [1.0, -2.0], np.array([3, 4], np.int64), tf.constant([5, 6]),
                   tf.constant([7.0, 8.0], tf.float64), np.float32(9.0), 10,
                   np.array([np.inf, -np.inf, np.nan], np.float32)):
        FixedPoint(values, 8, 0)


def test_graph_construction_adds_no_check_op():
    """Symbolic values are not checked: tracing adds no op (the graph of a FixedPoint built
    from its input is the clip alone), and non-integers pass through at run time."""
    def build(x):
        return FixedPoint(x, 7, 0).values

    graph = tf.function(build).get_concrete_function(tf.TensorSpec([4], tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert ops <= {"Placeholder", "Const", "Maximum", "Minimum", "Identity", "Cast"}, ops
    assert not ops & {"Floor", "Round", "Equal", "NotEqual", "All", "Assert"}
    np.testing.assert_array_equal(tf.function(build)(tf.constant([0.5, 1.0, -2.0, 300.0])),
                                  [0.5, 1.0, -2.0, 127.0])


def test_bad_values_dtype():
    with pytest.raises(TypeError, match="values"):
        FixedPoint(tf.constant(["a"]), 8, 0)


# ---- quantize ---------------------------------------------------------------------------------
@SETTINGS
@given(st.data(), st.sampled_from([1, 4, 7, 8, 15, 23, 24, 31]), st.booleans())
def test_quantize_with_frac_bits(run, data, value_bits, per_axis):
    x = data.draw(float32_arrays(data.draw(ref.SHAPES)))
    frac_bits = data.draw(ref.frac_bits_for(x.shape, per_axis, -4, 12))
    fp = run(lambda: FixedPoint.quantize(x, value_bits, frac_bits))
    check(fp, ref.quantize(x, value_bits, frac_bits), value_bits, frac_bits)
    assert fp.per_tensor == (not per_axis or x.shape[-1] == 1)


def test_quantize_float64_input_and_python_lists():
    x64 = np.array([0.1, -0.7, 3.3], np.float64)
    check(FixedPoint.quantize(x64, 30, 20), ref.quantize(x64, 30, 20), 30, 20)
    check(FixedPoint.quantize([0.5, -0.5, 1.25], 3, 2), [2, -2, 5], 3, 2)


HALVES = {
    # x * 2^frac_bits exactly on a half: always up (towards +inf), negative values included.
    "halves": ([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], 0, [-2, -1, 0, 1, 2, 3]),
    "halves_frac2": ([-0.625, -0.375, -0.125, 0.125, 0.375], 2, [-2, -1, 0, 1, 2]),
    # the largest float32 below a half: 0.49999997 + 0.5 rounds to 1.0 in float32.
    "below_half": ([np.nextafter(np.float32(0.5), np.float32(0)),
                    np.nextafter(np.float32(-0.5), np.float32(-1)),
                    np.nextafter(np.float32(1.5), np.float32(0))], 0, [0, -1, 1]),
    "above_half": ([np.nextafter(np.float32(0.5), np.float32(1)),
                    np.nextafter(np.float32(-0.5), np.float32(0))], 0, [1, 0]),
    "tiny": ([1e-30, -1e-30], 0, [0, 0]),
}


@pytest.mark.parametrize("x,frac_bits,expected", HALVES.values(), ids=HALVES.keys())
def test_quantize_rounds_half_up(run, x, frac_bits, expected):
    x = np.asarray(x, np.float32)
    np.testing.assert_array_equal(ref.quantize(x, 8, frac_bits), expected)  # the oracle
    check(run(lambda: FixedPoint.quantize(x, 8, frac_bits)), expected, 8, frac_bits)


@SETTINGS
@given(st.data(), st.sampled_from([1, 4, 7, 8, 15, 23, 24, 31]),
       st.sampled_from([1e-6, 1e-2, 1.0, 100.0, 3e5]))
def test_quantize_without_frac_bits(run, data, value_bits, scale):
    x = data.draw(float32_arrays(data.draw(ref.SHAPES), -1.0, 1.0)) * np.float32(scale)
    frac_bits = ref.max_frac_bits(value_bits, np.max(np.abs(x)))
    fp = run(lambda: FixedPoint.quantize(x, value_bits))
    check(fp, ref.quantize(x, value_bits, frac_bits), value_bits, frac_bits)
    # The range is covered: at most the largest positive value is clipped, by one step.
    err = np.abs(ref.to_float(ints(fp.values), frac_bits) - x)
    assert np.all(err <= 2.0**-frac_bits), (err.max(), 2.0**-frac_bits)


def test_quantize_zero_input():
    check(FixedPoint.quantize(tf.zeros((3,)), 7), [0, 0, 0], 7, 7)


# ---- max_frac_bits ----------------------------------------------------------------------------
RANGES = st.one_of(st.just(0.0),
                   st.floats(2.0**-126, 2.0**127, width=32, allow_subnormal=False),
                   st.integers(-126, 127).map(lambda k: 2.0**k))


@SETTINGS
@given(st.data(), st.integers(0, 31), st.booleans())
def test_max_frac_bits(data, value_bits, clamp):
    ranges = data.draw(st.lists(RANGES, min_size=1, max_size=6))
    ranges = np.asarray(ranges, np.float32)
    got = FixedPoint.max_frac_bits(value_bits, ranges, clamp=clamp).numpy()
    np.testing.assert_array_equal(got, ref.max_frac_bits(value_bits, ranges, clamp))
    scalar = FixedPoint.max_frac_bits(value_bits, ranges[0], clamp=clamp)
    assert scalar.shape == () and scalar.numpy() == ref.max_frac_bits(value_bits, ranges[0], clamp)


def test_max_frac_bits_powers_of_two_and_neighbours():
    powers = np.float32(2.0) ** np.arange(-126, 128, dtype=np.float32)
    ranges = np.concatenate([powers, np.nextafter(powers, np.float32(np.inf)),
                             np.nextafter(powers[1:], np.float32(0))])  # no subnormals
    got = FixedPoint.max_frac_bits(8, ranges, clamp=False).numpy()
    np.testing.assert_array_equal(got, ref.max_frac_bits(8, ranges, clamp=False))


@pytest.mark.parametrize("ranges,clamp,expected", [
    (0.0, True, 8), (0.0, False, 8), (1.0, True, 8), (0.5, True, 8), (0.5, False, 9),
    (1e-30, True, 8), (1e-30, False, 8 + 99), (2.0**-126, False, 8 + 126), (255.0, True, 0),
    (256.0, True, 0), (257.0, True, -1), (-3.0, True, 6), (3e38, True, 8 - 128),
], ids=str)
def test_max_frac_bits_examples(ranges, clamp, expected):
    assert ref.max_frac_bits(8, ranges, clamp) == expected  # the oracle agrees
    assert FixedPoint.max_frac_bits(8, ranges, clamp=clamp).numpy() == expected


def test_max_frac_bits_per_axis():
    ranges = np.array([0.0, 0.3, 1.0, 5.0, 1e-20], np.float32)
    np.testing.assert_array_equal(FixedPoint.max_frac_bits(4, ranges).numpy(),
                                  [4, 4, 4, 1, 4])
    np.testing.assert_array_equal(FixedPoint.max_frac_bits(4, ranges, clamp=False).numpy(),
                                  [4, 5, 4, 1, 4 + 66])


# ---- to_float ---------------------------------------------------------------------------------
@SETTINGS
@given(fixed_points())
def test_to_float(run, fp_args):
    values, value_bits, frac_bits = fp_args
    got = run(lambda: fixed_point(values, value_bits, frac_bits).to_float())
    assert got.dtype == tf.float32
    expected = ref.to_float(values, frac_bits).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), expected)


# ---- rescale, upscale, downscale --------------------------------------------------------------
@SETTINGS
@given(st.data(), fixed_points(), st.one_of(st.none(), st.integers(1, 40)))
def test_rescale(run, data, fp_args, target_bits):
    values, value_bits, frac_bits = fp_args
    target = data.draw(ref.frac_bits_for(values.shape, None, -6, 14))
    fp = run(lambda: fixed_point(values, value_bits, frac_bits).rescale(target, target_bits))
    out_bits = value_bits if target_bits is None else target_bits
    expected = ref.clip(ref.shift_left_or_round(values, np.asarray(target) - frac_bits),
                        out_bits)
    check(fp, expected, out_bits, target)


@pytest.mark.parametrize("shift", [1, 2, 3], ids=lambda s: f"right{s}")
def test_rescale_rounds_half_up(run, shift):
    half = 1 << (shift - 1)
    values = np.array([-5, -3, -1, 1, 3, 5]) * half  # exactly on halves after the shift
    expected = [-2, -1, 0, 1, 2, 3]
    np.testing.assert_array_equal(ref.shift_left_or_round(values, -shift), expected)
    fp = run(lambda: fixed_point(values, 8, shift).rescale(0))
    check(fp, expected, 8, 0)
    # one below a half rounds down, one above rounds up, for negative values too
    fp = run(lambda: fixed_point(values - 1, 8, shift).rescale(0))
    np.testing.assert_array_equal(ints(fp.values), ref.shift_left_or_round(values - 1, -shift))


@SETTINGS
@given(st.data(), fixed_points(), st.one_of(st.none(), st.integers(1, 45)))
def test_upscale(run, data, fp_args, target_bits):
    values, value_bits, frac_bits = fp_args
    target = np.asarray(frac_bits) + data.draw(ref.frac_bits_for(values.shape, None, 0, 6))
    fp = run(lambda: fixed_point(values, value_bits, frac_bits).upscale(target, target_bits))
    out_bits = value_bits if target_bits is None else target_bits
    expected = ref.clip(ref.shift_left_or_round(values, target - frac_bits), out_bits)
    check(fp, expected, out_bits, target)


@SETTINGS
@given(st.data(), fixed_points())
def test_downscale(run, data, fp_args):
    values, value_bits, frac_bits = fp_args
    target = np.asarray(frac_bits) - data.draw(ref.frac_bits_for(values.shape, None, 0, 6))
    fp = run(lambda: fixed_point(values, value_bits, frac_bits).downscale(target))
    expected = ref.clip(ref.shift_left_or_round(values, target - frac_bits), value_bits)
    check(fp, expected, value_bits, target)


def test_upscale_downscale_direction_errors():
    fp = fixed_point([3, -5], 8, [2, 4])
    with pytest.raises(ValueError, match="upscale"):
        fp.upscale(3)
    with pytest.raises(ValueError, match="downscale"):
        fp.downscale(3)
    with pytest.raises(ValueError, match="upscale"):
        fp.upscale([5, 3])


def test_upscale_downscale_direction_errors_at_run_time():
    spec = tf.TensorSpec((), tf.float32)

    @tf.function(input_signature=[spec])
    def upscale(target):
        return fixed_point([3, -5], 8, 2).upscale(target).values

    @tf.function(input_signature=[spec])
    def downscale(target):
        return fixed_point([3, -5], 8, 2).downscale(target).values

    np.testing.assert_array_equal(upscale(tf.constant(3.0)).numpy(), [6, -10])
    np.testing.assert_array_equal(downscale(tf.constant(1.0)).numpy(), [2, -2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="upscale"):
        upscale(tf.constant(1.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="downscale"):
        downscale(tf.constant(3.0))


# ---- shift, floor -----------------------------------------------------------------------------
@SETTINGS
@given(st.data(), fixed_points(), st.booleans())
def test_shift(run, data, fp_args, per_element):
    values, value_bits, frac_bits = fp_args
    shape = values.shape if per_element else ()
    s = data.draw(ref.hnp.arrays(np.int64, shape, elements=st.integers(-12, 12)))
    fp = run(lambda: fixed_point(values, value_bits, frac_bits).shift(s.astype(np.float32)))
    expected = ref.clip(ref.shift_left_or_floor(values, s), value_bits)
    check(fp, expected, value_bits, frac_bits)


@SETTINGS
@given(fixed_points(frac_lo=-4, frac_hi=12))
def test_floor(run, fp_args):
    values, value_bits, frac_bits = fp_args
    fp, shift = run(lambda: fixed_point(values, value_bits, frac_bits).floor())
    expected = ref.clip(ref.shift_left_or_floor(values, -np.asarray(frac_bits)), value_bits)
    check(fp, expected, value_bits, 0)
    np.testing.assert_array_equal(shift.numpy(), frac_bits)


def test_floor_negative_values_go_down():
    fp, _ = fixed_point([-5, -4, -3, -1, 1, 3, 4, 5], 8, 2).floor()
    check(fp, [-2, -1, -1, -1, 0, 0, 1, 1], 8, 0)


# ---- promote, align, expand -------------------------------------------------------------------
@SETTINGS
@given(fixed_points(), st.integers(0, 21))
def test_promote(run, fp_args, extra):
    values, value_bits, frac_bits = fp_args
    fp = run(lambda: fixed_point(values, value_bits, frac_bits).promote(value_bits + extra))
    check(fp, values, value_bits + extra, frac_bits)


def test_promote_lower_raises():
    with pytest.raises(ValueError, match="promote"):
        fixed_point([1], 8, 0).promote(7)


@SETTINGS
@given(fixed_points(), fixed_points())
def test_align(run, fp_a, fp_b):
    (va, ba, fa), (vb, bb, fb) = fp_a, fp_b
    target = max(np.max(fa), np.max(fb))
    shift = target - np.asarray(fa)
    out_bits = ba + int(np.max(shift))  # widened by the largest shift: nothing clips

    def fn():
        a = fixed_point(va, ba, fa)
        return a.align(fixed_point(vb, bb, fb))

    fp, got_shift = run(fn)
    expected = ref.shift_left_or_round(va, shift)
    check(fp, expected, out_bits, target)
    assert fp.per_tensor
    np.testing.assert_array_equal(got_shift.numpy(), shift)
    np.testing.assert_array_equal(ref.to_float(ints(fp.values), target), ref.to_float(va, fa))


@SETTINGS
@given(fixed_points(), fixed_points(), st.integers(1, 45))
def test_align_to_value_bits(run, fp_a, fp_b, value_bits):
    (va, ba, fa), (vb, bb, fb) = fp_a, fp_b
    target = max(np.max(fa), np.max(fb))
    fp, _ = run(lambda: fixed_point(va, ba, fa).align(fixed_point(vb, bb, fb), value_bits))
    expected = ref.clip(ref.shift_left_or_round(va, target - np.asarray(fa)), value_bits)
    check(fp, expected, value_bits, target)


def test_align_with_dynamic_frac_bits_widens_to_the_buffer():
    @tf.function(input_signature=[tf.TensorSpec((2,), tf.float32)])
    def fn(frac_bits):
        fp, shift = fixed_point([100, -3], 7, frac_bits).align(fixed_point([1], 4, 6))
        assert fp.value_bits == 31  # the shift is unknown when tracing
        return fp.values, fp.frac_bits, shift

    values, frac_bits, shift = fn(tf.constant([2.0, 5.0]))
    np.testing.assert_array_equal(values.numpy(), [100 << 4, -3 << 1])
    assert frac_bits.numpy() == 6
    np.testing.assert_array_equal(shift.numpy(), [4, 1])


@SETTINGS
@given(st.data(), fixed_points(per_axis=True, frac_lo=-3, frac_hi=6))
def test_expand(run, data, fp_args):
    values, value_bits, frac_bits = fp_args
    target = np.max(frac_bits)
    shift = target - frac_bits
    needed = max(value_bits, ref.value_bits_for(values << shift))
    out_bits = min(52, needed + data.draw(st.integers(0, 3)))
    fp, got_shift = run(lambda: fixed_point(values, value_bits, frac_bits).expand(out_bits))
    check(fp, values << shift, out_bits, target)
    np.testing.assert_array_equal(got_shift.numpy(), shift)


def test_expand_errors():
    fp = fixed_point([[127, -128]], 7, [0, 4])
    with pytest.raises(ValueError, match="expand"):
        fp.expand(6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expand"):
        fp.expand(10)  # 127 << 4 needs 11 value bits
    check(fp.expand(11)[0], [[127 << 4, -128]], 11, 4)
    # 64 << 1 == 2^7 does not fit 7 value bits (it would be clipped to 127)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expand"):
        fixed_point([[64, 0]], 7, [0, 1]).expand(7)
    check(fixed_point([[-64, 0]], 7, [0, 1]).expand(7)[0], [[-128, 0]], 7, 1)


# ---- abs, sign, negative ----------------------------------------------------------------------
@SETTINGS
@given(fixed_points())
def test_abs_sign_negative(run, fp_args):
    values, value_bits, frac_bits = fp_args
    fp_abs, fp_sign, fp_neg = run(lambda: (fixed_point(values, value_bits, frac_bits).abs(),
                                           fixed_point(values, value_bits, frac_bits).sign,
                                           -fixed_point(values, value_bits, frac_bits)))
    check(fp_abs, np.abs(values), value_bits + 1, frac_bits)
    check(fp_sign, np.sign(values), 1, 0)
    check(fp_neg, -values, value_bits + 1, frac_bits)


def test_abs_of_the_most_negative_value_is_exact():
    fp = fixed_point([-128, 127, 0], 7, 1).abs()
    check(fp, [128, 127, 0], 8, 1)


# ---- QTensor API ------------------------------------------------------------------------------
def test_per_tensor_and_assert_per_tensor():
    values = np.zeros((2, 3))
    assert fixed_point(values, 8, 2).per_tensor
    assert fixed_point(values, 8, [2]).per_tensor
    per_axis = fixed_point(values, 8, [1, 2, 3])
    assert not per_axis.per_tensor
    fixed_point(values, 8, 2).assert_per_tensor()
    with pytest.raises(ValueError, match="per-tensor"):
        per_axis.assert_per_tensor()
    assert isinstance(per_axis, QTensor)


def test_clone():
    fp = fixed_point([1, -2, 3], 8, [1, 2, 3])
    clone = fp.clone()
    assert isinstance(clone, FixedPoint) and clone is not fp
    check(clone, [1, -2, 3], 8, [1, 2, 3])


def test_name():
    assert fixed_point([1], 8, 0).name == ""

    @tf.function
    def fn(x):
        fp = FixedPoint(x, 8, 0)
        assert fp.name == fp.values.name and fp.name.endswith(":0"), fp.name
        return fp.values

    fn(tf.constant([1.0]))


def test_getitem_keeps_per_axis_frac_bits():
    values = np.arange(12).reshape(2, 2, 3) - 6
    fp = fixed_point(values, 8, [1, 2, 3])
    sliced = fp[1, :, 1:]
    np.testing.assert_array_equal(ints(sliced.values), values[1, :, 1:])
    np.testing.assert_array_equal(sliced.to_float().numpy(),
                                  ref.to_float(values, [1, 2, 3])[1, :, 1:])
