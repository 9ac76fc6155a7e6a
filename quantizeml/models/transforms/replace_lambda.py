"""Replaces Lambda, TFOpLambda and Activation layers by their equivalent Keras layer."""
import inspect

import tensorflow as tf
import tf_keras as keras

from ..graph import Graph, TensorRef, rebuild

__all__ = ["replace_lambda"]


def _unwrap(function):
    return inspect.unwrap(function)


# Lambda functions recognised by identity (after unwrapping the TF dispatch decorators)
_RELU = {_unwrap(tf.nn.relu)}
_RELU6 = {_unwrap(tf.nn.relu6)}
_KERAS_RELU = {_unwrap(keras.activations.relu)}
_TRANSPOSE = {_unwrap(tf.transpose), _unwrap(tf.compat.v1.transpose)}
_RESHAPE = {_unwrap(tf.reshape)}
_ADD = {_unwrap(tf.math.add_n)}

# TFOpLambda layers are recognised by the canonical TF API name in their config
_OP_RELU = {"nn.relu"}
_OP_RELU6 = {"nn.relu6"}
_OP_TRANSPOSE = {"transpose", "compat.v1.transpose"}
_OP_RESHAPE = {"reshape", "compat.v1.reshape"}
_OP_ADD = {"math.add", "__operators__.add", "add", "compat.v1.add"}


def _bind(function, args, kwargs):
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    return bound.arguments


def _relu(max_value=None, negative_slope=0.0, threshold=0.0):
    return keras.layers.ReLU, {"max_value": max_value, "negative_slope": negative_slope,
                               "threshold": threshold}


def _permute(tensor, perm):
    rank = tensor.shape.rank if isinstance(tensor, TensorRef) else None
    if rank is None or not isinstance(perm, (list, tuple)) or len(perm) != rank \
            or not all(isinstance(p, int) for p in perm) or sorted(perm) != list(range(rank)) \
            or perm[0] != 0:
        return None
    return keras.layers.Permute, {"dims": tuple(perm[1:])}, tensor


def _reshape(tensor, shape):
    if not isinstance(tensor, TensorRef) or not isinstance(shape, (list, tuple)) \
            or len(shape) < 2 or not all(isinstance(s, int) for s in shape) \
            or shape[0] != -1 or list(shape[1:]).count(-1) > 1:
        return None
    return keras.layers.Reshape, {"target_shape": tuple(shape[1:])}, tensor


def _add(tensors):
    if len(tensors) < 2 or not all(isinstance(t, TensorRef) for t in tensors):
        return None
    shapes = {tuple(t.shape.as_list()) if t.shape.rank is not None else None for t in tensors}
    if len(shapes) != 1 or None in shapes:
        return None
    return keras.layers.Add, {}, list(tensors)


def _lambda_replacement(node):
    layer = node.layer
    if not node.args or node.kwargs:
        return None
    inputs = node.args[0]
    base = _unwrap(layer.function)
    arguments = _bind(layer.function, (inputs,), layer.arguments or {})
    if arguments is None:
        return None
    if base in _RELU or base in _RELU6:
        if not isinstance(inputs, TensorRef):
            return None
        return (*_relu(max_value=6.0 if base in _RELU6 else None), inputs)
    if base in _KERAS_RELU:
        if not isinstance(inputs, TensorRef):
            return None
        return (*_relu(arguments.get("max_value"), arguments.get("alpha", 0.0),
                       arguments.get("threshold", 0.0)), inputs)
    if base in _TRANSPOSE and not arguments.get("conjugate", False):
        return _permute(inputs, arguments.get("perm"))
    if base in _RESHAPE:
        return _reshape(inputs, arguments.get("shape"))
    if base in _ADD and isinstance(inputs, (list, tuple)):
        return _add(inputs)
    return None


def _op_replacement(node):
    name = node.layer.get_config().get("function")
    arguments = _bind(node.layer.function, node.args, node.kwargs)
    if arguments is None:
        return None
    values = list(arguments.values())
    if name in _OP_RELU or name in _OP_RELU6:
        if not isinstance(values[0], TensorRef):
            return None
        return (*_relu(max_value=6.0 if name in _OP_RELU6 else None), values[0])
    if name in _OP_TRANSPOSE and not arguments.get("conjugate", False):
        return _permute(values[0], arguments.get("perm"))
    if name in _OP_RESHAPE:
        return _reshape(values[0], arguments.get("shape"))
    if name in _OP_ADD:
        return _add(values[:2])
    return None


def _activation_replacement(node, outputs):
    activation = node.layer.get_config()["activation"]
    if len(node.inputs) != 1:
        return None
    if activation == "softmax" and not any(t.key in outputs for t in node.outputs):
        # a softmax inside the model (attention weights): the Softmax layer quantize()
        # quantizes; one that gives a model output stays an Activation (the float tail)
        return keras.layers.Softmax, {"axis": -1}, node.inputs[0]
    if activation not in ("relu", "relu6"):
        return None
    return (*_relu(max_value=6.0 if activation == "relu6" else None), node.inputs[0])


def _replacement(node, outputs=()):
    """``(class, config, inputs)`` of the layer that replaces ``node``, or None (``outputs``:
    the keys of the model output tensors)."""
    if type(node.layer) is keras.layers.Lambda:
        return _lambda_replacement(node)
    if type(node.layer) is keras.layers.Activation:
        return _activation_replacement(node, outputs)
    if type(node.layer).__name__ == "TFOpLambda" and hasattr(node.layer, "function"):
        return _op_replacement(node)
    return None


def replace_lambda(model):
    """Replaces lambda layers from a model with their equivalent Keras layer.

    This transform handles the following replacements:

    - Lambda(relu) or Activation('relu') → ReLU, Lambda(relu6) or Activation('relu6') →
      ReLU(max_value=6),
    - Activation('softmax') inside the model (not giving a model output) → Softmax(axis=-1),
    - Lambda(transpose) → Permute (when the batch axis stays first),
    - Lambda(reshape) → Reshape (when the target shape starts with -1 for the batch),
    - Lambda(add) → Add (for inputs of the same static shape).

    Lambda layers are recognised by their function (``tf.nn.relu``, ``tf.nn.relu6``,
    ``keras.activations.relu``, ``tf.transpose``, ``tf.reshape``, ``tf.math.add_n``) and
    arguments; the TFOpLambda layers that tf_keras creates when TF functions are called on
    symbolic tensors (``tf.nn.relu(x)``, ``tf.transpose(x, perm)``, ``tf.reshape(x, shape)``,
    ``tf.math.add(x, y)``, ``x + y``) by the function name in their config and their call
    arguments. Python lambdas and other functions are left as is. The new layers take the
    name of the layer they replace.

    Args:
        model (keras.Model): the model of interest

    Returns:
        keras.Model: the original model or a new one with lambda replaced.

    Example:
        ```python
        x = keras.layers.Lambda(tf.nn.relu)(x)  # becomes keras.layers.ReLU()
        model = replace_lambda(model)
        ```
    """
    graph = Graph(model)
    outputs = {ref.key for ref in graph.outputs}
    found = {}
    for node in graph.nodes:
        replacement = _replacement(node, outputs)
        if replacement is not None:
            found[node.index] = replacement
    if not found:
        return model

    def rewrite(node, rb):
        if node.index not in found:
            return None
        cls, config, inputs = found[node.index]
        layer = cls(**config, name=rb.name_for(node.layer))
        return layer(rb.map(inputs))

    return rebuild(graph, rewrite)
