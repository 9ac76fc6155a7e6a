"""The reference digits CNN and its data."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import sanitize
from quantizeml.models.zoo import digits_cnn, load_digits_data, train_digits_cnn

L = keras.layers


def test_load_digits_data():
    x_train, y_train, x_test, y_test = load_digits_data()
    assert x_train.shape == (1257, 8, 8, 1) and x_test.shape == (540, 8, 8, 1)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.shape == (1257,) and y_test.shape == (540,)
    assert np.issubdtype(y_train.dtype, np.integer)
    assert 0 <= x_train.min() and x_train.max() <= 1 and x_train.max() == 1
    assert set(np.unique(y_test)) == set(range(10))
    again = load_digits_data()
    np.testing.assert_array_equal(again[2], x_test)  # a fixed split


def test_digits_cnn_architecture():
    model = digits_cnn()
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 10)
    assert [type(layer) for layer in model.layers] == [
        L.InputLayer,
        L.Conv2D, L.BatchNormalization, L.ReLU,
        L.Conv2D, L.BatchNormalization, L.ReLU,
        L.DepthwiseConv2D, L.BatchNormalization, L.ReLU,
        L.Conv2D, L.ReLU,
        L.GlobalAveragePooling2D, L.Dense]
    conv_2 = model.get_layer("conv_2")
    assert (conv_2.filters, conv_2.kernel_size, conv_2.strides, conv_2.padding) == \
        (32, (3, 3), (2, 2), "same")
    assert all(layer.momentum == 0.9 for layer in model.layers
               if isinstance(layer, L.BatchNormalization))
    assert model.get_layer("logits").get_config()["activation"] == "linear"


def test_digits_cnn_sanitizes():
    model = digits_cnn()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    new = sanitize(model)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in new.layers)
    x = load_digits_data()[2][:16]
    np.testing.assert_allclose(new(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_train_digits_cnn():
    model, accuracy = train_digits_cnn()
    assert isinstance(accuracy, float)
    assert accuracy >= 0.95  # about 0.976 with the defaults
    x_test, y_test = load_digits_data()[2:]
    logits = model.predict(x_test, verbose=0)
    assert np.mean(np.argmax(logits, -1) == y_test) == pytest.approx(accuracy)


@pytest.mark.slow
def test_train_digits_cnn_is_seeded():
    first, accuracy_1 = train_digits_cnn(epochs=1, seed=3)
    second, accuracy_2 = train_digits_cnn(epochs=1, seed=3)
    assert accuracy_1 == accuracy_2
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
