"""split_multi_head_attention: Keras' MultiHeadAttention self-attention becomes Dense
projections and an Attention, outputs unchanged; other calls stay."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers import Attention
from quantizeml.models.transforms import sanitize, split_multi_head_attention

L = keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)


def _randomize(model, seed=0):
    """Random weights everywhere (biases too), so that a weight not carried changes outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    return model


def _types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("options", [dict(num_heads=4, key_dim=8),
                                     dict(num_heads=2, key_dim=5, value_dim=5, use_bias=False),
                                     dict(num_heads=3, key_dim=4, output_shape=7, dropout=0.2),
                                     dict(num_heads=1, key_dim=16, attention_axes=(1,))],
                         ids=["default", "no_bias", "output_shape", "one_head"])
@pytest.mark.parametrize("call", ["positional", "keywords", "key_given"])
def test_self_attention_is_split(checks, options, call):
    inputs = keras.Input((6, 12))
    x = L.Dense(12, name="embed")(inputs)
    mha = L.MultiHeadAttention(**options, name="mha")
    y = {"positional": lambda: mha(x, x), "keywords": lambda: mha(query=x, value=x),
         "key_given": lambda: mha(x, x, key=x)}[call]()
    model = _randomize(keras.Model(inputs, L.Dense(3, name="head")(y)))
    before = checks.snapshot(model)
    new = split_multi_head_attention(model)
    assert "MultiHeadAttention" not in _types(new)
    assert _types(new).count("Attention") == 1 and _types(new).count("Dense") == 6
    # the output projection keeps the layer's name, the others are named after it
    names = {layer.name: layer for layer in new.layers}
    assert {"mha", "mha/query", "mha/key", "mha/value", "mha/attention"} <= set(names)
    assert isinstance(names["mha/attention"], Attention)
    assert names["mha/attention"].num_heads == options["num_heads"]
    assert names["mha"].units == (options.get("output_shape") or 12)
    checks.equivalent(model, new, **TOL)
    checks.unchanged(model, before, new)
    # sanitize (so quantize()) splits it too
    assert "MultiHeadAttention" not in _types(sanitize(model))


@pytest.mark.parametrize("axes", [None, (1, 2)], ids=["default_axes", "all_axes"])
def test_grid_input_attends_all_positions(checks, axes):
    """A (batch, a, b, dim) input (MobileViT's patches): Keras' joint softmax over axes 1 and 2
    is the attention over the a * b tokens, between two Reshapes."""
    inputs = keras.Input((3, 4, 8))
    y = L.MultiHeadAttention(2, 4, attention_axes=axes, name="mha")(inputs, inputs)
    model = _randomize(keras.Model(inputs, L.Dense(3, name="head")(y)))
    new = split_multi_head_attention(model)
    assert _types(new).count("Attention") == 1 and _types(new).count("Reshape") == 2
    assert new.get_layer("mha/tokens").target_shape == (12, 8)
    checks.equivalent(model, new, **TOL)


def test_shared_layer_stays_shared(checks):
    """A MultiHeadAttention called twice becomes one set of layers called twice."""
    inputs = keras.Input((5, 8))
    mha = L.MultiHeadAttention(2, 4, name="mha")
    x = L.Add()([inputs, mha(inputs, inputs)])
    x = L.Add()([x, mha(x, x)])
    model = _randomize(keras.Model(inputs, x))
    new = split_multi_head_attention(model)
    assert _types(new).count("Attention") == 1 and _types(new).count("Dense") == 4
    checks.equivalent(model, new, **TOL)


@pytest.mark.parametrize("case", ["cross_attention", "attention_mask", "causal",
                                  "value_dim", "scores", "inner_attention_axis"])
def test_other_calls_stay(case):
    """Calls Attention does not compute are left as they are (the model itself returned)."""
    query = keras.Input((5, 8))
    other = keras.Input((5, 8))
    mask = keras.Input((5, 5), dtype="bool")
    inputs = [query]
    mha = L.MultiHeadAttention(2, 4, value_dim=6 if case == "value_dim" else None,
                               attention_axes=(2,) if case == "inner_attention_axis" else None)
    if case == "cross_attention":
        y, inputs = mha(query, other), [query, other]
    elif case == "attention_mask":
        y, inputs = mha(query, query, attention_mask=mask), [query, mask]
    elif case == "causal":
        y = mha(query, query, use_causal_mask=True)
    elif case == "scores":
        y, _ = mha(query, query, return_attention_scores=True)
    elif case == "inner_attention_axis":  # attention within each row: not one sequence
        query = keras.Input((3, 4, 8))
        y, inputs = mha(query, query), [query]
    else:
        y = mha(query, query)
    model = keras.Model(inputs, y)
    assert split_multi_head_attention(model) is model
