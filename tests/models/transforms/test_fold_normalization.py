"""fold_normalization: Normalization folded into the next layer or the Rescaling before it."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import fold_normalization, sanitize

L = keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)
RNG = np.random.default_rng(0)
MEAN = RNG.uniform(-2, 2, 3).tolist()
VAR = RNG.uniform(0.2, 3, 3).tolist()

NEXT = {
    "conv2d": (lambda bias: L.Conv2D(4, 3, use_bias=bias, bias_initializer="random_normal"),
               (6, 6, 3)),
    "conv2d_strided_1x1_same": (lambda bias: L.Conv2D(4, 1, strides=2, padding="same",
                                                      use_bias=bias), (7, 7, 3)),
    "depthwise": (lambda bias: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=bias,
                                                 bias_initializer="random_normal"), (6, 6, 3)),
    "dense": (lambda bias: L.Dense(5, use_bias=bias, bias_initializer="random_normal"), (3,)),
    "dense_rank3": (lambda bias: L.Dense(5, use_bias=bias), (4, 3)),
}


def _model(next_layer, shape, norm, before=None, sequential=False):
    layers = ([before] if before is not None else []) + [norm, next_layer, L.ReLU()]
    if sequential:
        return keras.Sequential([keras.Input(shape)] + layers)
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def _count(model, cls):
    return sum(type(layer) is cls for layer in model.layers)


@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(NEXT))
def test_fold_into_next_layer(checks, name, bias, sequential):
    factory, shape = NEXT[name]
    model = _model(factory(bias), shape, L.Normalization(mean=MEAN, variance=VAR),
                   sequential=sequential)
    before = checks.snapshot(model)
    folded = fold_normalization(model)
    assert _count(folded, L.Normalization) == 0
    assert folded.layers[1].use_bias  # a non-zero mean needs a bias
    checks.equivalent(model, folded, **TOL)
    checks.unchanged(model, before, folded)


def test_fold_adapted_statistics(checks):
    norm = L.Normalization(axis=-1)
    norm.adapt(RNG.normal(3.0, 2.0, (64, 5, 5, 3)).astype(np.float32))
    model = _model(L.Conv2D(4, 3), (5, 5, 3), norm)
    folded = fold_normalization(model)
    assert _count(folded, L.Normalization) == 0
    x = [RNG.normal(3.0, 2.0, (4, 5, 5, 3)).astype(np.float32)]
    checks.equivalent(model, folded, x=x, **TOL)


def test_zero_mean_folds_into_padded_conv(checks):
    """With a zero mean the padded zeros stay zeros: the fold is exact, no bias is added."""
    model = _model(L.Conv2D(4, 3, padding="same", use_bias=False), (6, 6, 3),
                   L.Normalization(mean=0.0, variance=VAR))
    folded = fold_normalization(model)
    assert _count(folded, L.Normalization) == 0
    assert not folded.layers[1].use_bias
    checks.equivalent(model, folded, **TOL)


def test_padded_conv_merges_into_rescaling(checks):
    """Normalization(x * s + o) before a 'same' 3x3 conv becomes one per-channel Rescaling."""
    model = _model(L.Conv2D(4, 3, padding="same"), (6, 6, 3),
                   L.Normalization(mean=MEAN, variance=VAR),
                   before=L.Rescaling(1 / 255, offset=0.5))
    before = checks.snapshot(model)
    folded = fold_normalization(model)
    assert _count(folded, L.Normalization) == 0
    assert _count(folded, L.Rescaling) == 1
    rescaling = folded.layers[1]
    np.testing.assert_allclose(rescaling.scale, 1 / 255 / np.sqrt(VAR), rtol=1e-6)
    np.testing.assert_allclose(rescaling.offset, (0.5 - np.array(MEAN)) / np.sqrt(VAR),
                               rtol=1e-6)
    x = [RNG.integers(0, 256, (3, 6, 6, 3)).astype(np.float32)]
    checks.equivalent(model, folded, x=x, **TOL)
    checks.unchanged(model, before, folded)


def test_padded_conv_without_rescaling_is_kept(checks):
    """Folding into a padded conv is not exact for a non-zero mean (its padded zeros would
    stand for x = 0 instead of x = mean): the model is returned unchanged."""
    model = _model(L.Conv2D(4, 3, padding="same"), (6, 6, 3),
                   L.Normalization(mean=MEAN, variance=VAR))
    assert fold_normalization(model) is model


@pytest.mark.parametrize("case", ["no_normalization", "two_consumers", "invert", "relu_next",
                                  "model_output"])
def test_unchanged_when_nothing_matches(case):
    inputs = keras.Input((6, 6, 3))
    if case == "no_normalization":
        model = keras.Model(inputs, L.Conv2D(4, 3)(inputs))
    elif case == "two_consumers":
        x = L.Normalization(mean=MEAN, variance=VAR)(inputs)
        model = keras.Model(inputs, L.Add()([L.Conv2D(4, 3)(x), L.Conv2D(4, 3)(x)]))
    elif case == "invert":
        x = L.Normalization(mean=MEAN, variance=VAR, invert=True)(inputs)
        model = keras.Model(inputs, L.Conv2D(4, 3)(x))
    elif case == "relu_next":
        x = L.Normalization(mean=MEAN, variance=VAR)(inputs)
        model = keras.Model(inputs, L.Conv2D(4, 3)(L.ReLU()(x)))
    else:
        model = keras.Model(inputs, L.Normalization(mean=MEAN, variance=VAR)(inputs))
    assert fold_normalization(model) is model


@pytest.mark.slow
@pytest.mark.parametrize("mean", ["zero", "imagenet"])
def test_efficientnet_b0_sanitize(checks, mean):
    """EfficientNetB0's Rescaling -> Normalization -> ZeroPadding2D -> Conv2D stem: with zero
    statistics (weights=None) the Normalization folds into the (then 'same') stem conv, with
    ImageNet statistics it merges into the Rescaling."""
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    if mean == "imagenet":
        norm = next(layer for layer in model.layers if type(layer) is L.Normalization)
        norm.set_weights([np.array([0.485, 0.456, 0.406], np.float32),
                          np.array([0.229, 0.224, 0.225], np.float32)**2,
                          norm.get_weights()[2]])
    sanitized = sanitize(model)
    assert _count(sanitized, L.Normalization) == 0
    x = [RNG.integers(0, 256, (2, 32, 32, 3)).astype(np.float32)]
    checks.equivalent(model, sanitized, x=x, rtol=1e-4, atol=1e-4)
