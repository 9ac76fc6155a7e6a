"""Tests of QuantizedResizing (``Resizing`` / ``tf.image.resize`` to any size, nearest or
bilinear): TensorFlow's coordinates, a rational numpy reference, quantize() and ONNX."""
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import InputQuantizer, eager_layer_calls
from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.registry import BLOCK_END, twin_spec
from quantizeml.layers.spatial import (RESIZE_WEIGHT_BITS, QuantizedResizing, resize_axis,
                                       unsupported_reason)
from quantizeml.models import quantize
from quantizeml.models.transforms import sanitize
from quantizeml.tensors import QFloat
from tests.layers.references import INPUTS, fixed_point, frac, ints
from tests.onnx_support.test_export_merging import check_export_bit_exact
from tests.utils import check_signature_parity

L = keras.layers
SHAPE = (2, 6, 5, 3)


def _rational_axis(n, out):
    """The bilinear half-pixel resize of an axis in exact rational arithmetic (independent of
    resize_axis' float32 emulation): source ``c = (2 o + 1) n / (2 out) - 1/2``, clamped
    neighbours, the upper weight ``c - floor(c)`` as a Fraction."""
    rows = []
    for o in range(out):
        c = Fraction((2 * o + 1) * n, 2 * out) - Fraction(1, 2)
        lo = c.numerator // c.denominator
        rows.append((min(max(lo, 0), n - 1), min(max(lo + 1, 0), n - 1), c - lo))
    return rows


def reference(v, f, height, width, interpolation):
    """numpy int64 reference of QuantizedResizing: (values, frac_bits)."""
    v = np.asarray(v, np.int64)
    f = np.asarray(f, np.int64)
    for axis, out in ((1, height), (2, width)):
        n = v.shape[axis]
        if interpolation == "nearest":
            index = [min((2 * o + 1) * n // (2 * out), n - 1) for o in range(out)]
            v = np.take(v, index, axis=axis)
            continue
        rows = _rational_axis(n, out)
        bits = next((b for b in range(RESIZE_WEIGHT_BITS + 1)
                     if all((w * 2**b).denominator == 1 for _, _, w in rows)),
                    RESIZE_WEIGHT_BITS)
        w_hi = np.array([int(np.floor(w * 2**bits + Fraction(1, 2))) for _, _, w in rows])
        shape = [1] * v.ndim
        shape[axis] = -1
        lo = np.take(v, [r[0] for r in rows], axis=axis)
        hi = np.take(v, [r[1] for r in rows], axis=axis)
        v = lo * (2**bits - w_hi).reshape(shape) + hi * w_hi.reshape(shape)
        f = f + bits
    return v, f


SIZES = [(6, 5), (3, 2), (12, 10), (4, 9), (9, 7), (1, 1), (24, 5)]


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_resize_axis_matches_tensorflow(interpolation):
    """The neighbours and weights reproduce tf.image.resize on integer data: exactly where
    the weights fit RESIZE_WEIGHT_BITS bits, within 2^-11 of the neighbours' difference
    otherwise."""
    for n in range(1, 12):
        x = (np.arange(n, dtype=np.float64) ** 2) * 3 - 7  # distinct neighbours' differences
        step = np.abs(np.diff(x)).max() if n > 1 else 0.0
        for out in range(1, 27):
            lo, hi, w_lo, w_hi, bits = resize_axis(n, out, interpolation)
            assert np.all(w_lo + w_hi == 2**bits) and np.all(w_lo >= 0) and np.all(w_hi >= 0)
            ours = (w_lo * x[lo] + w_hi * x[hi]) / 2.0**bits
            image = x.astype(np.float32).reshape(1, n, 1, 1)
            ref = tf.image.resize(image, (out, 1), method=interpolation).numpy().ravel()
            tol = 1e-6 * np.abs(x).max() + (0 if bits < RESIZE_WEIGHT_BITS else step * 2**-11)
            np.testing.assert_allclose(ours, ref, rtol=0, atol=tol, err_msg=f"{n} -> {out}")
            if interpolation == "nearest":
                assert bits == 0
    # upsampling by powers of two: the exact weights of the UpSampling2D twin
    assert resize_axis(5, 20, "bilinear")[-1] == 3 and resize_axis(5, 10, "bilinear")[-1] == 2


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_resizing_exact(kind, interpolation, size):
    x = INPUTS[kind](SHAPE)
    out = QuantizedResizing(*size, interpolation=interpolation)(x)
    values, frac_bits = reference(ints(x), frac(x), *size, interpolation)
    assert type(out) is type(x)
    np.testing.assert_array_equal(ints(out), values)
    np.testing.assert_array_equal(frac(out), frac_bits)
    if isinstance(x, QFloat):
        np.testing.assert_array_equal(out.scales.numpy(), x.scales.numpy())
    # against the float layer on the dequantized inputs
    y = L.Resizing(*size, interpolation=interpolation)(x.to_float()).numpy()
    atol = 1e-5 * np.abs(y).max()
    if interpolation == "bilinear" and int(frac_bits.max() - frac(x).max()) >= \
            RESIZE_WEIGHT_BITS:
        atol += np.abs(x.to_float().numpy()).max() * 2 * 2**-11
    np.testing.assert_allclose(out.to_float().numpy(), y, rtol=0, atol=atol)


def test_eager_equals_traced_and_output_quantizer():
    x = fixed_point(SHAPE, per_axis=True)
    layer = QuantizedResizing(4, 9, quant_config={"output_quantizer": {"bitwidth": 6}},
                              name="rs")
    layer(x)
    layer.out_quantizer.range_max.assign(3.0)
    with eager_layer_calls():
        eager = layer(x)
    traced = tf.function(layer)(x)
    np.testing.assert_array_equal(ints(eager), ints(traced))
    assert int(eager.value_bits) == 5 and np.all(frac(eager) == frac(layer.out_quantizer))


def test_registry_refusals_and_errors():
    assert QUANTIZATION_TARGETS[L.Resizing] is QuantizedResizing
    check_signature_parity(QuantizedResizing, L.Resizing)
    spec = twin_spec(QuantizedResizing)
    nearest, bilinear = L.Resizing(3, 3, "nearest"), L.Resizing(3, 3)
    assert spec.passes_through(nearest) and spec.output_for(nearest) is None
    assert not spec.passes_through(bilinear) and spec.output_for(bilinear) == BLOCK_END
    assert unsupported_reason(L.Resizing(3, 3, "bicubic")) == "interpolation='bicubic'"
    assert unsupported_reason(L.Resizing(3, 3, crop_to_aspect_ratio=True)) == \
        "crop_to_aspect_ratio=True"
    with pytest.raises(ValueError, match=r"rs \(QuantizedResizing\) expected interpolation "
                                         r"'nearest' or 'bilinear'.*bicubic"):
        QuantizedResizing(3, 3, "bicubic", name="rs")
    with pytest.raises(ValueError, match="static height and width"):
        QuantizedResizing(3, 3)(InputQuantizer()(keras.Input((None, None, 3))))


def test_quantize_resizing_and_tf_image_resize():
    """A Resizing to a size that is no multiple and ``tf.image.resize`` calls (TFOpLambda)
    inside the model quantize to QuantizedResizing layers (sanitize turns the calls into
    Resizing), close to the float model and exported bit-exactly."""
    inputs = keras.Input((12, 12, 3), name="inp")
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    a = L.Resizing(7, 9, name="down")(y)
    a = L.Conv2D(8, 3, padding="same", name="c2")(a)
    a = tf.image.resize(a, (12, 12))
    b = tf.image.resize(y, (5, 5), method="nearest")
    b = L.Conv2D(8, 1, name="c3")(b)
    b = tf.image.resize(b, (12, 12), method="bilinear")
    model = keras.Model(inputs, L.Conv2D(4, 1, name="head")(L.Concatenate()([a, b])))
    prepared = sanitize(model)
    assert sum(type(layer) is L.Resizing for layer in prepared.layers) == 4
    x = np.random.default_rng(0).uniform(-1, 1, (16, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(prepared(x).numpy(), model(x).numpy(), atol=1e-5)
    qmodel = quantize(model, samples=x, num_samples=16, batch_size=16)
    assert sum(isinstance(layer, QuantizedResizing) for layer in qmodel.layers) == 4
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    check_export_bit_exact(qmodel, x)


def test_keras3_resizing_converts():
    import keras as keras3
    inputs = keras3.Input((12, 12, 3))
    y = keras3.layers.Conv2D(8, 3, padding="same")(inputs)
    y = keras3.layers.Resizing(7, 9)(y)
    y = keras3.ops.image.resize(y, (4, 4), interpolation="nearest")
    model = keras3.Model(inputs, keras3.layers.Flatten()(y))
    x = np.random.default_rng(1).uniform(-1, 1, (8, 12, 12, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=8, batch_size=8)
    assert sum(isinstance(layer, QuantizedResizing) for layer in qmodel.layers) == 2
    y, yq = np.asarray(model(x)), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    # an antialiased resize has no tf_keras equivalent: named in the error
    inputs = keras3.Input((12, 12, 3))
    y = keras3.ops.image.resize(inputs, (4, 4), antialias=True)
    with pytest.raises(ValueError, match="Resize.*antialias"):
        quantize(keras3.Model(inputs, y), samples=x, num_samples=8)


def test_tf_image_resize_not_replaced():
    """``tf.image.resize`` calls that are not a nearest or bilinear resize without antialias
    stay TFOpLambda layers: quantize() names them (float_fallback keeps them float)."""
    inputs = keras.Input((8, 8, 3), name="inp")
    y = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    y = tf.image.resize(y, (5, 5), method="bicubic")
    y = tf.image.resize(y, (4, 4), antialias=True)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(y))
    prepared = sanitize(model)
    assert not any(type(layer) is L.Resizing for layer in prepared.layers)
    x = np.random.default_rng(2).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"tf\.image\.resize \(TFOpLambda"):
        quantize(model, samples=x, num_samples=8)


def test_tf_image_resize_to_a_tensor_shape():
    """DeepLab's pooling branch: ``tf.image.resize(pooled, x.shape[1:3])`` (a TensorShape)
    becomes a Resizing too."""
    inputs = keras.Input((8, 8, 3), name="inp")
    y = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    pooled = L.GlobalAveragePooling2D(keepdims=True, name="gap")(y)
    model = keras.Model(inputs, L.Concatenate()([y, tf.image.resize(pooled, y.shape[1:3])]))
    prepared = sanitize(model)
    resizing = [layer for layer in prepared.layers if type(layer) is L.Resizing]
    assert len(resizing) == 1 and (resizing[0].height, resizing[0].width) == (8, 8)
    x = np.random.default_rng(3).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(prepared(x).numpy(), model(x).numpy(), atol=1e-6)
