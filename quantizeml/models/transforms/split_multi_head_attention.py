"""Splits Keras' MultiHeadAttention (self-attention) into Dense projections and an Attention."""
import inspect

import numpy as np
import tf_keras as keras

from ...layers.attention import Attention
from ..graph import Graph, rebuild

__all__ = ["split_multi_head_attention"]

#: The MultiHeadAttention.call parameters, in order (bound to each node's call arguments).
_CALL = inspect.signature(keras.layers.MultiHeadAttention.call)
#: The config keys the projections take from the MultiHeadAttention, unchanged.
_DENSE_KEYS = ("use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
               "bias_regularizer", "kernel_constraint", "bias_constraint", "trainable",
               "dtype")


def _bound(node):
    """The node's call arguments by MultiHeadAttention.call parameter (None if they do not
    bind)."""
    try:
        bound = _CALL.bind(None, *node.args, **node.kwargs)
    except TypeError:
        return None
    return bound.arguments


def _splittable(node):
    """Whether a node is a MultiHeadAttention self-attention that Attention computes."""
    layer = node.layer
    if type(layer) is not keras.layers.MultiHeadAttention:
        return False
    args = _bound(node)
    if args is None:
        return False
    query, value, key = args["query"], args["value"], args.get("key")
    if getattr(query, "key", None) is None or getattr(value, "key", None) != query.key \
            or (key is not None and getattr(key, "key", None) != query.key):
        return False  # cross-attention: Attention takes one sequence
    if args.get("attention_mask") is not None or args.get("use_causal_mask") \
            or args.get("return_attention_scores"):
        return False
    shape = query.shape
    if shape.rank is None or shape.rank < 3 or any(d is None for d in shape[1:]) \
            or getattr(query.tensor, "_keras_mask", None) is not None:
        return False
    config = layer.get_config()
    key_dim = int(config["key_dim"])
    value_dim = config.get("value_dim") or key_dim
    axes = config.get("attention_axes")
    axes = None if axes is None or tuple(axes) == tuple(range(1, shape.rank - 1)) else axes
    output_shape = config.get("output_shape")
    if output_shape is not None and not isinstance(output_shape, int) \
            and len(output_shape) != 1:
        return False
    return int(value_dim) == key_dim and axes is None


def _dense(config, units, name, weights):
    kwargs = {k: config[k] for k in _DENSE_KEYS if k in config}
    return keras.layers.Dense(units, name=name, **kwargs), weights


def _layers(layer, rb):
    """The Dense query, key and value, the Attention and the output Dense of a
    MultiHeadAttention, each with the weights it takes after its first call."""
    config = layer.get_config()
    heads, key_dim = int(config["num_heads"]), int(config["key_dim"])
    projections = []
    for part, dense in (("query", layer._query_dense), ("key", layer._key_dense),
                        ("value", layer._value_dense)):
        weights = [np.reshape(w, (w.shape[0], heads * key_dim)) if i == 0
                   else np.reshape(w, (heads * key_dim,))
                   for i, w in enumerate(dense.get_weights())]
        projections.append(_dense(config, heads * key_dim, rb.unique(f"{layer.name}/{part}"),
                                  weights))
    attention = Attention(heads, name=rb.unique(f"{layer.name}/attention"))
    weights = layer._output_dense.get_weights()
    units = int(weights[0].shape[-1])
    weights = [np.reshape(weights[0], (heads * key_dim, units))] + weights[1:]
    # the output projection keeps the layer's name: its output is the layer's output
    output = _dense(config, units, rb.name_for(layer), weights)
    return projections, attention, output


def _call(pair, x):
    layer, weights = pair
    first = not layer.built
    y = layer(x)
    if first:
        layer.set_weights(weights)
    return y


def split_multi_head_attention(model, keep=()):
    """Replaces the MultiHeadAttention self-attentions of a model by the layers quantize()
    quantizes: ``Dense`` query, key and value projections (``<name>/query``, ...), an
    :class:`~quantizeml.layers.Attention` with the same heads (``<name>/attention``) and the
    output ``Dense`` (named as the MultiHeadAttention).

    Keras' ``MultiHeadAttention(num_heads, key_dim)`` called as ``mha(x, x)`` projects ``x``
    with ``EinsumDense`` kernels of shape ``(dim, heads, key_dim)`` (the query scaled by
    ``1 / sqrt(key_dim)``), takes the softmax of the query-key products over the tokens, and
    projects the heads' weighted values back with a ``(heads, key_dim, units)`` kernel: the
    Dense kernels are those kernels reshaped to ``(dim, heads * key_dim)`` and
    ``(heads * key_dim, units)`` (heads major, as Attention splits its inputs), and Attention
    divides the scores by ``sqrt(key_dim)``. The outputs are equal to float rounding.

    Converted: self-attention (``query`` and ``value``, and ``key`` when given, the same
    tensor of static shape), no ``attention_mask``, no causal mask, no returned scores,
    ``value_dim`` equal to ``key_dim``, attention over every axis but the batch and the
    features (``attention_axes`` None, the default, or all of them) and an unmasked input. A
    ``(batch, tokens, dim)`` sequence is attended as it is; a ``(batch, a, b, ..., dim)``
    input (MobileViT's patches) between two Reshapes, as the ``a * b * ...`` tokens that
    Keras' joint softmax over those axes attends. Other calls stay as they are
    (quantize() reports them, and keeps them float on request). The attention-probability
    dropout of the layer, an identity at inference, is not carried over: the converted model
    trains (QAT) without it.

    Args:
        model (keras.Model): a model.
        keep (iterable of str, optional): names of MultiHeadAttention layers left whole (those
            quantize() keeps float on request: ``q_config={name: 'float'}``). Defaults to ().

    Returns:
        keras.Model: the original model (nothing to split) or the updated model.

    Example:
        ```python
        model = split_multi_head_attention(model)  # mha(x, x) -> Dense x 3, Attention, Dense
        ```
    """
    graph = Graph(model)
    keep = set(keep)
    found = {node.index for node in graph.nodes
             if node.layer.name not in keep and _splittable(node)}
    if not found:
        return model
    made = {}  # id(MultiHeadAttention) -> its layers (shared layers stay shared)

    def rewrite(node, rb):
        if node.index not in found:
            return None
        layer = node.layer
        if id(layer) not in made:
            made[id(layer)] = _layers(layer, rb)
        projections, attention, output = made[id(layer)]
        query = _bound(node)["query"]
        x = rb.map(query)
        grid = [int(d) for d in query.shape[1:-1]]
        if len(grid) > 1:  # attention over every axis but the batch and the features
            x = keras.layers.Reshape((int(np.prod(grid)), int(query.shape[-1])),
                                     name=rb.unique(f"{layer.name}/tokens"))(x)
        qkv = [_call(pair, x) for pair in projections]
        y = _call(output, attention(qkv))
        if len(grid) > 1:
            y = keras.layers.Reshape((*grid, int(y.shape[-1])),
                                     name=rb.unique(f"{layer.name}/grid"))(y)
        return y

    return rebuild(graph, rewrite)
