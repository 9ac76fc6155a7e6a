"""QuantizedAdd: integer outputs of the ONNX function vs numpy int64."""
import numpy as np
import pytest

from quantizeml.onnx_support.layers import QuantInfo, QuantizedAdd, TensorRange
from tests.onnx_support.references import rescale, run_layer, saturate


@pytest.mark.parametrize("activation", [False, True], ids=["linear", "relu"])
def test_add_integer_outputs_match_numpy(activation):
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (2, 4, 5, 5)).astype(np.int8)
    b = rng.integers(0, 256, (2, 4, 5, 5)).astype(np.uint8)
    ma = rng.integers(2 ** 12, 2 ** 15, (4, 1, 1)).astype(np.int64)
    mb = rng.integers(2 ** 12, 2 ** 15, (4, 1, 1)).astype(np.int64)
    s = rng.integers(14, 17, (4, 1, 1)).astype(np.int64)
    layer = QuantizedAdd(name="add", activation=activation)
    out = run_layer(layer, [a, b], [ma, mb, s], np.uint8 if activation else np.int8)
    acc = a.astype(np.int64) * ma + b.astype(np.int64) * mb
    np.testing.assert_array_equal(out.astype(np.int64),
                                  saturate(rescale(acc, 1, s), signed=not activation))


@pytest.mark.parametrize("per_tensor", [False, True], ids=["per_channel", "per_tensor"])
def test_quantize_aligns_both_scales(per_tensor):
    rng = np.random.default_rng(1)
    sa, sb = np.array([0.01, 0.03, 0.02]), np.array(0.015)
    a = rng.integers(-128, 128, (4, 3, 2, 2)).astype(np.int8)
    b = rng.integers(-128, 128, (4, 3, 2, 2)).astype(np.int8)
    float_out = a * sa[:, None, None] + b * sb
    out_range = TensorRange(np.abs(float_out).max(axis=(0, 2, 3)), float(float_out.min()),
                            (3, 2, 2))
    layer = QuantizedAdd(name="add")
    params, info = layer.quantize([QuantInfo(sa, True, (3, 2, 2)), QuantInfo(sb, True, (3, 2, 2))],
                                  out_range, per_tensor)
    assert info.scale.shape == (() if per_tensor else (3,))
    out = run_layer(layer, [a, b], params, np.int8)
    scale = info.scale if per_tensor else info.scale[:, None, None]
    # half an output LSB of rounding, plus the multipliers' 2^-14 relative error
    assert np.all(np.abs(out * scale - float_out) <= scale * (0.5 + 2 ** -12 * 256))


def test_quantize_rejects_inputs_of_different_shapes():
    with pytest.raises(ValueError, match="same shape"):
        QuantizedAdd().quantize([QuantInfo(np.array(1.0), True, (2, 3, 3)),
                                 QuantInfo(np.array(1.0), True, (2, 1, 1))],
                                TensorRange(np.ones(2), -1.0, (2, 3, 3)), False)


def test_name_is_the_first_positional_argument():
    layer = QuantizedAdd("add_1")
    assert layer.name == "add_1" and layer.op_type == "QuantizedAdd"
    assert QuantizedAdd(activation=True).op_type == "QuantizedAddReLU"
