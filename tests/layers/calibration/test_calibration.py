"""OutputObserver and recording."""
import numpy as np
import pytest
import tensorflow as tf

from quantizeml.layers import OutputObserver, WeightQuantizer, recording
from quantizeml.layers.calibration import is_recording
from tests.utils import check_config_roundtrip


@pytest.mark.parametrize("axis", ["per-tensor", "per-axis"])
def test_observer_momentum(axis):
    obs = OutputObserver(axis=axis, momentum=0.7)
    batches = [np.random.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    reduce = (0, 1) if axis == "per-tensor" else (0,)
    expected = None
    for b in batches:
        out = obs(b)
        np.testing.assert_array_equal(out, b)  # identity
        m = np.max(np.abs(b), axis=reduce)
        expected = m if expected is None else 0.7 * expected + 0.3 * m
    np.testing.assert_allclose(obs.range_max.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(obs.max_seen.numpy(),
                               np.max([np.max(np.abs(b), axis=reduce) for b in batches], axis=0))
    check_config_roundtrip(obs)


def test_observer_bad_arguments():
    with pytest.raises(ValueError, match="momentum expected"):
        OutputObserver(momentum=2.0)
    with pytest.raises(ValueError, match="axis expected"):
        OutputObserver(axis="rows")


def test_recording_context_restores_state():
    assert not is_recording()
    with pytest.raises(RuntimeError):
        with recording(True):
            assert is_recording()
            raise RuntimeError("boom")
    assert not is_recording()


def test_weight_recording_reuse_and_training_reset():
    w = tf.Variable(np.random.uniform(-1, 1, (4, 3)).astype(np.float32))
    wq = WeightQuantizer(bitwidth=4)
    with recording(True):
        recorded = wq(w)
    assert wq.qweights.value is not None
    w.assign(w * 10.0)  # records are reused until a training call
    np.testing.assert_array_equal(wq(w).values.numpy(), recorded.values.numpy())
    fresh = wq(w, training=True)
    assert wq.qweights.value is None
    np.testing.assert_allclose(fresh.to_float().numpy(), w.numpy(), atol=1.5)
    assert not np.array_equal(fresh.scales.numpy(), recorded.scales.numpy())


@pytest.mark.parametrize("eager_batches", [0, 2, 100])
def test_calibration_eager_and_compiled_passes_agree(monkeypatch, eager_batches):
    """The range calibration runs its first batches eagerly and compiles itself after
    ``EAGER_CALIBRATION_BATCHES``: all-compiled, mixed and all-eager passes give the same
    ranges, and the mixed pass compiled only once it went past the limit."""
    import tf_keras as keras

    from quantizeml.models import quantize
    calibrate_module = __import__("quantizeml.models.calibrate", fromlist=["_Pass"])

    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    samples = np.random.default_rng(3).normal(size=(40, 6, 6, 2)).astype(np.float32)

    def ranges(limit):
        monkeypatch.setattr(calibrate_module, "EAGER_CALIBRATION_BATCHES", limit)
        qmodel = quantize(model, samples=samples, batch_size=8)
        return [layer.get_weights() for layer in qmodel.layers]

    reference = ranges(eager_batches)
    calls = []
    original = calibrate_module._Pass.__call__

    def counting(self, x):
        calls.append(self.compiled is not None)
        return original(self, x)
    monkeypatch.setattr(calibrate_module._Pass, "__call__", counting)
    for got, want in zip(ranges(3), reference):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    # 5 batches per pass, 2 passes: compiled from the 5th call of each pass on
    assert calls == [False] * 4 + [True] + [False] * 4 + [True]
