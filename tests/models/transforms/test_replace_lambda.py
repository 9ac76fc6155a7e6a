"""replace_lambda: Lambda / TFOpLambda / Activation become Keras layers."""
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models.transforms import replace_lambda

L = keras.layers
TOL = dict(rtol=0, atol=0)  # the same ops

# name -> (function of a (None, 4, 4, 3) tensor, expected layer class)
CASES = {
    "lambda_relu": (lambda x: L.Lambda(tf.nn.relu)(x), L.ReLU),
    "lambda_relu6": (lambda x: L.Lambda(tf.nn.relu6)(x), L.ReLU),
    "lambda_keras_relu": (lambda x: L.Lambda(keras.activations.relu,
                                             arguments={"max_value": 1.0, "alpha": 0.1})(x),
                          L.ReLU),
    "activation_relu": (lambda x: L.Activation("relu")(x), L.ReLU),
    "activation_relu6": (lambda x: L.Activation("relu6")(x), L.ReLU),
    "op_relu": (lambda x: tf.nn.relu(x), L.ReLU),
    "op_relu6": (lambda x: tf.nn.relu6(x), L.ReLU),
    "lambda_transpose": (lambda x: L.Lambda(tf.transpose, arguments={"perm": [0, 2, 3, 1]})(x),
                         L.Permute),
    "op_transpose": (lambda x: tf.transpose(x, perm=[0, 3, 1, 2]), L.Permute),
    "lambda_reshape": (lambda x: L.Lambda(tf.reshape, arguments={"shape": [-1, 12, 4]})(x),
                       L.Reshape),
    "op_reshape": (lambda x: tf.reshape(x, (-1, 48)), L.Reshape),
    "op_reshape_kwarg": (lambda x: tf.reshape(x, shape=[-1, 2, 24]), L.Reshape),
    "lambda_add_n": (lambda x: L.Lambda(tf.math.add_n)([x, L.ReLU()(x)]), L.Add),
    "op_add": (lambda x: tf.math.add(x, L.ReLU()(x)), L.Add),
    "operator_add": (lambda x: x + L.ReLU()(x), L.Add),
}


def _build(kind, case):
    function, _ = CASES[case]
    if kind == "sequential":
        return keras.Sequential([keras.Input((4, 4, 3)), L.Conv2D(3, 1), _layer_of(function)])
    inputs = keras.Input((4, 4, 3))
    return keras.Model(inputs, function(L.Conv2D(3, 1)(inputs)))


def _layer_of(function):
    """The layer that ``function`` adds to a graph (for Sequential models)."""
    return function(keras.Input((4, 4, 3)))._keras_history.layer


# TFOpLambda and multi-input layers only exist in functional models
PARAMS = [(case, kind) for case in CASES for kind in ("sequential", "functional")
          if kind == "functional" or not (case.startswith("op_") or "add" in case)]


@pytest.mark.parametrize("case,kind", PARAMS, ids=[f"{c}-{k}" for c, k in PARAMS])
def test_replace(checks, case, kind):
    model = _build(kind, case)
    before = checks.snapshot(model)
    new = replace_lambda(model)
    expected = CASES[case][1]
    assert type(new.layers[-1]) is expected
    assert not any(type(layer) in (L.Lambda, L.Activation) or
                   type(layer).__name__ == "TFOpLambda" for layer in new.layers)
    assert new.layers[-1].name == model.layers[-1].name
    checks.equivalent(model, new, **TOL)
    checks.unchanged(model, before, new)


def test_relu_configs():
    inputs = keras.Input((4,))
    outputs = [L.Activation("relu6")(inputs),
               L.Lambda(keras.activations.relu, arguments={"max_value": 2.0, "alpha": 0.1,
                                                           "threshold": 0.5})(inputs)]
    new = replace_lambda(keras.Model(inputs, outputs))
    relu6, relu = new.layers[1:]
    assert (relu6.max_value, relu6.negative_slope, relu6.threshold) == (6.0, 0.0, 0.0)
    assert (relu.max_value, relu.negative_slope, relu.threshold) == (2.0, 0.1, 0.5)


def test_shared_lambda_and_multi_io(checks):
    a, b = keras.Input((4, 3), name="a"), keras.Input((4, 3), name="b")
    relu = L.Lambda(tf.nn.relu, name="shared_relu")
    x, y = relu(a), relu(b)
    outputs = [L.Concatenate(name="concat")([y, x]), tf.reshape(x + y, (-1, 12))]
    model = keras.Model([a, b], outputs)
    new = replace_lambda(model)
    assert checks.count(new, L.ReLU) == 2
    first, second = [t.node for t in new.get_layer("concat").input]
    assert (first.inbound_layers.name, second.inbound_layers.name) == ("b", "a")
    checks.equivalent(model, new, **TOL)


@pytest.mark.parametrize("function", [
    lambda x: L.Lambda(lambda t: t * 2)(x),
    lambda x: L.Activation("sigmoid")(x),
    lambda x: tf.transpose(x, perm=[1, 0, 2, 3]),  # moves the batch axis
    lambda x: tf.reshape(x, (2, -1)),  # fixed batch size
    lambda x: tf.math.add(x, 1.0),  # constant
    lambda x: x + tf.reduce_mean(x, axis=-1, keepdims=True),  # broadcast
    lambda x: tf.math.multiply(x, x),
], ids=["python_lambda", "sigmoid", "batch_transpose", "fixed_batch_reshape", "add_constant",
        "add_broadcast", "multiply"])
def test_not_replaced_returns_same_model(function):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, function(inputs))
    assert replace_lambda(model) is model


def test_softmax_activation_inside_the_model_becomes_softmax(checks):
    """``Activation('softmax')`` (or a Dense's fused softmax, split first) inside the model
    becomes ``Softmax(axis=-1)``, which quantize() quantizes; the one giving the model output
    stays an Activation (the float tail)."""
    inputs = keras.Input((5, 6))
    weights = keras.layers.Activation("softmax", name="weights")(
        keras.layers.Dense(6, name="scores")(inputs))
    mixed = keras.layers.Multiply(name="mix")([weights, inputs])
    probs = keras.layers.Activation("softmax", name="probs")(
        keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(mixed)))
    model = keras.Model(inputs, probs)
    new = replace_lambda(model)
    assert type(new.get_layer("weights")) is keras.layers.Softmax
    assert new.get_layer("weights").axis == -1
    assert type(new.get_layer("probs")) is keras.layers.Activation
    checks.equivalent(model, new, rtol=0, atol=0)
