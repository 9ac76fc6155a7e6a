"""Low-bit layers: parity with their Keras twins, quantized maths, serialization, training."""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml import quantizers as q
from quantizeml.layers.lowbit import (QuantConv2D, QuantDense, QuantDepthwiseConv2D,
                                      binary_digits_cnn)

# One line per layer: (quantized layer, Keras twin, weight attribute, weight quantizer argument,
# constructor kwargs, input shape).
PARAMS = [
    (QuantDense, keras.layers.Dense, "kernel", "kernel_quantizer", dict(units=3), (2, 5)),
    (QuantConv2D, keras.layers.Conv2D, "kernel", "kernel_quantizer",
     dict(filters=3, kernel_size=3, padding="same"), (2, 5, 5, 2)),
    (QuantDepthwiseConv2D, keras.layers.DepthwiseConv2D, "depthwise_kernel",
     "depthwise_quantizer", dict(kernel_size=3, depth_multiplier=2), (2, 5, 5, 2)),
]
IDS = ["dense", "conv2d", "depthwise_conv2d"]


def parameters(cls):
    return [p for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind != p.VAR_KEYWORD]


@pytest.mark.parametrize("cls, twin, weight, quantizer_arg, kwargs, shape", PARAMS, ids=IDS)
def test_signature_parity(cls, twin, weight, quantizer_arg, kwargs, shape):
    ours, theirs = parameters(cls), parameters(twin)
    assert [(p.name, p.default) for p in ours[:len(theirs)]] == \
        [(p.name, p.default) for p in theirs]
    assert [(p.name, p.default) for p in ours[len(theirs):]] == \
        [("input_quantizer", None), (quantizer_arg, None)]


def twin_pair(cls, twin, weight, kwargs, shape, **quant_kwargs):
    """A quantized layer and its Keras twin sharing the same (random) weights."""
    layer, reference = cls(**kwargs, **quant_kwargs), twin(**kwargs)
    layer.build(shape)
    reference.build(shape)
    rng = np.random.default_rng(0)
    values = [rng.uniform(-1.5, 1.5, w.shape).astype(np.float32) for w in reference.weights]
    reference.set_weights(values)
    layer.set_weights(values + layer.get_weights()[len(values):])
    return layer, reference


@pytest.mark.parametrize("cls, twin, weight, quantizer_arg, kwargs, shape", PARAMS, ids=IDS)
def test_without_quantizers_equals_keras_twin(cls, twin, weight, quantizer_arg, kwargs, shape):
    layer, reference = twin_pair(cls, twin, weight, kwargs, shape)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(layer(x).numpy(), reference(x).numpy())


@pytest.mark.parametrize("cls, twin, weight, quantizer_arg, kwargs, shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("quantizer", ["ste_sign", q.SteTern(threshold_value=0.5),
                                       q.DoReFa(k_bit=2, mode="weights")],
                         ids=["ste_sign", "ste_tern", "dorefa"])
def test_quantized_forward_and_gradient(cls, twin, weight, quantizer_arg, kwargs, shape,
                                        quantizer):
    """Outputs equal the twin on quantized inputs and weights; the latent weight gradient is
    the twin's gradient times the quantizer's pseudo-gradient."""
    layer, reference = twin_pair(cls, twin, weight, kwargs, shape, input_quantizer="ste_sign",
                                 **{quantizer_arg: quantizer})
    fn = q.get(quantizer)
    latent = getattr(layer, weight)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(latent)
        quantized_weight = fn(latent)
    getattr(reference, weight).assign(quantized_weight)
    with tf.GradientTape(persistent=True) as tape2:
        outputs = layer(x)
        expected = reference(np.where(x < 0, -1.0, 1.0).astype(np.float32))
        loss, reference_loss = tf.reduce_sum(outputs ** 2), tf.reduce_sum(expected ** 2)
    np.testing.assert_allclose(outputs.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    upstream = tape2.gradient(reference_loss, getattr(reference, weight))
    with tf.GradientTape() as tape3:
        tape3.watch(latent)
        chained = tf.reduce_sum(fn(latent) * upstream)
    np.testing.assert_allclose(tape2.gradient(loss, latent).numpy(),
                               tape3.gradient(chained, latent).numpy(), rtol=1e-5, atol=1e-5)
    assert np.any(tape2.gradient(loss, latent).numpy() != 0)


@pytest.mark.parametrize("cls, twin, weight, quantizer_arg, kwargs, shape", PARAMS, ids=IDS)
def test_strings_resolve_and_config_round_trips(cls, twin, weight, quantizer_arg, kwargs,
                                                shape):
    constraint_arg = "kernel_constraint" if weight == "kernel" else "depthwise_constraint"
    layer = cls(**kwargs, input_quantizer="ste_sign",
                **{quantizer_arg: "dorefa", constraint_arg: "weight_clip"})
    assert layer.input_quantizer == q.SteSign()
    assert getattr(layer, quantizer_arg) == q.DoReFa()
    assert getattr(layer, constraint_arg) == q.WeightClip()
    config = json.loads(json.dumps(layer.get_config()))  # JSON-native (tuples become lists)
    clone = cls.from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    assert getattr(clone, quantizer_arg) == q.DoReFa()
    assert getattr(clone, constraint_arg) == q.WeightClip()


# Every quantizer, by name as Larq users write it (or as a dict when it needs an argument).
KERNEL_QUANTIZERS = ["ste_sign", "approx_sign", "ste_heaviside", "swish_sign",
                     "magnitude_aware_sign", "ste_tern", "dorefa_quantizer", "dorefa",
                     {"class_name": "noop", "config": {"precision": 1}},
                     "last_value_quantizer", "moving_average_quantizer", "all_values_quantizer"]


def small_model():
    inputs = keras.Input((6, 6, 2))
    x = QuantConv2D(4, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")(inputs)
    x = QuantDepthwiseConv2D(3, input_quantizer="ste_sign", depthwise_quantizer="ste_tern",
                             depthwise_constraint="weight_clip")(x)
    x = keras.layers.Flatten()(x)
    heads = [QuantDense(3, input_quantizer="ste_sign", kernel_quantizer=quantizer,
                        kernel_constraint="weight_clip")(x)
             for quantizer in KERNEL_QUANTIZERS]
    return keras.Model(inputs, keras.layers.Concatenate()(heads))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("save_format", ["h5", pytest.param("tf", marks=pytest.mark.slow)])
def test_save_and_load_are_bit_identical(tmp_path, save_format):
    model = small_model()
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype(np.float32)
    model(x, training=True)  # the range quantizers now hold non-initial ranges
    expected = model(x, training=False).numpy()
    path = os.path.join(tmp_path, "model.h5" if save_format == "h5" else "model")
    model.save(path, save_format=save_format)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    dense = [layer for layer in loaded.layers if isinstance(layer, QuantDense)]
    assert [layer.kernel_quantizer for layer in dense] == \
        [q.get(quantizer) for quantizer in KERNEL_QUANTIZERS]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_load_model_needs_only_import_quantizeml(tmp_path):
    """A fresh interpreter that only imports quantizeml reloads the model: every class is
    registered with Keras when the package is imported."""
    model = small_model()
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype(np.float32)
    path = os.path.join(tmp_path, "model.h5")
    model.save(path)
    np.save(os.path.join(tmp_path, "x.npy"), x)
    np.save(os.path.join(tmp_path, "y.npy"), model(x).numpy())
    script = ("import sys, numpy as np, tf_keras, quantizeml\n"
              "d = sys.argv[1]\n"
              "model = tf_keras.models.load_model(d + '/model.h5')\n"
              "y = model(np.load(d + '/x.npy')).numpy()\n"
              "assert np.array_equal(y, np.load(d + '/y.npy'))\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_mixed_float16_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((5, 5, 2))
        x = QuantConv2D(3, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")(
            inputs)
        x = QuantDepthwiseConv2D(3, input_quantizer="ste_sign", depthwise_quantizer="dorefa")(x)
        x = keras.layers.Flatten()(x)
        outputs = QuantDense(2, input_quantizer="moving_average_quantizer",
                             kernel_quantizer=q.SteSign(metrics=["flip_ratio"]))(x)
        model = keras.Model(inputs, outputs)
        model.compile("adam", "mse")
        rng = np.random.default_rng(0)
        history = model.fit(rng.normal(size=(8, 5, 5, 2)), rng.normal(size=(8, 2)),
                            batch_size=4, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.output.dtype == tf.float16
    assert all(w.dtype == tf.float32 for w in model.weights)
    assert np.isfinite(history.history["loss"][0])


def test_training_keeps_weights_clipped_and_reports_flip_ratio():
    inputs = keras.Input((4,))
    outputs = QuantDense(3, kernel_quantizer=q.SteSign(metrics=["flip_ratio"]),
                         kernel_constraint="weight_clip",
                         kernel_initializer=keras.initializers.RandomUniform(-3, 3))(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(1.0), "mse")
    rng = np.random.default_rng(0)
    history = model.fit(rng.normal(size=(64, 4)), rng.normal(size=(64, 3)) * 10, batch_size=8,
                        epochs=2, verbose=0)
    kernel = model.layers[1].kernel.numpy()
    assert np.all(np.abs(kernel) <= 1.0)
    ratios = history.history["flip_ratio/quant_dense"]
    assert len(ratios) == 2 and all(0 <= r <= 1 for r in ratios) and max(ratios) > 0


def test_tfmot_quantizer_state_lives_on_the_layer():
    layer = QuantDense(2, input_quantizer="moving_average_quantizer",
                       kernel_quantizer=q.LastValueQuantizer(num_bits=4, per_axis=True))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    layer(x, training=True)
    names = [w.name.split("/")[-1] for w in layer.non_trainable_weights]
    assert names == ["input_min:0", "input_max:0", "kernel_min:0", "kernel_max:0"]
    kernel = layer.kernel.numpy()
    np.testing.assert_allclose(layer.non_trainable_weights[3].numpy(),
                               np.max(np.abs(kernel), axis=0), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("depthwise, minimum", [(True, 0.80), (False, 0.88)],
                         ids=["depthwise", "conv"])
def test_binary_digits_cnn_accuracy(depthwise, minimum):
    from sklearn.datasets import load_digits  # the test extra; imported here, as it is slow
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16).astype("float32")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, random_state=0)
    keras.utils.set_random_seed(0)
    model = binary_digits_cnn(depthwise=depthwise)
    model.fit(x_train, y_train, batch_size=32, epochs=10, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"binary digits CNN (depthwise={depthwise}) test accuracy: {accuracy:.4f}")
    assert accuracy >= minimum


# ---- Larq compatibility: the quantized variable carries its quantizer's precision ------------
PRECISION_LAYERS = {
    "QuantDense": (lambda **kw: QuantDense(4, **kw), "kernel", "kernel_quantizer", (2, 6)),
    "QuantConv2D": (lambda **kw: QuantConv2D(4, 3, **kw), "kernel", "kernel_quantizer",
                    (1, 5, 5, 2)),
    "QuantDepthwiseConv2D": (lambda **kw: QuantDepthwiseConv2D(3, **kw), "depthwise_kernel",
                             "depthwise_quantizer", (1, 5, 5, 2)),
}


@pytest.mark.parametrize("quantizer, precision", [
    (lambda: q.NoOp(precision=1), 1), (lambda: "ste_sign", 1),
    (lambda: q.SteTern(), 2), (lambda: q.DoReFa(k_bit=3, mode="weights"), 3),
    (lambda: q.ste_sign, 1)],
    ids=["noop-1", "ste_sign-str", "ste_tern", "dorefa-3", "ste_sign-fn"])
@pytest.mark.parametrize("kind", list(PRECISION_LAYERS))
def test_quantized_variable_precision(kind, quantizer, precision):
    make, weight_name, quantizer_arg, shape = PRECISION_LAYERS[kind]
    layer = make(**{quantizer_arg: quantizer()})
    layer.build(shape)
    assert getattr(layer, weight_name).precision == precision


def test_larq_noop_example():
    """The example of Larq's NoOp documentation."""
    layer = QuantDense(16, kernel_quantizer=q.NoOp(precision=1))
    layer.build((32,))
    assert layer.kernel.precision == 1


def test_no_precision_without_quantizer():
    layer = QuantDense(4)
    layer.build((2, 6))
    assert not hasattr(layer.kernel, "precision")


def test_quant_dense_ste_sign_activation_round_trip(tmp_path):
    """QuantDense(..., activation="ste_sign") saves and reloads (h5) bit for bit."""
    inputs = keras.Input((6,))
    outputs = QuantDense(4, activation="ste_sign", input_quantizer="ste_sign",
                         kernel_quantizer=q.SteSign(name="kq"))(inputs)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "model.h5")
    model.save(path)
    reloaded = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(reloaded(x), model(x))
    assert reloaded.layers[-1].kernel.precision == 1
