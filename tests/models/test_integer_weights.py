"""Integer weights for deployment: int8, and int4 packed two per byte."""
import os

import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models import (QuantizationParams, integer_weights, load_integer_weights,
                               quantize, save_integer_weights)
from quantizeml.tensors import QFloat


def _model():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, name="conv")(inp)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(7, name="fc")(x))


@pytest.mark.parametrize("bits", [4, 8])
def test_integer_weights_roundtrip_and_size(bits, tmp_path):
    model = _model()
    data = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
    q = quantize(model, qparams=QuantizationParams(weight_bits=bits, input_weight_bits=bits),
                 samples=data)
    path = os.path.join(tmp_path, "weights.npz")
    nbytes = save_integer_weights(q, path)
    loaded = load_integer_weights(path)
    expected = integer_weights(q)
    assert set(loaded) == {"conv/weight_quantizer", "dw/weight_quantizer", "fc/weight_quantizer"}
    count = 0
    for key, entry in expected.items():
        np.testing.assert_array_equal(loaded[key]["values"], entry["values"])
        np.testing.assert_array_equal(loaded[key]["scales"], entry["scales"])
        assert entry["values"].min() >= -2**(bits - 1) and entry["values"].max() < 2**(bits - 1)
        count += entry["values"].size
    # the values are those the layer computes with
    layer = q.get_layer("conv")
    w = layer.weight_quantizer.quantize(layer.kernel)
    assert isinstance(w, QFloat)
    np.testing.assert_array_equal(expected["conv/weight_quantizer"]["values"], w.values.numpy())
    # int4: two values per byte (plus one padding row per odd first axis); int8: one byte
    if bits == 4:
        assert nbytes <= count // 2 + 16 * 7 and nbytes < count * 0.6
    else:
        assert nbytes == count
