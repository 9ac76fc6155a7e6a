"""Tests of QuantizedModel (quantizeml.models.qat): fit() multiplies each low-bit kernel's update
by its gain and leaves every other update as the optimizer made it (oracle: a plain functional
copy of the same model trained on the same batch); it learns the clipping ratios of the 2-4-bit
weight ranges with the LSQ step-size gradient (oracle: numpy); the class and its switches
survive the config, h5 and SavedModel; the distributed path matches the single-process one."""
import math
import os
import tempfile

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import WeightQuantizer
from quantizeml.models import QuantizationParams, QuantizedModel, quantize, update_gains
from quantizeml.models.qat import MIN_RANGE_RATIO, range_variables, update_gain
from quantizeml.onnx_support import export
from quantizeml.tensors.carrier import round_half_up

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
    assert not qmodel.learn_ranges  # off by default (test_fit_learns_ranges)
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
    qmodel.scaled_updates = qmodel.learn_ranges = False
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
    qmodel.scaled_updates, qmodel.learn_ranges = False, True
    config = qmodel.get_config()
    assert config["scaled_updates"] is False and config["learn_ranges"] is True
    rebuilt = QuantizedModel.from_config(config)
    assert rebuilt.scaled_updates is False and rebuilt.learn_ranges is True
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.h5" if fmt == "h5" else "m")
        qmodel.save(path, save_format=fmt)
        loaded = keras.models.load_model(path, compile=False)  # no custom objects
    assert isinstance(loaded, QuantizedModel) and loaded.scaled_updates is False
    assert loaded.learn_ranges is True
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))


@pytest.mark.parametrize("learn_ranges", [False, True])
def test_mirrored_strategy_matches_single_process(learn_ranges):
    """In a replica context the scaled update (and the clip of learned ranges) goes through the
    strategy (merge_call): one replica gives the same weights as the default strategy."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    reference = quantize(_model(), qparams=LOW, samples=x)
    reference.learn_ranges = learn_ranges
    weights = reference.get_weights()
    _step(reference, x, y, keras.optimizers.SGD(0.05))
    assert learn_ranges == any(
        not np.array_equal(v.numpy(), w) for v, w in zip(reference.weights, weights)
        if "range_ratios" in v.name)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        qmodel = quantize(_model(), qparams=LOW, samples=x)
        qmodel.learn_ranges = learn_ranges
        qmodel.set_weights(weights)
        _step(qmodel, x, y, keras.optimizers.SGD(0.05))
    for a, b in zip(qmodel.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scaled_updates_must_be_bool():
    inputs = keras.Input((3,))
    with pytest.raises(TypeError, match="scaled_updates to be a bool"):
        QuantizedModel(inputs, keras.layers.Dense(2)(inputs), scaled_updates="yes")
    with pytest.raises(TypeError, match="learn_ranges to be a bool"):
        QuantizedModel(inputs, keras.layers.Dense(2)(inputs), learn_ranges=1)


def test_four_bit_model_trains_as_plain():
    x, _ = _data()
    qmodel = quantize(_model(), qparams=QuantizationParams(input_weight_bits=4, weight_bits=4,
                                                           activation_bits=4), samples=x)
    assert update_gains(qmodel) == []


def _lsq_reference(w, ratios, value_bits, upstream):
    """numpy: the gradient of sum(upstream * dequantized weights) in the clipping ratios of a
    per-output-channel weight quantizer, ``s = ratio * max|w| / int_max`` and
    ``w_q = s * clip(round(w / s))`` with a straight-through rounding: ``(q - v) * max|w| /
    int_max`` summed per channel where the rounded value is inside the grid, ``q * max|w| /
    int_max`` where it is clipped (LSQ, Esser et al. 2020)."""
    int_max = 2.0**value_bits - 1
    top = np.abs(w).reshape(-1, w.shape[-1]).max(0)
    scales = (ratios.astype(np.float64) * top / int_max).astype(np.float32)
    v = w / scales
    rounded = round_half_up(tf.constant(v)).numpy()
    q = np.clip(rounded, -int_max - 1, int_max)
    inside = (rounded >= -int_max - 1) & (rounded <= int_max)
    grad = upstream * (q - np.where(inside, v, 0.0))
    return grad.reshape(-1, w.shape[-1]).sum(0) * top / int_max


def test_range_gradient_is_the_lsq_step_gradient():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (3, 3, 4, 6)).astype(np.float32)
    upstream = rng.normal(0, 1, w.shape).astype(np.float32)
    quantizer = WeightQuantizer(bitwidth=4)
    quantizer.build(w.shape)
    ratios = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.72], np.float32)
    quantizer.range_ratios.assign(ratios)
    with tf.GradientTape() as tape:
        tape.watch(quantizer.range_ratios)
        loss = tf.reduce_sum(upstream * quantizer.quantize(tf.constant(w)).to_float())
    grad = tape.gradient(loss, quantizer.range_ratios).numpy()
    expected = _lsq_reference(w, ratios, 3, upstream)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)
    # the clipped channels (ratios < 1) get the clipped weights' terms: not the inside-only sum
    assert not np.allclose(expected, _lsq_reference(w, np.ones(6, np.float32), 3, upstream))
    # an 8-bit quantizer has no ratios to learn
    assert not hasattr(WeightQuantizer(bitwidth=8), "range_ratios")


def _four_bit():
    return QuantizationParams(input_weight_bits=4, weight_bits=4, activation_bits=4)


def test_fit_learns_ranges():
    """One SGD step: every kernel and bias moves as in the plain model; each range ratio moves
    by -lr times its gradient (taken on the model before the step); the result is still an
    integer-exact model (ONNX bit-exact)."""
    keras.utils.set_random_seed(0)
    x, y = _data()
    qmodel = quantize(_model(), qparams=_four_bit(), samples=x)
    qmodel.learn_ranges = True
    ranges = range_variables(qmodel)
    assert len(ranges) == 4  # conv, the two kernels of sep, dense: all 4-bit
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        tape.watch(ranges)
        loss = loss_fn(y, qmodel(x, training=True))
    grads = [g.numpy() for g in tape.gradient(loss, ranges)]
    assert all(np.abs(g).max() > 0 for g in grads)
    before = [v.numpy().copy() for v in ranges]
    plain = _plain(qmodel)
    lr = 0.05
    names = [v.name for v in qmodel.weights]
    learned = _step(qmodel, x, y, keras.optimizers.SGD(lr))
    reference = _step(plain, x, y, keras.optimizers.SGD(lr))  # same weight order
    for variable, g, b in zip(ranges, grads, before):
        expected = np.maximum(b - lr * g, MIN_RANGE_RATIO)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
    ratios = 0
    for name, d, r in zip(names, learned, reference):
        if "range_ratios" in name:
            # the plain model left its ratios alone; the QuantizedModel moved them
            assert not np.any(r) and np.any(d), name
            ratios += 1
        else:
            np.testing.assert_allclose(d, r, rtol=1e-4, atol=1e-6, err_msg=name)
    assert ratios == 4
    session = ort.InferenceSession(export(qmodel).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {session.get_inputs()[0].name: x})[0],
                                  qmodel.predict(x, verbose=0))


def test_learn_ranges_off_and_frozen_layers_keep_ranges():
    x, y = _data()
    qmodel = quantize(_model(), qparams=_four_bit(), samples=x)
    qmodel.learn_ranges = True
    qmodel.get_layer("dense").trainable = False
    assert "dense/weight_quantizer/range_ratios:0" not in {v.name for v in range_variables(qmodel)}
    frozen = qmodel.get_layer("dense").weight_quantizer.range_ratios.numpy().copy()
    _step(qmodel, x, y, keras.optimizers.SGD(0.05))
    np.testing.assert_array_equal(qmodel.get_layer("dense").weight_quantizer.range_ratios.numpy(),
                                  frozen)
    other = quantize(_model(), qparams=_four_bit(), samples=x)
    other.learn_ranges = False
    ratios = [v.numpy().copy() for v in range_variables(other)]
    _step(other, x, y, keras.optimizers.SGD(0.05))
    for variable, value in zip(range_variables(other), ratios):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_ranges_never_shrink_below_the_minimum():
    x, y = _data()
    qmodel = quantize(_model(), qparams=_four_bit(), samples=x)
    qmodel.learn_ranges = True
    _step(qmodel, x, y, keras.optimizers.SGD(1e4))  # a step far past zero
    for variable in range_variables(qmodel):
        assert variable.numpy().min() >= MIN_RANGE_RATIO
