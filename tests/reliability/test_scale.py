"""Scale: calibration streams its samples (bounded memory), generators included."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import calibrate, quantize
from quantizeml.models.samples import Batches

HERE = os.path.dirname(__file__)


def _model():
    inputs = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _x(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


def test_batches_reiterate_arrays_and_datasets():
    model = _model()
    for samples in (_x(50), tf.data.Dataset.from_tensor_slices(_x(50))):
        batches = Batches(model, samples, num_samples=40, batch_size=16)
        first = [b[0] for b in batches]
        second = [b[0] for b in batches]
        assert [len(b) for b in first] == [16, 16, 8]
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)


def test_batches_spill_generator_once():
    model = _model()
    x = _x(40)
    consumed = []

    def gen():
        for start in range(0, 40, 16):
            consumed.append(start)
            yield x[start:start + 16]
    batches = Batches(model, gen(), num_samples=40)
    first = [b[0] for b in batches]
    spill = batches._spill
    assert os.path.isdir(spill)
    second = [b[0] for b in batches]
    assert consumed == [0, 16, 32]  # the generator was consumed once
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    batches.close()
    assert not os.path.exists(spill)


def test_batches_generator_interrupted_pass_raises():
    """A generator whose first pass failed (here on a NaN batch) cannot be replayed: the
    next pass raises instead of silently using the rest of the generator."""
    model = _model()
    bad = _x(16)
    bad[0, 0, 0, 0] = np.nan
    batches = Batches(model, (b for b in [_x(16), bad, _x(16)]))
    with pytest.raises(ValueError, match="finite values"):
        list(batches)
    with pytest.raises(ValueError, match="complete first pass over the generator"):
        list(batches)


def test_calibrate_generator_equals_array():
    model = _model()
    x = _x(64)
    qmodel = quantize(model, samples=x[:8])
    calibrate(model, qmodel, samples=x, batch_size=16)
    from_array = [w.copy() for w in qmodel.get_weights()]
    qmodel = quantize(model, samples=x[:8])
    calibrate(model, qmodel, samples=(x[i:i + 16] for i in range(0, 64, 16)))
    for a, b in zip(from_array, qmodel.get_weights()):
        np.testing.assert_array_equal(a, b)


def _peak_growth(num_samples):
    out = subprocess.run([sys.executable, os.path.join(HERE, "scale_script.py"),
                          str(num_samples)], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    line = [line for line in out.splitlines() if line.startswith("RSS")][0]
    _, n, before, after, seconds = line.split()
    return float(after) - float(before)


@pytest.mark.slow
def test_calibration_memory_does_not_grow_with_samples():
    """Peak RSS growth while calibrating on a streamed tf.data.Dataset of 8x8x1 samples.

    Measured: +3.1 MB for 10k samples, +3.9 MB for 100k samples (materialising the batches,
    as calibrate did before, costs +27.6 MB at 100k: the 25.6 MB of samples).
    """
    small, large = _peak_growth(10_000), _peak_growth(100_000)
    assert large - small < 12.0, (small, large)
