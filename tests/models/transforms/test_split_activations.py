"""split_activations: fused activations become layers of their own, outputs unchanged."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import split_activations


@pytest.mark.parametrize("activation,expected", [
    ("relu", keras.layers.ReLU), ("relu6", keras.layers.ReLU),
    ("softmax", keras.layers.Activation), ("tanh", keras.layers.Activation)],
    ids=["relu", "relu6", "softmax", "tanh"])
@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_split_keeps_outputs(activation, expected, sequential):
    layers = [keras.layers.Conv2D(4, 3, activation=activation, name="conv"),
              keras.layers.Flatten(), keras.layers.Dense(3, activation=activation, name="fc")]
    if sequential:
        model = keras.Sequential([keras.Input((6, 6, 2))] + layers)
    else:
        inp = keras.Input((6, 6, 2))
        x = inp
        for layer in layers:
            x = layer(x)
        model = keras.Model(inp, x)
    before = [w.copy() for w in model.get_weights()]
    new = split_activations(model)
    assert new is not model
    assert new.get_layer("conv").get_config()["activation"] == "linear"
    assert type(new.get_layer("conv_activation")) is expected
    assert type(new.get_layer("fc_activation")) is expected
    x = np.random.uniform(-2, 2, (5, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_nothing_to_split_returns_same_model():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    assert split_activations(model) is model
