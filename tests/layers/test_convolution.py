"""Tests of quantizeml.layers.convolution (PaddedConv2D, QuantizedConv2D,
QuantizedConv2DTranspose) and of the shared reduction plumbing they use.

Integer references are written in numpy int64 from the integer inputs and the quantized
weights/biases taken from the layers' own quantizers; float references are the Keras layers.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.convolution import (PaddedConv2D, QuantizedConv2D,
                                           QuantizedConv2DTranspose)
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, fixed_point, frac, ints, output_quantizer,
                                     random_inputs, single_layer_model)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 6, 6, 3)
OQ = {"bitwidth": 8}
BUFFER_MAX = 2**31 - 1


# ---- numpy references (shared with test_depthwise / test_separable / test_dense) -------------
def same_pads(size, kernel, stride, dilation):
    """TensorFlow's (before, after) 'SAME' padding along one axis."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def np_pad_same(x, kernel, strides, dilation, value=0):
    """Pads NHWC x for a 'SAME' convolution with a scalar or per-channel value."""
    (t, b), (left, r) = [same_pads(x.shape[1 + i], kernel[i], strides[i], dilation[i])
                         for i in range(2)]
    n, h, w, c = x.shape
    out = np.empty((n, h + t + b, w + left + r, c), x.dtype)
    out[...] = np.broadcast_to(np.asarray(value, x.dtype), (c,))
    out[:, t:t + h, left:left + w, :] = x
    return out


def np_conv2d(x, w, strides=(1, 1), padding="valid", dilation=(1, 1), pad_value=0):
    """conv2d of NHWC x with an HWIO kernel w (int64 in, int64 out; float works too)."""
    if padding == "same":
        x = np_pad_same(x, w.shape[:2], strides, dilation, pad_value)
    kh, kw = w.shape[:2]
    eff = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation)]
    oh, ow = [(x.shape[1 + i] - eff[i]) // strides[i] + 1 for i in range(2)]
    y = np.zeros((x.shape[0], oh, ow, w.shape[3]), np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = x[:, r0:r0 + (oh - 1) * strides[0] + 1:strides[0],
                      c0:c0 + (ow - 1) * strides[1] + 1:strides[1], :]
            y += np.einsum("nhwc,cf->nhwf", patch, w[i, j])
    return y


def np_conv2d_transpose(x, w, out_hw, strides, padding, dilation=(1, 1)):
    """conv2d_transpose of NHWC x with a (kh, kw, out, in) kernel, cropped to ``out_hw``."""
    kh, kw = w.shape[:2]
    n, h, wd, _ = x.shape
    eff = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation)]
    full = [(s - 1) * st + e for s, st, e in zip((h, wd), strides, eff)]
    pads = [0, 0]
    if padding == "same":
        pads = [max((s - 1) * st + e - o, 0) // 2
                for s, st, e, o in zip((h, wd), strides, eff, out_hw)]
    size = [max(f, p + o) for f, p, o in zip(full, pads, out_hw)]
    y = np.zeros((n, size[0], size[1], w.shape[2]), np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            contrib = np.einsum("nhwc,fc->nhwf", x, w[i, j])
            y[:, r0:r0 + (h - 1) * strides[0] + 1:strides[0],
              c0:c0 + (wd - 1) * strides[1] + 1:strides[1], :] += contrib
    return y[:, pads[0]:pads[0] + out_hw[0], pads[1]:pads[1] + out_hw[1], :]


def aligned_ints(x):
    """Integer values, frac_bits and scales of an input as a reducing layer aligns it: a
    per-axis FixedPoint is left-shifted onto its largest fractional bit."""
    values, frac_bits = ints(x), frac(x)
    target = np.max(frac_bits)
    values = values << (target - frac_bits)
    scales = np.asarray(x.scales, np.float64) if isinstance(x, QFloat) else None
    return values, target, scales


def weight_ints(w):
    """Integer values, frac_bits and scales (None for a FixedPoint) of quantized weights."""
    scales = np.asarray(w.scales, np.float64) if isinstance(w, QFloat) else None
    return ints(w), frac(w), scales


def bias_ints(layer, acc_frac, acc_scales, channels):
    """The bias quantized by the layer's bias quantizer on the accumulator grid."""
    scales = np.ones(channels, np.float32) if acc_scales is None else acc_scales
    grid = QFloat(FixedPoint(tf.zeros(channels), 31,
                             tf.constant(np.broadcast_to(acc_frac, (channels,)), tf.float32)),
                  tf.constant(np.broadcast_to(scales, (channels,)), tf.float32))
    return ints(layer.bias_quantizer.quantize(layer.bias, grid))


def finish_reference(layer, acc, acc_frac, acc_scales):
    """Buffer clip, bias, buffer clip and output quantizer, in numpy int64."""
    acc = np.clip(acc, -BUFFER_MAX - 1, BUFFER_MAX)
    if layer.use_bias:
        acc = np.clip(acc + bias_ints(layer, acc_frac, acc_scales, acc.shape[-1]),
                      -BUFFER_MAX - 1, BUFFER_MAX)
    if layer.out_quantizer is not None:
        scales = None if acc_scales is None else np.broadcast_to(acc_scales, acc.shape[-1:])
        return output_quantizer(acc, acc_frac, layer.out_quantizer, scales)
    return acc, acc_frac


def fold(*scales):
    present = [s for s in scales if s is not None]
    return np.prod(np.broadcast_arrays(*present), axis=0) if present else None


def calibrate_output(layer, x):
    """Sets the output quantizer's range to 1.25 max|accumulator| (no output saturation)."""
    if layer.out_quantizer is None:
        return
    layer(x)  # builds the output quantizer
    oq, layer.out_quantizer = layer.out_quantizer, None
    acc = layer(x).to_float()
    layer.out_quantizer = oq
    oq.range_max.assign(1.25 * float(tf.reduce_max(tf.abs(acc))))


def grid_step(frac_bits, scales=None):
    """The real value of one integer step of a grid: ``scales * 2^-frac_bits``."""
    step = 2.0**-np.asarray(frac_bits, np.float64)
    return step if scales is None else step * np.asarray(scales, np.float64)


def check_against_float(layer, float_layer, x, y, sum_abs_x, w, acc_step):
    """|y - y_float| <= sum|x| * w_step / 2 (weights rounded to half their step
    w_step = w.scales * 2^-w.frac_bits) + acc_step / 2 + |b| * 2^-15 (bias: a 16-bit
    significand on the accumulator grid of step acc_step = x.scales * w.scales *
    2^-(x.frac_bits + w.frac_bits)) + when quantized: 2^-frac_out / 2 + |y| * 2^-8 (rounding,
    8-bit output scales) + 1e-4 (1 + |y|) (float32 reference)."""
    y_float = float_layer(x.to_float()).numpy()
    w_scales = np.asarray(w.scales) if isinstance(w, QFloat) else None
    w_step = np.broadcast_to(grid_step(frac(w), w_scales), y_float.shape[-1:])
    bound = sum_abs_x * w_step / 2 + 1e-4 * (1 + np.abs(y_float))
    if layer.use_bias:
        bound += acc_step / 2 + np.abs(layer.bias.numpy()) * 2.0**-15
    if layer.out_quantizer is not None:
        bound += 2.0**-float(frac(layer.out_quantizer)) / 2 + np.abs(y_float) * 2.0**-8
    err = np.abs(y.to_float().numpy() - y_float)
    assert np.all(err <= bound), float(np.max(err - bound))


# ---- QuantizedConv2D ---------------------------------------------------------------------------
# each case: (layer arguments, weight quantizer), the weight quantizers rotate over the cases
CONV_CASES = {
    "valid-w-per-axis": (dict(kernel_size=3), "per-axis"),
    "same-w-per-tensor": (dict(kernel_size=3, padding="same"), "per-tensor"),
    "same-stride2-w-fp": (dict(kernel_size=3, padding="same", strides=2), "fp-quantizer"),
    "valid-stride2-w-per-axis": (dict(kernel_size=(3, 2), strides=(2, 1)), "per-axis"),
    "same-dilation2-w-fp": (dict(kernel_size=3, padding="same", dilation_rate=2),
                            "fp-quantizer"),
    "valid-nobias-w-per-tensor": (dict(kernel_size=2, use_bias=False), "per-tensor"),
}
WEIGHTS = {"per-axis": {"bitwidth": 8}, "per-tensor": {"bitwidth": 4, "axis": None},
           "fp-quantizer": {"bitwidth": 8, "fp_quantizer": True}}
CONV_INPUTS = ["fp-per-tensor", "fp-per-axis", "qfloat-per-tensor"]


def conv_reference(layer, x):
    """QuantizedConv2D in numpy: (integer outputs, their frac_bits, accumulator scales and
    frac_bits)."""
    xv, xf, sx = aligned_ints(x)
    wv, wf, sw = weight_ints(layer.weight_quantizer(layer.kernel))
    pad_value = 0
    padding = layer.padding
    if layer.padding_value is not None:
        value = np.asarray(layer.padding_value, np.float64) / (1.0 if sx is None else sx)
        int_max = 2**x.value_bits - 1
        pad_value = np.clip(np.floor(value * 2.0**xf + 0.5), -int_max - 1, int_max)
        pad_value = pad_value.astype(np.int64)
    acc = np_conv2d(xv, wv, layer.strides, padding, layer.dilation_rate, pad_value)
    acc_frac, acc_scales = xf + wf, fold(sx, sw)
    out, out_frac = finish_reference(layer, acc, acc_frac, acc_scales)
    return out, out_frac, acc_scales, acc_frac


def sum_abs_conv(layer, x):
    """sum over each receptive field of |x| (the weight error multiplier), in float64."""
    x_abs = np.abs(x.to_float().numpy().astype(np.float64))
    ones = np.ones((*layer.kernel_size, x.shape[-1], 1))
    pad = 0 if layer.padding_value is None else np.abs(layer.padding_value)
    return np_conv2d(x_abs, ones, layer.strides, layer.padding, layer.dilation_rate, pad)


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", CONV_INPUTS, ids=CONV_INPUTS)
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_numerics(case, kind, oq):
    x = INPUTS[kind](SHAPE)
    args, weights = CONV_CASES[case]
    quant_config = {"weight_quantizer": WEIGHTS[weights], "bias_quantizer": {"bitwidth": 16}}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(filters=4, bias_initializer="random_normal", **args)
    layer = QuantizedConv2D(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    ref, ref_frac, acc_scales, acc_frac = conv_reference(layer, x)
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (4,)),
                                  np.broadcast_to(ref_frac, (4,)))
    assert isinstance(y, FixedPoint if (oq or acc_scales is None) else QFloat)
    float_layer = keras.layers.Conv2D(**kwargs)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    check_against_float(layer, float_layer, x, y, sum_abs_conv(layer, x),
                        layer.weight_quantizer(layer.kernel), grid_step(acc_frac, acc_scales))


PAD_VALUES = {"scalar": -0.75, "per-channel": [0.5, -1.25, 2.0]}


@pytest.mark.parametrize("kind", CONV_INPUTS, ids=CONV_INPUTS)
@pytest.mark.parametrize("strides", [1, 2], ids=["stride1", "stride2"])
@pytest.mark.parametrize("pad", list(PAD_VALUES), ids=list(PAD_VALUES))
def test_conv2d_padding_value(pad, strides, kind):
    x = INPUTS[kind](SHAPE)
    kwargs = dict(filters=4, kernel_size=3, strides=strides, padding="valid",
                  bias_initializer="random_normal", padding_value=PAD_VALUES[pad])
    layer = QuantizedConv2D(**kwargs)
    assert layer.padding == "same"  # padding_value overrides padding
    y = layer(x)
    ref = conv_reference(layer, x)[0]
    np.testing.assert_array_equal(ints(y), ref)
    # float twin: PaddedConv2D pads with the same (float) value
    float_layer = PaddedConv2D(**kwargs)
    y_float = float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights())
    y_float = float_layer(x.to_float()).numpy()
    # the reference pads with the value itself: numpy float conv
    manual = np_conv2d(x.to_float().numpy().astype(np.float64), layer.kernel.numpy(),
                       layer.strides, "same", layer.dilation_rate,
                       np.asarray(PAD_VALUES[pad])) + layer.bias.numpy()
    np.testing.assert_allclose(y_float, manual, rtol=1e-5, atol=1e-5)
    # quantized vs float: weight and bias errors as in check_against_float, plus the padding
    # value rounded on the input grid: |pad - pad_q| <= scale * 2^-frac / 2 per padded tap
    w = layer.weight_quantizer(layer.kernel)
    s_o = np.asarray(w.scales)
    sx = float(np.asarray(x.scales)) if isinstance(x, QFloat) else 1.0
    x_step = sx * 2.0**-float(np.max(frac(x)))
    bound = (sum_abs_conv(layer, x) * s_o / 2
             + 9 * x_step / 2 * np.abs(layer.kernel.numpy()).sum(axis=(0, 1, 2))
             + grid_step(np.max(frac(x)), s_o * sx) / 2
             + np.abs(layer.bias.numpy()) * 2.0**-15
             + 1e-4 * (1 + np.abs(y_float)))
    assert np.all(np.abs(y.to_float().numpy() - y_float) <= bound)


def test_padded_conv2d_matches_conv2d_with_zero_padding():
    x = tf.random.normal(SHAPE)
    padded = PaddedConv2D(4, 3, strides=2, padding_value=0.0)
    plain = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    padded(x)
    plain(x)
    plain.set_weights(padded.get_weights())
    np.testing.assert_allclose(padded(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-6)
    none = PaddedConv2D(4, 3, padding="valid")
    assert none(x).shape == (2, 4, 4, 4)


@pytest.mark.parametrize("value", ["a", [], [1.0, float("nan")], [[1.0]]],
                         ids=["str", "empty", "nan", "2d"])
def test_padding_value_errors(value):
    with pytest.raises(ValueError, match="padding_value expected"):
        PaddedConv2D(4, 3, padding_value=value)
    with pytest.raises(ValueError, match="padding_value expected"):
        QuantizedConv2D(4, 3, padding_value=value)


def test_padding_value_tensor_is_serialized_as_list():
    layer = QuantizedConv2D(4, 3, padding_value=tf.constant([1.0, 2.0, 3.0]))
    assert layer.get_config()["padding_value"] == [1.0, 2.0, 3.0]
    assert PaddedConv2D(4, 3, padding_value=np.float32(2.0)).padding_value == 2.0


def test_accumulator_saturates_to_buffer():
    """A tiny buffer clips the accumulator (and records it) like the numpy reference."""
    x = fixed_point(SHAPE, value_bits=7)
    layer = QuantizedConv2D(4, 3, use_bias=False, quant_config={"buffer_bitwidth": 12})
    y = layer(x)
    ref = np.clip(np_conv2d(ints(x), ints(layer.weight_quantizer(layer.kernel))),
                  -2**11, 2**11 - 1)
    np.testing.assert_array_equal(ints(y), ref)
    assert y.value_bits == 11
    assert layer._saturation["buffer"] > 0


# ---- QuantizedConv2DTranspose -----------------------------------------------------------------
TRANSPOSE_CASES = {
    "valid-w-per-axis": (dict(kernel_size=3), "per-axis"),
    "same-stride2-w-per-tensor": (dict(kernel_size=3, strides=2, padding="same"),
                                  "per-tensor"),
    "valid-stride2-w-fp": (dict(kernel_size=2, strides=2), "fp-quantizer"),
    "same-stride2-outpad-w-per-axis": (dict(kernel_size=3, strides=2, padding="same",
                                            output_padding=1), "per-axis"),
    "valid-dilation2-nobias-w-fp": (dict(kernel_size=3, dilation_rate=2, use_bias=False),
                                    "fp-quantizer"),
}


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", CONV_INPUTS, ids=CONV_INPUTS)
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES), ids=list(TRANSPOSE_CASES))
def test_conv2d_transpose_numerics(case, kind, oq):
    x = INPUTS[kind]((2, 4, 4, 3))
    args, weights = TRANSPOSE_CASES[case]
    quant_config = {"weight_quantizer": WEIGHTS[weights]}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(filters=5, bias_initializer="random_normal", **args)
    layer = QuantizedConv2DTranspose(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    xv, xf, sx = aligned_ints(x)
    w = layer.weight_quantizer(layer.quantizer_kernel())
    wv, wf, sw = weight_ints(w)
    acc = np_conv2d_transpose(xv, wv.transpose(0, 1, 3, 2), y.shape[1:3], layer.strides,
                              layer.padding, layer.dilation_rate)
    acc_step = grid_step(xf + wf, fold(sx, sw))
    ref, ref_frac = finish_reference(layer, acc, xf + wf, fold(sx, sw))
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (5,)),
                                  np.broadcast_to(ref_frac, (5,)))
    float_layer = keras.layers.Conv2DTranspose(**kwargs)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    x_abs = np.abs(x.to_float().numpy().astype(np.float64))
    ones = np.ones((*layer.kernel_size, 1, x.shape[-1]))
    sum_abs = np_conv2d_transpose(x_abs, ones, y.shape[1:3], layer.strides, layer.padding,
                                  layer.dilation_rate)
    check_against_float(layer, float_layer, x, y, sum_abs, w, acc_step)


# ---- common checks ----------------------------------------------------------------------------
LAYERS = {
    "conv2d": lambda **kw: QuantizedConv2D(4, 3, padding="same", **kw),
    "conv2d-padding-value": lambda **kw: QuantizedConv2D(4, 3, strides=2,
                                                         padding_value=[0.5, -1.0, 2.0], **kw),
    "conv2d-transpose": lambda **kw: QuantizedConv2DTranspose(4, 3, strides=2, padding="same",
                                                              **kw),
}
FULL_CONFIG = {"weight_quantizer": {"bitwidth": 4, "axis": None},
               "bias_quantizer": {"bitwidth": 12}, "output_quantizer": {"bitwidth": 8},
               "buffer_bitwidth": 24}


def test_signature_parity():
    assert check_signature_parity(QuantizedConv2D, keras.layers.Conv2D,
                                  extra=("quant_config", "padding_value"))
    assert check_signature_parity(PaddedConv2D, keras.layers.Conv2D, extra=("padding_value",))
    assert check_signature_parity(QuantizedConv2DTranspose, keras.layers.Conv2DTranspose)


def test_quantize_targets():
    assert QUANTIZATION_TARGETS[keras.layers.Conv2D] is QuantizedConv2D
    assert QUANTIZATION_TARGETS[PaddedConv2D] is QuantizedConv2D
    assert QUANTIZATION_TARGETS[keras.layers.Conv2DTranspose] is QuantizedConv2DTranspose


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("quant_config", [None, FULL_CONFIG], ids=["default", "full"])
def test_config_roundtrip(name, quant_config):
    layer = LAYERS[name](quant_config=quant_config)
    clone = check_config_roundtrip(layer)
    assert clone.quant_config == (quant_config or {})


def test_padded_conv2d_config_roundtrip():
    clone = check_config_roundtrip(PaddedConv2D(4, 3, padding_value=[1.0, 2.0]))
    assert clone.padding_value == [1.0, 2.0] and clone.padding == "same"


def save_load(name, per_axis, formats):
    layer = LAYERS[name](quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis, out_range=20.0)
    check_save_load(model, random_inputs(SHAPE), formats=formats)


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("per_axis", [False, True], ids=["per-tensor-in", "per-axis-in"])
def test_save_load_h5(name, per_axis):
    save_load(name, per_axis, ("h5",))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_save_load_savedmodel(name):
    save_load(name, True, ("tf",))


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_gradients_reach_float_weights(name):
    layer = LAYERS[name](quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPE[1:], out_range=20.0)
    check_gradients_reach(model, random_inputs(SHAPE))
    assert len(model.trainable_variables) == 2  # kernel and bias


def test_qat_fit_decreases_loss():
    layer = QuantizedConv2D(4, 3, padding="same")
    model = single_layer_model(layer, SHAPE[1:])
    x = random_inputs((8, *SHAPE[1:]))
    target = keras.layers.Conv2D(4, 3, padding="same")(x).numpy()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    history = model.fit(x, target, epochs=6, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_float_inputs_raise(name):
    layer = LAYERS[name](name="conv_layer")
    with pytest.raises(TypeError, match="conv_layer.*expected FixedPoint or QFloat"):
        layer(tf.zeros(SHAPE))


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_per_axis_qfloat_raises(name):
    layer = LAYERS[name](name="conv_layer")
    with pytest.raises(ValueError, match="conv_layer.*per-tensor scales"):
        layer(INPUTS["qfloat-per-axis"](SHAPE))


BAD_CONFIGS = {
    "bitwidth-0": ({"weight_quantizer": {"bitwidth": 0}}, "bitwidth expected an int in"),
    "bitwidth-33": ({"weight_quantizer": {"bitwidth": 33}}, "bitwidth expected an int in"),
    "bias-bitwidth-40": ({"bias_quantizer": {"bitwidth": 40}}, "bitwidth expected an int in"),
    "out-bitwidth-0": ({"output_quantizer": {"bitwidth": 0}}, "bitwidth expected an int in"),
    "buffer-33": ({"buffer_bitwidth": 33}, "buffer_bitwidth expected an int in"),
    "unknown-key": ({"weight_quantiser": {}}, "unknown keys"),
    "weight-axis-0": ({"weight_quantizer": {"axis": 0}}, "axis expected -1"),
    "not-a-dict": ({"weight_quantizer": 8}, "expected a dict"),
}


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("bad", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_quant_config_raises(name, bad):
    config, match = BAD_CONFIGS[bad]
    with pytest.raises((ValueError, TypeError), match=f"conv_layer.*{match}"):
        LAYERS[name](name="conv_layer", quant_config=config)


def test_activation_and_format_errors():
    with pytest.raises(ValueError, match="conv_layer: activation expected None or 'linear'"):
        QuantizedConv2D(4, 3, activation="relu", name="conv_layer")
    with pytest.raises(ValueError, match="conv_layer: activation expected None or 'linear'"):
        QuantizedConv2DTranspose(4, 3, activation="relu", name="conv_layer")
    assert QuantizedConv2D(4, 3, activation="linear").quant_config == {}
    with pytest.raises(ValueError, match="conv_layer: data_format expected 'channels_last'"):
        QuantizedConv2D(4, 3, data_format="channels_first", name="conv_layer")
    # groups > 1 is supported (tests/layers/test_grouped_conv.py); Keras checks the filters
    with pytest.raises(ValueError, match="filters must be evenly divisible by the number"):
        QuantizedConv2D(3, 3, groups=2, name="conv_layer")
