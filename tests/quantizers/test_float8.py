"""quantize_and_dequantize and the float8 scaling helpers against numpy / ml_dtypes oracles."""
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from quantizeml.quantizers import (compute_float8_amax_history, compute_float8_scale,
                                   quantize_and_dequantize)

FLOAT8 = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}


def oracle(x, scale, dtype_name):
    scaled = x / np.float32(scale)
    if dtype_name == "int8":
        return np.clip(np.round(scaled), -127, 127).astype(np.int8).astype(np.float32) * scale
    dtype = FLOAT8[dtype_name]
    dmax = np.float32(ml_dtypes.finfo(dtype).max)
    return np.clip(scaled, -dmax, dmax).astype(dtype).astype(np.float32) * np.float32(scale)


@pytest.mark.parametrize("dtype_name", ["int8", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("scale", [1.0, 0.01, 3.5], ids=["s1", "s0.01", "s3.5"])
def test_quantize_and_dequantize_matches_oracle(dtype_name, scale):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 50, 300), [0.5, 1.5, 2.5, -0.5, 1e6, -1e6]]) \
        .astype(np.float32) * np.float32(scale)
    ours = quantize_and_dequantize(x, scale, dtype_name, "float32")
    assert ours.dtype == tf.float32
    np.testing.assert_array_equal(ours.numpy(), oracle(x, scale, dtype_name))


@pytest.mark.parametrize("dtype_name, dmax", [("int8", 127.0), ("float8_e4m3fn", 448.0)])
def test_quantize_and_dequantize_straight_through_gradient(dtype_name, dmax):
    x = tf.constant([-2 * dmax, -dmax, 0.3, dmax, 2 * dmax])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantize_and_dequantize(x, 1.0, dtype_name, "float32")
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 1, 1, 1, 0])


def test_quantize_and_dequantize_compute_dtype():
    y = quantize_and_dequantize(tf.constant([1.3, -2.2]), 0.5, "float8_e4m3fn", "bfloat16")
    assert y.dtype == tf.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    (dict(quantized_dtype="int16"), "quantized_dtype expected one of"),
    (dict(quantized_dtype="foo"), "quantized_dtype expected one of"),
    (dict(compute_dtype="int32"), "compute_dtype expected one of"),
], ids=["int16", "unknown", "int_compute"])
def test_quantize_and_dequantize_bad_dtypes(kwargs, match):
    args = dict(inputs=[1.0], scale=1.0, quantized_dtype="int8", compute_dtype="float32")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        quantize_and_dequantize(**args)


@pytest.mark.parametrize("amax, margin", [(10.0, 0), (10.0, 2), (0.0, 0), (np.inf, 0),
                                          (np.nan, 1)],
                         ids=["positive", "margin", "zero", "inf", "nan"])
def test_compute_float8_scale(amax, margin):
    scale, dtype_max = np.float32(0.25), np.float32(448.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = dtype_max / np.float32(amax) / np.float32(2 ** margin)
    usable = amax > 0 and np.isfinite(amax)
    expected = np.float32(1) / factor if usable else scale
    result = compute_float8_scale(tf.constant(amax, tf.float32), scale, dtype_max, margin)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)


def test_compute_float8_amax_history():
    history = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    x = np.array([[0.5, -7.5], [3.0, 1.0]], np.float32)
    expected = np.roll(history, -1)
    expected[0] = 7.5
    result = compute_float8_amax_history(x, tf.constant(history))
    np.testing.assert_array_equal(result.numpy(), expected)
    with pytest.raises(ValueError, match="1-D amax_history"):
        compute_float8_amax_history(x, tf.zeros((2, 2)))
