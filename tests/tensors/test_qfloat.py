"""QFloat: every method against numpy (int64 for integers, float32/float64 for scales)."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantizeml.tensors import FixedPoint, QFloat, QTensor

from . import reference as ref
from .reference import SETTINGS, float32_arrays, int_arrays
from .assertions import check, fixed_point, ints

VALUE_BITS = st.sampled_from([1, 3, 7, 8, 15, 22])
POSITIVE = st.floats(2.0**-40, 2.0**40, width=32, allow_subnormal=False)


def qfloat(values, value_bits, frac_bits, scales):
    return QFloat(fixed_point(values, value_bits, frac_bits), np.asarray(scales, np.float32))


@st.composite
def qfloats(draw, value_bits=VALUE_BITS, per_axis=None):
    """(values, value_bits, frac_bits, scales) of a QFloat, scales per-tensor or per-axis."""
    value_bits = draw(value_bits)
    values = draw(int_arrays(value_bits))
    per_axis = draw(st.booleans()) if per_axis is None else per_axis
    frac_bits = draw(ref.frac_bits_for(values.shape, per_axis, -4, 8))
    scales_shape = (values.shape[-1],) if per_axis else ()
    scales = draw(hnp.arrays(np.float32, scales_shape, elements=POSITIVE))
    return values, value_bits, frac_bits, scales


# ---- optimal_scales, max_frac_bits ------------------------------------------------------------
@SETTINGS
@given(st.data(), st.integers(1, 31))
def test_optimal_scales(data, value_bits):
    ranges = data.draw(hnp.arrays(np.float32, data.draw(ref.SHAPES),
                                  elements=st.one_of(st.just(0.0), POSITIVE)))
    got = QFloat.optimal_scales(ranges, value_bits).numpy()
    expected = np.where(ranges > 0, ranges.astype(np.float64) / (2.0**value_bits - 1), 1.0)
    np.testing.assert_allclose(got, expected, rtol=2.0**-22, atol=0)
    assert got.dtype == np.float32


def test_optimal_scales_examples():
    got = QFloat.optimal_scales([0.0, 127.0, 254.0, 1.0], 7).numpy()
    np.testing.assert_array_equal(got, np.float32([1.0, 1.0, 2.0, 1 / 127]))
    assert QFloat.optimal_scales(3.0, 0).numpy() == 3.0  # int_max would be 0


@SETTINGS
@given(st.data(), st.integers(0, 31), st.booleans())
def test_max_frac_bits(data, value_bits, clamp):
    shape = (data.draw(st.integers(1, 5)),)
    ranges = data.draw(hnp.arrays(np.float32, shape, elements=st.one_of(st.just(0.0),
                                                                        POSITIVE)))
    scales = data.draw(hnp.arrays(np.float32, shape, elements=POSITIVE))
    got = QFloat.max_frac_bits(value_bits, ranges, scales, clamp=clamp).numpy()
    np.testing.assert_array_equal(got, ref.max_frac_bits(value_bits, ranges / scales, clamp))


# ---- quantize, to_float -----------------------------------------------------------------------
@SETTINGS
@given(st.data(), VALUE_BITS, st.booleans(), st.integers(-2, 4))
def test_quantize(run, data, value_bits, per_axis, frac_bits):
    x = data.draw(float32_arrays(data.draw(ref.SHAPES), -1000.0, 1000.0))
    x[np.abs(x) < 1e-30] = 0  # no subnormal scales (TF flushes them to zero)
    axes = tuple(range(x.ndim - 1)) if per_axis else None
    ranges = np.max(np.abs(x), axis=axes)
    scales = np.where(ranges > 0, ranges / np.float32(2**value_bits - 1), 1).astype(np.float32)

    q = run(lambda: QFloat.quantize(x, value_bits, scales, frac_bits))
    assert isinstance(q, QFloat)
    expected = ref.quantize(x / scales, value_bits, frac_bits)  # float32 division, as IEEE
    check(q.fp, expected, value_bits, frac_bits)
    np.testing.assert_array_equal(q.scales.numpy(), scales)
    assert q.per_tensor == (not per_axis or x.shape[-1] == 1)
    if frac_bits > 0:
        return  # x / scales * 2^frac_bits may clip: the error is not bounded
    # optimal scales: nothing clips, the error is at most half a step
    step = scales.astype(np.float64) * 2.0**-frac_bits
    err = np.abs(q.to_float().numpy().astype(np.float64) - x)
    assert np.all(err <= step / 2 * (1 + 2.0**-20) + np.abs(x) * 2.0**-22)


def test_quantize_default_frac_bits_and_clipping():
    q = QFloat.quantize([1.0, -3.0, 100.0, -100.0], 3, 0.5)
    check(q.fp, [2, -6, 7, -8], 3, 0)
    np.testing.assert_array_equal(q.to_float().numpy(), [1.0, -3.0, 3.5, -4.0])


@SETTINGS
@given(qfloats())
def test_to_float(run, args):
    values, value_bits, frac_bits, scales = args
    got = run(lambda: qfloat(values, value_bits, frac_bits, scales).to_float())
    expected = ref.to_float(values, frac_bits).astype(np.float32) * scales  # float32 product
    np.testing.assert_array_equal(got.numpy(), expected)


# ---- quantize_scales, to_fixed_point ----------------------------------------------------------
@SETTINGS
@given(st.data(), st.integers(1, 16))
def test_quantize_scales(run, data, scale_bits):
    scales = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(1, 6)),),
                                  elements=POSITIVE))
    q = run(lambda: QFloat.quantize_scales(scales, scale_bits))
    frac_bits = ref.max_frac_bits(scale_bits, scales, clamp=False)
    check(q, ref.quantize(scales, scale_bits, frac_bits), scale_bits, frac_bits)
    rel_err = np.abs(ref.to_float(ints(q.values), frac_bits) - scales) / scales
    assert np.all(rel_err <= 2.0**-scale_bits), (rel_err, 2.0**-scale_bits)
    assert np.all(ints(q.values) >= 1 << (scale_bits - 1))  # all significant bits are used


@pytest.mark.parametrize("scale,scale_bits,values,frac_bits", [
    (1.0, 8, 255, 8),  # 256 clips to 255: the largest relative error, exactly 2^-8
    (0.75, 8, 192, 8), (3.0, 4, 12, 2), (1e-3, 8, 131, 17), (1000.0, 8, 250, -2),
], ids=lambda v: str(v))
def test_quantize_scales_examples(scale, scale_bits, values, frac_bits):
    q = QFloat.quantize_scales(np.float32([scale]), scale_bits)
    check(q, [values], scale_bits, [frac_bits])


@SETTINGS
@given(qfloats(value_bits=st.sampled_from([1, 4, 7, 8, 15])), st.sampled_from([4, 8, 15]))
def test_to_fixed_point(run, args, scale_bits):
    values, value_bits, frac_bits, scales = args
    fp, qscales = run(lambda: qfloat(values, value_bits, frac_bits, scales)
                      .to_fixed_point(scale_bits))
    scale_frac = ref.max_frac_bits(scale_bits, scales, clamp=False)
    scale_ints = ref.quantize(scales, scale_bits, scale_frac)
    check(qscales, scale_ints, scale_bits, scale_frac)
    # exact integer product, in int64
    check(fp, values * scale_ints, value_bits + scale_bits + 1,
          np.asarray(frac_bits) + scale_frac)
    # and a representation of the QFloat within the scales' relative error
    exact = ref.to_float(values, frac_bits) * scales
    got = ref.to_float(ints(fp.values), np.asarray(frac_bits) + scale_frac)
    assert np.all(np.abs(got - exact) <= np.abs(exact) * 2.0**-scale_bits)


def test_to_fixed_point_default_scale_bits():
    fp, qscales = qfloat([[3, -4]], 7, 0, [0.75, 1.5]).to_fixed_point()
    check(qscales, [192, 192], 8, [8, 7])
    check(fp, [[3 * 192, -4 * 192]], 16, [8, 7])
    np.testing.assert_array_equal(fp.to_float().numpy(), [[2.25, -6.0]])


# ---- promote, upscale -------------------------------------------------------------------------
@SETTINGS
@given(qfloats(), st.integers(0, 9), st.integers(0, 5))
def test_promote_and_upscale(run, args, extra_bits, shift):
    values, value_bits, frac_bits, scales = args

    def fn():
        q = qfloat(values, value_bits, frac_bits, scales)
        return q.promote(value_bits + extra_bits), q.upscale(np.asarray(frac_bits) + shift,
                                                             value_bits + shift)

    promoted, upscaled = run(fn)
    for q in (promoted, upscaled):
        assert isinstance(q, QFloat)
        np.testing.assert_array_equal(q.scales.numpy(), scales)
    check(promoted.fp, values, value_bits + extra_bits, frac_bits)
    check(upscaled.fp, values << shift, value_bits + shift, np.asarray(frac_bits) + shift)
    np.testing.assert_array_equal(upscaled.to_float().numpy(),
                                  ref.to_float(values, frac_bits).astype(np.float32) * scales)


def test_promote_upscale_errors():
    q = qfloat([1, 2], 8, 3, 0.5)
    with pytest.raises(ValueError, match="promote"):
        q.promote(7)
    with pytest.raises(ValueError, match="upscale"):
        q.upscale(2)


# ---- QTensor API ------------------------------------------------------------------------------
def test_qtensor_api():
    q = qfloat(np.zeros((2, 3)), 8, 0, [1.0, 2.0, 3.0])
    assert isinstance(q, QTensor) and not q.per_tensor
    assert qfloat(np.zeros((2, 3)), 8, [0, 1, 2], 1.0).per_tensor is False
    assert qfloat(np.zeros((2, 3)), 8, 0, 1.0).per_tensor
    with pytest.raises(ValueError, match="per-tensor"):
        q.assert_per_tensor()
    assert q.shape == (2, 3) and q.value_bits == 8 and q.name == ""
    clone = q.clone()
    assert isinstance(clone, QFloat)
    np.testing.assert_array_equal(clone.to_float().numpy(), q.to_float().numpy())


def test_qfloat_requires_a_fixed_point():
    with pytest.raises(TypeError, match="FixedPoint"):
        QFloat(tf.constant([1.0]), 1.0)
    with pytest.raises(TypeError, match="FixedPoint"):
        QFloat(qfloat([1], 8, 0, 1.0), 1.0)


def test_scales_are_float32():
    q = QFloat(FixedPoint(tf.constant([1.0]), 8, 0), np.float64(0.5))
    assert q.scales.dtype == tf.float32
