"""The lean exact form: requantization on float carriers (``Mul``, ``Add 0.5``, ``Floor``, one
clip) equals the integer rounded shift ``floor((n + 2^(s-1)) / 2^s)`` bit for bit, ties
(values exactly at .5 after the shift) included, in float32 and float64 carriers; and a
convolution whose static bound exceeds 2^24 (split weights) stays bit-exact."""
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras
from onnx import TensorProto
from onnx import helper as oh

from quantizeml.models import quantize
from quantizeml.onnx_support import export
from quantizeml.onnx_support.exact import _Builder, _requantize_float, _split_weights, _T

from .references import rescale


def _run(b, x_name, out_name, x_dtype, x):
    graph = oh.make_graph(b.nodes, "g", [oh.make_tensor_value_info(x_name, x_dtype, [None, None])],
                          [oh.make_tensor_value_info(out_name, TensorProto.FLOAT, [None, None])],
                          initializer=b.inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {x_name: x})[0]


def _quantizer(frac, value_bits=7, signed=True):
    return types.SimpleNamespace(frac_bits=np.asarray(frac, np.float32), value_bits=value_bits,
                                 signed=signed, scale_bits=8)


@pytest.mark.parametrize("value_bits, out_bits", [(10, 11), (23, 24), (23, 7)])
def test_requantize_float_ties(value_bits, out_bits):
    """Every tie ``n = (2k + 1) 2^(s-1)`` and its neighbours, per channel right shifts of 1 to
    4 bits, one left shift and one none, near the top of the carrier (float32 at 10 bits;
    float64 at 23 bits with 24 output bits: ``(top + 1) 2^4 > 2^24``; with 7 output bits the
    rounding in float32 over the whole bound); against the numpy int64 reference."""
    shifts = np.array([1, 2, 3, 4, -1, 0])  # right shifts (negative: left)
    rng = np.random.default_rng(0)
    top = 2 ** value_bits
    ties = [(2 * k + 1) * 2 ** (s - 1) for s in range(1, 5) for k in range(-9, 9)]
    ties += [top - 8, -top, top]  # the extremes of the bound
    n = np.array(ties + [t + 1 for t in ties] + [t - 1 for t in ties])
    n = np.clip(np.concatenate([n, rng.integers(-top, top + 1, 64)]), -top, top)
    x = np.repeat(n[:, None], shifts.size, axis=1).astype(np.float32)
    frac_in = np.full(shifts.size, 6.0)
    quantizer = _quantizer(frac_in - shifts, value_bits=out_bits)
    b = _Builder()
    t = _T("x", value_bits, frac_in, None, False, (shifts.size,), "float32", float(top))
    out = _requantize_float(b, t, quantizer)
    assert out is not None
    got = _run(b, "x", out.name, TensorProto.FLOAT, x)
    up = np.left_shift(1, np.maximum(-shifts, 0))
    expected = rescale(n[:, None] * up, 1, np.maximum(shifts, 0))
    expected = np.clip(expected, -(2 ** out_bits), 2 ** out_bits - 1)
    ops = [node.op_type for node in b.nodes]
    assert ("Cast" in ops) == (out_bits == 24), ops  # float64 only when needed
    assert ops.count("Clip") + ops.count("Min") + ops.count("Max") <= 2, ops
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("shifts", [(1, 2, 3), (17, 18, 19)],
                         ids=["round-in-float32", "round-in-float64"])
def test_requantize_float_relu_merged_ties(shifts):
    """The ReLU clip merged into the requantization (``clip(q(n), 0, q(M))``) with per-channel
    maxima that are themselves ties (``q(M) = 3, 2, 4``), inputs at every tie and its
    neighbours; signed output quantizer; the float64 product clipped then rounded in float32
    (small shifts), or rounded in float64, then the per-channel bound in float32 (large
    shifts)."""
    shifts = np.array(shifts)
    half = 2 ** (shifts - 1)
    relu_max = np.array([5, 3, 7]) * half
    ties = (2 * np.arange(-10, 11)[:, None] + 1) * half
    n = np.concatenate([ties - 1, ties, ties + 1])
    b = _Builder()
    t = _T("x", 23, np.full(3, 20.0), None, False, (3,), "float32")
    out = _requantize_float(b, t, _quantizer(20.0 - shifts), relu_max=relu_max)
    got = _run(b, "x", out.name, TensorProto.FLOAT, n.astype(np.float32))
    expected = np.clip(rescale(np.clip(n, 0, relu_max), 1, shifts), -128, 127)
    np.testing.assert_array_equal(expected.max(axis=0), [3, 2, 4])
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_split_weights_exact():
    """``w = hi * 2^k + lo`` exactly, both halves within the float32 bound."""
    w = np.random.default_rng(1).integers(-128, 128, (4, 512, 3, 3)).astype(np.float64)
    x = _T("x", 8, 0.0, bound=255.0)
    k, hi, lo = _split_weights(x, w, float(np.abs(w).reshape(4, -1).sum(1).max() * 255))
    np.testing.assert_array_equal(hi * 2.0 ** k + lo, w)
    for part in (hi, lo):
        assert np.abs(part).reshape(4, -1).sum(1).max() * 255 <= 2 ** 24


def test_export_wide_conv_bit_exact():
    """A 3x3 convolution over 384 channels: ``sum |w| * 255`` exceeds 2^24, so the float32
    Conv is split in two (high and low weights) and combined in float64; bit-exact."""
    inputs = keras.Input((4, 4, 384), name="inp")
    x = keras.layers.Conv2D(4, 3, padding="same", name="wide",
                            kernel_initializer="ones", bias_initializer="ones")(inputs)
    x = keras.layers.ReLU(name="r")(x)
    model = keras.Model(inputs, x)
    samples = np.abs(np.random.default_rng(0).normal(size=(8, 4, 4, 384))).astype(np.float32)
    qmodel = quantize(model, samples=samples)
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node].count("Conv") == 2
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {"inp": samples})
    keras_int = keras.Model(qmodel.inputs, qmodel.layers[-1].input)(samples).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(samples).numpy())


@pytest.mark.parametrize("shift, signed, relu, float32", [
    (16, False, True, True), (17, False, True, False), (15, True, False, True),
    (17, True, False, True), (18, True, False, False)],
    ids=["relu-16", "relu-17-float64", "signed-15", "signed-17", "signed-18-float64"])
def test_requantize_float32_product_ties(shift, signed, relu, float32):
    """A QFloat accumulator up to 2^24 (``acc * s`` far beyond float32) requantized by a
    right shift of ``shift`` bits: every ``acc`` with ``acc * s = (j + 1/2) 2^shift + delta``,
    ``|delta| <= 3`` (the ties and the values nearest to them, ``2^-shift`` apart after the
    shift), the two ends of the output range, the extremes of the bound and random values,
    per channel (odd and even 8-bit scales, one channel with a ReLU bound of 6); the
    float32 ``Mul``/``Add``/``Floor`` path while ``max(|lo|, hi + 1/2) 2^shift <= 2^24``
    (8-bit unsigned outputs up to 16 bits of shift, 7-bit signed ones up to 17), float64
    beyond; against the numpy int64 reference."""
    from quantizeml.tensors import QFloat
    # 8-bit scales 129, 131, 169 (odd: the values nearest to a tie are 2^-shift away from
    # it), 192 and 214 (even), over 2^8
    scales = np.array([129, 131, 169, 192, 214], np.float32) / 256
    qs = QFloat.quantize_scales(scales, 8)
    s_int = qs.values.numpy().astype(np.int64)
    assert np.any(s_int % 2 == 1) and np.any(s_int % 2 == 0)
    frac_in = np.full(scales.size, 30.0)
    frac_out = frac_in + qs.frac_bits.numpy() - shift
    out_bits = 8 if not signed else 7
    lo, hi = (-(2 ** out_bits), 2 ** out_bits - 1) if signed else (0, 2 ** out_bits - 1)
    top = 2 ** 24
    accs = [np.array([-top, -top + 1, top - 1, top])]
    for k in (lo, hi):  # the ends of the output range
        centre = np.round((k + 0.5) * 2.0 ** shift / s_int).astype(np.int64)
        accs.append((centre[None, :] + np.arange(-3, 4)[:, None]).reshape(-1))
    for s in s_int:  # acc * s = (j + 1/2) 2^shift + delta: every tie and its nearest values
        odd, bits = int(s), shift
        while odd % 2 == 0:
            odd, bits = odd // 2, bits - 1
        for delta in range(-3, 4):
            first = (2 ** (bits - 1) + delta) * pow(odd, -1, 2 ** bits) % 2 ** bits
            accs.append(np.arange(first - top, top + 1, 2 ** bits))
    accs.append(np.random.default_rng(2).integers(-top, top + 1, 256))
    acc = np.unique(np.clip(np.concatenate(accs), -top, top))
    x = np.repeat(acc[:, None], scales.size, axis=1)
    relu_max = None
    if relu:  # per channel: floor(6 * 2^f) on the grid of acc * s
        relu_max = np.floor(6.0 * 2.0 ** (frac_in + qs.frac_bits.numpy())).astype(np.int64)
    b = _Builder()
    t = _T("x", 24, frac_in, scales, False, (scales.size,), "float32", float(top))
    quantizer = types.SimpleNamespace(frac_bits=frac_out.astype(np.float32),
                                      value_bits=out_bits, signed=signed, scale_bits=8)
    out = _requantize_float(b, t, quantizer, 8, relu_max)
    ops = [node.op_type for node in b.nodes]
    assert ("Cast" not in ops) == float32, ops
    got = _run(b, "x", out.name, TensorProto.FLOAT, x.astype(np.float32))
    n = x * s_int
    if relu:  # the ReLU bound is on the grid of acc * s
        n = np.clip(n, 0, relu_max)
    expected = np.clip(rescale(n, 1, shift), lo, hi)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    # the inputs are adversarial: one float32 product, then Add/Floor, fails beyond the bound
    mult = np.float32(s_int * 2.0 ** -shift)
    naive = np.clip(np.floor(x.astype(np.float32) * mult + np.float32(0.5)), lo, hi)
    assert not relu or np.all(relu_max > top * 255)  # the ReLU bound of 6 clips no input
    assert np.array_equal(naive, expected) == float32


@pytest.mark.parametrize("shift, signed, bounds", [
    (16, False, np.arange(16) * 16 + 40), (17, True, None), (15, False, np.arange(16) % 2),
    (15, False, np.zeros(16, np.int64))], ids=["relu6-16", "signed-17", "relu-01", "relu-0"])
def test_requantize_float_after_conv_ties(shift, signed, bounds):
    """The float32 requantization behind a ``Conv`` (16 channels, 1x1 identity kernel: its
    outputs are the accumulators fed in), in a default onnxruntime session (all graph
    optimizations: the accumulator clip fused into the ``Conv``, the ``BatchNormalization``s in
    the blocked layout), on every accumulator ``acc * s = (j + 1/2) 2^shift + delta``, ``|delta|
    <= 3``, per channel (16 odd and even 8-bit scales; per-channel ReLU bounds for the unsigned
    outputs, down to 0 and 1); against the numpy int64 reference."""
    from quantizeml.tensors import QFloat
    scales = (np.arange(129, 256, 8, dtype=np.float32) + np.arange(16) % 2) / 256
    qs = QFloat.quantize_scales(scales, 8)
    s_int = qs.values.numpy().astype(np.int64)
    frac_in = np.full(16, 30.0)
    frac_out = frac_in + qs.frac_bits.numpy() - shift
    lo, hi = (-128, 127) if signed else (0, 255)
    top = 2 ** 24
    accs = [np.array([-top, top])]
    for s in s_int:
        odd, bits = int(s), shift
        while odd % 2 == 0:
            odd, bits = odd // 2, bits - 1
        for delta in range(-3, 4):
            first = (2 ** (bits - 1) + delta) * pow(odd, -1, 2 ** bits) % 2 ** bits
            accs.append(np.arange(first - top, top + 1, 2 ** bits))
    acc = np.unique(np.concatenate(accs))
    x = np.repeat(acc[:, None], 16, axis=1)
    relu_max = None
    if bounds is not None:  # ReLU bounds (on the grid of acc * s) below the output's top
        relu_max = bounds * 2 ** shift
    b = _Builder()
    v = b.node("Transpose", ["x"], "nchw", perm=[0, 3, 1, 2])
    v = b.node("Conv", [v, b.const(np.eye(16, dtype=np.float32)[:, :, None, None])], "conv")
    v = b.node("Transpose", [v], "nhwc", perm=[0, 2, 3, 1])
    t = _T(v, 24, frac_in, scales, False, (len(acc), 1, 16), "float32", float(top))
    quantizer = types.SimpleNamespace(frac_bits=frac_out.astype(np.float32),
                                      value_bits=8 if not signed else 7, signed=signed,
                                      scale_bits=8)
    out = _requantize_float(b, t, quantizer, 8, relu_max)
    assert "Cast" not in [node.op_type for node in b.nodes]
    graph = oh.make_graph(b.nodes, "g", [oh.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, len(acc), 1, 16])], [oh.make_tensor_value_info(
            out.name, TensorProto.FLOAT, [1, len(acc), 1, 16])], initializer=b.inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.astype(np.float32)[None, :, None, :]})[0][0, :, 0]
    n = x * s_int if relu_max is None else np.clip(x * s_int, 0, relu_max)
    expected = np.clip(rescale(n, 1, shift), lo, hi)
    assert bounds is None or np.array_equal(expected.max(axis=0), np.minimum(bounds, hi))
    np.testing.assert_array_equal(got, expected.astype(np.float32))
