"""Tests of quantizeml.layers.normalization (QuantizedBatchNormalization)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.normalization import QuantizedBatchNormalization
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import (INPUTS, fixed_point, frac, ints, output_quantizer,
                                     random_inputs, single_layer_model)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

SHAPE = (2, 3, 3, 4)
OQ = {"bitwidth": 8}
A_CONFIGS = {
    "a-per-axis-8": None,
    "a-per-tensor-8": {"axis": None},
    "a-per-axis-4": {"bitwidth": 4},
    "a-fixed-point": {"fp_quantizer": True},
}


def _set_random_weights(layer, channels, seed=0):
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(channels) < 0.3, -1.0, 1.0)
    layer.gamma.assign(sign * rng.uniform(0.5, 2.0, channels))
    layer.beta.assign(rng.normal(0.0, 1.0, channels))
    layer.moving_mean.assign(rng.normal(0.0, 1.0, channels))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))


def _float_twin(layer):
    config = {k: v for k, v in layer.get_config().items() if k != "quant_config"}
    twin = keras.layers.BatchNormalization.from_config(config)
    twin.build((None,) + tuple(SHAPE[1:]))
    twin.set_weights([w.numpy() for w in (layer.gamma, layer.beta, layer.moving_mean,
                                          layer.moving_variance)])
    return twin


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("a_config", list(A_CONFIGS), ids=list(A_CONFIGS))
@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
def test_batchnorm_numerics(kind, a_config, oq):
    x = INPUTS[kind](SHAPE)
    quant_config = {}
    if A_CONFIGS[a_config] is not None:
        quant_config["a_quantizer"] = A_CONFIGS[a_config]
    if oq is not None:
        quant_config["output_quantizer"] = oq
    layer = QuantizedBatchNormalization(quant_config=quant_config)
    layer(x)
    _set_random_weights(layer, SHAPE[-1])
    if oq is not None:
        layer.out_quantizer.range_max.assign(6.0)
    out = layer(x)

    # quantized a and b from the layer's quantizers
    a, b = layer._a_b()
    a_q = layer.a_quantizer.quantize(a)
    a_int, a_frac = ints(a_q), frac(a_q)
    a_scales = np.asarray(a_q.scales, np.float32) if isinstance(a_q, QFloat) \
        else np.float32(1.0)
    x_scales = np.asarray(x.scales, np.float32) if isinstance(x, QFloat) else np.float32(1.0)
    f_ax = frac(x) + a_frac
    s_ax = np.broadcast_to(x_scales * a_scales, SHAPE[-1:])
    grid = QFloat(FixedPoint(tf.zeros(SHAPE[-1:]), 1, np.broadcast_to(f_ax, SHAPE[-1:])),
                  s_ax)
    b_q = layer.b_quantizer.quantize(b, grid)
    np.testing.assert_array_equal(np.broadcast_to(frac(b_q), SHAPE[-1:]),
                                  np.broadcast_to(f_ax, SHAPE[-1:]))
    # integer reference: x * a_int + b_int (b on the grid of a * x), in the 32-bit buffer
    ref = np.clip(ints(x) * a_int + ints(b_q), -2**31, 2**31 - 1)
    ref_frac = f_ax
    if oq is not None:
        ref, ref_frac = output_quantizer(ref, f_ax, layer.out_quantizer, s_ax)
    else:
        np.testing.assert_array_equal(np.broadcast_to(out.scales, SHAPE[-1:]), s_ax)
    np.testing.assert_array_equal(ints(out), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(out), SHAPE[-1:]),
                                  np.broadcast_to(ref_frac, SHAPE[-1:]))

    # float bound, per element: a is rounded to half a step (s_a / 2 for a QFloat, 2^-f_a / 2
    # for a FixedPoint), i.e. |x| * step_a / 2; b on 16 bits aligned on the grid of a * x:
    # |b - b_q| <= |b| * 2^-15 + s_ax * 2^-f_ax / 2 (rounded on at most 15 value bits, or on
    # the accumulator grid); float32 rounding of the float layer: 1e-5 relative. The output
    # quantizer converts the scales on 8 bits (|y| * 2^-8) and rounds (half a step) within
    # its range.
    x_float = x.to_float().numpy()
    expected = _float_twin(layer)(x_float, training=False).numpy()
    step_a = a_scales if isinstance(a_q, QFloat) else 2.0**-a_frac.astype(np.float64)
    b_np = np.asarray(b)
    bound = (np.abs(x_float) * step_a / 2 + np.abs(b_np) * 2.0**-15
             + s_ax * 2.0**-f_ax.astype(np.float64) / 2 + 1e-5 * (np.abs(expected) + 1))
    if oq is not None:
        oq_layer = layer.out_quantizer
        bound = bound + np.abs(expected) * 2.0**-8
        step = 2.0**-frac(oq_layer)
        expected = np.clip(expected, -(2**oq_layer.value_bits) * step,
                           (2**oq_layer.value_bits - 1) * step)
        bound = bound + step / 2
    err = np.abs(out.to_float().numpy() - expected)
    assert np.all(err <= bound), (err - bound).max()


def test_batchnorm_from_keras_and_frozen_statistics():
    # converted from a Keras BatchNormalization: same variables, same order
    bn = keras.layers.BatchNormalization(epsilon=0.01)
    bn.build((None, 4))
    for w in bn.weights:
        w.assign(np.random.uniform(0.5, 1.5, w.shape))
    qbn = QuantizedBatchNormalization.from_config(bn.get_config())
    qbn.build((None, 4))
    qbn.set_weights(bn.get_weights())
    assert [w.name.split("/")[-1] for w in qbn.weights] == \
        [w.name.split("/")[-1] for w in bn.weights]
    assert [w.name for w in qbn.trainable_weights] == ["gamma:0", "beta:0"]
    x = fixed_point((8, 4))
    inference = qbn(x).to_float().numpy()
    trained = qbn(x, training=True).to_float().numpy()
    # training mode uses (and never updates) the moving statistics
    np.testing.assert_array_equal(trained, inference)
    np.testing.assert_array_equal(qbn.moving_mean.numpy(), bn.moving_mean.numpy())
    np.testing.assert_allclose(inference, bn(x.to_float(), training=False).numpy(), atol=0.1)


def test_batchnorm_no_center_no_scale():
    layer = QuantizedBatchNormalization(center=False, scale=False)
    x = fixed_point((2, 4))
    out = layer(x)
    assert len(layer.weights) == 2
    expected = x.to_float().numpy() / np.sqrt(1 + 1e-3)
    np.testing.assert_allclose(out.to_float().numpy(), expected,
                               atol=np.abs(expected).max() / 127)


def test_quantize_target_and_signature():
    assert QUANTIZATION_TARGETS[keras.layers.BatchNormalization] is QuantizedBatchNormalization
    check_signature_parity(QuantizedBatchNormalization, keras.layers.BatchNormalization)


def test_config_roundtrip():
    layer = QuantizedBatchNormalization(
        epsilon=0.01, quant_config={"a_quantizer": {"bitwidth": 6, "axis": None},
                                    "b_quantizer": {"bitwidth": 12},
                                    "output_quantizer": OQ, "buffer_bitwidth": 24})
    clone = check_config_roundtrip(layer)
    assert clone.a_quantizer.bitwidth == 6 and clone.a_quantizer.axis is None
    assert clone.b_quantizer.bitwidth == 12 and clone.buffer_bitwidth == 24
    layer(fixed_point(SHAPE))  # the built layer (axis a list) still round-trips
    check_config_roundtrip(layer)


@pytest.mark.parametrize("per_axis, quant_config", [(True, None),
                                                    (False, {"output_quantizer": OQ})],
                         ids=["per-axis", "oq"])
def test_save_load(per_axis, quant_config):
    layer = QuantizedBatchNormalization(quant_config=quant_config)
    model = single_layer_model(layer, SHAPE[1:], per_axis=per_axis)
    _set_random_weights(layer, SHAPE[-1])
    check_save_load(model, random_inputs(SHAPE))


def test_gradients():
    layer = QuantizedBatchNormalization()
    model = single_layer_model(layer, SHAPE[1:])
    _set_random_weights(layer, SHAPE[-1])
    check_gradients_reach(model, random_inputs(SHAPE, scale=0.5), [layer.gamma, layer.beta])


def test_bad_inputs():
    with pytest.raises(TypeError, match="bn_float.*expected FixedPoint or QFloat"):
        QuantizedBatchNormalization(name="bn_float")(tf.ones(SHAPE))
    with pytest.raises(ValueError, match="bn_axis.*expected axis=-1.*axis=1"):
        QuantizedBatchNormalization(axis=1, name="bn_axis")(fixed_point(SHAPE))
    with pytest.raises(ValueError, match="bn_axes.*expected axis=-1"):
        QuantizedBatchNormalization(axis=[1, 3], name="bn_axes")
    with pytest.raises(ValueError, match="bn_neg.*expected axis=-1"):
        QuantizedBatchNormalization(axis=-2, name="bn_neg")
    QuantizedBatchNormalization(axis=3)(fixed_point(SHAPE))  # the last axis, positive
    for key in ("a_quantizer", "output_quantizer"):
        for bits in (0, 33):
            with pytest.raises(ValueError, match=f"bn_bits/{key}: bitwidth .*{bits}"):
                QuantizedBatchNormalization(name="bn_bits",
                                            quant_config={key: {"bitwidth": bits}})
    with pytest.raises(ValueError, match="bn_key: quant_config expected keys.*weight_q"):
        QuantizedBatchNormalization(name="bn_key", quant_config={"weight_quantizer": {}})


@pytest.mark.slow
def test_fit_decreases_loss():
    # InputQuantizer -> BN -> ReLU (output quantizer: block end) -> GAP -> Dequantizer: QAT
    # trains gamma and beta through the straight-through estimators
    from quantizeml.layers.activations import QuantizedReLU
    from quantizeml.layers.pooling import QuantizedGlobalAveragePooling2D
    from quantizeml.layers.quantizers import Dequantizer, InputQuantizer
    inputs = keras.Input((4, 4, 3))
    iq = InputQuantizer(bitwidth=8)
    bn = QuantizedBatchNormalization()
    relu = QuantizedReLU(quant_config={"output_quantizer": {"bitwidth": 8, "signed": False}})
    x = relu(bn(iq(inputs)))
    model = keras.Model(inputs, Dequantizer()(QuantizedGlobalAveragePooling2D()(x)))
    iq.range_max.assign(4.0)
    relu.out_quantizer.range_max.assign(6.0)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((32, 4, 4, 3)).astype(np.float32)
    target = np.maximum(data * [2.0, -1.0, 0.5] + [0.5, 1.0, -0.2], 0).mean(axis=(1, 2))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    history = model.fit(data, target, epochs=8, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
