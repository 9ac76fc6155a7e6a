"""QuantizedDense1D: integer Flatten (+) MatMul (+ ReLU) custom node."""
import numpy as np
from onnx import TensorProto
from onnx import helper as onnx_helper

from .base_layer import OnnxLayer, QuantInfo, activation_scale
from .convolution import check_accumulator, quantize_bias, quantize_weights
from .requantization import fixed_point_multiplier, requantize_nodes, saturate_nodes


class QuantizedDense1D(OnnxLayer):
    """Intermediate representation of Flatten() + MatMulInteger() + ReLU() as an exportable
    node.

    Inputs ``X`` (int8/uint8, real value ``X * sx``), ``W`` (int8 of shape (K, O), per output
    channel scale ``sw``, with ``sx`` folded in), ``B`` (int32 bias in accumulator units, shape
    ``(O,)``), ``M``/``S`` (int64 fixed-point multiplier and shift, shape ``(O,)``). Integer
    maths: ``Y = sat(floor(((flatten(X) @ W + B) * M + 2^(S-1)) / 2^S))``, with ReLU as the
    lower saturation bound 0 (uint8 output). The output real value is ``Y * so``.

    Args:
        flatten (bool, optional): whether to flatten the inputs. Defaults to False.
        activation (bool, optional): whether to apply relu operation. Defaults to False.
        name (str, optional): the node name. Defaults to ''.
    """
    INPUT_NAMES = ("X", "W", "B", "M", "S")
    WEIGHT_NAMES = ("kernel", "bias")

    def __init__(self, flatten=False, activation=False, name=""):
        for key, value in (("flatten", flatten), ("activation", activation)):
            if not isinstance(value, bool):
                raise TypeError(f"QuantizedDense1D expected a bool for {key}. "
                                f"Received: {key}={value!r}")
        super().__init__("QuantizedDense1D", name=name)
        self.flatten = flatten
        self.activation = activation

    @property
    def op_type(self):
        return self.base_name + ("Flatten" if self.flatten else "") + \
            ("ReLU" if self.activation else "")

    def build_subgraph(self, op_type):
        nodes, x = [], "X"
        if self.flatten:
            nodes.append(onnx_helper.make_node("Flatten", ["X"], ["Xf"], axis=1))
            x = "Xf"
        nodes += [onnx_helper.make_node("MatMulInteger", [x, "W"], ["acc32"]),
                  onnx_helper.make_node("Cast", ["acc32"], ["acc"], to=TensorProto.INT64),
                  onnx_helper.make_node("Cast", ["B"], ["B64"], to=TensorProto.INT64),
                  onnx_helper.make_node("Add", ["acc", "B64"], ["acc_b"])]
        nodes += requantize_nodes("acc_b", "M", "S", "rescaled")
        nodes += saturate_nodes("rescaled", "Y", signed=not self.activation)
        return nodes

    def input_scale(self, x):
        """The per-feature scale of the (flattened) input: each channel's scale repeated over
        its spatial positions (NCHW flatten order)."""
        if not x.shape:
            raise ValueError(f"QuantizedDense1D {self.name!r} expected an input of rank >= 2.")
        if len(x.shape) > 1 and not self.flatten:
            raise ValueError(f"QuantizedDense1D {self.name!r} expected a 2D input or "
                             f"flatten=True. Received: input shape (without batch)={x.shape}")
        positions = int(np.prod(x.shape[1:], dtype=np.int64))
        return np.repeat(x.channel_scale(x.shape[0]), positions)

    def quantize(self, inputs, output_range, per_tensor):
        x = inputs[0]
        if "kernel" not in self.weights:
            raise ValueError(f"QuantizedDense1D {self.name!r} expected a 'kernel' weight set "
                             "with set_weight() before quantize().")
        kernel = self.weights["kernel"]
        in_scale = self.input_scale(x)
        if kernel.ndim != 2 or kernel.shape[0] != in_scale.shape[0]:
            raise ValueError(f"QuantizedDense1D {self.name!r} expected a kernel of shape "
                             f"({in_scale.shape[0]}, units). Received: kernel shape="
                             f"{kernel.shape}")
        units = kernel.shape[1]
        check_accumulator(self, kernel.shape[0])
        bias = self.weights.get("bias", np.zeros(units))
        qkernel, wscale = quantize_weights(kernel * in_scale[:, None], axis=1)
        qbias = quantize_bias(bias, wscale)
        signed = not self.activation
        out_scale = activation_scale(output_range, signed, per_tensor)
        m, s = fixed_point_multiplier(wscale / np.broadcast_to(out_scale, (units,)))
        return [qkernel, qbias, m, s], QuantInfo(out_scale, signed, tuple(output_range.shape))
