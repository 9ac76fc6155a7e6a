"""Tests of quantizeml.layers.merging (QuantizedMultiply, QuantizedSubtract, QuantizedMaximum,
QuantizedMinimum): numpy integer references, float bounds, reload, gradients, quantize()."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import Dequantizer, InputQuantizer, eager_layer_calls, saturation
from quantizeml.layers.merging import (QuantizedMaximum, QuantizedMinimum, QuantizedMultiply,
                                       QuantizedSubtract)
from quantizeml.layers.registry import BLOCK_END, QUANTIZATION_TARGETS, twin_spec
from quantizeml.models import quantize
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (fixed_point, float_gradient, frac, ints, output_quantizer,
                                     qfloat, rounded_shift, to_int_fixed)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 3, 3, 4)
#: the second operand's shapes: the same, or broadcast over the spatial axes (squeeze-excite)
SHAPES = {"same": SHAPE, "broadcast": (2, 1, 1, 4)}
OQ = {"bitwidth": 8}
KINDS = {
    "fp-fp": ("fp", "fp"),
    "fp-fpaxis": ("fp", "fpaxis"),
    "fpaxis-fpaxis": ("fpaxis", "fpaxis"),
    "qfloat-fpaxis": ("qfloat", "fpaxis"),
    "qfloataxis-qfloataxis": ("qfloataxis", "qfloataxis"),
}
TWINS = {
    "multiply": (QuantizedMultiply, keras.layers.Multiply),
    "subtract": (QuantizedSubtract, keras.layers.Subtract),
    "maximum": (QuantizedMaximum, keras.layers.Maximum),
    "minimum": (QuantizedMinimum, keras.layers.Minimum),
}


def _input(kind, shape, seed):
    make = qfloat if kind.startswith("qfloat") else fixed_point
    return make(shape, per_axis=kind.endswith("axis"), seed=seed)


def _pair(kinds, shape_y):
    kx, ky = KINDS[kinds]
    return _input(kx, SHAPE, 0), _input(ky, shape_y, 7)


# ---- numpy int64 references: (values, frac_bits, scales or None) ------------------------------
def _scales(t):
    return np.asarray(t.scales, np.float32) if isinstance(t, QFloat) else None


def np_multiply(x, y):
    """Values multiply, frac bits add, scales multiply (float32, as TensorFlow does)."""
    sx, sy = _scales(x), _scales(y)
    scales = sx if sy is None else sy if sx is None else (sx * sy).astype(np.float32)
    return ints(x) * ints(y), frac(x) + frac(y), scales


def _aligned(x, y, scale_bits=8):
    (xv, xf), (yv, yf) = to_int_fixed(x, scale_bits), to_int_fixed(y, scale_bits)
    f = np.maximum(xf, yf)
    return rounded_shift(xv, f - xf), rounded_shift(yv, f - yf), f


def np_subtract(x, y, scale_bits=8):
    xa, ya, f = _aligned(x, y, scale_bits)
    return xa - ya, f, None


def np_maximum(x, y, scale_bits=8):
    xa, ya, f = _aligned(x, y, scale_bits)
    return np.maximum(xa, ya), f, None


def np_minimum(x, y, scale_bits=8):
    xa, ya, f = _aligned(x, y, scale_bits)
    return np.minimum(xa, ya), f, None


REFERENCES = {"multiply": np_multiply, "subtract": np_subtract, "maximum": np_maximum,
              "minimum": np_minimum}


def reference(layer, inputs):
    """The numpy integer reference of a merge layer, output quantizer included:
    ``(values, frac_bits, scales or None)``."""
    name = {cls: n for n, (cls, _) in TWINS.items()}[type(layer)]
    x, y = inputs
    if name == "multiply":
        values, frac_bits, scales = np_multiply(x, y)
    else:
        values, frac_bits, scales = REFERENCES[name](x, y, layer.scale_bits)
        values = np.clip(values, -2**(layer.buffer_bitwidth - 1),
                         2**(layer.buffer_bitwidth - 1) - 1)
    if layer.out_quantizer is not None:
        values, frac_bits = output_quantizer(values, frac_bits, layer.out_quantizer, scales)
        scales = None
    return values, frac_bits, scales


def _qfloat_bound(t):
    """Error of a QFloat converted to FixedPoint on 8-bit scales: |s - s_q| <= s * 2^-8."""
    return np.abs(t.to_float().numpy()) * 2.0**-8 if isinstance(t, QFloat) else 0.0


@pytest.mark.parametrize("kinds", list(KINDS), ids=list(KINDS))
@pytest.mark.parametrize("shape_y", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("op", list(TWINS), ids=list(TWINS))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_numerics(kinds, shape_y, op, oq):
    x, y = _pair(kinds, SHAPES[shape_y])
    qcls, fcls = TWINS[op]
    layer = qcls(quant_config=None if oq is None else {"output_quantizer": oq})
    layer([x, y])
    if oq is not None:
        layer.out_quantizer.range_max.assign(5.0)
    with eager_layer_calls():
        out = layer([x, y])
    values, frac_bits, scales = reference(layer, [x, y])
    assert out.shape == SHAPE
    np.testing.assert_array_equal(ints(out), values)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(frac_bits, SHAPE[-1:]))
    assert isinstance(out, QFloat) == (scales is not None)
    if scales is not None:
        np.testing.assert_array_equal(np.broadcast_to(out.scales.numpy(), SHAPE[-1:]),
                                      np.broadcast_to(scales, SHAPE[-1:]))
    # the traced call gives the same integers
    traced = tf.function(lambda a, b: layer([a, b]))(x, y)
    np.testing.assert_array_equal(ints(traced), values)
    # float bound: products and aligned FixedPoints are exact (a product's float32 scales err
    # by an ulp); a QFloat converted to FixedPoint (a QFloat product by the output quantizer)
    # errs by s * 2^-8 * |x|; the output quantizer clips to its range and adds half a step.
    expected = fcls()([x.to_float(), y.to_float()]).numpy()
    if op == "multiply":
        converted = oq is not None and (isinstance(x, QFloat) or isinstance(y, QFloat))
        bound = np.abs(expected) * (2e-7 + (2.0**-8 if converted else 0.0))
    else:
        bound = _qfloat_bound(x) + _qfloat_bound(y)
    if oq is not None:
        q = layer.out_quantizer
        step = 2.0**-frac(q)
        expected = np.clip(expected, -(2**q.value_bits) * step, (2**q.value_bits - 1) * step)
        bound = bound + step / 2
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), err.max()


def test_multiply_buffer_refused_or_exact():
    x = fixed_point(SHAPE, value_bits=7)
    y = fixed_point(SHAPE, value_bits=7, seed=3)
    # 7 + 7 + 1 value bits: the product of -128 by -128 is 2^14, exactly on a 16-bit buffer
    extreme = FixedPoint(tf.fill(SHAPE, -128.0), 7, 4.0)
    out = QuantizedMultiply(quant_config={"buffer_bitwidth": 16})([extreme, extreme])
    assert out.value_bits == 15
    np.testing.assert_array_equal(ints(out), np.full(SHAPE, 2**14))
    with pytest.raises(ValueError, match=r"mul_narrow \(QuantizedMultiply\) expected inputs "
                                         r"whose exact product fits the 15-bit buffer"):
        QuantizedMultiply(name="mul_narrow", quant_config={"buffer_bitwidth": 15})([x, y])


@pytest.mark.parametrize("op", ["subtract", "maximum", "minimum"])
def test_buffer_saturation(op):
    x = fixed_point(SHAPE, value_bits=7)
    y = fixed_point(SHAPE, value_bits=7, seed=3)
    y = FixedPoint(y.values, 7, 8.0)  # aligned: x << 4, 11 value bits
    layer = TWINS[op][0](quant_config={"buffer_bitwidth": 8})
    out = layer([x, y])
    values, _, _ = REFERENCES[op](x, y)
    np.testing.assert_array_equal(ints(out), np.clip(values, -128, 127))
    assert out.value_bits == 7
    assert saturation(layer)["buffer"] > 0


def test_registry():
    for name, (qcls, fcls) in TWINS.items():
        spec = twin_spec(fcls)
        assert QUANTIZATION_TARGETS[fcls] is qcls and spec.twin is qcls
        assert spec.output == BLOCK_END and spec.export == name and not spec.has_weights


@pytest.mark.parametrize("op", list(TWINS))
def test_signature_and_config(op):
    qcls, fcls = TWINS[op]
    check_signature_parity(qcls, fcls)
    layer = qcls(quant_config={"output_quantizer": OQ, "buffer_bitwidth": 24})
    clone = check_config_roundtrip(layer)
    assert clone.quant_config == layer.quant_config and clone.buffer_bitwidth == 24


def test_bad_inputs():
    x = fixed_point(SHAPE)
    for qcls, _ in TWINS.values():
        with pytest.raises(TypeError, match="merge_float.*expected FixedPoint or QFloat"):
            qcls(name="merge_float")([x, tf.ones(SHAPE)])
        with pytest.raises(ValueError, match="merge_three.*expected a list of two inputs"):
            qcls(name="merge_three")([x, x, x])
        with pytest.raises(ValueError, match="merge_rank.*same rank"):
            qcls(name="merge_rank")([x, fixed_point(SHAPE[1:])])
        with pytest.raises(ValueError, match="merge_shapes.*broadcastable shapes"):
            qcls(name="merge_shapes")([x, fixed_point((2, 3, 3, 2))])
        with pytest.raises(ValueError, match="merge_key: quant_config expected keys"):
            qcls(name="merge_key", quant_config={"bias_quantizer": {}})


def two_input_model(layer, shape_y=SHAPE[1:], per_axis=False):
    """Two InputQuantizers (the second on ``shape_y``) -> layer -> Dequantizer, calibrated."""
    inputs = [keras.Input(SHAPE[1:]), keras.Input(shape_y)]
    quantizers = [InputQuantizer(bitwidth=8, axis="per-axis" if per_axis else "per-tensor")
                  for _ in inputs]
    qtensors = [iq(i) for iq, i in zip(quantizers, inputs)]
    for k, iq in enumerate(quantizers):
        if per_axis:
            iq.range_max.assign([2.0**((c + k) % 4) for c in range(SHAPE[-1])])
        else:
            iq.range_max.assign(4.0 / (k + 1))
    outputs = layer(qtensors)
    if layer.out_quantizer is not None:
        layer.out_quantizer.range_max.assign(tf.fill(layer.out_quantizer.range_max.shape, 3.0))
    return keras.Model(inputs, Dequantizer()(outputs))


def _float_inputs(shape_y, scale=3.0):
    rng = np.random.default_rng(0)
    return [(scale * rng.standard_normal(SHAPE)).astype(np.float32),
            (scale * rng.standard_normal(shape_y)).astype(np.float32)]


@pytest.mark.parametrize("op", list(TWINS))
@pytest.mark.parametrize("shape_y, per_axis, oq", [
    ("same", False, None), ("broadcast", True, OQ)], ids=["same-no-oq", "broadcast-axis-oq"])
def test_save_load(op, shape_y, per_axis, oq):
    layer = TWINS[op][0](quant_config=None if oq is None else {"output_quantizer": oq})
    model = two_input_model(layer, SHAPES[shape_y][1:], per_axis)
    check_save_load(model, _float_inputs(SHAPES[shape_y]))


@pytest.mark.parametrize("op", list(TWINS))
@pytest.mark.parametrize("shape_y", list(SHAPES))
def test_gradients_reach_both_inputs(op, shape_y):
    model = two_input_model(TWINS[op][0](), SHAPES[shape_y][1:])
    grads = float_gradient(model, _float_inputs(SHAPES[shape_y], scale=0.5))
    for g in grads:
        assert g is not None and float(tf.reduce_sum(tf.abs(g))) > 0


# ---- quantize(): a squeeze-and-excite block ---------------------------------------------------
def squeeze_excite(merge=None, head=True):
    """Conv2D -> GAP(keepdims) -> Conv2D 1x1 (ReLU) -> Conv2D 1x1, multiplied with the Conv2D
    output (broadcast over H, W); optionally a 1x1 Conv2D head after the merge (which then gets
    an OutputQuantizer)."""
    inputs = keras.Input((8, 8, 3), name="inp")
    x = keras.layers.Conv2D(8, 3, padding="same", bias_initializer="random_normal",
                            name="conv")(inputs)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    s = keras.layers.Conv2D(4, 1, activation="relu", bias_initializer="random_normal",
                            name="squeeze")(s)
    s = keras.layers.Conv2D(8, 1, bias_initializer="random_normal", name="excite")(s)
    y = (merge or keras.layers.Multiply(name="se"))([x, s])
    if head:
        y = keras.layers.Conv2D(4, 1, name="head")(y)
    return keras.Model(inputs, y)


def _se_samples(n=64):
    return np.random.default_rng(0).uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("head", [True, False], ids=["head", "se-output"])
def test_quantize_squeeze_excite(head):
    model = squeeze_excite(head=head)
    x = _se_samples()
    qmodel = quantize(model, samples=x)
    se = qmodel.get_layer("se")
    assert isinstance(se, QuantizedMultiply)
    assert (se.out_quantizer is not None) == head
    # integer-exact: the numpy reference of the product (and its output quantizer)
    probe = keras.Model(qmodel.inputs, [se.input, se.output])
    with eager_layer_calls():
        inputs, out = probe(x)
    assert inputs[1].shape[1:3] == (1, 1)
    values, frac_bits, scales = reference(se, inputs)
    np.testing.assert_array_equal(ints(out), values)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), (8,)),
                                  np.broadcast_to(frac_bits, (8,)))
    # traced == op by op
    expected = qmodel.predict(x, verbose=0)
    with eager_layer_calls():
        np.testing.assert_array_equal(qmodel(x).numpy(), expected)
    # close to the float model
    reference_out = model(x).numpy()
    rel = np.abs(expected - reference_out).mean() / np.abs(reference_out).mean()
    assert rel < 0.05, rel


@pytest.mark.parametrize("op", ["subtract", "maximum", "minimum"])
def test_quantize_broadcast_merges(op):
    _, fcls = TWINS[op]
    model = squeeze_excite(fcls(name="se"))
    x = _se_samples()
    qmodel = quantize(model, samples=x)
    se = qmodel.get_layer("se")
    assert isinstance(se, TWINS[op][0]) and se.out_quantizer is not None
    probe = keras.Model(qmodel.inputs, [se.input, se.output])
    with eager_layer_calls():
        inputs, out = probe(x)
    values, frac_bits, _ = reference(se, inputs)
    np.testing.assert_array_equal(ints(out), values)
    reference_out = model(x).numpy()
    got = qmodel.predict(x, verbose=0)
    rel = np.abs(got - reference_out).mean() / np.abs(reference_out).mean()
    assert rel < 0.05, rel
