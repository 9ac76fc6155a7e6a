"""Tests of grouped convolutions (``QuantizedConv2D(groups=g)``, the RegNet Conv2D): numpy
int64 references per group, float equivalence, config, reload, QAT gradients, quantize()
and the twin-table contract (``tests/layers/test_twins.py``) on a grouped model."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tests.layers.test_twins as twins
from quantizeml.layers import eager_layer_calls
from quantizeml.layers.convolution import PaddedConv2D, QuantizedConv2D
from quantizeml.layers.registry import twin_spec
from quantizeml.models import quantize
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, fixed_point, frac, ints, random_inputs,
                                     single_layer_model)
from tests.layers.test_convolution import (WEIGHTS, aligned_ints, calibrate_output,
                                           check_against_float, finish_reference, fold,
                                           grid_step, np_conv2d, weight_ints)
from tests.utils import check_config_roundtrip, check_gradients_reach, check_save_load

SHAPE = (2, 7, 7, 8)
OQ = {"bitwidth": 8}


def np_grouped_conv2d(x, w, groups, strides=(1, 1), padding="valid", dilation=(1, 1),
                      pad_value=0):
    """Grouped conv2d of NHWC x with a (kh, kw, C / groups, K) kernel: the K / groups outputs
    of group g see the C / groups input channels of group g (numpy, int64 or float)."""
    cg, kg = x.shape[-1] // groups, w.shape[-1] // groups
    pad = np.broadcast_to(np.asarray(pad_value), (x.shape[-1],))
    return np.concatenate([
        np_conv2d(x[..., g * cg:(g + 1) * cg], w[..., g * kg:(g + 1) * kg], strides, padding,
                  dilation, pad[g * cg:(g + 1) * cg]) for g in range(groups)], axis=-1)


def grouped_reference(layer, x):
    """QuantizedConv2D(groups) in numpy: (integer outputs, their frac_bits, accumulator
    scales and frac_bits). Per-axis inputs are aligned on their largest fractional bits."""
    xv, xf, sx = aligned_ints(x)
    wv, wf, sw = weight_ints(layer.weight_quantizer(layer.kernel))
    pad_value = 0
    if layer.padding_value is not None:
        value = np.asarray(layer.padding_value, np.float64) / (1.0 if sx is None else sx)
        int_max = 2**x.value_bits - 1
        pad_value = np.clip(np.floor(value * 2.0**xf + 0.5), -int_max - 1,
                            int_max).astype(np.int64)
    acc = np_grouped_conv2d(xv, wv, layer.groups, layer.strides, layer.padding,
                            layer.dilation_rate, pad_value)
    acc_frac, acc_scales = xf + wf, fold(sx, sw)
    out, out_frac = finish_reference(layer, acc, acc_frac, acc_scales)
    return out, out_frac, acc_scales, acc_frac


CASES = {
    "g2-valid-w-per-axis": (dict(groups=2, kernel_size=3), "per-axis"),
    "g4-same-w-per-axis": (dict(groups=4, kernel_size=3, padding="same"), "per-axis"),
    "g2-same-stride2-w-per-tensor": (dict(groups=2, kernel_size=3, padding="same",
                                          strides=2), "per-tensor"),
    "g4-valid-stride2x1-w-per-axis": (dict(groups=4, kernel_size=(3, 2), strides=(2, 1)),
                                      "per-axis"),
    "g2-same-dilation2-w-fp": (dict(groups=2, kernel_size=3, padding="same",
                                    dilation_rate=2), "fp-quantizer"),
    "g8-depthwise-like-nobias": (dict(groups=8, kernel_size=3, use_bias=False), "per-axis"),
}
INPUT_KINDS = ["fp-per-tensor", "fp-per-axis", "qfloat-per-tensor"]


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", INPUT_KINDS, ids=INPUT_KINDS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_grouped_conv_numerics(case, kind, oq):
    x = INPUTS[kind](SHAPE)
    args, weights = CASES[case]
    quant_config = {"weight_quantizer": WEIGHTS[weights]}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(filters=8, bias_initializer="random_normal", **args)
    layer = QuantizedConv2D(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    assert layer.kernel.shape[-2] == 8 // args["groups"]
    ref, ref_frac, acc_scales, acc_frac = grouped_reference(layer, x)
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (8,)),
                                  np.broadcast_to(ref_frac, (8,)))
    assert isinstance(y, FixedPoint if (oq or acc_scales is None) else QFloat)
    # traced == op by op
    with eager_layer_calls():
        eager = layer(x)
    np.testing.assert_array_equal(ints(tf.function(layer)(x)), ints(eager))
    # close to the float Keras Conv2D(groups)
    float_layer = keras.layers.Conv2D(**kwargs)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    x_abs = np.abs(x.to_float().numpy().astype(np.float64))
    ones = np.ones((*layer.kernel_size, 8 // args["groups"], 8))
    sum_abs = np_grouped_conv2d(x_abs, ones, args["groups"], layer.strides, layer.padding,
                                layer.dilation_rate)
    check_against_float(layer, float_layer, x, y, sum_abs, layer.weight_quantizer(layer.kernel),
                        grid_step(acc_frac, acc_scales))


def test_grouped_conv_wide_inputs_float64_carrier():
    """20-bit inputs: the sums need the float64 carrier (forward), and the QAT gradients of a
    grouped convolution are computed in float32 (no float64 grouped gradient on CPU)."""
    x = fixed_point(SHAPE, value_bits=20)
    layer = QuantizedConv2D(8, 3, groups=4, padding="same", bias_initializer="random_normal")
    y = layer(x)
    np.testing.assert_array_equal(ints(y), grouped_reference(layer, x)[0])
    assert np.abs(ints(y)).max() > 2**24  # past float32
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x, training=True).to_float()))
    grads = tape.gradient(loss, [layer.kernel, layer.bias])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_grouped_conv_padding_value():
    x = INPUTS["fp-per-axis"](SHAPE)
    layer = QuantizedConv2D(8, 3, groups=2, strides=2, padding_value=[0.5, -1.0] * 4,
                            bias_initializer="random_normal")
    y = layer(x)
    np.testing.assert_array_equal(ints(y), grouped_reference(layer, x)[0])
    float_layer = PaddedConv2D(8, 3, groups=2, strides=2, padding_value=[0.5, -1.0] * 4)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights())
    np.testing.assert_allclose(y.to_float().numpy(), float_layer(x.to_float()).numpy(),
                               atol=0.2)


def test_config_roundtrip():
    layer = QuantizedConv2D(8, 3, groups=4, padding="same",
                            quant_config={"weight_quantizer": {"bitwidth": 4},
                                          "output_quantizer": OQ})
    clone = check_config_roundtrip(layer)
    assert clone.groups == 4 and clone.quant_config == layer.quant_config


@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor-in", "per-axis-in"])
def test_save_load(per_axis):
    layer = QuantizedConv2D(8, 3, groups=2, padding="same", bias_initializer="random_normal",
                            quant_config={"output_quantizer": OQ})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis, out_range=20.0)
    check_save_load(model, random_inputs(SHAPE))


def test_qat_gradients():
    layer = QuantizedConv2D(8, 3, groups=4, padding="same", bias_initializer="random_normal",
                            quant_config={"output_quantizer": OQ})
    model = single_layer_model(layer, SHAPE[1:], out_range=20.0)
    check_gradients_reach(model, random_inputs(SHAPE), [layer.kernel, layer.bias])


def _regnet_block():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1, bias_initializer="random_normal")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2,
                            bias_initializer="random_normal", name="grouped")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, strides=2, groups=4, name="grouped4")(x)
    model = keras.Model(inputs, x)
    samples = np.random.default_rng(0).normal(size=(32, 8, 8, 4)).astype(np.float32)
    return model, samples


def test_quantize_model_close_to_float():
    model, samples = _regnet_block()
    qmodel = quantize(model, samples=samples)
    assert qmodel.get_layer("grouped").groups == 2
    assert qmodel.get_layer("grouped4").groups == 4
    expected = model.predict(samples, verbose=0)
    got = qmodel.predict(samples, verbose=0)
    err = np.abs(got - expected)
    assert err.max() <= 0.05 * np.abs(expected).max(), (err.max(), np.abs(expected).max())


def _grouped_case():
    inputs = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(8, 3, groups=2, bias_initializer="random_normal")(inputs)
    return keras.Model(inputs, y), twins._image((8, 8, 4))


def _grouped_twin_reference(layer, x):
    values, frac_bits, _, _ = grouped_reference(layer, x)
    return values, frac_bits


def test_twin_contract_grouped(monkeypatch, tmp_path):
    """The twin table's contract (config, eager == traced, numpy reference, h5/SavedModel
    reload, QAT gradients) on a Conv2D(groups=2) case."""
    monkeypatch.setitem(twins.CASES, QuantizedConv2D, _grouped_case)
    monkeypatch.setitem(twins.REFERENCES, QuantizedConv2D, _grouped_twin_reference)
    twins.test_twin(twin_spec(QuantizedConv2D), tmp_path)
