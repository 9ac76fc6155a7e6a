"""Overflow: inputs that drive an integer buffer past its range are reported by
check_quantization (naming the layer), never wrapped silently."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models import QuantizationParams, check_quantization, quantize


def _dense_model(features):
    inputs = keras.Input((features,), name="input")
    x = keras.layers.Dense(4, name="wide")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(1, name="head")(x)
    model = keras.Model(inputs, outputs)
    layer = model.get_layer("wide")
    layer.set_weights([np.ones((features, 4), np.float32), np.zeros(4, np.float32)])
    return model


def _calibration(features, n=64):
    """One feature up to 1, the others tiny: the accumulators stay far below 2^31."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1e-3, (n, features)).astype(np.float32)
    x[:, 0] = rng.uniform(0, 1, n)
    return x


def _buffer_issues(issues, layer):
    return [i for i in issues if i.startswith(f"{layer}:") and "buffer values clipped" in i]


@pytest.mark.parametrize("qparams", [
    # 15-bit inputs x 16-bit weights, 8 features: up to 8 * 16384 * 32767 > 2^31 (a
    # calibration sample reaches 16384 * 32767 on one feature only: no saturation)
    QuantizationParams(activation_bits=15, weight_bits=16, input_weight_bits=16,
                       output_bits=15, buffer_bits=32),
    # 8-bit x 8-bit, buffer_bits 16 in the quant_config: 8 * 127 * 127 > 2^15
    QuantizationParams(buffer_bits=16),
])
def test_buffer_overflow_reported(qparams):
    features = 8
    model = _dense_model(features)
    qmodel = quantize(model, qparams=qparams, samples=_calibration(features))
    # on samples like the calibration ones, no buffer saturates
    assert not _buffer_issues(check_quantization(qmodel, samples=_calibration(features)),
                              "wide")
    # huge inputs: the InputQuantizer saturates to its largest integer on every feature,
    # and the all-ones kernel sums them past the buffer range
    huge = np.full((4, features), 1e6, np.float32)
    issues = check_quantization(qmodel, samples=huge)
    assert _buffer_issues(issues, "wide"), issues
    assert any("saturation" in i and "wide" in i for i in issues)
    # the outputs are clipped to the buffer range (saturation), not wrapped around: a wrapped
    # int32 accumulator would read negative (and the ReLU would zero it)
    out = qmodel(huge).numpy()
    assert np.all(np.isfinite(out))
    relu = keras.Model(qmodel.inputs, qmodel.get_layer("relu").output)(huge)
    values = relu.values.numpy() if hasattr(relu, "values") else np.asarray(relu)
    assert np.all(values > 0)


def test_no_issue_without_overflow():
    features = 8
    qmodel = quantize(_dense_model(features), samples=_calibration(features))
    issues = check_quantization(qmodel, samples=_calibration(features))
    assert not [i for i in issues if "buffer values clipped" in i], issues
