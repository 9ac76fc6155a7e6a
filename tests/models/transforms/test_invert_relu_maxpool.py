"""invert_relu_maxpool: ReLU -> MaxPool2D becomes MaxPool2D -> ReLU."""
import pytest
import tf_keras as keras

from quantizeml.models.transforms import invert_relu_maxpool

L = keras.layers
TOL = dict(rtol=0, atol=0)  # max and ReLU commute exactly

RELUS = {
    "relu": lambda: L.ReLU(),
    "relu6": lambda: L.ReLU(6.0),
    "leaky": lambda: L.ReLU(negative_slope=0.1),
    "threshold": lambda: L.ReLU(max_value=1.0, threshold=0.2),
}
POOLS = {
    "maxpool": lambda: L.MaxPooling2D(2),
    "maxpool_same": lambda: L.MaxPooling2D(3, strides=2, padding="same"),
    "global_max": lambda: L.GlobalMaxPooling2D(),
}


def _build(kind, relu, pool):
    if kind == "sequential":
        return keras.Sequential([keras.Input((5, 5, 3)), L.Conv2D(4, 1), relu, pool])
    inputs = keras.Input((5, 5, 3))
    return keras.Model(inputs, pool(relu(L.Conv2D(4, 1)(inputs))))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("relu", list(RELUS))
def test_invert(checks, relu, pool, kind):
    model = _build(kind, RELUS[relu](), POOLS[pool]())
    before = checks.snapshot(model)
    new = invert_relu_maxpool(model)
    assert checks.types(new)[2:] == [type(model.layers[-1]), L.ReLU]
    assert new.layers[-1].get_config() == model.layers[-2].get_config()
    checks.equivalent(model, new, **TOL)
    checks.unchanged(model, before, new)


def test_invert_multi_branch(checks):
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(3, 1, name="conv")(inputs)
    a = L.MaxPooling2D(name="pool_a")(L.ReLU(name="relu_a")(x))
    relu_b = L.ReLU(name="relu_b")(x)  # consumed twice: stays
    b = L.MaxPooling2D(name="pool_b")(relu_b)
    c = L.Concatenate(name="concat")([b, a, L.MaxPooling2D(name="pool_c")(relu_b)])
    model = keras.Model(inputs, c)
    new = invert_relu_maxpool(model)
    assert new.get_layer("relu_a").input.node.layer.name == "pool_a"
    assert new.get_layer("pool_b").input.node.layer.name == "relu_b"
    assert [t.node.layer.name for t in new.get_layer("concat").input] == \
        ["pool_b", "relu_a", "pool_c"]
    checks.equivalent(model, new, **TOL)


def test_nothing_to_invert_returns_same_model():
    model = keras.Sequential([keras.Input((4, 4, 2)), L.MaxPooling2D(), L.ReLU()])
    assert invert_relu_maxpool(model) is model
    inputs = keras.Input((4, 4, 2))
    relu = L.ReLU()(inputs)
    model = keras.Model(inputs, [relu, L.MaxPooling2D()(relu)])  # the ReLU is an output
    assert invert_relu_maxpool(model) is model
    model = keras.Sequential([keras.Input((4, 4, 2)), L.ReLU(), L.AveragePooling2D()])
    assert invert_relu_maxpool(model) is model
