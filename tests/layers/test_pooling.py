"""Tests of quantizeml.layers.pooling (QuantizedMaxPool2D, QuantizedGlobalAveragePooling2D,
QuantizedGlobalMaxPooling2D)."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.quantizers import InputQuantizer
from quantizeml.layers.pooling import (QuantizedGlobalAveragePooling2D,
                                       QuantizedGlobalMaxPooling2D, QuantizedMaxPool2D)
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, fixed_point, float_gradient, frac, ints,
                                     output_quantizer, random_inputs, single_layer_model)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 5, 5, 4)
OQ = {"bitwidth": 8}
POOLS = {
    "2x2-valid": dict(pool_size=(2, 2), strides=None, padding="valid"),
    "3x3-s2-same": dict(pool_size=(3, 3), strides=(2, 2), padding="same"),
    "2x3-s1-same": dict(pool_size=(2, 3), strides=(1, 1), padding="same"),
    "3x2-s2-valid": dict(pool_size=(3, 2), strides=(2, 1), padding="valid"),
}


def np_max_pool(x, pool_size, strides, padding):
    """NHWC max pooling of int64 values (TensorFlow's 'same' padding: the extra pad at the
    end)."""
    strides = strides or pool_size
    _, h, w, _ = x.shape
    out_dims, pads = [], []
    for size, p, s in ((h, pool_size[0], strides[0]), (w, pool_size[1], strides[1])):
        if padding == "same":
            out = math.ceil(size / s)
            total = max((out - 1) * s + p - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            out = (size - p) // s + 1
            pads.append((0, 0))
        out_dims.append(out)
    low = np.iinfo(np.int64).min
    xp = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=low)
    out = np.full((x.shape[0], *out_dims, x.shape[3]), low, np.int64)
    for i in range(out_dims[0]):
        for j in range(out_dims[1]):
            window = xp[:, i * strides[0]:i * strides[0] + pool_size[0],
                        j * strides[1]:j * strides[1] + pool_size[1], :]
            out[:, i, j, :] = window.max(axis=(1, 2))
    return out


def _oq_expected(expected, oq):
    step = 2.0**-frac(oq)
    top = (2**oq.value_bits - 1) * step
    bottom = 0.0 if not oq.signed else -(2**oq.value_bits) * step
    return np.clip(expected, bottom, top), step / 2


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("pool", list(POOLS), ids=list(POOLS))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_max_pool_numerics(kind, pool, oq):
    x = INPUTS[kind](SHAPE)
    layer = QuantizedMaxPool2D(**POOLS[pool],
                               quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(3.0)
    out = layer(x)
    # integer reference: the max of the integer values of each channel (same frac/scales)
    ref = np_max_pool(ints(x), **POOLS[pool])
    ref_frac = frac(x)
    if oq is not None:
        scales = np.asarray(x.scales) if isinstance(x, QFloat) else None
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer, scales)
    else:
        assert type(out) is type(x)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    # float bound: max pooling is exact on the integers; the output quantizer converts a
    # QFloat on 8-bit scales (|y| * 2^-8) and rounds (half a step) within its range.
    expected = keras.layers.MaxPooling2D(**POOLS[pool])(x.to_float()).numpy()
    bound = np.zeros_like(expected)
    if oq is not None:
        if isinstance(x, QFloat):
            bound = bound + np.abs(expected) * 2.0**-8
        expected, half_step = _oq_expected(expected, layer.out_quantizer)
        bound = bound + half_step
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), err.max()


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("keepdims", [False, True], ids=["flat", "keepdims"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_global_max_pool_numerics(kind, keepdims, oq):
    x = INPUTS[kind](SHAPE)
    layer = QuantizedGlobalMaxPooling2D(
        keepdims=keepdims, quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(3.0)
    out = layer(x)
    # integer reference: the max of the integer values of each channel (same frac/scales)
    ref = np.max(ints(x), axis=(1, 2), keepdims=keepdims)
    ref_frac = frac(x)
    if oq is not None:
        scales = np.asarray(x.scales) if isinstance(x, QFloat) else None
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer, scales)
    else:
        assert type(out) is type(x)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))
    expected = keras.layers.GlobalMaxPooling2D(keepdims=keepdims)(x.to_float()).numpy()
    bound = np.zeros_like(expected)
    if oq is not None:
        if isinstance(x, QFloat):
            bound = bound + np.abs(expected) * 2.0**-8
        expected, half_step = _oq_expected(expected, layer.out_quantizer)
        bound = bound + half_step
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-6), err.max()


def test_global_max_pool_negative_scales():
    x = QFloat(fixed_point(SHAPE), tf.constant([0.5, -0.25, 1.0, -2.0]))
    out = QuantizedGlobalMaxPooling2D()(x)
    expected = keras.layers.GlobalMaxPooling2D()(x.to_float()).numpy()
    np.testing.assert_array_equal(out.to_float().numpy(), expected)


def test_max_pool_negative_scales():
    # a QFloat with negative scales (a Rescaling by a negative factor): max of the real values
    x = QFloat(fixed_point(SHAPE), tf.constant([0.5, -0.25, 1.0, -2.0]))
    out = QuantizedMaxPool2D()(x)
    expected = keras.layers.MaxPooling2D()(x.to_float()).numpy()
    np.testing.assert_array_equal(out.to_float().numpy(), expected)


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (2, 4, 4, 3)], ids=["3x3", "4x4"])
@pytest.mark.parametrize("keepdims", [False, True], ids=["flat", "keepdims"])
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_gap_numerics(kind, shape, keepdims, oq):
    x = INPUTS[kind](shape)
    layer = QuantizedGlobalAveragePooling2D(
        keepdims=keepdims, quant_config=None if oq is None else {"output_quantizer": oq})
    layer(x)
    if oq is not None:
        layer.out_quantizer.range_max.assign(2.0)
    out = layer(x)
    # integer reference: the exact int64 sum over H*W; scales 1/(H*W) (times input scales)
    ref = ints(x).sum(axis=(1, 2), keepdims=keepdims)
    ref_frac = frac(x)
    pixels = shape[1] * shape[2]
    scales = np.float32(1.0 / pixels)
    if isinstance(x, QFloat):
        scales = np.asarray(x.scales, np.float32) * scales
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, ref_frac, layer.out_quantizer, scales)
    else:
        assert isinstance(out, QFloat)
        np.testing.assert_array_equal(np.broadcast_to(out.scales, shape[-1:]),
                                      np.broadcast_to(scales, shape[-1:]))
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), shape[-1:]),
                                  np.broadcast_to(ref_frac, shape[-1:]))
    # float bound: the sum is exact and the scale a float32 (relative 2^-23 per product);
    # the output quantizer converts the scales on 8 bits (|y| * 2^-8) and rounds (half step)
    # within its range.
    expected = keras.layers.GlobalAveragePooling2D(keepdims=keepdims)(x.to_float()).numpy()
    bound = np.abs(expected) * 2.0**-20
    if oq is not None:
        bound = bound + np.abs(expected) * 2.0**-8
        expected, half_step = _oq_expected(expected, layer.out_quantizer)
        bound = bound + half_step
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound + 1e-7), err.max()


@pytest.mark.parametrize("cls, float_cls", [
    (QuantizedMaxPool2D, keras.layers.MaxPooling2D),
    (QuantizedGlobalAveragePooling2D, keras.layers.GlobalAveragePooling2D),
    (QuantizedGlobalMaxPooling2D, keras.layers.GlobalMaxPooling2D)],
    ids=["maxpool", "gap", "gmp"])
def test_channels_first(cls, float_cls):
    # per-tensor inputs only: per-axis parameters follow the last axis
    x = fixed_point((2, 4, 4, 4))
    out = cls(data_format="channels_first")(x)
    expected = float_cls(data_format="channels_first")(x.to_float()).numpy()
    np.testing.assert_allclose(out.to_float().numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="pool_cf.*expected per-tensor inputs with "
                                         "data_format='channels_first'"):
        cls(data_format="channels_first", name="pool_cf")(fixed_point((2, 4, 4, 4), True))


def test_quantize_targets_and_signatures():
    assert QUANTIZATION_TARGETS[keras.layers.MaxPooling2D] is QuantizedMaxPool2D
    assert QUANTIZATION_TARGETS[keras.layers.GlobalAveragePooling2D] \
        is QuantizedGlobalAveragePooling2D
    check_signature_parity(QuantizedMaxPool2D, keras.layers.MaxPooling2D)
    check_signature_parity(QuantizedGlobalAveragePooling2D, keras.layers.GlobalAveragePooling2D)
    assert QUANTIZATION_TARGETS[keras.layers.GlobalMaxPooling2D] is QuantizedGlobalMaxPooling2D
    check_signature_parity(QuantizedGlobalMaxPooling2D, keras.layers.GlobalMaxPooling2D)


@pytest.mark.parametrize("layer_fn", [
    lambda: QuantizedMaxPool2D(3, 2, "same", quant_config={"output_quantizer": OQ}),
    lambda: QuantizedGlobalAveragePooling2D(keepdims=True,
                                            quant_config={"output_quantizer": OQ,
                                                          "buffer_bitwidth": 20}),
    lambda: QuantizedGlobalMaxPooling2D(keepdims=True, quant_config={"output_quantizer": OQ})],
    ids=["maxpool", "gap", "gmp"])
def test_config_roundtrip(layer_fn):
    layer = layer_fn()
    clone = check_config_roundtrip(layer)
    assert clone.quant_config == layer.quant_config


@pytest.mark.parametrize("layer_fn, per_axis", [
    (lambda: QuantizedMaxPool2D(3, 2, "same"), True),
    (lambda: QuantizedGlobalAveragePooling2D(quant_config={"output_quantizer": OQ}), False),
    (lambda: QuantizedGlobalAveragePooling2D(), True),
    (lambda: QuantizedGlobalMaxPooling2D(quant_config={"output_quantizer": OQ}), False),
    (lambda: QuantizedGlobalMaxPooling2D(), True)],
    ids=["maxpool-per-axis", "gap-oq", "gap-per-axis", "gmp-oq", "gmp-per-axis"])
def test_save_load(layer_fn, per_axis):
    model = single_layer_model(layer_fn(), SHAPE[1:], per_axis=per_axis)
    check_save_load(model, random_inputs(SHAPE))


@pytest.mark.parametrize("layer_fn", [QuantizedMaxPool2D, QuantizedGlobalAveragePooling2D,
                                      QuantizedGlobalMaxPooling2D], ids=["maxpool", "gap", "gmp"])
def test_gradients(layer_fn):
    model = single_layer_model(layer_fn(), SHAPE[1:])
    grad = float_gradient(model, random_inputs(SHAPE, scale=0.5))
    assert float(tf.reduce_sum(tf.abs(grad))) > 0


def test_bad_inputs():
    for cls in (QuantizedMaxPool2D, QuantizedGlobalAveragePooling2D,
                QuantizedGlobalMaxPooling2D):
        with pytest.raises(TypeError, match="pool_float.*expected FixedPoint or QFloat"):
            cls(name="pool_float")(tf.ones(SHAPE))
        for bits in (0, 33):
            with pytest.raises(ValueError, match=f"pool_bits/output_quantizer: bitwidth .*{bits}"):
                cls(name="pool_bits", quant_config={"output_quantizer": {"bitwidth": bits}})
        with pytest.raises(ValueError, match="pool_key: quant_config expected keys"):
            cls(name="pool_key", quant_config={"weight_quantizer": {}})
    with pytest.raises(ValueError, match="gap_rank.*expected ndim=4"):
        QuantizedGlobalAveragePooling2D(name="gap_rank")(
            FixedPoint(tf.ones((2, 3, 3, 4, 1)), 7, 0.0))
    inputs = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match="gap_dynamic.*static spatial dimensions"):
        QuantizedGlobalAveragePooling2D(name="gap_dynamic")(InputQuantizer()(inputs))
