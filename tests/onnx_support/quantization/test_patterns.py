"""custom_pattern_scope and the pattern matching."""
import threading

import numpy as np
import pytest

from quantizeml.onnx_support.layers import QuantizedConv2D
from quantizeml.onnx_support.quantization import (
    DEFAULT_PATTERNS,
    custom_pattern_scope,
    get_patterns,
    quantize,
)
from quantizeml.onnx_support.quantization.patterns import conv_mapper
from tests.onnx_support.models import GraphMaker, run


def _conv_clip_net():
    """Conv + Clip(0, 50) (a ReLU in range) + Flatten + Gemm."""
    g = GraphMaker((2, 6, 6), seed=4)
    x = g.conv("input", 4, bn=False)
    lo, hi = g._init("clip_lo", np.array(0.0)), g._init("clip_hi", np.array(50.0))
    x = g.node("Clip", [x, lo, hi], g.shapes[x])
    return g.model(g.gemm(g.flatten(x), 3))


def conv_clip_mapper(nodes, graph):
    """Conv + Clip(0, max): a Conv + ReLU (the calibrated range stays below max)."""
    if graph.get_initializer(nodes[1].input[1]) != 0:
        raise ValueError("Clip expected min 0")
    conv = conv_mapper(nodes[:1], graph)
    layer = QuantizedConv2D(strides=conv.attribute("strides"), activation=True,
                            name=conv.name, pads=conv.pads)
    for key, value in conv.weights.items():
        layer.set_weight(key, value)
    return layer


def test_custom_pattern_is_used_in_its_scope_only():
    model = _conv_clip_net()
    x = np.random.default_rng(0).uniform(0, 1, (32, 2, 6, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"'clip\d+' \(Clip\)"):
        quantize(model, samples=x)
    with custom_pattern_scope({("Conv", "Clip"): conv_clip_mapper}):
        qmodel = quantize(model, samples=x)
    assert [n.op_type for n in qmodel.graph.node][1] == "QuantizedConv2DReLU"
    y, yq = run(model, x), run(qmodel, x)
    assert np.max(np.abs(y - yq)) <= 0.05 * (y.max() - y.min())
    with pytest.raises(ValueError, match="Clip"):
        quantize(model, samples=x)


def test_scope_is_restored_after_an_exception_and_nests():
    patterns = {("Conv", "Clip"): conv_clip_mapper}
    with pytest.raises(RuntimeError):
        with custom_pattern_scope(patterns):
            raise RuntimeError("boom")
    assert ("Conv", "Clip") not in dict(get_patterns())
    inner = {("Conv", "Clip"): conv_mapper}
    with custom_pattern_scope(patterns):
        with custom_pattern_scope(inner):
            assert dict(get_patterns())[("Conv", "Clip")] is conv_mapper
        assert dict(get_patterns())[("Conv", "Clip")] is conv_clip_mapper
    assert dict(get_patterns()) == DEFAULT_PATTERNS


def test_custom_patterns_take_priority_over_defaults():
    calls = []

    def recording_mapper(nodes, graph):
        calls.append([n.op_type for n in nodes])
        return conv_mapper(nodes, graph)

    g = GraphMaker((2, 6, 6))
    model = g.model(g.relu(g.conv("input", 3, bn=False)))
    with custom_pattern_scope({("Conv", "Relu"): recording_mapper}):
        assert get_patterns()[0][0] == ("Conv", "Relu")
        quantize(model, num_samples=8)
    assert calls == [["Conv", "Relu"]]


def test_scope_is_thread_local():
    seen = []
    with custom_pattern_scope({("Conv", "Clip"): conv_clip_mapper}):
        thread = threading.Thread(
            target=lambda: seen.append(("Conv", "Clip") in dict(get_patterns())))
        thread.start()
        thread.join()
    assert seen == [False]


@pytest.mark.parametrize("patterns,error", [
    ([("Conv",)], TypeError),
    ({"Conv": conv_mapper}, ValueError),
    ({(): conv_mapper}, ValueError),
    ({("Conv", 3): conv_mapper}, ValueError),
    ({("Conv",): "mapper"}, TypeError),
], ids=["not_dict", "str_key", "empty_key", "int_op", "not_callable"])
def test_invalid_patterns_are_rejected(patterns, error):
    with pytest.raises(error, match="Received"):
        with custom_pattern_scope(patterns):
            pass


def test_mapper_must_return_an_onnx_layer():
    g = GraphMaker((2, 6, 6))
    model = g.model(g.relu(g.conv("input", 3, bn=False)))
    with custom_pattern_scope({("Conv", "Relu"): lambda nodes, graph: "layer"}):
        with pytest.raises(TypeError, match="OnnxLayer"):
            quantize(model, num_samples=8)


def _nhwc_net(head):
    """NHWC input -> Transpose -> Conv (auto_pad SAME_UPPER, stride 2) + Relu -> one of the
    flatten heads -> MatMul + Add, as TF converters write them."""
    g = GraphMaker((6, 6, 3), seed=6)
    x = g.node("Transpose", ["input"], (3, 6, 6), perm=[0, 3, 1, 2])
    weights = g._init("conv_W", g.rng.normal(0, 0.3, (4, 3, 3, 3)))
    x = g.node("Conv", [x, weights], (4, 3, 3), kernel_shape=[3, 3], strides=[2, 2],
               auto_pad="SAME_UPPER")
    x = g.relu(x)
    if head == "transpose_reshape":
        x = g.node("Transpose", [x], (3, 3, 4), perm=[0, 2, 3, 1])
        x = g.node("Reshape", [x, g._init_int("shape", [-1, 36])], (36,))
    elif head == "reshape":
        x = g.node("Reshape", [x, g._init_int("shape", [0, -1])], (36,))
    else:  # squeeze
        x = g.node("Squeeze", [g.gap(x), g._init_int("axes", [2, 3])], (4,))
    return g.model(g.matmul(x, 5))


@pytest.mark.parametrize("head", ["transpose_reshape", "reshape", "squeeze"])
def test_converter_style_layouts_and_heads(head):
    model = _nhwc_net(head)
    x = np.random.default_rng(0).uniform(0, 1, (64, 6, 6, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x)
    ops = [n.op_type for n in qmodel.graph.node]
    conv = "QuantizedConv2DGlobalAvgPoolReLU" if head == "squeeze" else "QuantizedConv2DReLU"
    assert ops == ["Transpose", "InputQuantizer", conv, "QuantizedDense1DFlatten", "Dequantizer"]
    y, yq = run(model, x), run(qmodel, x)
    assert np.max(np.abs(yq - y)) <= 0.05 * (y.max() - y.min())
