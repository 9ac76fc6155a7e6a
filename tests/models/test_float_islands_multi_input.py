"""Float islands and float tails of layers called on several tensors (MultiHeadAttention kept
float with ``q_config={"mha": "float"}``): every quantized tensor the layer reads, positional or
keyword, is dequantized, once per tensor (``mha(y, y)`` reads one Dequantizer twice); the
producers of its keyword inputs know it reads them (``consumers``); the quantized model stays
close to the float one (SQNR > 20 dB at 8 bits), keeps no other layer float, and exports to
ONNX (onnxruntime matches Keras: ``tests/onnx_support/test_export_float_transformer.py``).
"""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers import Dequantizer, InputQuantizer
from quantizeml.models import float_islands, quantize
from quantizeml.models.graph import consumers, is_qtensor
from tests.onnx_support.test_export_float_transformer import (DIM, SEQ, _check_island,
                                                              _check_tail, _mha, _quantize,
                                                              _run, _samples)

L = keras.layers

#: how the attention is called on (query, value, key) -> (the call, distinct tensors read).
CALLS = {
    "self": (lambda mha, q, v, k: mha(q, q), 1),
    "cross_keywords": (lambda mha, q, v, k: mha(query=q, value=v, key=k), 3),
    "cross_key_keyword": (lambda mha, q, v, k: mha(q, v, key=k), 3),
}


def _model(call, tail=False):
    """inp -> Dense "pre" -> MultiHeadAttention (-> Add skip -> Dense "out" unless ``tail``);
    cross-attention reads value and key from Dense projections of a second input "context"."""
    inputs = [keras.Input((SEQ, DIM), name="inp")]
    y = L.Dense(DIM, name="pre")(inputs[0])
    value = key = None
    if call != "self":
        inputs.append(keras.Input((4, 5), name="context"))
        value = L.Dense(DIM, name="value_pre")(inputs[1])
        key = L.Dense(DIM, name="key_pre")(inputs[1])
    a = CALLS[call][0](_mha(value_dim=3), y, value, key)
    if not tail:
        a = L.Dense(DIM, name="out")(L.Add(name="add")([y, a]))
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], a)


def _inputs(call):
    x = _samples((SEQ, DIM))
    return x if call == "self" else [x, _samples((4, 5), seed=1)]


def _check_quantized(model, qmodel, xs, call):
    """The attention float on float inputs, one Dequantizer per tensor it reads, every other
    layer quantized, the outputs close to the float model's."""
    mha = qmodel.get_layer("mha")
    assert type(mha) is L.MultiHeadAttention
    read = mha.inbound_nodes[0].keras_inputs
    assert not any(is_qtensor(t) for t in read)
    parents = {id(t): t._keras_history.layer for t in read}
    assert len(parents) == CALLS[call][1]
    assert all(isinstance(p, Dequantizer) for p in parents.values())
    for layer in qmodel.layers:
        if layer.name not in ("mha", "mha_quantizer") and \
                not isinstance(layer, (keras.layers.InputLayer, Dequantizer, InputQuantizer)):
            assert type(layer).__name__.startswith("Quantized"), layer.name
    y, yq = model(xs).numpy(), qmodel(xs).numpy()
    assert np.all(np.isfinite(yq))
    sqnr = 10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2))
    assert sqnr > 20, sqnr


def test_consumers_list_keyword_and_repeated_inputs():
    """consumers(): value and key passed by keyword are read by the attention; a tensor read
    twice (``mha(y, y)``) lists the attention once."""
    got = consumers(_model("cross_keywords"))
    assert [c.name for c in got["value_pre"]] == ["mha"]
    assert [c.name for c in got["key_pre"]] == ["mha"]
    assert [c.name for c in got["context"]] == ["value_pre", "key_pre"]
    assert sorted(c.name for c in consumers(_model("self"))["pre"]) == ["add", "mha"]


@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_float_attention_island(call):
    """The attention kept float between quantized layers: a float island requantized by
    ``mha_quantizer``; the export's integers after it match Keras'."""
    model, xs = _model(call), _inputs(call)
    qmodel = _quantize(model, xs, {"mha": "float"})
    _check_quantized(model, qmodel, xs, call)
    assert isinstance(qmodel.get_layer("mha_quantizer"), InputQuantizer)
    assert float_islands(qmodel) == ["mha"]
    _check_island(qmodel, xs)


def test_float_self_attention_tail():
    """Self-attention ``mha(y, y)`` as the float tail (the model output): no requantization
    after it, one Dequantizer, the export's float outputs within 1e-4 of Keras'."""
    call = "self"
    model, xs = _model(call, tail=True), _inputs(call)
    qmodel = _quantize(model, xs, {"mha": "float"})
    _check_quantized(model, qmodel, xs, call)
    assert type(qmodel.layers[-1]) is L.MultiHeadAttention
    assert not any(isinstance(layer, InputQuantizer) and layer.name.startswith("mha")
                   for layer in qmodel.layers)
    assert float_islands(qmodel) == []
    _check_tail(qmodel, xs)


@pytest.mark.parametrize("call", ["cross_keywords", "cross_key_keyword"])
def test_float_cross_attention_tail(call):
    """Cross-attention as the float tail: it reads three quantized tensors (query, value,
    key), each dequantized once; the export writes the float output and the three integer
    tensors (``integer_outputs``, ``integer_outputs_source1``, ``_source2``, in the order of
    their Dequantizers), the integers bit-exact, the floats within 1e-4 of Keras'."""
    model, xs = _model(call, tail=True), _inputs(call)
    qmodel = _quantize(model, xs, {"mha": "float"})
    _check_quantized(model, qmodel, xs, call)
    dequantizers = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)]
    assert len(dequantizers) == 3
    outputs = _run(qmodel, xs)
    assert len(outputs) == 4
    keras_float = qmodel(xs).numpy()
    np.testing.assert_allclose(outputs[0], keras_float, rtol=1e-4, atol=1e-4)
    keras_ints = keras.Model(qmodel.inputs, [d.input for d in dequantizers])(xs)
    for got, want in zip(outputs[1:], keras_ints):
        np.testing.assert_array_equal(got, want.values.numpy().astype(np.int64))


def _custom_attention():
    """A hand-written attention whose first two layers quantize() refuses: a cosine ``Dot``
    (``normalize=True``) of query and key, a ``Softmax`` over two axes; then a ``Dot`` with
    the value (quantized), between quantized Dense layers."""
    inputs = keras.Input((SEQ, DIM), name="inp")
    q, k, v = (L.Dense(DIM, name=n)(inputs) for n in ("q", "k", "v"))
    scores = L.Dot(axes=(2, 2), normalize=True, name="scores")([q, k])
    scores = L.Softmax(axis=[1, 2], name="probs")(scores)
    y = L.Dot(axes=(2, 1), name="mix")([scores, v])
    return keras.Model(inputs, L.Dense(DIM, name="out")(L.Add(name="add")([inputs, y])))


def test_float_fallback_keeps_every_unsupported_layer_float():
    """Without the switch: one error naming every culprit and the switch; with
    ``float_fallback=True``: each becomes a float island (a warning lists them,
    ``float_islands`` reports them), the rest is quantized, the outputs stay close to float."""
    model = _custom_attention()
    x = _samples((SEQ, DIM), n=32, seed=2)
    with pytest.raises(ValueError, match=r"scores \(Dot: normalize=True.*probs \(Softmax: "
                                         r"a softmax over several axes.*float_fallback=True"):
        _quantize(model, x, None)
    with pytest.warns(UserWarning, match="keeps 2 unsupported layers float.*scores, probs"):
        qmodel = quantize(model, samples=x, num_samples=32, batch_size=32, float_fallback=True)
    # one island of two float layers, requantized once after the second
    assert float_islands(qmodel) == ["scores", "probs"]
    for name in ("scores", "probs"):
        assert type(qmodel.get_layer(name)) is type(model.get_layer(name))
    assert isinstance(qmodel.get_layer("probs_quantizer"), InputQuantizer)
    assert type(qmodel.get_layer("mix")).__name__ == "QuantizedDot"
    assert type(qmodel.get_layer("out")).__name__ == "QuantizedDense"
    y, q = model(x).numpy(), qmodel(x).numpy()
    assert np.sum((y - q) ** 2) < 0.01 * np.sum(y ** 2)  # SQNR above 20 dB
