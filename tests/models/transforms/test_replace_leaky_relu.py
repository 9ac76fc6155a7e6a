import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers.table import QuantizedTableReLU, TableReLU
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


def test_plain_relu_untouched():
    model = _model()
    assert replace_leaky_relu(model) is model


@pytest.mark.parametrize("relu", [{"negative_slope": 0.2, "threshold": 0.5},
                                  {"negative_slope": 0.2, "max_value": 6.0},
                                  {"threshold": 0.5}],
                         ids=["slope-threshold", "slope-max_value", "threshold"])
def test_other_relus_become_table_relus(relu):
    """A ReLU with a threshold, or a slope and a maximum: TableReLU (keras' ReLU under
    another name, same outputs), which quantize() turns into an exact table."""
    model = _model(**relu)
    new = replace_leaky_relu(model)
    assert type(new.get_layer("relu")) is TableReLU
    assert type(model.get_layer("relu")) is L.ReLU  # the input model is not modified
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(model(x), new(x))
    qmodel = quantize(model, num_samples=8)
    assert isinstance(qmodel.get_layer("relu"), QuantizedTableReLU)
