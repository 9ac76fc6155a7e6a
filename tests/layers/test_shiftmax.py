"""Tests of quantizeml.layers.shiftmax (shiftmax, Shiftmax, QuantizedShiftmax)."""
import numpy as np
import pytest
import tensorflow as tf

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.shiftmax import QuantizedShiftmax, Shiftmax, shiftmax
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, float_gradient, frac, ints, output_quantizer,
                                     quantize_scales, random_inputs, single_layer_model)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 3, 6)
OQ = {"bitwidth": 8, "signed": False}


# ---- numpy references ------------------------------------------------------------------------
def np_shiftmax(logits, axis=-1):
    """The documented shiftmax formula in float64 numpy."""
    x = np.floor(np.asarray(logits, np.float64))
    x = x - np.max(x, axis=axis, keepdims=True)
    exp = 2.0**x
    shift = np.round(np.log2(np.sum(exp, axis=axis, keepdims=True)))
    return 2.0**(x - shift)


def np_floor_logits(x, scale_bits=8):
    """floor(x) of a FixedPoint or QFloat in int64 (QFloat scales quantized on scale_bits)."""
    values, frac_bits = ints(x), np.broadcast_to(frac(x), x.shape)
    if isinstance(x, QFloat):
        s_int, s_frac = quantize_scales(np.asarray(x.scales), scale_bits)
        values, frac_bits = values * s_int, frac_bits + s_frac
    return np_floor_shift(values, frac_bits)


def np_floor_shift(values, frac_bits):
    """floor(values * 2^-frac_bits) in int64 (arithmetic right shift, or left shift)."""
    values, frac_bits = np.broadcast_arrays(np.asarray(values, np.int64),
                                            np.asarray(frac_bits, np.int64))
    return np.where(frac_bits >= 0, values >> np.maximum(frac_bits, 0),
                    values << np.maximum(-frac_bits, 0))


def np_integer_shiftmax(logits, exp_bits):
    """The integer shiftmax on int64 logits along the last axis.

    Returns:
        tuple: the outputs ``p`` (``exp_bits`` fractional bits) and the normalization shift
        ``r - E`` (per row, keepdims).
    """
    y = logits - logits.max(axis=-1, keepdims=True) + exp_bits
    e = np.where(y >= 0, np.left_shift(np.int64(1), np.maximum(y, 0)), 0)
    s = e.sum(axis=-1, keepdims=True)
    k = np.vectorize(lambda v: int(v).bit_length() - 1)(s)
    r = k + (s * s >= np.left_shift(np.int64(1), 2 * k + 1))
    return e >> (r - exp_bits), r - exp_bits


def exact_float_shift(logits):
    """round(log2(sum(2^(floor(x) - max)))) of float logits, in float64 (exact sums)."""
    x = np.floor(np.asarray(logits, np.float64))
    x = x - x.max(axis=-1, keepdims=True)
    return np.round(np.log2(np.sum(2.0**x, axis=-1, keepdims=True)))


# ---- float shiftmax --------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, 0, 1, [1, 2]], ids=["last", "first", "middle", "list"])
def test_shiftmax_matches_formula(axis):
    logits = np.random.default_rng(1).normal(0, 6, SHAPE).astype(np.float32)
    got = shiftmax(tf.constant(logits), axis=axis).numpy()
    np.testing.assert_array_equal(got, np_shiftmax(logits, axis=tuple(np.atleast_1d(axis))))
    # every output is a power of two, and the sum is within [1/sqrt(2), sqrt(2)]
    assert np.all(np.log2(got) == np.round(np.log2(got)))
    total = got.sum(axis=tuple(np.atleast_1d(axis)))
    assert np.all((total >= 2**-0.5 - 1e-6) & (total <= 2**0.5 + 1e-6))


def test_shiftmax_large_logits_and_layer():
    # the max subtraction avoids inf: 2^1000 overflows float32
    logits = tf.constant([[1000.0, 999.5, 998.0], [-3.2, 0.0, 2.9]])
    expected = np_shiftmax(logits.numpy())
    np.testing.assert_array_equal(shiftmax(logits).numpy(), expected)
    np.testing.assert_array_equal(Shiftmax()(logits).numpy(), expected)


def test_shiftmax_gradient_is_softmax2():
    """The STE gradient is that of 2^x / sum(2^x) = softmax(x * ln 2)."""
    logits = tf.constant(np.random.default_rng(2).normal(0, 3, SHAPE).astype(np.float32))
    weights = tf.constant(np.random.default_rng(3).normal(0, 1, SHAPE).astype(np.float32))
    grads = []
    for fn in (shiftmax, lambda x: tf.nn.softmax(x * np.log(2.0))):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_sum(fn(logits) * weights)
        grads.append(tape.gradient(loss, logits).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert np.abs(grads[0]).sum() > 0


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_shiftmax_errors(graph):
    fn = tf.function(shiftmax) if graph else shiftmax
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-empty"):
        fn(tf.zeros((2, 0)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="axis"):
        fn(tf.zeros((2, 3)), axis=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="axis"):
        fn(tf.zeros((2, 3)), axis=-3)


def test_shiftmax_dynamic_empty():
    fn = tf.function(shiftmax, input_signature=[tf.TensorSpec([None, None])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-empty"):
        fn(tf.zeros((0, 3)))


# ---- QuantizedShiftmax -----------------------------------------------------------------------
def _inputs(kind):
    """Inputs with a wide range of logits (|x| up to 16 with frac_bits 3)."""
    x = INPUTS[kind](SHAPE)
    fp = x.fp if isinstance(x, QFloat) else x
    fp = FixedPoint(fp.values, fp.value_bits, fp.frac_bits - 1)
    return QFloat(fp, x.scales) if isinstance(x, QFloat) else fp


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("exp_bits", [4, 8], ids=["E4", "E8"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_quantized_numerics(kind, exp_bits, oq):
    x = _inputs(kind)
    config = {"exp_bits": exp_bits}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedShiftmax(quant_config=config)
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(1.0)
    out = layer(x)
    # integer reference
    ref, _ = np_integer_shiftmax(np_floor_logits(x), exp_bits)
    ref_frac = np.int64(exp_bits)
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    assert int(frac(out)) == int(ref_frac)
    # float bound (FixedPoint inputs, whose floor is exact): where the integer normalization
    # shift equals the float one, every output equals the float shiftmax except those below
    # 2^-E, floored to 0: |p_q - p| < 2^-E. The shifts differ only when the dropped terms
    # (< N * 2^-E in total) move the sum across 2^(k + 1/2).
    if isinstance(x, QFloat):
        return
    expected = Shiftmax()(x.to_float()).numpy()
    _, shift = np_integer_shiftmax(np_floor_logits(x), exp_bits)
    agree = (shift == exact_float_shift(x.to_float().numpy()))[..., 0]
    assert agree.mean() >= 0.75, agree
    bound = 2.0**-exp_bits
    if oq is not None:
        expected = np.minimum(expected, 255 / 256)
        bound = bound + 2.0**-9
    err = np.abs(out.to_float().numpy() - expected)[agree]
    assert np.all(err < bound + 1e-9), err.max()


def test_quantized_disagreement_margin():
    """Rows whose normalization shift differs from the float one have a sum within
    N * 2^-E of the rounding boundary 2^(k + 1/2)."""
    rng = np.random.default_rng(5)
    values = rng.integers(-6, 6, size=(64, 8)).astype(np.float32)
    # [0, -2 x 7]: the float sum 2.75 rounds to 2^1, the integer one (E=1) drops the 2^-2
    values[0] = [0, -2, -2, -2, -2, -2, -2, -2]
    x = FixedPoint(tf.constant(values), 7, 0.0)
    exp_bits = 1
    out = QuantizedShiftmax(quant_config={"exp_bits": exp_bits})(x)
    p_ref, shift = np_integer_shiftmax(ints(x), exp_bits)
    np.testing.assert_array_equal(ints(out), p_ref)
    y = values - values.max(axis=-1, keepdims=True)
    s = np.sum(2.0**y, axis=-1, keepdims=True)
    differ = shift != np.round(np.log2(s))
    k = np.floor(np.log2(s))
    margin = np.abs(s - 2.0**(k + 0.5))
    assert differ[0] and differ.mean() < 0.5, differ.mean()
    assert np.all(margin[differ] <= 8 * 2.0**-exp_bits)


def test_quantized_gradients():
    model = single_layer_model(QuantizedShiftmax(), SHAPE[1:])
    grads = float_gradient(model, random_inputs(SHAPE))
    assert float(tf.reduce_sum(tf.abs(grads))) > 0


def test_quantize_target_and_signature():
    assert QUANTIZATION_TARGETS[Shiftmax] is QuantizedShiftmax
    check_signature_parity(QuantizedShiftmax, Shiftmax)


@pytest.mark.parametrize("layer_fn", [
    lambda: Shiftmax(name="sm"),
    lambda: QuantizedShiftmax(quant_config={"exp_bits": 6, "output_quantizer": OQ,
                                            "buffer_bitwidth": 24})],
    ids=["float", "quantized"])
def test_config_roundtrip(layer_fn):
    layer = layer_fn()
    clone = check_config_roundtrip(layer)
    assert getattr(clone, "exp_bits", None) == getattr(layer, "exp_bits", None)


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor", "per-axis"])
def test_save_load(oq, per_axis):
    layer = QuantizedShiftmax(quant_config=None if oq is None else {"output_quantizer": oq})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis, out_range=1.0)
    check_save_load(model, random_inputs(SHAPE))


def test_bad_inputs():
    x = INPUTS["fp-per-tensor"](SHAPE)
    with pytest.raises(TypeError, match="sm_float.*expected FixedPoint or QFloat"):
        QuantizedShiftmax(name="sm_float")(tf.ones(SHAPE))
    for bits in (0, 31):
        with pytest.raises(ValueError, match=f"sm_exp: exp_bits expected .*{bits}"):
            QuantizedShiftmax(name="sm_exp", quant_config={"exp_bits": bits})
    for bits in (0, 33):
        with pytest.raises(ValueError, match=f"sm_oq/output_quantizer: bitwidth .*{bits}"):
            QuantizedShiftmax(name="sm_oq", quant_config={"output_quantizer": {"bitwidth": bits}})
    with pytest.raises(ValueError, match="sm_key: quant_config expected keys"):
        QuantizedShiftmax(name="sm_key", quant_config={"weight_quantizer": {}})
    # 6 exponentials of 2^8 do not fit a 10-bit buffer
    with pytest.raises(ValueError, match="sm_buffer.*exp_bits expected at most 6"):
        QuantizedShiftmax(name="sm_buffer", quant_config={"buffer_bitwidth": 10})(x)
