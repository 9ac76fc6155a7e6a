"""Tests of quantizeml.layers.rescaling (QuantizedRescaling)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS, saturation
from quantizeml.layers.quantizers import Dequantizer
from quantizeml.layers.rescaling import QuantizedRescaling
from quantizeml.tensors import QFloat
from tests.layers.references import fixed_point, frac, ints, output_quantizer
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 3, 3, 3)


def _pixels(shape=SHAPE, low=0, high=256, seed=0):
    return np.random.default_rng(seed).integers(low, high, size=shape).astype(np.float32)


@pytest.mark.parametrize("scale", [1 / 255, 0.5, -1 / 127.5], ids=["1/255", "0.5", "neg"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_rescaling_wraps_integers(scale, signed):
    quant_config = {"input_signed": True} if signed else None
    x = _pixels(low=-128 if signed else 0, high=128 if signed else 256)
    out = QuantizedRescaling(scale, quant_config=quant_config)(x)
    # integer reference: the integers themselves, 8-bit per-tensor, frac_bits 0, scale
    assert isinstance(out, QFloat) and out.per_tensor
    assert out.value_bits == (7 if signed else 8)
    np.testing.assert_array_equal(ints(out), x.astype(np.int64))
    assert int(frac(out)) == 0 and float(out.scales) == np.float32(scale)
    # float: bit-identical to keras.layers.Rescaling (x * float32(scale))
    np.testing.assert_array_equal(out.to_float().numpy(),
                                  keras.layers.Rescaling(scale)(x).numpy())


@pytest.mark.parametrize("bitwidth, signed", [(8, False), (4, True)], ids=["u8", "s4"])
def test_rescaling_rounds_and_clips(bitwidth, signed):
    layer = QuantizedRescaling(0.1, quant_config={"input_bitwidth": bitwidth,
                                                  "input_signed": signed})
    x = np.array([[-300.0, -8.5, -0.4, 0.5, 2.49, 7.5, 300.0]], np.float32)
    out = layer(x)
    # round half up, then clip to [0, 2^b - 1] (unsigned) or [-2^(b-1), 2^(b-1) - 1]
    low, high = (-2**(bitwidth - 1), 2**(bitwidth - 1) - 1) if signed else (0, 2**bitwidth - 1)
    ref = np.clip(np.floor(x.astype(np.float64) + 0.5), low, high)
    np.testing.assert_array_equal(ints(out), ref)
    assert saturation(layer)["input"] > 0


def test_rescaling_output_quantizer():
    layer = QuantizedRescaling(1 / 255, quant_config={"output_quantizer": {"bitwidth": 8}})
    x = _pixels()
    layer(x)
    layer.out_quantizer.range_max.assign(1.0)
    out = layer(x)
    ref, ref_frac = output_quantizer(x.astype(np.int64), np.int64(0), layer.out_quantizer,
                                     np.float32(1 / 255))
    np.testing.assert_array_equal(ints(out), ref)
    assert int(frac(out)) == int(ref_frac)
    # float bound: 8-bit scales (|y| * 2^-8) and half a 2^-7 step, within [-1, 127/128]
    expected = np.clip(x / 255, -1, 127 / 128)
    bound = np.abs(expected) * 2.0**-8 + 2.0**-8
    assert np.all(np.abs(out.to_float().numpy() - expected) <= bound + 1e-6)


@pytest.mark.parametrize("scale", [0.5, 3.0, 1 / 255], ids=["half", "3", "1/255"])
def test_rescaling_quantized_inputs(scale):
    """A constant multiplication inside the model: the integers stay, the scales change."""
    fp = fixed_point(SHAPE)
    out = QuantizedRescaling(scale)(fp)
    assert isinstance(out, QFloat)
    np.testing.assert_array_equal(ints(out), ints(fp))
    np.testing.assert_array_equal(frac(out), frac(fp))
    assert float(out.scales) == np.float32(scale)
    qf = QFloat(fp, tf.constant([0.5, 0.25, 1.5], tf.float32))
    out = QuantizedRescaling(scale)(qf)
    np.testing.assert_array_equal(ints(out), ints(fp))
    np.testing.assert_array_equal(out.scales.numpy(),
                                  np.array([0.5, 0.25, 1.5], np.float32) * np.float32(scale))
    np.testing.assert_allclose(out.to_float().numpy(), qf.to_float().numpy() * scale,
                               rtol=1e-6)
    # with an output quantizer: the requantized QFloat, as OutputQuantizer computes it
    layer = QuantizedRescaling(scale, quant_config={"output_quantizer": {"bitwidth": 8}})
    layer(fp)
    layer.out_quantizer.range_max.assign(float(np.max(np.abs(fp.to_float().numpy())) * scale))
    np.testing.assert_array_equal(ints(layer(fp)),
                                  ints(layer.out_quantizer(QFloat(fp, tf.constant(
                                      scale, tf.float32)))))


def test_quantize_target_signature_config():
    assert QUANTIZATION_TARGETS[keras.layers.Rescaling] is QuantizedRescaling
    check_signature_parity(QuantizedRescaling, keras.layers.Rescaling)
    layer = QuantizedRescaling(1 / 255, quant_config={"input_bitwidth": 10,
                                                      "input_signed": True,
                                                      "output_quantizer": {"bitwidth": 8}})
    clone = check_config_roundtrip(layer)
    assert clone.input_value_bits == 9 and clone.input_signed


def test_save_load():
    inputs = keras.Input(SHAPE[1:])
    layer = QuantizedRescaling(1 / 255, quant_config={"output_quantizer": {"bitwidth": 8}})
    model = keras.Model(inputs, Dequantizer()(layer(inputs)))
    layer.out_quantizer.range_max.assign(1.0)
    check_save_load(model, _pixels())


def test_gradients_straight_through():
    layer = QuantizedRescaling(0.5)
    x = tf.constant(_pixels(high=100))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x).to_float()
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), np.full(SHAPE, 0.5))


def test_bad_inputs():
    with pytest.raises(ValueError, match="resc_scale.*expected a scalar scale"):
        QuantizedRescaling([0.5, 0.25], name="resc_scale")
    with pytest.raises(ValueError, match="resc_offset.*expected a zero offset.*offset=-1"):
        QuantizedRescaling(1 / 127.5, offset=-1, name="resc_offset")
    with pytest.raises(ValueError, match="resc_q.*expected a positive scale for quantized "
                                         "inputs.*-0.5"):
        QuantizedRescaling(-0.5, name="resc_q")(fixed_point(SHAPE))
    for key in ("input_bitwidth", "buffer_bitwidth"):
        for bits in (0, 33):
            with pytest.raises(ValueError, match=f"resc_bits: {key} .*{bits}"):
                QuantizedRescaling(0.5, name="resc_bits", quant_config={key: bits})
    with pytest.raises(ValueError, match="resc_bits/output_quantizer: bitwidth"):
        QuantizedRescaling(0.5, name="resc_bits", quant_config={"output_quantizer":
                                                                {"bitwidth": 40}})
    with pytest.raises(ValueError, match="resc_key: quant_config expected keys"):
        QuantizedRescaling(0.5, name="resc_key", quant_config={"offset": 1})
