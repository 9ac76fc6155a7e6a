"""Float32 ONNX emitters of the transformer layers quantize() may leave float (a float island
``q_config={name: "float"}``, the float head, the float tail): merged into
:data:`.exact.FLOAT_EMITTERS` (exact Keras class -> ``(emit, refuses)``).

* ``MultiHeadAttention`` (self- or cross-attention on (batch, seq, dim) inputs): the query, key
  and value EinsumDense projections as ``MatMul`` with the kernel (dim, heads, key_dim) seen as
  (dim, heads * key_dim) and the bias, ``Reshape`` to (N, seq, heads, key_dim) and
  ``Transpose`` to heads first, the query scaled by ``1 / sqrt(key_dim)`` (float32, as Keras),
  the ``MatMul`` scores, ``Softmax`` over the key axis, the ``MatMul`` with the values, the heads
  merged back and the output EinsumDense (kernel (heads, value_dim, out) seen as (heads *
  value_dim, out)). The emitter's inputs are the node's tensors in the graph walker's order
  (``tf.nest.flatten((args, kwargs))``: positional ones first, then keyword ones by name), so
  their roles (query, value, key) are read back from the layer's call;
* ``Embedding``: ``Cast`` of the (float graph) indices to int64, as Keras truncates them to
  int32, then ``Gather`` on the float32 table;
* ``EinsumDense`` ("abc,cd->abd", "ab,bc->ac"): ``MatMul``, the bias, the activation;
* quantizeml's float ``ClassToken`` (``Expand`` of the token to the batch, ``Concat`` before
  the tokens), ``AddPositionEmbs`` (``Add``), ``ExtractToken`` (``Gather``) and ``Attention``
  with the 'softmax' softmax (the scores divided by the float32 ``sqrt(dim)``).

Gather, Concat and Add are exact; the projections, products and softmaxes are float32
arithmetic that may differ from TensorFlow's in the last bits (another summation order).
"""
import math

import numpy as np
import tensorflow as tf
import tf_keras as keras
from onnx import TensorProto

from ..layers.attention import Attention
from ..layers.tokens import AddPositionEmbs, ClassToken, ExtractToken
from .exact import (FLOAT_EMITTERS, _activation_name, _float_activation,
                    _float_activation_refuses, _np)

__all__ = ["TRANSFORMER_FLOAT_EMITTERS"]

L = keras.layers

#: MultiHeadAttention.call's positional arguments, in order.
_MHA_ARGS = ("query", "value", "key", "attention_mask", "return_attention_scores", "training",
             "use_causal_mask")


def _f32(b, value, base="f"):
    return b.const(np.asarray(value, np.float32), base)


def _is_tensor(t):
    return hasattr(t, "_keras_history")


def _call(layer):
    """The (only) call of ``layer``: ``(node, arguments by name)``."""
    node = layer.inbound_nodes[0]
    named = dict(zip(_MHA_ARGS, node.call_args))
    named.update(node.call_kwargs)
    return node, named


def _mha_roles(layer):
    """The argument names of the tensors the emitter receives, in the graph walker's order
    (``tf.nest.flatten((args, kwargs))``, tensors only)."""
    node = layer.inbound_nodes[0]

    def label(structure, name):
        return tf.nest.map_structure(lambda t: name if _is_tensor(t) else None, structure)

    args = tuple(label(a, name) for a, name in zip(node.call_args, _MHA_ARGS))
    kwargs = {k: label(v, k) for k, v in node.call_kwargs.items()}
    return [r for r in tf.nest.flatten((args, kwargs)) if r is not None]


# ---- MultiHeadAttention ---------------------------------------------------------------------
def _project(b, dense, x, perm):
    """An MHA EinsumDense projection (kernel (dim, heads, size), bias (heads, size)) of (N, seq,
    dim) ``x`` as ``MatMul`` + bias, ``Reshape`` to (N, seq, heads, size), ``Transpose``
    ``perm``."""
    kernel = _np(dense.kernel)
    dim, heads, size = kernel.shape
    v = b.node("MatMul", [x, _f32(b, kernel.reshape(dim, heads * size), "f_mha_w")],
               "f_mha_proj")
    if dense.bias is not None:
        v = b.node("Add", [v, _f32(b, _np(dense.bias).reshape(-1), "f_mha_b")], "f_mha_bias")
    v = b.node("Reshape", [v, b.i64([0, 0, heads, size])], "f_mha_heads")
    return b.node("Transpose", [v], "f_mha_t", perm=perm)


def _float_mha(b, layer, xs):
    """MultiHeadAttention (no mask): the projections, ``MatMul(q / sqrt(key_dim), k^T)``,
    ``Softmax`` over the keys, ``MatMul`` with the values, heads merged, output projection."""
    named = dict(zip(_mha_roles(layer), xs))
    query, value = named["query"], named["value"]
    key = named.get("key", value)
    q = _project(b, layer._query_dense, query, [0, 2, 1, 3])  # (N, heads, T, key_dim)
    q = b.node("Mul", [q, _f32(b, 1.0 / math.sqrt(float(layer._key_dim)), "f_mha_scale")],
               "f_mha_q")
    k = _project(b, layer._key_dense, key, [0, 2, 3, 1])  # (N, heads, key_dim, S)
    v = _project(b, layer._value_dense, value, [0, 2, 1, 3])  # (N, heads, S, value_dim)
    scores = b.node("MatMul", [q, k], "f_mha_scores")
    probs = b.node("Softmax", [scores], "f_mha_probs", axis=-1)
    context = b.node("MatMul", [probs, v], "f_mha_context")  # (N, heads, T, value_dim)
    context = b.node("Transpose", [context], "f_mha_ctx_t", perm=[0, 2, 1, 3])
    out = layer._output_dense
    kernel = _np(out.kernel)
    heads, size, units = kernel.shape
    context = b.node("Reshape", [context, b.i64([0, 0, heads * size])], "f_mha_merge")
    y = b.node("MatMul", [context, _f32(b, kernel.reshape(heads * size, units), "f_mha_wo")],
               "f_mha_out")
    if out.bias is not None:
        y = b.node("Add", [y, _f32(b, _np(out.bias), "f_mha_bo")], "f_mha")
    return y


def _float_mha_refuses(layer):
    node, named = _call(layer)
    roles = _mha_roles(layer)
    if "attention_mask" in roles:
        return "an attention_mask (unmasked attention only)"
    if named.get("return_attention_scores"):
        return "return_attention_scores=True (the attention output only)"
    if named.get("use_causal_mask"):
        return "use_causal_mask=True (unmasked attention only)"
    if not {"query", "value"} <= set(roles) or len(roles) != len(set(roles)):
        return f"inputs {roles} (query, value and an optional key tensor)"
    for role in ("query", "value", "key"):
        t = named.get(role)
        if t is None:
            continue
        if getattr(t, "_keras_mask", None) is not None:
            return f"a Keras mask on the {role} (e.g. Embedding(mask_zero=True); unmasked only)"
        if t.shape.rank != 3:
            return f"a {role} of shape {tuple(t.shape)} ((batch, seq, dim) inputs only)"
    if tuple(layer._attention_axes) != (1,):
        return f"attention_axes={layer._attention_axes} (the sequence axis 1 only)"
    if len(_np(layer._output_dense.kernel).shape) != 3:
        return f"output_shape={layer._output_shape} (one output dimension only)"
    return None


# ---- Embedding, EinsumDense -----------------------------------------------------------------
def _float_embedding(b, layer, xs):
    """Embedding: ``Cast`` of the indices to int64 (truncation, as Keras' cast to int32), then
    ``Gather`` on the float32 table."""
    idx = b.node("Cast", [xs[0]], "f_emb_idx", to=TensorProto.INT64)
    return b.node("Gather", [_f32(b, _np(layer.embeddings), "f_emb_table"), idx], "f_emb",
                  axis=0)


def _mask_readers(layer):
    """The layers that read the Keras mask of ``layer``'s output (a ``mask`` call argument, or
    MultiHeadAttention's implicit masks), following the mask through the layers that
    propagate it."""
    readers, seen, stack = [], set(), [layer]
    while stack:
        current = stack.pop()
        for node in current.outbound_nodes:
            user = node.layer
            tensors = [t for t in tf.nest.flatten((node.call_args, node.call_kwargs))
                       if _is_tensor(t)]
            if id(user) in seen or not any(getattr(t, "_keras_mask", None) is not None
                                           for t in tensors):
                continue
            seen.add(id(user))
            if isinstance(user, L.MultiHeadAttention) or user._call_spec.expects_mask_arg:
                readers.append(user.name)
            else:
                stack.append(user)
    return readers


def _float_embedding_refuses(layer):
    if layer.sparse:
        return "sparse=True (dense embeddings only)"
    if layer.mask_zero and (readers := _mask_readers(layer)):
        return f"mask_zero=True with its mask read by {readers} (outputs would change)"
    return None


#: The EinsumDense equations written as ``MatMul`` (kernel (in, out)).
_EINSUM_MATMUL = ("abc,cd->abd", "ab,bc->ac")


def _float_einsum_dense(b, layer, xs):
    """EinsumDense "abc,cd->abd" / "ab,bc->ac": ``MatMul``, ``Add`` the bias (its Keras shape
    broadcasts over the leading output axes), then the activation."""
    v = b.node("MatMul", [xs[0], _f32(b, _np(layer.kernel), "f_kernel")], "f_einsum")
    if layer.bias is not None:
        v = b.node("Add", [v, _f32(b, _np(layer.bias), "f_bias")], "f_bias")
    return _float_activation(b, _activation_name(layer.activation), v)


def _float_einsum_dense_refuses(layer):
    equation = layer.equation.replace(" ", "")
    if equation not in _EINSUM_MATMUL:
        return f"the equation {layer.equation!r} (only {', '.join(_EINSUM_MATMUL)})"
    return _float_activation_refuses(layer)


# ---- quantizeml's float transformer layers --------------------------------------------------
def _float_class_token(b, layer, xs):
    """ClassToken: the (1, 1, hidden) token ``Expand``-ed to (N, 1, hidden), ``Concat`` before
    the tokens."""
    batch = b.node("Shape", [xs[0]], "f_cls_n", start=0, end=1)
    shape = b.node("Concat", [batch, b.i64([1, int(layer.cls.shape[-1])])], "f_cls_shape",
                   axis=0)
    cls = b.node("Expand", [_f32(b, _np(layer.cls), "f_cls"), shape], "f_cls_batch")
    return b.node("Concat", [cls, xs[0]], "f_class_token", axis=1)


def _float_add_position_embs(b, layer, xs):
    """AddPositionEmbs: ``Add`` the (1, tokens, hidden) embeddings."""
    return b.node("Add", [xs[0], _f32(b, _np(layer.pe), "f_pos")], "f_pos_embs")


def _float_extract_token(b, layer, xs):
    """ExtractToken: ``Gather`` of the token on the axis (a scalar index drops the axis)."""
    return b.node("Gather", [xs[0], b.i64(int(layer.token))], "f_token", axis=int(layer.axis))


def _float_attention(b, layer, xs):
    """Attention ('softmax'): query, key, value split in heads (``Reshape``, ``Transpose``),
    ``MatMul(q, k^T) / sqrt(dim)`` (the float32 square root, as Keras), ``Softmax``, ``MatMul``
    with the values, the heads merged back."""
    query, key, value = xs
    hidden = int(layer.input_shape[0][-1])
    heads = int(layer.num_heads)
    dim = hidden // heads

    def split(x, perm):
        v = b.node("Reshape", [x, b.i64([0, 0, heads, dim])], "f_att_heads")
        return b.node("Transpose", [v], "f_att_t", perm=perm)

    scores = b.node("MatMul", [split(query, [0, 2, 1, 3]), split(key, [0, 2, 3, 1])],
                    "f_att_scores")
    scores = b.node("Div", [scores, _f32(b, np.sqrt(np.float32(dim)), "f_att_sqrt")],
                    "f_att_scaled")
    probs = b.node("Softmax", [scores], "f_att_probs", axis=-1)
    context = b.node("MatMul", [probs, split(value, [0, 2, 1, 3])], "f_att_context")
    context = b.node("Transpose", [context], "f_att_ctx_t", perm=[0, 2, 1, 3])
    return b.node("Reshape", [context, b.i64([0, 0, hidden])], "f_attention")


def _float_attention_refuses(layer):
    if layer.softmax != "softmax":
        return (f"softmax={layer.softmax!r} kept float (its floored logits would not match "
                "TensorFlow's; 'softmax' only)")
    return None


#: Float Keras layer class (exact) -> ``(emit, refuses)``, merged into ``FLOAT_EMITTERS``.
TRANSFORMER_FLOAT_EMITTERS = {
    L.MultiHeadAttention: (_float_mha, _float_mha_refuses),
    L.Embedding: (_float_embedding, _float_embedding_refuses),
    L.EinsumDense: (_float_einsum_dense, _float_einsum_dense_refuses),
    ClassToken: (_float_class_token, None),
    AddPositionEmbs: (_float_add_position_embs, None),
    ExtractToken: (_float_extract_token, None),
    Attention: (_float_attention, _float_attention_refuses),
}

# registered with the exporter when imported (by :mod:`.export`)
FLOAT_EMITTERS.update(TRANSFORMER_FLOAT_EMITTERS)
