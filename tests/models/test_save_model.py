"""save_model: fast SavedModel (no per-layer traces, one serving signature) and h5."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import load_model, quantize, save_model


def _quantized(two_inputs=False):
    keras.utils.set_random_seed(3)
    a = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(a)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    inputs = [a]
    if two_inputs:
        b = keras.Input((144,), name="extra")
        x = keras.layers.Add(name="add")([x, keras.layers.Dense(144, name="proj")(b)])
        inputs.append(b)
    x = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs if two_inputs else a, x)
    rng = np.random.default_rng(0)
    samples = [rng.uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)]
    if two_inputs:
        samples.append(rng.uniform(-1, 1, (32, 144)).astype(np.float32))
    samples = tuple(samples) if two_inputs else samples[0]
    qmodel = quantize(model, samples=tf.data.Dataset.from_tensor_slices(samples).batch(16)
                      if two_inputs else samples)
    return qmodel, samples


@pytest.mark.parametrize("two_inputs", [False, True], ids=["one_input", "two_inputs"])
def test_savedmodel_reloads_and_serves_bit_identically(tmp_path, two_inputs):
    qmodel, samples = _quantized(two_inputs)
    feed = list(samples) if two_inputs else samples
    expected = np.asarray(qmodel(feed))
    path = str(tmp_path / "saved")
    save_model(qmodel, path)
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    # the quantizeml loader rebuilds the layers from their configs
    np.testing.assert_array_equal(np.asarray(load_model(path)(feed)), expected)
    # the serving signature runs without the Keras objects, any batch size
    serve = tf.saved_model.load(path).signatures["serving_default"]
    args = {"image": tf.constant(samples[0][:5] if two_inputs else samples[:5])}
    if two_inputs:
        args["extra"] = tf.constant(samples[1][:5])
    outputs = serve(**args)
    assert list(outputs) == qmodel.output_names
    np.testing.assert_array_equal(outputs[qmodel.output_names[0]].numpy(), expected[:5])


def test_savedmodel_without_serving_signature(tmp_path):
    qmodel, samples = _quantized()
    path = str(tmp_path / "saved")
    save_model(qmodel, path, serving=False)
    assert "serving_default" not in tf.saved_model.load(path).signatures
    np.testing.assert_array_equal(np.asarray(load_model(path)(samples)),
                                  np.asarray(qmodel(samples)))


@pytest.mark.parametrize("name", ["model.h5", "model.hdf5"])
def test_h5_by_extension(tmp_path, name):
    qmodel, samples = _quantized()
    path = str(tmp_path / name)
    save_model(qmodel, path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(load_model(path)(samples)),
                                  np.asarray(qmodel(samples)))


def test_bad_arguments(tmp_path):
    qmodel, _ = _quantized()
    with pytest.raises(ValueError, match="save_format 'h5' or 'tf'.*'onnx'"):
        save_model(qmodel, str(tmp_path / "m"), save_format="onnx")
    with pytest.raises(ValueError, match="signatures.*model.h5"):
        save_model(qmodel, str(tmp_path / "model.h5"), signatures={})
