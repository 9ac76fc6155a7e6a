"""quantize() honours TF-MOT-style QuantizeConfigs: fake-quantized layers in a quantized model."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import QuantizeWrapper, quantize_annotate_layer
from quantizeml.models import dump_config, quantize
from quantizeml.quantizers import LastValueQuantizer, MovingAverageQuantizer, QuantizeConfig
from tests.utils import check_save_load


@keras.saving.register_keras_serializable(package="quantizeml_tests")
class OutputFakeQuantConfig(QuantizeConfig):
    """Fake-quantizes the output of a weightless layer to 8 bits."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        # the range of the last batch seen (calibration sets it; QAT keeps it up to date)
        return [LastValueQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                   narrow_range=False)]

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="quantizeml_tests")
class DenseKernelConfig(QuantizeConfig):
    """The seed's MyDenseQuantizeConfig: 4-bit kernel, 8-bit activation."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, LastValueQuantizer(num_bits=4, symmetric=True,
                                                  narrow_range=False, per_axis=False))]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, MovingAverageQuantizer(num_bits=8, symmetric=False,
                                                          narrow_range=False, per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def _model(activation=None):
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    # a QuantizeConfig overrides the twin (LeakyReLU has a table twin; UnitNormalization none)
    x = (activation or keras.layers.LeakyReLU(0.1, name="leaky"))(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(5, name="head")(x)
    return keras.Model(inp, out)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32), rng.integers(0, 5, 64)


@pytest.mark.parametrize("how", ["q_config", "annotate"])
def test_layer_without_twin_is_fake_quantized(data, how):
    x, _ = data
    model = _model()
    if how == "q_config":
        q = quantize(model, q_config={"leaky": OutputFakeQuantConfig()}, samples=x)
    else:
        quantize_annotate_layer(model.get_layer("leaky"), OutputFakeQuantConfig())
        q = quantize(model, samples=x)
    leaky = q.get_layer("leaky")
    assert isinstance(leaky, QuantizeWrapper)
    assert type(q.get_layer("leaky_quantizer")).__name__ == "InputQuantizer"
    out, ref = q.predict(x, verbose=0), model.predict(x, verbose=0)
    assert np.max(np.abs(out - ref)) <= 0.05 * np.max(np.abs(ref)), np.max(np.abs(out - ref))


def test_without_config_the_layer_is_reported(data):
    with pytest.raises(ValueError, match="unit \\(UnitNormalization\\)"):
        quantize(_model(keras.layers.UnitNormalization(name="unit")), samples=data[0])


def test_config_overrides_twin_and_quantizes_kernel(data):
    x, _ = data
    model = _model()
    q = quantize(model, q_config={"leaky": OutputFakeQuantConfig(),
                                  "head": DenseKernelConfig()}, samples=x)
    head = q.get_layer("head")
    assert isinstance(head, QuantizeWrapper)
    kernel = head.layer_weights[0]
    weight, quantizer, weights = head._weight_quantizers[0]
    assert weight is kernel
    q_kernel = quantizer(kernel, False, weights).numpy()
    assert 2 < len(np.unique(q_kernel)) <= 16  # a 4-bit kernel
    np.testing.assert_allclose(q_kernel, kernel.numpy(),
                               atol=np.max(np.abs(kernel.numpy())) / 7 + 1e-6)


def test_trains_saves_reloads_and_dumps(data, tmp_path):
    x, y = data
    model = _model()
    q = quantize(model, q_config={"leaky": OutputFakeQuantConfig(),
                                  "head": DenseKernelConfig()}, samples=x)
    q.compile(keras.optimizers.Adam(1e-2),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = q.fit(x, y, epochs=4, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < history[0]
    check_save_load(q, x[:8])
    config = dump_config(q)
    json.dumps(config)
    assert config["leaky"]["class_name"].endswith("OutputFakeQuantConfig")
    again = quantize(model, q_config=config, samples=x)
    assert isinstance(again.get_layer("head"), QuantizeWrapper)
