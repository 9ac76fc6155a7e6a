"""QuantizedConv2D / QuantizedDepthwise2D: integer outputs of the ONNX function vs numpy int64."""
import numpy as np
import pytest

from quantizeml.onnx_support.layers import (
    QuantInfo,
    QuantizedConv2D,
    QuantizedDepthwise2D,
    TensorRange,
)
from tests.onnx_support.references import conv2d, maxpool, rescale, run_layer, saturate

CASES = [
    # pool_type, activation, signed input, strides, pads
    ("none", False, True, (1, 1), (1, 1, 1, 1)),
    ("none", True, False, (2, 2), (0, 0, 1, 1)),
    ("max", True, False, (1, 1), (1, 1, 1, 1)),
    ("max", False, True, (1, 1), (0, 0, 0, 0)),
    ("gap", True, True, (1, 1), (1, 1, 1, 1)),
    ("gap", False, False, (2, 1), (1, 0, 1, 0)),
]


def _random_params(rng, out_channels, in_per_group, signed):
    w = rng.integers(-127, 128, (out_channels, in_per_group, 3, 3)).astype(np.int8)
    b = rng.integers(-20000, 20000, (out_channels, 1, 1)).astype(np.int32)
    m = rng.integers(2 ** 14, 2 ** 15, (out_channels, 1, 1)).astype(np.int64)
    s = rng.integers(14, 26, (out_channels, 1, 1)).astype(np.int64)
    return w, b, m, s


@pytest.mark.parametrize("pool_type,activation,signed,strides,pads", CASES,
                         ids=[f"{c[0]}-relu{int(c[1])}-signed{int(c[2])}-s{c[3][0]}{c[3][1]}"
                              for c in CASES])
def test_conv2d_integer_outputs_match_numpy(pool_type, activation, signed, strides, pads):
    rng = np.random.default_rng(0)
    lo, hi, dtype = (-128, 128, np.int8) if signed else (0, 256, np.uint8)
    x = rng.integers(lo, hi, (2, 5, 8, 8)).astype(dtype)
    x[0, :, 0, 0] = lo  # extreme values
    w, b, m, s = _random_params(rng, 6, 5, signed)
    if pool_type == "gap":
        s = s + 6  # the sum over the 8x8 positions
    layer = QuantizedConv2D(strides=list(strides), pool_type=pool_type, activation=activation,
                            name="conv", pads=pads)
    onnx_pads = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
    out = run_layer(layer, [x], [w, b, onnx_pads, m, s], np.uint8 if activation else np.int8)

    acc = conv2d(x, w, strides, pads) + b
    if pool_type == "gap":
        acc = (np.maximum(acc, 0) if activation else acc).sum(axis=(2, 3), keepdims=True)
    expected = saturate(rescale(acc, m, s), signed=not activation)
    if pool_type == "max":
        expected = maxpool(expected, (2, 2), (2, 2))
    assert out.dtype == (np.uint8 if activation else np.int8)
    np.testing.assert_array_equal(out.astype(np.int64), expected)
    assert len(np.unique(out)) > 1


@pytest.mark.parametrize("activation", [False, True], ids=["linear", "relu"])
def test_depthwise_integer_outputs_match_numpy(activation):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 4, 7, 7)).astype(np.uint8)
    w, b, m, s = _random_params(rng, 4, 1, False)
    layer = QuantizedDepthwise2D(strides=[1, 1], activation=activation, name="dw",
                                 pads=(1, 1, 1, 1))
    layer.set_weight("kernel", w.astype(np.float64))  # sets the 'groups' attribute
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    out = run_layer(layer, [x], [w, b, pads, m, s], np.uint8 if activation else np.int8)
    expected = saturate(rescale(conv2d(x, w, (1, 1), (1, 1, 1, 1), groups=4) + b, m, s),
                        signed=not activation)
    np.testing.assert_array_equal(out.astype(np.int64), expected)
    assert layer.attribute("groups") == 4


def test_op_types_name_the_fused_operations():
    assert QuantizedConv2D().op_type == "QuantizedConv2D"
    assert QuantizedConv2D(pool_type="max", activation=True).op_type == \
        "QuantizedConv2DMaxPoolReLU"
    assert QuantizedConv2D(pool_type="gap").op_type == "QuantizedConv2DGlobalAvgPool"
    assert QuantizedDepthwise2D(activation=True).op_type == "QuantizedDepthwise2DReLU"


def test_pool_attributes_only_for_max_pooling():
    layer = QuantizedConv2D(strides=[2, 2], pool_type="max", pool_size=(3, 3),
                            pool_strides=(2, 2), pool_pads=[1, 1, 1, 1])
    assert layer.attribute("pool_size") == [3, 3]
    assert layer.attribute("pool_pads") == [1, 1, 1, 1]
    assert {a.name for a in QuantizedConv2D(pool_type="gap").attributes} == {"strides"}


@pytest.mark.parametrize("kwargs,error", [
    (dict(pool_type="avg"), ValueError),
    (dict(strides=[1]), ValueError),
    (dict(strides=[0, 1]), ValueError),
    (dict(activation=1), TypeError),
    (dict(pool_type="max", pool_pads=[0, 0]), ValueError),
    (dict(pads=(1, 1)), ValueError),
    (dict(name=3), TypeError),
], ids=["pool_type", "strides_len", "strides_zero", "activation", "pool_pads", "pads", "name"])
def test_invalid_arguments_are_rejected(kwargs, error):
    with pytest.raises(error, match="Received"):
        QuantizedConv2D(**kwargs)


def test_quantize_folds_the_input_scale_and_matches_the_float_conv():
    rng = np.random.default_rng(2)
    kernel = rng.normal(0, 0.3, (4, 3, 3, 3))
    bias = rng.normal(0, 0.1, 4)
    in_scale = np.array([0.01, 0.02, 0.005])
    x = rng.integers(0, 256, (1, 3, 6, 6)).astype(np.uint8)
    float_out = np.zeros((1, 4, 4, 4))  # float conv + ReLU of the real input
    real_x = x * in_scale[None, :, None, None]
    for o in range(4):
        for i in range(4):
            for j in range(4):
                float_out[0, o, i, j] = max(np.sum(real_x[0, :, i:i + 3, j:j + 3] * kernel[o])
                                            + bias[o], 0)
    layer = QuantizedConv2D(activation=True, name="conv")
    layer.set_weight("kernel", kernel)
    layer.set_weight("bias", bias)
    out_range = TensorRange(float_out.max(axis=(0, 2, 3)), 0.0, (4, 4, 4))
    params, info = layer.quantize([QuantInfo(in_scale, False, (3, 6, 6))], out_range,
                                  per_tensor=False)
    assert [p.dtype for p in params] == [np.int8, np.int32, np.int64, np.int64, np.int64]
    assert not info.signed and info.scale.shape == (4,)
    out = run_layer(layer, [x], params, np.uint8)
    real_out = out * info.scale[None, :, None, None]
    # weight rounding (<= 1/254 of the largest weight per channel) + output rounding (1/2 LSB)
    assert np.max(np.abs(real_out - float_out)) <= 0.02 * float_out.max() + info.scale.max()


def test_quantize_rejects_accumulators_that_overflow():
    layer = QuantizedConv2D(name="big")
    layer.set_weight("kernel", np.ones((1, 4096, 5, 5)))
    out_range = TensorRange(np.ones(1), -1.0, (1, 1, 1))
    with pytest.raises(ValueError, match="int32"):
        layer.quantize([QuantInfo(np.array(1.0), False, (4096, 5, 5))], out_range, False)
