"""Tests of quantizeml.layers.spatial (QuantizedZeroPadding2D, QuantizedCropping2D,
QuantizedUpSampling2D)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import eager_layer_calls
from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.quantizers import Dequantizer, InputQuantizer
from quantizeml.layers.registry import twin_spec
from quantizeml.layers.spatial import (QuantizedCropping2D, QuantizedUpSampling2D,
                                       QuantizedZeroPadding2D, unsupported_reason)
from quantizeml.models import quantize
from quantizeml.models.transforms import remove_zeropadding2d, sanitize
from quantizeml.tensors import QFloat
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
        assert spec.pass_through and spec.output is None and not spec.has_weights
        assert spec.export is not None
        check_signature_parity(cls, float_cls)


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
                                         r"interpolation='nearest'.*Received: "
                                         r"interpolation='bilinear'"):
        QuantizedUpSampling2D(interpolation="bilinear", name="up")
    for _, cls in TWINS:
        with pytest.raises(ValueError, match=rf"cf \({cls.__name__}\) expected "
                                             r"data_format='channels_last'.*Received: "
                                             r"data_format='channels_first'"):
            cls(data_format="channels_first", name="cf")
    assert unsupported_reason(L.UpSampling2D(interpolation="bilinear")) == \
        "interpolation='bilinear'"
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
    y = L.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(y)
    y = L.Softmax(name="softmax")(y)
    model = keras.Model(inputs, L.Conv2D(2, 3, name="conv2")(y))
    x = random_inputs((4, 4, 4, 3), scale=1.0)
    with pytest.raises(ValueError, match=r"unsupported layers .*up_bilinear \(UpSampling2D: "
                                         r"interpolation='bilinear'\)") as info:
        quantize(model, samples=x, num_samples=4)
    assert "softmax (Softmax)" in str(info.value)
    tail = keras.Model(inputs, L.UpSampling2D(2, interpolation="bilinear", name="up_tail")(
        L.Conv2D(4, 3, padding="same", name="conv3")(inputs)))
    qmodel = quantize(tail, samples=x, num_samples=4)
    assert type(qmodel.get_layer("up_tail")) is L.UpSampling2D
    np.testing.assert_allclose(qmodel(x).numpy(), tail(x).numpy(), atol=0.1)


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
