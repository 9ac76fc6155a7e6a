"""The QDQ form rounds ties up as quantizeml does (``export_qdq(..., ties="half_up")``, the
default): adversarial inputs put the input quantization and the requantization of a fused int8
convolution (and of a float depthwise one) exactly on ``n + 1/2`` output steps, with ``n``
even, where onnxruntime's own half-to-even rounding goes down."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras
from onnx import numpy_helper

from quantizeml.models import QuantizationParams, quantize
from quantizeml.onnx_support import export
from quantizeml.onnx_support import qdq
from quantizeml.onnx_support.qdq import TIES_KEY, export_qdq


def _quantized(layer, shape, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = layer(inputs)
    model = keras.Model(inputs, keras.layers.ReLU()(x))
    samples = np.random.default_rng(seed).uniform(0, 1, (32,) + shape).astype(np.float32)
    return quantize(model, qparams=QuantizationParams(per_tensor_activations=True),
                    samples=samples, batch_size=32)


def _integers(proto):
    """(input step, int weights (C, taps), int bias, output step, per-channel multipliers)
    read from the QDQ graph of one convolution (ties='half_even': unmoved scales)."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    x_dq, w_dq, b_dq = (producers[name] for name in conv.input)
    quant, name = None, conv.output[0]
    while quant is None:  # Conv -> [Relu] -> QuantizeLinear
        node = next(n for n in proto.graph.node if name in n.input)
        quant, name = (node if node.op_type == "QuantizeLinear" else None), node.output[0]
    x_step = float(inits[x_dq.input[1]])
    w = inits[w_dq.input[0]].astype(np.int64)
    w = w.reshape(w.shape[0], -1)
    w_scale = inits[w_dq.input[1]].astype(np.float64)
    y_step = float(inits[quant.input[1]])
    return x_step, w, inits[b_dq.input[0]].astype(np.int64), y_step, \
        x_step * w_scale / y_step


def _solve(w, bias, target, free, rng, taps):
    """Integer inputs in [0, 255] with ``sum(x * w) + bias == target``: random on all taps but
    ``free`` (two searched, the third solved), or None."""
    x = rng.integers(0, 256, taps)
    x[list(free)] = 0
    i, j, k = free
    if w[k] == 0:
        return None
    rest = target - bias - int(np.dot(x, w))
    a, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rem = rest - a * w[i] - b * w[j]
    hits = np.argwhere((rem % w[k] == 0) & (rem // w[k] >= 0) & (rem // w[k] <= 255))
    if len(hits) == 0:
        return None
    a0, b0 = hits[len(hits) // 2]
    x[i], x[j], x[k] = a0, b0, rem[a0, b0] // w[k]
    return x


def _tie_pixels(w, bias, mult, rng):
    """Per output channel, input pixels whose accumulator lands on ``n + 1/2`` output steps,
    ``n`` even (half to even rounds it down, quantizeml up)."""
    pixels = []
    for c in range(w.shape[0]):
        m = mult[c]
        for n in range(0, 250, 2):
            acc = (n + 0.5) / m
            if acc != np.round(acc):
                continue
            free = [int(t) for t in np.argsort(-np.abs(w[c]))[:3]]
            x = _solve(w[c], int(bias[c]), int(acc), free, rng, w.shape[1])
            if x is not None:
                pixels.append(x)
    return pixels


def _run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _fused_ops(proto, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


@pytest.fixture(scope="module")
def conv_qmodel():
    return _quantized(keras.layers.Conv2D(4, 1), (2, 2, 3), 3)


def test_conv_and_input_ties_round_up(conv_qmodel, tmp_path):
    """A fused 1x1 Conv2D + ReLU (QLinearConv): accumulators on ties, and inputs on ties of
    the input quantization."""
    qmodel = conv_qmodel
    x_step, w, bias, _, mult = _integers(export_qdq(qmodel, ties="half_even"))
    w = w.reshape(4, 3)
    rng = np.random.default_rng(0)
    pixels = _tie_pixels(w, bias, mult, rng)
    assert len(pixels) >= 4, len(pixels)
    # input ties: (even + 1/2) input steps, quantizeml rounds them up
    pixels += [2 * rng.integers(0, 120, 3) + 0.5 for _ in range(64)]
    pixels += [rng.integers(0, 256, 3) for _ in range(-len(pixels) % 4)]
    x = (np.array(pixels, np.float64) * x_step).astype(np.float32).reshape(-1, 2, 2, 3)
    expected = qmodel(x).numpy()

    proto = export(qmodel, format="qdq")  # ties='half_up', the default
    onnx.checker.check_model(proto, full_check=True)
    assert "QLinearConv" in _fused_ops(proto, tmp_path)
    np.testing.assert_array_equal(_run(proto, x), expected)
    ties = json.loads(dict((p.key, p.value) for p in proto.metadata_props)[TIES_KEY])
    assert ties["ties"] == "half_up" and ties["ties_up"] >= 1
    # onnxruntime's own rounding (the form before) misses them
    assert np.sum(_run(export_qdq(qmodel, ties="half_even"), x) != expected) >= 4


@pytest.mark.parametrize("depthwise", ["int8", "float"])
def test_depthwise_ties_round_up(depthwise, tmp_path):
    """A 3x3 DepthwiseConv2D + ReLU on accumulator ties: fused (QLinearConv) or as a float
    Conv (depthwise='float', onnxruntime keeps it float)."""
    qmodel = _quantized(keras.layers.DepthwiseConv2D(3), (3, 3, 8), 5)
    x_step, w, bias, _, mult = _integers(export_qdq(qmodel, ties="half_even"))
    rng = np.random.default_rng(1)
    rows = []
    for c in range(8):
        for taps in _tie_pixels(w[c:c + 1], bias[c:c + 1], mult[c:c + 1], rng):
            sample = rng.integers(0, 256, (3, 3, 8))
            sample[..., c] = taps.reshape(3, 3)
            rows.append(sample)
    assert len(rows) >= 4, len(rows)
    x = (np.array(rows, np.float64) * x_step).astype(np.float32)
    expected = qmodel(x).numpy()

    proto = export_qdq(qmodel, depthwise=depthwise)
    onnx.checker.check_model(proto, full_check=True)
    ops = _fused_ops(proto, tmp_path)
    assert ("QLinearConv" in ops) == (depthwise == "int8")
    np.testing.assert_array_equal(_run(proto, x), expected)
    assert np.sum(_run(export_qdq(qmodel, depthwise=depthwise, ties="half_even"), x)
                  != expected) >= 4


def test_bad_options(conv_qmodel):
    with pytest.raises(ValueError, match=r"depthwise in \('int8', 'float'\).*'fp16'"):
        export_qdq(conv_qmodel, depthwise="fp16")
    with pytest.raises(ValueError, match=r"ties in \('half_up', 'half_even'\).*'up'"):
        export_qdq(conv_qmodel, ties="up")


@pytest.mark.parametrize("mode", ["mul", "div"])
def test_tie_mismatches_window_counts_every_accumulator(mode):
    """The enumeration around the ties (``qdq._tie_mismatches``) counts the same mismatches as
    all the accumulators of the output range, in onnxruntime's float32 arithmetic."""
    for s_int, k, high in ((129, 13, 255), (200, 16, 255), (255, 15, 96), (131, 16, 200)):
        acc = np.arange(0, int((high + 1) * 2.0 ** k / s_int) + 2, dtype=np.int64)
        keras_ints = np.minimum((acc * s_int + (1 << (k - 1))) >> k, high)
        for factor in (0, 1, 2):
            if mode == "mul":
                mult = np.float32(s_int * 2.0 ** -k)
                for _ in range(factor):
                    mult = np.nextafter(mult, np.float32(np.inf))
                got = acc.astype(np.float32) * mult
            else:
                scale = np.float32(1.0 - factor * 2.0 ** -24)
                got = (acc * s_int).astype(np.float32) * np.float32(2.0 ** -k) / scale
            full = int(np.sum(np.minimum(np.rint(got), high) != keras_ints))
            assert qdq._tie_mismatches(mode, s_int, k, high, factor) == full, \
                (s_int, k, high, factor)


def test_signed_add_fused_and_exact(tmp_path):
    """A signed Add without ReLU runs fused (QLinearAdd, on the values + 128 through lowered
    input zero points) and equals the Keras one, its many ties included."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Add()([keras.layers.Conv2D(8, 1)(inputs), keras.layers.Conv2D(8, 1)(inputs)])
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 1)(x))
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(2)
    qmodel = quantize(model, qparams=QuantizationParams(per_tensor_activations=True),
                      samples=rng.uniform(-1, 1, (32, 6, 6, 3)).astype(np.float32),
                      batch_size=32)
    x = rng.uniform(-1, 1, (64, 6, 6, 3)).astype(np.float32)
    proto = export(qmodel, format="qdq")
    onnx.checker.check_model(proto, full_check=True)
    ops = _fused_ops(proto, tmp_path)
    assert "QLinearAdd" in ops, ops
    np.testing.assert_array_equal(_run(proto, x), qmodel(x).numpy())
