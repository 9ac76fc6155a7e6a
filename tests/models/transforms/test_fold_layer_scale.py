"""fold_layer_scale: ConvNeXt's LayerScale folded into the layer before it."""
import numpy as np
import pytest
import tf_keras as keras
from tf_keras.src.applications.convnext import LayerScale

from quantizeml.models.transforms import fold_layer_scale, sanitize
from quantizeml.models.transforms.fold_layer_scale import is_layer_scale

L = keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)

PRODUCERS = {
    "dense": (lambda bias: L.Dense(6, use_bias=bias, bias_initializer="random_normal"), (5,)),
    "dense_rank3": (lambda bias: L.Dense(6, use_bias=bias, bias_initializer="random_normal"),
                    (4, 5)),
    "conv2d": (lambda bias: L.Conv2D(6, 3, padding="same", use_bias=bias,
                                     bias_initializer="random_normal"), (6, 6, 3)),
    "depthwise": (lambda bias: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=bias,
                                                 bias_initializer="random_normal"), (6, 6, 3)),
}


def _scale(channels, seed=0):
    layer = LayerScale(1e-6, channels)
    layer.build((None, channels))
    layer.set_weights([np.random.default_rng(seed).uniform(-2, 2, channels).astype(np.float32)])
    return layer


def _count(model):
    return sum(is_layer_scale(layer) for layer in model.layers)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(PRODUCERS))
def test_fold_into_producer(checks, name, bias):
    factory, shape = PRODUCERS[name]
    inputs = keras.Input(shape)
    y = factory(bias)(inputs)
    y = _scale(y.shape[-1])(y)
    model = keras.Model(inputs, L.Add()([y, y]))
    before = checks.snapshot(model)
    folded = fold_layer_scale(model)
    assert _count(model) == 1 and _count(folded) == 0
    assert folded.layers[1].use_bias == bias  # no bias is created
    checks.equivalent(model, folded, **TOL)
    checks.unchanged(model, before, folded)


class OtherScale(L.Layer):
    """Named like nothing in particular, but also ``x * gamma``: not a LayerScale."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(self.channels,))

    def call(self, x):
        return x * self.gamma + 1.0

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@pytest.mark.parametrize("case", ["no_scale", "activation", "two_consumers", "after_relu",
                                  "other_class"])
def test_unchanged_when_nothing_matches(case):
    inputs = keras.Input((5,))
    if case == "no_scale":
        model = keras.Model(inputs, L.Dense(6)(inputs))
    elif case == "activation":
        model = keras.Model(inputs, _scale(6)(L.Dense(6, activation="relu")(inputs)))
    elif case == "two_consumers":
        y = L.Dense(6)(inputs)
        model = keras.Model(inputs, L.Add()([_scale(6)(y), y]))
    elif case == "after_relu":
        model = keras.Model(inputs, _scale(6)(L.ReLU()(L.Dense(6)(inputs))))
    else:
        model = keras.Model(inputs, OtherScale(6)(L.Dense(6)(inputs)))
    assert fold_layer_scale(model) is model


@pytest.mark.slow
def test_convnext_tiny_sanitize(checks):
    """ConvNeXtTiny (32x32): no LayerScale nor Normalization left after sanitize, outputs
    unchanged (LayerScale gammas randomized so that the fold is exercised)."""
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3),
                                            include_top=False, pooling="avg")
    rng = np.random.default_rng(0)

    def randomize(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                randomize(layer)
            elif is_layer_scale(layer):
                layer.set_weights([rng.uniform(0.5, 1.5, layer.weights[0].shape)
                                   .astype(np.float32)])
    randomize(model)
    sanitized = sanitize(model)
    assert _count(sanitized) == 0
    assert not any(type(layer) is L.Normalization for layer in sanitized.layers)
    x = [rng.integers(0, 256, (2, 32, 32, 3)).astype(np.float32)]
    checks.equivalent(model, sanitized, x=x, rtol=1e-4, atol=1e-4)
