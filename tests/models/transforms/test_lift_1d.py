"""lift_1d: 1-D layers become their 2-D counterparts on a height of 1, outputs unchanged."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import lift_1d

L = keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)

ONE_D = (L.Conv1D, L.SeparableConv1D, L.DepthwiseConv1D, L.MaxPooling1D, L.AveragePooling1D,
         L.GlobalAveragePooling1D, L.GlobalMaxPooling1D, L.ZeroPadding1D, L.Cropping1D,
         L.UpSampling1D, L.Conv1DTranspose)

LAYERS = {
    "conv_valid": lambda: L.Conv1D(4, 3, bias_initializer="random_normal"),
    "conv_same_strided": lambda: L.Conv1D(4, 3, strides=2, padding="same"),
    "conv_causal_dilated": lambda: L.Conv1D(4, 3, padding="causal", dilation_rate=2,
                                            bias_initializer="random_normal"),
    "conv_grouped_relu": lambda: L.Conv1D(6, 3, groups=3, activation="relu"),
    "conv_no_bias": lambda: L.Conv1D(4, 5, padding="same", use_bias=False),
    "separable": lambda: L.SeparableConv1D(5, 3, depth_multiplier=2, padding="same",
                                           bias_initializer="random_normal"),
    "depthwise": lambda: L.DepthwiseConv1D(3, strides=2, depth_multiplier=2,
                                           bias_initializer="random_normal"),
    "depthwise_same": lambda: L.DepthwiseConv1D(3, padding="same"),
    "separable_causal": lambda: L.SeparableConv1D(4, 3, padding="causal", dilation_rate=2),
    "conv_transpose_same": lambda: L.Conv1DTranspose(4, 3, strides=2, padding="same",
                                                     bias_initializer="random_normal"),
    "conv_transpose_output_padding": lambda: L.Conv1DTranspose(4, 3, strides=2,
                                                               output_padding=1),
    "max_pool": lambda: L.MaxPooling1D(3, strides=2, padding="same"),
    "avg_pool_same": lambda: L.AveragePooling1D(3, strides=2, padding="same"),
    "avg_pool_valid": lambda: L.AveragePooling1D(2),
    "global_avg": lambda: L.GlobalAveragePooling1D(),
    "global_avg_keepdims": lambda: L.GlobalAveragePooling1D(keepdims=True),
    "global_max": lambda: L.GlobalMaxPooling1D(),
    "zero_padding": lambda: L.ZeroPadding1D((1, 2)),
    "cropping": lambda: L.Cropping1D((2, 1)),
    "upsampling": lambda: L.UpSampling1D(3),
}


def _count_1d(model):
    return sum(isinstance(layer, ONE_D) for layer in model.layers)


@pytest.mark.parametrize("steps", [11, None], ids=["static", "dynamic_steps"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_lift_each_layer(checks, name, steps):
    inputs = keras.Input((steps, 3))
    model = keras.Model(inputs, LAYERS[name]()(inputs))
    before = checks.snapshot(model)
    lifted = lift_1d(model)
    assert _count_1d(lifted) == 0
    x = [np.random.default_rng(0).normal(size=(2, 11, 3)).astype(np.float32)]
    checks.equivalent(model, lifted, x=x, **TOL)
    checks.unchanged(model, before, lifted)
    # the 2-D layer keeps the 1-D layer's name (q_config keys still apply)
    assert model.layers[1].name in {layer.name for layer in lifted.layers}


def test_chain_has_one_reshape_each_way(checks):
    """Consecutive lifted layers share the 4-D tensor: no reshape pair between them."""
    inputs = keras.Input((16, 2))
    x = L.Conv1D(4, 3, padding="same", name="c1")(inputs)
    x = L.Conv1D(4, 3, padding="causal", name="c2")(x)
    x = L.MaxPooling1D(2, name="pool")(x)
    y = L.ReLU()(x)   # not lifted: a reshape back, then forth
    y = L.GlobalAveragePooling1D(name="gap")(y)
    model = keras.Model(inputs, L.Dense(3)(y))
    lifted = lift_1d(model)
    assert checks.count(lifted, L.Reshape) == 3
    assert {type(lifted.get_layer(n)) for n in ("c1", "c2")} == {L.Conv2D}
    checks.equivalent(model, lifted, **TOL)


def test_shared_layer_lifted_once(checks):
    a, b = keras.Input((9, 3)), keras.Input((9, 3))
    conv = L.Conv1D(4, 3, name="shared")
    model = keras.Model([a, b], L.Add()([conv(a), conv(b)]))
    lifted = lift_1d(model)
    assert checks.count(lifted, L.Conv2D) == 1
    checks.equivalent(model, lifted, **TOL)


def test_masked_or_channels_first_stay():
    tokens = keras.Input((7,), dtype="int32")
    x = L.Embedding(20, 4, mask_zero=True)(tokens)
    masked = keras.Model(tokens, L.GlobalAveragePooling1D()(x))
    assert lift_1d(masked) is masked
    inputs = keras.Input((3, 9))
    first = keras.Model(inputs, L.MaxPooling1D(2, data_format="channels_first")(inputs))
    assert lift_1d(first) is first


def test_nothing_to_lift_returns_same_model():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, L.Conv2D(2, 3)(inputs))
    assert lift_1d(model) is model
