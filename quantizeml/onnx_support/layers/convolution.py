"""QuantizedConv2D and QuantizedDepthwise2D: integer Conv (+ ReLU) (+ MaxPool or global
average pooling) custom nodes."""
import numpy as np
from onnx import AttributeProto, TensorProto
from onnx import helper as onnx_helper

from .base_layer import OnnxLayer, QuantInfo, activation_scale, attribute_ref, check_ints, constant
from .requantization import (
    MAX_ACCUMULATOR,
    fixed_point_multiplier,
    requantize_nodes,
    saturate_nodes,
)

_POOL_SUFFIX = {"none": "", "max": "MaxPool", "gap": "GlobalAvgPool"}


def quantize_weights(kernel, axis=0, bits=8):
    """Symmetric per-output-channel quantization of a float kernel:
    ``q = clip(round(kernel / scale), -(2^(bits-1)-1), 2^(bits-1)-1)`` with
    ``scale = max|kernel| / (2^(bits-1)-1)`` over every axis but ``axis`` (1 for an all-zero
    channel).

    Args:
        kernel (np.ndarray): the float kernel.
        axis (int, optional): the output-channel axis. Defaults to 0.
        bits (int, optional): the bitwidth. Defaults to 8.

    Returns:
        tuple: (int8 kernel, float64 scales of shape ``(kernel.shape[axis],)``).
    """
    qmax = 2 ** (bits - 1) - 1
    others = tuple(i for i in range(kernel.ndim) if i != axis % kernel.ndim)
    max_abs = np.max(np.abs(kernel), axis=others)
    scale = np.where(max_abs > 0, max_abs / qmax, 1.0)
    shape = [1] * kernel.ndim
    shape[axis] = -1
    q = np.clip(np.rint(kernel / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def check_accumulator(layer, terms, sums=1):
    """Raises a ValueError unless a dot product of ``terms`` 8-bit products fits the int32
    accumulator and ``sums`` such accumulators (plus an int32 bias) stay below
    ``MAX_ACCUMULATOR``, the bound of the exact rescaling."""
    product = 255 * 127  # |uint8 or int8 activation| * |int8 weight in [-127, 127]|
    if terms * product >= 2 ** 31 or sums * (terms * product + 2 ** 31) >= MAX_ACCUMULATOR:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} expected an accumulator "
                         f"that int32 holds and int64 rescales exactly. Received: {terms} "
                         f"products per output, summed {sums} times")


def quantize_bias(bias, scale):
    """Bias in accumulator units: ``clip(round(bias / scale), int32 range)`` as int32."""
    info = np.iinfo(np.int32)
    return np.clip(np.rint(bias / scale), info.min, info.max).astype(np.int32)


class QuantizedConv2D(OnnxLayer):
    """Intermediate representation of ConvInteger() + ReLU() + MaxPool()/GlobalAveragePool()
    as an exportable node.

    Inputs ``X`` (int8/uint8, NCHW, real value ``X * sx``), ``W`` (int8, OIHW, per output
    channel scale ``sw``, with ``sx`` folded in), ``B`` (int32 bias in accumulator units,
    shape ``(O, 1, 1)``), ``pads`` (int64, ``Pad`` layout), ``M``/``S`` (int64 fixed-point
    multiplier and shift, shape ``(O, 1, 1)``). Integer maths:
    ``Y = sat(floor(((conv(pad(X), W) + B) * M + 2^(S-1)) / 2^S))``, with ReLU as the lower
    saturation bound 0 (uint8 output), MaxPool applied to the saturated result (the rescaling
    is monotonic) and, for "gap", ``max(acc, 0)`` summed over H, W before the rescaling (whose
    multiplier includes 1/(H*W)). The output real value is ``Y * so``.

    Args:
        strides (list of int, optional): the convolutional strides. Defaults to [1, 1].
        pool_type (str, optional): the pool type, one of {"none", "max", "gap"}.
            Defaults to "none".
        pool_size (list of int, optional): the kernel pool shape. Ignored when
            pool_type != "max". Defaults to (2, 2).
        pool_strides (list of int, optional): the kernel strides. Ignored when
            pool_type != "max". Defaults to (2, 2).
        pool_pads (list of int, optional): the size of each padding dimension. Ignored when
            pool_type != "max". Defaults to [0, 0, 0, 0].
        activation (bool, optional): whether to apply relu operation. Defaults to False.
        name (str, optional): the node name. Defaults to ''.
        pads (list of int, optional): the convolution padding, ONNX ``Conv`` layout
            ``[top, left, bottom, right]``. Defaults to [0, 0, 0, 0].
    """
    INPUT_NAMES = ("X", "W", "B", "pads", "M", "S")
    WEIGHT_NAMES = ("kernel", "bias")
    _BASE_NAME = "QuantizedConv2D"

    def __init__(self, strides=(1, 1), pool_type="none", pool_size=(2, 2), pool_strides=(2, 2),
                 pool_pads=(0, 0, 0, 0), activation=False, name="", *, pads=(0, 0, 0, 0)):
        what = type(self).__name__
        if pool_type not in _POOL_SUFFIX:
            raise ValueError(f"{what} expected pool_type in {sorted(_POOL_SUFFIX)}. "
                             f"Received: pool_type={pool_type!r}")
        if not isinstance(activation, bool):
            raise TypeError(f"{what} expected a bool for activation. "
                            f"Received: activation={activation!r}")
        attributes = {"strides": list(check_ints(strides, 2, what, "strides", minimum=1))}
        if pool_type == "max":
            attributes.update(
                pool_size=list(check_ints(pool_size, 2, what, "pool_size", minimum=1)),
                pool_strides=list(check_ints(pool_strides, 2, what, "pool_strides", minimum=1)),
                pool_pads=list(check_ints(pool_pads, 4, what, "pool_pads")))
        super().__init__(self._BASE_NAME, name=name, **attributes)
        self.pool_type = pool_type
        self.activation = activation
        self.pads = check_ints(pads, 4, what, "pads")

    @property
    def op_type(self):
        return self.base_name + _POOL_SUFFIX[self.pool_type] + ("ReLU" if self.activation else "")

    @property
    def groups(self):
        """int: the convolution groups (1)."""
        return 1

    def _conv_node(self):
        node = onnx_helper.make_node("ConvInteger", ["Xp", "W"], ["acc32"])
        node.attribute.append(attribute_ref("strides"))
        return node

    def build_subgraph(self, op_type):
        nodes = [onnx_helper.make_node("Pad", ["X", "pads"], ["Xp"]),
                 self._conv_node(),
                 onnx_helper.make_node("Cast", ["acc32"], ["acc"], to=TensorProto.INT64),
                 onnx_helper.make_node("Cast", ["B"], ["B64"], to=TensorProto.INT64),
                 onnx_helper.make_node("Add", ["acc", "B64"], ["acc_b"])]
        acc = "acc_b"
        if self.pool_type == "gap":
            if self.activation:
                nodes += [constant("zero", np.array(0, np.int64)),
                          onnx_helper.make_node("Max", [acc, "zero"], ["acc_relu"])]
                acc = "acc_relu"
            nodes += [constant("hw_axes", np.array([2, 3], np.int64)),
                      onnx_helper.make_node("ReduceSum", [acc, "hw_axes"], ["acc_sum"],
                                            keepdims=1)]
            acc = "acc_sum"
        nodes += requantize_nodes(acc, "M", "S", "rescaled")
        signed = not self.activation
        if self.pool_type == "max":
            nodes += saturate_nodes("rescaled", "saturated", signed)
            pool = onnx_helper.make_node("MaxPool", ["saturated"], ["Y"])
            pool.attribute.extend([attribute_ref("kernel_shape", ref_attr_name="pool_size"),
                                   attribute_ref("strides", ref_attr_name="pool_strides"),
                                   attribute_ref("pads", ref_attr_name="pool_pads")])
            nodes.append(pool)
        else:
            nodes += saturate_nodes("rescaled", "Y", signed)
        return nodes

    def _check_kernel(self, kernel, in_channels):
        if kernel.ndim != 4 or kernel.shape[1] * self.groups != in_channels:
            raise ValueError(f"{type(self).__name__} {self.name!r} expected a kernel of shape "
                             f"(O, {in_channels // self.groups}, kh, kw). "
                             f"Received: kernel shape={kernel.shape}")

    def _folded_kernel(self, kernel, in_scale):
        """The kernel times the input scale of its input channel."""
        return kernel * in_scale[None, :, None, None]

    def output_spatial_shape(self, input_shape):
        """(H, W) of the convolution output for an input of shape (C, H, W)."""
        kh, kw = self.weights["kernel"].shape[2:]
        sh, sw = self.attribute("strides")
        top, left, bottom, right = self.pads
        return ((input_shape[1] + top + bottom - kh) // sh + 1,
                (input_shape[2] + left + right - kw) // sw + 1)

    def quantize(self, inputs, output_range, per_tensor):
        x = inputs[0]
        if "kernel" not in self.weights:
            raise ValueError(f"{type(self).__name__} {self.name!r} expected a 'kernel' weight "
                             "set with set_weight() before quantize().")
        if len(x.shape) != 3:
            raise ValueError(f"{type(self).__name__} {self.name!r} expected a 4D (NCHW) input. "
                             f"Received: input shape (without batch)={x.shape}")
        kernel = self.weights["kernel"]
        self._check_kernel(kernel, x.shape[0])
        out_channels = kernel.shape[0]
        bias = self.weights.get("bias", np.zeros(out_channels))
        qkernel, wscale = quantize_weights(self._folded_kernel(kernel, x.channel_scale(x.shape[0])))
        qbias = quantize_bias(bias, wscale)
        kh, kw = kernel.shape[2:]
        check_accumulator(self, kernel.shape[1] * kh * kw)
        factor = 1.0
        if self.pool_type == "gap":
            h, w = self.output_spatial_shape(x.shape)
            factor = 1.0 / (h * w)
            check_accumulator(self, kernel.shape[1] * kh * kw, h * w)
        signed = not self.activation
        out_scale = activation_scale(output_range, signed, per_tensor)
        m, s = fixed_point_multiplier(wscale * factor / np.broadcast_to(out_scale,
                                                                        (out_channels,)))
        top, left, bottom, right = self.pads
        pads = np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
        shape3 = (out_channels, 1, 1)
        params = [qkernel, qbias.reshape(shape3), pads, m.reshape(shape3), s.reshape(shape3)]
        return params, QuantInfo(out_scale, signed, tuple(output_range.shape))


class QuantizedDepthwise2D(QuantizedConv2D):
    """Intermediate representation of a depthwise ConvInteger() (``group`` = channels) +
    ReLU() as an exportable node.

    Same inputs and integer maths as QuantizedConv2D with a kernel of shape (C, 1, kh, kw);
    the number of groups is the ``groups`` attribute of the node, set from the kernel.

    Args:
        strides (list of int, optional): the convolutional strides. Defaults to [1, 1].
        activation (bool, optional): whether to apply relu operation. Defaults to False.
        name (str, optional): the node name. Defaults to ''.
        pads (list of int, optional): the convolution padding, ONNX ``Conv`` layout
            ``[top, left, bottom, right]``. Defaults to [0, 0, 0, 0].
    """
    _BASE_NAME = "QuantizedDepthwise2D"

    def __init__(self, strides=(1, 1), activation=False, name="", *, pads=(0, 0, 0, 0)):
        super().__init__(strides=strides, activation=activation, name=name, pads=pads)
        self.set_attribute("groups", 1)

    @property
    def groups(self):
        """int: the convolution groups (the channels, once the kernel is set)."""
        return self.attribute("groups")

    def set_weight(self, key, value):
        super().set_weight(key, value)
        if key == "kernel":
            kernel = self.weights["kernel"]
            if kernel.ndim != 4 or kernel.shape[1] != 1:
                raise ValueError(f"QuantizedDepthwise2D {self.name!r} expected a kernel of "
                                 f"shape (C, 1, kh, kw). Received: kernel shape={kernel.shape}")
            self.set_attribute("groups", int(kernel.shape[0]))

    def _conv_node(self):
        node = super()._conv_node()
        node.attribute.append(attribute_ref("group", AttributeProto.INT, ref_attr_name="groups"))
        return node

    def _folded_kernel(self, kernel, in_scale):
        return kernel * in_scale[:, None, None, None]

