"""ONNX export of the lookup-table activations (quantizeml.layers.table): ``Gather`` on the
layer's int64 table, integer outputs equal to the Keras ones bit for bit in onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer
from quantizeml.layers.table import QuantizedActivation, gelu_approximate, hard_swish
from quantizeml.models import QuantizationParams, quantize
from quantizeml.onnx_support import export

L = keras.layers


def _samples(shape, n=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def _run(qmodel, x, tmp_path):
    """Exports, checks the model, runs it in onnxruntime; asserts integer and float outputs
    equal to the Keras ones; returns the proto."""
    proto = export(qmodel, str(tmp_path / "table.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats, integers = session.run(None, {session.get_inputs()[0].name: x})
    last = qmodel.layers[-1]
    assert isinstance(last, Dequantizer)
    keras_int = keras.Model(qmodel.inputs, last.input)(x).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel.predict(x, verbose=0))
    assert "Gather" in {node.op_type for node in proto.graph.node}
    return proto


def _conv_model(*activations, shape=(8, 8, 3)):
    inputs = keras.Input(shape)
    x = inputs
    for i, activation in enumerate(activations):
        x = L.Conv2D(4, 3, padding="same", bias_initializer="random_normal", name=f"c{i}")(x)
        x = activation(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3)(x))


ACTIVATIONS = ["sigmoid", "swish", "gelu", gelu_approximate, hard_swish, "tanh", "elu", "selu",
               "softplus", "softsign", "hard_sigmoid", "mish"]


@pytest.mark.slow
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-axis", "per-tensor"])
def test_export_activation_tables_bit_exact(per_tensor, tmp_path):
    """Two activations per model (per-axis: one table per channel), every supported
    function across the models, int and float outputs equal to Keras."""
    x = _samples((8, 8, 3))
    qparams = QuantizationParams(per_tensor_activations=per_tensor)
    for first, second in zip(ACTIVATIONS[::2], ACTIVATIONS[1::2]):
        model = _conv_model(L.Activation(first), L.Activation(second))
        qmodel = quantize(model, qparams=qparams, samples=x)
        assert sum(isinstance(layer, QuantizedActivation) for layer in qmodel.layers) == 2
        _run(qmodel, x, tmp_path)


@pytest.mark.slow
def test_export_leaky_relu_elu_prelu_bit_exact(tmp_path):
    x = _samples((8, 8, 3))
    model = _conv_model(L.LeakyReLU(0.1), L.ELU(0.5),
                        L.PReLU(shared_axes=[1, 2],
                                alpha_initializer=keras.initializers.RandomUniform(0.0, 0.4)),
                        L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.0, 0.4)))
    qmodel = quantize(model, samples=x)
    _run(qmodel, x, tmp_path)


@pytest.mark.slow
def test_export_table_model_output_default_grid(tmp_path):
    """A table producing the model output: no output quantizer, the 16-bit default grid."""
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, name="conv")(inputs)
    y = L.Activation("tanh", name="tanh")(y)
    qmodel = quantize(keras.Model(inputs, y), samples=_samples((8, 8, 3)))
    assert qmodel.get_layer("tanh").out_quantizer is None
    _run(qmodel, _samples((8, 8, 3), seed=1), tmp_path)


@pytest.mark.slow
def test_export_four_bit_tables(tmp_path):
    """4-bit activations: 16-entry tables (per channel)."""
    x = _samples((8, 8, 3))
    qparams = QuantizationParams(weight_bits=4, activation_bits=4, output_bits=4)
    qmodel = quantize(_conv_model(L.Activation("swish"), L.Activation("sigmoid")),
                      qparams=qparams, samples=x)
    proto = _run(qmodel, x, tmp_path)
    tables = [init for init in proto.graph.initializer if init.name.startswith("table")]
    assert tables and all(int(np.prod(t.dims)) == 16 * 4 for t in tables)
