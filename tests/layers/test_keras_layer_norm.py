"""Tests of QuantizedLayerStdNormalization, the twin of keras.layers.LayerNormalization
(quantizeml.layers.layer_norm)."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.layer_norm import QuantizedLayerStdNormalization, std_normalize
from quantizeml.layers.registry import QUANTIZATION_TARGETS, twin_spec
from quantizeml.models import quantize
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, frac, ints, output_quantizer, random_inputs,
                                     single_layer_model)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 3, 8)
CHANNELS = SHAPE[-1]
OQ = {"bitwidth": 8}
EPS = 1e-6


def _weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    if layer.scale:
        layer.gamma.assign(rng.uniform(0.3, 2.0, CHANNELS) * rng.choice([-1, 1], CHANNELS))
    if layer.center:
        layer.beta.assign(rng.uniform(-1.0, 1.0, CHANNELS))


def np_layer_norm(x, gamma=1.0, beta=0.0, eps=EPS):
    """The float keras LayerNormalization on the last axis, float64 numpy."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean)**2).mean(axis=-1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


# ---- the integer normalization, in Python integers ---------------------------------------------
def np_std_normalize(x_int, eps_units, frac_bits, rsqrt_bits=16):
    """std_normalize with Python ints (exact) and math.frexp for the exponent (not the layer's
    log2 estimate): returns int64 ``z_int``."""
    x_int = np.asarray(x_int, np.int64)
    n = x_int.shape[-1]
    rows = x_int.reshape(-1, n)
    out = np.zeros_like(rows)
    for k, row in enumerate(rows):
        row = [int(v) for v in row]
        d = [n * v - sum(row) for v in row]
        total = sum(v * v for v in d)
        if total == 0:
            continue  # z = 0
        q = float(total) + float(eps_units) * float(n**3)
        r = math.sqrt(float(n) / q)
        mantissa, exponent = math.frexp(r)  # r = mantissa * 2^exponent, mantissa in [0.5, 1)
        e = rsqrt_bits - exponent
        m = math.floor(r * 2.0**e)
        assert 2**(rsqrt_bits - 1) <= m < 2**rsqrt_bits
        shift = min(max(e - frac_bits, -62), 62)
        for i, v in enumerate(d):
            p = v * m
            out[k, i] = (p + (1 << (shift - 1))) >> shift if shift > 0 else p << -shift
    return out.reshape(x_int.shape)


def eps_units_of(layer, x):
    """``eps / u^2`` with ``u`` the input step, as the layer computes it (float64)."""
    fp = x.fp if isinstance(x, QFloat) else x
    units = float(layer.epsilon) * 2.0**(2.0 * float(np.ravel(fp.frac_bits.numpy())[0]))
    if isinstance(x, QFloat):
        s = np.float64(np.ravel(x.scales.numpy())[0])
        units = units / (s * s)
    return units


def np_quantized_std_ln(layer, x):
    """The QuantizedLayerStdNormalization in int64: (values, frac_bits, scales, fz)."""
    fp = x.fp if isinstance(x, QFloat) else x
    fz = layer.norm_frac_bits(CHANNELS)
    z = np_std_normalize(ints(fp), eps_units_of(layer, x), fz, layer.rsqrt_bits)
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


def keras_layer_norm_reference(layer, x):
    """The test_twins REFERENCES entry: ``(values, frac_bits)`` of the layer output."""
    values, frac_bits, scales, _ = np_quantized_std_ln(layer, x)
    if layer.out_quantizer is None:
        return values, frac_bits
    return output_quantizer(values, frac_bits, layer.out_quantizer, scales)


def test_std_normalize_matches_python_ints():
    rng = np.random.default_rng(4)
    x = rng.integers(-2**15, 2**15, (64, 24))
    x[0] = 7           # a constant row: z = 0
    x[1] = 0
    x[2, :] = 0
    x[2, 3] = -2**15   # a one-hot row: |z| = sqrt(N - 1)
    for eps_units, fz, bits in [(1e-6 * 4**4, 20, 16), (3e9, 12, 8), (0.0, 17, 30)]:
        z, _, m, e = std_normalize(tf.constant(x, tf.int64), tf.constant(eps_units, tf.float64),
                                   fz, bits)
        np.testing.assert_array_equal(z.numpy(), np_std_normalize(x, eps_units, fz, bits))
        m = m.numpy()
        assert np.all((m >= 2**(bits - 1)) & (m < 2**bits)), (m.min(), m.max())
    # float bound: |z_int 2^-fz - z| <= |z| 2^-(R-1) + 2^-(fz+1)
    z, _, _, _ = std_normalize(tf.constant(x, tf.int64), tf.constant(0.0, tf.float64), 20, 16)
    xf = x.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nan_to_num(np_layer_norm(xf, eps=0.0))
    err = np.abs(z.numpy() * 2.0**-20 - expected)
    assert np.all(err <= np.abs(expected) * 2.0**-15 + 2.0**-21), err.max()
    assert np.abs(z.numpy()[2]).max() <= np.sqrt(23) * 2**20 + 1


# ---- the layer ---------------------------------------------------------------------------------
PER_TENSOR = ["fp-per-tensor", "qfloat-per-tensor"]


@pytest.mark.parametrize("kind", PER_TENSOR, ids=PER_TENSOR)
@pytest.mark.parametrize("gamma", [{"bitwidth": 8, "axis": -1}, {"bitwidth": 6, "axis": None}],
                         ids=["gamma-axis", "gamma-tensor"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_quantized_numerics(kind, gamma, oq):
    x = INPUTS[kind](SHAPE)
    config = {"gamma_quantizer": gamma}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedLayerStdNormalization(epsilon=EPS, quant_config=config)
    layer(x)
    _weights(layer, seed=3)
    if oq is not None:
        layer.out_quantizer.range_max.assign(4.0)
    out = layer(x)
    ref, ref_frac, scales, fz = np_quantized_std_ln(layer, x)
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer, scales)
    else:
        assert isinstance(out, QFloat)
        np.testing.assert_array_equal(np.asarray(out.scales), scales)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), ref.shape),
                                  np.broadcast_to(ref_frac, ref.shape))
    # float bound, with z the exact normalized value (|z| <= sqrt(N - 1)), s_g the gamma
    # scales and g_q the quantized gamma: |gamma - g_q| <= s_g / 2,
    # |z - z_q| <= |z| 2^-15 + 2^-(fz+1) (16-bit mantissa of the rsqrt, rounded product),
    # |beta - b_q| <= max(|beta| 2^-15, s_g 2^-(fz+1)) (16-bit beta on the accumulator grid)
    gamma_q = layer.gamma_quantizer(layer.gamma)
    g_q, s_g = gamma_q.to_float().numpy(), np.asarray(gamma_q.scales)
    gamma_f, beta_f = layer.gamma.numpy(), layer.beta.numpy()
    x_float = x.to_float().numpy().astype(np.float64)
    z = np_layer_norm(x_float)
    expected = np_layer_norm(x_float, gamma_f, beta_f)
    bound = (s_g / 2 * np.abs(z) + np.abs(g_q) * (np.abs(z) * 2.0**-15 + 2.0**-(fz + 1))
             + np.maximum(np.abs(beta_f) * 2.0**-15, s_g * 2.0**-(fz + 1)))
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
    layer = QuantizedLayerStdNormalization(center=center, scale=scale)
    layer(x)
    _weights(layer)
    ref, ref_frac, _, _ = np_quantized_std_ln(layer, x)
    out = layer(x)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(frac(out), ref_frac)


def test_constant_row_and_large_epsilon():
    """A constant row gives beta; an epsilon far above the variance shrinks z towards 0."""
    values = np.random.default_rng(5).integers(-128, 128, SHAPE).astype(np.float32)
    values[0, 0] = 17
    x = FixedPoint(tf.constant(values), 7, 4.0)
    layer = QuantizedLayerStdNormalization(scale=False, epsilon=EPS)
    layer(x)
    _weights(layer)
    out = layer(x)
    np.testing.assert_allclose(out.to_float().numpy()[0, 0], layer.beta.numpy(), atol=2.0**-14)
    big = QuantizedLayerStdNormalization(scale=False, center=False, epsilon=1e6)
    out = big(x).to_float().numpy()
    expected = np_layer_norm(x.to_float().numpy(), eps=1e6)
    np.testing.assert_allclose(out, expected, rtol=2.0**-14, atol=2.0**-20)
    ref, _, _, _ = np_quantized_std_ln(big, x)
    np.testing.assert_array_equal(ints(big(x)), ref)


def sqnr_db(reference, value):
    noise = np.mean((np.asarray(value, np.float64) - reference)**2)
    return 10 * np.log10(np.mean(reference**2) / noise)


def test_close_to_float_layer_norm():
    """8-bit inputs, weights and outputs: the SQNR against the float LayerNormalization on the
    same (dequantized) inputs; 8-bit rounding alone gives about 40 dB."""
    shape = (64, 16, 32)
    x = (np.random.default_rng(6).standard_normal(shape) * 2 + 0.5).astype(np.float32)
    layer = QuantizedLayerStdNormalization(epsilon=EPS, quant_config={"output_quantizer": OQ})
    model = single_layer_model(layer, shape[1:], out_range=4.0)
    float_ln = keras.layers.LayerNormalization(epsilon=EPS)
    float_ln.build((None,) + shape[1:])
    rng = np.random.default_rng(7)
    gamma = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, shape[-1]).astype(np.float32)
    for ln in (layer, float_ln):
        ln.gamma.assign(gamma)
        ln.beta.assign(beta)
    x_q = keras.Model(model.input, model.layers[1].output)(x).to_float().numpy()
    expected = float_ln(x_q).numpy().astype(np.float64)
    got = model(x).numpy()
    sqnr = sqnr_db(expected, got)
    print(f"SQNR of QuantizedLayerStdNormalization (8-bit) vs float LayerNormalization: "
          f"{sqnr:.1f} dB")
    assert sqnr > 38, sqnr
    # the integer normalization itself (no output quantizer) is far more precise
    exact = QuantizedLayerStdNormalization(epsilon=EPS)
    exact(model.layers[1](x))
    exact.gamma.assign(gamma)
    exact.beta.assign(beta)
    assert sqnr_db(expected, exact(model.layers[1](x)).to_float().numpy()) > 55


def test_gradients():
    layer = QuantizedLayerStdNormalization(quant_config={"output_quantizer": OQ})
    model = single_layer_model(layer, SHAPE[1:])
    _weights(layer)
    check_gradients_reach(model, random_inputs(SHAPE))
    x = tf.constant(random_inputs(SHAPE))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x, training=True) * tf.range(CHANNELS, dtype=tf.float32))
    grads = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grads)) and np.abs(grads).sum() > 0


def test_quantize_token_model():
    """Dense -> LayerNormalization -> Dense: the twin replaces the float layer, the Dense
    before it gets a per-tensor output quantizer, outputs stay close to the float model."""
    inputs = keras.Input((6, 16))
    y = keras.layers.Dense(16, bias_initializer="random_normal", name="dense_in")(inputs)
    y = keras.layers.LayerNormalization(epsilon=EPS, beta_initializer="random_normal",
                                        gamma_initializer="random_uniform", name="ln")(y)
    model = keras.Model(inputs, keras.layers.Dense(4, name="dense_out")(y))
    x = np.random.default_rng(8).uniform(-1, 1, (32, 6, 16)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=32, batch_size=32)
    ln = qmodel.get_layer("ln")
    assert type(ln) is QuantizedLayerStdNormalization
    assert qmodel.get_layer("dense_in").quant_config["output_quantizer"]["axis"] == "per-tensor"
    assert "output_quantizer" in ln.quant_config
    expected = model(x).numpy()
    got = qmodel(x).numpy()
    assert sqnr_db(expected, got) > 25, sqnr_db(expected, got)


def test_registry_and_signature():
    assert QUANTIZATION_TARGETS[keras.layers.LayerNormalization] \
        is QuantizedLayerStdNormalization
    spec = twin_spec(keras.layers.LayerNormalization)
    assert spec.weights == ("gamma_quantizer",) and spec.per_tensor_inputs
    check_signature_parity(QuantizedLayerStdNormalization, keras.layers.LayerNormalization)


def test_config_roundtrip():
    layer = QuantizedLayerStdNormalization(epsilon=1e-6, quant_config={
        "gamma_quantizer": {"bitwidth": 4, "axis": None}, "beta_quantizer": {"bitwidth": 12},
        "rsqrt_bits": 12, "output_quantizer": OQ, "buffer_bitwidth": 24})
    layer.build((None,) + SHAPE[1:])
    clone = check_config_roundtrip(layer)
    assert clone.rsqrt_bits == 12 and clone.epsilon == 1e-6


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_save_load(oq):
    layer = QuantizedLayerStdNormalization(
        quant_config=None if oq is None else {"output_quantizer": oq})
    model = single_layer_model(layer, SHAPE[1:])
    _weights(layer)
    check_save_load(model, random_inputs(SHAPE))


def test_bad_inputs():
    cls = QuantizedLayerStdNormalization
    with pytest.raises(TypeError, match="sln_float.*expected FixedPoint or QFloat"):
        cls(name="sln_float")(tf.ones(SHAPE))
    with pytest.raises(ValueError, match="sln_axis.*expected axis=-1.*axis=1"):
        cls(axis=1, name="sln_axis")(INPUTS["fp-per-tensor"](SHAPE))
    with pytest.raises(ValueError, match="sln_axes.*expected axis=-1"):
        cls(axis=[1, 2], name="sln_axes")
    for kind in ("fp-per-axis", "qfloat-per-axis"):
        with pytest.raises(ValueError, match="sln_axis_in.*expected per-tensor inputs"):
            cls(name="sln_axis_in")(INPUTS[kind](SHAPE))
    with pytest.raises(ValueError, match="sln_rsqrt: rsqrt_bits expected an int in"):
        cls(name="sln_rsqrt", quant_config={"rsqrt_bits": 31})
    with pytest.raises(ValueError, match="sln_key: quant_config expected keys"):
        cls(name="sln_key", quant_config={"weight_quantizer": {}})
    # 8 channels, 8-bit gamma: 3 + 7 + bits(isqrt(7) + 1) = 12 bits are needed
    with pytest.raises(ValueError, match="sln_buffer.*buffer_bitwidth expected at least 12"):
        cls(name="sln_buffer", quant_config={"buffer_bitwidth": 11})(
            INPUTS["fp-per-tensor"](SHAPE))
    # int64 exactness: 8 channels allow (60 - bits(512)) // 2 = 25 value bits
    wide = FixedPoint(tf.ones(SHAPE), 26, 0.0)
    with pytest.raises(ValueError, match="sln_wide.*at most 25 value bits.*value_bits=26"):
        cls(name="sln_wide")(wide)
