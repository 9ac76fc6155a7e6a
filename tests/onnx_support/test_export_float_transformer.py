"""Export of the transformer layers a quantized model keeps float (``.float_transformer``):
MultiHeadAttention (self- and cross-attention), Embedding, EinsumDense and quantizeml's float
ClassToken, AddPositionEmbs, ExtractToken and Attention, as float islands (``q_config={name:
"float"}``: the integers requantized after them match the Keras ones on at least 99 % of the
values, off by one step at most) and as the float tail or head (the float outputs within 1e-4
of Keras'); and the refusals (masks, causal attention, other equations, shiftmax).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras
from onnx import TensorProto
from onnx import helper as oh

from quantizeml.layers import (AddPositionEmbs, Attention, ClassToken, Dequantizer,
                               ExtractToken, InputQuantizer)
from quantizeml.models import quantize
from quantizeml.models.graph import Graph
from quantizeml.onnx_support import export
from quantizeml.onnx_support.exact import OPSET, _Builder
from quantizeml.onnx_support.export import FLOAT_EMITTERS

L = keras.layers
SEQ, DIM, HEADS = 6, 8, 2


def _samples(shape, n=16, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, *shape)).astype(np.float32)


def _quantize(model, xs, q_config):
    n = len(xs[0]) if isinstance(xs, list) else len(xs)
    return quantize(model, samples=xs, num_samples=n, batch_size=n, q_config=q_config)


def _run(qmodel, xs):
    """onnxruntime's (float outputs, integer outputs) of the exported ``qmodel``."""
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    xs = xs if isinstance(xs, list) else [xs]
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs)})


def _check_island(qmodel, xs, max_mismatch=0.01):
    """The integers after the float island: at most ``max_mismatch`` differ (float32 summation
    order), by one step; the float outputs (their dequantized values) close."""
    floats, integers = _run(qmodel, xs)
    keras_int = keras.Model(qmodel.inputs, qmodel.layers[-1].input)(xs).values.numpy()
    keras_int = keras_int.astype(np.int64)
    assert integers.shape == keras_int.shape
    mismatch = np.mean(integers != keras_int)
    assert mismatch <= max_mismatch, mismatch
    assert np.abs(integers - keras_int).max() <= 1
    np.testing.assert_allclose(floats, qmodel(xs).numpy(), rtol=1e-3, atol=0.05)


def _check_tail(qmodel, xs):
    """The float tail: the float outputs within 1e-4 of Keras', the integers before the tail's
    Dequantizer bit-exact."""
    floats, integers = _run(qmodel, xs)
    source = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    keras_int = keras.Model(qmodel.inputs, source.input)(xs).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    keras_float = qmodel(xs).numpy()
    assert floats.shape == keras_float.shape
    np.testing.assert_allclose(floats, keras_float, rtol=1e-4, atol=1e-4)


def _mha(name="mha", **kwargs):
    return L.MultiHeadAttention(HEADS, DIM // HEADS, bias_initializer="random_normal",
                                name=name, **kwargs)


def _attention_block(cross):
    """Dense projection(s) -> MultiHeadAttention -> (Add skip -> Dense): self-attention called
    as ``mha(y, y)``; cross-attention ``mha(y, value, key)`` on a second input of 4 steps, the
    key a projection of its own, value_dim 3. (Keyword calls and the float tail:
    ``tests/models/test_float_islands_multi_input.py``.)"""
    inputs = [keras.Input((SEQ, DIM), name="inp")]
    y = L.Dense(DIM, name="pre")(inputs[0])
    if cross:
        inputs.append(keras.Input((4, 5), name="context"))
        value = L.Dense(DIM, name="value_pre")(inputs[1])
        key = L.Dense(DIM, name="key_pre")(inputs[1])
        a = _mha(value_dim=3)(y, value, key)
    else:
        a = _mha()(y, y)
    y = L.Add(name="add")([y, a])
    return keras.Model(inputs, L.Dense(DIM, name="out")(y))


def _inputs(cross):
    return [_samples((SEQ, DIM)), _samples((4, 5), seed=1)] if cross else _samples((SEQ, DIM))


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_export_float_mha_island(cross):
    """MultiHeadAttention kept float between quantized Dense layers: quantize() dequantizes its
    inputs and requantizes its output (``mha_quantizer``); the export writes it in float32."""
    xs = _inputs(cross)
    qmodel = _quantize(_attention_block(cross), xs, {"mha": "float"})
    assert type(qmodel.get_layer("mha")) is L.MultiHeadAttention
    assert isinstance(qmodel.get_layer("mha_quantizer"), InputQuantizer)
    _check_island(qmodel, xs)


def _emit_alone(model, xs):
    """onnxruntime's output of the float emitter of the one layer of ``model`` on its float
    inputs, handed over in the graph walker's order (``Node.inputs``), as the export does."""
    graph = Graph(model)
    (node,) = graph.nodes
    names = {ref.key: layer.name for layer, ref in zip(graph.input_layers, graph.inputs)}
    b = _Builder()
    out = FLOAT_EMITTERS[type(node.layer)][0](b, node.layer, [names[r.key] for r in node.inputs])
    inputs = [oh.make_tensor_value_info(layer.name, TensorProto.FLOAT,
                                        ["N"] + [int(d) for d in ref.shape[1:]])
              for layer, ref in zip(graph.input_layers, graph.inputs)]
    proto = oh.make_model(
        oh.make_graph(b.nodes, "alone", inputs,
                      [oh.make_tensor_value_info(out, TensorProto.FLOAT, ["N"] + [
                          int(d) for d in graph.outputs[0].shape[1:]])],
                      initializer=b.inits), opset_imports=[oh.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {layer.name: x for layer, x in zip(graph.input_layers, xs)})[0]


#: how the MultiHeadAttention is called on (query, value, key) -> the call.
MHA_CALLS = {
    "self": lambda mha, q, v, k: mha(q, q),
    "cross_positional": lambda mha, q, v, k: mha(q, v, k),
    "cross_keywords": lambda mha, q, v, k: mha(query=q, value=v, key=k),
    "cross_key_keyword": lambda mha, q, v, k: mha(q, v, key=k),
    "cross_no_key": lambda mha, q, v, k: mha(value=v, query=q),
}


@pytest.mark.parametrize("call", list(MHA_CALLS), ids=list(MHA_CALLS))
def test_export_float_mha_emitter_matches_keras(call):
    """The MultiHeadAttention emitter alone against Keras, within 1e-5 (float32 summation
    order): a query of 6 steps, a value (4, 5) and a key (4, 7), value_dim 3, called
    positionally or by keywords (the walker hands keyword tensors sorted by name: key, query,
    value; the emitter maps them back by their role)."""
    inputs = [keras.Input((SEQ, DIM), name="q"), keras.Input((4, 5), name="v"),
              keras.Input((4, 7), name="k")]
    mha = _mha(value_dim=3, kernel_initializer=keras.initializers.RandomNormal(seed=3))
    model = keras.Model(inputs, MHA_CALLS[call](mha, *inputs))
    xs = [_samples((SEQ, DIM)), _samples((4, 5), seed=1), _samples((4, 7), seed=2)]
    np.testing.assert_allclose(_emit_alone(model, xs), model(xs).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_export_float_tail_two_dequantizers_of_one_tensor():
    """A float tail reading one integer tensor through two Dequantizers (``mha(dq_a(y),
    dq_b(y))``, as quantize() built self-attention before it reused one): the export finds
    one integer tensor before the output."""
    inputs = keras.Input((SEQ, DIM), name="inp")
    x = _samples((SEQ, DIM))
    y = L.Dense(DIM, name="pre")(inputs)
    qmodel = _quantize(keras.Model(inputs, _mha()(y, y)), x, {"mha": "float"})
    source = qmodel.get_layer("mha")
    mha = L.MultiHeadAttention.from_config(source.get_config())
    y = qmodel.get_layer("pre").output
    qmodel = keras.Model(qmodel.inputs, mha(Dequantizer(name="dq_a")(y),
                                            Dequantizer(name="dq_b")(y)))
    mha.set_weights(source.get_weights())
    _check_tail(qmodel, x)


def test_export_float_embedding_head_einsum_island():
    """Integer token ids -> Embedding (the float head, ``emb_quantizer`` after it) -> Dense ->
    EinsumDense "abc,cd->abd" kept float -> Dense; then Embedding and EinsumDense "ab,bc->ac"
    as the float tail."""
    inputs = keras.Input((SEQ,), name="ids")
    y = L.Embedding(10, DIM, name="emb")(inputs)
    y = L.Dense(DIM, name="pre")(y)
    y = L.EinsumDense("abc,cd->abd", output_shape=(SEQ, 5), bias_axes="d",
                      activation="relu", bias_initializer="random_normal", name="einsum")(y)
    y = L.Dense(3, name="out")(y)
    ids = np.random.default_rng(0).integers(0, 10, (16, SEQ)).astype(np.float32)
    qmodel = _quantize(keras.Model(inputs, y), ids, {"einsum": "float"})
    assert type(qmodel.get_layer("emb")) is L.Embedding
    assert isinstance(qmodel.get_layer("emb_quantizer"), InputQuantizer)
    assert isinstance(qmodel.get_layer("einsum_quantizer"), InputQuantizer)
    _check_island(qmodel, ids)

    inputs = keras.Input((SEQ,), name="ids")
    y = L.Flatten(name="flat")(L.Dense(4, name="pre")(L.Embedding(10, DIM, name="emb")(inputs)))
    y = L.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c",
                      bias_initializer="random_normal", name="einsum")(y)
    qmodel = _quantize(keras.Model(inputs, y), ids, {"einsum": "float"})
    assert type(qmodel.layers[-1]) is L.EinsumDense
    _check_tail(qmodel, ids)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_export_integer_token_inputs(dtype):
    """A model whose input is int32 (int64) token ids: the ONNX input keeps that type (fed
    the same arrays as Keras), exact and QDQ forms both."""
    inputs = keras.Input((SEQ,), dtype=dtype, name="ids")
    y = L.Flatten(name="flat")(L.Dense(4, name="pre")(L.Embedding(10, DIM, name="emb")(inputs)))
    qmodel = _quantize(keras.Model(inputs, L.Dense(3, name="out")(y)),
                       np.random.default_rng(0).integers(0, 10, (16, SEQ)).astype(dtype), None)
    ids = np.random.default_rng(1).integers(0, 10, (8, SEQ)).astype(dtype)
    proto = export(qmodel)
    elem = {"int32": TensorProto.INT32, "int64": TensorProto.INT64}[dtype]
    assert proto.graph.input[0].type.tensor_type.elem_type == elem
    floats, integers = _run(qmodel, ids)
    keras_int = keras.Model(qmodel.inputs, qmodel.layers[-1].input)(ids).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    np.testing.assert_array_equal(floats, qmodel(ids).numpy())
    session = ort.InferenceSession(export(qmodel, format="qdq").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    qdq = session.run(None, {"ids": ids})[0]
    step = float(np.max(np.abs(qmodel(ids).numpy()))) / 2**7
    assert np.max(np.abs(qdq - qmodel(ids).numpy())) <= step


def test_export_float_vit_tokens_attention():
    """quantizeml's transformer layers kept float in a tiny ViT block: ClassToken,
    AddPositionEmbs, Attention ('softmax') and ExtractToken, each a float island."""
    inputs = keras.Input((SEQ, DIM), name="inp")
    x = L.Dense(DIM, name="pre")(inputs)
    x = ClassToken(initializer="random_normal", name="cls")(x)
    x = AddPositionEmbs(initializer=keras.initializers.RandomNormal(stddev=0.5), name="pos")(x)
    qkv = [L.Dense(DIM, name=n)(x) for n in ("q", "k", "v")]
    y = Attention(HEADS, name="att")(qkv)
    y = L.Dense(DIM, name="att_out")(y)
    y = ExtractToken(0, name="tok")(L.Add(name="add")([x, y]))
    y = L.Dense(3, name="out")(y)
    floats = ("cls", "pos", "att", "tok")
    x = _samples((SEQ, DIM))
    qmodel = _quantize(keras.Model(inputs, y), x, {name: "float" for name in floats})
    for name, cls in zip(floats, (ClassToken, AddPositionEmbs, Attention, ExtractToken)):
        assert type(qmodel.get_layer(name)) is cls
    _check_island(qmodel, x)


def _reason(qmodel, name):
    layer = qmodel.get_layer(name)
    reason = FLOAT_EMITTERS[type(layer)][1](layer)
    assert reason is not None
    with pytest.raises(ValueError) as info:
        export(qmodel)
    assert f"{name} ({type(layer).__name__}): {reason}" in str(info.value)
    return reason


def test_export_float_transformer_refused():
    """Refused with their reason: a causal MultiHeadAttention, one reading the mask of an
    Embedding(mask_zero=True) (the Embedding too), an EinsumDense with another equation, a
    float Attention with shiftmax."""
    x = _samples((SEQ, DIM), n=4)
    inputs = keras.Input((SEQ, DIM), name="inp")
    y = L.Dense(DIM, name="pre")(inputs)
    qmodel = _quantize(keras.Model(inputs, _mha()(y, y, use_causal_mask=True)), x,
                       {"mha": "float"})
    assert "use_causal_mask" in _reason(qmodel, "mha")

    inputs = keras.Input((SEQ,), name="ids")
    y = L.Embedding(10, DIM, mask_zero=True, name="emb")(inputs)
    ids = np.random.default_rng(0).integers(0, 10, (4, SEQ)).astype(np.float32)
    qmodel = _quantize(keras.Model(inputs, _mha()(y, y)), ids, {})
    assert "mask" in _reason(qmodel, "mha")
    assert "['mha']" in _reason(qmodel, "emb")

    inputs = keras.Input((SEQ, DIM), name="inp")
    y = L.Dense(DIM, name="pre")(inputs)
    y = L.EinsumDense("abc,cde->abde", output_shape=(SEQ, 2, 3), name="einsum")(y)
    qmodel = _quantize(keras.Model(inputs, y), x, {})
    assert "abc,cde->abde" in _reason(qmodel, "einsum")

    inputs = keras.Input((SEQ, DIM), name="inp")
    y = L.Dense(DIM, name="pre")(inputs)
    y = Attention(HEADS, softmax="shiftmax", name="att")([y, y, y])
    qmodel = _quantize(keras.Model(inputs, L.Dense(3, name="out")(y)), x, {"att": "float"})
    assert "shiftmax" in _reason(qmodel, "att")
