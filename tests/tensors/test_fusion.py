"""Fused kernels (quantizeml.recipes.fast_paths): XLA-compiled chains of exact elementwise ops in
graphs, bit-identical to the op-by-op computation, absent from eager calls and SavedModels."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import eager_layer_calls
from quantizeml.models import QuantizationParams, quantize
from quantizeml.recipes.fast_paths import fused, fuses, xla_fusion
from tests.utils import train_step_gradients


def must_compile_functions(graph_def):
    """Names of the functions of a GraphDef marked for XLA compilation."""
    return [f.signature.name for f in graph_def.library.function
            if f.attr["_XlaMustCompile"].b]


def test_fused_compiles_in_graphs_only():
    def chain(x, m):
        return tf.floor(tf.cast(x, tf.float64) * m + 0.5)

    x = tf.constant(np.arange(-8, 8, dtype=np.float32))
    m = tf.constant(0.25, tf.float64)
    assert not fuses()  # eager
    eager = fused(chain, x, m)

    traced = tf.function(lambda x: fused(chain, x, m)).get_concrete_function(x)
    assert must_compile_functions(traced.graph.as_graph_def())
    np.testing.assert_array_equal(traced(x).numpy(), eager.numpy())
    with xla_fusion(False):
        plain = tf.function(lambda x: fused(chain, x, m)).get_concrete_function(x)
    assert not must_compile_functions(plain.graph.as_graph_def())


@pytest.fixture(scope="module")
def qmodels():
    """Quantized twins of a small CNN with a skip connection (ReLU-fused, FixedPoint and
    input requantizations), per-tensor 8-bit and per-axis 4-bit."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.ReLU(6.0)(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(8, 1)(y)
    x = keras.layers.Add()([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)
    model = keras.Model(inp, x)
    samples = np.random.RandomState(0).uniform(-2, 2, (64, 8, 8, 3)).astype(np.float32)
    q8 = quantize(model, samples=samples, num_samples=64)
    q4 = quantize(model, qparams=QuantizationParams(activation_bits=4, weight_bits=4,
                                                    per_tensor_activations=False),
                  samples=samples, num_samples=64)
    return q8, q4, samples


@pytest.mark.parametrize("which", [0, 1], ids=["8bit", "4bit-per-axis"])
def test_fused_graphs_bit_identical_to_op_by_op(qmodels, which):
    qmodel, x = qmodels[which], qmodels[2][:24] * 3  # some saturation
    with eager_layer_calls():
        expected = qmodel(x).numpy()
    graph = tf.function(lambda t: qmodel(t))
    assert must_compile_functions(graph.get_concrete_function(x).graph.as_graph_def())
    np.testing.assert_array_equal(graph(x).numpy(), expected)
    np.testing.assert_array_equal(qmodel.predict(x, batch_size=7, verbose=0), expected)
    with xla_fusion(False):
        np.testing.assert_array_equal(tf.function(lambda t: qmodel(t))(x).numpy(), expected)


def test_fused_gradients_equal_unfused(qmodels):
    """Gradients flow through fused kernels (a graph traced without a tape, differentiated
    from outside) as through the plain ops."""
    qmodel, x = qmodels[0], qmodels[2][:16]
    x = tf.constant(x)

    def gradients():
        forward = tf.function(lambda t: qmodel(t, training=True))
        graph = forward.get_concrete_function(x).graph.as_graph_def()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(forward(x) ** 2)
        return graph, [g.numpy() for g in tape.gradient(loss, qmodel.trainable_variables)]

    graph, fused_grads = gradients()
    assert must_compile_functions(graph)
    with xla_fusion(False):
        graph, plain_grads = gradients()
    assert not must_compile_functions(graph)
    assert len(fused_grads) == len(qmodel.trainable_variables) >= 8
    assert any(np.abs(g).max() > 0 for g in fused_grads)
    for a, b in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1], ids=["8bit", "4bit-per-axis"])
def test_train_step_gradients_equal_op_by_op(qmodels, which):
    """A train step's requantizations differentiate in one expression (ste_requantized): the
    gradients equal those of the op-by-op chain (straight-through rounding, clip mask) of an
    eager call, saturated values included."""
    qmodel, x = qmodels[which], tf.constant(qmodels[2][:16] * 3)
    (eager_loss, eager_grads), (graph_loss, graph_grads), _ = train_step_gradients(qmodel, x)
    assert float(graph_loss) == float(eager_loss)
    assert all(np.abs(g.numpy()).max() > 0 for g in eager_grads)
    for a, b in zip(graph_grads, eager_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_train_step_fuses_custom_gradients(qmodels):
    """Under a gradient tape (a fit train step) the forward and gradient functions of the
    custom gradients (requantizations, bias additions) are compiled; the gradients equal those
    of the plain step."""
    qmodel, x = qmodels[1], tf.constant(qmodels[2][:8] * 3)

    def step(t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(qmodel(t, training=True) ** 2)
        return tape.gradient(loss, qmodel.trainable_variables)

    fused_step = tf.function(step)
    compiled = must_compile_functions(fused_step.get_concrete_function(x).graph.as_graph_def())
    assert compiled
    with xla_fusion(False):
        plain_step = tf.function(step)
        assert not must_compile_functions(
            plain_step.get_concrete_function(x).graph.as_graph_def())
        plain = [g.numpy() for g in plain_step(x)]
    for a, b in zip(fused_step(x), plain):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_saved_model_has_no_xla_functions(qmodels, tmp_path):
    qmodel, x = qmodels[0], qmodels[2][:4]
    path = str(tmp_path / "saved")
    qmodel.save(path)
    loaded = tf.saved_model.load(path)
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(path + "/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    assert not must_compile_functions(proto.meta_graphs[0].graph_def)
    with eager_layer_calls():
        expected = qmodel(x).numpy()
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)


@pytest.mark.parametrize("features", [8, 64])
def test_fused_bias_buffer_clips(features):
    """Fused graphs clip the buffer as the op-by-op calls do: accumulators past a 16-bit
    buffer (clipped) and, with 64 features, run-time bounds far looser than the sums."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((features,))
    x = keras.layers.Dense(4, name="wide")(inputs)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    kernel = np.zeros((features, 4), np.float32)
    kernel[:8] = 1.0
    kernel[8:] = np.random.RandomState(0).uniform(-1, 1, (features - 8, 4))
    model.get_layer("wide").set_weights([kernel, np.full(4, 0.5, np.float32)])
    rng = np.random.RandomState(1)
    calib = rng.uniform(0, 1e-3, (32, features)).astype(np.float32)
    calib[:, 0] = rng.uniform(0, 1, 32)
    qmodel = quantize(model, qparams=QuantizationParams(buffer_bits=16), samples=calib)
    x = np.concatenate([calib[:8], np.full((4, features), 1e6, np.float32),
                        -np.full((4, features), 1e6, np.float32)])
    x[8:, 8:] = 0.0  # sums of the all-ones columns only: past the buffer, bound loose
    with eager_layer_calls():
        expected = keras.Model(qmodel.input, qmodel.get_layer("wide").output)(x)
        expected_out = qmodel(x).numpy()
    wide = tf.function(lambda t: keras.Model(qmodel.input,
                                             qmodel.get_layer("wide").output)(t))
    got = wide(tf.constant(x))
    assert must_compile_functions(wide.get_concrete_function(tf.constant(x)).graph
                                  .as_graph_def())
    np.testing.assert_array_equal(got.values.numpy(), expected.values.numpy())
    assert np.abs(expected.values.numpy()).max() >= 2**15 - 1  # clipped to the buffer
    np.testing.assert_array_equal(qmodel.predict(x, verbose=0), expected_out)
