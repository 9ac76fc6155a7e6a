"""search_output_ranges: the output-aware range search quantize() runs below 8-bit activations.

Oracle: the float model's outputs. The search only keeps a range change that lowers the
quantized model's output error; ranges stay powers of two (integer-exact model).
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import eager_layer_calls
from quantizeml.models import QuantizationParams, quantize, search_output_ranges
from quantizeml.models.calibrate import output_quantizers
from quantizeml.models.transforms import sanitize

L = keras.layers
Q4 = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4, output_bits=4)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    y = L.Conv2D(8, 3, padding="same", name="c2")(x)
    x = L.ReLU(name="r2")(L.Add(name="add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="out")(x))


def _samples(n=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype(np.float32)


def _error(model, qmodel, x):
    y = model(x).numpy().astype(np.float64)
    return float(np.mean((qmodel(x).numpy() - y) ** 2) / np.mean(y ** 2))


def _ranges(qmodel):
    return {name: oq.range_max.numpy().copy() for name, oq in output_quantizers(qmodel).items()}


def test_search_recovers_a_misset_range_and_stays_exact():
    model, x = _model(), _samples()
    qmodel = quantize(model, qparams=Q4, samples=x, range_search=False)
    calibrated = _error(model, qmodel, x)
    # a range four times too wide: two bits of resolution lost
    name = [n for n in output_quantizers(qmodel) if n.startswith("c1")][0]  # c1's ReLU
    oq = output_quantizers(qmodel)[name]
    oq.range_max.assign(oq.range_max * 4.0)
    misset = _error(model, qmodel, x)
    assert misset > calibrated
    before = _ranges(qmodel)
    moved = search_output_ranges(sanitize(model), qmodel, [[x]])
    assert name in moved
    after = _ranges(qmodel)
    for name, factor in moved.items():
        np.testing.assert_array_equal(after[name], before[name] * factor)
    for name in set(after) - set(moved):
        np.testing.assert_array_equal(after[name], before[name])
    # ranges are 0.75 * 2^k: still powers of two once ceil(log2) is taken
    for values in after.values():
        k = np.log2(values / 0.75)
        np.testing.assert_array_equal(k, np.round(k))
    assert _error(model, qmodel, x) < misset
    traced = qmodel.predict(x, verbose=0)
    with eager_layer_calls():
        eager = qmodel(x).numpy()
    np.testing.assert_array_equal(eager, traced)


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_quantize_range_search_option():
    model, x = _model(), _samples()
    off = quantize(model, qparams=Q4, samples=x)  # off by default
    searched = quantize(model, qparams=Q4, samples=x, range_search=True)
    auto = quantize(model, qparams=Q4, samples=x, range_search=None)  # below 8 bits: on
    manual = quantize(model, qparams=Q4, samples=x, range_search=False)
    assert _same(off, manual)
    search_output_ranges(sanitize(model), manual, [[x]])
    assert _same(searched, manual) and _same(auto, manual)
    assert _error(model, searched, x) <= _error(model, off, x)
    # 8-bit activations: nothing searched in auto mode
    eight = quantize(model, samples=x, range_search=None)
    plain = quantize(model, samples=x)
    assert _same(eight, plain)


def test_range_search_argument_checked():
    with pytest.raises(TypeError, match="range_search"):
        quantize(_model(), samples=_samples(8), range_search="yes")


def test_search_on_two_outputs_and_inputs():
    keras.utils.set_random_seed(1)
    a, b = keras.Input((6,)), keras.Input((6,))
    h = L.Dense(8, activation="relu", name="h")(L.Concatenate()([a, b]))
    model = keras.Model([a, b], [L.Dense(2, name="o1")(h), L.Dense(3, name="o2")(h)])
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(32, 6)).astype(np.float32) for _ in range(2)]
    qmodel = quantize(model, qparams=Q4, samples=tf.data.Dataset.from_tensor_slices(
        tuple(x)).batch(8), num_samples=32, range_search=False)
    moved = search_output_ranges(model, qmodel, [x], num_samples=16, batch_size=8)
    assert isinstance(moved, dict)
    assert [o.shape for o in qmodel(x)] == [(32, 2), (32, 3)]
