import numpy as np
import pytest
import tf_keras as keras
from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer

from quantizeml.models import quantize
from quantizeml.models.transforms import fold_custom_scale

L = keras.layers


def _model(activation=None, extra_consumer=False):
    inputs = keras.Input((6, 6, 4))
    x = L.Conv2D(4, 3, padding="same", name="trunk")(inputs)
    up = L.Conv2D(4, 1, activation=activation, name="up")(x)
    y = CustomScaleLayer(0.17, name="scaled")([x, up])
    if extra_consumer:
        y = L.Add(name="other")([y, up])
    y = L.ReLU(name="relu")(y)
    return keras.Model(inputs, L.Dense(3, name="dense")(L.Flatten()(y)))


def _x():
    return np.random.default_rng(0).normal(size=(8, 6, 6, 4)).astype(np.float32)


def test_scale_folded_into_the_producer():
    keras.utils.set_random_seed(0)
    model = _model()
    new = fold_custom_scale(model)
    assert type(new.get_layer("scaled")) is L.Add
    assert type(model.get_layer("scaled")) is CustomScaleLayer  # input model not modified
    np.testing.assert_allclose(new(_x()), model(_x()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.get_layer("up").get_weights()[0],
                               model.get_layer("up").get_weights()[0] * 0.17, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{"activation": "relu"}, {"extra_consumer": True}],
                         ids=["activation", "shared-producer"])
def test_not_foldable_left_alone(kwargs):
    model = _model(**kwargs)
    assert fold_custom_scale(model) is model


def test_quantize_inception_resnet_style_block():
    keras.utils.set_random_seed(0)
    model = _model()
    qmodel = quantize(model, samples=_x(), batch_size=8)
    assert type(qmodel.get_layer("scaled")).__name__ == "QuantizedAdd"
    y, yq = np.asarray(model(_x())), np.asarray(qmodel(_x()))
    assert np.max(np.abs(y - yq)) < 0.05 * np.max(np.abs(y))
