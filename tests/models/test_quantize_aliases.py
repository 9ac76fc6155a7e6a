"""quantize() on models with layers that are supported under another name (ELU, Average,
TimeDistributed(Dense), TF ops), or the identity at inference (noise, spatial dropout): all
integer, close to the float model, exported to ONNX bit-exactly."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import float_islands, quantize
from tests.onnx_support.test_export_merging import check_export_bit_exact

L = keras.layers


def _sqnr(y, yq):
    return 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2))


def _all_integer(qmodel):
    return not float_islands(qmodel) and not [
        layer.name for layer in qmodel.layers
        if not type(layer).__module__.startswith("quantizeml")
        and not isinstance(layer, L.InputLayer)]


def test_image_model_with_aliases_and_identities():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    a = L.GaussianNoise(0.1)(L.ELU(name="elu")(a))
    b = L.SpatialDropout2D(0.2)(L.Conv2D(6, 1, name="b")(inputs))
    x = L.Average(name="avg")([a, b])
    x = L.ActivityRegularization(0.01)(x)
    x = L.GlobalAveragePooling2D()(L.ReLU()(L.Conv2D(8, 3, name="c")(x)))
    model = keras.Model(inputs, L.Dense(4, name="out")(L.GaussianDropout(0.1)(x)))
    x = np.random.default_rng(0).uniform(-1, 1, (48, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x[:32])
    assert _all_integer(qmodel)
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 25
    check_export_bit_exact(qmodel, x[32:])


def test_sequence_model_with_time_distributed_dense():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 5))
    x = L.TimeDistributed(L.Dense(8), name="td")(inputs)
    x = L.TimeDistributed(L.ReLU(), name="td_relu")(x)
    x = L.Conv1D(4, 3, padding="causal", name="conv")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(x)))
    x = np.random.default_rng(0).normal(size=(48, 6, 5)).astype(np.float32)
    qmodel = quantize(model, samples=x[:32])
    assert _all_integer(qmodel)
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 25
    check_export_bit_exact(qmodel, x[32:])


def test_squeeze_excite_written_with_tf_ops():
    """``tf.reduce_mean(x, [1, 2], keepdims=True)``, ``tf.sigmoid``, ``x * s`` and ``tf.concat``
    (TFOpLambda layers) become layers and quantize; Dense on a rank-4 tensor with a size-1
    axis (the pooled squeeze) runs as a 2-D product."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same", name="conv")(inputs))
    s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    s = L.Dense(8, name="excite")(L.ReLU()(L.Dense(4, name="squeeze")(s)))
    x = x * tf.sigmoid(s)
    x = tf.concat([x, L.Conv2D(4, 1, name="side")(inputs)], axis=-1)
    model = keras.Model(inputs, L.Dense(3, name="out")(tf.reduce_mean(x, axis=[1, 2])))
    x = np.random.default_rng(0).uniform(-1, 1, (48, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x[:32])
    assert _all_integer(qmodel)
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 25
    check_export_bit_exact(qmodel, x[32:])


def test_channels_first_convolutions_listed_with_the_float_switch():
    """A channels-first convolution has no twin: quantize() lists it with the other unsupported
    layers, names the reason and the float-island switch; kept float, the model quantizes."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="first")(inputs)
    x = L.Permute((3, 1, 2), name="to_nchw")(x)
    x = L.Conv2D(4, 3, data_format="channels_first", name="conv_cf")(x)
    x = L.DepthwiseConv2D(3, data_format="channels_first", name="dw_cf")(x)
    x = L.Permute((2, 3, 1), name="to_nhwc")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="out")(L.ReLU()(x)))
    samples = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ValueError) as info:
        quantize(model, samples=samples)
    message = str(info.value)
    for expected in ("conv_cf (Conv2D", "dw_cf (DepthwiseConv2D", "channels_first",
                     "'float'"):
        assert expected in message, message
    qmodel = quantize(model, samples=samples,
                      q_config={"conv_cf": "float", "dw_cf": "float"})
    assert type(qmodel.get_layer("dw_cf")) is L.DepthwiseConv2D
    assert type(qmodel.get_layer("out")).__name__ == "QuantizedConv2D"
    y, yq = model(samples).numpy(), qmodel(samples).numpy()
    assert _sqnr(y, yq) > 25


def test_constant_products_and_merges_of_three_inputs():
    """``x * 2.0`` after an Add (a Rescaling of quantized integers: only the scales change)
    and an Add / Maximum of three inputs (binary chains) quantize, integer and exact."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    x = tf.nn.relu(L.Conv2D(8, 3, padding="same", name="a")(inputs))
    b = L.Conv2D(8, 1, name="b")(x)
    c = L.Conv2D(8, 3, padding="same", name="c")(x)
    x = L.Add(name="add3")([x, b, c]) * 0.5
    x = L.Maximum(name="max3")([tf.nn.relu6(x), b, c])
    model = keras.Model(inputs, L.Conv2D(2, 1, name="out")(x))
    x = np.random.default_rng(0).uniform(-1, 1, (48, 8, 8, 4)).astype(np.float32)
    qmodel = quantize(model, samples=x[:32])
    assert _all_integer(qmodel)
    assert any(type(layer).__name__ == "QuantizedRescaling" for layer in qmodel.layers)
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 25
    check_export_bit_exact(qmodel, x[32:])


def test_rescaling_of_inputs_that_are_not_integer_pixels_stays_float():
    """QuantizedRescaling reads integer pixels: with samples in [0, 1] (or negative), the
    Rescaling stays float and an InputQuantizer follows it; with 8-bit pixels it is the
    integer entry of the model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.GlobalAveragePooling2D()(L.ReLU()(L.Conv2D(6, 3, name="conv")(x)))
    model = keras.Model(inputs, L.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    for samples in (rng.uniform(0, 1, (48, 8, 8, 3)), rng.uniform(-1, 1, (48, 8, 8, 3))):
        samples = samples.astype(np.float32)
        qmodel = quantize(model, samples=samples[:32])
        assert type(qmodel.get_layer("scale")) is L.Rescaling
        assert type(qmodel.get_layer("scale_quantizer")).__name__ == "InputQuantizer"
        assert _sqnr(model(samples[32:]).numpy(), qmodel(samples[32:]).numpy()) > 25
    pixels = rng.integers(0, 256, (48, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=pixels[:32])
    assert type(qmodel.get_layer("scale")).__name__ == "QuantizedRescaling"
    assert _sqnr(model(pixels[32:]).numpy(), qmodel(pixels[32:]).numpy()) > 25


def test_shared_layers_calibrated_on_every_call_and_exported():
    """A block model called twice (its layers shared): each shared OutputQuantizer is
    calibrated on the outputs of both calls, and the model exports bit-exactly."""
    keras.utils.set_random_seed(0)
    block_in = keras.Input((8, 8, 8))
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="block_conv")(block_in)
    block = keras.Model(block_in, L.Add(name="block_add")([block_in, y]), name="block")
    inputs = keras.Input((8, 8, 4))
    first = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    second = block(block(first))
    model = keras.Model(inputs, L.Conv2D(2, 1, name="out")(second))
    x = np.random.default_rng(0).uniform(-1, 1, (48, 8, 8, 4)).astype(np.float32)
    qmodel = quantize(model, samples=x[:32])
    add = qmodel.get_layer("block_add")
    assert len(add.inbound_nodes) == 2  # still shared
    # the range covers the second call, whose values are the larger: the Add's largest
    # output over both calls is within its calibrated per-channel range (up to clipping of
    # rare outliers by the range search: one step of the largest value)
    flat = keras.Model(model.inputs, second)(x[:32]).numpy()
    largest = np.abs(flat).reshape(-1, 8).max(axis=0)
    assert np.all(add.out_quantizer.range_max.numpy() >= largest / 4)
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 25
    check_export_bit_exact(qmodel, x[32:])
