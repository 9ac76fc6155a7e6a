"""quantize() prepares float models itself (no sanitize call) and keeps float islands on
request (q_config entry "float")."""
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import Dequantizer, InputQuantizer, QuantizedConv2D
from quantizeml.models import QuantizationParams, check_quantization, float_islands, quantize
from quantizeml.models.transforms import sanitize
from quantizeml.models.zoo import digits_cnn
from quantizeml.onnx_support import export
from tests.onnx_support.test_export_merging import check_export_bit_exact

L = keras.layers


def _float(y):
    return np.asarray(y, np.float32)


def _digits(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 16, size=(n, 8, 8, 1)).astype(np.float32)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_raw_model_quantizes_like_its_sanitized_twin():
    keras.utils.set_random_seed(3)
    model = digits_cnn()
    x = _digits()
    before = _weights(model)
    names = [layer.name for layer in model.layers]
    qparams = QuantizationParams(input_weight_bits=4, weight_bits=4, activation_bits=4)
    q_raw = quantize(model, qparams=qparams, samples=x, batch_size=16)
    q_san = quantize(sanitize(model), qparams=qparams, samples=x, batch_size=16)
    np.testing.assert_array_equal(_float(q_raw(x)), _float(q_san(x)))
    assert not any(isinstance(layer, L.BatchNormalization) or
                   type(layer).__name__ == "QuantizedBatchNormalization"
                   for layer in q_raw.layers), "BatchNormalization not folded"
    # the input model is untouched
    assert [layer.name for layer in model.layers] == names
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_raw_mobilenet_quantizes_without_sanitize():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None,
                                         classes=10)
    x = np.random.default_rng(0).uniform(-1, 1, size=(16, 32, 32, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, batch_size=16)
    assert sum(isinstance(layer, QuantizedConv2D) for layer in qmodel.layers) >= 10
    kinds = {type(layer).__name__ for layer in qmodel.layers}
    assert "ZeroPadding2D" not in kinds and "BatchNormalization" not in kinds


def test_folded_layer_in_q_config_names_the_preparation():
    keras.utils.set_random_seed(0)
    model = digits_cnn()
    bn = next(layer.name for layer in model.layers if isinstance(layer, L.BatchNormalization))
    with pytest.raises(ValueError, match="removed by the preparation"):
        quantize(model, q_config={bn: {}}, samples=_digits(16))


@keras.saving.register_keras_serializable(package="tests_islands")
class Cube(L.Layer):
    """A float layer with no quantized twin."""

    def call(self, inputs):
        return inputs * inputs * inputs * 0.01


def _island_model():
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = L.ReLU(name="relu1")(x)
    x = Cube(name="cube")(x)
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


def test_unsupported_layer_error_names_the_float_island_switch():
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError, match=r"unsupported layers cube \(Cube\).*'float'"):
        quantize(_island_model(), samples=_digits(16))


def test_float_island_dequantized_before_requantized_after():
    keras.utils.set_random_seed(0)
    model = _island_model()
    x = _digits(64)
    qmodel = quantize(model, q_config={"cube": "float"}, samples=x, batch_size=16)
    layers = {layer.name: layer for layer in qmodel.layers}
    assert type(layers["cube"]) is Cube
    assert isinstance(layers["cube_dequantizer"], Dequantizer)
    assert isinstance(layers["cube_quantizer"], InputQuantizer)
    assert float(np.max(layers["cube_quantizer"].range_max.numpy())) != 1.0  # calibrated
    assert isinstance(layers["conv2"], QuantizedConv2D)
    # the island's inputs come from a Dequantizer, its output feeds the InputQuantizer
    assert layers["cube"].input is layers["cube_dequantizer"].output
    assert layers["cube_quantizer"].input is layers["cube"].output
    y, yq = _float(model(x)), _float(qmodel(x))
    sqnr = 10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2))
    assert sqnr > 15, sqnr
    assert any("float island" in issue and "cube" in issue
               for issue in check_quantization(qmodel))


def test_float_island_as_first_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = Cube(name="cube")(inputs)
    x = L.Conv2D(4, 3, name="conv")(x)
    x = L.Flatten(name="flat")(x)
    outputs = L.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs)
    x = _digits(32)
    qmodel = quantize(model, q_config={"cube": "float"}, samples=x, batch_size=16)
    names = [layer.name for layer in qmodel.layers]
    assert "image_quantizer" not in names  # the float island reads the float input itself
    assert "cube_quantizer" in names
    y, yq = _float(model(x)), _float(qmodel(x))
    assert np.max(np.abs(y - yq)) < 0.1 * np.max(np.abs(y))


def test_bad_q_config_string_entry():
    with pytest.raises(ValueError, match="'float'. Received: 'cube': 'floating'"):
        quantize(_island_model(), q_config={"cube": "floating"}, samples=_digits(16))


def test_analysis_reports_the_float_island():
    from quantizeml.analysis import compare
    keras.utils.set_random_seed(0)
    model = _island_model()
    x = _digits(32)
    qmodel = quantize(model, q_config={"cube": "float"}, samples=x, batch_size=16)
    rows = {row["layer"]: row for row in compare(model, qmodel, x)}
    assert rows["cube"]["type"] == "Cube (float island)"
    assert rows["conv2"]["type"] == "QuantizedConv2D"


def test_analysis_prepares_a_raw_float_model():
    """compare() on the raw model gives the rows of the sanitized one (folded BN)."""
    from quantizeml.analysis import compare
    keras.utils.set_random_seed(0)
    model = digits_cnn()
    x = _digits(32)
    qmodel = quantize(model, samples=x, batch_size=16)
    raw = compare(model, qmodel, x)
    sanitized = compare(sanitize(model), qmodel, x)
    assert [r["layer"] for r in raw] == [r["layer"] for r in sanitized]
    assert [r["sqnr_db"] for r in raw] == [r["sqnr_db"] for r in sanitized]


def test_float_preprocessing_head():
    """A Rescaling with an offset before a padded convolution cannot be folded nor quantized:
    it stays float at the head and an InputQuantizer requantizes its output."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Rescaling(1 / 127.5, offset=-1, name="pre")(inputs)
    x = L.Conv2D(4, 3, padding="same", name="conv")(x)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(3, name="logits")(x))
    x = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, batch_size=16)
    layers = {layer.name: layer for layer in qmodel.layers}
    assert type(layers["pre"]) is L.Rescaling
    assert "image_quantizer" not in layers
    quantizer = layers["pre_quantizer"]
    assert isinstance(quantizer, InputQuantizer) and quantizer.signed  # [-1, 1] after "pre"
    assert isinstance(layers["conv"], QuantizedConv2D)
    y, yq = _float(model(x)), _float(qmodel(x))
    assert np.max(np.abs(y - yq)) < 0.05 * np.max(np.abs(y))
    assert not check_quantization(qmodel) or all("float island" not in i
                                                 for i in check_quantization(qmodel))


def test_dump_config_keeps_the_float_island():
    """dump_config reads the registry: the twins' quant_configs, and "float" for an island, so
    that quantize(model, q_config=dump_config(qmodel)) rebuilds the same model."""
    from quantizeml.models import dump_config
    keras.utils.set_random_seed(0)
    model = _island_model()
    x = _digits(32)
    qmodel = quantize(model, q_config={"cube": "float"}, samples=x, batch_size=16)
    config = dump_config(qmodel)
    assert config["cube"] == "float"
    assert "conv2" in config and "cube_dequantizer" not in config
    again = quantize(model, q_config=config, samples=x, batch_size=16)
    assert [type(layer) for layer in again.layers] == [type(layer) for layer in qmodel.layers]
    np.testing.assert_array_equal(_float(again(x)), _float(qmodel(x)))


def _cbam(shape=(12, 12, 3)):
    """A convolution and a CBAM block (channel attention: shared MLP on the global average
    and max; spatial attention: a 7x7 convolution of the channel mean and maximum)."""
    inputs = keras.Input(shape, name="inp")
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    avg = L.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    peak = L.GlobalMaxPooling2D(keepdims=True, name="gmp")(x)
    hidden, out = L.Dense(4, activation="relu", name="mlp_1"), L.Dense(16, name="mlp_2")
    channel = L.Activation("sigmoid", name="channel_gate")(
        L.Add(name="mlp_add")([out(hidden(avg)), out(hidden(peak))]))
    x = L.Multiply(name="channel_att")([x, channel])
    pooled = L.Concatenate(name="pooled")([tf.reduce_mean(x, axis=-1, keepdims=True),
                                           tf.reduce_max(x, axis=-1, keepdims=True)])
    spatial = L.Conv2D(1, 7, padding="same", activation="sigmoid", name="spatial")(pooled)
    x = L.Multiply(name="spatial_att")([x, spatial])
    y = L.Dense(5, name="logits")(L.GlobalAveragePooling2D(name="pool")(x))
    return keras.Model(inputs, y)


def test_cbam_block_quantizes_and_exports():
    """The channel reductions of CBAM's spatial attention (``tf.reduce_mean/max(x, -1)``)
    become layers: the whole block is integer, close to float, exported bit-exactly."""
    model = _cbam()
    x = np.random.default_rng(3).uniform(-1, 1, (32, 12, 12, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=32, batch_size=32)
    assert not float_islands(qmodel)
    assert all(type(layer).__module__.startswith("quantizeml") or
               isinstance(layer, L.InputLayer) for layer in qmodel.layers)
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    check_export_bit_exact(qmodel, x)


def _espcn(shape=(8, 8, 1)):
    """ESPCN-style super-resolution: convolutions, then a pixel shuffle
    (``tf.nn.depth_to_space``) to twice the resolution."""
    inputs = keras.Input(shape, name="inp")
    x = L.Conv2D(16, 5, padding="same", activation="tanh", name="c1")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.Conv2D(4, 3, padding="same", name="c3")(x)
    return keras.Model(inputs, tf.nn.depth_to_space(x, 2))


def _keras_attention(shape=(10, 6)):
    """A sequence model with Keras' dot-product Attention (scaled) and a RepeatVector."""
    inputs = keras.Input(shape, name="inp")
    x = L.Conv1D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = L.Attention(use_scale=True, name="att")([x, x])
    pooled = L.GlobalAveragePooling1D(name="pool")(x)
    x = L.Concatenate(name="cat")([x, L.RepeatVector(shape[0], name="rep")(pooled)])
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten(name="flat")(x)))


@pytest.mark.parametrize("build", [_espcn, _keras_attention], ids=["espcn", "attention"])
def test_pixel_shuffle_and_keras_attention_quantize_and_export(build):
    """Pixel shuffles, Keras' Attention and RepeatVector become layers quantize() quantizes:
    every layer integer, close to float, exported bit-exactly."""
    model = build()
    x = np.random.default_rng(4).uniform(-1, 1, (32, *model.input_shape[1:])) \
        .astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=32, batch_size=32)
    assert not float_islands(qmodel)
    assert all(type(layer).__module__.startswith("quantizeml") or
               isinstance(layer, L.InputLayer) for layer in qmodel.layers)
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    check_export_bit_exact(qmodel, x)


def test_siamese_l1_distance_quantizes_and_exports():
    """A Siamese network (one base model shared by two inputs) compared by the L1 distance
    ``tf.abs(a - b)``: the absolute value becomes a table activation, every layer integer up
    to the final sigmoid, exported bit-exactly."""
    base_in = keras.Input((8, 8, 1), name="base_in")
    y = L.Conv2D(8, 3, activation="relu", name="conv")(base_in)
    y = L.Dense(6, name="embed")(L.GlobalAveragePooling2D(name="pool")(y))
    base = keras.Model(base_in, y, name="base")
    left, right = keras.Input((8, 8, 1), name="left"), keras.Input((8, 8, 1), name="right")
    distance = tf.abs(base(left) - base(right))
    model = keras.Model([left, right], L.Dense(1, activation="sigmoid", name="same")(distance))
    rng = np.random.default_rng(5)
    x = [rng.uniform(0, 1, (32, 8, 8, 1)).astype(np.float32) for _ in range(2)]
    qmodel = quantize(model, samples=x, num_samples=32, batch_size=32)
    assert any(type(layer).__name__ == "QuantizedActivation" for layer in qmodel.layers)
    assert not float_islands(qmodel)
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    session = ort.InferenceSession(export(qmodel).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = {t.name: v for t, v in zip(session.get_inputs(), x)}
    np.testing.assert_array_equal(session.run(None, feeds)[0], yq)
