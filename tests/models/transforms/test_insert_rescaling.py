"""insert_rescaling: a Rescaling after each model input."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import insert_rescaling

L = keras.layers
TOL = dict(rtol=1e-6, atol=1e-6)


def _build(kind):
    if kind == "sequential":
        return keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(3, 1), L.ReLU()])
    inputs = keras.Input((4, 4, 2))
    shared = L.Conv2D(2, 1, name="shared")
    return keras.Model(inputs, L.Add()([shared(inputs), shared(shared(inputs))]))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_insert(checks, kind):
    model = _build(kind)
    before = checks.snapshot(model)
    new = insert_rescaling(model, scale=0.5, offset=-1.0)
    assert type(new.layers[1]) is L.Rescaling
    assert (new.layers[1].scale, new.layers[1].offset) == (0.5, -1.0)
    x = checks.inputs(model)
    expected = checks.outputs(model, [v * 0.5 - 1.0 for v in x])
    np.testing.assert_allclose(checks.outputs(new, x)[0], expected[0], **TOL)
    checks.unchanged(model, before, new)


def test_insert_multi_input(checks):
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], L.Concatenate()([b, L.Dense(2, name="rescaling")(a)]))
    new = insert_rescaling(model, 2.0, 1.0)
    assert sorted(layer.name for layer in new.layers if type(layer) is L.Rescaling) == \
        ["rescaling_1", "rescaling_2"]
    assert type(new.get_layer("rescaling")) is L.Dense
    x = checks.inputs(model)
    np.testing.assert_allclose(checks.outputs(new, x)[0],
                               checks.outputs(model, [v * 2 + 1 for v in x])[0], **TOL)


def test_no_input_raises():
    model = keras.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="expected a model with an Input layer"):
        insert_rescaling(model, 1.0, 0.0)
