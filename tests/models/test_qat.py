"""Tests of QuantizedModel (quantizeml.models.qat): fit() multiplies each low-bit kernel's update
by its gain and leaves every other update as the optimizer made it (oracle: a plain functional
copy of the same model trained on the same batch); the class and its switch survive the config,
h5 and SavedModel; the distributed path matches the single-process one."""
import math
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import WeightQuantizer
from quantizeml.models import QuantizationParams, QuantizedModel, quantize, update_gains
from quantizeml.models.qat import update_gain

LOW = QuantizationParams(input_weight_bits=8, weight_bits=2, activation_bits=4)


def _model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.SeparableConv2D(6, 3, activation="relu", name="sep")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    return keras.Model(inputs, outputs)


def _data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (32, 8, 8, 2)).astype(np.float32), rng.integers(0, 3, 32)


def _plain(qmodel):
    plain = keras.Model.from_config(qmodel.get_config())
    plain.set_weights(qmodel.get_weights())
    return plain


def _step(model, x, y, optimizer):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    return [after - b for after, b in zip(model.get_weights(), before)]


@pytest.mark.parametrize("bits,signed,expected", [
    (2, True, math.sqrt(127)), (3, True, math.sqrt(127 / 3)), (2, False, math.sqrt(127 / 3)),
    (4, True, 1.0), (3, False, 1.0), (8, True, 1.0), (8, False, 1.0), (16, True, 1.0)])
def test_update_gain(bits, signed, expected):
    assert update_gain(WeightQuantizer(bitwidth=bits, signed=signed)) == pytest.approx(expected)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_scales_low_bit_kernel_updates(optimizer):
    keras.utils.set_random_seed(0)
    x, y = _data()
    qmodel = quantize(_model(), qparams=LOW, samples=x)
    assert isinstance(qmodel, QuantizedModel) and qmodel.scaled_updates
    gains = {v.name: g for v, g in update_gains(qmodel)}
    # the first layer keeps 8-bit weights (gain 1); the 2-bit kernels get sqrt(127)
    assert sorted(gains) == ["dense/kernel:0", "sep/depthwise_kernel:0",
                             "sep/pointwise_kernel:0"]
    assert all(g == pytest.approx(math.sqrt(127)) for g in gains.values())
    plain = _plain(qmodel)
    assert type(plain) is not QuantizedModel
    make = {"sgd": lambda: keras.optimizers.SGD(0.05),
            "adam": lambda: keras.optimizers.Adam(1e-3)}[optimizer]
    scaled, reference = _step(qmodel, x, y, make()), _step(plain, x, y, make())
    moved = 0
    for variable, d, r in zip(qmodel.weights, scaled, reference):
        gain = gains.get(variable.name, 1.0)
        np.testing.assert_allclose(d, gain * r, rtol=1e-4, atol=1e-6, err_msg=variable.name)
        moved += gain != 1.0 and np.abs(r).max() > 0
    assert moved == 3


def test_scaled_updates_off_is_the_plain_update():
    keras.utils.set_random_seed(0)
    x, y = _data()
    qmodel = quantize(_model(), qparams=LOW, samples=x)
    plain = _plain(qmodel)
    qmodel.scaled_updates = False
    for d, r in zip(_step(qmodel, x, y, keras.optimizers.SGD(0.05)),
                    _step(plain, x, y, keras.optimizers.SGD(0.05))):
        np.testing.assert_array_equal(d, r)


def test_frozen_layer_has_no_gain():
    x, _ = _data()
    qmodel = quantize(_model(), qparams=LOW, samples=x)
    qmodel.get_layer("dense").trainable = False
    assert "dense/kernel:0" not in {v.name for v, _ in update_gains(qmodel)}


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_reload_keeps_class_and_switch(fmt):
    x, _ = _data()
    qmodel = quantize(_model(), qparams=LOW, samples=x)
    qmodel.scaled_updates = False
    config = qmodel.get_config()
    assert config["scaled_updates"] is False
    assert QuantizedModel.from_config(config).scaled_updates is False
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.h5" if fmt == "h5" else "m")
        qmodel.save(path, save_format=fmt)
        loaded = keras.models.load_model(path, compile=False)  # no custom objects
    assert isinstance(loaded, QuantizedModel) and loaded.scaled_updates is False
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


def test_mirrored_strategy_matches_single_process():
    """In a replica context the scaled update goes through the strategy (merge_call): one
    replica gives the same weights as the default strategy."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    reference = quantize(_model(), qparams=LOW, samples=x)
    weights = reference.get_weights()
    _step(reference, x, y, keras.optimizers.SGD(0.05))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        qmodel = quantize(_model(), qparams=LOW, samples=x)
        qmodel.set_weights(weights)
        _step(qmodel, x, y, keras.optimizers.SGD(0.05))
    for a, b in zip(qmodel.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scaled_updates_must_be_bool():
    inputs = keras.Input((3,))
    with pytest.raises(TypeError, match="scaled_updates to be a bool"):
        QuantizedModel(inputs, keras.layers.Dense(2)(inputs), scaled_updates="yes")


def test_four_bit_model_trains_as_plain():
    x, _ = _data()
    qmodel = quantize(_model(), qparams=QuantizationParams(input_weight_bits=4, weight_bits=4,
                                                           activation_bits=4), samples=x)
    assert update_gains(qmodel) == []
