"""ONNX export of QuantizedZeroPadding2D, QuantizedCropping2D and QuantizedUpSampling2D:
int64 Pad / Slice / Unsqueeze+Expand+Reshape, bit-exact in plain onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import (Dequantizer, InputQuantizer, QuantizedCropping2D,
                               QuantizedGlobalAveragePooling2D, QuantizedUpSampling2D,
                               QuantizedZeroPadding2D)
from quantizeml.models import QuantizationParams, quantize
from quantizeml.onnx_support import export
from quantizeml.tensors import QFloat

L = keras.layers


def _run(qmodel, x):
    """Exports, checks and runs the model: (float outputs, integer outputs, op types)."""
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    assert {op.domain for op in proto.opset_import} == {""}
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {session.get_inputs()[0].name: x})
    return floats, integers, {node.op_type for node in proto.graph.node}


def _check_bit_exact(qmodel, x):
    floats, integers, ops = _run(qmodel, x)
    last = qmodel.layers[-1]
    assert isinstance(last, Dequantizer)
    keras_int = keras.Model(qmodel.inputs, last.input)(x).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(x).numpy())
    return ops


def _spatial_model():
    inputs = keras.Input((7, 6, 3), name="inp")
    y = L.Conv2D(6, 3, padding="same", bias_initializer="random_normal", name="c1")(inputs)
    y = L.ZeroPadding2D(((1, 2), (0, 1)), name="pad")(y)
    y = L.Conv2D(6, 3, bias_initializer="random_normal", name="c2")(y)
    y = L.ReLU(name="relu")(y)
    y = L.UpSampling2D((2, 3), name="up")(y)
    y = L.Cropping2D(((1, 0), (2, 1)), name="crop")(y)
    y = L.Conv2D(4, 3, name="c3")(y)
    y = L.ZeroPadding2D(1, name="pad_end")(y)
    return keras.Model(inputs, y)


@pytest.mark.slow
@pytest.mark.parametrize("qparams", [
    None, QuantizationParams(per_tensor_activations=True),
    QuantizationParams(weight_bits=4, activation_bits=4)], ids=["default", "per-tensor", "4bit"])
def test_export_spatial_model_bit_exact(qparams):
    model = _spatial_model()
    x = np.random.default_rng(0).normal(size=(16, 7, 6, 3)).astype(np.float32)
    qmodel = quantize(model, qparams=qparams, samples=x, num_samples=16, batch_size=16)
    ops = _check_bit_exact(qmodel, x)
    assert {"Pad", "Slice", "Expand"} <= ops and "Resize" not in ops


def test_export_spatial_layers_bit_exact():
    """Hand-built chains: a signed FixedPoint, and a QFloat (the scales of a global average
    pooling kept with keepdims) through the three layers (per-axis inputs: the quantized model
    test, default qparams)."""
    inputs = keras.Input((5, 4, 3), name="inp")
    iq = InputQuantizer(bitwidth=8, signed=True)
    q = iq(inputs)
    y = QuantizedZeroPadding2D(((2, 0), (1, 3)))(q)
    y = QuantizedUpSampling2D((3, 2))(y)
    y = QuantizedCropping2D(((0, 2), (3, 1)))(y)
    g = QuantizedGlobalAveragePooling2D(keepdims=True)(q)
    g = QuantizedUpSampling2D((2, 3))(g)
    g = QuantizedZeroPadding2D(((1, 0), (0, 2)))(g)
    g = QuantizedCropping2D(((0, 1), (1, 0)))(g)
    iq.range_max.assign(2.0)
    x = np.random.default_rng(1).normal(size=(4, 5, 4, 3)).astype(np.float32)
    _check_bit_exact(keras.Model(inputs, Dequantizer()(y)), x)
    assert isinstance(keras.Model(inputs, g)(x), QFloat)
    _check_bit_exact(keras.Model(inputs, Dequantizer()(g)), x)


def test_export_spatial_with_output_quantizer():
    inputs = keras.Input((4, 4, 2), name="inp")
    q = InputQuantizer(bitwidth=8)(inputs)
    layer = QuantizedUpSampling2D(2, quant_config={"output_quantizer": {"bitwidth": 4}})
    y = layer(q)
    layer.out_quantizer.range_max.assign(1.0)
    model = keras.Model(inputs, Dequantizer()(y))
    model.layers[1].range_max.assign(3.0)
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 2)).astype(np.float32)
    _check_bit_exact(model, x)


def test_export_slicing_bit_exact():
    """``x[..., a:b]`` and ``x[:, a:b:s, -c:]`` become QuantizedSlicing layers (a channel
    slice takes per-tensor inputs, a spatial one keeps per-axis ones) and export as ``Slice``:
    integers and floats equal to Keras, and close to the float model (RMS error under 5 %)."""
    inputs = keras.Input((8, 8, 3), name="inp")
    y = L.Conv2D(8, 3, padding="same", bias_initializer="random_normal", name="c1")(inputs)
    a = L.Conv2D(4, 1, name="ca")(y[..., 2:6])
    b = L.Conv2D(4, 1, name="cb")(y[:, 1:7:2, -5:, :])
    b = L.UpSampling2D((2, 1), name="up")(b)
    model = keras.Model(inputs, L.Add(name="add")([a[:, :6, 3:], b]))
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=16, batch_size=16)
    slices = [layer for layer in qmodel.layers if type(layer).__name__ == "QuantizedSlicing"]
    assert len(slices) == 3
    assert "Slice" in _check_bit_exact(qmodel, x)
    y_float = model(x).numpy()
    rms = np.sqrt(np.mean((qmodel(x).numpy() - y_float) ** 2) / np.mean(y_float ** 2))
    assert rms < 0.05, rms


def test_export_split_and_clip_bit_exact():
    """A GhostNet-like block: ``tf.split`` of the channels (two Slicings), a depthwise
    convolution on one half, Concatenate, ``tf.clip_by_value(x, 0, 6)`` (a ReLU6): every
    layer integer, exported bit-exact."""
    inputs = keras.Input((8, 8, 3), name="inp")
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    a, b = tf.split(y, 2, axis=-1)
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(b)
    y = tf.clip_by_value(L.Concatenate(name="cat")([a, b]), 0.0, 6.0)
    model = keras.Model(inputs, L.Conv2D(4, 1, name="head")(y))
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=16, batch_size=16)
    names = [type(layer).__name__ for layer in qmodel.layers]
    assert names.count("QuantizedSlicing") == 2 and names.count("QuantizedReLU") == 2, names
    assert all(n.startswith(("Quantized", "InputLayer", "InputQuantizer", "Dequantizer"))
               for n in names), names
    _check_bit_exact(qmodel, x)
