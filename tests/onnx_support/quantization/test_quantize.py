"""quantize(ModelProto): validity, accuracy against the float model, exact integers, errors."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as onnx_helper

from quantizeml.models.quantization_params import QuantizationParams
from quantizeml.onnx_support.layers import DOMAIN
from quantizeml.onnx_support.quantization import quantize
from tests.onnx_support.models import GraphMaker, conv_net, flatten_net, run
from tests.onnx_support.references import conv2d, maxpool, rescale, saturate

# Largest |quantized - float| output error, relative to the float output range (max - min) on
# held-out inputs. Measured: conv_net 0.7% (per-channel) / 1.7% (per-tensor), flatten_net 2.7% /
# 1.2%.
ERROR_BOUND = 0.05

MODELS = [("conv_net", conv_net), ("flatten_net", flatten_net)]


def _samples(model, n, seed):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).uniform(0, 1, [n] + dims).astype(np.float32)


def _initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def quantized():
    """(float model, quantized model) for each test model and activation granularity."""
    out = {}
    for name, make in MODELS:
        model = make()
        for per_tensor in (False, True):
            qparams = QuantizationParams(per_tensor_activations=per_tensor)
            out[name, per_tensor] = model, quantize(model, qparams, samples=_samples(model, 64, 1))
    return out


CASES = [(name, per_tensor) for name, _ in MODELS for per_tensor in (False, True)]
IDS = [f"{name}-{'per_tensor' if pt else 'per_channel'}" for name, pt in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_quantized_model_is_valid_and_runs_without_custom_ops(quantized, case):
    model, qmodel = quantized[case]
    onnx.checker.check_model(qmodel, full_check=True)
    assert all(node.domain == DOMAIN for node in qmodel.graph.node)
    assert {f.name for f in qmodel.functions} == {n.op_type for n in qmodel.graph.node}
    assert all(n.domain == "" for f in qmodel.functions for n in f.node)
    # Same input and output names and float types as the float model.
    assert [vi.name for vi in qmodel.graph.input] == [vi.name for vi in model.graph.input]
    assert [vi.name for vi in qmodel.graph.output] == [vi.name for vi in model.graph.output]
    sess = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].type == "tensor(float)"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_quantized_outputs_are_close_to_float_outputs(quantized, case):
    model, qmodel = quantized[case]
    x = _samples(model, 32, 2)
    y, yq = run(model, x), run(qmodel, x)
    assert np.max(np.abs(yq - y)) <= ERROR_BOUND * (y.max() - y.min())
    assert np.mean(np.argmax(yq, -1) == np.argmax(y, -1)) >= 0.9


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_per_tensor_activations_is_honoured(quantized, case):
    _, qmodel = quantized[case]
    inits = _initializers(qmodel)
    scale_shapes = {inits[n.input[1]].shape for n in qmodel.graph.node
                    if n.op_type in ("InputQuantizer", "Dequantizer")}
    assert scale_shapes == ({()} if case[1] else {(3,), (10,)} if case[0] == "conv_net"
                            else {(1,), (5,)})


def _intermediate_outputs(model, names):
    """The model with extra outputs (types from ONNX shape inference through the functions)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    extended.graph.output.extend(infos[name] for name in names)
    return extended


def test_integer_values_inside_the_quantized_graph_are_exact(quantized):
    """The first QuantizedConv2D node of conv_net (Conv + ReLU + MaxPool) against a numpy
    int64 reference computed from its own initializers and integer input."""
    _, qmodel = quantized["conv_net", False]
    node = next(n for n in qmodel.graph.node if n.op_type == "QuantizedConv2DMaxPoolReLU")
    x_name, w, b, pads, m, s = node.input
    inits = _initializers(qmodel)
    extended = _intermediate_outputs(qmodel, [x_name, node.output[0]])
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    x_int, y_int = sess.run([x_name, node.output[0]], {"input": _samples(qmodel, 4, 3)})
    assert x_int.dtype == np.uint8 and y_int.dtype == np.uint8
    assert inits[w].dtype == np.int8 and inits[b].dtype == np.int32
    top, left, bottom, right = inits[pads][[2, 3, 6, 7]]
    acc = conv2d(x_int, inits[w], (1, 1), (top, left, bottom, right)) + inits[b]
    expected = maxpool(saturate(rescale(acc, inits[m], inits[s]), signed=False), (2, 2), (2, 2))
    np.testing.assert_array_equal(y_int.astype(np.int64), expected)
    assert len(np.unique(y_int)) > 20


def test_random_samples_when_none_and_input_not_mutated():
    model = flatten_net()
    before = model.SerializeToString()
    qmodel = quantize(model, num_samples=256)
    assert model.SerializeToString() == before
    x = _samples(model, 16, 5)
    y, yq = run(model, x), run(qmodel, x)
    assert np.max(np.abs(yq - y)) <= ERROR_BOUND * (y.max() - y.min())


def test_intermediate_graph_output_and_signed_inputs():
    """A conv output that is both a model output and the next conv's input; inputs in [-1, 1]
    get a signed InputQuantizer."""
    g = GraphMaker((2, 6, 6), seed=5)
    first = g.conv("input", 4, bn=False)
    second = g.relu(g.conv(first, 3, bn=False))
    model = g.model(first, second)
    x = np.random.default_rng(0).uniform(-1, 1, (32, 2, 6, 6)).astype(np.float32)
    qmodel = quantize(model, samples=x)
    assert qmodel.graph.node[0].op_type == "InputQuantizerSigned"
    sess = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for y, yq in zip(ref.run(None, {"input": x}), sess.run(None, {"input": x})):
        assert np.max(np.abs(yq - y)) <= ERROR_BOUND * (y.max() - y.min())


def test_unsupported_nodes_are_all_reported_by_name_and_op_type():
    g = GraphMaker((2, 6, 6))
    x = g.node("Sigmoid", [g.conv("input", 4, bn=False)], (4, 6, 6))
    x = g.maxpool(x)  # MaxPool is supported, but not alone
    x = g.node("Softmax", [g.flatten(x)], (36,), axis=1)
    with pytest.raises(ValueError) as info:
        quantize(g.model(x), num_samples=4)
    lines = str(info.value).splitlines()
    assert "4 unsupported ONNX node(s)" in lines[0]
    assert [line.strip() for line in lines[1:]] == [
        "'sigmoid3' (Sigmoid): unsupported op type",
        "'maxpool4' (MaxPool): not part of a supported op sequence",
        "'flatten5' (Flatten): not part of a supported op sequence",
        "'softmax6' (Softmax): unsupported op type"]


def test_unsupported_attributes_are_reported():
    g = GraphMaker((2, 6, 6))
    x = g.conv("input", 4, bn=False)
    g.nodes[-1].attribute.extend([onnx_helper.make_attribute("dilations", [2, 2])])
    g.shapes[x] = (4, 4, 4)
    with pytest.raises(ValueError, match=r"\n  'conv2' \(Conv\) expected dilations \[1, 1\]"):
        quantize(g.model(x), num_samples=4)


def test_invalid_model_is_rejected_with_the_checker_message():
    g = GraphMaker((2, 6, 6))
    model = g.model(g.relu("input"))
    model.graph.node[0].input[0] = "undefined_tensor"
    with pytest.raises(ValueError, match="onnx.checker reported: .*undefined_tensor"):
        quantize(model)
    with pytest.raises(TypeError, match="ModelProto"):
        quantize(model.SerializeToString())


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_bits=4), "weight_bits=4"),
    (dict(activation_bits=4, output_bits=6), "activation_bits=4, output_bits=6"),
    (dict(input_weight_bits=2), "input_weight_bits=2"),
    (dict(buffer_bits=24), "buffer_bits=24"),
], ids=["weight_bits", "activation_bits", "input_weight_bits", "buffer_bits"])
def test_bad_qparams_are_rejected(kwargs, match):
    g = GraphMaker((2, 6, 6))
    model = g.model(g.relu(g.conv("input", 2, bn=False)))
    with pytest.raises(ValueError, match=match):
        quantize(model, QuantizationParams(**kwargs))


def test_qparams_default_to_the_quantization_context():
    from quantizeml.models.quantization_params import quantization
    g = GraphMaker((2, 6, 6))
    model = g.model(g.relu(g.conv("input", 2, bn=False)))
    with quantization(QuantizationParams(weight_bits=4)):
        with pytest.raises(ValueError, match="weight_bits=4"):
            quantize(model)
    with quantization(QuantizationParams(per_tensor_activations=True)):
        qmodel = quantize(model, num_samples=8)
    scales = [t for t in qmodel.graph.initializer if t.name.endswith("/scale")]
    assert len(scales) == 2 and all(list(t.dims) == [] for t in scales)


def test_bad_arguments_are_rejected():
    g = GraphMaker((2, 6, 6))
    model = g.model(g.relu(g.conv("input", 2, bn=False)))
    with pytest.raises(TypeError, match="QuantizationParams"):
        quantize(model, qparams={"weight_bits": 8})
    with pytest.raises(ValueError, match="epochs=2"):
        quantize(model, epochs=2)
    g = GraphMaker((2, 6, 6))
    g.input = onnx_helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["N", 2, 6, 6])
    double_model = onnx_helper.make_model(
        onnx_helper.make_graph([onnx_helper.make_node("Relu", ["input"], ["y"])], "g",
                               [g.input], [onnx_helper.make_tensor_value_info(
                                   "y", TensorProto.DOUBLE, ["N", 2, 6, 6])]),
        opset_imports=[onnx_helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="float32"):
        quantize(double_model)


@pytest.mark.slow
def test_digits_cnn_converted_with_tf2onnx():
    """The digits CNN (quantizeml.models.zoo) trained briefly, converted with tf2onnx (NHWC
    input transposed, BN fused, depthwise conv, GAP + Squeeze + MatMul + Add head)."""
    tf2onnx = pytest.importorskip("tf2onnx")
    import tensorflow as tf

    from quantizeml.models.zoo import load_digits_data, train_digits_cnn
    model, float_acc = train_digits_cnn(epochs=5)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    x_train, _, x_test, y_test = load_digits_data()
    qmodel = quantize(onnx_model, samples=x_train)
    y, yq = run(onnx_model, x_test), run(qmodel, x_test)
    assert np.max(np.abs(yq - y)) <= ERROR_BOUND * (y.max() - y.min())
    float_acc = np.mean(np.argmax(y, -1) == y_test)
    assert np.mean(np.argmax(yq, -1) == y_test) >= float_acc - 0.02
