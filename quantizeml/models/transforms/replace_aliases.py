"""Replaces layers that compute what a supported layer computes under another name."""
import tf_keras as keras

from ...layers.skip import Add
from ..graph import Graph, rebuild, substitute_layers

__all__ = ["replace_aliases"]

_L = keras.layers


def _alias(node):
    """``make(name)``, the supported layer computing what ``node`` computes, or None."""
    layer, config = node.layer, node.layer.get_config()
    if type(layer) is _L.ELU and float(config.get("alpha", 1.0)) == 1.0:
        return lambda name: _L.Activation("elu", name=name)
    if type(layer) is _L.Average and len(node.inputs) == 2:
        return lambda name: Add(average=True, name=name)
    if type(layer) is getattr(_L, "ThresholdedReLU", None) and float(config["theta"]) == 0.0:
        return lambda name: _L.ReLU(name=name)
    if type(layer) is getattr(_L, "Resizing", None):
        factors = _upsampling_factors(node, config)
        if factors is not None:
            return lambda name: _L.UpSampling2D(factors, interpolation=config["interpolation"],
                                                name=name)
    if type(layer) is _L.TimeDistributed and type(layer.layer) in _PER_STEP_ALIKE:
        inner = layer.layer
        return lambda name: type(inner).from_config({**inner.get_config(), "name": name})
    return None


def _upsampling_factors(node, config):
    """The integer factors ``(sh, sw)`` of a Resizing that is an UpSampling2D: nearest or
    bilinear, no cropping, a static input whose size divides the output size (both call
    ``tf.image.resize`` with the same size, half-pixel centers)."""
    if config.get("interpolation") not in ("nearest", "bilinear") \
            or config.get("crop_to_aspect_ratio") or len(node.inputs) != 1:
        return None
    shape = node.inputs[0].shape
    if shape.rank != 4 or shape[1] is None or shape[2] is None:
        return None
    (h, w), (out_h, out_w) = shape[1:3], (int(config["height"]), int(config["width"]))
    if out_h % h or out_w % w or (out_h // h, out_w // w) == (1, 1):
        return None
    return out_h // h, out_w // w


#: Layers that compute the same on each time step of a TimeDistributed as on the whole
#: tensor: they act on the last axis only (Dense) or elementwise.
_PER_STEP_ALIKE = (_L.Dense, _L.Activation, _L.ReLU, _L.LeakyReLU, _L.Dropout)


#: Merge layers whose n-ary call is the chain of binary calls, in input order: Keras merges
#: ``out = x0; out = f(out, x1); out = f(out, x2) ...``, so the chain rounds the same.
_CHAINED_MERGES = (_L.Add, _L.Multiply, _L.Maximum, _L.Minimum)


def _split_merges(model):
    """The model with each merge of three or more inputs (``_CHAINED_MERGES``, not an
    averaging Add) replaced by a chain of binary merges: ``name_1``, ``name_2``... then
    ``name`` (the last keeps the name, it makes the same output)."""
    graph = Graph(model)

    def chained(node):
        layer = node.layer
        return type(layer) in _CHAINED_MERGES + (Add,) and len(node.inputs) > 2 \
            and not getattr(layer, "average", False)

    split = {node.index for node in graph.nodes if chained(node)}
    if not split:
        return model

    def rewrite(node, rb):
        if node.index not in split:
            return None
        layer = node.layer
        xs = rb.map(node.inputs)
        name = rb.name_for(layer)
        out = xs[0]
        for k, x in enumerate(xs[1:], 1):
            part = name if k == len(xs) - 1 else rb.unique(f"{name}_{k}")
            out = type(layer).from_config({**layer.get_config(), "name": part})([out, x])
        return out

    return rebuild(graph, rewrite)


def _dot_attention(node):
    """The ``(query, value, key)`` TensorRefs of a Keras ``Attention`` node that Dot /
    Softmax / Dot compute (dot scores, no mask, no causal mask, no returned scores, rank-3
    static inputs), or None."""
    layer = node.layer
    if type(layer) is not _L.Attention or layer.score_mode != "dot":
        return None
    inputs = node.args[0] if node.args else node.kwargs.get("inputs")
    if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
        return None
    call = {k: v for k, v in node.kwargs.items() if k != "inputs"}
    if any(call.get(k) for k in ("mask", "return_attention_scores", "use_causal_mask")) \
            or len(node.args) > 1:
        return None
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) == 3 else value
    if any(t.shape.rank != 3 or None in t.shape[1:] or
           getattr(t.tensor, "_keras_mask", None) is not None for t in (query, value, key)):
        return None
    return query, value, key


def _split_layers(model):
    """The model with Keras' dot-product ``Attention`` and ``RepeatVector`` replaced by the
    layers computing the same (see :func:`replace_aliases`)."""
    graph = Graph(model)
    found = {node.index for node in graph.nodes
             if _dot_attention(node) is not None or (type(node.layer) is _L.RepeatVector
                                                     and node.inputs[0].shape[1] is not None)}
    if not found:
        return model

    def rewrite(node, rb):
        if node.index not in found:
            return None
        layer = node.layer
        name = rb.name_for(layer)
        if type(layer) is _L.RepeatVector:
            x = rb.map(node.inputs[0])
            x = _L.Reshape((1, int(x.shape[1])), name=rb.unique(f"{name}/row"))(x)
            return _L.UpSampling1D(int(layer.n), name=name)(x)
        query, value, key = rb.map(_dot_attention(node))
        scores = _L.Dot(axes=(2, 2), name=rb.unique(f"{name}/scores"))([query, key])
        if layer.use_scale:
            scores = _L.Rescaling(float(layer.scale.numpy()),
                                  name=rb.unique(f"{name}/scale"))(scores)
        weights = _L.Softmax(axis=-1, name=rb.unique(f"{name}/softmax"))(scores)
        return _L.Dot(axes=(2, 1), name=name)([weights, value])

    return rebuild(graph, rewrite)


def replace_aliases(model):
    """Replaces layers by the supported layer that computes the same function.

    * ``ELU()`` (alpha 1) becomes ``Activation('elu')`` (an exact integer table);
    * ``Average()`` of two inputs becomes ``Add(average=True)`` (quantizeml's Add: the exact
      sum with one more fractional bit);
    * ``ThresholdedReLU(theta=0)`` becomes ``ReLU()``;
    * ``TimeDistributed(Dense)`` (or of an Activation, ReLU, LeakyReLU or Dropout) becomes the
      inner layer itself, with its weights: Dense acts on the last axis of any rank;
    * ``Resizing`` (nearest or bilinear, no cropping) to a multiple of its static input size
      becomes ``UpSampling2D`` by those factors (both are ``tf.image.resize``);
    * Keras' dot-product ``Attention()([query, value(, key)])`` (no mask, no causal mask, no
      returned scores, static rank-3 inputs) becomes ``Dot(axes=(2, 2))([query, key])``
      (``<name>/scores``), ``Rescaling(scale)`` with ``use_scale`` (``<name>/scale``),
      ``Softmax(axis=-1)`` (``<name>/softmax``) and ``Dot(axes=(2, 1))([weights, value])``
      named as the layer (its dropout is an identity at inference);
    * ``RepeatVector(n)`` becomes ``Reshape((1, C))`` (``<name>/row``) and
      ``UpSampling1D(n)`` (nearest: the same copies);
    * an ``Add``, ``Multiply``, ``Maximum`` or ``Minimum`` of three or more inputs becomes a
      chain of binary ones (``name_1``, ``name_2``, ..., the last keeping ``name``): Keras
      merges its inputs one after the other, so the chain computes the same, bit for bit.

    Other configurations (an ELU of another alpha, an average of three inputs) stay as they
    are (quantize() reports them). The outputs are unchanged; the input model is not modified.

    Args:
        model (keras.Model): a model.

    Returns:
        keras.Model: the original model (nothing to replace) or the updated model.

    Example:
        ```python
        model = replace_aliases(model)  # ELU() -> Activation('elu')
        ```
    """
    return _split_layers(_split_merges(substitute_layers(model, _alias)))
