"""Tests of quantizeml.layers.separable (QuantizedSeparableConv2D)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.separable import QuantizedSeparableConv2D
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import INPUTS, frac, ints, random_inputs, single_layer_model
from tests.layers.test_convolution import (BUFFER_MAX, OQ, WEIGHTS, calibrate_output,
                                           finish_reference, fold, grid_step, np_conv2d,
                                           weight_ints)
from tests.layers.test_depthwise import per_channel
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 5, 5, 3)
KINDS = list(INPUTS)
FILTERS = 4
CASES = {
    "valid-dw-per-axis-pw-per-axis": (dict(kernel_size=3), "per-axis", "per-axis"),
    "same-stride2-dw-per-tensor-pw-fp": (dict(kernel_size=3, padding="same", strides=2),
                                         "per-tensor", "fp-quantizer"),
    "same-dilation2-mult2-dw-fp-pw-per-axis": (dict(kernel_size=2, padding="same",
                                                    dilation_rate=2, depth_multiplier=2),
                                               "fp-quantizer", "per-axis"),
    "valid-nobias-dw-per-axis-pw-per-tensor": (dict(kernel_size=(2, 3), use_bias=False),
                                               "per-axis", "per-tensor"),
}


def separable_reference(layer, x):
    """QuantizedSeparableConv2D in numpy int64.

    Returns:
        dict: outputs and frac_bits, and the intermediate terms of the float error bound.
    """
    multiplier = layer.depth_multiplier
    channels = x.shape[-1] * multiplier
    # depthwise stage: per-axis inputs as they are, frac/scales per output channel
    xv = ints(x)
    xf = np.repeat(np.broadcast_to(frac(x), (x.shape[-1],)), multiplier)
    kh, kw, c, m = layer.depthwise_kernel.shape
    dw = layer.dw_weight_quantizer(tf.reshape(layer.depthwise_kernel, (kh, kw, 1, c * m)))
    dwv, dwf, dws = weight_ints(dw)
    dwv = dwv.reshape(kh, kw, c, m)

    def depthwise(xc, wc):
        return np_conv2d(xc, wc, layer.strides, layer.padding, layer.dilation_rate)

    d = np.clip(per_channel(depthwise, xv, dwv), -BUFFER_MAX - 1, BUFFER_MAX)
    d_frac = np.broadcast_to(xf + dwf, (channels,))
    # the scales exactly as the layer computes them (float32 products)
    d_scales = None
    if isinstance(x, QFloat):
        d_scales = np.repeat(np.broadcast_to(np.asarray(x.scales), (x.shape[-1],)), multiplier)
    if dws is not None:
        d_scales = np.asarray(dw.scales) if d_scales is None \
            else d_scales.astype(np.float32) * np.asarray(dw.scales)
    # alignment on one fractional bit (exact left shift)
    target = int(np.max(d_frac))
    d = d << (target - d_frac)
    # pointwise stage on the folded kernel, taken from the layer's own folding
    kernel, common = layer.folded_pointwise_kernel(
        None if d_scales is None else tf.constant(np.broadcast_to(d_scales, (channels,))
                                                  if np.ndim(d_scales) else d_scales))
    pw = layer.pw_weight_quantizer(kernel)
    pwv, pwf, pws = weight_ints(pw)
    acc = np_conv2d(d, pwv)
    common = None if common is None else np.asarray(common, np.float64)
    acc_frac, acc_scales = target + pwf, fold(common, pws)
    out, out_frac = finish_reference(layer, acc, acc_frac, acc_scales)
    return dict(out=out, out_frac=out_frac, acc_scales=acc_scales,
                acc_step=grid_step(acc_frac, acc_scales), dw=dw, pw=pw,
                d_real=d * grid_step(target, d_scales), kernel=kernel.numpy(),
                ratios=np.ones(channels) if common is None
                else np.broadcast_to(np.asarray(d_scales, np.float64) / common, (channels,)))


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_separable_numerics(case, kind, oq):
    x = INPUTS[kind](SHAPE)
    args, dw_weights, pw_weights = CASES[case]
    quant_config = {"dw_weight_quantizer": WEIGHTS[dw_weights],
                    "pw_weight_quantizer": WEIGHTS[pw_weights]}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(filters=FILTERS, bias_initializer="random_normal", **args)
    layer = QuantizedSeparableConv2D(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    ref = separable_reference(layer, x)
    np.testing.assert_array_equal(ints(y), ref["out"])
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (FILTERS,)),
                                  np.broadcast_to(ref["out_frac"], (FILTERS,)))
    assert isinstance(y, QFloat if (oq is None and ref["acc_scales"] is not None)
                      else FixedPoint)
    # float reference. Bound, per output o:
    #   sum_c |pw[c, o]| * e_c           with e_c = sum|x| * dw_step_c / 2 (depthwise weights)
    # + pw_step_o / 2 * sum_c |d_c| / r_c (folded pointwise weights W' = pw * r_c, rounded to
    #                                      half their step; d_c the exact depthwise outputs)
    # + acc_step / 2 + |b| 2^-15 (bias) + 2^-frac_out / 2 + |y| 2^-8 (output quantizer)
    # + 1e-4 (1 + |y|) (float32 reference)
    float_layer = keras.layers.SeparableConv2D(**kwargs)
    y_float = float_layer(x.to_float()).numpy()
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    y_float = float_layer(x.to_float()).numpy()
    x_abs = np.abs(x.to_float().numpy().astype(np.float64))
    channels = SHAPE[-1] * layer.depth_multiplier
    ones = np.ones((*layer.kernel_size, SHAPE[-1], layer.depth_multiplier))
    sum_abs = per_channel(lambda xc, wc: np_conv2d(xc, wc, layer.strides, layer.padding,
                                                   layer.dilation_rate), x_abs, ones)
    dw_step = np.broadcast_to(grid_step(frac(ref["dw"]), getattr(ref["dw"], "scales", None)),
                              (channels,))
    pw_step = np.broadcast_to(grid_step(frac(ref["pw"]), getattr(ref["pw"], "scales", None)),
                              (FILTERS,))
    pw = np.abs(layer.pointwise_kernel.numpy()[0, 0].astype(np.float64))
    bound = (sum_abs * dw_step / 2) @ pw \
        + pw_step / 2 * (np.abs(ref["d_real"]) / ref["ratios"]).sum(-1, keepdims=True) \
        + 1e-4 * (1 + np.abs(y_float))
    if layer.use_bias:
        bound += ref["acc_step"] / 2 + np.abs(layer.bias.numpy()) * 2.0**-15
    if layer.out_quantizer is not None:
        bound += 2.0**-float(frac(layer.out_quantizer)) / 2 + np.abs(y_float) * 2.0**-8
    err = np.abs(y.to_float().numpy() - y_float)
    assert np.all(err <= bound), float(np.max(err - bound))


def test_folded_pointwise_kernel():
    layer = QuantizedSeparableConv2D(FILTERS, 3)
    layer(INPUTS["fp-per-tensor"](SHAPE))
    scales = tf.constant([0.5, 2.0, 1.0])
    kernel, common = layer.folded_pointwise_kernel(scales)
    assert float(common) == 2.0
    np.testing.assert_allclose(kernel.numpy()[0, 0],
                               layer.pointwise_kernel.numpy()[0, 0] * [[0.25], [1.0], [0.5]])
    kernel, common = layer.folded_pointwise_kernel(tf.constant(0.3))
    assert kernel is layer.pointwise_kernel and float(common) == pytest.approx(0.3)
    assert layer.folded_pointwise_kernel(None) == (layer.pointwise_kernel, None)


# ---- common checks ----------------------------------------------------------------------------
def make_layer(**kwargs):
    return QuantizedSeparableConv2D(FILTERS, 3, padding="same", depth_multiplier=2, **kwargs)


FULL_CONFIG = {"dw_weight_quantizer": {"bitwidth": 4, "axis": None},
               "pw_weight_quantizer": {"bitwidth": 6}, "bias_quantizer": {"bitwidth": 12},
               "output_quantizer": {"bitwidth": 8}, "buffer_bitwidth": 28}


def test_signature_parity_and_target():
    assert check_signature_parity(QuantizedSeparableConv2D, keras.layers.SeparableConv2D)
    assert QUANTIZATION_TARGETS[keras.layers.SeparableConv2D] is QuantizedSeparableConv2D


@pytest.mark.parametrize("quant_config", [None, FULL_CONFIG], ids=["default", "full"])
def test_config_roundtrip(quant_config):
    clone = check_config_roundtrip(make_layer(quant_config=quant_config))
    assert clone.quant_config == (quant_config or {})


@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor-in", "per-axis-in"])
def test_save_load_h5(per_axis):
    layer = make_layer(quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis, out_range=20.0)
    check_save_load(model, random_inputs(SHAPE), formats=("h5",))


@pytest.mark.slow
def test_save_load_savedmodel():
    layer = make_layer(quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=True, out_range=20.0)
    check_save_load(model, random_inputs(SHAPE), formats=("tf",))


def test_gradients_reach_float_weights():
    layer = make_layer(quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=True, out_range=20.0)
    check_gradients_reach(model, random_inputs(SHAPE))
    assert len(model.trainable_variables) == 3  # depthwise, pointwise kernels and bias


def test_qat_fit_decreases_loss():
    model = single_layer_model(QuantizedSeparableConv2D(FILTERS, 3, padding="same"),
                               SHAPE[1:])
    x = random_inputs((8, *SHAPE[1:]))
    target = keras.layers.SeparableConv2D(FILTERS, 3, padding="same")(x).numpy()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    history = model.fit(x, target, epochs=6, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history


# ---- errors -----------------------------------------------------------------------------------
def test_float_inputs_raise():
    with pytest.raises(TypeError, match="sep_layer.*expected FixedPoint or QFloat"):
        make_layer(name="sep_layer")(tf.zeros(SHAPE))


@pytest.mark.parametrize("config,match", [
    ({"dw_weight_quantizer": {"bitwidth": 0}}, "bitwidth expected an int in"),
    ({"pw_weight_quantizer": {"bitwidth": 33}}, "bitwidth expected an int in"),
    ({"buffer_bitwidth": 0}, "buffer_bitwidth expected an int in"),
    ({"weight_quantizer": {}}, "unknown keys"),
    ({"pw_weight_quantizer": {"axis": 2}}, "axis expected -1"),
], ids=["dw-bitwidth-0", "pw-bitwidth-33", "buffer-0", "unknown-key", "pw-axis-2"])
def test_bad_quant_config_raises(config, match):
    with pytest.raises(ValueError, match=f"sep_layer.*{match}"):
        make_layer(name="sep_layer", quant_config=config)


def test_activation_raises():
    with pytest.raises(ValueError, match="sep_layer: activation expected None or 'linear'"):
        make_layer(name="sep_layer", activation="relu")
