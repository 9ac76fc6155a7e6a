"""flatten_model (and the flat graph every transform walks): nested models are expanded."""
import pytest
import tf_keras as keras

from quantizeml.models.transforms import flatten_model
from quantizeml.models.graph import Graph

L = keras.layers
TOL = dict(rtol=1e-6, atol=1e-6)


def _has_nested(model):
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def _sequential_in_sequential():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(5, name="inner_dense"), L.ReLU()],
                             name="inner")
    return keras.Sequential([keras.Input((4,)), inner, L.Dense(2, name="head")])


def _functional_in_functional():
    a, b = keras.Input((4,), name="in_a"), keras.Input((4,), name="in_b")
    x = L.Dense(3, name="dense")(a)  # same name as a layer of the outer model
    inner = keras.Model([a, b], [L.Concatenate(name="cat")([b, x]), x], name="inner")
    u, v = keras.Input((4,), name="u"), keras.Input((4,), name="v")
    p, q = inner([v, u])  # inputs swapped
    out = L.Dense(2, name="dense")(p)
    return keras.Model([u, v], [out, q])


def _shared_submodel():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="shared_dense")],
                             name="inner")
    inputs = keras.Input((4,))
    return keras.Model(inputs, L.Add()([inner(inputs), inner(inner(inputs))]))


def _two_levels():
    deepest = keras.Sequential([keras.Input((3, 3, 2)), L.Conv2D(2, 1, name="deep_conv")],
                               name="deepest")
    inputs = keras.Input((3, 3, 2))
    middle = keras.Model(inputs, L.ReLU()(deepest(inputs)), name="middle")
    outer_inputs = keras.Input((3, 3, 2))
    return keras.Model(outer_inputs, L.Flatten()(middle(outer_inputs)))


MODELS = {
    "sequential_in_sequential": _sequential_in_sequential,
    "functional_in_functional": _functional_in_functional,
    "shared_submodel": _shared_submodel,
    "two_levels": _two_levels,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_flatten(checks, name):
    model = MODELS[name]()
    before = checks.snapshot(model)
    flat = flatten_model(model)
    assert not _has_nested(flat)
    assert len(flat.weights) == len(model.weights)  # shared layers stay shared
    checks.equivalent(model, flat, **TOL)
    checks.unchanged(model, before, flat)


def test_flatten_renames_and_keeps_order():
    flat = flatten_model(_functional_in_functional())
    names = [layer.name for layer in flat.layers]
    assert len(set(names)) == len(names)
    assert flat.get_layer("dense").units == 2  # the outer layer keeps its name
    assert flat.get_layer("dense_1").units == 3
    # the inner Concatenate reads (in_b, dense) = (u, dense(v))
    first, second = [t.node.layer.name for t in flat.get_layer("cat").input]
    assert first == "u" and flat.get_layer(second).input.node.layer.name == "v"


def test_shared_layers_are_walked_in_order():
    inputs = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    x = shared(L.ReLU(name="relu")(shared(inputs)))
    model = keras.Model(inputs, x)
    graph = Graph(model)
    assert [node.layer.name for node in graph.nodes] == ["shared", "relu", "shared"]
    assert len(graph.calls(shared)) == 2


def test_not_nested_returns_same_model():
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    assert flatten_model(model) is model


def test_subclassed_raises():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="subclassed"):
        flatten_model(Sub())
    inputs = keras.Input((4,))
    sub = Sub()
    model = keras.Model(inputs, sub(inputs))
    with pytest.raises(ValueError, match="subclassed"):
        flatten_model(model)
