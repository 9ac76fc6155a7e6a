"""remove_identities: the layers that are the identity at inference are removed."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import remove_identities
from quantizeml.models.transforms.remove_identities import IDENTITY_LAYERS

L = keras.layers

IDENTITIES = {
    "gaussian_noise": lambda: L.GaussianNoise(0.3),
    "gaussian_dropout": lambda: L.GaussianDropout(0.3),
    "alpha_dropout": lambda: L.AlphaDropout(0.3),
    "spatial_dropout2d": lambda: L.SpatialDropout2D(0.3),
    "activity_regularization": lambda: L.ActivityRegularization(0.1, 0.1),
}
if hasattr(L, "Identity"):
    IDENTITIES["identity"] = lambda: L.Identity()


@pytest.mark.parametrize("name", list(IDENTITIES))
def test_removed_outputs_equal(checks, name):
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = IDENTITIES[name]()(x)
    model = keras.Model(inputs, L.ReLU(name="relu")(x))
    before = checks.snapshot(model)
    new = remove_identities(model)
    assert not any(isinstance(layer, IDENTITY_LAYERS) for layer in new.layers)
    assert [layer.name for layer in new.layers[1:]] == ["conv", "relu"]
    x = checks.inputs(model)
    np.testing.assert_array_equal(checks.outputs(new, x)[0], checks.outputs(model, x)[0])
    checks.unchanged(model, before, new)


def test_spatial_dropout_1d_and_3d_and_sequential(checks):
    model = keras.Sequential([keras.Input((8, 3)), L.Conv1D(4, 3), L.SpatialDropout1D(0.5),
                              L.GaussianNoise(1.0), L.Dense(2)])
    new = remove_identities(model)
    assert [type(layer) for layer in new.layers[1:]] == [L.Conv1D, L.Dense]
    checks.equivalent(model, new, rtol=0, atol=0)
    inputs = keras.Input((4, 4, 4, 2))
    volume = keras.Model(inputs, L.SpatialDropout3D(0.5)(L.Conv3D(2, 3)(inputs)))
    assert checks.count(remove_identities(volume), L.SpatialDropout3D) == 0


def test_dropout_stays_and_nothing_to_remove_returns_same_model():
    inputs = keras.Input((5,))
    model = keras.Model(inputs, L.Dense(2)(L.Dropout(0.5)(inputs)))
    assert remove_identities(model) is model
