"""Tests of quantizeml.layers.depthwise (QuantizedDepthwiseConv2D, DepthwiseConv2DTranspose,
QuantizedDepthwiseConv2DTranspose)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.depthwise import (DepthwiseConv2DTranspose, QuantizedDepthwiseConv2D,
                                         QuantizedDepthwiseConv2DTranspose)
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import INPUTS, frac, ints, random_inputs, single_layer_model
from tests.layers.test_convolution import (OQ, WEIGHTS, calibrate_output, check_against_float,
                                           finish_reference, fold, grid_step, np_conv2d,
                                           np_conv2d_transpose, weight_ints)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 5, 5, 3)
KINDS = list(INPUTS)  # per-axis FixedPoint and QFloat inputs are accepted as they are


def input_ints(x, multiplier):
    """Integer values, and per-output-channel frac_bits and scales of a depthwise input."""
    channels = x.shape[-1]
    xf = np.repeat(np.broadcast_to(frac(x), (channels,)), multiplier)
    sx = None
    if isinstance(x, QFloat):
        sx = np.repeat(np.broadcast_to(np.asarray(x.scales, np.float64), (channels,)),
                       multiplier)
    return ints(x), xf, sx


def per_channel(fn, x, w):
    """Applies a single-channel reference ``fn(x_c, w_cm)`` to each (channel, multiplier):
    output ``c * M + m`` (w has shape (kh, kw, C, M))."""
    outs = [fn(x[..., c:c + 1], w[:, :, c:c + 1, m:m + 1])
            for c in range(w.shape[2]) for m in range(w.shape[3])]
    return np.concatenate(outs, axis=-1)


def depthwise_weights(layer):
    """The quantized depthwise kernel, as the layer quantizes it ((kh, kw, 1, C*M) view)."""
    kernel = layer.depthwise_kernel
    kh, kw, c, m = kernel.shape
    w = layer.weight_quantizer(tf.reshape(kernel, (kh, kw, 1, c * m)))
    wv, wf, sw = weight_ints(w)
    return w, wv.reshape(kh, kw, c, m), wf, sw


# ---- QuantizedDepthwiseConv2D ------------------------------------------------------------------
CASES = {
    "valid-w-per-axis": (dict(kernel_size=3), "per-axis"),
    "same-stride2-w-per-tensor": (dict(kernel_size=3, padding="same", strides=2),
                                  "per-tensor"),
    "same-dilation2-mult2-w-fp": (dict(kernel_size=2, padding="same", dilation_rate=2,
                                       depth_multiplier=2), "fp-quantizer"),
    "valid-mult3-nobias-w-per-axis": (dict(kernel_size=(3, 2), depth_multiplier=3,
                                           use_bias=False), "per-axis"),
}


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_depthwise_numerics(case, kind, oq):
    x = INPUTS[kind](SHAPE)
    args, weights = CASES[case]
    quant_config = {"weight_quantizer": WEIGHTS[weights]}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(bias_initializer="random_normal", **args)
    layer = QuantizedDepthwiseConv2D(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    multiplier = layer.depth_multiplier
    xv, xf, sx = input_ints(x, multiplier)
    w, wv, wf, sw = depthwise_weights(layer)
    acc = per_channel(lambda xc, wc: np_conv2d(xc, wc, layer.strides, layer.padding,
                                               layer.dilation_rate), xv, wv)
    acc_frac, acc_scales = xf + wf, fold(sx, sw)
    ref, ref_frac = finish_reference(layer, acc, acc_frac, acc_scales)
    channels = SHAPE[-1] * multiplier
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (channels,)),
                                  np.broadcast_to(ref_frac, (channels,)))
    assert isinstance(y, QFloat if (oq is None and acc_scales is not None) else FixedPoint)
    float_layer = keras.layers.DepthwiseConv2D(**kwargs)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    x_abs = np.abs(x.to_float().numpy().astype(np.float64))
    ones = np.ones((*layer.kernel_size, SHAPE[-1], multiplier))
    sum_abs = per_channel(lambda xc, wc: np_conv2d(xc, wc, layer.strides, layer.padding,
                                                   layer.dilation_rate), x_abs, ones)
    check_against_float(layer, float_layer, x, y, sum_abs, w, grid_step(acc_frac, acc_scales))


# ---- DepthwiseConv2DTranspose (float) and its quantized twin ----------------------------------
TRANSPOSE_CASES = {
    "valid-w-per-axis": (dict(kernel_size=3), "per-axis"),
    "same-stride2-w-per-tensor": (dict(kernel_size=3, strides=2, padding="same"),
                                  "per-tensor"),
    "valid-stride2-nobias-w-fp": (dict(kernel_size=2, strides=2, use_bias=False),
                                  "fp-quantizer"),
    "same-stride2-outpad-w-per-axis": (dict(kernel_size=3, strides=2, padding="same",
                                            output_padding=1), "per-axis"),
}


def float_transpose_reference(layer, x):
    """Each channel transposed-convolved alone with the float kernel, numpy float64."""
    x = np.asarray(x, np.float64)
    out_hw = layer.compute_output_shape(x.shape)[1:3]
    y = per_channel(lambda xc, wc: np_conv2d_transpose(xc, wc, out_hw, layer.strides,
                                                       layer.padding), x,
                    layer.depthwise_kernel.numpy().astype(np.float64))
    return y + (layer.bias.numpy() if layer.use_bias else 0)


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES), ids=list(TRANSPOSE_CASES))
def test_depthwise_transpose_float(case):
    layer = DepthwiseConv2DTranspose(bias_initializer="random_normal",
                                     **TRANSPOSE_CASES[case][0])
    x = tf.random.normal(SHAPE)
    y = layer(x)
    assert y.shape == layer.compute_output_shape(SHAPE)
    np.testing.assert_allclose(y.numpy(), float_transpose_reference(layer, x), rtol=1e-5,
                               atol=1e-5)
    # symbolic shape inference
    assert DepthwiseConv2DTranspose(**TRANSPOSE_CASES[case][0])(
        keras.Input(SHAPE[1:])).shape[1:] == y.shape[1:]


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES), ids=list(TRANSPOSE_CASES))
def test_depthwise_transpose_numerics(case, kind, oq):
    x = INPUTS[kind](SHAPE)
    args, weights = TRANSPOSE_CASES[case]
    quant_config = {"weight_quantizer": WEIGHTS[weights]}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(bias_initializer="random_normal", **args)
    layer = QuantizedDepthwiseConv2DTranspose(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    xv, xf, sx = input_ints(x, 1)
    w, wv, wf, sw = depthwise_weights(layer)

    def transpose(xc, wc):
        return np_conv2d_transpose(xc, wc, y.shape[1:3], layer.strides, layer.padding)

    acc = per_channel(transpose, xv, wv)
    acc_frac, acc_scales = xf + wf, fold(sx, sw)
    ref, ref_frac = finish_reference(layer, acc, acc_frac, acc_scales)
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (3,)), np.broadcast_to(ref_frac, (3,)))
    float_layer = DepthwiseConv2DTranspose(**kwargs)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    x_abs = np.abs(x.to_float().numpy().astype(np.float64))
    sum_abs = per_channel(transpose, x_abs, np.ones((*layer.kernel_size, 3, 1)))
    check_against_float(layer, float_layer, x, y, sum_abs, w, grid_step(acc_frac, acc_scales))


# ---- common checks ----------------------------------------------------------------------------
LAYERS = {
    "depthwise": lambda **kw: QuantizedDepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                                       **kw),
    "depthwise-transpose": lambda **kw: QuantizedDepthwiseConv2DTranspose(3, strides=2,
                                                                          padding="same", **kw),
}
FULL_CONFIG = {"weight_quantizer": {"bitwidth": 4, "axis": None},
               "bias_quantizer": {"bitwidth": 12}, "output_quantizer": {"bitwidth": 8},
               "buffer_bitwidth": 24}


def test_signature_parity_and_targets():
    assert check_signature_parity(QuantizedDepthwiseConv2D, keras.layers.DepthwiseConv2D)
    assert check_signature_parity(QuantizedDepthwiseConv2DTranspose, DepthwiseConv2DTranspose)
    assert QUANTIZATION_TARGETS[keras.layers.DepthwiseConv2D] is QuantizedDepthwiseConv2D
    assert QUANTIZATION_TARGETS[DepthwiseConv2DTranspose] is QuantizedDepthwiseConv2DTranspose


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("quant_config", [None, FULL_CONFIG], ids=["default", "full"])
def test_config_roundtrip(name, quant_config):
    clone = check_config_roundtrip(LAYERS[name](quant_config=quant_config))
    assert clone.quant_config == (quant_config or {})


def test_float_transpose_config_roundtrip():
    clone = check_config_roundtrip(DepthwiseConv2DTranspose(3, strides=2, padding="same",
                                                            output_padding=1,
                                                            activation="relu"))
    assert clone.output_padding == (1, 1) and clone.strides == (2, 2)


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor-in", "per-axis-in"])
def test_save_load_h5(name, per_axis):
    layer = LAYERS[name](quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis, out_range=20.0)
    check_save_load(model, random_inputs(SHAPE), formats=("h5",))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_save_load_savedmodel(name):
    layer = LAYERS[name](quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=True, out_range=20.0)
    check_save_load(model, random_inputs(SHAPE), formats=("tf",))


def test_float_transpose_save_load_h5():
    inputs = keras.Input(SHAPE[1:])
    model = keras.Model(inputs, DepthwiseConv2DTranspose(3, strides=2,
                                                         bias_initializer="ones")(inputs))
    check_save_load(model, random_inputs(SHAPE), formats=("h5",))


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_gradients_reach_float_weights(name):
    layer = LAYERS[name](quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=True, out_range=20.0)
    check_gradients_reach(model, random_inputs(SHAPE))
    assert len(model.trainable_variables) == 2


def test_qat_fit_decreases_loss():
    model = single_layer_model(QuantizedDepthwiseConv2D(3, padding="same"), SHAPE[1:])
    x = random_inputs((8, *SHAPE[1:]))
    target = keras.layers.DepthwiseConv2D(3, padding="same")(x).numpy()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    history = model.fit(x, target, epochs=6, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_float_inputs_raise(name):
    with pytest.raises(TypeError, match="dw_layer.*expected FixedPoint or QFloat"):
        LAYERS[name](name="dw_layer")(tf.zeros(SHAPE))


BAD_CONFIGS = {
    "bitwidth-0": ({"weight_quantizer": {"bitwidth": 0}}, "bitwidth expected an int in"),
    "bitwidth-33": ({"weight_quantizer": {"bitwidth": 33}}, "bitwidth expected an int in"),
    "unknown-key": ({"dw_weight_quantizer": {}}, "unknown keys"),
    "weight-axis-2": ({"weight_quantizer": {"axis": -2}}, "axis expected -1"),
}


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("bad", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_quant_config_raises(name, bad):
    config, match = BAD_CONFIGS[bad]
    with pytest.raises(ValueError, match=f"dw_layer.*{match}"):
        LAYERS[name](name="dw_layer", quant_config=config)


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_activation_raises(name):
    with pytest.raises(ValueError, match="dw_layer: activation expected None or 'linear'"):
        LAYERS[name](name="dw_layer", activation="relu")


@pytest.mark.parametrize("kwargs,match", [
    (dict(strides=(2, 1)), "strides expected equal"),
    (dict(padding="full"), "padding expected 'valid' or 'same'"),
    (dict(strides=2, output_padding=2), "output_padding expected lower than strides"),
    (dict(kernel_size=0), "kernel_size expected an int >= 1"),
    (dict(data_format="channels_first"), "data_format expected 'channels_last'"),
], ids=["strides", "padding", "output-padding", "kernel-size", "data-format"])
def test_float_transpose_argument_errors(kwargs, match):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=f"dwt: {match}"):
        DepthwiseConv2DTranspose(name="dwt", **kwargs)
