"""Tests of quantizeml.layers.skip (Add, QuantizedAdd, QuantizedConcatenate)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS, saturation
from quantizeml.layers.skip import Add, QuantizedAdd, QuantizedConcatenate
from quantizeml.tensors import QFloat
from tests.layers.references import (INPUTS, fixed_point, float_gradient, frac, ints,
                                     output_quantizer, random_inputs, rounded_shift,
                                     single_layer_model, to_int_fixed)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 3, 3, 4)
OQ = {"bitwidth": 8}
PAIRS = {
    "fp-fp": ("fp-per-tensor", "fp-per-tensor"),
    "fp-fpaxis": ("fp-per-tensor", "fp-per-axis"),
    "fpaxis-fpaxis": ("fp-per-axis", "fp-per-axis"),
    "qfloat-fpaxis": ("qfloat-per-tensor", "fp-per-axis"),
    "qfloataxis-qfloat": ("qfloat-per-axis", "qfloat-per-tensor"),
}


def _pair(name):
    kx, ky = PAIRS[name]
    x = INPUTS[kx](SHAPE)
    y = INPUTS[ky](SHAPE)
    if kx == ky:  # another draw for the second operand
        y = fixed_point(SHAPE, per_axis=ky.endswith("axis"), seed=7)
    return x, y


def _qfloat_bound(t):
    """Error of a QFloat converted to FixedPoint on 8-bit scales: |s - s_q| <= s * 2^-8."""
    return np.abs(t.to_float().numpy()) * 2.0**-8 if isinstance(t, QFloat) else 0.0


def _oq_expected(expected, oq):
    """The float reference clipped to the output quantizer range, and its rounding bound."""
    step = 2.0**-frac(oq)
    top = (2**oq.value_bits - 1) * step
    bottom = 0.0 if not oq.signed else -(2**oq.value_bits) * step
    return np.clip(expected, bottom, top), step / 2


@pytest.mark.parametrize("pair", list(PAIRS), ids=list(PAIRS))
@pytest.mark.parametrize("average", [False, True], ids=["sum", "average"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_add_numerics(pair, average, oq):
    x, y = _pair(pair)
    layer = QuantizedAdd(average=average,
                         quant_config=None if oq is None else {"output_quantizer": oq})
    layer([x, y])
    if oq is not None:
        layer.out_quantizer.range_max.assign(5.0)
    out = layer([x, y])
    # integer reference: both operands left-aligned on the largest frac_bits, summed in int64
    xv, xf = to_int_fixed(x)
    yv, yf = to_int_fixed(y)
    f = np.maximum(xf, yf)
    ref = rounded_shift(xv, f - xf) + rounded_shift(yv, f - yf)
    ref_frac = f + 1 if average else f
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    # float bound: the sum of FixedPoints is exact; QFloat operands err by s * 2^-8 * |x|
    # (halved by the average); the output quantizer adds half a step within its range.
    expected = keras.layers.Add()([x.to_float(), y.to_float()]).numpy()
    bound = _qfloat_bound(x) + _qfloat_bound(y)
    if average:
        expected, bound = expected / 2, bound / 2
    if oq is not None:
        expected, half_step = _oq_expected(expected, layer.out_quantizer)
        bound = bound + half_step
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), err.max()


def test_add_buffer_saturation():
    x = fixed_point(SHAPE, value_bits=7)
    y = fixed_point(SHAPE, value_bits=7, seed=3)
    layer = QuantizedAdd(quant_config={"buffer_bitwidth": 8})
    out = layer([x, y])
    ref = np.clip(ints(x) + ints(y), -128, 127)
    np.testing.assert_array_equal(ints(out), ref)
    assert out.value_bits == 7
    assert saturation(layer)["buffer"] > 0


@pytest.mark.parametrize("kinds", [("fp-per-tensor", "fp-per-axis", "fp-per-tensor"),
                                   ("qfloat-per-axis", "fp-per-axis", "fp-per-tensor")],
                         ids=["fp", "qfloat"])
@pytest.mark.parametrize("axis", [-1, 1], ids=["axis-1", "axis1"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_concatenate_numerics(kinds, axis, oq):
    xs = [INPUTS[k](SHAPE) if i == 0 else fixed_point(SHAPE, k.endswith("axis"), seed=i)
          for i, k in enumerate(kinds)]
    layer = QuantizedConcatenate(axis=axis,
                                 quant_config=None if oq is None else {"output_quantizer": oq})
    layer(xs)
    if oq is not None:
        layer.out_quantizer.range_max.assign(5.0)
    out = layer(xs)
    # integer reference: every input left-aligned on the largest frac_bits of all
    converted = [to_int_fixed(x) for x in xs]
    f = max(int(np.max(xf)) for _, xf in converted)
    ref = np.concatenate([rounded_shift(xv, f - xf) for xv, xf in converted], axis=axis)
    ref_frac = np.int64(f)
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    assert out.per_tensor and int(frac(out)) == int(ref_frac)
    # float bound: exact for FixedPoints; the QFloat input errs by s * 2^-8 * |x|
    expected = keras.layers.Concatenate(axis=axis)([x.to_float() for x in xs]).numpy()
    bound = np.concatenate([np.broadcast_to(_qfloat_bound(x), SHAPE) for x in xs], axis=axis)
    if oq is not None:
        expected, half_step = _oq_expected(expected, layer.out_quantizer)
        bound = bound + half_step
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), err.max()


def test_float_add_average():
    a, b = tf.constant([[1.0, 2.0]]), tf.constant([[3.0, 5.0]])
    np.testing.assert_array_equal(Add()([a, b]).numpy(), [[4.0, 7.0]])
    np.testing.assert_array_equal(Add(average=True)([a, b]).numpy(), [[2.0, 3.5]])
    with pytest.raises(ValueError, match="add_three.*expected a list of two inputs"):
        Add(name="add_three")([a, b, a])
    with pytest.raises(ValueError, match="add_shapes.*same shape"):
        Add(name="add_shapes")([a, tf.ones((1, 3))])


def test_quantize_targets():
    assert QUANTIZATION_TARGETS[keras.layers.Add] is QuantizedAdd
    assert QUANTIZATION_TARGETS[Add] is QuantizedAdd
    assert QUANTIZATION_TARGETS[keras.layers.Concatenate] is QuantizedConcatenate


def test_signature_parity():
    check_signature_parity(QuantizedAdd, Add)
    check_signature_parity(Add, keras.layers.Add, extra=("average",))
    check_signature_parity(QuantizedConcatenate, keras.layers.Concatenate)


@pytest.mark.parametrize("layer_fn, key", [
    (lambda: Add(average=True), "average"),
    (lambda: QuantizedAdd(average=True, quant_config={"output_quantizer": OQ,
                                                      "buffer_bitwidth": 24}), "average"),
    (lambda: QuantizedConcatenate(axis=1, quant_config={"output_quantizer": OQ}), "axis")],
    ids=["add", "quantized_add", "quantized_concatenate"])
def test_config_roundtrip(layer_fn, key):
    layer = layer_fn()
    clone = check_config_roundtrip(layer)
    assert clone.get_config()[key] in (True, 1)
    assert clone.quant_config == getattr(layer, "quant_config", {}) if key == "axis" else True


@pytest.mark.parametrize("layer_fn, per_axis", [
    (lambda: QuantizedAdd(average=True, quant_config={"output_quantizer": OQ}), True),
    (lambda: QuantizedAdd(), False),
    (lambda: QuantizedConcatenate(quant_config={"output_quantizer": OQ}), False),
    (lambda: QuantizedConcatenate(axis=1), True)],
    ids=["add-average-oq-per-axis", "add", "concat-oq", "concat-axis1-per-axis"])
def test_save_load(layer_fn, per_axis):
    model = single_layer_model(layer_fn(), SHAPE[1:], n_inputs=2, per_axis=per_axis)
    check_save_load(model, random_inputs(SHAPE, n_inputs=2))


@pytest.mark.parametrize("layer_fn", [lambda: QuantizedAdd(average=True),
                                      lambda: QuantizedConcatenate()], ids=["add", "concat"])
def test_gradients(layer_fn):
    model = single_layer_model(layer_fn(), SHAPE[1:], n_inputs=2)
    xs = random_inputs(SHAPE, n_inputs=2, scale=0.5)
    grads = float_gradient(model, xs)
    for g in grads:
        assert g is not None and float(tf.reduce_sum(tf.abs(g))) > 0


def test_bad_inputs():
    x = fixed_point(SHAPE)
    with pytest.raises(TypeError, match="add_float.*expected FixedPoint or QFloat"):
        QuantizedAdd(name="add_float")([x, tf.ones(SHAPE)])
    with pytest.raises(ValueError, match="add_three.*expected a list of two inputs"):
        QuantizedAdd(name="add_three")([x, x, x])
    with pytest.raises(TypeError, match="concat_float.*expected FixedPoint or QFloat"):
        QuantizedConcatenate(name="concat_float")([tf.ones(SHAPE), x])
    for cls in (QuantizedAdd, QuantizedConcatenate):
        for bits in (0, 33):
            with pytest.raises(ValueError, match=f"skip_bits/output_quantizer: bitwidth .*{bits}"):
                cls(name="skip_bits", quant_config={"output_quantizer": {"bitwidth": bits}})
        with pytest.raises(ValueError, match="skip_buffer: buffer_bitwidth .*40"):
            cls(name="skip_buffer", quant_config={"buffer_bitwidth": 40})
        with pytest.raises(ValueError, match="skip_key: quant_config expected keys"):
            cls(name="skip_key", quant_config={"bias_quantizer": {}})
