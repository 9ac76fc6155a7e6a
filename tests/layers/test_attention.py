"""Tests of quantizeml.layers.attention (Attention, QuantizedAttention, string_to_softmax)."""
import inspect

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.attention import Attention, QuantizedAttention, string_to_softmax
from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.dense import QuantizedDense
from quantizeml.layers.quantizers import Dequantizer, InputQuantizer
from quantizeml.layers.shiftmax import shiftmax
from quantizeml.tensors import FixedPoint
from tests.layers.references import (fixed_point, float_gradient, frac, ints, output_quantizer,
                                     quantize_scales, random_inputs, single_layer_model)
from tests.layers.test_shiftmax import (exact_float_shift, np_floor_shift, np_integer_shiftmax,
                                        np_shiftmax)
from tests.utils import check_config_roundtrip, check_gradients_reach, check_save_load

TOKENS, HIDDEN = 5, 8
SHAPE = (2, TOKENS, HIDDEN)
OQ = {"bitwidth": 8}


# ---- numpy references ------------------------------------------------------------------------
def np_split(x, heads):
    b, t, h = x.shape
    return x.reshape(b, t, heads, h // heads).transpose(0, 2, 1, 3)


def np_merge(x):
    b, heads, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, heads * d)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_attention(q, k, v, heads, softmax):
    """The six documented steps in float64 numpy."""
    q, k, v = (np_split(np.asarray(t, np.float64), heads) for t in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    mask = np_softmax(scores) if softmax == "softmax" else np_shiftmax(scores)
    return np_merge(mask @ v)


def np_quantized_attention(q, k, v, heads, exp_bits, scale_bits=8):
    """The integer QuantizedAttention in int64: (output values, frac_bits, mask shifts)."""
    (qv, kv, vv), (fq, fk, fv) = zip(*[(ints(t), int(frac(t))) for t in (q, k, v)])
    qh, kh, vh = (np_split(t, heads) for t in (qv, kv, vv))
    dim = qh.shape[-1]
    scores = qh @ kh.transpose(0, 1, 3, 2)
    half = np.log2(dim) / 2
    if half == int(half):  # power of 4: a shift
        logits = np_floor_shift(scores, fq + fk + int(half))
    else:  # the scale 1/sqrt(dim) quantized on scale_bits
        s_int, s_frac = quantize_scales(np.float32(1 / np.sqrt(dim)), scale_bits)
        logits = np_floor_shift(scores * s_int, fq + fk + s_frac)
    mask, shifts = np_integer_shiftmax(logits, exp_bits)
    return np_merge(mask @ vh), exp_bits + fv, shifts


def np_softmax_logits(q, k, heads, scale_bits=8):
    """The exact float64 scores of the integer QuantizedAttention: (logits, split values)."""
    (qv, kv), (fq, fk) = zip(*[(ints(t), int(frac(t))) for t in (q, k)])
    qh, kh = np_split(qv, heads), np_split(kv, heads)
    dim = qh.shape[-1]
    scores = qh @ kh.transpose(0, 1, 3, 2)
    half = np.log2(dim) / 2
    if half == int(half):  # power of 4: a shift
        return scores * 2.0**-(fq + fk + int(half))
    s_int, s_frac = quantize_scales(np.float32(1 / np.sqrt(dim)), scale_bits)
    return (scores * s_int) * 2.0**-(fq + fk + s_frac)  # exact: |scores * s_int| < 2^53


def np_quantized_softmax_attention(q, k, v, heads, exp_bits, scale_bits=8):
    """The softmax QuantizedAttention: numpy float64 softmax of the layer's exact integer
    scores, rounded half up on exp_bits fractional bits, then an int64 matmul. Returns (output
    values, frac_bits, near_ties): near_ties flags the mask entries within 1e-9 of a rounding
    boundary, the only ones where TF's and numpy's float64 softmax (a few ulps apart, ~1e-16)
    could round differently."""
    logits = np_softmax_logits(q, k, heads, scale_bits)
    scaled = np_softmax(logits) * 2.0**exp_bits
    near_ties = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-9
    mask = np.floor(scaled + 0.5).astype(np.int64)
    assert mask.min() >= 0 and mask.max() <= 2**exp_bits
    return np_merge(mask @ np_split(ints(v), heads)), exp_bits + int(frac(v)), near_ties


def _qkv(seed=0, tokens=TOKENS, hidden=HIDDEN, frac_bits=(3, 4, 4)):
    """Per-tensor FixedPoint query/key/value of 7 value bits."""
    rng = np.random.default_rng(seed)
    return [FixedPoint(tf.constant(rng.integers(-128, 128, (2, tokens, hidden)), tf.float32),
                       7, float(f)) for f in frac_bits]


# ---- float Attention -------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [1, 2, 4], ids=["h1", "h2", "h4"])
def test_float_softmax(heads):
    rng = np.random.default_rng(heads)
    q, k, v = (rng.normal(0, 1, SHAPE).astype(np.float32) for _ in range(3))
    out = Attention(heads)([q, k, v]).numpy()
    np.testing.assert_allclose(out, np_attention(q, k, v, heads, "softmax"), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2], ids=["dim8", "dim4"])
def test_float_shiftmax(heads):
    # integers on a 1/4 grid: the scores (and their division by sqrt(4) = 2) are exact in
    # float32, so that the floor of the shiftmax sees the same values as numpy's; for dim 8,
    # scores / sqrt(8) is irrational, never an integer, and rounding cannot cross one here
    rng = np.random.default_rng(heads)
    q, k, v = (rng.integers(-8, 8, SHAPE).astype(np.float32) / 4 for _ in range(3))
    out = Attention(heads, softmax="shiftmax")([q, k, v]).numpy()
    np.testing.assert_allclose(out, np_attention(q, k, v, heads, "shiftmax"), rtol=1e-6)


def test_string_to_softmax():
    assert string_to_softmax("softmax") is tf.nn.softmax
    assert string_to_softmax("shiftmax") is shiftmax
    for bad in ("softmax2", None, 1):
        with pytest.raises(ValueError, match="string_to_softmax expected one of"):
            string_to_softmax(bad)


# ---- QuantizedAttention ----------------------------------------------------------------------
@pytest.mark.parametrize("heads", [1, 2, 4], ids=["dim8-qfloat", "dim4-shift", "dim2-qfloat"])
@pytest.mark.parametrize("exp_bits", [3, 8], ids=["E3", "E8"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_quantized_integer_exact(heads, exp_bits, oq):
    q, k, v = _qkv(seed=heads)
    config = {"exp_bits": exp_bits}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedAttention(heads, quant_config=config)
    layer([q, k, v])
    if oq is not None:
        layer.out_quantizer.range_max.assign(6.0)
    out = layer([q, k, v])
    ref, ref_frac, _ = np_quantized_attention(q, k, v, heads, exp_bits)
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    assert out.per_tensor and int(frac(out)) == int(ref_frac)


@pytest.mark.parametrize("heads", [2, 8], ids=["dim4", "dim1"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_quantized_vs_float(heads, oq):
    """Against Attention(softmax='shiftmax') on the dequantized inputs, for dims whose rescale
    is a shift (powers of 4): the scores and their floor are then exact, and each mask entry
    equals the float one except those below 2^-E, dropped, where the integer normalization
    shift equals the float one. So, per output, |y_q - y| <= T * 2^-E * max|v| (T tokens),
    plus half an output quantization step (inside the output range)."""
    exp_bits = 6
    q, k, v = _qkv(seed=3)
    config = {"exp_bits": exp_bits}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedAttention(heads, quant_config=config)
    layer([q, k, v])
    if oq is not None:
        layer.out_quantizer.range_max.assign(8.0)
    out = layer([q, k, v]).to_float().numpy()
    floats = [t.to_float().numpy() for t in (q, k, v)]
    expected = Attention(heads, softmax="shiftmax")(floats).numpy()
    # rows (batch, head, token) whose integer shift agrees with the float one
    _, _, shifts = np_quantized_attention(q, k, v, heads, exp_bits)
    qh, kh = np_split(floats[0], heads), np_split(floats[1], heads)
    scores = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(qh.shape[-1])
    agree = (shifts == exact_float_shift(scores))[..., 0]  # (batch, heads, tokens)
    assert agree.mean() >= 0.75, agree.mean()
    agree = np.repeat(agree.transpose(0, 2, 1), HIDDEN // heads, axis=-1)  # output layout
    bound = TOKENS * 2.0**-exp_bits * np.abs(floats[2]).max()
    if oq is not None:
        step = 2.0**-int(frac(layer.out_quantizer))
        expected = np.clip(expected, -128 * step, 127 * step)
        bound = bound + step / 2
    err = np.abs(out - expected)[agree]
    assert np.all(err <= bound + 1e-6), (err.max(), bound)


@pytest.mark.parametrize("heads", [1, 2, 4], ids=["dim8-qfloat", "dim4-shift", "dim2-qfloat"])
@pytest.mark.parametrize("exp_bits,oq", [(8, None), (4, OQ)], ids=["E8-no-oq", "E4-oq"])
def test_quantized_softmax_integer_exact(heads, exp_bits, oq):
    """softmax='softmax': bit for bit against numpy (float64 softmax of the same exact integer
    scores, rounded half up); the data has no near-tie mask entry (asserted), so no 1-LSB
    tolerance is needed."""
    q, k, v = _qkv(seed=10 + heads)
    config = {"exp_bits": exp_bits}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedAttention(heads, quant_config=config, softmax="softmax")
    layer([q, k, v])
    if oq is not None:
        layer.out_quantizer.range_max.assign(6.0)
    out = layer([q, k, v])
    ref, ref_frac, near_ties = np_quantized_softmax_attention(q, k, v, heads, exp_bits)
    assert not near_ties.any()
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    assert out.per_tensor and int(frac(out)) == int(ref_frac)
    assert out.value_bits <= layer.buffer_bitwidth - 1


def test_quantized_softmax_full_probability():
    """A probability of exactly 1.0 (one dominant score) is 2^E, held by the E + 1 value bits
    of the mask: the output equals the value of the dominant token exactly."""
    tokens, hidden = 3, 4
    q = FixedPoint(tf.fill((1, tokens, hidden), 100.0), 7, 0.0)
    k = FixedPoint(tf.constant([[[100.0] * hidden, [0.0] * hidden, [-100.0] * hidden]]), 7, 0.0)
    v = FixedPoint(tf.constant(np.arange(tokens * hidden, dtype=np.float32).reshape(
        1, tokens, hidden) - 5), 7, 0.0)
    out = QuantizedAttention(1, {"exp_bits": 8}, softmax="softmax")([q, k, v])
    np.testing.assert_array_equal(out.to_float().numpy(),
                                  np.broadcast_to(v.to_float().numpy()[:, :1], (1, 3, 4)))


def _sqrt_shift_dim(dim):
    """True when dim is a power of 4 (the rescale is then a shift)."""
    return np.log2(dim) / 2 == int(np.log2(dim) / 2)


@pytest.mark.parametrize("heads", [1, 2, 4], ids=["dim8-qfloat", "dim4-shift", "dim2-qfloat"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_quantized_softmax_vs_float(heads, oq):
    """Against Attention(softmax='softmax') on the dequantized inputs. Each mask entry is
    within 2^-(E+1) of the float64 softmax of the layer's scores (rounding), and those scores
    differ from the float ones only by the rescale: exact for dims that are powers of 4,
    else ``|d logit| <= |logit| * 2^-8`` (the 8-bit scale), which moves a softmax row by at
    most ``2 max|d logit|`` in L1. So per output ``|y_q - y| <= (T * 2^-(E+1) +
    2 max|d logit|) * max|v|`` (T tokens), plus float32 rounding (1e-5), plus half an output
    quantization step (inside the output range)."""
    exp_bits = 6
    q, k, v = _qkv(seed=3)
    config = {"exp_bits": exp_bits}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedAttention(heads, quant_config=config, softmax="softmax")
    layer([q, k, v])
    if oq is not None:
        layer.out_quantizer.range_max.assign(8.0)
    out = layer([q, k, v]).to_float().numpy()
    floats = [t.to_float().numpy() for t in (q, k, v)]
    expected = Attention(heads, softmax="softmax")(floats).numpy()
    qh, kh = np_split(floats[0], heads), np_split(floats[1], heads)
    logits = qh.astype(np.float64) @ kh.transpose(0, 1, 3, 2) / np.sqrt(qh.shape[-1])
    d_logit = np.abs(np_softmax_logits(q, k, heads) - logits).max()
    if _sqrt_shift_dim(qh.shape[-1]):
        assert d_logit == 0
    assert d_logit <= np.abs(logits).max() * 2.0**-8
    bound = (TOKENS * 2.0**-(exp_bits + 1) + 2 * d_logit) * np.abs(floats[2]).max() + 1e-5
    if oq is not None:
        step = 2.0**-int(frac(layer.out_quantizer))
        expected = np.clip(expected, -128 * step, 127 * step)
        bound = bound + step / 2
    err = np.abs(out - expected)
    assert np.all(err <= bound), (err.max(), bound)
    assert err.max() > 0  # the rounding is visible


@pytest.mark.parametrize("softmax", ["shiftmax", "softmax"])
def test_quantized_gradients_reach_inputs(softmax):
    model = single_layer_model(QuantizedAttention(2, softmax=softmax), SHAPE[1:], n_inputs=3)
    grads = float_gradient(model, random_inputs(SHAPE, n_inputs=3, scale=1.0))
    for g in grads:
        assert float(tf.reduce_sum(tf.abs(g))) > 0


def _qkv_dense_model(softmax="shiftmax"):
    """Input -> InputQuantizer -> Dense q, k, v (per-tensor 8-bit outputs) -> attention."""
    inputs = keras.Input(SHAPE[1:])
    iq = InputQuantizer(bitwidth=8)
    x = iq(inputs)
    oq = {"bitwidth": 8, "axis": "per-tensor"}
    denses = [QuantizedDense(HIDDEN, quant_config={"output_quantizer": oq}, name=n)
              for n in ("query", "key", "value")]
    qkv = [d(x) for d in denses]
    attention = QuantizedAttention(2, quant_config={"output_quantizer": OQ}, softmax=softmax)
    model = keras.Model(inputs, Dequantizer()(attention(qkv)))
    iq.range_max.assign(4.0)
    for d in denses:
        d.out_quantizer.range_max.assign(4.0)
    attention.out_quantizer.range_max.assign(4.0)
    return model


@pytest.mark.parametrize("softmax", ["shiftmax", "softmax"])
def test_quantized_gradients_reach_dense_kernels(softmax):
    model = _qkv_dense_model(softmax)
    check_gradients_reach(model, random_inputs(SHAPE, scale=1.0))


def test_quantize_target_and_signature():
    assert QUANTIZATION_TARGETS[Attention] is QuantizedAttention
    # documented signatures: Attention(num_heads, softmax='softmax') and
    # QuantizedAttention(num_heads, quant_config=None, softmax='shiftmax'): the quantized twin
    # keeps the float parameters (quant_config comes before softmax, whose default differs)
    def params(cls):
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()
                if p.name not in ("self", "kwargs")]
    empty = inspect.Parameter.empty
    assert params(Attention) == [("num_heads", empty), ("softmax", "softmax")]
    assert params(QuantizedAttention) == [("num_heads", empty), ("quant_config", None),
                                          ("softmax", "shiftmax")]


@pytest.mark.parametrize("layer_fn", [
    lambda: Attention(4, softmax="shiftmax"),
    lambda: QuantizedAttention(2, quant_config={"exp_bits": 6, "output_quantizer": OQ,
                                                "buffer_bitwidth": 28}),
    lambda: QuantizedAttention(2, quant_config={"exp_bits": 7}, softmax="softmax")],
    ids=["float", "quantized", "quantized-softmax"])
def test_config_roundtrip(layer_fn):
    layer = layer_fn()
    clone = check_config_roundtrip(layer)
    assert clone.num_heads == layer.num_heads and clone.softmax == layer.softmax


@pytest.mark.parametrize("layer_fn", [
    lambda: QuantizedAttention(2), lambda: QuantizedAttention(1, {"output_quantizer": OQ}),
    lambda: QuantizedAttention(1, {"output_quantizer": OQ}, softmax="softmax")],
    ids=["shift", "qfloat-oq", "softmax-qfloat-oq"])
def test_save_load(layer_fn):
    model = single_layer_model(layer_fn(), SHAPE[1:], n_inputs=3)
    check_save_load(model, random_inputs(SHAPE, n_inputs=3, scale=1.0))


def test_save_load_float():
    inputs = [keras.Input(SHAPE[1:]) for _ in range(3)]
    model = keras.Model(inputs, Attention(2, softmax="shiftmax")(inputs))
    check_save_load(model, random_inputs(SHAPE, n_inputs=3))


def test_bad_inputs():
    q, k, v = _qkv()
    floats = [t.to_float() for t in (q, k, v)]
    for cls in (Attention, QuantizedAttention):
        args = (q, k, v) if cls is QuantizedAttention else floats
        other = fixed_point((2, TOKENS, 4)) if cls is QuantizedAttention else tf.ones((2, 5, 4))
        with pytest.raises(ValueError, match="att_shapes.*same shape.*key.shape=\\(2, 5, 4\\)"):
            cls(2, name="att_shapes")([args[0], other, args[2]])
        with pytest.raises(ValueError, match="att_heads.*divisible by num_heads=3.*hidden=8"):
            cls(3, name="att_heads")(list(args))
        with pytest.raises(ValueError, match="att_two.*list of three inputs"):
            cls(2, name="att_two")(list(args[:2]))
        with pytest.raises(ValueError, match="att_zero.*num_heads to be a positive int"):
            cls(0, name="att_zero")
    with pytest.raises(ValueError, match="att_rank.*query of shape \\[batch, tokens, hidden\\]"):
        Attention(2, name="att_rank")([tf.ones((2, 8))] * 3)
    with pytest.raises(ValueError, match="string_to_softmax expected one of"):
        Attention(2, softmax="relu")
    # quantized only
    per_axis = FixedPoint(k.values, 7, tf.range(HIDDEN, dtype=tf.float32) % 4)
    with pytest.raises(ValueError, match="att_axis.*per-tensor inputs.*per-axis key"):
        QuantizedAttention(2, name="att_axis")([q, per_axis, v])
    with pytest.raises(TypeError, match="att_float.*FixedPoint inputs.*value of type"):
        QuantizedAttention(2, name="att_float")([q, k, floats[2]])
    with pytest.raises(ValueError, match="string_to_softmax expected one of"):
        QuantizedAttention(2, softmax="relu", name="att_softmax")
    for bits in (0, 33):
        with pytest.raises(ValueError, match=f"att_bits/output_quantizer: bitwidth .*{bits}"):
            QuantizedAttention(2, {"output_quantizer": {"bitwidth": bits}}, name="att_bits")
    with pytest.raises(ValueError, match="att_key: quant_config expected keys"):
        QuantizedAttention(2, {"weight_quantizer": {}}, name="att_key")
