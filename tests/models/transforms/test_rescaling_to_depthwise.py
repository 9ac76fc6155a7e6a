"""rescaling_to_depthwise: a Rescaling inside a model with an offset, a negative or a
per-channel scale becomes a DepthwiseConv2D(1) computing the same; quantized and exported."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import QuantizedDepthwiseConv2D
from quantizeml.models import float_islands, quantize
from quantizeml.models.transforms import rescaling_to_depthwise, sanitize
from tests.onnx_support.test_export_merging import check_export_bit_exact

L = keras.layers


@pytest.mark.parametrize("shape,scale,offset", [
    ((6, 6, 3), 2.0, -1.0), ((6, 6, 3), -1.0, 1.0), ((6, 6, 3), [0.5, -2.0, 3.0], 0.0),
    ((7, 3), 2.0, [0.1, 0.2, 0.3]), ((3,), -0.5, 0.25)],
    ids=["offset", "one-minus", "per-channel", "sequence", "vector"])
def test_rewrite_equals_float(checks, shape, scale, offset):
    inputs = keras.Input(shape)
    x = L.Dense(3, name="d")(inputs)
    x = L.Rescaling(scale, offset, name="affine")(x)
    model = keras.Model(inputs, L.Activation("tanh", name="act")(x))
    before = checks.snapshot(model)
    new = rescaling_to_depthwise(model)
    assert not any(type(layer) is L.Rescaling for layer in new.layers)
    assert sum(type(layer) is L.DepthwiseConv2D for layer in new.layers) == 1
    assert new.get_layer("affine") is not None
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)
    checks.unchanged(model, before, new)


def test_heads_and_plain_scales_stay():
    """A Rescaling computed from the inputs by weightless layers (a preprocessing head) and a
    positive scalar scale without offset (QuantizedRescaling's case) stay."""
    inputs = keras.Input((6, 6, 3))
    x = L.Rescaling(1 / 127.5, -1.0, name="head")(L.ZeroPadding2D(name="pad")(inputs))
    x = L.Conv2D(4, 3, name="conv")(x)
    model = keras.Model(inputs, L.Rescaling(0.5, name="half")(x))
    assert rescaling_to_depthwise(model) is model


def test_affine_between_nonlinearities_quantizes():
    """``tf.abs(2 * x - 1)`` and ``1 - sigmoid(x)`` inside a model: all-integer after
    sanitize (run by quantize()), exported bit-exactly."""
    inputs = keras.Input((8, 8, 3), name="inp")
    x = L.Conv2D(8, 3, padding="same", activation="tanh", name="conv")(inputs)
    a = tf.abs(x * 2.0 - 1.0)
    b = 1.0 - L.Activation("sigmoid", name="gate")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(L.Multiply(name="mul")([a, b])))
    assert sum(type(layer) is L.DepthwiseConv2D for layer in sanitize(model).layers) == 2
    x = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=32, batch_size=32)
    assert not float_islands(qmodel)
    assert sum(isinstance(layer, QuantizedDepthwiseConv2D) for layer in qmodel.layers) == 2
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y**2) / np.sum((y - yq) ** 2)) > 25
    check_export_bit_exact(qmodel, x)
