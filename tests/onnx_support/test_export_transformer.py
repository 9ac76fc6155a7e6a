"""Exact export of the transformer layers (QuantizedShiftmax, QuantizedAttention, the layer
normalizations, the token layers) and of a tiny ViT: onnxruntime's integer outputs equal the
Keras quantized model's ``.values`` bit for bit, the float outputs exactly.

In the quantized models, each layer under test is a model output (no output quantizer: its
whole integer buffer is compared) and the layers share one model, quantized and exported once
(test time); the emitters also run alone on random integer QTensors (QFloat inputs, per-axis
frac bits, wide attention inputs), compared with the Keras layer's call."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf_keras as keras
from onnx import TensorProto
from onnx import helper as oh

from quantizeml.layers.attention import QuantizedAttention
from quantizeml.layers.layer_norm import (QuantizedLayerNormalization,
                                          QuantizedLayerStdNormalization)
from quantizeml.layers.registry import twin_spec
from quantizeml.layers.shiftmax import QuantizedShiftmax, Shiftmax
from quantizeml.layers.tokens import (QuantizedAddPositionEmbs, QuantizedClassToken,
                                      QuantizedExtractToken)
from quantizeml.models.zoo_vit import digits_vit
from quantizeml.onnx_support.exact import EMITTERS, OPSET, _Builder, _T
from quantizeml.tensors import FixedPoint, QFloat

from .test_export_coverage import _check, _check_outputs, _quantize, _samples

L = keras.layers


def test_export_transformer_layers():
    """Dense -> Shiftmax, LayerNormalization (with and without gamma): each a model output
    (the token layers and LayerMadNormalization: in the tiny ViT)."""
    inputs = keras.Input((6, 8), name="inp")
    y = L.Dense(8, bias_initializer="random_normal", name="a")(inputs)
    random = "random_normal"
    outputs = [
        Shiftmax(name="shiftmax")(L.Dense(8, name="b")(y)),
        L.LayerNormalization(name="std", beta_initializer=random, gamma_initializer=random)(y),
        L.LayerNormalization(name="std_no_gamma", scale=False)(y),
    ]
    x = _samples((6, 8), n=8, seed=1, low=-2, high=2)
    x[0, 0] = 0.0  # a row of zeros (the zero-deviation branch)
    qmodel = _quantize(keras.Model(inputs, outputs), x)
    names = {type(layer).__name__ for layer in qmodel.layers}
    assert {"QuantizedShiftmax", "QuantizedLayerStdNormalization"} <= names
    _check_outputs(qmodel, x)


def test_export_tiny_vit():
    """A one-block digits ViT (ClassToken, AddPositionEmbs, LayerMadNormalization, shiftmax
    Attention, ExtractToken) exported end to end, bit-exact."""
    model = digits_vit(softmax="shiftmax", hidden_size=16, num_heads=1, mlp_dim=16,
                       num_blocks=1)
    x = _samples((8, 8, 1), n=8, seed=3, low=0, high=1)
    qmodel = _quantize(model, x)
    ops = _check(qmodel, x)
    assert "MatMul" in ops and "Gather" in ops


# ---- emitters alone, on random integer QTensors (QFloat inputs, per-axis frac bits) ----------
def _keras_encoder(inputs, heads=2, key_dim=8, mlp=32):
    """A pre-norm Keras transformer encoder block as Keras examples write it:
    LayerNormalization, ``MultiHeadAttention(x, x)``, skip Add, LayerNormalization, Dense gelu,
    Dense, skip Add."""
    dim = int(inputs.shape[-1])
    y = L.LayerNormalization(epsilon=1e-6, name="norm_1")(inputs)
    y = L.MultiHeadAttention(heads, key_dim, dropout=0.1, name="mha")(y, y)
    x = L.Add(name="add_1")([inputs, y])
    y = L.LayerNormalization(epsilon=1e-6, name="norm_2")(x)
    y = L.Dense(mlp, activation="gelu", name="mlp_1")(y)
    y = L.Dense(dim, name="mlp_2")(y)
    return L.Add(name="add_2")([x, y])


def test_export_keras_multi_head_attention_encoder():
    """A Keras encoder block with ``MultiHeadAttention`` (split by quantize() into Dense
    projections and an Attention), its first token taken with ``x[:, 0]`` (an ExtractToken):
    every layer integer, close to the float model (SQNR above 20 dB at 8/8), exported
    bit-exact."""
    inputs = keras.Input((8, 16), name="inp")
    y = L.Dense(16, name="embed")(inputs)
    y = _keras_encoder(y)
    model = keras.Model(inputs, L.Dense(5, name="logits")(y[:, 0]))
    x = _samples((8, 16), n=32, seed=5, low=-2, high=2)
    qmodel = _quantize(model, x)
    names = [type(layer).__name__ for layer in qmodel.layers]
    assert "QuantizedAttention" in names and "QuantizedExtractToken" in names
    assert all(n.startswith(("Quantized", "InputLayer", "InputQuantizer", "Dequantizer"))
               for n in names), names
    y_float, y_q = model(x).numpy(), qmodel(x).numpy()
    assert np.sum((y_float - y_q) ** 2) < 0.01 * np.sum(y_float ** 2)
    ops = _check(qmodel, x)
    assert "MatMul" in ops


def test_export_keras_example_vit_and_mobilevit():
    """Keras examples' ViT (Conv2D patches, ``x + Embedding(tokens, dim)(tf.range(tokens))``
    position embeddings, LayerNormalization, MultiHeadAttention, Flatten head) and a
    MobileViT block (MultiHeadAttention on (batch, patch, positions, dim) patches, joint over
    both axes): all-integer models, SQNR above 20 dB at 8/8, exported bit-exact."""
    inputs = keras.Input((8, 8, 1), name="inp")
    y = L.Reshape((16, 16), name="tokens")(L.Conv2D(16, 2, strides=2, name="patches")(inputs))
    y = y + L.Embedding(16, 16, embeddings_initializer="random_normal")(tf.range(16))
    y = L.LayerNormalization(epsilon=1e-6, name="norm")(_keras_encoder(y))
    vit = keras.Model(inputs, L.Dense(5, name="logits")(L.Flatten(name="flat")(y)))

    local = L.Conv2D(16, 3, padding="same", activation="swish", name="local")(inputs)
    y = L.Reshape((4, 16, 16), name="unfold")(local)
    y = _keras_encoder(y)
    y = L.Reshape((8, 8, 16), name="fold")(y)
    y = L.Concatenate(name="cat")([inputs, L.Conv2D(1, 1, name="project")(y)])
    y = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(8, 3, name="fuse")(y))
    mobilevit = keras.Model(inputs, L.Dense(5, name="logits")(y))

    x = _samples((8, 8, 1), n=32, seed=6, low=0, high=1)
    for model, kind in ((vit, "QuantizedAddPositionEmbs"), (mobilevit, "QuantizedReshape")):
        qmodel = _quantize(model, x)
        names = [type(layer).__name__ for layer in qmodel.layers]
        assert "QuantizedAttention" in names and kind in names, names
        assert all(n.startswith(("Quantized", "InputLayer", "InputQuantizer", "Dequantizer"))
                   for n in names), names
        y_float, y_q = model(x).numpy(), qmodel(x).numpy()
        assert np.sum((y_float - y_q) ** 2) < 0.01 * np.sum(y_float ** 2), model.name
        _check(qmodel, x)


def test_export_dot_softmax_attention_bit_exact():
    """A hand-written attention (``Dot`` of query and key, ``Softmax``, ``Dot`` with the
    value) and CCT's sequence pooling (``Softmax(axis=1)`` of a Dense, ``tf.matmul`` with
    ``transpose_a``: a Dot(axes=(1, 1))): QuantizedDot and QuantizedSoftmax, every layer
    integer, close to float, exported bit-exact; a final Softmax stays float (the tail)."""
    inputs = keras.Input((8, 16), name="inp")
    q, k, v = (L.Dense(16, name=n)(inputs) for n in ("q", "k", "v"))
    scores = L.Softmax(name="probs")(L.Dot(axes=(2, 2), name="scores")([q, k]))
    y = L.Dot(axes=(2, 1), name="mix")([scores, v])
    weights = L.Softmax(axis=1, name="pool_weights")(L.Dense(1, name="pool_logits")(y))
    y = L.Flatten(name="flat")(tf.matmul(weights, y, transpose_a=True))
    logits = L.Dense(5, name="logits")(y)
    x = _samples((8, 16), n=32, seed=7, low=-2, high=2)
    qmodel = _quantize(keras.Model(inputs, logits), x)
    names = [type(layer).__name__ for layer in qmodel.layers]
    assert names.count("QuantizedDot") == 3 and names.count("QuantizedSoftmax") == 2, names
    assert all(n.startswith(("Quantized", "InputLayer", "InputQuantizer", "Dequantizer"))
               for n in names), names
    model = keras.Model(inputs, logits)
    y_float, y_q = model(x).numpy(), qmodel(x).numpy()
    assert np.sum((y_float - y_q) ** 2) < 0.01 * np.sum(y_float ** 2)
    ops = _check(qmodel, x)
    assert "MatMul" in ops and "Exp" in ops
    # with a final Softmax: it stays float after the Dequantizer
    probs = keras.Model(inputs, L.Softmax(name="out_probs")(logits))
    qprobs = _quantize(probs, x)
    assert type(qprobs.layers[-1]) is L.Softmax
    _check(qprobs, x, max_ulp=4)


def _emit(layer, xs):
    """Runs the layer's emitter alone on QTensors ``xs`` (their values int64 graph inputs) and
    compares the ONNX integers, frac bits and scales with the Keras layer's call."""
    b, ts, feeds, graph_inputs = _Builder(), [], {}, []
    for i, x in enumerate(xs):
        fp = x.fp if isinstance(x, QFloat) else x
        scales = None if fp is x else x.scales.numpy()
        ts.append(_T(f"x{i}", fp.value_bits, fp.frac_bits.numpy(), scales, False,
                     tuple(x.shape[1:])))
        feeds[f"x{i}"] = fp.values.numpy().astype(np.int64)
        graph_inputs.append(oh.make_tensor_value_info(f"x{i}", TensorProto.INT64, list(x.shape)))
    out = EMITTERS[twin_spec(layer).export][0](b, layer, ts)
    expected = layer(xs if len(xs) > 1 else xs[0])
    efp = expected.fp if isinstance(expected, QFloat) else expected
    graph = oh.make_graph(
        b.nodes, "g", graph_inputs,
        [oh.make_tensor_value_info(out.name, TensorProto.INT64, list(efp.shape))],
        initializer=b.inits)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (values,) = session.run(None, feeds)
    np.testing.assert_array_equal(values, efp.values.numpy().astype(np.int64))
    np.testing.assert_array_equal(np.broadcast_to(out.frac, efp.frac_bits.shape),
                                  efp.frac_bits.numpy())
    if isinstance(expected, QFloat):
        np.testing.assert_array_equal(out.scales, expected.scales.numpy())
    else:
        assert out.scales is None


def _qtensor(shape, value_bits, frac, scales=None, seed=0):
    """Random integers on ``value_bits`` (extremes included) as a FixedPoint or a QFloat."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-2 ** value_bits, 2 ** value_bits, shape).astype(np.float32)
    values.reshape(-1)[:2] = [-2 ** value_bits, 2 ** value_bits - 1]
    fp = FixedPoint(values, value_bits, np.asarray(frac, np.float32))
    return fp if scales is None else QFloat(fp, np.asarray(scales, np.float32))


def _built(layer, x, weights_seed=4):
    """The layer called once on ``x`` (built), its float weights randomized."""
    layer(x)
    rng = np.random.default_rng(weights_seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    return layer


FRAC = [3, 5, 2, 4, 6, 1, 3, 2]
SCALES = [0.5, 1.25, 0.75, 2.0, 0.3, 1.0, 0.9, 1.7]
#: name -> (layer factory, input QTensor)
ALONE = {
    "shiftmax_qfloat": (lambda: QuantizedShiftmax(name="t"),
                        _qtensor((3, 4, 8), 9, FRAC, SCALES)),
    "mad_qfloat_per_axis": (lambda: QuantizedLayerNormalization(name="t"),
                            _qtensor((3, 4, 8), 7, 4, SCALES)),
    "mad_qfloat_per_tensor": (lambda: QuantizedLayerNormalization(name="t"),
                              _qtensor((3, 4, 8), 7, FRAC, 0.37)),
    "std_qfloat": (lambda: QuantizedLayerStdNormalization(name="t", epsilon=0.5),
                   _qtensor((3, 4, 8), 7, 3, 0.37)),
    "class_token_qfloat": (lambda: QuantizedClassToken(name="t"),
                           _qtensor((3, 4, 8), 7, FRAC, SCALES)),
    "position_qfloat": (lambda: QuantizedAddPositionEmbs(name="t"),
                        _qtensor((3, 4, 8), 7, 2, SCALES)),
    "extract_last_axis": (lambda: QuantizedExtractToken(5, axis=-1, name="t"),
                          _qtensor((3, 4, 8), 7, FRAC)),
}


@pytest.mark.parametrize("kind", list(ALONE), ids=list(ALONE))
def test_emitter_alone(kind):
    make_layer, x = ALONE[kind]
    _emit(_built(make_layer(), x), [x])


@pytest.mark.parametrize("softmax,heads", [("shiftmax", 2), ("softmax", 1), ("shiftmax", 3)])
def test_attention_emitter_alone(softmax, heads):
    """11-bit query, key and value on 12 channels: heads of 6 (a QFloat rescale), 12 (QFloat)
    or 4 (a shift); random integers, the exact scores span a wide range."""
    xs = [_qtensor((2, 5, 12), 11, f, seed=s) for s, f in enumerate((6, 7, 5))]
    _emit(QuantizedAttention(heads, softmax=softmax, name="t"), xs)
