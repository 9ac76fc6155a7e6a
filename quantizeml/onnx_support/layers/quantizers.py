"""InputQuantizer (float -> int8/uint8) and Dequantizer (int8/uint8 -> float) custom nodes."""
import numpy as np
from onnx import TensorProto, ValueInfoProto
from onnx import helper as onnx_helper

from .base_layer import OnnxLayer, QuantInfo, activation_scale, constant


class InputQuantizer(OnnxLayer):
    """Intermediate representation of QuantizeLinear(), used to quantize the input.

    Inputs ``X`` (float32) and ``scale`` (float32, per tensor or per channel of axis 1).
    Maths: ``Y = sat(round_half_to_even(X / scale))`` to uint8 (or int8 when signed).

    Args:
        input_tp (ValueInfoProto): the input of the ONNX model.
        input_signed (bool, optional): whether the input is signed. Defaults to False.
        name (str, optional): the node name. Defaults to ''.
    """
    INPUT_NAMES = ("X", "scale")
    NUM_ACTIVATIONS = 0

    def __init__(self, input_tp, input_signed=False, name=""):
        if not isinstance(input_tp, ValueInfoProto):
            raise TypeError("InputQuantizer expected the ValueInfoProto of a model input for "
                            f"input_tp. Received: input_tp of type {type(input_tp).__name__}")
        elem_type = input_tp.type.tensor_type.elem_type
        if elem_type != TensorProto.FLOAT:
            raise ValueError(f"InputQuantizer expected a float32 model input. Received: "
                             f"input {input_tp.name!r} of type "
                             f"{TensorProto.DataType.Name(elem_type)}")
        if not isinstance(input_signed, bool):
            raise TypeError("InputQuantizer expected a bool for input_signed. "
                            f"Received: input_signed={input_signed!r}")
        super().__init__("InputQuantizer", name=name)
        self.input_tp = input_tp
        self.input_signed = input_signed

    @property
    def op_type(self):
        return self.base_name + ("Signed" if self.input_signed else "")

    def build_subgraph(self, op_type):
        to = TensorProto.INT8 if self.input_signed else TensorProto.UINT8
        return [constant("zero", np.array(0.0, np.float32)),
                onnx_helper.make_node("Mul", ["scale", "zero"], ["zero_scale"]),
                onnx_helper.make_node("Cast", ["zero_scale"], ["zero_point"], to=to),
                onnx_helper.make_node("QuantizeLinear", ["X", "scale", "zero_point"], ["Y"],
                                      axis=1)]

    def quantize(self, inputs, output_range, per_tensor):
        scale = activation_scale(output_range, self.input_signed, per_tensor)
        return ([scale.astype(np.float32)],
                QuantInfo(scale, self.input_signed, tuple(output_range.shape)))


class Dequantizer(OnnxLayer):
    """Intermediate representation of DequantizeLinear(), used to dequantize the input.

    Inputs ``X`` (int8/uint8) and ``scale`` (float32, per tensor or per channel of axis 1).
    Maths: ``Y = X * scale`` (float32).

    Args:
        name (str, optional): the node name. Defaults to ''.
    """
    INPUT_NAMES = ("X", "scale")

    def __init__(self, name=""):
        super().__init__("Dequantizer", name=name)

    def build_subgraph(self, op_type):
        return [onnx_helper.make_node("DequantizeLinear", ["X", "scale"], ["Y"], axis=1)]

    def quantize(self, inputs, output_range, per_tensor):
        return [np.asarray(inputs[0].scale, np.float32)], None
