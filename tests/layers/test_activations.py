"""Tests of quantizeml.layers.activations (QuantizedReLU)."""
import inspect

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.activations import QuantizedReLU
from quantizeml.layers.base import saturation
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, float_gradient, frac, ints, output_quantizer,
                                     random_inputs, single_layer_model, to_int_fixed)
from tests.utils import check_config_roundtrip, check_save_load

SHAPE = (2, 3, 3, 4)
OQ = {"bitwidth": 8, "signed": False}


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("max_value", [6, 1.3, None], ids=["max6", "max1.3", "nomax"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_relu_numerics(kind, max_value, oq):
    x = INPUTS[kind](SHAPE)
    layer = QuantizedReLU(max_value=max_value,
                          quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(2.5)
    y = layer(x)
    # integer reference: the input grid (QFloat converted on 8-bit scales), ReLU, floor(max)
    xv, xf = to_int_fixed(x)
    ref = np.maximum(xv, 0)
    if max_value is not None:
        ref = np.minimum(ref, np.floor(max_value * 2.0**xf).astype(np.int64))
    ref_frac = xf
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, xf, layer.out_quantizer)
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    # float bound: ReLU is 1-Lipschitz; a QFloat's scales quantized on 8 bits err by at most
    # s * 2^-8 (relative), flooring max_value on the grid errs by < 2^-frac_bits, and the
    # output quantizer by half a step 2^-frac_out (rounding), values beyond its top clipped.
    x_float = x.to_float().numpy()
    expected = keras.layers.ReLU(max_value=max_value)(x_float).numpy()
    bound = 2.0**-xf.astype(np.float64)
    if isinstance(x, QFloat):
        bound = bound + np.abs(x_float) * 2.0**-8
    if oq is not None:
        oq_layer = layer.out_quantizer
        expected = np.minimum(expected, (2**oq_layer.value_bits - 1) * 2.0**-frac(oq_layer))
        bound = bound + 2.0**-frac(oq_layer) / 2
    err = np.abs(y.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), err.max()


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_relu_wide_qfloat(oq):
    # a 32-bit buffer QFloat (e.g. a BatchNormalization accumulator): the 8-bit scales make a
    # 40-bit exact product, requantized by the output quantizer or clipped to the buffer
    rng = np.random.default_rng(1)
    values = rng.integers(-2**30, 2**30, size=(2, 6)).astype(np.float64)
    x = QFloat(FixedPoint(values, 31, 20.0), tf.constant(0.37))
    layer = QuantizedReLU(max_value=None,
                          quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(300.0)
    out = layer(x)
    xv, xf = to_int_fixed(x)
    ref = np.maximum(xv, 0)
    if oq is None:
        ref = np.minimum(ref, 2**31 - 1)
        assert out.value_bits == 31 and saturation(layer)["buffer"] > 0
    else:
        ref, _ = output_quantizer(ref, xf, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)


def test_relu_max_value_on_grid():
    # max_value = 1.3 on 4 fractional bits: floor(1.3 * 16) = 20 -> 1.25 (never above 1.3)
    x = INPUTS["fp-per-tensor"](SHAPE)
    y = QuantizedReLU(max_value=1.3)(x)
    assert float(tf.reduce_max(y.to_float())) == 1.25


def test_relu_signature_parity():
    # Same names and order as keras.layers.ReLU; same defaults except max_value, which the
    # quantized twin documents as 6 (a quantized ReLU is bounded).
    def params(cls):
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()
                if p.name not in ("self", "kwargs")]
    quantized = [p for p in params(QuantizedReLU) if p[0] != "quant_config"]
    assert [p[0] for p in quantized] == [p[0] for p in params(keras.layers.ReLU)]
    assert dict(quantized) == {**dict(params(keras.layers.ReLU)), "max_value": 6}
    assert list(inspect.signature(QuantizedReLU.__init__).parameters)[-2:] == ["quant_config",
                                                                              "kwargs"]


@pytest.mark.parametrize("quant_config", [None, {"output_quantizer": OQ,
                                                 "buffer_bitwidth": 24}], ids=["none", "oq"])
def test_relu_config_roundtrip(quant_config):
    layer = QuantizedReLU(max_value=3.5, quant_config=quant_config)
    clone = check_config_roundtrip(layer)
    assert clone.max_value == 3.5 and clone.quant_config == (quant_config or {})


@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor", "per-axis"])
def test_relu_save_load(per_axis):
    layer = QuantizedReLU(max_value=2.0, quant_config={"output_quantizer": OQ})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis)
    check_save_load(model, random_inputs(SHAPE))


def test_relu_gradients():
    model = single_layer_model(QuantizedReLU(max_value=2.0), SHAPE[1:])
    x = random_inputs(SHAPE, scale=1.0)
    grad = float_gradient(model, x).numpy()
    y = model(x).numpy()
    # straight-through: the gradient of sum(y^2) is 2y where 0 < y < 2, 0 where clipped
    inside = (y > 0) & (y < 2.0)
    assert inside.any()
    np.testing.assert_allclose(grad[inside], 2 * y[inside], rtol=1e-6)
    np.testing.assert_array_equal(grad[~inside & (x < 0)], 0.0)


def test_relu_bad_inputs():
    layer = QuantizedReLU()
    with pytest.raises(TypeError, match="quantized_re_lu.*expected FixedPoint or QFloat"):
        layer(tf.ones((1, 4)))
    with pytest.raises(ValueError, match="QuantizedReLU.*negative_slope=0"):
        QuantizedReLU(negative_slope=0.1)
    with pytest.raises(ValueError, match="QuantizedReLU.*threshold=0"):
        QuantizedReLU(threshold=0.5)
    for bits in (0, 33):
        with pytest.raises(ValueError, match=f"relu_bits/output_quantizer: bitwidth .*{bits}"):
            QuantizedReLU(name="relu_bits", quant_config={"output_quantizer": {"bitwidth": bits}})
    with pytest.raises(ValueError, match="relu_key: quant_config expected keys.*weight_q"):
        QuantizedReLU(name="relu_key", quant_config={"weight_quantizer": {}})
    with pytest.raises(TypeError, match="relu_oq: quant_config\\['output_quantizer'\\]"):
        QuantizedReLU(name="relu_oq", quant_config={"output_quantizer": 8})


def test_relu_fused_with_output_quantizer_gradients():
    """A QFloat input with an output quantizer runs the fused requantization: its gradient is
    the straight-through one, zero where the ReLU (or the output range) clips."""
    relu = QuantizedReLU(max_value=2.0, quant_config={"output_quantizer": {
        "bitwidth": 8, "signed": False}})
    x = tf.Variable(np.linspace(-3.0, 3.0, 64, dtype=np.float32).reshape(2, 32))
    scales = tf.constant(np.full((32,), 0.01, np.float32))
    relu(QFloat.quantize(x, 15, scales))  # build
    relu.out_quantizer.range_max.assign(tf.fill(relu.out_quantizer.range_max.shape, 2.0))
    weights = tf.constant(np.random.RandomState(0).uniform(0.5, 1.5, (2, 32)), tf.float32)
    with tf.GradientTape() as tape:
        y = relu(QFloat.quantize(x, 15, scales))
        loss = tf.reduce_sum(y.to_float() * weights)
    grad = tape.gradient(loss, x).numpy()
    y = y.to_float().numpy()
    inside = (y > 0) & (y < 2.0 - 2.0**-6)
    assert inside.any() and (~inside).any()
    # d(y)/d(x) is the ratio of the quantized scales to the float ones: within 2^-7
    np.testing.assert_allclose(grad[inside], weights.numpy()[inside], rtol=2.0**-7)
    np.testing.assert_array_equal(grad[~inside], 0.0)
