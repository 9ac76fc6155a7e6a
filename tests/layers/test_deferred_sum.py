"""Inference graphs of the reducing layers: the accumulator plus bias is deferred, as float32
parts, to the requantization that follows, which adds them in its own fused kernel
(quantizeml.recipes.fast_paths.Deferred). The outputs must equal those of the op-by-op eager calls
bit for bit, buffer clips included, and the float64 accumulator must not be computed."""
import numpy as np
import pytest
import tensorflow as tf

from quantizeml.layers import QuantizedDense, eager_layer_calls
from quantizeml.layers.base import saturation
from quantizeml.recipes import fast_paths as fusion
from tests.layers.references import random_inputs, single_layer_model
from tests.layers.test_train_step import BIAS, LAYERS, SHAPE
from tests.tensors.test_fusion import must_compile_functions


def graph_and_eager_outputs(model, x):
    """(traced outputs, op-by-op eager outputs, the traced graph)."""
    with eager_layer_calls():
        expected = model(x).numpy()
    fn = tf.function(lambda t: model(t))
    graph = fn.get_concrete_function(x).graph
    return fn(x).numpy(), expected, graph


def assert_parts_read(graph):
    """The graph deferred an accumulator, and nothing reads it (the requantization read its
    parts): the float64 tensor is pruned from the run."""
    deferred = fusion._DEFERRED.get(graph, {})
    assert deferred
    assert all(ref.deref().consumers() == [] for ref in deferred)
    assert must_compile_functions(graph.as_graph_def())


@pytest.mark.parametrize("saturated_buffer", [False, True], ids=["buffer32", "saturated-buffer"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_requantization_of_the_parts_equals_op_by_op(name, saturated_buffer):
    # a buffer that clips some of the sums (separable: its depthwise sums are wider)
    buffer_bitwidth = (24 if name == "separable" else 16) if saturated_buffer else 32
    layer = LAYERS[name]({"output_quantizer": {"bitwidth": 8},
                          "buffer_bitwidth": buffer_bitwidth})
    shape = SHAPE[1:] if name != "dense" else SHAPE[2:]
    model = single_layer_model(layer, shape, per_axis=True, out_range=2.0)
    x = tf.constant(random_inputs((SHAPE[0], *shape)))

    got, expected, graph = graph_and_eager_outputs(model, x)
    # the cases the test is for: saturated outputs, a partly saturated buffer (the clipped
    # branch of the deferred sum)
    if buffer_bitwidth == 32:
        assert saturation(layer.out_quantizer)["output"] > 0
    else:
        assert 0 < saturation(layer)["buffer"] < 1
    np.testing.assert_array_equal(got, expected)
    assert_parts_read(graph)


def test_float64_sums_split_in_two_parts():
    """16-bit weights: sums past float32 (the float64 reduction, split into hi and lo float32
    parts), requantized exactly."""
    layer = QuantizedDense(6, quant_config={"weight_quantizer": {"bitwidth": 16},
                                            "output_quantizer": {"bitwidth": 8}}, **BIAS)
    shape = (6, 32)
    model = single_layer_model(layer, shape, out_range=8.0)
    x = tf.constant(random_inputs((SHAPE[0], *shape), scale=8.0))

    got, expected, graph = graph_and_eager_outputs(model, x)
    # max|x| * L1(w) > 2^24: the run-time bound sends the reduction to float64
    x_int = model.layers[1](x).values.numpy()
    w_int = layer.weight_quantizer(layer.kernel).fp.values.numpy()
    assert np.abs(x_int).max() * np.abs(w_int).sum(0).max() > 2**24
    assert np.abs(x_int @ w_int).max() > 2**24
    np.testing.assert_array_equal(got, expected)
    assert np.unique(expected).size > 10
    assert_parts_read(graph)
