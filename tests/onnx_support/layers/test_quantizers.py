"""InputQuantizer and Dequantizer."""
import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as onnx_helper

from quantizeml.onnx_support.layers import Dequantizer, InputQuantizer, QuantInfo, TensorRange
from tests.onnx_support.references import run_layer


def _input(elem_type=TensorProto.FLOAT):
    return onnx_helper.make_tensor_value_info("input", elem_type, [None, 3, 4, 4])


@pytest.mark.parametrize("signed,per_tensor", [(False, False), (True, True)],
                         ids=["unsigned-per_channel", "signed-per_tensor"])
def test_input_quantizer_rounds_and_saturates(signed, per_tensor):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1 if signed else 0, 1, (2, 3, 4, 4)).astype(np.float32) * \
        np.array([1, 2, 4], np.float32)[:, None, None]
    tensor_range = TensorRange(np.abs(x).max(axis=(0, 2, 3)), float(x.min()), (3, 4, 4))
    layer = InputQuantizer(_input(), input_signed=signed, name="iq")
    params, info = layer.quantize([], tensor_range, per_tensor)
    assert info.signed == signed and info.scale.shape == (() if per_tensor else (3,))
    out = run_layer(layer, [x * 1.5], params, np.int8 if signed else np.uint8)
    scale = params[0] if per_tensor else params[0][:, None, None]
    lo, hi = (-128, 127) if signed else (0, 255)
    np.testing.assert_array_equal(out, np.clip(np.rint(x * 1.5 / scale), lo, hi))
    assert layer.op_type == ("InputQuantizerSigned" if signed else "InputQuantizer")


def test_input_quantizer_expects_a_float_model_input():
    with pytest.raises(ValueError, match="float32"):
        InputQuantizer(_input(TensorProto.INT8))
    with pytest.raises(TypeError, match="ValueInfoProto"):
        InputQuantizer("input")


def test_dequantizer_multiplies_by_the_scale():
    x = np.arange(-4, 4, dtype=np.int8).reshape(1, 2, 2, 2)
    layer = Dequantizer(name="dq")
    params, info = layer.quantize([QuantInfo(np.array([0.5, 0.25]), True, (2, 2, 2))], None,
                                  False)
    assert info is None
    out = run_layer(layer, [x], params, np.float32)
    np.testing.assert_array_equal(out, x * np.array([0.5, 0.25], np.float32)[:, None, None])
