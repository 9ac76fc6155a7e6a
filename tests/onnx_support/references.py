"""Numpy int64 references of the quantized ONNX layers, and a runner for one custom node."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper as onnx_helper
from onnx import numpy_helper

from quantizeml.onnx_support.layers import make_model

NP_TO_ONNX = {np.dtype(np.int8): onnx.TensorProto.INT8, np.dtype(np.uint8): onnx.TensorProto.UINT8,
              np.dtype(np.float32): onnx.TensorProto.FLOAT}


def run_layer(layer, activations, params, output_dtype, output_shape=None):
    """Runs one custom node in a plain onnxruntime session (its definition is the only
    function of the model); the model passes ``onnx.checker`` with ``full_check``.

    Args:
        layer (OnnxLayer): the layer.
        activations (list of np.ndarray): the activation inputs (graph inputs).
        params (list of np.ndarray): the parameters (initializers), in INPUT_NAMES order.
        output_dtype (np.dtype): the output type.
        output_shape (list, optional): the declared output shape (unknown dims when None).

    Returns:
        np.ndarray: the output.
    """
    formal = layer.INPUT_NAMES
    act_names = [f"in_{name}" for name in formal[:len(activations)]]
    param_names = [f"p_{name}" for name in formal[len(activations):]]
    inputs = [onnx_helper.make_tensor_value_info(n, NP_TO_ONNX[a.dtype], [None] * a.ndim)
              for n, a in zip(act_names, activations)]
    out_rank = len(output_shape) if output_shape else activations[0].ndim
    outputs = [onnx_helper.make_tensor_value_info(
        "out", NP_TO_ONNX[np.dtype(output_dtype)], output_shape or [None] * out_rank)]
    inits = [numpy_helper.from_array(np.asarray(p), n) for n, p in zip(param_names, params)]
    node = layer.make_node(act_names + param_names, ["out"])
    model = make_model([node], [layer.make_function()], inputs, outputs, inits)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(act_names, activations)))[0]


def rescale(acc, m, s):
    """``floor((acc * m + 2^(s-1)) / 2^s)`` with Python-semantics floor division (int64)."""
    acc, m, s = (np.asarray(v, np.int64) for v in (acc, m, s))
    pow2 = np.int64(1) << s
    return (acc * m + pow2 // 2) // pow2


def saturate(x, signed):
    return np.clip(x, -128, 127) if signed else np.clip(x, 0, 255)


def conv2d(x, w, strides=(1, 1), pads=(0, 0, 0, 0), groups=1):
    """Integer NCHW convolution in int64 (pads: top, left, bottom, right)."""
    x = np.pad(np.asarray(x, np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    w = np.asarray(w, np.int64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - kh) // strides[0] + 1, (wd - kw) // strides[1] + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    per_group = o // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = w[g * per_group:(g + 1) * per_group]
        for i in range(oh):
            for j in range(ow):
                patch = xs[:, :, i * strides[0]:i * strides[0] + kh,
                           j * strides[1]:j * strides[1] + kw]
                out[:, g * per_group:(g + 1) * per_group, i, j] = np.einsum(
                    "nchw,ochw->no", patch, ws)
    return out


def maxpool(x, size, strides):
    n, c, h, w = x.shape
    oh, ow = (h - size[0]) // strides[0] + 1, (w - size[1]) // strides[1] + 1
    out = np.empty((n, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * strides[0]:i * strides[0] + size[0],
                                j * strides[1]:j * strides[1] + size[1]].max(axis=(2, 3))
    return out
