"""Fuses the hard-swish and hard-sigmoid patterns of MobileNetV3 into Activation layers."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ...layers.table import hard_swish
from ..graph import Graph, TensorRef, rebuild
from .replace_tfop_arithmetic import tfop_constant, tfop_operands

__all__ = ["fuse_hard_swish", "hard_sigmoid_relu6", "HARD_SWISH", "HARD_SIGMOID"]

#: The serialized names of the activations the fused layers hold.
HARD_SWISH = "quantizeml>hard_swish"
HARD_SIGMOID = "quantizeml>hard_sigmoid_relu6"


@keras.saving.register_keras_serializable(package="quantizeml", name="hard_sigmoid_relu6")
def hard_sigmoid_relu6(x):
    """Hard sigmoid of MobileNetV3 (and of Keras 3): ``relu6(x + 3) / 6``.

    It is not tf_keras's ``'hard_sigmoid'`` (``clip(0.2 x + 0.5, 0, 1)``): use
    ``keras.layers.Activation(hard_sigmoid_relu6)`` (it serializes as
    ``quantizeml>hard_sigmoid_relu6``).
    """
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


_ADD = {"__operators__.add", "math.add", "add", "compat.v1.add"}
_MULTIPLY = {"math.multiply", "multiply", "compat.v1.multiply"}
_DIVIDE = {"math.truediv", "truediv", "math.divide", "divide", "compat.v1.divide"}


def _is(value, target, rtol=1e-6):
    return isinstance(value, float) and abs(value - target) <= rtol * abs(target)


def _affine(node, scale, offset):
    """The tensor ``x`` when ``node`` computes ``scale * x + offset`` (a TFOpLambda add,
    multiply or divide by a scalar constant, or a Rescaling), else None."""
    layer = node.layer
    if type(layer) is keras.layers.Rescaling and len(node.inputs) == 1:
        config = layer.get_config()
        x = node.inputs[0]
        if _is(tfop_constant(config["scale"], x), scale) and \
                (_is(tfop_constant(config["offset"], x), offset) if offset else
                 tfop_constant(config["offset"], x) == 0.0):
            return x
        return None
    operands = tfop_operands(node)
    if operands is None:
        return None
    name, a, b = operands
    x, c = (a, b) if isinstance(a, TensorRef) else (b, a)
    if not isinstance(x, TensorRef) or isinstance(c, TensorRef):
        return None
    c = tfop_constant(c, x)
    if offset == 0.0 and name in _MULTIPLY and _is(c, scale):
        return x
    if offset == 0.0 and name in _DIVIDE and x is a and _is(c, 1.0 / scale):
        return x
    if scale == 1.0 and name in _ADD and _is(c, offset):
        return x
    return None


def _relu6(node):
    """The input of ``node`` when it is a ReLU(max_value=6), Activation('relu6') or
    tf.nn.relu6, else None."""
    layer = node.layer
    if len(node.inputs) != 1:
        return None
    if type(layer) is keras.layers.ReLU:
        config = layer.get_config()
        values = [None if config[k] is None else float(np.asarray(config[k]))
                  for k in ("max_value", "negative_slope", "threshold")]
        return node.inputs[0] if values == [6.0, 0.0, 0.0] else None
    if type(layer) is keras.layers.Activation:
        return node.inputs[0] if layer.get_config()["activation"] == "relu6" else None
    if type(layer).__name__ == "TFOpLambda" and layer.get_config().get("function") == "nn.relu6":
        return node.inputs[0] if isinstance(node.args[0], TensorRef) else None
    return None


def _product(node):
    """The two tensor operands of ``node`` when it multiplies two tensors, else None."""
    if type(node.layer) is keras.layers.Multiply and len(node.inputs) == 2:
        return node.inputs
    operands = tfop_operands(node)
    if operands is not None and operands[0] in _MULTIPLY and \
            all(isinstance(t, TensorRef) for t in operands[1:]):
        return list(operands[1:])
    return None


def _inner(graph, node):
    """Whether ``node`` can disappear in a fusion: called once, one output read by one node."""
    return graph.single_call(node) and graph.sole_consumer(node) is not None


def _sigmoid_chain(graph, node):
    """``(x, [add, relu6])`` when ``node``'s only input is ``relu6(x + 3)``, else None."""
    if len(node.inputs) != 1:
        return None
    relu = graph.producer(node.inputs[0])
    if relu is None or not _inner(graph, relu) or _relu6(relu) is None:
        return None
    add = graph.producer(relu.inputs[0])
    if add is None or not _inner(graph, add):
        return None
    x = _affine(add, 1.0, 3.0)
    return None if x is None else (x, [add, relu])


def _match_sigmoid(graph, node):
    """``(x, inner nodes)`` when ``node`` computes ``relu6(x + 3) / 6``, else None."""
    if _affine(node, 1.0 / 6.0, 0.0) is None:
        return None
    return _sigmoid_chain(graph, node)


def _match_swish(graph, node):
    """``(x, inner nodes)`` when ``node`` computes ``x * (relu6(x + 3) / 6)`` or
    ``(x * relu6(x + 3)) / 6``, else None."""
    operands = _product(node)
    if operands is not None:
        for i, ref in enumerate(operands):
            sigmoid = graph.producer(ref)
            if sigmoid is None or not _inner(graph, sigmoid):
                continue
            match = _match_sigmoid(graph, sigmoid)
            if match is not None and operands[1 - i].key == match[0].key:
                return match[0], match[1] + [sigmoid]
        return None
    if _affine(node, 1.0 / 6.0, 0.0) is None or len(node.inputs) != 1:
        return None
    product = graph.producer(node.inputs[0])
    operands = _product(product) if product is not None and _inner(graph, product) else None
    if operands is None:
        return None
    for i, ref in enumerate(operands):
        relu = graph.producer(ref)
        if relu is None or not _inner(graph, relu) or _relu6(relu) is None:
            continue
        add = graph.producer(relu.inputs[0])
        if add is None or not _inner(graph, add):
            continue
        x = _affine(add, 1.0, 3.0)
        if x is not None and operands[1 - i].key == x.key:
            return x, [add, relu, product]
    return None


def fuse_hard_swish(model):
    """Fuses the hard-swish and hard-sigmoid patterns of a model into Activation layers.

    MobileNetV3 (``keras.applications.MobileNetV3Small/Large``) computes its activations with
    TFOpLambda additions and multiplications around a ``ReLU(6.)``. This transform rewrites:

    - ``x * (relu6(x + 3) / 6)`` and ``(x * relu6(x + 3)) / 6`` (the product in either operand
      order) into ``Activation(hard_swish)`` (serialized as ``'quantizeml>hard_swish'``),
    - ``relu6(x + 3) / 6`` into ``Activation(hard_sigmoid_relu6)`` (serialized as
      ``'quantizeml>hard_sigmoid_relu6'``; it is not tf_keras's ``'hard_sigmoid'``).

    ``+ 3`` is a TFOpLambda addition of the constant 3 or a ``Rescaling(1, 3)``; ``/ 6`` a
    TFOpLambda multiplication by 1/6, division by 6 or a ``Rescaling(1/6)``; ``relu6`` a
    ``ReLU(max_value=6)``, ``Activation('relu6')`` or ``tf.nn.relu6``; the product a Multiply
    layer or a TFOpLambda multiplication. The intermediate tensors must be read by the pattern
    only (and not be model outputs). The new layer takes the name of the last layer of the
    pattern, and the outputs stay equal to float rounding.

    Args:
        model (keras.Model): the model of interest.

    Returns:
        keras.Model: the original model, or a new one with the patterns fused.

    Example:
        ```python
        model = keras.applications.MobileNetV3Small(weights=None)
        fused = fuse_hard_swish(model)   # Activation(hard_swish) / Activation(hard_sigmoid_relu6)
        ```
    """
    graph = Graph(model)
    fused, bypassed = {}, set()
    for function, match in ((hard_swish, _match_swish), (hard_sigmoid_relu6, _match_sigmoid)):
        for node in graph.nodes:
            if node.index in fused or node.index in bypassed:
                continue
            found = match(graph, node)
            if found is None or any(n.index in fused or n.index in bypassed for n in found[1]):
                continue
            fused[node.index] = (function, found[0])
            bypassed.update(n.index for n in found[1])
    if not fused:
        return model

    def rewrite(node, rb):
        if node.index in bypassed:
            return [rb.map(node.inputs[0])] * len(node.outputs)  # read by the pattern only
        if node.index not in fused:
            return None
        function, x = fused[node.index]
        layer = keras.layers.Activation(function, name=rb.name_for(node.layer))
        return layer(rb.map(x))

    return rebuild(graph, rewrite)
