import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models import quantize
from quantizeml.models.transforms import replace_leaky_relu

L = keras.layers


def _model(**relu):
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.ReLU(name="relu", **relu)(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, name="dense")(x))


def test_sloped_relu_becomes_leaky_relu():
    model = _model(negative_slope=0.2)
    new = replace_leaky_relu(model)
    layer = new.get_layer("relu")
    assert type(layer) is L.LeakyReLU and abs(layer.alpha - 0.2) < 1e-7
    assert type(model.get_layer("relu")) is L.ReLU  # the input model is not modified
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(model(x), new(x))


@pytest.mark.parametrize("relu", [{}, {"negative_slope": 0.2, "threshold": 0.5},
                                  {"negative_slope": 0.2, "max_value": 6.0}],
                         ids=["plain", "threshold", "max_value"])
def test_other_relus_untouched(relu):
    model = _model(**relu)
    assert replace_leaky_relu(model) is model


def test_relu_with_threshold_reported_up_front():
    model = _model(threshold=0.5)
    with pytest.raises(ValueError, match=r"relu \(ReLU: QuantizedReLU supports .*threshold"):
        quantize(model, num_samples=8)
