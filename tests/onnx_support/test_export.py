"""Export of quantized Keras models to ONNX: bit-exact integer outputs in plain onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer
from quantizeml.models import QuantizationParams, quantize
from quantizeml.models.transforms import sanitize
from quantizeml.models.zoo import load_digits_data, train_digits_cnn
from quantizeml.onnx_support import export


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = load_digits_data()
    model, _ = train_digits_cnn(epochs=3)
    return sanitize(model), x_train, x_test, y_test


def _integer_model(qmodel):
    """The quantized model stopped before its final Dequantizer."""
    last = qmodel.layers[-1]
    assert isinstance(last, Dequantizer)
    return keras.Model(qmodel.inputs, last.input)


def _check_export(qmodel, x_test, y_test, tmp_path):
    path = str(tmp_path / "model.onnx")
    proto = export(qmodel, path)
    assert isinstance(proto, onnx.ModelProto)
    onnx.checker.check_model(proto, full_check=True)
    assert onnx.load(path).graph.output[1].name == "integer_outputs"
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    floats, integers = session.run(None, {input_name: x_test})
    # integer outputs before the final dequantization: bit for bit
    keras_int = _integer_model(qmodel)(x_test).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    keras_float = qmodel.predict(x_test, batch_size=256, verbose=0)
    np.testing.assert_array_equal(floats, keras_float)
    onnx_acc = np.mean(np.argmax(floats, -1) == y_test)
    keras_acc = np.mean(np.argmax(keras_float, -1) == y_test)
    assert onnx_acc == keras_acc
    assert keras_acc > 0.5
    return proto


@pytest.mark.slow
def test_export_digits_cnn_bit_exact(digits, tmp_path):
    model, x_train, x_test, y_test = digits
    qmodel = quantize(model, samples=x_train)
    proto = _check_export(qmodel, x_test, y_test, tmp_path)
    # standard operators only: no custom domain needed at run time
    assert {op.domain for op in proto.opset_import} == {""}


@pytest.mark.slow
def test_export_per_tensor_activations_bit_exact(digits, tmp_path):
    model, x_train, x_test, y_test = digits
    qmodel = quantize(model, qparams=QuantizationParams(per_tensor_activations=True),
                      samples=x_train)
    _check_export(qmodel, x_test, y_test, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("qparams", [None, QuantizationParams(weight_bits=4, activation_bits=4)])
def test_export_mixed_model_bit_exact(qparams):
    """Signed inputs, ReLU(6), Add, MaxPool 'same', depthwise (multiplier 2, strides 2),
    Flatten and Dense: integer and float outputs equal the Keras ones."""
    inputs = keras.Input((6, 6, 3), name="inp")
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU(6.0, name="r1")(x)
    y = keras.layers.Conv2D(4, 1, name="c2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.MaxPooling2D(2, padding="same", name="mp")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same",
                                     name="dw")(x)
    x = keras.layers.Flatten(name="fl")(x)
    x = keras.layers.Dense(5, name="d")(x)
    model = keras.Model(inputs, x)
    samples = np.random.default_rng(0).normal(size=(32, 6, 6, 3)).astype(np.float32)
    qmodel = quantize(model, qparams=qparams, samples=samples)
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {"inp": samples})
    keras_int = _integer_model(qmodel)(samples).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(samples).numpy())


def test_export_unsupported_layers_listed():
    inputs = keras.Input((4, 4, 1), name="input")
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)  # (a float Conv2D exports)
    x = keras.layers.UpSampling2D(interpolation="bilinear", name="up")(x)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="lam")(x)  # (a float Softmax exports)
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError, match=r"lam \(Lambda\)") as info:
        export(model)
    assert "up (UpSampling2D)" in str(info.value)
    assert "conv (Conv2D)" not in str(info.value)


def test_export_rejects_non_functional():
    with pytest.raises(ValueError, match="functional"):
        export(keras.Sequential())
