"""Train steps of the reducing layers: in graphs their requantizations and bias additions run
fused custom gradients (quantizeml.recipes.fast_paths); the gradients must equal those of the
op-by-op chain of an eager call, with saturated outputs and a saturated buffer."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import (QuantizedConv2D, QuantizedConv2DTranspose, QuantizedDense,
                               QuantizedDepthwiseConv2D, QuantizedSeparableConv2D)
from quantizeml.layers.base import saturation
from quantizeml.layers.depthwise import QuantizedDepthwiseConv2DTranspose
from tests.layers.references import random_inputs, single_layer_model
from tests.tensors.test_fusion import must_compile_functions
from tests.utils import train_step_gradients

BIAS = {"bias_initializer": "random_normal"}
LAYERS = {
    "conv": lambda qc: QuantizedConv2D(6, 3, padding="same", quant_config=qc, **BIAS),
    "depthwise": lambda qc: QuantizedDepthwiseConv2D(3, padding="same", quant_config=qc,
                                                     **BIAS),
    "separable": lambda qc: QuantizedSeparableConv2D(6, 3, padding="same", quant_config=qc,
                                                     **BIAS),
    "conv_transpose": lambda qc: QuantizedConv2DTranspose(6, 3, strides=2, padding="same",
                                                          quant_config=qc, **BIAS),
    "depthwise_transpose": lambda qc: QuantizedDepthwiseConv2DTranspose(
        3, strides=2, padding="same", quant_config=qc, **BIAS),
    "dense": lambda qc: QuantizedDense(6, quant_config=qc, **BIAS),
}
SHAPE = (4, 6, 6, 4)


@pytest.mark.parametrize("saturated_buffer", [False, True], ids=["buffer32", "saturated-buffer"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_train_step_gradients_equal_op_by_op(name, saturated_buffer):
    keras.utils.set_random_seed(3)
    # a buffer that clips some of the sums (separable: its depthwise sums are wider)
    buffer_bitwidth = (24 if name == "separable" else 16) if saturated_buffer else 32
    layer = LAYERS[name]({"output_quantizer": {"bitwidth": 8},
                          "buffer_bitwidth": buffer_bitwidth})
    shape = SHAPE[1:] if name != "dense" else SHAPE[2:]  # Dense: rank-3 inputs
    model = single_layer_model(layer, shape, per_axis=True, out_range=2.0)
    x = tf.constant(random_inputs((SHAPE[0], *shape)))

    (eager_loss, eager_grads), (graph_loss, graph_grads), step = train_step_gradients(model, x)
    # the cases the test is for: saturated outputs (32-bit buffer), a partly saturated buffer
    if buffer_bitwidth == 32:
        assert saturation(layer.out_quantizer)["output"] > 0
    else:
        assert 0 < saturation(layer)["buffer"] < 1
    assert must_compile_functions(step.get_concrete_function(x).graph.as_graph_def())
    assert float(graph_loss) == float(eager_loss)
    assert len(eager_grads) == 1 + len(model.trainable_variables) >= 3
    nonzero = [np.abs(g.numpy()).max() > 0 for g in eager_grads]
    # (a saturated buffer may cut the gradient of a whole variable)
    assert all(nonzero) if buffer_bitwidth == 32 else sum(nonzero) >= 2
    for a, b in zip(graph_grads, eager_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
