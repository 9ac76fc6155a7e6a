"""Tests of QuantizedAveragePooling2D (quantizeml.layers.pooling): exact window sums, Keras'
divisors of 'same' borders as an integer table ``L / count`` and a scale ``1 / L``."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import eager_layer_calls
from quantizeml.layers.base import QUANTIZATION_TARGETS, saturation
from quantizeml.layers.pooling import QuantizedAveragePooling2D
from quantizeml.layers.quantizers import InputQuantizer
from quantizeml.models import quantize
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, fixed_point, float_gradient, frac, ints,
                                     output_quantizer, random_inputs, single_layer_model)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 5, 7, 4)  # odd sizes: 'same' windows touch the bottom/right borders
OQ = {"bitwidth": 8}
POOLS = {
    "2x2-valid": dict(pool_size=(2, 2), strides=None, padding="valid"),
    "3x2-s2x1-valid": dict(pool_size=(3, 2), strides=(2, 1), padding="valid"),
    "2x2-same": dict(pool_size=(2, 2), strides=None, padding="same"),
    "3x3-s1-same": dict(pool_size=(3, 3), strides=(1, 1), padding="same"),
    "3x3-s2-same": dict(pool_size=(3, 3), strides=(2, 2), padding="same"),
    "2x3-s1x2-same": dict(pool_size=(2, 3), strides=(1, 2), padding="same"),
    "5x5-s1-same": dict(pool_size=(5, 5), strides=(1, 1), padding="same"),
}


def np_average_pool(x, pool_size, strides, padding):
    """The integer average pooling in numpy int64: ``(sum * (L / count), L)`` where ``count``
    is the number of valid elements of each window (counted on a padded array of ones, as
    TensorFlow pads 'same': the extra pad at the end) and ``L`` their least common multiple."""
    strides = strides or pool_size
    n, h, w, c = x.shape
    pads, outs = [], []
    for size, p, s in ((h, pool_size[0], strides[0]), (w, pool_size[1], strides[1])):
        if padding == "same":
            out = math.ceil(size / s)
            total = max((out - 1) * s + p - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            out = (size - p) // s + 1
            pads.append((0, 0))
        outs.append(out)
    xp = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    ones = np.pad(np.ones((h, w), np.int64), pads)
    sums = np.zeros((n, *outs, c), np.int64)
    counts = np.zeros(outs, np.int64)
    for i in range(outs[0]):
        for j in range(outs[1]):
            rows = slice(i * strides[0], i * strides[0] + pool_size[0])
            cols = slice(j * strides[1], j * strides[1] + pool_size[1])
            sums[:, i, j, :] = xp[:, rows, cols, :].sum(axis=(1, 2))
            counts[i, j] = ones[rows, cols].sum()
    lcm = math.lcm(*np.unique(counts).tolist())
    return sums * (lcm // counts)[None, :, :, None], lcm


def reference(layer, x):
    """(integer outputs, frac_bits) of the layer on QTensor x (output quantizer included)."""
    values, lcm = np_average_pool(ints(x), layer.pool_size, layer.strides, layer.padding)
    scales = np.float32(1.0 / lcm)
    if isinstance(x, QFloat):
        scales = np.asarray(x.scales, np.float32) * scales
    if layer.out_quantizer is None:
        return values, frac(x)
    return output_quantizer(values, frac(x), layer.out_quantizer,
                            np.broadcast_to(scales, values.shape[-1:]))


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("pool", list(POOLS), ids=list(POOLS))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_average_pool_numerics(kind, pool, oq):
    x = INPUTS[kind](SHAPE)
    layer = QuantizedAveragePooling2D(
        **POOLS[pool], quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(2.0 if kind.startswith("qfloat") else 48.0)
    out = layer(x)
    ref, ref_frac = reference(layer, x)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    expected = keras.layers.AveragePooling2D(**POOLS[pool])(x.to_float()).numpy()
    if oq is None:
        # exact up to the float32 scale 1 / L (and the float32 maths of Keras)
        assert isinstance(out, QFloat)
        _, lcm = np_average_pool(ints(x)[:1], **POOLS[pool])
        scales = np.float32(1.0 / lcm)
        if isinstance(x, QFloat):
            scales = np.asarray(x.scales, np.float32) * scales
        np.testing.assert_array_equal(np.broadcast_to(out.scales, SHAPE[-1:]),
                                      np.broadcast_to(scales, SHAPE[-1:]))
        bound = np.abs(expected) * 2.0**-20
    else:
        # the output quantizer: 8-bit scales (|y| * 2^-8) and rounding (half a step)
        step = 2.0**-frac(layer.out_quantizer)
        bound = np.abs(expected) * 2.0**-8 + step / 2
        expected = np.clip(expected, -(2**7) * step, (2**7 - 1) * step)
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-7), float(np.max(err - bound))


def test_same_borders_use_keras_divisors():
    """A 3x3 'same' average of ones is one everywhere (Keras divides by the valid count, not
    by 9): exactly the integer 36 / count times the count, with scale 1/36."""
    x = FixedPoint(tf.ones((1, 4, 4, 1)), 7, 0.0)
    out = QuantizedAveragePooling2D(3, strides=1, padding="same")(x)
    np.testing.assert_array_equal(ints(out)[0, :, :, 0], np.full((4, 4), 36))
    assert float(out.scales) == np.float32(1 / 36)
    np.testing.assert_array_equal(out.to_float().numpy(), np.ones((1, 4, 4, 1), np.float32))


def test_average_pool_traced_equals_eager():
    x = fixed_point(SHAPE, per_axis=True)
    layer = QuantizedAveragePooling2D(3, 2, "same")
    with eager_layer_calls():
        eager = layer(x)
    traced = tf.function(layer)(x)
    np.testing.assert_array_equal(ints(traced), ints(eager))


def test_buffer_saturation():
    """Values of 20 bits times L = 36 exceed a 24-bit buffer: clipped and recorded."""
    x = fixed_point((1, 4, 4, 2), value_bits=20)
    layer = QuantizedAveragePooling2D(3, 1, "same", quant_config={"buffer_bitwidth": 24})
    out = layer(x)
    ref, _ = np_average_pool(ints(x), (3, 3), (1, 1), "same")
    np.testing.assert_array_equal(ints(out), np.clip(ref, -2**23, 2**23 - 1))
    assert saturation(layer)["buffer"] > 0


def test_channels_first():
    x = fixed_point((2, 4, 5, 5))
    out = QuantizedAveragePooling2D(3, 2, "same", data_format="channels_first")(x)
    expected = keras.layers.AveragePooling2D(3, 2, "same", data_format="channels_first")(
        x.to_float()).numpy()
    np.testing.assert_allclose(out.to_float().numpy(), expected, rtol=2.0**-20)
    with pytest.raises(ValueError, match="ap_cf.*expected per-tensor inputs with "
                                         "data_format='channels_first'"):
        QuantizedAveragePooling2D(data_format="channels_first", name="ap_cf")(
            fixed_point((2, 4, 4, 4), True))


def test_quantize_target_and_signature():
    assert QUANTIZATION_TARGETS[keras.layers.AveragePooling2D] is QuantizedAveragePooling2D
    check_signature_parity(QuantizedAveragePooling2D, keras.layers.AveragePooling2D)


def test_config_roundtrip():
    layer = QuantizedAveragePooling2D((3, 2), 1, "same",
                                      quant_config={"output_quantizer": OQ,
                                                    "buffer_bitwidth": 24})
    clone = check_config_roundtrip(layer)
    assert clone.quant_config == layer.quant_config
    assert clone.pool_size == (3, 2) and clone.padding == "same"


@pytest.mark.parametrize("layer_fn, per_axis", [
    (lambda: QuantizedAveragePooling2D(3, 2, "same"), True),
    (lambda: QuantizedAveragePooling2D(2, padding="same",
                                       quant_config={"output_quantizer": OQ}), False)],
    ids=["same-per-axis", "same-oq"])
def test_save_load(layer_fn, per_axis):
    model = single_layer_model(layer_fn(), SHAPE[1:], per_axis=per_axis)
    check_save_load(model, random_inputs(SHAPE))


def test_gradients():
    model = single_layer_model(QuantizedAveragePooling2D(3, 1, "same",
                                                         quant_config={"output_quantizer": OQ}),
                               SHAPE[1:])
    grad = float_gradient(model, random_inputs(SHAPE, scale=0.5))
    # every input pixel is in some window: the straight-through gradient reaches all of them
    assert np.all(np.abs(grad.numpy()) > 0)


def test_bad_inputs():
    with pytest.raises(TypeError, match="ap_float.*expected FixedPoint or QFloat"):
        QuantizedAveragePooling2D(name="ap_float")(tf.ones(SHAPE))
    with pytest.raises(ValueError, match="ap_key: quant_config expected keys"):
        QuantizedAveragePooling2D(name="ap_key", quant_config={"weight_quantizer": {}})
    inputs = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match="ap_dynamic.*static spatial dimensions"):
        QuantizedAveragePooling2D(name="ap_dynamic")(InputQuantizer()(inputs))


def test_quantize_model_close_to_float():
    """conv -> AveragePooling2D(2, 'same') -> conv -> AveragePooling2D(3, 1, 'same'):
    quantize() gives outputs close to the float model."""
    inputs = keras.Input((7, 7, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", bias_initializer="random_normal")(inputs)
    x = keras.layers.AveragePooling2D(2, padding="same")(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.AveragePooling2D(3, strides=1, padding="same")(x)
    model = keras.Model(inputs, x)
    samples = np.random.default_rng(0).normal(size=(32, 7, 7, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples)
    pools = [layer for layer in qmodel.layers if isinstance(layer, QuantizedAveragePooling2D)]
    assert len(pools) == 2 and pools[0].out_quantizer is not None
    expected = model.predict(samples, verbose=0)
    got = qmodel.predict(samples, verbose=0)
    err = np.abs(got - expected)
    assert err.max() <= 0.05 * np.abs(expected).max(), (err.max(), np.abs(expected).max())
