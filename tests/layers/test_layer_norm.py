"""Tests of quantizeml.layers.layer_norm (LayerMadNormalization, QuantizedLayerNormalization)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.layer_norm import LayerMadNormalization, QuantizedLayerNormalization
from quantizeml.layers.quantizers import Dequantizer, InputQuantizer
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, float_gradient, frac, ints, output_quantizer,
                                     random_inputs, rounded_shift, single_layer_model,
                                     to_int_fixed)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 3, 6)
CHANNELS = SHAPE[-1]
OQ = {"bitwidth": 8}


def np_lmn(x, gamma, beta):
    """gamma * x / mad(x) + beta, mad(x) = sum(|x|) / channels, in float64 numpy."""
    x = np.asarray(x, np.float64)
    mad = np.abs(x).sum(axis=-1, keepdims=True) / x.shape[-1]
    return gamma * x / mad + beta


def _weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    if layer.scale:
        layer.gamma.assign(rng.uniform(0.3, 2.0, CHANNELS) * rng.choice([-1, 1], CHANNELS))
    if layer.center:
        layer.beta.assign(rng.uniform(-1.0, 1.0, CHANNELS))


# ---- float LayerMadNormalization -------------------------------------------------------------
def test_float_matches_formula():
    x = np.random.default_rng(1).normal(0, 2, SHAPE).astype(np.float32)
    x[0, 0] = 0.0  # a row of zeros (mad = 0) gives beta
    layer = LayerMadNormalization()
    layer(x)
    _weights(layer)
    out = layer(x).numpy()
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    with np.errstate(invalid="ignore"):  # 0 / 0 on the row of zeros, replaced below
        expected = np_lmn(x, gamma, beta)
    expected[0, 0] = beta
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("center, scale", [(False, True), (True, False)],
                         ids=["no-center", "no-scale"])
def test_float_center_scale(center, scale):
    x = np.random.default_rng(2).normal(0, 2, SHAPE).astype(np.float32)
    layer = LayerMadNormalization(center=center, scale=scale)
    layer(x)
    _weights(layer)
    gamma = layer.gamma.numpy() if scale else 1.0
    beta = layer.beta.numpy() if center else 0.0
    np.testing.assert_allclose(layer(x).numpy(), np_lmn(x, gamma, beta), rtol=1e-5, atol=1e-6)


# ---- QuantizedLayerNormalization -------------------------------------------------------------
def np_quantized_lmn(layer, x):
    """The integer QuantizedLayerNormalization in int64: (values, frac_bits, scales)."""
    if isinstance(x, QFloat) and x.scales.shape.num_elements() == 1:
        xv, xf = ints(x), frac(x)  # a per-tensor scale cancels in x / mad(x)
    else:
        xv, xf = to_int_fixed(x)
    f = np.max(xf)
    xv = rounded_shift(xv, f - xf)  # per-axis inputs aligned on one fractional bit
    fz = layer.norm_frac_bits(CHANNELS)
    multiplier = CHANNELS * 2**fz
    total = np.abs(xv).sum(axis=-1, keepdims=True)
    z = np.where(total > 0, (2 * xv * multiplier + total) // np.maximum(2 * total, 1), 0)
    if layer.scale:
        gamma = layer.gamma_quantizer(layer.gamma)
        g_int, g_frac, g_scales = ints(gamma), frac(gamma), np.asarray(gamma.scales)
    else:
        g_int, g_frac, g_scales = 1, 0, np.float32(1.0)
    acc, acc_frac = z * g_int, fz + g_frac
    if layer.center:
        other = QFloat(FixedPoint(tf.zeros(CHANNELS), 1, float(acc_frac)), g_scales)
        acc = acc + ints(layer.beta_quantizer(layer.beta, other))
    return acc, acc_frac, g_scales, fz


GAMMA = {"gamma-axis": {"bitwidth": 8, "axis": -1}, "gamma-tensor": {"bitwidth": 6,
                                                                   "axis": None}}


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("gamma", list(GAMMA), ids=list(GAMMA))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_quantized_numerics(kind, gamma, oq):
    x = INPUTS[kind](SHAPE)
    config = {"gamma_quantizer": GAMMA[gamma]}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedLayerNormalization(quant_config=config)
    layer(x)
    _weights(layer, seed=3)
    if oq is not None:
        layer.out_quantizer.range_max.assign(4.0)
    out = layer(x)
    # integer reference
    ref, ref_frac, scales, fz = np_quantized_lmn(layer, x)
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer, scales)
        np.testing.assert_array_equal(ints(out), ref)
        np.testing.assert_array_equal(frac(out), ref_frac)
    else:
        assert isinstance(out, QFloat)
        np.testing.assert_array_equal(ints(out), ref)
        np.testing.assert_array_equal(np.broadcast_to(frac(out), ref.shape),
                                      np.broadcast_to(ref_frac, ref.shape))
        np.testing.assert_array_equal(np.asarray(out.scales), scales)
    # float bound, for inputs whose float value the layer sees exactly (FixedPoint, per-tensor
    # QFloat): with z = x / mad(x) (|z| <= N), s_g the gamma scales and g_q the quantized gamma,
    #   |gamma - g_q| <= s_g / 2, |z - z_q| <= 2^-(fz+1) (rounded division),
    #   |beta - b_q| <= max(|beta| * 2^-15, s_g * 2^-(fz+1)) (16-bit beta on the acc grid),
    # so |y - y_q| <= s_g/2 * |z| + |g_q| * 2^-(fz+1) + max(|beta| 2^-15, s_g 2^-(fz+1)).
    # The output quantizer quantizes the scales on 8 bits (relative error <= 2^-8 of the
    # accumulator) and adds half a step, inside its range.
    if kind == "qfloat-per-axis":
        return
    gamma_q = layer.gamma_quantizer(layer.gamma)
    g_q, s_g = gamma_q.to_float().numpy(), np.asarray(gamma_q.scales)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    x_float = x.to_float().numpy().astype(np.float64)
    z = np_lmn(x_float, 1.0, 0.0)
    expected = np_lmn(x_float, gamma, beta)
    bound = (s_g / 2 * np.abs(z) + np.abs(g_q) * 2.0**-(fz + 1)
             + np.maximum(np.abs(beta) * 2.0**-15, s_g * 2.0**-(fz + 1)))
    if oq is not None:
        step = 2.0**-int(frac(layer.out_quantizer))
        bound = bound + (np.abs(expected) + bound) * 2.0**-8 + step / 2
        expected = np.clip(expected, -128 * step, 127 * step)
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), (err - bound).max()


@pytest.mark.parametrize("center, scale", [(False, True), (True, False)],
                         ids=["no-center", "no-scale"])
def test_quantized_center_scale(center, scale):
    x = INPUTS["fp-per-tensor"](SHAPE)
    layer = QuantizedLayerNormalization(center=center, scale=scale)
    layer(x)
    _weights(layer)
    out = layer(x)
    ref, ref_frac, _, _ = np_quantized_lmn(layer, x)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(frac(out), ref_frac)


def test_quantized_zero_row_and_extremes():
    """A row of zeros gives beta; a one-hot row reaches |z| = N (the buffer bound)."""
    values = np.zeros(SHAPE, np.float32)
    values[0, 1, 2] = -128
    values[1, 0] = 127
    x = FixedPoint(tf.constant(values), 7, 4.0)
    layer = QuantizedLayerNormalization(scale=False)
    layer(x)
    _weights(layer)
    out = layer(x)
    ref, _, _, fz = np_quantized_lmn(layer, x)
    np.testing.assert_array_equal(ints(out), ref)
    beta_q = out.to_float().numpy()[0, 0]
    np.testing.assert_allclose(beta_q, layer.beta.numpy(), atol=2.0**-14)
    assert ints(out)[0, 1, 2] - ints(out)[0, 0, 2] == -CHANNELS * 2**fz


def test_quantized_gradients():
    layer = QuantizedLayerNormalization(quant_config={"output_quantizer": OQ})
    model = single_layer_model(layer, SHAPE[1:])
    _weights(layer)
    check_gradients_reach(model, random_inputs(SHAPE))
    grads = float_gradient(model, random_inputs(SHAPE))
    assert float(tf.reduce_sum(tf.abs(grads))) > 0


def test_quantized_fit_decreases_loss():
    inputs = keras.Input(SHAPE[1:])
    iq = InputQuantizer(bitwidth=8)
    layer = QuantizedLayerNormalization()
    model = keras.Model(inputs, Dequantizer()(layer(iq(inputs))))
    iq.range_max.assign(4.0)
    x = random_inputs((16,) + SHAPE[1:], scale=1.0)
    target = np_lmn(x, np.linspace(-1, 1, CHANNELS), 0.5).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    history = model.fit(x, target, epochs=8, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < 0.75 * history[0], history


def test_quantize_target_and_signature():
    assert QUANTIZATION_TARGETS[LayerMadNormalization] is QuantizedLayerNormalization
    # keras.layers.LayerNormalization has its own twin (QuantizedLayerStdNormalization)
    assert QUANTIZATION_TARGETS[keras.layers.LayerNormalization] is not \
        QuantizedLayerNormalization
    check_signature_parity(QuantizedLayerNormalization, LayerMadNormalization)
    check_signature_parity(LayerMadNormalization, keras.layers.LayerNormalization)


@pytest.mark.parametrize("layer_fn", [
    lambda: LayerMadNormalization(center=False),
    lambda: QuantizedLayerNormalization(quant_config={
        "gamma_quantizer": {"bitwidth": 4, "axis": None}, "beta_quantizer": {"bitwidth": 12},
        "output_quantizer": OQ, "buffer_bitwidth": 24})],
    ids=["float", "quantized"])
def test_config_roundtrip(layer_fn):
    layer = layer_fn()
    layer.build((None,) + SHAPE[1:])
    clone = check_config_roundtrip(layer)
    assert clone.center == layer.center


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor", "per-axis"])
def test_save_load(oq, per_axis):
    layer = QuantizedLayerNormalization(
        quant_config=None if oq is None else {"output_quantizer": oq})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis)
    _weights(layer)
    check_save_load(model, random_inputs(SHAPE))


def test_bad_inputs():
    with pytest.raises(TypeError, match="lmn_float.*expected FixedPoint or QFloat"):
        QuantizedLayerNormalization(name="lmn_float")(tf.ones(SHAPE))
    for cls in (LayerMadNormalization, QuantizedLayerNormalization):
        with pytest.raises(ValueError, match="lmn_axis.*expected axis=-1.*axis=1"):
            cls(axis=1, name="lmn_axis")(tf.ones(SHAPE))
        with pytest.raises(ValueError, match="lmn_axes.*expected axis=-1"):
            cls(axis=[1, 2], name="lmn_axes")
    for bits in (0, 33):
        with pytest.raises(ValueError, match=f"lmn_bits/gamma_quantizer: bitwidth .*{bits}"):
            QuantizedLayerNormalization(name="lmn_bits",
                                        quant_config={"gamma_quantizer": {"bitwidth": bits}})
        with pytest.raises(ValueError, match=f"lmn_oq/output_quantizer: bitwidth .*{bits}"):
            QuantizedLayerNormalization(name="lmn_oq",
                                        quant_config={"output_quantizer": {"bitwidth": bits}})
    with pytest.raises(ValueError, match="lmn_key: quant_config expected keys"):
        QuantizedLayerNormalization(name="lmn_key", quant_config={"weight_quantizer": {}})
    # 6 channels, 8-bit gamma: 3 + 7 + 3 = 13 bits are needed
    with pytest.raises(ValueError, match="lmn_buffer.*buffer_bitwidth expected at least 13"):
        QuantizedLayerNormalization(name="lmn_buffer", quant_config={"buffer_bitwidth": 12})(
            INPUTS["fp-per-tensor"](SHAPE))
