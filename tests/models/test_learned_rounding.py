"""Tests of learn_rounding (AdaRound): lower layer reconstruction errors than the nearest
rounding, integer weights on floor(w/s) or floor(w/s) + 1 with unchanged scales, integer-exact
results that reload bit-identically, untouched input models, clear errors."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import (QuantizationParams, layer_reconstruction_error, learn_rounding,
                               quantize)
from quantizeml.models.learned_rounding import _operation
from tests.utils import check_save_load, to_numpy

ITERATIONS = 150


def conv_model():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.ReLU(name="relu_dw")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(4, name="dense")(x)
    return keras.Model(inputs, outputs)


def dense_model():
    inputs = keras.Input((12,))
    x = keras.layers.Dense(16, name="dense")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


MODELS = {"conv": (conv_model, (6, 6, 3), "conv"), "dense": (dense_model, (12,), "dense")}


def _samples(shape, count=64):
    return np.random.default_rng(1).uniform(-1, 1, (count, *shape)).astype(np.float32)


def _quantized(kind, bits):
    build, shape, first = MODELS[kind]
    model = build()
    x = _samples(shape)
    qparams = QuantizationParams(input_weight_bits=bits, weight_bits=bits, activation_bits=8,
                                 output_bits=8)
    return model, quantize(model, qparams=qparams, samples=x), x, first


def _weights(model):
    return [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("kind, bits, asymmetric", [
    ("conv", 4, False), ("conv", 3, False), ("dense", 4, False), ("dense", 3, False),
    ("conv", 4, True)], ids=["conv-4bit", "conv-3bit", "dense-4bit", "dense-3bit",
                             "conv-4bit-asymmetric"])
def test_lower_reconstruction_error(kind, bits, asymmetric):
    model, qmodel, x, first = _quantized(kind, bits)
    report = []
    learned = learn_rounding(model, qmodel, x, iterations=ITERATIONS, report=report,
                             asymmetric=asymmetric)
    # every layer, on the same inputs: strictly lower than the nearest rounding
    learned_layers = [e for e in report if "skipped" not in e]
    assert {e["name"] for e in learned_layers} == {
        layer.name for layer in qmodel.layers if _operation(layer) is not None}
    for entry in learned_layers:
        assert entry["error_learned"] < entry["error_nearest"], entry
        # flips are counted from the nearest rounding of the final grid: none where the ranges
        # chosen for the output won with their nearest rounding
        assert (entry["flipped"] > 0 or entry["output_ranges"]) and entry["seconds"] > 0, entry
    # the persisted weights of the first layer (same inputs in both models), measured through
    # the layer's own weight quantizer
    nearest = layer_reconstruction_error(model, qmodel, first, x, asymmetric=asymmetric)
    after = layer_reconstruction_error(model, learned, first, x, asymmetric=asymmetric)
    assert after < nearest, (after, nearest)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_integer_weights_on_the_floor_grid(kind):
    model, qmodel, x, _ = _quantized(kind, 4)
    # at 4 bits the weight-MSE ranges of quantize() are kept (OUTPUT_RANGES_MAX_BITS = 3)
    learned = learn_rounding(model, qmodel, x, iterations=ITERATIONS)
    flipped = 0
    for layer in qmodel.layers:
        op = _operation(layer)
        if op is None:
            continue
        new_op = _operation(learned.get_layer(layer.name))
        view = op.to_view(tf.convert_to_tensor(op.variable))
        new_view = new_op.to_view(tf.convert_to_tensor(new_op.variable))
        old = op.quantizer.quantize(view)
        new = new_op.quantizer.quantize(new_view)
        np.testing.assert_array_equal(new.scales.numpy(), old.scales.numpy())
        floor = np.floor((view / old.scales).numpy())
        ints = new.fp.values.numpy()
        assert np.all((ints == floor) | (ints == floor + 1)), layer.name
        # each channel's largest magnitude (which sets the scales) is unchanged
        axes = tuple(range(view.shape.rank - 1))
        np.testing.assert_array_equal(np.max(np.abs(new_view.numpy()), axis=axes),
                                      np.max(np.abs(view.numpy()), axis=axes))
        flipped += int(np.sum(ints != old.fp.values.numpy()))
    assert flipped > 0


def test_integer_exact_and_reload():
    model, qmodel, x, _ = _quantized("conv", 4)
    learned = learn_rounding(model, qmodel, x, iterations=50)
    eager = to_numpy(learned(x, training=False))
    traced = to_numpy(tf.function(lambda t: learned(t, training=False))(tf.constant(x)))
    np.testing.assert_array_equal(eager, traced)
    check_save_load(learned, x, formats=("h5",))
    # not a copy of the nearest-rounding model
    assert not np.array_equal(eager, to_numpy(qmodel(x, training=False)))


def test_inputs_not_modified():
    model, qmodel, x, _ = _quantized("dense", 4)
    float_weights, quant_weights = _weights(model), _weights(qmodel)
    before = to_numpy(qmodel(x))
    learned = learn_rounding(model, qmodel, x, iterations=20)
    assert learned is not qmodel
    for a, b in zip(float_weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(quant_weights, qmodel.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to_numpy(qmodel(x)), before)


def test_fixed_point_weights_are_skipped():
    model = dense_model()
    x = _samples((12,))
    config = {"dense": {"weight_quantizer": {"bitwidth": 4, "fp_quantizer": True},
                        "output_quantizer": {"bitwidth": 8, "signed": True}}}
    qmodel = quantize(model, q_config=config, qparams=QuantizationParams(weight_bits=4),
                      samples=x)
    report = []
    learn_rounding(model, qmodel, x, iterations=10, report=report)
    skipped = {e["name"]: e["skipped"] for e in report if "skipped" in e}
    assert "fp_quantizer" in skipped["dense"]
    assert any(e["name"] == "head" and "skipped" not in e for e in report)


BAD_ARGUMENTS = [({"iterations": -1}, "Received: iterations=-1"),
                 ({"batch_size": 0}, "Received: batch_size=0"),
                 ({"reg": -1.0}, "Received: reg=-1.0"),
                 ({"beta": (20,)}, r"Received: beta=\(20,\)"),
                 ({"learning_rate": 0}, "Received: learning_rate=0")]


def test_bad_arguments():
    model, qmodel, x, _ = _quantized("dense", 4)
    for kwargs, match in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            learn_rounding(model, qmodel, x, **kwargs)


def test_bad_models_and_samples():
    model, qmodel, x, _ = _quantized("dense", 4)
    with pytest.raises(ValueError, match="samples=None"):
        learn_rounding(model, qmodel, None)
    with pytest.raises(ValueError, match="quantized model"):
        learn_rounding(model, model, x)
    with pytest.raises(TypeError, match="tf_keras Model"):
        learn_rounding(model, "qmodel", x)


def test_quantize_option():
    """quantize(learned_rounding=...) is quantize() then learn_rounding(): the same weights,
    integer-exact outputs (eager == predict), a lower reconstruction error than the nearest
    rounding."""
    model, x = conv_model(), _samples((6, 6, 3))
    qparams = QuantizationParams(input_weight_bits=4, weight_bits=4, activation_bits=8,
                                 output_bits=8)
    nearest = quantize(model, qparams=qparams, samples=x)
    report = []
    learned = quantize(model, qparams=qparams, samples=x,
                       learned_rounding={"iterations": 100, "report": report})
    reference = learn_rounding(model, nearest, x, iterations=100)
    for a, b in zip(learned.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert {e["name"] for e in report} == {"conv", "dw", "dense"}
    eager = to_numpy(learned(x, training=False))
    np.testing.assert_array_equal(eager, learned.predict(x, batch_size=16, verbose=0))
    assert not np.array_equal(eager, to_numpy(nearest(x, training=False)))
    for name in ("conv", "dw"):
        assert layer_reconstruction_error(model, learned, name, x) < \
            layer_reconstruction_error(model, nearest, name, x), name


def test_quantize_option_errors():
    model, x = dense_model(), _samples((12,))
    with pytest.raises(TypeError, match="learned_rounding='yes'"):
        quantize(model, samples=x, learned_rounding="yes")
    with pytest.raises(ValueError, match=r"unknown options \['iteration'\]"):
        quantize(model, samples=x, learned_rounding={"iteration": 10})
    qmodel = quantize(model, samples=x)
    with pytest.raises(ValueError, match="learn_rounding\\(float_model"):
        quantize(qmodel, samples=x, learned_rounding=True)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_output_ranges(kind):
    """At 2 bits, learn_rounding re-chooses each channel's clipping ratio for the layer's output
    (``output_ranges``): the ranges change, the first layer (same inputs either way) reconstructs
    at least as well as with the weight-MSE ranges and strictly better than the nearest
    rounding on those, and the model (ratios included) reloads bit-identically."""
    model, qmodel, x, first = _quantized(kind, 2)
    reports = {}
    models = {}
    for flag in (False, True):
        reports[flag] = []
        models[flag] = learn_rounding(model, qmodel, x, iterations=ITERATIONS,
                                      report=reports[flag], output_ranges=flag)
    ratios = {flag: [m.get_layer(e["name"]).weight_quantizer.range_ratios.numpy()
                     for e in reports[flag] if "skipped" not in e and e["bits"] <= 4]
              for flag, m in models.items()}
    original = [qmodel.get_layer(e["name"]).weight_quantizer.range_ratios.numpy()
                for e in reports[True] if "skipped" not in e and e["bits"] <= 4]
    for a, b in zip(ratios[False], original):
        np.testing.assert_array_equal(a, b)  # off: quantize()'s ranges kept
    assert any(not np.array_equal(a, b) for a, b in zip(ratios[True], original))
    errors = {flag: layer_reconstruction_error(model, models[flag], first, x)
              for flag in (False, True)}
    nearest = layer_reconstruction_error(model, qmodel, first, x)
    assert errors[True] <= errors[False] <= nearest and errors[True] < nearest, (errors, nearest)
    check_save_load(models[True], x, formats=("h5",))
