"""QuantizedDense1D: integer outputs of the ONNX function vs numpy int64."""
import numpy as np
import pytest

from quantizeml.onnx_support.layers import QuantInfo, QuantizedDense1D, TensorRange
from tests.onnx_support.references import rescale, run_layer, saturate


@pytest.mark.parametrize("flatten,activation,signed", [
    (False, False, True), (False, True, False), (True, False, False), (True, True, True)],
    ids=["linear", "relu", "flatten", "flatten-relu-signed"])
def test_dense_integer_outputs_match_numpy(flatten, activation, signed):
    rng = np.random.default_rng(0)
    lo, hi, dtype = (-128, 128, np.int8) if signed else (0, 256, np.uint8)
    shape = (3, 2, 4, 3) if flatten else (3, 24)
    x = rng.integers(lo, hi, shape).astype(dtype)
    w = rng.integers(-127, 128, (24, 7)).astype(np.int8)
    b = rng.integers(-5000, 5000, 7).astype(np.int32)
    m = rng.integers(2 ** 14, 2 ** 15, 7).astype(np.int64)
    s = rng.integers(22, 27, 7).astype(np.int64)
    layer = QuantizedDense1D(flatten=flatten, activation=activation, name="dense")
    out = run_layer(layer, [x], [w, b, m, s], np.uint8 if activation else np.int8,
                    output_shape=[None, 7])
    acc = x.reshape(3, -1).astype(np.int64) @ w.astype(np.int64) + b
    np.testing.assert_array_equal(out.astype(np.int64),
                                  saturate(rescale(acc, m, s), signed=not activation))
    assert len(np.unique(out)) > 2


def test_op_types():
    assert QuantizedDense1D().op_type == "QuantizedDense1D"
    assert QuantizedDense1D(flatten=True, activation=True).op_type == \
        "QuantizedDense1DFlattenReLU"


def test_flatten_input_scale_follows_nchw_order():
    layer = QuantizedDense1D(flatten=True)
    info = QuantInfo(np.array([1.0, 2.0]), False, (2, 1, 3))
    np.testing.assert_array_equal(layer.input_scale(info), [1, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match="flatten=True"):
        QuantizedDense1D().input_scale(info)


def test_quantize_approximates_the_float_matmul():
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(0, 0.2, (16, 5)), rng.normal(0, 0.1, 5)
    in_scale = rng.uniform(0.005, 0.02, 16)
    x = rng.integers(-128, 128, (20, 16)).astype(np.int8)
    float_out = (x * in_scale) @ kernel + bias
    layer = QuantizedDense1D(name="dense")
    layer.set_weight("kernel", kernel)
    layer.set_weight("bias", bias)
    out_range = TensorRange(np.abs(float_out).max(axis=0), float(float_out.min()), (5,))
    params, info = layer.quantize([QuantInfo(in_scale, True, (16,))], out_range, True)
    assert info.signed and info.scale.shape == ()
    out = run_layer(layer, [x], params, np.int8, output_shape=[None, 5])
    assert np.max(np.abs(out * info.scale - float_out)) <= 0.02 * np.abs(float_out).max() + \
        info.scale


@pytest.mark.parametrize("kwargs", [dict(flatten=1), dict(activation="yes")],
                         ids=["flatten", "activation"])
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(TypeError, match="Received"):
        QuantizedDense1D(**kwargs)


def test_set_weight_rejects_unknown_names():
    with pytest.raises(ValueError, match="Received: key='gamma'"):
        QuantizedDense1D().set_weight("gamma", np.ones(3))
