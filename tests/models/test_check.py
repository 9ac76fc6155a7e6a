"""check_quantization: weight channels that the quantization cannot represent."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models import check_quantization, quantize

SAMPLES = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
CONFIGS = {"default": None,
           "per-tensor-weights": {"weight_quantizer": {"bitwidth": 8, "axis": None}},
           "fixed-point-weights": {"weight_quantizer": {"bitwidth": 8, "fp_quantizer": True}}}


def _model(scaled=None, channel=1, factor=1e-7):
    """conv -> relu (per-axis outputs) -> conv2 -> relu2 (per-tensor: Flatten follows) ->
    Flatten -> dense; the output channel ``channel`` of layer ``scaled`` times ``factor``."""
    inputs = keras.Input((8, 8, 3), name="inp")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(3, name="dense")(x)
    model = keras.Model(inputs, x)
    if scaled is not None:
        layer = model.get_layer(scaled)
        kernel = layer.kernel.numpy()
        kernel[..., channel] *= factor
        layer.kernel.assign(kernel)
    return model


def _quantize(model, layer_name, config):
    q_config = None if CONFIGS[config] is None else {layer_name: CONFIGS[config]}
    return quantize(model, q_config=q_config, samples=SAMPLES, num_samples=len(SAMPLES))


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("layer_name", ["conv", "conv2"])
def test_channel_scaled_by_1e7_is_reported(layer_name, config):
    healthy = _quantize(_model(), layer_name, config)
    assert check_quantization(healthy) == []
    assert check_quantization(healthy, samples=SAMPLES) == []
    sick = _quantize(_model(scaled=layer_name), layer_name, config)
    issues = check_quantization(sick, samples=SAMPLES)
    assert len(issues) == 1, issues
    assert issues[0].startswith(f"{layer_name}: inaccurate weight scales quantization")
    assert "channel(s) 1 of" in issues[0], issues
    assert check_quantization(sick) == issues


@pytest.mark.parametrize("layer_name,relu", [("conv", "relu"), ("conv2", "relu2")])
def test_reported_channel_outputs_are_lost(layer_name, relu):
    """The report on per-axis QFloat weights is true: the scaled channel is representable by
    the weights, but the OutputQuantizer after the layer quantizes its outputs to zero."""
    model = _model(scaled=layer_name)
    qmodel = _quantize(model, layer_name, "default")
    float_out = keras.Model(model.inputs, model.get_layer(relu).output)(SAMPLES).numpy()
    quant_out = keras.Model(qmodel.inputs, qmodel.get_layer(relu).output)(SAMPLES)
    quant_out = quant_out.to_float().numpy()
    assert np.any(float_out[..., 1] > 0)
    assert np.all(quant_out[..., 1] == 0)
    assert np.any(quant_out[..., 0] != 0)
    assert any(relu in i and "channel(s) 1 of" in i for i in check_quantization(qmodel))


def test_channel_scaled_after_quantize_is_reported():
    """A quantized model whose kernel is edited afterwards (weights quantized on the fly)."""
    qmodel = _quantize(_model(), "conv2", "default")
    conv2 = qmodel.get_layer("conv2")
    kernel = conv2.kernel.numpy()
    scaled = kernel.copy()
    scaled[..., [1, 3]] *= 1e-7
    conv2.kernel.assign(scaled)
    issues = check_quantization(qmodel)
    assert len(issues) == 1 and issues[0].startswith("conv2:"), issues
    assert "channel(s) 1, 3 of 5" in issues[0], issues
    conv2.kernel.assign(kernel)
    assert check_quantization(qmodel) == []


def test_last_layer_per_axis_scales_not_reported():
    """Without a following OutputQuantizer, per-axis scales reach the (dequantized) outputs as
    they are: a small channel of the last Dense is represented, nothing to report."""
    model = _model(scaled="dense")
    qmodel = _quantize(model, "dense", "default")
    assert check_quantization(qmodel) == []
    np.testing.assert_allclose(qmodel(SAMPLES).numpy()[:, 1], model(SAMPLES).numpy()[:, 1],
                               rtol=0.1, atol=1e-9)


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_channel_scaled_by_1e2(config):
    """A channel 100 times smaller than the others keeps its levels with QFloat weights (all
    of them per-axis, at least one step with the per-tensor scale of 8-bit weights): nothing to
    report. FixedPoint weights clamp their fractional bits to the value bits (step 2^-7 here),
    which zeroes that channel: reported."""
    qmodel = _quantize(_model(scaled="conv2", factor=1e-2), "conv2", config)
    issues = check_quantization(qmodel)
    conv2 = qmodel.get_layer("conv2")
    channel = conv2.weight_quantizer.quantize(conv2.kernel).to_float().numpy()[..., 1]
    if config == "fixed-point-weights":
        assert np.all(channel == 0)
        assert len(issues) == 1 and "conv2" in issues[0] and "channel(s) 1 of 5" in issues[0]
    else:
        assert len(np.unique(channel)) > (8 if config == "default" else 2)
        assert issues == []
