"""The range search of calibrate() against a numpy oracle."""
import importlib

import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models import QuantizationParams, calibrate, quantize
from quantizeml.layers import eager_layer_calls
from quantizeml.models.calibrate import SEARCH_BITS, fit_merge_alignment, output_quantizers

# the module (quantizeml.models.calibrate is also the name of the function it exports)
calibrate_module = importlib.import_module("quantizeml.models.calibrate")


def _model():
    inputs = keras.Input((5,))
    x = keras.layers.Dense(7, kernel_initializer="glorot_normal",
                           bias_initializer="random_normal")(inputs)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def _oracle(values, quantizer):
    """range_max of the documented search: f0 holds max|x| unclipped; the fractional bits
    f0 .. f0 + SEARCH_BITS of least squared error (per channel for per-axis quantizers)."""
    x = values.astype(np.float64)
    axes = None if quantizer.axis == "per-tensor" else tuple(range(x.ndim - 1))
    vb = quantizer.value_bits
    lo, hi = (-2.0**vb if quantizer.signed else 0.0), 2.0**vb - 1
    f0 = vb - np.ceil(np.log2(np.maximum(np.abs(x).max(axis=axes), 1e-12)))
    errors = []
    for k in range(SEARCH_BITS + 1):
        scale = 2.0**(f0 + k)
        q = np.clip(np.floor(x * scale + 0.5), lo, hi) / scale
        errors.append(((x - q) ** 2).sum(axis=axes))
    best = f0 + np.argmin(np.stack(errors), axis=0)
    return 0.75 * 2.0**(vb - best)


@pytest.mark.parametrize("per_tensor", [True, False])
@pytest.mark.parametrize("late_outlier", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_range_search_matches_numpy(per_tensor, late_outlier, split, monkeypatch):
    """late_outlier: the last batch is 50 times larger than the first ones (the maxima seen
    by the first batches are not the final ones); split: the passes call the model on one
    sample at a time (``CALIBRATION_CALL_BYTES`` below one sample's activations), which must
    not change the statistics."""
    if split:
        monkeypatch.setattr(calibrate_module, "CALIBRATION_CALL_BYTES", 1)
    keras.utils.set_random_seed(1)
    model = _model()
    rng = np.random.default_rng(4)
    samples = rng.normal(0, 1, (48, 5)).astype(np.float32)
    if late_outlier:
        samples[-16:] *= 50
    qparams = QuantizationParams(activation_bits=4, weight_bits=4,
                                 per_tensor_activations=per_tensor)
    qmodel = quantize(model, qparams=qparams, samples=samples[:16], batch_size=16)
    calibrate(model, qmodel, samples=samples, batch_size=16)
    targets = output_quantizers(qmodel)
    assert len(targets) >= 2  # the input and the ReLU
    for name, quantizer in targets.items():
        if name in [t._keras_history.layer.name for t in model.inputs]:
            values = samples
        else:
            values = keras.Model(model.inputs, model.get_layer(name).output)(samples).numpy()
        expected = _oracle(values, quantizer)
        np.testing.assert_array_equal(
            quantizer.range_max.numpy(),
            np.reshape(expected, quantizer.range_max.shape).astype(np.float32), err_msg=name)


def test_calibration_calls_split_batches_by_activation_bytes(monkeypatch):
    """Each model call of a calibration pass gets at most CALIBRATION_CALL_BYTES of observed
    float32 activations (at least one sample); smaller batches are not split."""
    refs = [keras.Input((8, 8, 4)), keras.Input((16,))]  # 256 + 16 floats per sample
    per_sample = 4 * (8 * 8 * 4 + 16)
    monkeypatch.setattr(calibrate_module, "CALIBRATION_CALL_BYTES", 10 * per_sample + 3)
    assert calibrate_module._chunk_size(refs) == 10
    monkeypatch.setattr(calibrate_module, "CALIBRATION_CALL_BYTES", 1)
    assert calibrate_module._chunk_size(refs) == 1
    batch = [np.arange(25), np.arange(25) * 2]
    parts = list(calibrate_module._split(batch, 10))
    assert [len(p[0]) for p in parts] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), batch[1])
    assert list(calibrate_module._split(batch, 25))[0] is batch


@pytest.mark.parametrize("merge", ["add", "concatenate"])
def test_merge_of_far_apart_branches_fits_the_buffer(merge):
    """A branch 2^30 times smaller than the other one (a near-dead branch of a random
    network): aligning both on the finest grid would need more than the 32-bit buffer. The
    calibration gives the tiny branch a coarser grid, so the quantized model runs eagerly and
    traced alike, equal to the float model (the tiny branch is below its resolution)."""
    inputs = keras.Input((6, 6, 3))
    big = keras.layers.Conv2D(4, 3, name="big")(inputs)
    tiny = keras.layers.Conv2D(4, 3, name="tiny")(inputs)
    layer = keras.layers.Add(name="merge") if merge == "add" \
        else keras.layers.Concatenate(name="merge")
    y = layer([big, tiny])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(y)))
    rng = np.random.default_rng(0)
    kernel, bias = model.get_layer("tiny").get_weights()
    model.get_layer("tiny").set_weights([kernel * 2.0**-30, bias * 0])
    x = rng.uniform(-1, 1, (16, 6, 6, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=16, batch_size=16)
    fracs = [float(np.max(qmodel.get_layer(n).out_quantizer.frac_bits)) for n in ("big", "tiny")]
    assert fracs[1] - fracs[0] <= 30 - 7, fracs
    with eager_layer_calls():
        eager = qmodel(x).numpy()
    np.testing.assert_array_equal(eager, qmodel.predict(x, verbose=0))
    y = model(x).numpy()
    assert np.sum((eager - y) ** 2) < 1e-3 * np.sum(y ** 2)
    # a model that needs no change is left as it is
    assert fit_merge_alignment(qmodel) == []
