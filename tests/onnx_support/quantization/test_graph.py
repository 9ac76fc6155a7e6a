"""Float-graph rewrites: BatchNormalization folding, constants, identities."""
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as onnx_helper

from quantizeml.onnx_support.quantization import OnnxGraph, fold_batchnorms
from quantizeml.onnx_support.quantization.graph import (
    constants_to_initializers,
    prepare,
    remove_identities,
)
from tests.onnx_support.models import GraphMaker, conv_net, run


def _x(model, n=4, seed=0):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).uniform(-1, 1, [n] + dims).astype(np.float32)


def test_fold_batchnorms_keeps_outputs_and_removes_bn():
    model = conv_net()
    folded = fold_batchnorms(model)
    assert "BatchNormalization" not in [n.op_type for n in folded.graph.node]
    assert len(folded.graph.node) == len(model.graph.node) - 4
    onnx.checker.check_model(folded, full_check=True)
    x = _x(model)
    np.testing.assert_allclose(run(folded, x), run(model, x), rtol=1e-4, atol=1e-4)


def test_fold_batchnorms_into_gemm():
    g = GraphMaker((6,), seed=3)
    y = g.gemm("input", 4, trans_b=True)
    params = [g.rng.uniform(0.5, 1.5, 4), g.rng.normal(0, 0.2, 4), g.rng.normal(0, 0.2, 4),
              g.rng.uniform(0.5, 2.0, 4)]
    names = [g._init(f"bn{i}", p) for i, p in enumerate(params)]
    model = g.model(g.node("BatchNormalization", [y] + names, (4,)))
    folded = fold_batchnorms(model)
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]
    x = _x(model)
    np.testing.assert_allclose(run(folded, x), run(model, x), rtol=1e-4, atol=1e-5)


def test_nothing_to_do_returns_the_same_model():
    g = GraphMaker((3, 4, 4))
    model = g.model(g.relu(g.conv("input", 2, bn=False)))
    assert fold_batchnorms(model) is model
    assert prepare(model) is model


def test_batchnorm_on_an_input_is_kept():
    g = GraphMaker((2, 4, 4))
    names = [g._init(f"bn{i}", np.ones(2)) for i in range(4)]
    model = g.model(g.node("BatchNormalization", ["input"] + names, (2, 4, 4)))
    assert fold_batchnorms(model) is model


def test_constants_and_identities_are_removed():
    g = GraphMaker((3, 4, 4))
    x = g.relu(g.conv("input", 2, bn=False))
    g.nodes.append(onnx_helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
        np.array([0, -1], np.int64))))
    ident = g.node("Identity", [x], (2, 4, 4))
    flat = g.node("Reshape", [ident, "shape"], (32,))
    out = g.node("Identity", [flat], (32,))
    model = g.model(out)
    new = remove_identities(constants_to_initializers(model))
    assert [n.op_type for n in new.graph.node] == ["Conv", "Relu", "Reshape"]
    assert new.graph.node[-1].output[0] == out
    onnx.checker.check_model(new, full_check=True)
    x_in = _x(model)
    np.testing.assert_array_equal(run(new, x_in), run(model, x_in))


def test_onnx_graph_view():
    model = conv_net()
    graph = OnnxGraph(model)
    conv = graph.nodes[0]
    assert graph.get_initializer(conv.input[1]).shape == (8, 3, 3, 3)
    assert graph.get_initializer("input") is None
    assert graph.get_shape(conv.output[0])[1:] == (8, 16, 16)
    assert [n.op_type for n in graph.consumers(conv.output[0])] == ["BatchNormalization"]
    assert graph.get_attribute(conv, "strides") == [1, 1]
    assert graph.get_attribute(conv, "missing", 7) == 7
    assert graph.is_output(model.graph.output[0].name)
    assert [vi.name for vi in graph.inputs] == ["input"]
    assert graph.get_shape("unknown") is None
    assert TensorProto.FLOAT == graph.inputs[0].type.tensor_type.elem_type
