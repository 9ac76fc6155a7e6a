"""Quantizer layers against numpy integer references."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import (AlignedWeightQuantizer, Dequantizer, InputQuantizer,
                               OutputQuantizer, WeightQuantizer)
from quantizeml.recipes.requantize import clip_in_carrier
from quantizeml.tensors import FixedPoint, QFloat
from tests.utils import check_config_roundtrip, check_save_load


def np_round(x):
    return np.floor(x + 0.5)


@pytest.mark.parametrize("bitwidth", [2, 4, 8], ids=lambda b: f"{b}bit")
@pytest.mark.parametrize("axis", [-1, None], ids=["per-axis", "per-tensor"])
def test_weight_quantizer_matches_numpy(bitwidth, axis):
    w = np.random.uniform(-2, 2, (3, 3, 4, 5)).astype(np.float32)
    quantizer = WeightQuantizer(bitwidth=bitwidth, axis=axis)
    quantizer.search_ranges(w)  # as quantize() does: a no-op at 8 bits
    q = quantizer(w)
    assert isinstance(q, QFloat)
    int_max = 2.0**(bitwidth - 1) - 1
    axes = (0, 1, 2) if axis == -1 else None
    ranges = np.max(np.abs(w), axis=axes)
    if bitwidth <= 4:
        ranges = np_search_ranges(w, ranges, axes, int_max)
    scales = (ranges / int_max).astype(np.float32)
    expected = np.clip(np_round(w / scales), -int_max - 1, int_max)
    np.testing.assert_array_equal(q.values.numpy(), expected)
    np.testing.assert_allclose(q.scales.numpy(), scales, rtol=1e-6)
    err = np.abs(q.to_float().numpy() - w)
    if bitwidth > 4:
        # error bound: half a quantization step per weight
        assert np.all(err <= scales / 2 * (1 + 1e-5) + 1e-7)
    else:
        # the searched range has a lower squared error than max|w| (clipping pays)
        max_scales = np.max(np.abs(w), axis=axes) / int_max
        max_err = w - np.clip(np_round(w / max_scales), -int_max - 1, int_max) * max_scales
        assert np.sum(err**2) < np.sum(max_err**2)


def test_weight_quantizer_ranges_default_to_max():
    """Without a search (a quantizer built outside quantize()), the ranges are max|w|."""
    w = np.random.uniform(-2, 2, (3, 3, 4, 5)).astype(np.float32)
    q = WeightQuantizer(bitwidth=2)(w)
    np.testing.assert_allclose(q.scales.numpy(), np.max(np.abs(w), axis=(0, 1, 2)), rtol=1e-6)


def test_weight_quantizer_search_pending_searches_once():
    """quantize()'s eager pass: a pending search runs on the call's weights, then stops."""
    w = np.random.normal(size=(6, 4)).astype(np.float32)
    quantizer = WeightQuantizer(bitwidth=2)
    quantizer.search_pending = True
    quantizer(w)
    ratios = quantizer.range_ratios.numpy()
    assert not quantizer.search_pending and np.all(ratios < 1)
    np.testing.assert_allclose(ratios, np_search_ranges(w, np.max(np.abs(w), axis=0), 0, 1.0)
                               / np.max(np.abs(w), axis=0), rtol=1e-6)
    quantizer(w * 0.5)
    np.testing.assert_array_equal(quantizer.range_ratios.numpy(), ratios)


def np_search_ranges(w, ranges, axes, int_max):
    """numpy oracle of the low-bit range search: the ratio of max|w| of least squared error."""
    best, best_err = ranges, None
    for k in range(20):
        candidate = ranges * (1.0 - 0.04 * k)
        scales = (candidate.astype(np.float64) / int_max).astype(np.float32)
        deq = np.clip(np_round(w / scales), -int_max - 1, int_max) * scales
        err = np.sum((w.astype(np.float64) - deq) ** 2, axis=axes)
        if best_err is None:
            best_err = err
            continue
        best = np.where(err < best_err, candidate, best)
        best_err = np.where(err < best_err, err, best_err)
    return best


def test_weight_quantizer_fixed_point():
    w = np.random.uniform(-0.3, 0.3, (6, 4)).astype(np.float32)
    q = WeightQuantizer(bitwidth=8, fp_quantizer=True)(w)
    assert isinstance(q, FixedPoint)
    ranges = np.max(np.abs(w), axis=0)
    frac = 7 - np.ceil(np.log2(ranges))
    frac = np.minimum(frac, 7)
    np.testing.assert_array_equal(q.frac_bits.numpy(), frac)
    np.testing.assert_array_equal(q.values.numpy(),
                                  np.clip(np_round(w * 2.0**frac), -128, 127))


def test_weight_quantizer_binary():
    w = np.random.normal(size=(5, 3)).astype(np.float32)
    q = WeightQuantizer(bitwidth=1)(w)
    np.testing.assert_array_equal(q.values.numpy(), np.where(w >= 0, 1.0, -1.0))
    np.testing.assert_allclose(q.scales.numpy(), np.mean(np.abs(w), axis=0), rtol=1e-6)


@pytest.mark.parametrize("axis", [-1, None], ids=["per-axis", "per-tensor"])
def test_weight_quantizer_straight_through_gradient(axis):
    w = tf.Variable(np.random.uniform(-1, 1, (4, 3)).astype(np.float32))
    wq = WeightQuantizer(bitwidth=4, axis=axis)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(wq(w).to_float() * 3.0)
    # the rounding passes the gradient through and the scales are constants of the step: the
    # float weights get the incoming gradient, the largest weight of a channel included
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), np.full((4, 3), 3.0), rtol=1e-6)


def test_binary_weight_quantizer_gradient():
    w = tf.Variable(np.random.normal(size=(6, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(WeightQuantizer(bitwidth=1)(w).to_float() * 3.0)
    # straight-through inside |w| <= mean|w| (the constant scale, as Larq's
    # magnitude-aware sign), zero outside
    inside = np.abs(w.numpy()) <= np.mean(np.abs(w.numpy()), axis=0)
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), np.where(inside, 3.0, 0.0),
                               rtol=1e-6)


def test_aligned_weight_quantizer_matches_numpy():
    acc = QFloat(FixedPoint(np.zeros((2, 4), np.float32), 20, 12.0),
                 np.array([0.01, 0.02, 0.5, 0.001], np.float32))
    b = np.array([0.37, -1.3, 20.0, 0.0004], np.float32)
    q = AlignedWeightQuantizer(bitwidth=8)(b, acc)
    rescaled = (b / acc.scales.numpy()).astype(np.float32)
    frac = np.minimum(7 - np.ceil(np.log2(np.abs(rescaled))), 12)
    small = np.clip(np_round(rescaled.astype(np.float64) * 2.0**frac), -128, 127)
    expected = small * 2.0**(12 - frac)
    np.testing.assert_array_equal(q.values.numpy(), expected)
    np.testing.assert_array_equal(q.scales.numpy(), acc.scales.numpy())
    assert float(q.frac_bits.numpy()) == 12.0
    np.testing.assert_allclose(q.to_float().numpy(), b, rtol=2**-7)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("axis", ["per-tensor", "per-axis"])
def test_output_quantizer_fixed_point_input(signed, axis):
    values = np.random.randint(-2**20, 2**20, (4, 6)).astype(np.float64)
    x = FixedPoint(values, 24, 14.0)
    oq = OutputQuantizer(bitwidth=8, signed=signed, axis=axis)
    oq.build(x.shape)
    ranges = np.random.uniform(0.5, 40, 6 if axis == "per-axis" else ()).astype(np.float32)
    oq.range_max.assign(ranges)
    y = oq(x)
    vb = 7 if signed else 8
    frac = vb - np.ceil(np.log2(ranges))
    expected = np_round(values * 2.0**(frac - 14))
    expected = np.clip(expected, -2**vb if signed else 0, 2**vb - 1)
    np.testing.assert_array_equal(y.values.numpy(), expected)
    np.testing.assert_array_equal(np.broadcast_to(y.frac_bits.numpy(), (6,)),
                                  np.broadcast_to(frac, (6,)))
    assert y.value_bits == vb


def test_output_quantizer_qfloat_input():
    fp = FixedPoint(np.random.randint(-5000, 5000, (3, 4)).astype(np.float32), 13, 6.0)
    scales = np.array([0.013, 0.2, 1.7, 0.05], np.float32)
    oq = OutputQuantizer(bitwidth=8, scale_bits=8)
    oq.build(fp.shape)
    oq.range_max.assign(30.0)
    y = oq(QFloat(fp, scales))
    sfrac = 8 - np.ceil(np.log2(scales))
    sq = np_round(scales.astype(np.float64) * 2.0**sfrac)
    acc = fp.values.numpy() * sq  # frac 6 + sfrac
    frac = 7 - np.ceil(np.log2(30.0))
    expected = np.clip(np_round(acc * 2.0**(frac - 6 - sfrac)), -128, 127)
    np.testing.assert_array_equal(y.values.numpy(), expected)


def test_input_quantizer_and_saturation_record():
    x = np.array([[0.1, 0.5, 0.99, 3.0]], np.float32)
    iq = InputQuantizer(bitwidth=8, signed=False)
    iq.build(x.shape)
    y = iq(x)  # range_max 1 -> frac 8
    np.testing.assert_array_equal(y.values.numpy(), np.clip(np_round(x * 256), 0, 255))
    from quantizeml.layers import saturation
    assert saturation(iq)["output"] == pytest.approx(0.25)


def test_dequantizer_nested():
    a = FixedPoint.quantize(tf.constant([0.5, -0.25]), 7, 3)
    b = QFloat(a, 2.0)
    out = Dequantizer()([a, b, tf.constant([1.0])])
    np.testing.assert_array_equal(out[0].numpy(), [0.5, -0.25])
    np.testing.assert_array_equal(out[1].numpy(), [1.0, -0.5])
    np.testing.assert_array_equal(out[2].numpy(), [1.0])


@pytest.mark.parametrize("layer", [
    WeightQuantizer(bitwidth=3, axis=None), AlignedWeightQuantizer(bitwidth=16),
    OutputQuantizer(bitwidth=4, signed=False, axis="per-axis", scale_bits=10),
    InputQuantizer(bitwidth=8), Dequantizer()], ids=lambda x: type(x).__name__)
def test_config_roundtrip(layer):
    check_config_roundtrip(layer)


@pytest.mark.parametrize("kwargs,match", [
    ({"bitwidth": 0}, "bitwidth expected an int in \\[1, 32\\]"),
    ({"bitwidth": 33}, "bitwidth expected an int in \\[1, 32\\]"),
    ({"bitwidth": 8, "axis": "channels"}, "axis expected one of"),
    ({"bitwidth": 16, "buffer_bitwidth": 8}, "bitwidth expected <= buffer_bitwidth"),
], ids=["zero", "too-wide", "bad-axis", "wider-than-buffer"])
def test_output_quantizer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OutputQuantizer(name="oq", **kwargs)


def test_output_quantizer_rejects_float():
    oq = OutputQuantizer(name="my_oq")
    with pytest.raises(TypeError, match="my_oq.*expected FixedPoint or QFloat"):
        oq(tf.ones((1, 3)))


def test_quantizers_save_load():
    inp = keras.Input((5,))
    iq = InputQuantizer(bitwidth=8, signed=True)
    x = iq(inp)
    oq = OutputQuantizer(bitwidth=4, axis="per-axis")
    y = oq(x)
    model = keras.Model(inp, Dequantizer()(y))
    iq.range_max.assign(2.0)
    oq.range_max.assign(np.array([0.5, 1, 2, 4, 0.25], np.float32))
    check_save_load(model, np.random.uniform(-2, 2, (8, 5)).astype(np.float32))


@pytest.mark.parametrize("high", [[5.0, 9.0, 100.0], [9.0, 9.0, 9.0], 9.0],
                         ids=["per-channel", "uniform", "scalar"])
def test_clip_in_carrier(high):
    values = tf.constant(np.arange(-4.0, 20.0).reshape(8, 3), tf.float64)
    low, high_t = tf.constant(0.0), tf.constant(high, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = clip_in_carrier(values, low, high_t)
        loss = tf.reduce_sum(out * 3.0)
    expected = np.clip(values.numpy(), 0.0, np.asarray(high))
    np.testing.assert_array_equal(out.numpy(), expected)
    assert out.dtype == tf.float32
    inside = (values.numpy() >= 0) & (values.numpy() <= np.asarray(high))
    np.testing.assert_array_equal(tape.gradient(loss, values).numpy(), np.where(inside, 3.0, 0.0))
