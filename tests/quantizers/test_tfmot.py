"""The TF-MOT extension API: the seed's examples, and the range quantizers against formulas."""
import json

import numpy as np
import pytest
import tensorflow as tf

# --- The seed's examples, with only their imports changed ------------------------------------
# (``tf.keras`` is Keras 3 in TF 2.21: ``keras`` is tf_keras, and the quantizeml names replace
# ``tfmot.quantization.keras``). The seed truncates FixedRangeQuantizer.build; it is completed
# as in TF-MOT's docstring.
import tf_keras as keras

from quantizeml import quantizers
from quantizeml.quantizers import (LastValueQuantizer, MovingAverageQuantizer, QuantizeConfig,
                                   Quantizer)


class FixedRangeQuantizer(Quantizer):
    # Example quantizer which clips tensors in a fixed range.

    def build(self, tensor_shape, name, layer):
        range_var = layer.add_weight(
            name + '_range',
            initializer=keras.initializers.Constant(6.0),
            trainable=False)

        return {
            'range_var': range_var,
        }

    def __call__(self, inputs, training, weights, **kwargs):
        return keras.backend.clip(
            inputs, 0.0, weights['range_var'])

    def get_config(self):
        # Not needed. No __init__ parameters to serialize.
        return {}


class MyDenseQuantizeConfig(QuantizeConfig):

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, LastValueQuantizer())]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, MovingAverageQuantizer())]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        # Does not quantize output, since we return an empty list.
        return []

    def get_config(self):
        return {}
# ---------------------------------------------------------------------------------------------


def tf_fake_quant(x, min_val, max_val, num_bits=8, narrow_range=False):
    if np.ndim(min_val):
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, min_val, max_val, num_bits=num_bits, narrow_range=narrow_range).numpy()
    return tf.quantization.fake_quant_with_min_max_vars(
        x, min_val, max_val, num_bits=num_bits, narrow_range=narrow_range).numpy()


def dense_layer(units=3, input_dim=4, activation=None):
    layer = keras.layers.Dense(units, activation=activation, bias_initializer="glorot_uniform")
    layer.build((None, input_dim))
    return layer


def test_fixed_range_quantizer_on_a_dense_kernel():
    layer = dense_layer()
    kernel = layer.kernel.numpy() * 10
    layer.kernel.assign(kernel)
    quantizer = FixedRangeQuantizer()
    weights = quantizer.build(layer.kernel.shape, "kernel", layer)
    assert weights["range_var"] in layer.non_trainable_weights
    assert weights["range_var"].name.split("/")[-1] == "kernel_range:0"
    np.testing.assert_array_equal(quantizer(layer.kernel, True, weights).numpy(),
                                  np.clip(kernel, 0.0, 6.0))
    assert FixedRangeQuantizer.from_config(quantizer.get_config()) == quantizer


def test_my_dense_quantize_config_applied_by_hand():
    layer = dense_layer(activation="relu")
    float_kernel = layer.kernel.numpy()
    bias = layer.bias.numpy()
    config = MyDenseQuantizeConfig()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    [(weight, weight_quantizer)] = config.get_weights_and_quantizers(layer)
    [(activation, activation_quantizer)] = config.get_activations_and_quantizers(layer)
    weight_vars = weight_quantizer.build(weight.shape, "kernel", layer)
    activation_vars = activation_quantizer.build(None, "post_activation", layer)
    config.set_quantize_weights(layer, [weight_quantizer(weight, True, weight_vars)])
    config.set_quantize_activations(
        layer, [lambda t: activation_quantizer(activation(t), True, activation_vars)])
    assert config.get_output_quantizers(layer) == []
    outputs = layer(x).numpy()

    # LastValueQuantizer(): 8 bits, per tensor, symmetric, narrow range: [-m, m], m = max|w|.
    bound = np.max(np.abs(float_kernel))
    np.testing.assert_array_equal(weight_vars["min_var"].numpy(), -bound)
    np.testing.assert_array_equal(weight_vars["max_var"].numpy(), bound)
    kernel = tf_fake_quant(float_kernel, -bound, bound, narrow_range=True)
    pre = np.maximum(x @ kernel + bias, 0)
    # MovingAverageQuantizer(): EMA (decay 0.999) of [min(x, 0), max(x, 0)] from [-6, 6].
    ema_min = -6.0 - (-6.0 - min(pre.min(), 0.0)) * (1 - 0.999)
    ema_max = 6.0 - (6.0 - max(pre.max(), 0.0)) * (1 - 0.999)
    np.testing.assert_allclose(activation_vars["min_var"].numpy(), ema_min, rtol=1e-6)
    np.testing.assert_allclose(activation_vars["max_var"].numpy(), ema_max, rtol=1e-6)
    expected = tf_fake_quant(pre, activation_vars["min_var"].numpy(),
                             activation_vars["max_var"].numpy())
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    assert [w.name.split("/")[-1] for w in layer.non_trainable_weights] == [
        "kernel_min:0", "kernel_max:0", "post_activation_min:0", "post_activation_max:0"]


def expected_range(x, per_axis, symmetric, num_bits, narrow_range):
    axis = tuple(range(x.ndim - 1)) if per_axis else None
    bmin, bmax = x.min(axis=axis), x.max(axis=axis)
    if symmetric:
        ratio = -1.0 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
        return np.minimum(bmin, bmax / ratio), np.maximum(bmax, bmin * ratio)
    return np.minimum(bmin, 0.0), np.maximum(bmax, 0.0)


SETTINGS = [(8, False, True, True), (8, False, False, False), (4, True, True, False),
            (5, True, False, True), (2, False, True, False)]
SETTING_IDS = ["8b_sym_narrow", "8b_asym", "4b_axis_sym", "5b_axis_narrow", "2b_sym_wide"]


@pytest.mark.parametrize("num_bits, per_axis, symmetric, narrow_range", SETTINGS,
                         ids=SETTING_IDS)
@pytest.mark.parametrize("cls", [LastValueQuantizer, MovingAverageQuantizer,
                                 quantizers.AllValuesQuantizer],
                         ids=["last_value", "moving_average", "all_values"])
def test_range_quantizers(cls, num_bits, per_axis, symmetric, narrow_range):
    quantizer = cls(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric,
                    narrow_range=narrow_range)
    layer = dense_layer(units=3)
    weights = quantizer.build(tf.TensorShape((4, 3)), "w", layer)
    rng = np.random.default_rng(0)
    batches = [rng.normal(0.5, 1.0, size=(4, 3)).astype(np.float32) for _ in range(2)]
    init_min, init_max = (0.0, 0.0) if cls is quantizers.AllValuesQuantizer else (-6.0, 6.0)
    shape = (3,) if per_axis else ()
    low, high = np.full(shape, init_min), np.full(shape, init_max)
    for x in batches:
        outputs = quantizer(x, True, weights).numpy()
        batch_min, batch_max = expected_range(x, per_axis, symmetric, num_bits, narrow_range)
        if cls is LastValueQuantizer:
            low, high = batch_min, batch_max
        elif cls is MovingAverageQuantizer:
            low, high = low - (low - batch_min) * 0.001, high - (high - batch_max) * 0.001
        else:
            low, high = np.minimum(np.minimum(low, batch_min), 0), \
                np.maximum(np.maximum(high, batch_max), 0)
        np.testing.assert_allclose(weights["min_var"].numpy(), low, rtol=1e-6)
        np.testing.assert_allclose(weights["max_var"].numpy(), high, rtol=1e-6)
        expected = tf_fake_quant(x, weights["min_var"].numpy(), weights["max_var"].numpy(),
                                 num_bits, narrow_range)
        np.testing.assert_array_equal(outputs, expected)
    # Inference uses the stored range and leaves it unchanged.
    x = rng.normal(size=(4, 3)).astype(np.float32) * 10
    stored = weights["min_var"].numpy(), weights["max_var"].numpy()
    for training in (False, None):
        np.testing.assert_array_equal(quantizer(x, training, weights).numpy(),
                                      tf_fake_quant(x, *stored, num_bits, narrow_range))
    np.testing.assert_array_equal(weights["min_var"].numpy(), stored[0])


def test_symbolic_training_flag():
    quantizer = LastValueQuantizer(num_bits=4)
    layer = dense_layer()
    weights = quantizer.build(tf.TensorShape((4, 3)), "w", layer)
    fn = tf.function(lambda x, training: quantizer(x, training, weights))
    x = np.array([[-1.0, 2.0, 0.5]], np.float32)
    fn(x, tf.constant(False))
    assert weights["max_var"].numpy() == 6.0
    fn(x, tf.constant(True))
    assert weights["max_var"].numpy() == 2.0 and weights["min_var"].numpy() == -2.0


def test_straight_through_gradient():
    quantizer = LastValueQuantizer(num_bits=4, symmetric=False, narrow_range=False)
    layer = dense_layer()
    weights = quantizer.build(tf.TensorShape((5,)), "w", layer)
    x = tf.constant([-1.0, 0.2, 0.7, 1.0, 3.0])
    weights["min_var"].assign(-1.0)
    weights["max_var"].assign(1.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = quantizer(x, False, weights)
        oracle = tf.quantization.fake_quant_with_min_max_vars(x, -1.0, 1.0, num_bits=4)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), tape.gradient(oracle, x).numpy())
    assert 0 < tape.gradient(y, x).numpy().sum() < 5  # in and out of the nudged range


@pytest.mark.parametrize("quantizer", [
    LastValueQuantizer(), LastValueQuantizer(4, True, False, False), MovingAverageQuantizer(),
    quantizers.AllValuesQuantizer(num_bits=3, symmetric=True)],
    ids=["last_value", "last_value_custom", "moving_average", "all_values"])
def test_config_round_trip(quantizer):
    config = quantizer.get_config()
    assert set(config) == {"num_bits", "per_axis", "symmetric", "narrow_range"}
    assert type(quantizer).from_config(json.loads(json.dumps(config))) == quantizer
    assert quantizers.deserialize(quantizers.serialize(quantizer)) == quantizer


def test_defaults_are_tfmot_8bit_settings():
    assert LastValueQuantizer().get_config() == {
        "num_bits": 8, "per_axis": False, "symmetric": True, "narrow_range": True}
    assert MovingAverageQuantizer().get_config() == {
        "num_bits": 8, "per_axis": False, "symmetric": False, "narrow_range": False}


def test_abstract_classes():
    with pytest.raises(TypeError):
        Quantizer()
    with pytest.raises(TypeError):
        QuantizeConfig()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_bits=1), ValueError, r"num_bits expected an int in \[2, 16\]"),
    (dict(num_bits=17), ValueError, r"num_bits expected an int in \[2, 16\]"),
    (dict(per_axis="yes"), TypeError, "per_axis expected a bool"),
    (dict(symmetric=None), TypeError, "symmetric expected a bool"),
], ids=["bits1", "bits17", "per_axis", "symmetric"])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LastValueQuantizer(**kwargs)


def test_per_axis_needs_a_known_last_dimension():
    with pytest.raises(ValueError, match="known last dimension"):
        LastValueQuantizer(per_axis=True).build(None, "w", dense_layer())
