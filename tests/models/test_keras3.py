"""from_keras3: Keras 3 models become their tf_keras twin (same outputs), then quantize."""
import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import quantizeml.models.keras3 as k3_module
from quantizeml.models import from_keras3, is_keras3_model, quantize
from quantizeml.models.transforms import sanitize
from quantizeml.models.transforms.fuse_hard_swish import HARD_SIGMOID, HARD_SWISH

K3 = keras3.layers
TOL = dict(rtol=1e-5, atol=1e-5)


def _randomize(model, seed=0, kernels=True):
    """Random weights (BN statistics included), so that a weight that is not copied changes the
    outputs; ``kernels=False`` keeps the initial (random) kernels and biases."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, K3.BatchNormalization):
            weights = [rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else
                       rng.normal(0, 0.3, w.shape) for i, w in enumerate(weights)]
        elif kernels:
            weights = [rng.normal(0, 0.5, w.shape) for w in weights]
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def _inputs(model, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, (batch, *t.shape[1:])).astype(np.float32) for t in model.inputs]


def _outputs(model, x):
    y = model(x if len(x) > 1 else x[0], training=False)
    return [np.asarray(v) for v in tf.nest.flatten(y)]


def _check_equal(model, new, **tol):
    """Same outputs, tf_keras layers only, the Keras 3 layer names kept."""
    assert isinstance(new, keras.Model) and not is_keras3_model(new)
    assert all(isinstance(layer, keras.layers.Layer) for layer in new.layers)
    names = {layer.name for layer in new.layers}
    assert {layer.name for layer in model.layers} <= names
    x = _inputs(model)
    for a, b in zip(_outputs(model, x), _outputs(new, x)):
        np.testing.assert_allclose(b, a, **(tol or TOL))


def _conv_bn_relu_dense():
    inputs = keras3.Input((8, 8, 3), name="image")
    x = K3.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv")(inputs)
    x = K3.BatchNormalization(name="bn")(x)
    x = K3.ReLU(name="relu")(x)
    x = K3.GlobalAveragePooling2D(name="gap")(x)
    return keras3.Model(inputs, K3.Dense(4, name="dense")(x), name="k3_functional")


def test_is_keras3_model():
    assert is_keras3_model(_conv_bn_relu_dense())
    assert is_keras3_model(tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)]))
    assert not is_keras3_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    assert not is_keras3_model(K3.Dense(1)) and not is_keras3_model(None)


def test_functional_then_quantize():
    model = _randomize(_conv_bn_relu_dense())
    new = from_keras3(model)
    _check_equal(model, new)
    assert new.name == "k3_functional" and [t.name for t in new.inputs] == ["image"]
    assert [type(layer).__name__ for layer in new.layers] == \
        ["InputLayer", "Conv2D", "BatchNormalization", "ReLU", "GlobalAveragePooling2D",
         "Dense"]
    for layer in model.layers:
        for a, b in zip(layer.get_weights(), new.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    samples = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(new, samples=samples, batch_size=16)
    y, q = np.asarray(model(samples)), np.asarray(qmodel(samples))
    assert q.shape == y.shape and np.mean(np.abs(q - y)) < 0.1 * np.mean(np.abs(y))
    # quantize() takes the Keras 3 model itself, converting it at the door
    direct = quantize(model, samples=samples, batch_size=16)
    np.testing.assert_array_equal(np.asarray(direct(samples)), q)
    assert all(isinstance(layer, keras.layers.Layer) for layer in direct.layers)


@pytest.mark.parametrize("how", ["input", "build"])
def test_sequential(how):
    layers = [K3.Dense(8, activation="relu", name="d1"), K3.Dropout(0.2, name="drop"),
              K3.Dense(3, activation="softmax", name="d2")]
    if how == "input":
        model = keras3.Sequential([keras3.Input((5,)), *layers], name="seq")
    else:
        model = keras3.Sequential(layers, name="seq")
        model.build((None, 5))
    new = from_keras3(_randomize(model))
    _check_equal(model, new)
    assert [type(layer).__name__ for layer in new.layers[1:]] == ["Dense", "Dropout", "Dense"]


def test_unbuilt_sequential():
    with pytest.raises(ValueError, match="built Sequential"):
        from_keras3(keras3.Sequential([K3.Dense(2)]))


def _everything():
    """Two inputs and outputs, a nested Sequential, a shared layer, Keras 3 ops, Keras 3 only
    activation names, per-channel Rescaling, Normalization, Lambda, Concatenate."""
    a = keras3.Input((8, 8, 3), name="a")
    b = keras3.Input((6,), name="b")
    x = K3.Rescaling([0.5, 1.0, 2.0], offset=-0.5, name="rescale")(a)
    x = K3.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 4.0], name="norm")(x)
    x = K3.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = K3.DepthwiseConv2D(3, strides=2, name="dw")(x)
    x = K3.BatchNormalization(name="bn")(x)
    x = K3.Activation("hard_silu", name="hswish")(x)
    x = K3.SeparableConv2D(6, 3, padding="same", activation="silu", name="sep")(x)
    y = K3.ReLU(6.0, name="relu6")(x + 3.0) * (1.0 / 6.0)           # Keras 3 ops
    y = K3.Multiply(name="excite")([x, keras3.ops.sigmoid(y)])
    y = K3.GlobalAveragePooling2D(name="gap")(y)
    head = keras3.Sequential([keras3.Input((6,)), K3.Dense(6, activation="hard_sigmoid",
                                                                name="inner")], name="nested")
    shared = K3.Dense(6, name="shared")
    z = shared(b) - shared(head(b))
    z = K3.Lambda(lambda t: t * 2.0, name="lambda")(z)
    c = K3.Concatenate(name="concat")([y, z, -y])
    out1 = K3.Dense(4, activation="softmax", name="logits")(c)
    out2 = K3.Conv2D(2, 1, activation="tanh", name="side")(x)
    return keras3.Model([a, b], [out1, out2], name="everything")


def test_everything():
    model = _randomize(_everything())
    new = from_keras3(model)
    _check_equal(model, new)
    assert [t.name for t in new.inputs] == ["a", "b"]
    assert new.get_layer("shared").name == "shared"
    assert len(new.get_layer("shared").inbound_nodes) == 2  # still shared
    assert keras.activations.serialize(new.get_layer("hswish").activation)["config"] == \
        HARD_SWISH
    assert keras.activations.serialize(new.get_layer("nested").get_layer("inner").activation)[
        "config"] == HARD_SIGMOID
    assert new.get_layer("sep").get_config()["activation"] == "swish"
    # the ops became TFOpLambda / Activation layers that sanitize() rewrites
    sanitized = sanitize(new)
    assert not [layer for layer in sanitized.layers if type(layer).__name__ == "TFOpLambda"]
    x = _inputs(model)
    for a, b in zip(_outputs(model, x), _outputs(sanitized, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_unsupported_layers_are_all_named():
    @keras3.saving.register_keras_serializable(package="Test")
    class Twice(K3.Layer):
        def call(self, x):
            return x * 2

    class Shift(K3.Layer):
        def call(self, x):
            return x + 1

    inputs = keras3.Input((4,))
    x = Twice(name="twice")(inputs)
    x = K3.Dense(3, name="dense")(x)
    x = Shift(name="shift")(x)
    x = keras3.ops.cumsum(x, axis=-1)
    with pytest.raises(ValueError) as info:
        from_keras3(keras3.Model(inputs, x))
    message = str(info.value)
    assert "Received: 3 layer(s) that cannot be converted" in message
    for expected in ("twice (Twice)", "Test>Twice", "shift (Shift)", "(Cumsum)"):
        assert expected in message
    assert "dense" not in message.split("Received:")[1]


def test_unsupported_option():
    inputs = keras3.Input((4,))
    model = keras3.Model(inputs, K3.Dense(3, lora_rank=2, name="lora")(inputs))
    with pytest.raises(ValueError, match=r"lora \(Dense\): Dense option lora_rank=2"):
        from_keras3(model)


def test_wrong_models():
    with pytest.raises(TypeError, match="expected a Keras 3 model"):
        from_keras3(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))

    class Subclassed(keras3.Model):
        def __init__(self):
            super().__init__()
            self.dense = K3.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="subclassed model"):
        from_keras3(model)


def test_output_check_fails_without_the_weights(monkeypatch):
    """The output check catches a twin that differs (here: weights not copied)."""
    monkeypatch.setattr(k3_module, "_copy_weights", lambda builder: None)
    with pytest.raises(ValueError, match="give its outputs"):
        from_keras3(_randomize(_conv_bn_relu_dense()))


@pytest.mark.slow
def test_mobilenet_v2_then_quantize():
    model = keras3.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None,
                                            classifier_activation=None)
    model = _randomize(model, kernels=False)  # 0.5-std kernels: float errors grow 2x a block
    new = from_keras3(model)
    _check_equal(model, new, rtol=1e-4, atol=1e-4)
    samples = np.random.default_rng(0).uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples, batch_size=4)  # the Keras 3 model directly
    assert np.asarray(qmodel(samples)).shape == (4, 1000)


def test_application_layers_convert_and_quantize():
    """The layers Keras 3's applications define themselves (ConvNeXt's LayerScale and
    StochasticDepth, InceptionResNetV2's CustomScaleLayer) become their tf_keras
    applications' twins, weights copied; quantize() then folds the LayerScale."""
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    inputs = keras3.Input((6, 6, 3), name="image")
    x = K3.Conv2D(4, 3, padding="same", name="conv")(inputs)
    branch = K3.Conv2D(4, 1, name="branch")(x)
    y = CustomScaleLayer(0.17, name="scaled_add")([x, branch])
    z = K3.Conv2D(4, 1, name="pointwise")(y)
    z = LayerScale(1e-1, 4, name="layer_scale")(z)
    z = StochasticDepth(0.1, name="drop_path")(z)
    y = K3.Add(name="add")([y, z])
    model = keras3.Model(inputs, K3.Dense(3, name="dense")(K3.GlobalAveragePooling2D()(y)))
    model = _randomize(model)
    new = from_keras3(model)
    _check_equal(model, new)
    assert [type(new.get_layer(n)).__module__ for n in ("scaled_add", "layer_scale",
                                                        "drop_path")] == \
        ["tf_keras.src.applications.inception_resnet_v2",
         "tf_keras.src.applications.convnext", "tf_keras.src.applications.convnext"]
    np.testing.assert_array_equal(new.get_layer("layer_scale").get_weights()[0],
                                  model.get_layer("layer_scale").get_weights()[0])
    samples = np.random.default_rng(0).uniform(-1, 1, (16, 6, 6, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples, batch_size=16)
    names = {layer.name for layer in qmodel.layers}
    assert "layer_scale" not in names and "drop_path" not in names  # folded, removed
    y, q = np.asarray(model(samples)), np.asarray(qmodel(samples))
    assert 10 * np.log10(np.sum(y ** 2) / np.sum((y - q) ** 2)) > 15


def test_wrappers_and_1d_layers_convert_and_quantize():
    """A Keras 3 sequence model: TimeDistributed(Dense) (the wrapped layer's config
    translated too), a causal Conv1D + BatchNormalization, SpatialDropout1D, pooling 1-D:
    converted with equal outputs, then quantized to an all-integer model."""
    inputs = keras3.Input((16, 5))
    x = K3.TimeDistributed(K3.Dense(8, activation="relu"), name="td")(inputs)
    x = K3.Conv1D(8, 3, padding="causal", name="conv")(x)
    x = K3.BatchNormalization(name="bn")(x)
    x = K3.SpatialDropout1D(0.2)(K3.ReLU()(x))
    x = K3.GlobalAveragePooling1D()(K3.MaxPooling1D(2)(x))
    model = _randomize(keras3.Model(inputs, K3.Dense(3, name="out")(x)))
    new = from_keras3(model)
    _check_equal(model, new)
    assert type(new.get_layer("td")) is keras.layers.TimeDistributed
    assert type(new.get_layer("td").layer) is keras.layers.Dense
    samples = np.random.default_rng(0).normal(size=(40, 16, 5)).astype(np.float32)
    qmodel = quantize(model, samples=samples[:32])
    assert all(type(layer).__module__.startswith("quantizeml")
               or isinstance(layer, keras.layers.InputLayer) for layer in qmodel.layers)
    y, q = np.asarray(model(samples[32:])), np.asarray(qmodel(samples[32:]))
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)  # SQNR above 20 dB


def test_wrapper_of_unknown_layer_is_named():
    class Shift(K3.Layer):
        def call(self, x):
            return x + 1

        def compute_output_shape(self, input_shape):
            return input_shape

    inputs = keras3.Input((4, 3))
    model = keras3.Model(inputs, K3.TimeDistributed(Shift(), name="td")(inputs))
    with pytest.raises(ValueError, match=r"td \(TimeDistributed\).*wraps Shift"):
        from_keras3(model)


def test_ops_with_options_and_renamed_options_convert_and_quantize():
    """keras.ops.concatenate / mean / max with their options (spatial reductions become
    global pooling in quantize()) and LeakyReLU(negative_slope) (tf_keras' alpha): converted
    with equal outputs, then quantized to an all-integer model."""
    inputs = keras3.Input((8, 8, 3))
    a = K3.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = K3.LeakyReLU(negative_slope=0.2, name="leaky")(K3.Conv2D(4, 1, name="b")(inputs))
    x = keras3.ops.concatenate([K3.ReLU()(a), b], axis=-1)
    pooled = keras3.ops.max(x, axis=[1, 2], keepdims=True)
    x = keras3.ops.mean(x, axis=[1, 2])
    x = K3.Concatenate()([x, K3.Flatten()(pooled)])
    model = _randomize(keras3.Model(inputs, K3.Dense(3, name="out")(x)))
    new = from_keras3(model)
    _check_equal(model, new)
    assert new.get_layer("leaky").get_config()["alpha"] == pytest.approx(0.2)
    samples = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples[:32])
    assert all(type(layer).__module__.startswith("quantizeml")
               or isinstance(layer, keras.layers.InputLayer) for layer in qmodel.layers)
    y, q = np.asarray(model(samples[32:])), np.asarray(qmodel(samples[32:]))
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)  # SQNR above 20 dB


def test_slices_and_splits_convert_and_quantize():
    """Keras 3 slices (``x[..., a:b]``, ``x[:, a:b:s]``: GetItem ops) and ``keras.ops.split``
    (sections and split indices, numpy's semantics): converted with equal outputs, then
    quantized to an all-integer model (Slicing layers)."""
    inputs = keras3.Input((8, 8, 3))
    y = K3.Conv2D(8, 3, padding="same", name="conv")(inputs)
    a = K3.Conv2D(4, 1, name="a")(y[..., 2:6])
    b = K3.Conv2D(4, 1, name="b")(y[:, 1:7:2, 3:, :])
    low, high = keras3.ops.split(y, [3], axis=-1)
    top, bottom = keras3.ops.split(y, 2, axis=1)
    x = K3.Concatenate()([K3.Flatten()(t) for t in (a, b, low, high, top, bottom)])
    model = _randomize(keras3.Model(inputs, K3.Dense(3, name="out")(x)))
    new = from_keras3(model)
    _check_equal(model, new)
    samples = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples[:32])
    assert sum(type(layer).__name__ == "QuantizedSlicing" for layer in qmodel.layers) == 6
    assert all(type(layer).__module__.startswith("quantizeml")
               or isinstance(layer, keras.layers.InputLayer) for layer in qmodel.layers)
    y, q = np.asarray(model(samples[32:])), np.asarray(qmodel(samples[32:]))
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)  # SQNR above 20 dB


def test_multi_head_attention_converts_and_quantizes():
    """Keras 3's MultiHeadAttention becomes tf_keras' (self- and cross-attention: equal
    outputs); quantize() splits the self-attention into Dense projections and an Attention
    (and ``x[:, 0]`` becomes an ExtractToken): an all-integer model close to the float one
    (SQNR above 20 dB)."""
    tokens, other = keras3.Input((6, 16)), keras3.Input((4, 16))
    y = K3.LayerNormalization(name="norm")(tokens)
    y = K3.MultiHeadAttention(2, 8, name="self")(y, y)
    x = K3.Add(name="add")([tokens, y])
    cross = K3.MultiHeadAttention(2, 4, name="cross")(x, other)
    y = K3.Dense(8, activation="gelu", name="mlp")(x)
    model = _randomize(keras3.Model([tokens, other], [y[:, 0], cross]), kernels=False)
    _check_equal(model, from_keras3(model))
    single = keras3.Model(tokens, model.outputs[0])
    samples = np.random.default_rng(0).normal(size=(40, 6, 16)).astype(np.float32)
    qmodel = quantize(single, samples=samples[:32])
    names = [type(layer).__name__ for layer in qmodel.layers]
    assert "QuantizedAttention" in names and "QuantizedExtractToken" in names, names
    assert all(type(layer).__module__.startswith("quantizeml")
               or isinstance(layer, keras.layers.InputLayer) for layer in qmodel.layers)
    y, q = np.asarray(single(samples[32:])), np.asarray(qmodel(samples[32:]))
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)  # SQNR above 20 dB


def test_matmul_softmax_transpose_ops_convert_and_quantize():
    """A hand-written Keras 3 attention (``ops.matmul``, ``ops.transpose``, ``ops.softmax``):
    converted with equal outputs, then quantized to an all-integer model (QuantizedDot,
    QuantizedSoftmax), SQNR above 20 dB."""
    inputs = keras3.Input((6, 16))
    q, k, v = (K3.Dense(16, name=n)(inputs) for n in ("q", "k", "v"))
    scores = keras3.ops.softmax(keras3.ops.matmul(q, keras3.ops.transpose(k, (0, 2, 1))),
                                axis=-1)
    y = K3.Flatten()(keras3.ops.matmul(scores, v))
    model = keras3.Model(inputs, K3.Dense(3, name="out")(y))
    _check_equal(model, from_keras3(model))
    samples = np.random.default_rng(0).normal(size=(40, 6, 16)).astype(np.float32)
    qmodel = quantize(model, samples=samples[:32])
    names = [type(layer).__name__ for layer in qmodel.layers]
    assert names.count("QuantizedDot") == 2 and "QuantizedSoftmax" in names, names
    assert all(type(layer).__module__.startswith("quantizeml")
               or isinstance(layer, keras.layers.InputLayer) for layer in qmodel.layers)
    y, q = np.asarray(model(samples[32:])), np.asarray(qmodel(samples[32:]))
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)


@pytest.mark.parametrize("case", ["sum", "square", "power", "expand_squeeze", "reshape",
                                  "depth_to_space", "space_to_depth"])
def test_reduction_power_and_move_ops_convert_and_quantize(case):
    """Keras 3's ``ops.sum`` (over the channels), ``square``, ``power(x, 2)``,
    ``expand_dims`` / ``squeeze``, ``reshape`` and the pixel shuffles convert with equal
    outputs and quantize to all-integer models (SQNR above 20 dB)."""
    ops = keras3.ops
    fn = {"sum": lambda x: ops.sum(x, axis=-1, keepdims=True),
          "square": ops.square, "power": lambda x: ops.power(x, 2),
          "expand_squeeze": lambda x: ops.squeeze(ops.expand_dims(x, 3), 3),
          "reshape": lambda x: ops.reshape(x, (-1, 2, 8, 8)),
          "depth_to_space": lambda x: ops.depth_to_space(x, 2),
          "space_to_depth": lambda x: ops.space_to_depth(x, 2)}[case]
    inputs = keras3.Input((4, 4, 3))
    x = K3.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    model = keras3.Model(inputs, K3.Flatten()(K3.Conv2D(4, 1, name="head")(fn(x))))
    _check_equal(model, from_keras3(model))
    samples = np.random.default_rng(0).uniform(-1, 1, size=(40, 4, 4, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples[:32])
    assert all(type(layer).__module__.startswith("quantizeml")
               or isinstance(layer, keras.layers.InputLayer) for layer in qmodel.layers)
    y, q = np.asarray(model(samples[32:])), np.asarray(qmodel(samples[32:]))
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)


def test_output_check_runs_on_the_samples(monkeypatch):
    """With samples, the conversion check runs on the first two of them (cast to the input
    dtype), so quantize() checks on data-like inputs; without (or with samples that are not
    arrays of the input shape, e.g. a generator), on a random batch in [-1, 1]."""
    model = _randomize(_conv_bn_relu_dense())
    seen = []
    outputs = k3_module._outputs

    def recording(m, x):
        seen.append(x)
        return outputs(m, x)
    monkeypatch.setattr(k3_module, "_outputs", recording)
    pixels = np.floor(np.random.default_rng(1).uniform(0, 256, (5, 8, 8, 3)))  # float64
    from_keras3(model, samples=pixels)
    assert len(seen) == 2 and all(len(x) == 1 for x in seen)
    np.testing.assert_array_equal(seen[0][0], pixels[:2].astype(np.float32))
    assert seen[0][0].dtype == np.float32
    seen.clear()
    from_keras3(model, samples=(v for v in pixels))
    assert seen[0][0].shape == (2, 8, 8, 3) and np.abs(seen[0][0]).max() <= 1.0
    seen.clear()
    quantize(model, samples=pixels.astype(np.float32), batch_size=5)
    np.testing.assert_array_equal(seen[0][0], pixels[:2].astype(np.float32))


@pytest.mark.parametrize("cancelling", [False, True])
def test_output_check_tolerates_what_the_model_amplifies(monkeypatch, cancelling):
    """A twin 1e-3 off fails the check, unless the Keras 3 model itself moves by more when its
    inputs move by 1e-6 (here: a difference of two nearly equal inputs times 1e4, which a
    1e-6 input perturbation moves by ~1e-2)."""
    inputs = keras3.Input((2,))
    model = keras3.Model(inputs, K3.Dense(1, use_bias=False, name="d")(inputs))
    model.get_layer("d").set_weights([np.array([[1e4], [-1e4]] if cancelling else
                                               [[1.0], [1.0]], np.float32)])
    samples = np.array([[1.0, 1.0001]] * 4, np.float32)
    outputs = k3_module._outputs

    def offset(m, x):
        ys = outputs(m, x)
        return [y + 1e-3 for y in ys] if isinstance(m, keras.Model) else ys
    monkeypatch.setattr(k3_module, "_outputs", offset)
    if cancelling:
        from_keras3(model, samples=samples)
    else:
        with pytest.raises(ValueError, match="1e-06 relative input perturbation"):
            from_keras3(model, samples=samples)
