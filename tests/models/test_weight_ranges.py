"""quantize() searches the clipped ranges of low-bit weights once (WeightQuantizer.range_ratios)."""
import numpy as np
import tf_keras as keras

from quantizeml.layers import WeightQuantizer
from quantizeml.models import QuantizationParams, quantize
from tests.layers.quantizers.test_quantizers import np_search_ranges
from tests.utils import check_save_load


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, name="dense")(x)
    return keras.Model(inputs, outputs)


def _weight_quantizers(qmodel):
    return {m.name: m for m in qmodel.submodules if isinstance(m, WeightQuantizer)}


def test_low_bit_ranges_searched_on_the_float_weights():
    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 2)).astype(np.float32)
    weights = [w.copy() for w in model.get_weights()]
    qmodel = quantize(model, qparams=QuantizationParams(input_weight_bits=2, weight_bits=2,
                                                        activation_bits=4), samples=x)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)  # the float model is untouched
    for name in ("conv", "dense"):
        kernel = model.get_layer(name).get_weights()[0]
        quantizer = qmodel.get_layer(name).weight_quantizer
        axes = tuple(range(kernel.ndim - 1))
        ranges = np.max(np.abs(kernel), axis=axes)
        # the numpy oracle of the search, and a real clipping (2 bits: ratios well below 1)
        np.testing.assert_allclose(quantizer.range_ratios.numpy() * ranges,
                                   np_search_ranges(kernel, ranges, axes, 1.0), rtol=1e-6)
        assert np.all(quantizer.range_ratios.numpy() < 1.0), name
        q = quantizer.quantize(kernel)
        clipped = np.sum((q.to_float().numpy() - kernel) ** 2)
        plain = WeightQuantizer(bitwidth=2).quantize(kernel)
        assert clipped < np.sum((plain.to_float().numpy() - kernel) ** 2)
    # the ratios are weights of the model: h5 and SavedModel reloads are bit-identical
    check_save_load(qmodel, x[:4])


def test_eight_bit_ranges_stay_max():
    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 2)).astype(np.float32)
    qmodel = quantize(model, samples=x)
    for quantizer in _weight_quantizers(qmodel).values():
        assert not quantizer.searches_ranges
        assert not any("range_ratios" in w.name for w in quantizer.weights)
