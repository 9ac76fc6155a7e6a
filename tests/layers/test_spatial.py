"""Tests of quantizeml.layers.spatial (QuantizedZeroPadding2D, QuantizedCropping2D,
QuantizedUpSampling2D)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import eager_layer_calls
from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.quantizers import Dequantizer, InputQuantizer
from quantizeml.layers.registry import BLOCK_END, twin_spec
from quantizeml.layers.spatial import (QuantizedCropping2D, QuantizedUpSampling2D,
                                       QuantizedZeroPadding2D, unsupported_reason)
from quantizeml.models import quantize
from quantizeml.models.transforms import remove_zeropadding2d, sanitize
from quantizeml.tensors import QFloat
from tests.onnx_support.test_export_merging import check_export_bit_exact
from tests.layers.references import (INPUTS, fixed_point, float_gradient, frac, ints,
                                     output_quantizer, random_inputs, single_layer_model)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

L = keras.layers
SHAPE = (2, 5, 4, 3)
TWINS = ((L.ZeroPadding2D, QuantizedZeroPadding2D), (L.Cropping2D, QuantizedCropping2D),
         (L.UpSampling2D, QuantizedUpSampling2D))


def np_pad(v, top, bottom, left, right):
    return np.pad(v, ((0, 0), (top, bottom), (left, right), (0, 0)))


def np_crop(v, top, bottom, left, right):
    return v[:, top:v.shape[1] - bottom, left:v.shape[2] - right, :]


def np_upsample(v, rows, cols):
    return np.repeat(np.repeat(v, rows, axis=1), cols, axis=2)


# name -> (quantized layer, float layer, numpy int64 reference)
CASES = {
    "pad-int": (lambda: QuantizedZeroPadding2D(2), lambda: L.ZeroPadding2D(2),
                lambda v: np_pad(v, 2, 2, 2, 2)),
    "pad-pair": (lambda: QuantizedZeroPadding2D((1, 3)), lambda: L.ZeroPadding2D((1, 3)),
                 lambda v: np_pad(v, 1, 1, 3, 3)),
    "pad-tblr": (lambda: QuantizedZeroPadding2D(((1, 2), (0, 1))),
                 lambda: L.ZeroPadding2D(((1, 2), (0, 1))), lambda v: np_pad(v, 1, 2, 0, 1)),
    "crop-int": (lambda: QuantizedCropping2D(1), lambda: L.Cropping2D(1),
                 lambda v: np_crop(v, 1, 1, 1, 1)),
    "crop-tblr": (lambda: QuantizedCropping2D(((1, 0), (2, 1))),
                  lambda: L.Cropping2D(((1, 0), (2, 1))), lambda v: np_crop(v, 1, 0, 2, 1)),
    "crop-bottom-right": (lambda: QuantizedCropping2D(((0, 2), (0, 1))),
                          lambda: L.Cropping2D(((0, 2), (0, 1))),
                          lambda v: np_crop(v, 0, 2, 0, 1)),
    "up-int": (lambda: QuantizedUpSampling2D(2), lambda: L.UpSampling2D(2),
               lambda v: np_upsample(v, 2, 2)),
    "up-2x3": (lambda: QuantizedUpSampling2D((2, 3)), lambda: L.UpSampling2D((2, 3)),
               lambda v: np_upsample(v, 2, 3)),
}


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_spatial_exact(kind, case):
    layer_fn, float_fn, reference = CASES[case]
    x = INPUTS[kind](SHAPE)
    out = layer_fn()(x)
    # numpy integer reference; frac_bits and scales unchanged (per-tensor and per-axis)
    assert type(out) is type(x)
    np.testing.assert_array_equal(ints(out), reference(ints(x)))
    np.testing.assert_array_equal(frac(out), frac(x))
    if isinstance(x, QFloat):
        np.testing.assert_array_equal(out.scales.numpy(), x.scales.numpy())
    # float: exactly the float Keras layer's output
    np.testing.assert_array_equal(out.to_float().numpy(), float_fn()(x.to_float()).numpy())


def test_eager_equals_traced():
    x = fixed_point(SHAPE, per_axis=True)
    for layer_fn, _, _ in CASES.values():
        layer = layer_fn()
        with eager_layer_calls():
            eager = layer(x)
        traced = tf.function(layer)(x)
        np.testing.assert_array_equal(ints(eager), ints(traced))


def test_dynamic_spatial_shapes():
    inputs = keras.Input((None, None, 3))
    q = InputQuantizer()(inputs)
    assert QuantizedZeroPadding2D(((1, 2), (0, 1)))(q).shape.as_list() == [None, None, None, 3]
    assert QuantizedCropping2D(1)(q).shape.as_list() == [None, None, None, 3]
    assert QuantizedUpSampling2D(2)(q).shape.as_list() == [None, None, None, 3]
    y = QuantizedUpSampling2D(2)(QuantizedZeroPadding2D(1)(q))
    model = keras.Model(inputs, Dequantizer()(y))
    assert model(np.zeros((1, 3, 5, 3), np.float32)).shape == (1, 10, 14, 3)


@pytest.mark.parametrize("case", ["pad-tblr", "crop-tblr", "up-2x3"])
def test_output_quantizer(case):
    layer_fn, _, reference = CASES[case]
    x = fixed_point(SHAPE)
    layer = type(layer_fn())(**{**layer_fn().get_config(), "name": "oq",
                                "quant_config": {"output_quantizer": {"bitwidth": 4}}})
    layer(x)
    layer.out_quantizer.range_max.assign(3.0)
    out = layer(x)
    ref, ref_frac = output_quantizer(reference(ints(x)), frac(x), layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    assert int(frac(out)) == int(ref_frac)


def test_registry_and_signatures():
    for float_cls, cls in TWINS:
        assert QUANTIZATION_TARGETS[float_cls] is cls
        spec = twin_spec(cls)
        assert spec.passes_through(float_cls()) and spec.output_for(float_cls()) is None
        assert not spec.has_weights and spec.export is not None
        check_signature_parity(cls, float_cls)
    # a bilinear upsampling computes: it ends a block
    spec = twin_spec(QuantizedUpSampling2D)
    bilinear = L.UpSampling2D(2, interpolation="bilinear")
    assert not spec.passes_through(bilinear) and spec.output_for(bilinear) == BLOCK_END


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_config_roundtrip(case):
    layer = type(CASES[case][0]())(**{**CASES[case][0]().get_config(), "quant_config": {
        "output_quantizer": {"bitwidth": 8}, "buffer_bitwidth": 24}})
    clone = check_config_roundtrip(layer)
    assert clone.quant_config == layer.quant_config
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("case, per_axis", [("pad-tblr", True), ("crop-tblr", False),
                                            ("up-2x3", True)])
def test_save_load_and_gradients(case, per_axis):
    model = single_layer_model(CASES[case][0](), SHAPE[1:], per_axis=per_axis)
    x = random_inputs(SHAPE, scale=0.5)
    check_save_load(model, x)
    grad = float_gradient(model, x).numpy()
    assert np.sum(np.abs(grad)) > 0
    if case.startswith("crop"):
        # the straight-through gradient reaches only the pixels the cropping keeps
        cropped = np.ones(SHAPE, bool)
        cropped[:, 1:, 2:-1, :] = False
        assert np.all(grad[cropped] == 0)


def test_refusals():
    with pytest.raises(ValueError, match=r"up \(QuantizedUpSampling2D\) expected "
                                         r"interpolation='nearest', or 'bilinear'.*Received: "
                                         r"interpolation='bilinear' with size=\(3, 2\)"):
        QuantizedUpSampling2D((3, 2), interpolation="bilinear", name="up")
    with pytest.raises(ValueError, match=r"Received: interpolation='bicubic'"):
        QuantizedUpSampling2D(interpolation="bicubic", name="up")
    for _, cls in TWINS:
        with pytest.raises(ValueError, match=rf"cf \({cls.__name__}\) expected "
                                             r"data_format='channels_last'.*Received: "
                                             r"data_format='channels_first'"):
            cls(data_format="channels_first", name="cf")
    assert unsupported_reason(L.UpSampling2D(interpolation="bicubic")) == \
        "interpolation='bicubic'"
    assert unsupported_reason(L.UpSampling2D(3, interpolation="bilinear")) == \
        "interpolation='bilinear' with size=(3, 3) (powers of two only)"
    assert unsupported_reason(L.UpSampling2D((4, 1), interpolation="bilinear")) is None
    assert unsupported_reason(L.ZeroPadding2D(data_format="channels_first")) == \
        "data_format='channels_first'"
    assert unsupported_reason(L.UpSampling2D()) is None
    with pytest.raises(TypeError, match=r"pad_float \(QuantizedZeroPadding2D\) expected "
                                        "FixedPoint or QFloat"):
        QuantizedZeroPadding2D(name="pad_float")(tf.ones((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="crop_key: quant_config expected keys"):
        QuantizedCropping2D(name="crop_key", quant_config={"weight_quantizer": {}})


def test_quantize_reports_bilinear_upsampling_up_front():
    """The registry's ``refuses`` reports the float layer as unsupported, with the reason, with
    the other unsupported layers and before any twin is built; at the end it stays float."""
    inputs = keras.Input((4, 4, 3))
    y = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    y = L.UpSampling2D(3, interpolation="bilinear", name="up_bilinear")(y)
    y = L.Softmax(axis=[1, 2], name="softmax")(y)
    model = keras.Model(inputs, L.Conv2D(2, 3, name="conv2")(y))
    x = random_inputs((4, 4, 4, 3), scale=1.0)
    with pytest.raises(ValueError, match=r"unsupported layers .*up_bilinear \(UpSampling2D: "
                                         r"interpolation='bilinear' with size=\(3, 3\)") \
            as info:
        quantize(model, samples=x, num_samples=4)
    assert "softmax (Softmax: a softmax over several axes" in str(info.value)
    tail = keras.Model(inputs, L.UpSampling2D(2, interpolation="bicubic", name="up_tail")(
        L.Conv2D(4, 3, padding="same", name="conv3")(inputs)))
    qmodel = quantize(tail, samples=x, num_samples=4)
    assert type(qmodel.get_layer("up_tail")) is L.UpSampling2D
    np.testing.assert_allclose(qmodel(x).numpy(), tail(x).numpy(), atol=0.1)


def np_bilinear(v, rows, cols):
    """TensorFlow's half-pixel bilinear resize of integers, from the source coordinates in
    float64 (the weights, multiples of 1 / (2 s), are exact): ``2 s`` times the resize per
    upsampled axis, as int64."""
    for axis, s in ((1, rows), (2, cols)):
        if s == 1:
            continue
        n = v.shape[axis]
        coord = (np.arange(n * s) + 0.5) / s - 0.5
        lo = np.floor(coord).astype(np.int64)
        weight = coord - lo
        low = np.take(v, np.clip(lo, 0, n - 1), axis=axis)
        high = np.take(v, np.clip(lo + 1, 0, n - 1), axis=axis)
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        weight = weight.reshape(shape)
        v = np.round((low * (1 - weight) + high * weight) * 2 * s).astype(np.int64)
    return v


BILINEAR = {"bil-2": (2, 2), "bil-4x2": (4, 2), "bil-1x8": (1, 8)}


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("size", list(BILINEAR), ids=list(BILINEAR))
def test_bilinear_upsampling_exact(kind, size):
    rows, cols = BILINEAR[size]
    x = INPUTS[kind](SHAPE)
    layer = QuantizedUpSampling2D((rows, cols), interpolation="bilinear")
    out = layer(x)
    extra = sum(int(np.log2(2 * s)) for s in (rows, cols) if s > 1)
    assert type(out) is type(x) and out.value_bits == x.value_bits + extra
    np.testing.assert_array_equal(ints(out), np_bilinear(ints(x), rows, cols))
    np.testing.assert_array_equal(frac(out), frac(x) + extra)
    if isinstance(x, QFloat):
        np.testing.assert_array_equal(out.scales.numpy(), x.scales.numpy())
    # float: the float Keras layer's output (TensorFlow's bilinear resize), exactly on a
    # FixedPoint (dyadic weights); a QFloat's float32 scales round the products once more
    expected = L.UpSampling2D((rows, cols), interpolation="bilinear")(x.to_float()).numpy()
    if isinstance(x, QFloat):
        np.testing.assert_allclose(out.to_float().numpy(), expected, rtol=1e-5,
                                   atol=1e-6 * np.max(np.abs(expected)))
    else:
        np.testing.assert_array_equal(out.to_float().numpy(), expected)
    with eager_layer_calls():
        eager = layer(x)
    np.testing.assert_array_equal(ints(eager), ints(tf.function(layer)(x)))


def test_bilinear_upsampling_config_save_load_gradients():
    layer = QuantizedUpSampling2D((2, 4), interpolation="bilinear", name="bil", quant_config={
        "output_quantizer": {"bitwidth": 8, "axis": "per-axis"}})
    clone = check_config_roundtrip(layer)
    assert clone.interpolation == "bilinear" and clone.quant_config == layer.quant_config
    model = single_layer_model(QuantizedUpSampling2D((2, 4), interpolation="bilinear"),
                               SHAPE[1:], per_axis=True)
    x = random_inputs(SHAPE, scale=0.5)
    check_save_load(model, x)
    grad = float_gradient(model, x).numpy()
    # the straight-through gradient is the float resize's gradient at the quantized inputs
    # (zero where the input quantizer clips)
    xq = tf.constant(model.layers[1](x).to_float())
    with tf.GradientTape() as tape:
        tape.watch(xq)
        loss = tf.reduce_sum(tf.square(L.UpSampling2D((2, 4), interpolation="bilinear")(xq)))
    ref = tape.gradient(loss, xq).numpy()
    same = np.isclose(grad, ref, rtol=1e-5, atol=1e-5)
    assert np.all(same | (grad == 0)) and np.mean(same) > 0.9


def test_quantize_bilinear_upsampling_model():
    """Conv -> ReLU -> bilinear UpSampling2D (2, 4) -> Conv -> bilinear x2 -> Conv: all integer
    (each bilinear upsampling ends a block, an OutputQuantizer requantizes its wider
    integers), close to the float model, ONNX bit-exact."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 7, 3))
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    y = L.UpSampling2D((2, 4), interpolation="bilinear", name="up1")(y)
    y = L.Conv2D(4, 3, padding="same", name="conv2")(y)
    y = L.UpSampling2D(2, interpolation="bilinear", name="up2")(y)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="out")(y))
    x = random_inputs((40, 6, 7, 3), scale=1.0)
    qmodel = quantize(model, samples=x[:32])
    for name in ("up1", "up2"):
        assert isinstance(qmodel.get_layer(name), QuantizedUpSampling2D)
        assert qmodel.get_layer(name).out_quantizer is not None
    y, yq = model(x[32:]).numpy(), qmodel(x[32:]).numpy()
    assert 10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2)) > 25
    check_export_bit_exact(qmodel, x[32:])


def _padded_model():
    """Conv2D -> ZeroPadding2D(((1, 2), (0, 1))) -> Conv2D(valid) -> ReLU -> UpSampling2D ->
    Cropping2D -> Conv2D: the spatial layers between blocks."""
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(8, 3, padding="same", bias_initializer="random_normal", name="conv1")(inputs)
    y = L.ZeroPadding2D(((1, 2), (0, 1)), name="pad")(y)
    y = L.Conv2D(8, 3, bias_initializer="random_normal", name="conv2")(y)
    y = L.ReLU(name="relu")(y)
    y = L.UpSampling2D((2, 3), name="up")(y)
    y = L.Cropping2D(((1, 0), (2, 1)), name="crop")(y)
    y = L.Conv2D(4, 3, name="conv3")(y)
    return keras.Model(inputs, y)


def test_quantize_padded_model_exact_and_close():
    model = _padded_model()
    x = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    # the padding is not a 'same' padding of conv2: sanitize keeps it
    assert sanitize(model).get_layer("pad") is not None
    qmodel = quantize(model, samples=x, num_samples=32, batch_size=32)
    for name, cls in (("pad", QuantizedZeroPadding2D), ("up", QuantizedUpSampling2D),
                      ("crop", QuantizedCropping2D)):
        assert type(qmodel.get_layer(name)) is cls
        assert qmodel.get_layer(name).out_quantizer is None
    # looked through: conv1 ends its block before conv2, relu before conv3
    assert "output_quantizer" in qmodel.get_layer("conv1").quant_config
    assert "output_quantizer" not in qmodel.get_layer("conv2").quant_config
    # integer exact: each spatial layer's output is its numpy reference on its input
    probe = keras.Model(qmodel.inputs, [t for n in ("pad", "up", "crop")
                                        for t in (qmodel.get_layer(n).input,
                                                  qmodel.get_layer(n).output)])
    with eager_layer_calls():
        outs = probe(x[:4])
    references = (lambda v: np_pad(v, 1, 2, 0, 1), lambda v: np_upsample(v, 2, 3),
                  lambda v: np_crop(v, 1, 0, 2, 1))
    for (inp, out), reference in zip(zip(outs[::2], outs[1::2]), references):
        np.testing.assert_array_equal(ints(out), reference(ints(inp)))
        np.testing.assert_array_equal(frac(out), frac(inp))
    with eager_layer_calls():
        eager = qmodel(x).numpy()
    np.testing.assert_array_equal(eager, qmodel.predict(x, batch_size=32, verbose=0))
    # close to the float model
    expected = model(x).numpy()
    error = np.abs(eager - expected).max() / np.abs(expected).max()
    assert error < 0.05, error


def test_qat_gradient_reaches_producing_conv():
    model = _padded_model()
    x = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=8, batch_size=8)
    conv1 = qmodel.get_layer("conv1")
    check_gradients_reach(qmodel, x, [conv1.kernel, qmodel.get_layer("conv2").kernel])


def test_remove_zeropadding2d_still_folds_same_paddings():
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    y = L.ZeroPadding2D(1, name="same_pad")(y)
    y = L.Conv2D(4, 3, name="conv2")(y)
    y = L.ZeroPadding2D(((1, 2), (0, 1)), name="other_pad")(y)
    y = L.Conv2D(4, 3, name="conv3")(y)
    model = keras.Model(inputs, y)
    new = remove_zeropadding2d(model)
    names = [layer.name for layer in new.layers]
    assert "same_pad" not in names and "other_pad" in names
    assert new.get_layer("conv2").padding == "same"
    assert new.get_layer("conv3").padding == "valid"
    x = random_inputs((2, 8, 8, 3), scale=1.0)
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    qmodel = quantize(new, samples=random_inputs((8, 8, 8, 3), scale=1.0), num_samples=8)
    assert type(qmodel.get_layer("other_pad")) is QuantizedZeroPadding2D
