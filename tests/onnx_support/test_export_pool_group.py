"""Export of AveragePooling2D (valid and same, Keras' border divisors) and grouped Conv2D:
the ONNX integer outputs equal the Keras quantized model's bit for bit in onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer, InputQuantizer
from quantizeml.layers.pooling import QuantizedAveragePooling2D
from quantizeml.models import QuantizationParams, quantize
from quantizeml.onnx_support import export

L = keras.layers


def _integer_model(qmodel):
    last = qmodel.layers[-1]
    assert isinstance(last, Dequantizer)
    return keras.Model(qmodel.inputs, last.input)


def _check_bit_exact(qmodel, samples):
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {session.get_inputs()[0].name: samples})
    keras_int = _integer_model(qmodel)(samples).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(samples).numpy())
    return proto


def _samples(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(16, *shape)).astype(np.float32)


POOLS = {
    "2x2-same": dict(pool_size=2, padding="same"),
    "3x3-s1-same": dict(pool_size=3, strides=1, padding="same"),
    "3x2-s2x1-same": dict(pool_size=(3, 2), strides=(2, 1), padding="same"),
    "2x2-valid": dict(pool_size=2),
    "3x3-s2-valid": dict(pool_size=3, strides=2),
}


@pytest.mark.parametrize("oq", [True, False], ids=["oq", "model-output"])
@pytest.mark.parametrize("pool", list(POOLS), ids=list(POOLS))
def test_export_average_pool_bit_exact(pool, oq):
    """conv -> AveragePooling2D (-> conv): the pooling ends a block (OutputQuantizer on its
    QFloat) or produces the model output (a QFloat with scales 1 / L dequantized)."""
    inputs = keras.Input((7, 7, 3), name="inp")
    x = L.Conv2D(4, 3, padding="same", bias_initializer="random_normal", name="c1")(inputs)
    x = L.AveragePooling2D(**POOLS[pool], name="ap")(x)
    if oq:
        x = L.Conv2D(3, 1, name="c2")(x)
    model = keras.Model(inputs, x)
    samples = _samples((7, 7, 3))
    qmodel = quantize(model, samples=samples)
    assert isinstance(qmodel.get_layer("ap"), QuantizedAveragePooling2D)
    assert (qmodel.get_layer("ap").out_quantizer is not None) == oq
    _check_bit_exact(qmodel, samples)


@pytest.mark.parametrize("groups, per_tensor", [(2, False), (4, False), (2, True)],
                         ids=["g2-per-axis-act", "g4-per-axis-act", "g2-per-tensor-act"])
def test_export_grouped_conv_bit_exact(groups, per_tensor):
    """Grouped convolutions ('same' strides 2, 'valid' dilated) export to a float Conv or
    ConvInteger with its group attribute; per-axis activations reach them aligned on one
    fractional bit."""
    inputs = keras.Input((8, 8, 4), name="inp")
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = L.ReLU(name="r1")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", groups=groups,
                 bias_initializer="random_normal", name="g1")(x)
    x = L.Conv2D(4, 2, dilation_rate=2, groups=groups, name="g2")(x)
    model = keras.Model(inputs, x)
    samples = _samples((8, 8, 4))
    qparams = QuantizationParams(per_tensor_activations=per_tensor)
    qmodel = quantize(model, qparams=qparams, samples=samples)
    proto = _check_bit_exact(qmodel, samples)
    groups_seen = [a.i for n in proto.graph.node if n.op_type in ("Conv", "ConvInteger")
                   for a in n.attribute if a.name == "group"]
    assert groups in groups_seen, groups_seen


def test_export_pool_and_group_model_with_4bit_weights():
    """A RegNet-like block: grouped conv, ReLU, AveragePooling2D 3x3 'same', Add, on 4-bit
    weights and activations."""
    inputs = keras.Input((6, 6, 4), name="inp")
    x = L.Conv2D(8, 1, name="c1")(inputs)
    x = L.ReLU(name="r1")(x)
    y = L.Conv2D(8, 3, padding="same", groups=4, name="g")(x)
    y = L.ReLU(name="r2")(y)
    y = L.AveragePooling2D(3, strides=1, padding="same", name="ap")(y)
    x = L.Add(name="add")([x, y])
    x = L.Flatten(name="fl")(x)
    x = L.Dense(5, name="d")(x)
    model = keras.Model(inputs, x)
    samples = _samples((6, 6, 4))
    qmodel = quantize(model, qparams=QuantizationParams(weight_bits=4, activation_bits=4),
                      samples=samples)
    _check_bit_exact(qmodel, samples)


def test_export_average_pool_channels_first_refused():
    inputs = keras.Input((4, 6, 6), name="inp")
    iq = InputQuantizer(bitwidth=8)
    x = QuantizedAveragePooling2D(2, data_format="channels_first", name="ap_cf")(iq(inputs))
    iq.range_max.assign(4.0)
    qmodel = keras.Model(inputs, Dequantizer()(x))
    with pytest.raises(ValueError, match=r"ap_cf \(QuantizedAveragePooling2D\)"):
        export(qmodel)

