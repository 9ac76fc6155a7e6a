"""ONNX export of QuantizedMultiply, QuantizedSubtract, QuantizedMaximum and QuantizedMinimum:
the integer and float outputs of onnxruntime equal the Keras ones bit for bit."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer, QuantizedMultiply
from quantizeml.models import QuantizationParams, quantize
from quantizeml.onnx_support import export
from quantizeml.tensors import QFloat

L = keras.layers
MERGES = {"multiply": L.Multiply, "subtract": L.Subtract, "maximum": L.Maximum,
          "minimum": L.Minimum}


def _samples(n=32, shape=(8, 8, 3)):
    return np.random.default_rng(0).uniform(-1, 1, (n, *shape)).astype(np.float32)


def _squeeze_excite(merge, head):
    """Conv2D -> GAP(keepdims) -> Conv2D 1x1 (ReLU) -> Conv2D 1x1, merged with the Conv2D
    output (broadcast (N, 1, 1, C)), then optionally a 1x1 Conv2D."""
    inputs = keras.Input((8, 8, 3), name="inp")
    x = L.Conv2D(8, 3, padding="same", bias_initializer="random_normal", name="conv")(inputs)
    s = L.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    s = L.Conv2D(4, 1, activation="relu", bias_initializer="random_normal", name="sq")(s)
    s = L.Conv2D(8, 1, bias_initializer="random_normal", name="ex")(s)
    y = MERGES[merge](name="merge")([x, s])
    if head:
        y = L.Conv2D(4, 1, name="head")(y)
    return keras.Model(inputs, y)


def _two_branches(merge):
    """Two Conv2D branches of the same shape and different ranges (so different frac bits)
    merged, then ReLU and a Dense head."""
    inputs = keras.Input((6, 6, 3), name="inp")
    a = L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs)
    b = L.Conv2D(4, 3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0),
                 bias_initializer="random_normal", name="b")(inputs)
    y = MERGES[merge](name="merge")([a, b])
    y = L.ReLU(name="relu")(y)
    return keras.Model(inputs, L.Dense(3, name="d")(L.Flatten(name="fl")(y)))


def _qfloat_operand(merge):
    """Conv2D merged with its own global average (a QFloat: scales 1 / (H * W), no output
    quantizer through q_config), then a 1x1 Conv2D."""
    inputs = keras.Input((8, 8, 3), name="inp")
    x = L.Conv2D(4, 3, padding="same", bias_initializer="random_normal", name="conv")(inputs)
    s = L.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    y = MERGES[merge](name="merge")([x, s])
    return keras.Model(inputs, L.Conv2D(2, 1, name="head")(y))


def _two_qfloats(merge):
    """The global averages (QFloats, no output quantizers through q_config) of two Conv2D
    branches merged, then a 1x1 Conv2D."""
    inputs = keras.Input((8, 8, 3), name="inp")
    a = L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs)
    b = L.Conv2D(4, 3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0),
                 bias_initializer="random_normal", name="b")(inputs)
    a = L.GlobalAveragePooling2D(keepdims=True, name="gap")(a)
    b = L.GlobalAveragePooling2D(keepdims=True, name="gap_b")(b)
    y = MERGES[merge](name="merge")([a, b])
    return keras.Model(inputs, L.Conv2D(2, 1, name="head")(y))


def check_export_bit_exact(qmodel, samples):
    """Exports, runs onnxruntime: integer outputs (before the final Dequantizer) and float
    outputs equal the Keras quantized model's, bit for bit."""
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {session.get_inputs()[0].name: samples})
    last = qmodel.layers[-1]
    assert isinstance(last, Dequantizer)
    keras_int = keras.Model(qmodel.inputs, last.input)(samples).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(samples).numpy())
    return proto


QPARAMS = {"default": None, "per-tensor": QuantizationParams(per_tensor_activations=True),
           "4-bit": QuantizationParams(weight_bits=4, activation_bits=4, output_bits=4)}


@pytest.mark.slow
@pytest.mark.parametrize("qparams", list(QPARAMS))
@pytest.mark.parametrize("merge", list(MERGES))
@pytest.mark.parametrize("head", [True, False], ids=["head", "merge-output"])
def test_export_squeeze_excite(merge, head, qparams):
    x = _samples()
    qmodel = quantize(_squeeze_excite(merge, head), qparams=QPARAMS[qparams], samples=x)
    assert (qmodel.get_layer("merge").out_quantizer is not None) == head
    proto = check_export_bit_exact(qmodel, x)
    op = {"multiply": "Mul", "subtract": "Sub", "maximum": "Max", "minimum": "Min"}[merge]
    assert any(n.op_type == op and n.output[0].startswith(op.lower()) for n in proto.graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("merge", list(MERGES))
def test_export_two_branches(merge):
    x = _samples(shape=(6, 6, 3))
    check_export_bit_exact(quantize(_two_branches(merge), samples=x), x)


@pytest.mark.slow
@pytest.mark.parametrize("merge", list(MERGES))
def test_export_qfloat_operand(merge):
    x = _samples()
    qmodel = quantize(_qfloat_operand(merge), samples=x,
                      q_config={"gap": {"buffer_bitwidth": 32}})
    gap = qmodel.get_layer("gap")
    assert gap.out_quantizer is None
    assert isinstance(keras.Model(qmodel.inputs, gap.output)(x), QFloat)
    if merge == "multiply":
        assert isinstance(qmodel.get_layer("merge"), QuantizedMultiply)
    check_export_bit_exact(qmodel, x)


@pytest.mark.slow
@pytest.mark.parametrize("merge", list(MERGES))
def test_export_two_qfloats(merge):
    x = _samples()
    no_oq = {"buffer_bitwidth": 32}
    qmodel = quantize(_two_qfloats(merge), samples=x, q_config={"gap": no_oq, "gap_b": no_oq})
    se = qmodel.get_layer("merge")
    inputs = keras.Model(qmodel.inputs, se.input)(x)
    assert all(isinstance(t, QFloat) for t in inputs)
    check_export_bit_exact(qmodel, x)
