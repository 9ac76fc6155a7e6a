"""insert_layer: an OutputQuantizer or a Dequantizer inserted after a named layer."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer, OutputQuantizer
from quantizeml.models.transforms import insert_layer

L = keras.layers
TOL = dict(rtol=0, atol=0)  # Dequantizer passes float tensors through


def _build(kind):
    if kind == "sequential":
        return keras.Sequential([keras.Input((6,)), L.Dense(4, name="d1"), L.ReLU(name="r1"),
                                 L.Dense(3, name="d2")])
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    shared = L.Dense(4, name="d1")
    x, y = shared(a), shared(b)
    c = L.Concatenate(name="concat")([L.ReLU(name="r1")(x), y])
    return keras.Model([a, b], [L.Dense(3, name="d2")(c), x])


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("target", ["d1", "r1", "d2"])
def test_insert_dequantizer(checks, kind, target):
    model = _build(kind)
    before = checks.snapshot(model)
    new_layer = Dequantizer(name="deq")
    new = insert_layer(model, target, new_layer)
    assert new.get_layer("deq") is new_layer
    assert [node.inbound_layers.name for node in new_layer.inbound_nodes] == \
        [target] * len(model.get_layer(target).inbound_nodes)
    for consumer in new.layers:
        if consumer is not new_layer:
            for node in consumer.inbound_nodes:
                assert target not in [layer.name for layer in
                                      np.atleast_1d(node.inbound_layers)]
    checks.equivalent(model, new, **TOL)
    checks.unchanged(model, before, new)


def test_insert_after_input_and_keeps_concat_order(checks):
    model = _build("functional")
    new = insert_layer(model, "b", Dequantizer(name="deq"))
    assert new.get_layer("deq").input.node.layer.name == "b"
    assert [t.node.layer.name for t in new.get_layer("concat").input] == ["r1", "d1"]
    checks.equivalent(model, new, **TOL)


def test_insert_output_quantizer(monkeypatch, checks):
    """The type check accepts OutputQuantizer (a float stand-in here: the real one needs
    QTensor inputs)."""
    import quantizeml.layers

    class StandIn(L.Layer):
        def call(self, inputs):
            return inputs

    monkeypatch.setattr(quantizeml.layers, "OutputQuantizer", StandIn)
    model = _build("sequential")
    new = insert_layer(model, "d1", StandIn(name="oq"))
    assert [layer.name for layer in new.layers][1:3] == ["d1", "oq"]
    checks.equivalent(model, new, **TOL)


def test_unknown_target_raises():
    with pytest.raises(ValueError, match="target_layer_name expected .* Received: "
                                         "target_layer_name='nope'"):
        insert_layer(_build("sequential"), "nope", Dequantizer())


@pytest.mark.parametrize("new_layer", [L.ReLU(), "dequantizer", None],
                         ids=["relu", "string", "none"])
def test_wrong_layer_type_raises(new_layer):
    with pytest.raises(ValueError, match="new_layer expected an OutputQuantizer or a "
                                         "Dequantizer"):
        insert_layer(_build("sequential"), "d1", new_layer)


def test_real_output_quantizer_is_accepted():
    assert issubclass(OutputQuantizer, L.Layer)
    model = _build("sequential")
    with pytest.raises(ValueError, match="target_layer_name"):
        insert_layer(model, "missing", OutputQuantizer())
