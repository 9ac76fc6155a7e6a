"""replace_aliases: ELU, Average, ThresholdedReLU(0) and TimeDistributed(Dense) become the
supported layers that compute the same."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers.skip import Add
from quantizeml.models.transforms import replace_aliases

L = keras.layers


def test_elu_average_thresholded(checks):
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, name="a")(inputs)
    b = L.Conv2D(4, 3, name="b")(inputs)
    x = L.Average(name="avg")([L.ELU(name="elu")(a), b])
    x = L.ThresholdedReLU(0.0, name="thr")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x))
    before = checks.snapshot(model)
    new = replace_aliases(model)
    assert type(new.get_layer("elu")) is L.Activation
    assert new.get_layer("elu").get_config()["activation"] == "elu"
    assert type(new.get_layer("avg")) is Add and new.get_layer("avg").average
    assert type(new.get_layer("thr")) is L.ReLU
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)
    checks.unchanged(model, before, new)


def test_time_distributed_dense(checks):
    inputs = keras.Input((5, 6))
    x = L.TimeDistributed(L.Dense(4, bias_initializer="random_normal"), name="td")(inputs)
    x = L.TimeDistributed(L.ReLU(), name="td_relu")(x)
    model = keras.Model(inputs, L.Dense(2)(x))
    new = replace_aliases(model)
    assert type(new.get_layer("td")) is L.Dense and type(new.get_layer("td_relu")) is L.ReLU
    np.testing.assert_array_equal(new.get_layer("td").get_weights()[0],
                                  model.get_layer("td").get_weights()[0])
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)


def test_other_configurations_stay():
    inputs = keras.Input((4, 4, 3))
    a, b, c = (L.Conv2D(2, 1)(inputs) for _ in range(3))
    x = L.Average()([a, b, c])                  # three inputs
    x = L.ELU(alpha=0.5)(x)                     # another alpha
    x = L.ThresholdedReLU(1.0)(x)               # a threshold
    x = L.TimeDistributed(L.Conv1D(2, 1))(x)    # not per-step alike
    model = keras.Model(inputs, x)
    assert replace_aliases(model) is model


def test_merges_of_three_or_more_inputs_become_chains(checks):
    """Keras merges n inputs one after the other: the binary chain is bit-identical."""
    inputs = keras.Input((6, 6, 3))
    a, b, c = (L.Conv2D(4, 3, name=n)(inputs) for n in "abc")
    added = L.Add(name="add3")([a, b, c])
    product = L.Multiply(name="mul4")([a, b, c, added])
    x = L.Maximum(name="max3")([a, product, c])
    x = L.Minimum(name="min2")([x, b])
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x))
    before = checks.snapshot(model)
    new = replace_aliases(model)
    for name, kind, parts in (("add3", L.Add, 2), ("mul4", L.Multiply, 3),
                              ("max3", L.Maximum, 2)):
        chain = [layer for layer in new.layers
                 if layer.name == name or layer.name.startswith(name + "_")]
        assert len(chain) == parts and all(type(layer) is kind for layer in chain)
        assert all(len(layer.input) == 2 for layer in chain)
    assert new.get_layer("min2") is not None and len(new.get_layer("min2").input) == 2
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x).numpy(), new(x).numpy())
    checks.unchanged(model, before, new)


def test_resizing_to_a_multiple_becomes_upsampling(checks):
    inputs = keras.Input((5, 6, 3))
    x = L.Conv2D(4, 1, name="a")(inputs)
    up = L.Resizing(10, 24, interpolation="bilinear", name="bil")(x)
    near = L.Resizing(15, 6, interpolation="nearest", name="near")(x)
    kept = L.Resizing(7, 6, interpolation="bilinear", name="kept")(x)  # not a multiple
    model = keras.Model(inputs, [up, near, kept])
    new = replace_aliases(model)
    assert type(new.get_layer("bil")) is L.UpSampling2D
    assert new.get_layer("bil").size == (2, 4) and new.get_layer("bil").interpolation == \
        "bilinear"
    assert new.get_layer("near").size == (3, 1)
    assert type(new.get_layer("kept")) is L.Resizing
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)
    for a, b in zip(model(x), new(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("use_scale,with_key", [(False, False), (True, True)],
                         ids=["plain", "scaled-with-key"])
def test_dot_attention_becomes_dot_softmax_dot(checks, use_scale, with_key):
    inputs = keras.Input((6, 4))
    q = L.Dense(8, name="q")(inputs)
    v = L.Dense(8, name="v")(inputs)
    args = [q, v, L.Dense(8, name="k")(inputs)] if with_key else [q, v]
    attention = L.Attention(use_scale=use_scale, name="att")
    model = keras.Model(inputs, L.Dense(2, name="head")(attention(args)))
    if use_scale:
        attention.scale.assign(0.7)
    before = checks.snapshot(model)
    new = replace_aliases(model)
    assert [type(new.get_layer(n)) for n in ("att/scores", "att/softmax", "att")] == \
        [L.Dot, L.Softmax, L.Dot]
    assert ("att/scale" in [layer.name for layer in new.layers]) == use_scale
    checks.equivalent(model, new, rtol=1e-5, atol=1e-5)
    checks.unchanged(model, before, new)


def test_masked_and_other_attentions_stay():
    inputs = keras.Input((6, 4))
    q = L.Dense(8)(inputs)
    y = L.Attention(name="causal")([q, q], use_causal_mask=True)
    z = L.Attention(score_mode="concat", name="concat")([q, q])
    w = L.AdditiveAttention(name="additive")([q, q])
    model = keras.Model(inputs, [y, z, w])
    assert replace_aliases(model) is model


def test_repeat_vector_becomes_upsampling(checks):
    inputs = keras.Input((5,))
    x = L.Dense(3, name="d")(inputs)
    model = keras.Model(inputs, L.Conv1D(2, 1, name="head")(L.RepeatVector(4, name="rep")(x)))
    new = replace_aliases(model)
    assert type(new.get_layer("rep/row")) is L.Reshape
    assert type(new.get_layer("rep")) is L.UpSampling1D
    checks.equivalent(model, new, rtol=0, atol=0)
