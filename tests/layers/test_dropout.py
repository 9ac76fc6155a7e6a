"""Tests of quantizeml.layers.dropout (QuantizedDropout)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.dropout import QuantizedDropout
from tests.layers.references import (INPUTS, float_gradient, frac, ints, output_quantizer,
                                     random_inputs, single_layer_model)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 3, 4)
OQ = {"bitwidth": 4}


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_dropout_passthrough(kind, training):
    x = INPUTS[kind](SHAPE)
    out = QuantizedDropout(0.5)(x, training=training)
    assert type(out) is type(x)
    np.testing.assert_array_equal(ints(out), ints(x))
    np.testing.assert_array_equal(frac(out), frac(x))
    np.testing.assert_array_equal(out.to_float().numpy(), x.to_float().numpy())


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
def test_dropout_output_quantizer(kind):
    x = INPUTS[kind](SHAPE)
    layer = QuantizedDropout(0.5, quant_config={"output_quantizer": OQ})
    layer(x)
    layer.out_quantizer.range_max.assign(3.0)
    out = layer(x, training=True)
    xv, xf = ints(x), frac(x)
    scales = np.asarray(x.scales) if hasattr(x, "scales") else None
    ref, ref_frac = output_quantizer(xv, xf, layer.out_quantizer, scales)
    np.testing.assert_array_equal(ints(out), ref)
    assert int(frac(out)) == int(ref_frac)
    # float bound: half a step of the 4-bit output within its range (plus the 8-bit scale
    # conversion of a QFloat, |x| * 2^-8)
    x_float = x.to_float().numpy()
    step = 2.0**-float(ref_frac)
    expected = np.clip(x_float, -8 * step, 7 * step)
    bound = step / 2 + (np.abs(x_float) * 2.0**-8 if scales is not None else 0.0)
    assert np.all(np.abs(out.to_float().numpy() - expected) <= bound + 1e-6)


def test_quantize_target_signature_config():
    assert QUANTIZATION_TARGETS[keras.layers.Dropout] is QuantizedDropout
    check_signature_parity(QuantizedDropout, keras.layers.Dropout)
    layer = QuantizedDropout(0.25, noise_shape=(None, 1, 4), seed=3,
                             quant_config={"output_quantizer": OQ})
    clone = check_config_roundtrip(layer)
    assert clone.rate == 0.25 and clone.seed == 3 and clone.quant_config == layer.quant_config


def test_save_load_and_gradients():
    model = single_layer_model(QuantizedDropout(0.5), SHAPE[1:], per_axis=True)
    x = random_inputs(SHAPE, scale=0.5)
    check_save_load(model, x)
    grad = float_gradient(model, x)
    assert float(tf.reduce_sum(tf.abs(grad))) > 0


def test_bad_inputs():
    with pytest.raises(TypeError, match="drop_float.*expected FixedPoint or QFloat"):
        QuantizedDropout(0.5, name="drop_float")(tf.ones(SHAPE))
    for bits in (0, 33):
        with pytest.raises(ValueError, match=f"drop_bits/output_quantizer: bitwidth .*{bits}"):
            QuantizedDropout(0.5, name="drop_bits",
                             quant_config={"output_quantizer": {"bitwidth": bits}})
    with pytest.raises(ValueError, match="drop_key: quant_config expected keys"):
        QuantizedDropout(0.5, name="drop_key", quant_config={"rate": 0.5})
