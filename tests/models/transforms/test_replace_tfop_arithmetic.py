"""replace_tfop_arithmetic: TFOpLambda arithmetic and activations become Keras layers."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import AddPositionEmbs, ExtractToken, Slicing
from quantizeml.models.transforms import replace_tfop_arithmetic

L = keras.layers
C = np.array([0.5, -2.0, 3.0], dtype=np.float32)  # one value per channel

# name -> (function of two (None, 4, 4, 3) tensors, expected layer class, Rescaling
# (scale, offset) or None)
CASES = {
    "add_tensors": (lambda x, y: x + y, L.Add, None),
    "math_add_tensors": (lambda x, y: tf.math.add(x, y), L.Add, None),
    "subtract_tensors": (lambda x, y: x - y, L.Subtract, None),
    "subtract_tensors_reversed": (lambda x, y: tf.math.subtract(y, x), L.Subtract, None),
    "multiply_tensors": (lambda x, y: x * y, L.Multiply, None),
    "multiply_broadcast": (lambda x, y: x * L.GlobalAveragePooling2D(keepdims=True)(y),
                           L.Multiply, None),
    "add_constant": (lambda x, y: x + 3, L.Rescaling, (1.0, 3.0)),
    "radd_constant": (lambda x, y: 3.0 + x, L.Rescaling, (1.0, 3.0)),
    "math_add_constant": (lambda x, y: tf.math.add(x, 0.25), L.Rescaling, (1.0, 0.25)),
    "subtract_constant": (lambda x, y: x - 1.5, L.Rescaling, (1.0, -1.5)),
    "rsubtract_constant": (lambda x, y: 1.5 - x, L.Rescaling, (-1.0, 1.5)),
    "multiply_constant": (lambda x, y: x * (1 / 6), L.Rescaling, (1 / 6, 0.0)),
    "rmultiply_constant": (lambda x, y: 2 * x, L.Rescaling, (2.0, 0.0)),
    "divide_constant": (lambda x, y: x / 6.0, L.Rescaling, (1 / 6, 0.0)),
    "negative": (lambda x, y: -x, L.Rescaling, (-1.0, 0.0)),
    "multiply_channels": (lambda x, y: x * C, L.Rescaling, (C.tolist(), 0.0)),
    "add_channels_tensor": (lambda x, y: x + tf.constant(C.reshape(1, 1, 1, 3)), L.Rescaling,
                            (1.0, C.tolist())),
    "divide_channels": (lambda x, y: x / C, L.Rescaling, ((1 / C.astype(np.float64)).tolist(),
                                                          0.0)),
    "relu": (lambda x, y: tf.nn.relu(x), L.ReLU, None),
    "relu6": (lambda x, y: tf.nn.relu6(x), L.ReLU, None),
    "abs": (lambda x, y: tf.abs(x), L.Activation, None),
    "leaky_relu": (lambda x, y: tf.nn.leaky_relu(x, 0.1), L.ReLU, None),
    "clip_zero_to_six": (lambda x, y: tf.clip_by_value(x, 0.0, 6.0), L.ReLU, None),
    "sigmoid": (lambda x, y: tf.math.sigmoid(x), L.Activation, None),
    "tanh": (lambda x, y: tf.math.tanh(x), L.Activation, None),
    "silu": (lambda x, y: tf.nn.silu(x), L.Activation, None),
    "gelu": (lambda x, y: tf.nn.gelu(x), L.Activation, None),
    "elu": (lambda x, y: tf.nn.elu(x), L.Activation, None),
    "softplus": (lambda x, y: tf.math.softplus(x), L.Activation, None),
    "exp": (lambda x, y: tf.math.exp(x), L.Activation, None),
    "softmax": (lambda x, y: tf.nn.softmax(x), L.Softmax, None),
    "softmax_axis": (lambda x, y: tf.nn.softmax(x, axis=1), L.Softmax, None),
}


def _build(case):
    a, b = keras.Input((4, 4, 3), name="a"), keras.Input((4, 4, 3), name="b")
    x, y = L.Conv2D(3, 1, name="conv_a")(a), L.Conv2D(3, 1, name="conv_b")(b)
    out = CASES[case][0](x, y)
    return keras.Model([a, b], L.Conv2D(2, 1, name="head")(out))


def _is_tfop(layer):
    return type(layer).__name__ == "TFOpLambda"


@pytest.mark.parametrize("case", list(CASES))
def test_replace(checks, case):
    model = _build(case)
    before = checks.snapshot(model)
    tfop = [layer for layer in model.layers if _is_tfop(layer)]
    assert len(tfop) == 1
    new = replace_tfop_arithmetic(model)
    assert not any(_is_tfop(layer) for layer in new.layers)
    replaced = new.get_layer(tfop[0].name)  # the new layer takes the TFOpLambda's name
    expected, rescaling = CASES[case][1:]
    assert type(replaced) is expected
    if rescaling is not None:
        np.testing.assert_allclose(replaced.scale, rescaling[0], rtol=1e-7)
        np.testing.assert_allclose(replaced.offset, rescaling[1], rtol=1e-7)
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)
    checks.unchanged(model, before, new)
    # the new model round trips through its config (plain JSON values)
    keras.Model.from_config(new.get_config())


def test_operand_order_kept(checks):
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    model = keras.Model([a, b], tf.math.subtract(b, L.Dense(4)(a)))
    new = replace_tfop_arithmetic(model)
    sub = [layer for layer in new.layers if type(layer) is L.Subtract][0]
    assert [t.node.layer.name for t in sub.input] == ["b", new.layers[2].name]
    checks.equivalent(model, new, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["rdivide", "divide_tensors", "channels_other_axis",
                                  "integer", "untouched", "clip_symmetric"])
def test_unchanged(case):
    x = keras.Input((4, 4, 3))
    if case == "rdivide":
        y = 1.0 / x
    elif case == "divide_tensors":
        y = x / L.ReLU()(x)
    elif case == "clip_symmetric":
        y = tf.clip_by_value(x, -1.0, 1.0)
    elif case == "channels_other_axis":
        y = x * np.ones((1, 4, 1, 1), np.float32)
    elif case == "integer":
        i = keras.Input((4,), dtype="int32")
        model = keras.Model(i, i * 2)
        assert replace_tfop_arithmetic(model) is model
        return
    else:
        y = L.ReLU()(L.Conv2D(3, 1)(x))
    model = keras.Model(x, y)
    assert replace_tfop_arithmetic(model) is model


def test_shared_input_and_outputs(checks):
    """A tensor read by several ops and the ops' results as model outputs."""
    x = keras.Input((6,), name="x")
    h = L.Dense(6, name="dense")(x)
    model = keras.Model(x, [h * 2.0, h + h, tf.math.sigmoid(h), h])
    new = replace_tfop_arithmetic(model)
    assert [type(layer) for layer in new.layers[2:5]] == [L.Rescaling, L.Add, L.Activation]
    checks.equivalent(model, new, rtol=0, atol=0)


REDUCTIONS = {
    "mean_hw": (lambda x: tf.reduce_mean(x, axis=[1, 2]), (5, 5, 3),
                keras.layers.GlobalAveragePooling2D),
    "mean_hw_keepdims": (lambda x: tf.reduce_mean(x, axis=(1, 2), keepdims=True), (5, 5, 3),
                         keras.layers.GlobalAveragePooling2D),
    "max_hw_negative_axes": (lambda x: tf.reduce_max(x, axis=[-3, -2]), (5, 5, 3),
                             keras.layers.GlobalMaxPooling2D),
    "mean_time": (lambda x: tf.math.reduce_mean(x, axis=1), (7, 3),
                  keras.layers.GlobalAveragePooling1D),
    "max_time_keepdims": (lambda x: tf.reduce_max(x, 1, keepdims=True), (7, 3),
                          keras.layers.GlobalMaxPooling1D),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_spatial_reductions_become_global_pooling(checks, name):
    op, shape, expected = REDUCTIONS[name]
    inputs = keras.Input(shape)
    x = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(op(x)))
    new = replace_tfop_arithmetic(model)
    assert checks.count(new, expected) == 1
    assert not any(type(layer).__name__ == "TFOpLambda" for layer in new.layers)
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)


def test_other_reductions_stay_and_concat_becomes_a_layer(checks):
    inputs = keras.Input((4, 4, 3))
    a = keras.layers.Conv2D(2, 1)(inputs)
    b = keras.layers.Conv2D(3, 1)(inputs)
    x = tf.concat([a, b], axis=-1)
    y = tf.reduce_mean(x, axis=[1, 3], keepdims=True)   # a row and the channels: no layer
    z = tf.reduce_min(x, axis=-1)
    model = keras.Model(inputs, [x, y, z])
    new = replace_tfop_arithmetic(model)
    assert checks.count(new, keras.layers.Concatenate) == 1
    assert sum(type(layer).__name__ == "TFOpLambda" for layer in new.layers) == 2
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)


# name -> (reduction over the last axis, input shape, the layer classes replacing it)
CHANNEL_REDUCTIONS = {
    "mean_keepdims": (lambda x: tf.reduce_mean(x, axis=-1, keepdims=True), (4, 4, 3),
                      [keras.layers.Dense]),
    "mean": (lambda x: tf.math.reduce_mean(x, axis=3), (4, 4, 3),
             [keras.layers.Dense, keras.layers.Reshape]),
    "sum_keepdims": (lambda x: tf.reduce_sum(x, axis=-1, keepdims=True), (4, 4, 3),
                     [keras.layers.Dense]),
    "max_keepdims": (lambda x: tf.reduce_max(x, axis=-1, keepdims=True), (4, 4, 3),
                     [keras.layers.Reshape, keras.layers.MaxPooling2D, keras.layers.Reshape]),
    "max_time": (lambda x: tf.reduce_max(x, axis=2), (7, 3),
                 [keras.layers.Reshape, keras.layers.MaxPooling2D, keras.layers.Reshape,
                  keras.layers.Reshape]),
}


@pytest.mark.parametrize("name", list(CHANNEL_REDUCTIONS))
def test_channel_reductions_become_layers(checks, name):
    """CBAM's channel pooling: a mean / sum over the last axis becomes a Dense(1) of kernel
    1 / C or 1, a maximum a MaxPooling2D((1, C)) between reshapes; outputs equal."""
    op, shape, expected = CHANNEL_REDUCTIONS[name]
    inputs = keras.Input(shape)
    x = keras.layers.Dense(5)(inputs)
    y = op(x)
    model = keras.Model(inputs, keras.layers.Flatten()(y) if len(y.shape) > 2 else y)
    snapshot = checks.snapshot(model)
    new = replace_tfop_arithmetic(model)
    added = [type(layer) for layer in new.layers[2:2 + len(expected)]]
    assert added == expected
    assert not any(type(layer).__name__ == "TFOpLambda" for layer in new.layers)
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)
    checks.unchanged(model, snapshot, new)


def test_square_becomes_multiply(checks):
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(3, 1)(inputs)
    model = keras.Model(inputs, tf.math.square(x) + tf.square(x))
    new = replace_tfop_arithmetic(model)
    assert checks.count(new, keras.layers.Multiply) == 2
    assert all(len(layer.input) == 2 and layer.input[0] is layer.input[1]
               for layer in new.layers if type(layer) is keras.layers.Multiply)
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)


# name -> (slice of a (None, 4, 4, 3) tensor, expected Slicing (begin, end, strides))
SLICES = {
    "channels": (lambda x: x[..., 1:3], ([0, 0, 1], [4, 4, 3], [1, 1, 1])),
    "spatial_steps": (lambda x: x[:, 1:4:2, -3:, :], ([1, 1, 0], [4, 4, 3], [2, 1, 1])),
    "negative_stop": (lambda x: x[:, :, :-1], ([0, 0, 0], [4, 3, 3], [1, 1, 1])),
    "ellipsis_middle": (lambda x: x[:, 2:, ..., ::2], ([2, 0, 0], [4, 4, 3], [1, 1, 2])),
}


@pytest.mark.parametrize("case", list(SLICES))
def test_slicing_becomes_a_layer(checks, case):
    x = keras.Input((4, 4, 3))
    model = keras.Model(x, L.Conv2D(2, 1)(SLICES[case][0](L.Conv2D(3, 1)(x))))
    before = checks.snapshot(model)
    new = replace_tfop_arithmetic(model)
    slices = [layer for layer in new.layers if type(layer) is Slicing]
    assert len(slices) == 1
    assert (slices[0].begin, slices[0].end, slices[0].strides) == SLICES[case][1]
    assert not any(type(layer).__name__ == "SlicingOpLambda" for layer in new.layers)
    checks.equivalent(model, new, rtol=0, atol=0)
    checks.unchanged(model, before, new)
    keras.Model.from_config(new.get_config())


@pytest.mark.parametrize("case", ["embedding_plus", "constant_first", "minus"])
def test_constant_of_the_tokens_shape_becomes_position_embedding(checks, case):
    """``x + Embedding(tokens, dim)(tf.range(tokens))`` (Keras examples' position encoder: a
    constant in the graph) becomes an AddPositionEmbs holding it."""
    x = keras.Input((5, 6))
    y = L.Dense(6)(x)
    table = L.Embedding(5, 6, embeddings_initializer="random_normal")
    positions = table(tf.range(5))  # an eager tensor: a constant of the TFOpLambda
    y = {"embedding_plus": lambda: y + positions, "constant_first": lambda: positions + y,
         "minus": lambda: y - positions[None]}[case]()
    model = keras.Model(x, L.Dense(2)(y))
    new = replace_tfop_arithmetic(model)
    embeds = [layer for layer in new.layers if type(layer) is AddPositionEmbs]
    assert len(embeds) == 1
    sign = -1.0 if case == "minus" else 1.0
    np.testing.assert_array_equal(embeds[0].get_weights()[0][0], sign * positions.numpy())
    checks.equivalent(model, new, rtol=0, atol=0)
    # the constant is a weight, not in the config: the model config round-trips
    keras.Model.from_config(new.get_config(), custom_objects={"AddPositionEmbs": AddPositionEmbs})


def test_constant_broadcasting_tokens_stays():
    x = keras.Input((5, 6))
    model = keras.Model(x, x + np.ones((5, 1), np.float32))
    assert replace_tfop_arithmetic(model) is model


@pytest.mark.parametrize("transpose", [(False, False), (False, True), (True, False),
                                       (True, True)], ids=["ab", "abt", "atb", "atbt"])
def test_matmul_becomes_dot(checks, transpose):
    """``tf.linalg.matmul(a, b, transpose_a, transpose_b)`` of (batch, 6, 6) tensors -> Dot
    with the axes those transpositions contract."""
    x = keras.Input((6, 6))
    a, b = L.Dense(6)(x), L.Dense(6)(x)
    y = tf.linalg.matmul(a, b, transpose_a=transpose[0], transpose_b=transpose[1])
    model = keras.Model(x, L.Dense(2)(y))
    new = replace_tfop_arithmetic(model)
    dots = [layer for layer in new.layers if type(layer) is L.Dot]
    assert len(dots) == 1
    assert tuple(dots[0].axes) == (1 if transpose[0] else 2, 2 if transpose[1] else 1)
    checks.equivalent(model, new, rtol=1e-5, atol=1e-5)


def test_other_matmuls_stay():
    x = keras.Input((6, 6))
    y = keras.Input((6, 6, 6))
    model = keras.Model([x, y], [tf.linalg.matmul(y, y), tf.linalg.matmul(x, x, adjoint_a=True)])
    assert replace_tfop_arithmetic(model) is model


# name -> (an integer index of a (None, 5, 6) tensor, expected ExtractToken (token, axis))
INDICES = {
    "class_token": (lambda x: x[:, 0], (0, 1)),
    "last_token": (lambda x: x[:, -1], (4, 1)),
    "channel": (lambda x: x[..., 2], (2, 2)),
    "channel_slices": (lambda x: x[:, :, -6], (0, 2)),
}


@pytest.mark.parametrize("case", list(INDICES))
def test_index_becomes_extract_token(checks, case):
    x = keras.Input((5, 6))
    model = keras.Model(x, L.Dense(2)(INDICES[case][0](L.Dense(6)(x))))
    new = replace_tfop_arithmetic(model)
    tokens = [layer for layer in new.layers if type(layer) is ExtractToken]
    assert len(tokens) == 1
    assert (tokens[0].token, tokens[0].axis) == INDICES[case][1]
    assert not any(type(layer).__name__ == "SlicingOpLambda" for layer in new.layers)
    checks.equivalent(model, new, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["two_indices", "index_and_slice", "batch", "new_axis",
                                  "reversed", "dynamic_axis"])
def test_other_slicings_stay(case):
    x = keras.Input((4, 4, 3) if case != "dynamic_axis" else (None, 3))
    fn = {"two_indices": lambda t: t[:, 1, 2], "index_and_slice": lambda t: t[:, 1, 1:3],
          "batch": lambda t: t[:2], "new_axis": lambda t: t[:, None],
          "reversed": lambda t: t[:, ::-1], "dynamic_axis": lambda t: t[:, 0]}[case]
    model = keras.Model(x, fn(x))
    assert replace_tfop_arithmetic(model) is model


def test_slicing_arguments_checked():
    with pytest.raises(ValueError, match="Slicing"):
        Slicing([0, 2], [4, 1])
    with pytest.raises(ValueError, match="strides"):
        Slicing([0], [4], [0])


@pytest.mark.parametrize("case", ["halves_channels", "sizes_rows"])
def test_split_becomes_slicings(checks, case):
    x = keras.Input((4, 4, 6))
    y = L.Conv2D(6, 1)(x)
    parts = tf.split(y, 2, axis=-1) if case == "halves_channels" else tf.split(y, [1, 3], 1)
    axis = -1 if case == "halves_channels" else 1
    out = L.Concatenate(axis)([L.Conv2D(2, 1)(parts[1]), L.Conv2D(2, 1)(parts[0])])
    model = keras.Model(x, out)
    new = replace_tfop_arithmetic(model)
    slices = [layer for layer in new.layers if type(layer) is Slicing]
    assert len(slices) == 2
    assert not any(layer.get_config().get("function") == "split" for layer in new.layers
                   if type(layer).__name__ == "TFOpLambda")
    expected = ([([0, 0, 0], [4, 4, 3]), ([0, 0, 3], [4, 4, 6])] if case == "halves_channels"
                else [([0, 0, 0], [1, 4, 6]), ([1, 0, 0], [4, 4, 6])])
    assert sorted((s.begin, s.end) for s in slices) == sorted(expected)
    checks.equivalent(model, new, rtol=0, atol=0)


def test_split_of_a_dynamic_axis_stays():
    x = keras.Input((None, 4, 6))
    model = keras.Model(x, tf.split(x, 2, axis=1)[0])
    assert replace_tfop_arithmetic(model) is model


def test_integer_slices_and_splits_stay():
    i = keras.Input((4, 6), dtype="int32")
    model = keras.Model(i, [i[:, 1:3], tf.split(i, 2, axis=-1)[0]])
    assert replace_tfop_arithmetic(model) is model


# name -> (op on a (None, 4, 4, 8) tensor, the layer classes replacing it)
MOVES = {
    "depth_to_space": (lambda x: tf.nn.depth_to_space(x, 2),
                       [keras.layers.Reshape, keras.layers.Permute, keras.layers.Reshape]),
    "space_to_depth": (lambda x: tf.nn.space_to_depth(x, 2),
                       [keras.layers.Reshape, keras.layers.Permute, keras.layers.Reshape]),
    "expand_dims": (lambda x: tf.expand_dims(x, 3), [keras.layers.Reshape]),
    "squeeze": (lambda x: tf.squeeze(x[:, :1], axis=1), [Slicing, keras.layers.Reshape]),
    "maximum": (lambda x: tf.maximum(x, x * 0.5), [keras.layers.Rescaling, keras.layers.Maximum]),
    "minimum": (lambda x: tf.math.minimum(x * 0.5, x), [keras.layers.Rescaling,
                                                         keras.layers.Minimum]),
    "maximum_zero": (lambda x: tf.maximum(x, 0.0), [keras.layers.ReLU]),
    "pow_2": (lambda x: tf.pow(x, 2), [keras.layers.Multiply]),
}


@pytest.mark.parametrize("name", list(MOVES))
def test_moves_and_extrema_become_layers(checks, name):
    """Pixel shuffles, expand_dims / squeeze, maximum / minimum of tensors, maximum(x, 0)
    and pow(x, 2) become layers with the same outputs (the moves exactly)."""
    op, expected = MOVES[name]
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(8, 1)(inputs)
    model = keras.Model(inputs, keras.layers.Flatten()(op(x)))
    new = replace_tfop_arithmetic(model)
    assert [type(layer) for layer in new.layers[2:2 + len(expected)]] == expected
    assert not any(type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda")
                   for layer in new.layers)
    checks.equivalent(model, new, rtol=1e-6, atol=1e-6)


def test_depth_to_space_order():
    """TensorFlow's order: out[h r + i, w r + j, c] = in[h, w, (i r + j) C' + c]."""
    inputs = keras.Input((2, 3, 8))
    model = keras.Model(inputs, tf.nn.depth_to_space(inputs, 2))
    new = replace_tfop_arithmetic(model)
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(1, 2, 3, 8)
    np.testing.assert_array_equal(new(x).numpy(), tf.nn.depth_to_space(x, 2).numpy())
    back = replace_tfop_arithmetic(keras.Model(inputs, tf.nn.space_to_depth(
        tf.nn.depth_to_space(inputs, 2), 2)))
    np.testing.assert_array_equal(back(x).numpy(), x)


def test_other_extrema_and_moves_stay():
    inputs = keras.Input((4, 4, 8))
    model = keras.Model(inputs, tf.maximum(inputs, 0.5))  # a constant other than 0
    assert replace_tfop_arithmetic(model) is model
    dynamic = keras.Input((None, None, 8))
    model = keras.Model(dynamic, tf.nn.depth_to_space(dynamic, 2))
    assert replace_tfop_arithmetic(model) is model  # dynamic spatial dimensions
