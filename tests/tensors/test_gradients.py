"""quantizeml.tensors.gradients: custom gradients that free tf_keras' scratch graphs."""
import gc

import numpy as np
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import quantize
from quantizeml.tensors.carrier import round_half_up
from quantizeml.tensors.gradients import custom_gradient, in_scratch_graph


def _graphs():
    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, tf.__internal__.FuncGraph)}


def _convs(depth):
    x = inputs = keras.Input((6, 6, 4))
    for _ in range(depth):
        x = keras.layers.Conv2D(4, 3, padding="same")(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, x)


def test_quantize_leaves_no_graph_alive():
    """Each quantized layer's call in its tf_keras scratch graph (functional construction) ran
    straight-through roundings and clips; tf.custom_gradient registered their gradients
    globally, which kept every scratch graph alive (15 graphs for these 3 blocks)."""
    model = _convs(3)
    samples = np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 4)).astype(np.float32)
    before = _graphs()
    qmodel = quantize(model, samples=samples, batch_size=8)
    alive = _graphs() - before
    assert not alive, f"{len(alive)} graphs outlive quantize()"
    # the quantized model still trains: its gradients reach every float weight
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(qmodel(samples) ** 2)
    grads = tape.gradient(loss, qmodel.trainable_weights)
    assert grads and all(g is not None for g in grads)
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_straight_through_gradient_kept_in_functions():
    """Outside scratch graphs the custom gradient holds: in eager mode and in a tf.function,
    even one whose graph name ends like a scratch graph's."""
    x = tf.constant([0.2, 1.7, -2.5, 3.49])

    def grad_of(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x) * tf.constant([1.0, 2.0, 3.0, 4.0])
        return tape.gradient(y, x).numpy()

    expected = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    np.testing.assert_array_equal(grad_of(round_half_up), expected)

    def lookalike_scratch_graph(t):
        assert not in_scratch_graph()
        return round_half_up(t)
    np.testing.assert_array_equal(grad_of(tf.function(lookalike_scratch_graph)), expected)
    # forward values: floor(x + 0.5)
    np.testing.assert_array_equal(round_half_up(x).numpy(), np.floor(x.numpy() + 0.5))


def test_scratch_graph_detected_during_functional_construction():
    seen = []

    @custom_gradient
    def identity(t):
        seen.append(in_scratch_graph())
        return tf.identity(t), lambda dy: dy

    class Probe(keras.layers.Layer):
        def call(self, inputs):
            return identity(inputs)

    layer = Probe()
    outputs = layer(keras.Input((3,)))  # functional construction: a scratch graph
    assert seen == [True]
    assert outputs.shape.as_list() == [None, 3]
    layer(tf.ones((1, 3)))  # eager call
    assert seen == [True, False]
