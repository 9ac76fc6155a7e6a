"""fuse_hard_swish: the MobileNetV3 hard-swish and hard-sigmoid become Activation layers."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models.transforms import fuse_hard_swish, replace_tfop_arithmetic, sanitize
from quantizeml.models.transforms.fuse_hard_swish import (HARD_SIGMOID, HARD_SWISH,
                                                         hard_sigmoid_relu6)

L = keras.layers


def _relu6(kind):
    return {"relu_layer": lambda x: L.ReLU(6.0)(x),
            "activation": lambda x: L.Activation("relu6")(x),
            "op": lambda x: tf.nn.relu6(x)}[kind]


# name -> (function of a tensor, the serialized activation expected)
CASES = {
    # as keras.applications.MobileNetV3 builds them
    "swish_mobilenet": (lambda x: L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)]),
                        HARD_SWISH),
    "sigmoid_mobilenet": (lambda x: L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0), HARD_SIGMOID),
    "swish_product_first": (lambda x: tf.nn.relu6(x + 3) * x / 6, HARD_SWISH),
    "swish_operands_swapped": (lambda x: L.Multiply()([L.Activation("relu6")(3.0 + x) / 6.0,
                                                       x]), HARD_SWISH),
    "swish_rescaling": (lambda x: x * L.Rescaling(1 / 6)(L.ReLU(6.0)(L.Rescaling(1.0, 3.0)(x))),
                        HARD_SWISH),
    "sigmoid_divide": (lambda x: tf.math.divide(tf.nn.relu6(tf.math.add(x, 3.0)), 6.0),
                       HARD_SIGMOID),
}


def _build(case):
    x = keras.Input((4, 4, 3), name="x")
    h = L.Conv2D(3, 1, name="conv")(x)
    return keras.Model(x, L.Conv2D(2, 1, name="head")(CASES[case][0](h)))


def _activations(model):
    """The serialized names of the Activation layers' functions."""
    names = [keras.activations.serialize(layer.activation) for layer in model.layers
             if type(layer) is L.Activation]
    return [name["config"] if isinstance(name, dict) else name for name in names]


@pytest.mark.parametrize("case", list(CASES))
def test_fuse(checks, case):
    model = _build(case)
    before = checks.snapshot(model)
    new = fuse_hard_swish(model)
    names = [layer.name for layer in new.layers]
    assert names[:2] == ["x", "conv"] and names[-1] == "head" and len(names) == 4
    assert _activations(new) == [CASES[case][1]]
    x = checks.inputs(model, batch=4)
    x = [v * 4 for v in x]  # both sides of the relu6 knees
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6, x=x)
    checks.unchanged(model, before, new)


def test_hard_sigmoid_is_not_tf_keras_hard_sigmoid():
    x = np.linspace(-4, 4, 17).astype(np.float32)
    np.testing.assert_allclose(hard_sigmoid_relu6(x), np.clip(x + 3, 0, 6) / 6, atol=1e-7)
    assert not np.allclose(keras.activations.hard_sigmoid(tf.constant(x)), np.clip(x + 3, 0, 6) / 6)


@pytest.mark.parametrize("case", ["other_constant", "not_relu6", "shared_inner", "inner_output",
                                  "other_product"])
def test_unchanged(case):
    x = keras.Input((4,))
    h = L.Dense(4)(x)
    outputs = []
    if case == "other_constant":
        y = L.ReLU(6.0)(h + 2.0) * (1.0 / 6.0)
    elif case == "not_relu6":
        y = L.ReLU(5.0)(h + 3.0) * (1.0 / 6.0)
    elif case == "shared_inner":  # the relu6 output is read outside the pattern
        r = L.ReLU(6.0)(h + 3.0)
        y, outputs = r * (1.0 / 6.0), [L.Dense(2)(r)]
    elif case == "inner_output":  # the sum is a model output
        s = h + 3.0
        y, outputs = L.ReLU(6.0)(s) * (1.0 / 6.0), [s]
    else:  # hard-sigmoid of h times another tensor: only the sigmoid fuses
        model = keras.Model(x, L.Multiply()([L.Dense(4)(x), L.ReLU(6.0)(h + 3.0) / 6.0]))
        new = fuse_hard_swish(model)
        assert _activations(new) == [HARD_SIGMOID]
        return
    model = keras.Model(x, [y] + outputs)
    assert fuse_hard_swish(model) is model


@pytest.mark.parametrize("fmt", ["model.keras", "saved_model"])
def test_reload(tmp_path, checks, fmt):
    """The fused model saves and reloads without custom_objects (not as h5: the legacy h5
    loader of tf_keras 2.21 refuses every registered activation function)."""
    new = fuse_hard_swish(_build("swish_mobilenet"))
    assert fuse_hard_swish(new) is new  # nothing left to fuse
    path = str(tmp_path / fmt)
    new.save(path)
    checks.equivalent(new, keras.models.load_model(path), rtol=0, atol=0)


def _mobilenet_v3():
    return keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3),
                                               minimalistic=False, classifier_activation=None)


def _tfop(model):
    return [layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda"]


@pytest.mark.slow
def test_mobilenet_v3_small(checks):
    model = checks.randomize_batchnorms(_mobilenet_v3())
    x = [np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)]
    fused = fuse_hard_swish(model)
    activations = _activations(fused)
    assert activations.count(HARD_SWISH) == 19 and activations.count(HARD_SIGMOID) == 9
    assert not _tfop(fused) and len(_tfop(model)) == 56
    checks.equivalent(model, fused, rtol=1e-4, atol=1e-5, x=x)
    sanitized = sanitize(model)
    assert not _tfop(sanitized)
    assert not any(type(layer) is L.BatchNormalization for layer in sanitized.layers)
    checks.equivalent(model, sanitized, rtol=1e-4, atol=1e-5, x=x)
    # the same fusion after the TFOpLambda became Rescaling layers
    refused = fuse_hard_swish(replace_tfop_arithmetic(model))
    assert _activations(refused) == _activations(fused)
    checks.equivalent(fused, refused, rtol=1e-5, atol=1e-5, x=x)
