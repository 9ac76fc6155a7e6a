"""OnnxLayer: attributes, custom-domain nodes and their function definitions."""
import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto
from onnx import helper as onnx_helper

from quantizeml.onnx_support.layers import (
    DOMAIN,
    Dequantizer,
    InputQuantizer,
    OnnxLayer,
    QuantizedAdd,
    QuantizedConv2D,
    QuantizedDense1D,
    QuantizedDepthwise2D,
    make_model,
)
from tests.onnx_support.references import run_layer

# Every layer of onnx_support.layers: a new layer is covered by adding one line.
PARAMS = [
    ("conv", lambda: QuantizedConv2D(pool_type="max", activation=True, name="c")),
    ("conv_gap", lambda: QuantizedConv2D(pool_type="gap", name="c")),
    ("depthwise", lambda: QuantizedDepthwise2D(activation=True, name="d")),
    ("dense", lambda: QuantizedDense1D(flatten=True, activation=True, name="f")),
    ("add", lambda: QuantizedAdd("a")),
    ("input_quantizer", lambda: InputQuantizer(
        onnx_helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3]), name="i")),
    ("dequantizer", lambda: Dequantizer(name="q")),
]


@pytest.mark.parametrize("make", [p[1] for p in PARAMS], ids=[p[0] for p in PARAMS])
def test_function_bodies_use_standard_operators_only(make):
    layer = make()
    function = layer.make_function()
    assert function.domain == DOMAIN and function.name == layer.op_type
    assert list(function.input) == list(layer.INPUT_NAMES)
    assert all(node.domain == "" for node in function.node)
    assert {o.domain for o in function.opset_import} >= {""}
    node = layer.make_node([f"i{k}" for k in range(len(layer.INPUT_NAMES))], ["out"])
    assert node.domain == DOMAIN and node.op_type == layer.op_type and node.name == layer.name
    # Each attribute that the body refers to is declared by the function and set on the node.
    refs = {a.ref_attr_name for n in function.node for a in n.attribute if a.ref_attr_name}
    assert refs <= set(function.attribute) == {a.name for a in node.attribute}


class _Negate(OnnxLayer):
    """A minimal child: Y = -X (attribute 'note' unused by the body)."""

    def __init__(self, name="", **kwargs):
        super().__init__("Negate", name=name, **kwargs)

    def build_subgraph(self, op_type):
        return [onnx_helper.make_node("Neg", ["X"], ["Y"])]


def test_attributes_are_inferred_by_make_attribute():
    layer = _Negate(note="text", ints=[1, 2], ratio=0.5, count=3)
    types = {a.name: a.type for a in layer.attributes}
    assert types == {"note": AttributeProto.STRING, "ints": AttributeProto.INTS,
                     "ratio": AttributeProto.FLOAT, "count": AttributeProto.INT}
    assert layer.attribute("ints") == [1, 2]
    with pytest.raises(TypeError, match="Received: bad="):
        _Negate(bad=object())


def test_a_child_layer_runs_in_onnxruntime():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = run_layer(_Negate(name="neg"), [x], [], np.float32)
    np.testing.assert_array_equal(out, -x)


def test_abstract_methods_and_arguments():
    layer = OnnxLayer("Base")
    with pytest.raises(NotImplementedError):
        layer.build_subgraph("Base")
    with pytest.raises(NotImplementedError):
        layer.quantize([], None, False)
    with pytest.raises(ValueError, match="base_name"):
        OnnxLayer("")
    with pytest.raises(ValueError, match="inputs"):
        _Negate().make_node(["a", "b"], ["y"])


def test_make_model_declares_the_custom_domain():
    layer = _Negate(name="neg")
    model = make_model([layer.make_node(["x"], ["y"])], [layer.make_function()],
                       [onnx_helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                       [onnx_helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    assert {o.domain for o in model.opset_import} == {"", DOMAIN}
    onnx.checker.check_model(model, full_check=True)
