"""Tests of quantizeml.layers.dense (QuantizedDense)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.dense import QuantizedDense
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import INPUTS, frac, ints, random_inputs, single_layer_model
from tests.layers.test_convolution import (OQ, WEIGHTS, aligned_ints, calibrate_output,
                                           check_against_float, finish_reference, fold,
                                           grid_step, weight_ints)
from tests.utils import (check_config_roundtrip, check_gradients_reach, check_save_load,
                         check_signature_parity)

DENSE_INPUTS = ["fp-per-tensor", "fp-per-axis", "qfloat-per-tensor"]
# size-1 batch axes: a broadcast float32 tf.linalg.matmul gives wrong values (and corrupts
# the heap) on them with TF 2.21's oneDNN CPU kernels; QuantizedDense must not use it
SHAPES = {"rank2": (3, 6), "rank3-tokens": (2, 4, 6), "rank4": (2, 3, 2, 6),
          "rank5": (2, 2, 1, 3, 6), "rank4-height1": (16, 1, 10, 6),
          "rank4-ones": (4, 1, 1, 6), "rank4-width1": (16, 3, 1, 6)}
CASES = {"bias-w-per-axis": (True, "per-axis"), "nobias-w-per-tensor": (False, "per-tensor"),
         "bias-w-fp": (True, "fp-quantizer")}


@pytest.mark.parametrize("oq", [None, OQ], ids=["no-oq", "oq"])
@pytest.mark.parametrize("kind", DENSE_INPUTS, ids=DENSE_INPUTS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_dense_numerics(shape, case, kind, oq):
    x = INPUTS[kind](SHAPES[shape])
    use_bias, weights = CASES[case]
    quant_config = {"weight_quantizer": WEIGHTS[weights]}
    if oq is not None:
        quant_config["output_quantizer"] = oq
    kwargs = dict(units=5, use_bias=use_bias, bias_initializer="random_normal")
    layer = QuantizedDense(quant_config=quant_config, **kwargs)
    calibrate_output(layer, x)
    y = layer(x)
    assert y.shape == (*SHAPES[shape][:-1], 5)
    # integer reference: x_int @ w_int in int64, then bias, buffer clip, output quantizer
    xv, xf, sx = aligned_ints(x)
    w = layer.weight_quantizer(layer.kernel)
    wv, wf, sw = weight_ints(w)
    ref, ref_frac = finish_reference(layer, xv @ wv, xf + wf, fold(sx, sw))
    np.testing.assert_array_equal(ints(y), ref)
    np.testing.assert_array_equal(np.broadcast_to(frac(y), (5,)),
                                  np.broadcast_to(ref_frac, (5,)))
    assert isinstance(y, QFloat if (oq is None and fold(sx, sw) is not None) else FixedPoint)
    # float reference, bound of check_against_float with sum|x| over the features
    float_layer = keras.layers.Dense(**kwargs)
    float_layer(x.to_float())
    float_layer.set_weights(layer.get_weights()[:len(float_layer.get_weights())])
    sum_abs = np.abs(x.to_float().numpy().astype(np.float64)).sum(-1, keepdims=True)
    check_against_float(layer, float_layer, x, y, sum_abs, w, grid_step(xf + wf, fold(sx, sw)))


def test_dense_large_inputs_run_in_float64():
    """Products beyond float32's exact range (2^24) stay exact (int64 reference)."""
    rng = np.random.default_rng(1)
    values = rng.integers(-2**15, 2**15, size=(2, 64)).astype(np.float32)
    x = FixedPoint(tf.constant(values), 15, 0.0)
    layer = QuantizedDense(3, use_bias=False,
                           quant_config={"weight_quantizer": {"bitwidth": 16}})
    y = layer(x)
    wv = ints(layer.weight_quantizer(layer.kernel))
    ref = np.clip(values.astype(np.int64) @ wv, -2**31, 2**31 - 1)
    np.testing.assert_array_equal(ints(y), ref)


def test_signature_parity_and_target():
    assert check_signature_parity(QuantizedDense, keras.layers.Dense)
    assert QUANTIZATION_TARGETS[keras.layers.Dense] is QuantizedDense


FULL_CONFIG = {"weight_quantizer": {"bitwidth": 4, "axis": None},
               "bias_quantizer": {"bitwidth": 12}, "output_quantizer": {"bitwidth": 8},
               "buffer_bitwidth": 24}


@pytest.mark.parametrize("quant_config", [None, FULL_CONFIG], ids=["default", "full"])
def test_config_roundtrip(quant_config):
    clone = check_config_roundtrip(QuantizedDense(5, quant_config=quant_config))
    assert clone.quant_config == (quant_config or {})


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_save_load_h5(shape):
    layer = QuantizedDense(5, quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPES[shape][1:], per_axis=True, out_range=20.0)
    check_save_load(model, random_inputs(SHAPES[shape]), formats=("h5",))


@pytest.mark.slow
def test_save_load_savedmodel():
    layer = QuantizedDense(5, quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, (4, 6), out_range=20.0)
    check_save_load(model, random_inputs((2, 4, 6)), formats=("tf",))


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_gradients_reach_float_weights(shape):
    layer = QuantizedDense(5, quant_config={"output_quantizer": {"bitwidth": 8}})
    model = single_layer_model(layer, SHAPES[shape][1:], out_range=20.0)
    check_gradients_reach(model, random_inputs(SHAPES[shape]))
    assert len(model.trainable_variables) == 2


def test_qat_fit_decreases_loss():
    model = single_layer_model(QuantizedDense(4), (6,))
    x = random_inputs((16, 6))
    target = keras.layers.Dense(4)(x).numpy()
    model.compile(keras.optimizers.Adam(0.02), "mse")
    history = model.fit(x, target, epochs=6, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history


def _dense_on_nd_model(reshape):
    """Conv2D -> ReLU -> (Permute: 4-D, or Reshape: 5-D) -> Dense -> ReLU -> Dense."""
    inputs = keras.Input((6, 5, 3), name="inp")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    if reshape:
        x = keras.layers.Reshape((5, 2, 3, 4), name="reshape")(x)
    else:
        x = keras.layers.Permute((2, 1, 3), name="permute")(x)
    x = keras.layers.Dense(7, name="dense")(x)
    x = keras.layers.ReLU(name="relu_1")(x)
    x = keras.layers.Dense(3, name="dense_1")(x)
    return keras.Model(inputs, x)


def test_quantize_dense_on_4d_tensor():
    """quantize() of a model with Dense on the 4-D output of a Permute: the quantized model
    follows the float one within the 8-bit quantization tolerance."""
    from quantizeml.models import quantize

    model = _dense_on_nd_model(reshape=False)
    samples = np.random.default_rng(0).uniform(-1, 1, (64, 6, 5, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples, num_samples=64)
    assert isinstance(qmodel.get_layer("dense"), QuantizedDense)
    assert qmodel.get_layer("dense").output_shape == (None, 5, 6, 7)
    y_float, y_quant = model(samples).numpy(), qmodel(samples).numpy()
    assert y_quant.shape == y_float.shape == (64, 5, 6, 3)
    # two 8-bit layers of weights and activations: a few percent of the output range
    assert np.abs(y_quant - y_float).max() <= 0.04 * np.abs(y_float).max()


def test_export_dense_on_5d_tensor_bit_exact():
    """The ONNX export of Dense on a rank-5 tensor (MatMulInteger broadcasts its batch axes)
    gives the Keras integer and float outputs bit for bit."""
    import onnx
    import onnxruntime as ort

    from quantizeml.models import quantize
    from quantizeml.onnx_support import export

    model = _dense_on_nd_model(reshape=True)
    samples = np.random.default_rng(0).uniform(-1, 1, (32, 6, 5, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples, num_samples=32)
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {"inp": samples})
    keras_int = keras.Model(qmodel.inputs, qmodel.layers[-1].input)(samples).values.numpy()
    assert integers.shape == (32, 5, 2, 3, 3)
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(samples).numpy())


# ---- errors -----------------------------------------------------------------------------------
def test_float_inputs_raise():
    with pytest.raises(TypeError, match="dense_layer.*expected FixedPoint or QFloat"):
        QuantizedDense(5, name="dense_layer")(tf.zeros((2, 6)))


def test_per_axis_qfloat_raises():
    with pytest.raises(ValueError, match="dense_layer.*per-tensor scales"):
        QuantizedDense(5, name="dense_layer")(INPUTS["qfloat-per-axis"]((2, 6)))


def test_rank1_raises():
    # refused by Keras's own input spec of Dense (min_ndim=2), naming the layer
    with pytest.raises(ValueError, match="dense_layer.*expected min_ndim=2"):
        QuantizedDense(5, name="dense_layer")(INPUTS["fp-per-tensor"]((6,)))


@pytest.mark.parametrize("config,match", [
    ({"weight_quantizer": {"bitwidth": 0}}, "bitwidth expected an int in"),
    ({"weight_quantizer": {"bitwidth": 33}}, "bitwidth expected an int in"),
    ({"output_quantizer": {"bitwidth": 40}}, "bitwidth expected an int in"),
    ({"weights_quantizer": {}}, "unknown keys"),
], ids=["bitwidth-0", "bitwidth-33", "out-bitwidth-40", "unknown-key"])
def test_bad_quant_config_raises(config, match):
    with pytest.raises(ValueError, match=f"dense_layer.*{match}"):
        QuantizedDense(5, name="dense_layer", quant_config=config)


def test_activation_raises():
    with pytest.raises(ValueError, match="dense_layer: activation expected None or 'linear'"):
        QuantizedDense(5, activation="relu", name="dense_layer")
