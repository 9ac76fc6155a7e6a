"""quantize() on 1-D models (keyword spotting, time series, text CNNs): every layer integer,
per-axis activations kept through the lifting reshapes, close to the float model, exported to
ONNX bit-exactly, reloaded bit-identically; and a recurrent layer's activation left alone."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers import OutputQuantizer
from quantizeml.models import float_islands, quantize
from tests.onnx_support.test_export_merging import check_export_bit_exact
from tests.utils import check_save_load

L = keras.layers


def _sqnr(y, yq):
    return 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2))


def _audio_model():
    """Conv1D + BN + ReLU, max pooling, depthwise, a causal dilated separable convolution,
    average pooling, global average, Dense: as keyword-spotting models are built."""
    inputs = keras.Input((32, 6))
    x = L.Conv1D(12, 5, padding="same", use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling1D(2, name="pool")(x)
    x = L.DepthwiseConv1D(3, padding="same", activation="relu", name="dw")(x)
    x = L.SeparableConv1D(16, 3, padding="causal", dilation_rate=2, activation="relu",
                          name="sep")(x)
    x = L.AveragePooling1D(2, name="avg")(x)
    x = L.Conv1D(16, 1, activation="relu", name="pw")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inputs, L.Dense(5, name="logits")(x))


def _samples(n=48, shape=(32, 6)):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def audio():
    keras.utils.set_random_seed(0)
    model = _audio_model()
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 12), rng.normal(0, 0.1, 12),
                    rng.normal(0, 0.2, 12), rng.uniform(0.5, 2.0, 12)])
    x = _samples()
    return model, quantize(model, samples=x[:32]), x


def test_every_layer_integer_and_close(audio):
    model, qmodel, x = audio
    assert not float_islands(qmodel)
    floating = [layer.name for layer in qmodel.layers
                if not type(layer).__module__.startswith("quantizeml")
                and not isinstance(layer, keras.layers.InputLayer)]
    assert floating == []
    # the BatchNormalization folded into the convolution, the 1-D layers lifted
    assert "bn" not in {layer.name for layer in qmodel.layers}
    assert type(qmodel.get_layer("conv")).__name__ == "QuantizedConv2D"
    y, yq = model(x[32:]).numpy(), qmodel(x[32:]).numpy()
    assert _sqnr(y, yq) > 25
    assert np.mean(np.argmax(y, -1) == np.argmax(yq, -1)) >= 0.9


def test_per_axis_activations_through_the_reshapes(audio):
    _, qmodel, _ = audio
    axes = {layer.name: oq.axis for layer in qmodel.layers
            for oq in [getattr(layer, "out_quantizer", None)]
            if isinstance(oq, OutputQuantizer)}
    assert axes["relu"] == "per-axis", axes


def test_per_tensor_where_a_reshape_mixes_channels():
    """A Reshape that changes the last axis still gets per-tensor inputs."""
    inputs = keras.Input((8, 4))
    x = L.Conv1D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    x = L.Reshape((12, 4), name="mix")(x)
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(x)))
    qmodel = quantize(model, samples=_samples(16, (8, 4)))
    relu = qmodel.get_layer("conv_activation")
    assert relu.out_quantizer.axis == "per-tensor"


def test_export_and_reload_bit_exact(audio):
    _, qmodel, x = audio
    check_export_bit_exact(qmodel, x[32:])
    check_save_load(qmodel, x[32:40])


def test_text_cnn_with_global_max():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((20,), dtype="int32")
    x = L.Embedding(50, 16)(tokens)
    x = L.Conv1D(8, 3, activation="relu", name="conv")(x)
    x = L.GlobalMaxPooling1D(name="gmp")(x)
    model = keras.Model(tokens, L.Dense(2, name="out")(x))
    samples = np.random.default_rng(0).integers(0, 50, (48, 20)).astype(np.int32)
    qmodel = quantize(model, samples=samples[:32])
    assert type(qmodel.get_layer("gmp")).__name__ == "QuantizedGlobalMaxPooling2D"
    y, yq = model(samples[32:]).numpy(), qmodel(samples[32:]).numpy()
    assert _sqnr(y, yq) > 25


def test_recurrent_activation_is_not_split():
    """An LSTM's ``activation`` acts inside its cell: quantize() keeps it (the LSTM stays in
    the float head), and the model stays close to the float one."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 4))
    model = keras.Model(inputs, L.Dense(2)(L.LSTM(8, name="lstm")(inputs)))
    x = _samples(64, (10, 4))
    qmodel = quantize(model, samples=x[:48])
    assert qmodel.get_layer("lstm").get_config()["activation"] == "tanh"
    assert "lstm_activation" not in {layer.name for layer in qmodel.layers}
    assert _sqnr(model(x[48:]).numpy(), qmodel(x[48:]).numpy()) > 25


def test_conv1d_transpose_decoder():
    """A 1-D autoencoder (strided Conv1D, Conv1DTranspose back up): every layer integer,
    close to the float model, exported bit-exact."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 6))
    x = L.Conv1D(8, 3, strides=2, padding="same", activation="relu", name="down")(inputs)
    x = L.Conv1DTranspose(6, 3, strides=2, padding="same", name="up")(x)
    model = keras.Model(inputs, x)
    x = _samples()
    qmodel = quantize(model, samples=x[:32])
    assert type(qmodel.get_layer("up")).__name__ == "QuantizedConv2DTranspose"
    assert not float_islands(qmodel)
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 25
    check_export_bit_exact(qmodel, x[32:])
