"""The deployable int8 form of the export (``export(qmodel, format="qdq")``): a QDQ model that
onnxruntime fuses into int8 kernels, within one output step of the Keras quantized model."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer
from quantizeml.models import QuantizationParams, quantize
from quantizeml.models.transforms import sanitize
from quantizeml.onnx_support import export
from quantizeml.onnx_support.qdq import FALLBACKS_KEY


def _model(leaky=False):
    """Conv+BN+ReLU, depthwise+ReLU6, a 1x1 conv added back, ZeroPadding, MaxPool, Flatten,
    Dense, ReLU: every layer quantized, an 8-bit quantized output."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((10, 10, 3), name="inp")
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0, name="r2")(x)
    y = keras.layers.Conv2D(8, 1, name="c2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.LeakyReLU(0.1, name="leaky")(x) if leaky else \
        keras.layers.ReLU(name="r3")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.MaxPooling2D(2, name="mp")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(12, name="d1")(x)
    x = keras.layers.ReLU(name="out")(x)
    return sanitize(keras.Model(inputs, x))


def _samples(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 10, 10, 3)).astype(np.float32)


def _quantize(model, per_tensor=True):
    qparams = QuantizationParams(per_tensor_activations=per_tensor)
    return quantize(model, qparams=qparams, samples=_samples(64, 0), batch_size=32)


def _steps(qmodel, proto, x):
    """|ONNX - Keras| in output quantization steps (the grid of the Keras integer output)."""
    deq = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    qt = keras.Model(qmodel.inputs, deq.input)(x)
    step = np.power(2.0, -qt.frac_bits.numpy())
    expected = qmodel(x).numpy().astype(np.float64)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == expected.shape
    return np.abs(got.astype(np.float64) - expected) / step


@pytest.fixture(scope="module")
def qmodel():
    return _quantize(_model())


def test_qdq_fuses_into_int8_kernels_within_one_step(qmodel, tmp_path):
    path = str(tmp_path / "qdq.onnx")
    proto = export(qmodel, path, format="qdq")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "Add"} <= ops
    assert not any(n.op_type in ("ConvInteger", "MatMulInteger", "Mod") for n in proto.graph.node)
    assert dict((p.key, p.value) for p in proto.metadata_props)[FALLBACKS_KEY] == ""
    # every Conv, the Add and the Dense run as int8 kernels in onnxruntime's default session
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == 3 and "QLinearAdd" in fused and "QGemm" in fused
    assert "Conv" not in fused and "FusedConv" not in fused
    # the oracle: the Keras quantized model, on held-out samples
    steps = _steps(qmodel, proto, _samples(128, 1))
    assert np.mean(steps <= 1 + 1e-6) >= 0.999, np.max(steps)
    assert np.mean(steps == 0) > 0.9


def test_qdq_per_axis_activations_and_fallback():
    """Per-axis activations (the default) stay QDQ (float where onnxruntime cannot fuse them);
    a table activation falls back to the exact emitter, listed in the metadata."""
    qmodel = _quantize(_model(leaky=True), per_tensor=False)
    proto = export(qmodel, format="qdq")
    onnx.checker.check_model(proto, full_check=True)
    fallbacks = dict((p.key, p.value) for p in proto.metadata_props)[FALLBACKS_KEY]
    assert fallbacks.split(",") == ["leaky"]
    steps = _steps(qmodel, proto, _samples(64, 2))
    assert np.mean(steps <= 1 + 1e-6) >= 0.999, np.max(steps)


def test_bad_format(qmodel):
    with pytest.raises(ValueError, match=r"format in \('exact', 'qdq'\).*format='int8'"):
        export(qmodel, format="int8")
