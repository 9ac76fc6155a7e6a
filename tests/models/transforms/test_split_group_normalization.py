"""Tests of split_group_normalization: GroupNormalization -> reshapes, a LayerNormalization
per group and a per-channel affine DepthwiseConv2D (float outputs equal), quantized to an
all-integer model exported bit-exactly."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers import QuantizedDepthwiseConv2D, QuantizedLayerStdNormalization
from quantizeml.models import QuantizationParams, quantize
from quantizeml.models.check import float_islands
from quantizeml.models.transforms import sanitize, split_group_normalization
from quantizeml.models.transforms.split_group_normalization import MAX_GROUP_VALUES
from tests.onnx_support.test_export_merging import check_export_bit_exact

L = keras.layers


def _model(groups, shape=(8, 8, 3), center=True, scale=True):
    inputs = keras.Input(shape, name="inp")
    conv = L.Conv2D if len(shape) == 3 else L.Conv1D
    y = conv(8, 3, padding="same", name="conv")(inputs)
    y = L.GroupNormalization(groups, center=center, scale=scale, epsilon=1e-3,
                             beta_initializer="random_normal",
                             gamma_initializer="random_normal", name="gn")(y)
    y = L.Activation("swish", name="act")(y)
    y = conv(4, 3, padding="same", name="head")(y)
    return keras.Model(inputs, L.Flatten(name="flat")(y))


def _inputs(shape, seed=0, n=16):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("groups,shape,center,scale", [
    (4, (8, 8, 3), True, True), (1, (8, 8, 3), True, True), (8, (8, 8, 3), False, True),
    (2, (8, 8, 3), True, False), (4, (12, 3), True, True), (2, (4, 4, 4, 3), True, True)],
    ids=["g4", "g1", "g8-no-center", "g2-no-scale", "conv1d", "3d-grid"])
def test_split_equals_float(groups, shape, center, scale):
    if len(shape) == 4:  # (batch, d, h, w, c) data: a Dense makes the channels
        inputs = keras.Input(shape, name="inp")
        y = L.Dense(8, name="conv")(inputs)
        y = L.GroupNormalization(groups, beta_initializer="random_normal",
                                 gamma_initializer="random_normal", name="gn")(y)
        model = keras.Model(inputs, L.Dense(2, name="head")(y))
    else:
        model = _model(groups, shape, center, scale)
    weights = [w.copy() for w in model.get_weights()]
    split = split_group_normalization(model)
    types = [type(layer).__name__ for layer in split.layers]
    assert "GroupNormalization" not in types and types.count("LayerNormalization") == 1
    assert types.count("Permute") == (0 if groups == 1 else 2)
    assert "DepthwiseConv2D" in types
    x = _inputs(shape)
    np.testing.assert_allclose(split(x).numpy(), model(x).numpy(), atol=2e-5)
    # the input model is untouched
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert any(type(layer) is L.GroupNormalization for layer in model.layers)
    if len(shape) == 3:
        assert isinstance(split.get_layer("gn"), L.DepthwiseConv2D)


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_quantize_group_normalization(groups):
    """quantize() (which runs sanitize) makes every layer integer; close to float, exported
    bit-exactly."""
    model = _model(groups)
    x = _inputs((8, 8, 3))
    qmodel = quantize(model, samples=x, num_samples=16, batch_size=16)
    assert not float_islands(qmodel)
    assert isinstance(qmodel.get_layer("gn"), QuantizedDepthwiseConv2D)
    assert isinstance(qmodel.get_layer("gn/norm"), QuantizedLayerStdNormalization)
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    check_export_bit_exact(qmodel, x)


def test_not_split():
    """A GroupNormalization over another axis stays (quantize() names it); one named float
    in q_config stays whole, a float island."""
    inputs = keras.Input((4, 6, 8), name="inp")
    y = L.Conv2D(8, 1, name="conv")(inputs)
    y = L.GroupNormalization(2, axis=1, name="gn_axis1")(y)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(y))
    assert split_group_normalization(model) is model
    x = _inputs((4, 6, 8))
    with pytest.raises(ValueError, match=r"gn_axis1 \(GroupNormalization"):
        quantize(model, samples=x, num_samples=16)
    # more values per group than the LayerNormalization twin takes on 8 bits
    inputs = keras.Input((64, 64, 16), name="inp")
    y = L.GroupNormalization(2, name="gn_large")(L.Conv2D(16, 1, name="conv")(inputs))
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(y))
    assert 64 * 64 * 8 > MAX_GROUP_VALUES and split_group_normalization(model) is model
    model = _model(4)
    assert any(type(layer) is L.GroupNormalization
               for layer in sanitize(model, float_layers=("gn",)).layers)
    qmodel = quantize(model, q_config={"gn": "float"}, samples=_inputs((8, 8, 3)),
                      num_samples=16)
    assert type(qmodel.get_layer("gn")) is L.GroupNormalization
    assert float_islands(qmodel) == ["gn"]


def test_keras3_group_normalization():
    import keras as keras3
    inputs = keras3.Input((8, 8, 3))
    y = keras3.layers.Conv2D(8, 3, padding="same")(inputs)
    y = keras3.layers.GroupNormalization(4, gamma_initializer="random_normal")(y)
    model = keras3.Model(inputs, keras3.layers.Flatten()(keras3.layers.Conv2D(2, 1)(y)))
    x = _inputs((8, 8, 3))
    qmodel = quantize(model, samples=x, num_samples=16, batch_size=16)
    assert not float_islands(qmodel)
    y, yq = np.asarray(model(x)), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25


def test_low_bit_quantize():
    """At 4 bits the LayerNormalization without scale of the split (whose unused gamma
    quantizer searches no range) quantizes too, and a plain LayerNormalization(scale=False)."""
    qparams = QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                                 output_bits=4)
    x = _inputs((8, 8, 3))
    qmodel = quantize(_model(4), qparams=qparams, samples=x, num_samples=16, batch_size=16)
    check_export_bit_exact(qmodel, x)
    inputs = keras.Input((6, 8), name="inp")
    y = L.LayerNormalization(scale=False, name="ln")(L.Dense(8, name="d")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="head")(y))
    qmodel = quantize(model, qparams=qparams, samples=_inputs((6, 8)), num_samples=16)
    assert isinstance(qmodel.get_layer("ln"), QuantizedLayerStdNormalization)
