"""Low-bit quantizers (Larq family): forward values and pseudo-gradients against the formulas."""
import json

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantizeml import quantizers as q

# A grid of inputs holding the clip boundaries (+-0.5, +-1, +-2), 0 and points around them.
GRID = np.unique(np.concatenate([
    np.linspace(-3, 3, 61),
    [-1.0, 1.0, -0.5, 0.5, 0.0, -2.0, 2.0, 0.05, -0.05],
    np.nextafter(np.float32([-1, 1, 0.5, -0.5]), np.float32(0)),
    np.nextafter(np.float32([-1, 1, 0.5, -0.5]), np.float32(5) * np.sign([-1, 1, 0.5, -0.5])),
]).astype(np.float32))


def np_sign(x):
    return np.where(x < 0, -1.0, 1.0).astype(np.float32)


def clip_mask(x, clip_value):
    if clip_value is None:
        return np.ones_like(x)
    return (np.abs(x) <= clip_value).astype(np.float32)


def forward_and_grad(fn, x):
    """Outputs and d(sum(q(x) * u))/dx for a random upstream u: the gradient is u * dq/dx."""
    x = tf.constant(x)
    upstream = tf.constant(np.random.default_rng(1).uniform(0.5, 2.0, x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, x).numpy(), upstream.numpy()


def swish_grad(x, beta):
    bx = beta * x
    return beta * (2 - bx * np.tanh(bx / 2)) / (1 + np.cosh(bx))


SIGN_CASES = [
    ("ste_sign", lambda x: q.ste_sign(x), np_sign, lambda x: clip_mask(x, 1.0)),
    ("ste_sign_clip_0.5", lambda x: q.ste_sign(x, clip_value=0.5), np_sign,
     lambda x: clip_mask(x, 0.5)),
    ("ste_sign_no_clip", lambda x: q.ste_sign(x, clip_value=None), np_sign,
     lambda x: clip_mask(x, None)),
    ("approx_sign", q.approx_sign, np_sign,
     lambda x: np.where(np.abs(x) <= 1, 2 - 2 * np.abs(x), 0.0)),
    ("ste_heaviside", lambda x: q.ste_heaviside(x), lambda x: (x > 0).astype(np.float32),
     lambda x: clip_mask(x, 1.0)),
    ("ste_heaviside_clip_2", lambda x: q.ste_heaviside(x, clip_value=2.0),
     lambda x: (x > 0).astype(np.float32), lambda x: clip_mask(x, 2.0)),
    ("swish_sign", lambda x: q.swish_sign(x), np_sign, lambda x: swish_grad(x, 5.0)),
    ("swish_sign_beta_2", lambda x: q.swish_sign(x, beta=2.0), np_sign,
     lambda x: swish_grad(x, 2.0)),
    ("ste_tern", lambda x: q.ste_tern(x),
     lambda x: np.where(x >= 0.05, 1.0, np.where(x <= -0.05, -1.0, 0.0)),
     lambda x: clip_mask(x, 1.0)),
    ("ste_tern_threshold_0.5_clip_0.5", lambda x: q.ste_tern(x, threshold_value=0.5,
                                                              clip_value=0.5),
     lambda x: np.where(x >= 0.5, 1.0, np.where(x <= -0.5, -1.0, 0.0)),
     lambda x: clip_mask(x, 0.5)),
    ("dorefa_activations_2", lambda x: q.dorefa(x, k_bit=2),
     lambda x: np.round(np.clip(x, 0, 1) * 3) / 3,
     lambda x: ((x >= 0) & (x <= 1)).astype(np.float32)),
    ("dorefa_activations_4", lambda x: q.dorefa(x, k_bit=4),
     lambda x: np.round(np.clip(x, 0, 1) * 15) / 15,
     lambda x: ((x >= 0) & (x <= 1)).astype(np.float32)),
]


@pytest.mark.parametrize("fn, forward, derivative", [c[1:] for c in SIGN_CASES],
                         ids=[c[0] for c in SIGN_CASES])
def test_forward_and_pseudo_gradient_on_grid(fn, forward, derivative):
    y, grad, upstream = forward_and_grad(fn, GRID)
    np.testing.assert_array_equal(y, forward(GRID))
    np.testing.assert_allclose(grad, upstream * derivative(GRID), rtol=1e-6, atol=1e-6)


def test_ste_tern_ternary_weight_networks_threshold():
    x = np.random.default_rng(0).normal(size=(50,)).astype(np.float32)
    delta = 0.7 * np.mean(np.abs(x))
    y, grad, upstream = forward_and_grad(
        lambda t: q.ste_tern(t, ternary_weight_networks=True), x)
    np.testing.assert_array_equal(y, np.where(x >= delta, 1, np.where(x <= -delta, -1, 0)))
    np.testing.assert_allclose(grad, upstream * clip_mask(x, 1.0), rtol=1e-6)


@pytest.mark.parametrize("clip_value", [1.0, 0.5, None], ids=["clip1", "clip0.5", "noclip"])
def test_magnitude_aware_sign(clip_value):
    x = np.random.default_rng(0).uniform(-2, 2, size=(3, 3, 4, 5)).astype(np.float32)
    scale = np.mean(np.abs(x), axis=(0, 1, 2))
    y, grad, upstream = forward_and_grad(
        lambda t: q.magnitude_aware_sign(t, clip_value=clip_value), x)
    np.testing.assert_allclose(y, scale * np_sign(x), rtol=1e-6)
    np.testing.assert_allclose(grad, upstream * scale * clip_mask(x, clip_value), rtol=1e-5)


@pytest.mark.parametrize("k_bit", [1, 2, 3], ids=["k1", "k2", "k3"])
def test_dorefa_weights(k_bit):
    w = np.concatenate([GRID / 3, [0.7, -0.9]]).astype(np.float32)
    n = 2 ** k_bit - 1
    limited = np.tanh(w.astype(np.float64))
    dividend = np.max(np.abs(limited))
    expected = 2 * np.round((limited / (2 * dividend) + 0.5) * n) / n - 1
    y, grad, upstream = forward_and_grad(lambda t: q.dorefa(t, k_bit=k_bit, mode="weights"), w)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    np.testing.assert_allclose(grad, upstream * (1 - limited ** 2) / dividend, rtol=1e-5)


def test_dorefa_weights_all_zero_is_not_normed():
    y = q.dorefa(tf.zeros((4,)), k_bit=2, mode="weights").numpy()
    np.testing.assert_allclose(y, np.full(4, 2 * np.round(0.5 * 3) / 3 - 1), atol=1e-6)


CLASS_CASES = [
    ("SteSign", q.SteSign(), q.ste_sign, 1),
    ("SteSign_clip", q.SteSign(clip_value=0.25), lambda x: q.ste_sign(x, 0.25), 1),
    ("ApproxSign", q.ApproxSign(), q.approx_sign, 1),
    ("SteHeaviside", q.SteHeaviside(clip_value=2.0), lambda x: q.ste_heaviside(x, 2.0), 1),
    ("SwishSign", q.SwishSign(beta=3.0), lambda x: q.swish_sign(x, 3.0), 1),
    ("MagnitudeAwareSign", q.MagnitudeAwareSign(), q.magnitude_aware_sign, 1),
    ("SteTern", q.SteTern(threshold_value=0.3, clip_value=None),
     lambda x: q.ste_tern(x, 0.3, False, None), 2),
    ("SteTern_twn", q.SteTern(ternary_weight_networks=True),
     lambda x: q.ste_tern(x, ternary_weight_networks=True), 2),
    ("DoReFa", q.DoReFa(), q.dorefa, 2),
    ("DoReFa_weights", q.DoReFa(k_bit=3, mode="weights"),
     lambda x: q.dorefa(x, 3, "weights"), 3),
    ("NoOp", q.NoOp(precision=4), lambda x: x, 4),
]


@pytest.mark.parametrize("quantizer, fn, precision", [c[1:] for c in CLASS_CASES],
                         ids=[c[0] for c in CLASS_CASES])
def test_class_is_its_function(quantizer, fn, precision):
    x = np.random.default_rng(0).uniform(-2, 2, size=(4, 6)).astype(np.float32)
    y_cls, g_cls, _ = forward_and_grad(quantizer, x)
    y_fn, g_fn, _ = forward_and_grad(fn, x)
    np.testing.assert_array_equal(y_cls, y_fn)
    np.testing.assert_array_equal(g_cls, g_fn)
    assert quantizer.precision == precision


@pytest.mark.parametrize("quantizer", [c[1] for c in CLASS_CASES],
                         ids=[c[0] for c in CLASS_CASES])
def test_config_round_trip(quantizer):
    config = quantizer.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = type(quantizer).from_config(config)
    assert clone == quantizer and hash(clone) == hash(quantizer)
    assert clone.get_config() == config
    assert q.deserialize(json.loads(json.dumps(q.serialize(quantizer)))) == quantizer


def test_get_config_keeps_every_constructor_argument():
    # the Keras layer arguments first ({**super().get_config(), ...}), then the quantizer's
    assert q.SteTern(0.1, True, None, metrics=["flip_ratio"], name="t").get_config() == {
        "name": "t", "trainable": True, "dtype": "float32",
        "threshold_value": 0.1, "ternary_weight_networks": True, "clip_value": None,
        "metrics": ["flip_ratio"]}
    assert q.DoReFa(k_bit=4, mode="weights", name="d").get_config() == {
        "name": "d", "trainable": True, "dtype": "float32",
        "k_bit": 4, "mode": "weights", "metrics": None}
    assert q.SteSign(clip_value=2) != q.SteSign()


@pytest.mark.parametrize("make, match", [
    (lambda: q.DoReFa(mode="kernel"), "mode expected one of"),
    (lambda: q.DoReFa(k_bit=0), "k_bit expected"),
    (lambda: q.dorefa(tf.zeros(2), mode="bad"), "mode expected one of"),
    (lambda: q.SteSign(clip_value=-1.0), "clip_value expected"),
    (lambda: q.SteSign(clip_value="1"), "clip_value expected"),
    (lambda: q.SwishSign(beta=0.0), "beta expected"),
    (lambda: q.SteTern(threshold_value=-0.1), "threshold_value expected"),
    (lambda: q.NoOp(precision=0), "precision expected"),
    (lambda: q.SteSign(metrics=["accuracy"]), "metrics expected"),
], ids=["dorefa_mode", "dorefa_k_bit", "dorefa_fn_mode", "negative_clip", "str_clip",
        "zero_beta", "negative_threshold", "zero_precision", "unknown_metric"])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_ternary_weight_networks_must_be_bool():
    with pytest.raises(TypeError, match="ternary_weight_networks expected a bool"):
        q.SteTern(ternary_weight_networks="yes")


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5),
                  elements=st.floats(-4, 4, width=32, allow_subnormal=False)),
       st.floats(0.0, 3.0, width=32, allow_subnormal=False))
def test_ste_sign_property(x, clip_value):
    y, grad, upstream = forward_and_grad(lambda t: q.ste_sign(t, clip_value=float(clip_value)),
                                         x)
    np.testing.assert_array_equal(y, np_sign(x))
    np.testing.assert_array_equal(grad, upstream * clip_mask(x, np.float32(clip_value)))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 20),
                  elements=st.floats(-2, 2, width=32, allow_subnormal=False)),
       st.integers(1, 8))
def test_dorefa_activations_property(x, k_bit):
    y = q.dorefa(x, k_bit=k_bit).numpy()
    n = 2 ** k_bit - 1
    levels = np.round(y * n)
    np.testing.assert_allclose(y * n, levels, atol=1e-4)  # on the k-bit grid
    assert np.all(np.abs(y - np.clip(x, 0, 1)) <= 0.5 / n + 1e-6)  # nearest level


# ---- Larq compatibility: quantizers are Keras layers, function names are activations --------
LAYER_CLASSES = [q.SteSign, q.ApproxSign, q.SteHeaviside, q.SwishSign, q.MagnitudeAwareSign,
                 q.SteTern, q.DoReFa, lambda **kw: q.NoOp(precision=1, **kw)]


@pytest.mark.parametrize("make", LAYER_CLASSES,
                         ids=["SteSign", "ApproxSign", "SteHeaviside", "SwishSign",
                              "MagnitudeAwareSign", "SteTern", "DoReFa", "NoOp"])
def test_quantizers_take_keras_layer_arguments(make):
    import tf_keras as keras
    quantizer = make(name="my_quantizer", dtype="float64", trainable=False)
    assert isinstance(quantizer, keras.layers.Layer)
    assert quantizer.name == "my_quantizer" and not quantizer.trainable
    assert quantizer.dtype == "float64"
    y = quantizer(np.array([[-0.3, 0.2, 0.7]]))
    assert y.dtype == tf.float64
    config = quantizer.get_config()
    assert {"name": "my_quantizer", "dtype": "float64", "trainable": False}.items() \
        <= config.items()
    clone = type(quantizer).from_config(json.loads(json.dumps(config)))
    assert clone == quantizer and clone.name == "my_quantizer"
    # equality ignores the (automatic) name only
    assert make() == make(name="other")
    assert make() != make(dtype="float64")
    # usable as a layer of a model
    inputs = keras.Input((3,))
    model = keras.Model(inputs, make(name="q_layer")(inputs))
    assert model.get_layer("q_layer").output_shape == (None, 3)


ACTIVATIONS = ["ste_sign", "approx_sign", "ste_heaviside", "swish_sign", "magnitude_aware_sign",
               "ste_tern", "dorefa"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_function_names_are_keras_activations(name):
    import tf_keras as keras
    fn = getattr(q, name)
    activation = keras.activations.get(name)
    x = np.random.default_rng(0).uniform(-2, 2, size=(4, 6)).astype(np.float32)
    np.testing.assert_array_equal(activation(x), fn(x))
    _, g_act, _ = forward_and_grad(activation, x)
    _, g_fn, _ = forward_and_grad(fn, x)
    np.testing.assert_array_equal(g_act, g_fn)
    assert activation.precision == fn.precision
    assert keras.activations.get(keras.activations.serialize(activation)) == activation
    layer = keras.layers.Activation(name)
    np.testing.assert_array_equal(layer(x), fn(x))
    dense = keras.layers.Dense(3, activation=name)
    assert dense.activation == activation


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_activation_save_load_round_trip(tmp_path, fmt):
    import tf_keras as keras
    inputs = keras.Input((6,))
    x = keras.layers.Activation("ste_sign", name="binarize")(inputs)
    x = keras.layers.Dense(4, activation="ste_tern", name="dense")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="dorefa", name="out")(x))
    path = str(tmp_path / ("model.h5" if fmt == "h5" else "saved_model"))
    model.save(path, save_format=fmt)
    reloaded = keras.models.load_model(path)  # no custom_objects
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_array_equal(reloaded(x), model(x))
    assert reloaded.get_layer("binarize").activation == keras.activations.get("ste_sign")
    assert reloaded.get_layer("dense").get_config()["activation"] == \
        model.get_layer("dense").get_config()["activation"]


def test_unknown_activation_identifier():
    with pytest.raises(ValueError, match="QuantizerActivation identifier expected one of"):
        q.ste.QuantizerActivation("nope")
