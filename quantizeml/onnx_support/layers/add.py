"""QuantizedAdd: integer Add (+ ReLU) of two quantized tensors."""
import numpy as np
from onnx import TensorProto
from onnx import helper as onnx_helper

from .base_layer import OnnxLayer, QuantInfo, activation_scale, constant
from .requantization import (
    MULTIPLIER_BITS,
    fixed_point_multiplier,
    requantize_nodes,
    saturate_nodes,
)


class QuantizedAdd(OnnxLayer):
    """Intermediate representation of Add() (+ ReLU()) as an exportable node.

    Inputs ``A``, ``B`` (int8/uint8, real values ``A * sa`` and ``B * sb``), ``MA``, ``MB``
    (int64 multipliers) and ``S`` (int64 shift), per channel (shape ``(C, 1, 1)`` or ``(C,)``)
    or per tensor. Integer maths:
    ``Y = sat(floor((A * MA + B * MB + 2^(S-1)) / 2^S))`` with ``MA ~ 2^S * sa / so`` and
    ``MB ~ 2^S * sb / so``, and ReLU as the lower saturation bound 0 (uint8 output).

    Args:
        name (str, optional): the node name. Defaults to ''.
        activation (bool, optional): whether to apply relu operation (keyword only).
            Defaults to False.
    """
    INPUT_NAMES = ("A", "B", "MA", "MB", "S")
    NUM_ACTIVATIONS = 2

    def __init__(self, name="", *, activation=False):
        if not isinstance(activation, bool):
            raise TypeError("QuantizedAdd expected a bool for activation. "
                            f"Received: activation={activation!r}")
        super().__init__("QuantizedAdd", name=name)
        self.activation = activation

    @property
    def op_type(self):
        return self.base_name + ("ReLU" if self.activation else "")

    def build_subgraph(self, op_type):
        nodes = [onnx_helper.make_node("Cast", ["A"], ["A64"], to=TensorProto.INT64),
                 onnx_helper.make_node("Cast", ["B"], ["B64"], to=TensorProto.INT64),
                 onnx_helper.make_node("Mul", ["A64", "MA"], ["A_scaled"]),
                 onnx_helper.make_node("Mul", ["B64", "MB"], ["B_scaled"]),
                 onnx_helper.make_node("Add", ["A_scaled", "B_scaled"], ["acc"]),
                 constant("one", np.array(1, np.int64))]
        nodes += requantize_nodes("acc", "one", "S", "rescaled")
        nodes += saturate_nodes("rescaled", "Y", signed=not self.activation)
        return nodes

    def quantize(self, inputs, output_range, per_tensor):
        a, b = inputs
        if a.shape != b.shape:
            raise ValueError(f"QuantizedAdd {self.name!r} expected inputs of the same shape. "
                             f"Received: shapes {a.shape} and {b.shape}")
        signed = (a.signed or b.signed) and not self.activation
        out_scale = activation_scale(output_range, signed, per_tensor)
        per_channel = np.ndim(a.scale) or np.ndim(b.scale) or np.ndim(out_scale)
        if per_channel:
            channels = a.shape[0]
            sa, sb = a.channel_scale(channels), b.channel_scale(channels)
            so = np.broadcast_to(out_scale, (channels,))
        else:
            sa, sb, so = (np.asarray(v, np.float64) for v in (a.scale, b.scale, out_scale))
        # One shift for both inputs, from the larger multiplier (both clamped like it).
        limit = 2.0 ** MULTIPLIER_BITS
        ma, mb = np.minimum(sa / so, limit), np.minimum(sb / so, limit)
        _, shift = fixed_point_multiplier(np.maximum(ma, mb))
        pow2 = np.exp2(shift.astype(np.float64))
        ma = np.rint(ma * pow2).astype(np.int64)
        mb = np.rint(mb * pow2).astype(np.int64)
        if per_channel:
            shape = (-1,) + (1,) * (len(a.shape) - 1)
            ma, mb, shift = (v.reshape(shape) for v in (ma, mb, shift))
        return [ma, mb, shift], QuantInfo(out_scale, signed, tuple(output_range.shape))
