"""Tests of quantizeml.layers.tokens (ClassToken, AddPositionEmbs, ExtractToken, twins)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.base import saturation
from quantizeml.layers.tokens import (AddPositionEmbs, ClassToken, ExtractToken,
                                      QuantizedAddPositionEmbs, QuantizedClassToken,
                                      QuantizedExtractToken, TokenQuantizer)
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, fixed_point, frac, ints, output_quantizer,
                                     random_inputs, single_layer_model, to_int_fixed)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 3, 4)
OQ = {"bitwidth": 8}
TOKEN_Q = {"8bit": {"bitwidth": 8}, "4bit": {"bitwidth": 4}}


def _random_weight(variable, seed=0, scale=0.8):
    rng = np.random.default_rng(seed)
    variable.assign(rng.normal(0, scale, variable.shape).astype(np.float32))


def _qfloat_bound(x):
    """Error of a QFloat input converted to a FixedPoint (8-bit scales): |x| * 2^-8."""
    return np.abs(x.to_float().numpy()) * 2.0**-8 if isinstance(x, QFloat) else 0.0


def np_token(weight, frac_bits, bitwidth):
    """A token quantized on the input grid: clip(round_half_up(w * 2^f)) on bitwidth bits."""
    scaled = np.asarray(weight, np.float64) * 2.0**np.asarray(frac_bits, np.float64)
    return np.clip(np.floor(scaled + 0.5), -2**(bitwidth - 1),
                   2**(bitwidth - 1) - 1).astype(np.int64)


def _token_expected(weight, frac_bits, bitwidth):
    """The float token clipped to its quantization range, and its rounding bound (half a
    step of the input grid, 2^-(f + 1))."""
    step = 2.0**-np.asarray(frac_bits, np.float64)
    clipped = np.clip(weight, -2**(bitwidth - 1) * step, (2**(bitwidth - 1) - 1) * step)
    return clipped, step / 2


# ---- float layers ----------------------------------------------------------------------------
def test_float_layers_match_numpy():
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    cls_layer = ClassToken(initializer="random_normal")
    out = cls_layer(x).numpy()
    cls = cls_layer.cls.numpy()
    np.testing.assert_array_equal(out, np.concatenate([np.repeat(cls, 2, axis=0), x], axis=1))
    assert ClassToken()(x).numpy()[:, 0].sum() == 0  # default initializer: zeros
    pe_layer = AddPositionEmbs()
    out = pe_layer(x).numpy()
    assert pe_layer.pe.shape == (1,) + SHAPE[1:]
    assert 0 < np.std(pe_layer.pe.numpy()) < 0.05  # default: RandomNormal(stddev=0.02)
    np.testing.assert_array_equal(out, x + pe_layer.pe.numpy())
    for token, axis in ((0, 1), (2, 1), (1, -1), (0, 0)):
        np.testing.assert_array_equal(ExtractToken(token, axis=axis)(x).numpy(),
                                      np.take(x, token, axis=axis))


# ---- QuantizedClassToken ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("token_q", list(TOKEN_Q), ids=list(TOKEN_Q))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_class_token_numerics(kind, token_q, oq):
    x = INPUTS[kind](SHAPE)
    config = {"cls_quantizer": TOKEN_Q[token_q]}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedClassToken(quant_config=config)
    layer(x)
    _random_weight(layer.cls)
    if oq is not None:
        layer.out_quantizer.range_max.assign(8.0)
    out = layer(x)
    # integer reference: the token quantized on the input grid, concatenated
    bits = TOKEN_Q[token_q]["bitwidth"]
    xv, xf = to_int_fixed(x)
    cls_int = np_token(layer.cls.numpy(), xf, bits)
    np.testing.assert_array_equal(ints(layer.cls_quantizer(layer.cls, layer._to_fixed_point(x))),
                                  cls_int)
    ref = np.concatenate([np.repeat(cls_int, 2, axis=0), xv], axis=1)
    ref_frac = xf
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    # float bound: the token errs by half a step of the input grid (inside its range), QFloat
    # inputs by |x| 2^-8
    token, token_bound = _token_expected(layer.cls.numpy(), xf, bits)
    expected = np.concatenate([np.repeat(token, 2, axis=0), x.to_float().numpy()], axis=1)
    bound = np.concatenate([np.broadcast_to(token_bound, (2, 1, SHAPE[-1])),
                            np.broadcast_to(_qfloat_bound(x), SHAPE)], axis=1)
    if oq is not None:
        step = 2.0**-int(frac(layer.out_quantizer))
        expected, bound = np.clip(expected, -128 * step, 127 * step), bound + step / 2
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-7), (err - bound).max()


# ---- QuantizedAddPositionEmbs ----------------------------------------------------------------
@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("token_q", list(TOKEN_Q), ids=list(TOKEN_Q))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_add_position_embs_numerics(kind, token_q, oq):
    x = INPUTS[kind](SHAPE)
    config = {"pe_quantizer": TOKEN_Q[token_q]}
    if oq is not None:
        config["output_quantizer"] = oq
    layer = QuantizedAddPositionEmbs(quant_config=config)
    layer(x)
    _random_weight(layer.pe, seed=1)
    if oq is not None:
        layer.out_quantizer.range_max.assign(8.0)
    out = layer(x)
    # integer reference: the embeddings quantized on the input grid, added
    bits = TOKEN_Q[token_q]["bitwidth"]
    xv, xf = to_int_fixed(x)
    pe_int = np_token(layer.pe.numpy(), xf, bits)
    ref = xv + pe_int
    ref_frac = xf
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    # float bound: half a step of the input grid (inside the embeddings' range), QFloat inputs
    # |x| 2^-8
    pe, pe_bound = _token_expected(layer.pe.numpy(), xf, bits)
    expected = x.to_float().numpy() + pe
    bound = pe_bound + _qfloat_bound(x)
    if oq is not None:
        step = 2.0**-int(frac(layer.out_quantizer))
        expected, bound = np.clip(expected, -128 * step, 127 * step), bound + step / 2
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-7), (err - bound).max()


# ---- QuantizedExtractToken -------------------------------------------------------------------
@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor", "per-axis"])
@pytest.mark.parametrize("token, axis", [(0, 1), (2, 1), (3, -1)], ids=["t0", "t2", "last"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_extract_token_numerics(per_axis, token, axis, oq):
    x = fixed_point(SHAPE, per_axis=per_axis)
    layer = QuantizedExtractToken(token, axis=axis,
                                  quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(4.0)
    out = layer(x)
    ref = np.take(ints(x), token, axis=axis)
    ref_frac = np.broadcast_to(frac(x), SHAPE[-1:])
    ref_frac = ref_frac[token] if axis == -1 else ref_frac
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), ref.shape),
                                  np.broadcast_to(ref_frac, ref.shape))
    # exact without an output quantizer: the float layer on the dequantized inputs
    if oq is None:
        np.testing.assert_array_equal(out.to_float().numpy(),
                                      ExtractToken(token, axis=axis)(x.to_float()).numpy())


# ---- common ----------------------------------------------------------------------------------
def test_gradients():
    for layer in (QuantizedClassToken(quant_config={"output_quantizer": OQ}),
                  QuantizedAddPositionEmbs(quant_config={"output_quantizer": OQ})):
        model = single_layer_model(layer, SHAPE[1:], out_range=8.0)
        weight = layer.cls if isinstance(layer, QuantizedClassToken) else layer.pe
        _random_weight(weight)
        check_gradients_reach(model, random_inputs(SHAPE), [weight])


def test_quantize_targets_and_signatures():
    for float_cls, qcls in ((ClassToken, QuantizedClassToken),
                            (AddPositionEmbs, QuantizedAddPositionEmbs),
                            (ExtractToken, QuantizedExtractToken)):
        assert QUANTIZATION_TARGETS[float_cls] is qcls
        check_signature_parity(qcls, float_cls)


@pytest.mark.parametrize("layer_fn", [
    lambda: ClassToken(initializer="random_normal"),
    lambda: QuantizedClassToken(quant_config={"cls_quantizer": {"bitwidth": 4},
                                              "output_quantizer": OQ}),
    lambda: AddPositionEmbs(),
    lambda: QuantizedAddPositionEmbs(initializer="zeros",
                                     quant_config={"pe_quantizer": {"signed": False}}),
    lambda: ExtractToken(2, axis=-1),
    lambda: QuantizedExtractToken(1, quant_config={"output_quantizer": OQ})],
    ids=["cls", "qcls", "pe", "qpe", "extract", "qextract"])
def test_config_roundtrip(layer_fn):
    layer = layer_fn()
    clone = check_config_roundtrip(layer)
    assert type(clone.get_config()) is dict


@pytest.mark.parametrize("layer_fn", [
    lambda: QuantizedClassToken(initializer="random_normal"),
    lambda: QuantizedAddPositionEmbs(quant_config={"output_quantizer": OQ}),
    lambda: QuantizedExtractToken(0, quant_config={"output_quantizer": OQ})],
    ids=["cls", "pe", "extract"])
def test_save_load(layer_fn):
    model = single_layer_model(layer_fn(), SHAPE[1:])
    check_save_load(model, random_inputs(SHAPE))


def test_save_load_float():
    inputs = keras.Input(SHAPE[1:])
    x = AddPositionEmbs()(ClassToken(initializer="random_normal")(inputs))
    model = keras.Model(inputs, ExtractToken(0)(x))
    check_save_load(model, random_inputs(SHAPE))


def test_bad_inputs():
    x = fixed_point(SHAPE)
    for cls in (QuantizedClassToken, QuantizedAddPositionEmbs):
        with pytest.raises(TypeError, match="tok_float.*expected FixedPoint or QFloat"):
            cls(name="tok_float")(tf.ones(SHAPE))
        key = "cls_quantizer" if cls is QuantizedClassToken else "pe_quantizer"
        with pytest.raises(ValueError, match=f"tok_axis: quant_config\\['{key}'\\] expected keys"):
            cls(name="tok_axis", quant_config={key: {"axis": -1}})
        for bits in (0, 33):
            with pytest.raises(ValueError, match=f"tok_bits/{key}: bitwidth .*{bits}"):
                cls(name="tok_bits", quant_config={key: {"bitwidth": bits}})
        with pytest.raises(ValueError, match="tok_key: quant_config expected keys"):
            cls(name="tok_key", quant_config={"weight_quantizer": {}})
    for cls in (ClassToken, AddPositionEmbs, QuantizedClassToken, QuantizedAddPositionEmbs):
        with pytest.raises(ValueError, match="tok_rank.*\\[batch, tokens, hidden\\]"):
            cls(name="tok_rank")(fixed_point((2, 4)) if cls.__name__.startswith("Q")
                                 else tf.ones((2, 4)))
    with pytest.raises(TypeError, match="tok_extract.*expected FixedPoint inputs.*QFloat"):
        QuantizedExtractToken(0, name="tok_extract")(INPUTS["qfloat-per-tensor"](SHAPE))
    with pytest.raises(TypeError, match="tok_extract_f.*expected FixedPoint inputs"):
        QuantizedExtractToken(0, name="tok_extract_f")(tf.ones(SHAPE))
    with pytest.raises(ValueError, match="tok_token.*token to be an int.*'a'"):
        ExtractToken("a", name="tok_token")
    assert isinstance(QuantizedExtractToken(0)(x), FixedPoint)


def test_token_quantizer():
    x = fixed_point(SHAPE, per_axis=True)
    quantizer = TokenQuantizer(bitwidth=4, name="tq")
    weight = np.linspace(-3, 3, SHAPE[-1]).astype(np.float32)[None, None]
    out = quantizer(weight, x)
    np.testing.assert_array_equal(ints(out), np_token(weight, frac(x), 4))
    np.testing.assert_array_equal(frac(out), frac(x))
    assert saturation(quantizer)["weights"] > 0  # 3 * 2^f exceeds 7 for f >= 2
    unsigned = TokenQuantizer(bitwidth=4, signed=False)(weight, x)
    assert ints(unsigned).min() == 0
    check_config_roundtrip(quantizer)
    with pytest.raises(TypeError, match="tq.*other expected a FixedPoint"):
        quantizer(weight, INPUTS["qfloat-per-tensor"](SHAPE))
