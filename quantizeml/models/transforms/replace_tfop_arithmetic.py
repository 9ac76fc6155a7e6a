"""Replaces the TFOpLambda arithmetic and activations by Keras layers."""
import inspect

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ...layers.reshaping import Slicing
from ...layers.table import absolute
from ...layers.tokens import AddPositionEmbs, ExtractToken
from ..graph import Graph, TensorRef, rebuild

__all__ = ["replace_tfop_arithmetic", "tfop_constant", "tfop_operands"]

# TFOpLambda layers are recognised by the canonical TF API name in their config
_ADD = {"__operators__.add", "math.add", "add", "compat.v1.add"}
_SUBTRACT = {"math.subtract", "subtract", "compat.v1.subtract"}
_MULTIPLY = {"math.multiply", "multiply", "compat.v1.multiply"}
_DIVIDE = {"math.truediv", "truediv", "math.divide", "divide", "compat.v1.divide"}
_NEGATIVE = {"math.negative", "negative"}
_MERGE = {**{n: keras.layers.Add for n in _ADD}, **{n: keras.layers.Subtract for n in _SUBTRACT},
          **{n: keras.layers.Multiply for n in _MULTIPLY}}
# unary op -> Activation name (the keras activation calls the same TF op)
_ACTIVATIONS = {"math.sigmoid": "sigmoid", "nn.sigmoid": "sigmoid", "sigmoid": "sigmoid",
                "math.tanh": "tanh", "nn.tanh": "tanh", "tanh": "tanh",
                "nn.silu": "swish", "nn.swish": "swish",
                "nn.elu": "elu", "nn.selu": "selu",
                "math.softplus": "softplus", "nn.softplus": "softplus",
                "nn.softsign": "softsign", "math.softsign": "softsign",
                "math.exp": "exponential", "exp": "exponential"}
_RELU = {"nn.relu": None, "nn.relu6": 6.0}
_LEAKY_RELU = {"nn.leaky_relu"}
_GELU = {"nn.gelu"}
_SOFTMAX = {"nn.softmax", "math.softmax"}
_SQUARE = {"math.square", "square"}
_ABS = {"math.abs", "abs"}
_POW = {"math.pow", "pow"}
# of two tensors -> Maximum / Minimum; maximum(x, 0) -> ReLU
_EXTREMA = {"math.maximum": keras.layers.Maximum, "maximum": keras.layers.Maximum,
            "math.minimum": keras.layers.Minimum, "minimum": keras.layers.Minimum}
# moves of values between static shapes -> Reshape (and Permute)
_RESHAPES = {"expand_dims", "compat.v1.expand_dims", "squeeze", "compat.v1.squeeze"}
_DEPTH_TO_SPACE = {"nn.depth_to_space", "compat.v1.depth_to_space", "depth_to_space"}
_SPACE_TO_DEPTH = {"nn.space_to_depth", "compat.v1.space_to_depth", "space_to_depth"}
# reductions over the spatial (or time) axes -> global pooling; concatenation
_REDUCTIONS = {"math.reduce_mean": "avg", "reduce_mean": "avg",
               "math.reduce_max": "max", "reduce_max": "max",
               "math.reduce_sum": "sum", "reduce_sum": "sum"}
_GLOBAL_POOLING = {("avg", 4): keras.layers.GlobalAveragePooling2D,
                   ("max", 4): keras.layers.GlobalMaxPooling2D,
                   ("avg", 3): keras.layers.GlobalAveragePooling1D,
                   ("max", 3): keras.layers.GlobalMaxPooling1D}
_CONCAT = {"concat"}
_GETITEM = {"__operators__.getitem"}
_SPLIT = {"split"}
_CLIP = {"clip_by_value"}
_MATMUL = {"linalg.matmul", "matmul", "math.matmul"}
_RESIZE = {"image.resize"}
#: The key of a replacement's config that holds the weights set after its first call.
_WEIGHTS = "__weights__"
#: The first item of a replacement made of several layers applied one after the other:
#: ``(_CHAIN, [(class, config), ...], inputs)``.
_CHAIN = "__chain__"


def _function_name(layer):
    if type(layer).__name__ not in ("TFOpLambda", "SlicingOpLambda") \
            or not hasattr(layer, "function"):
        return None
    return layer.get_config().get("function")


def _arguments(node):
    """The bound call arguments of a TFOpLambda node (name -> value), or None."""
    try:
        bound = inspect.signature(node.layer.function).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    return bound.arguments


def tfop_constant(value, tensor):
    """A constant operand of an elementwise op on ``tensor`` as a Rescaling parameter.

    Args:
        value: a Python number, numpy array or eager tensor.
        tensor (TensorRef): the tensor operand.

    Returns:
        float, list or None: a float (a scalar), a list of floats (one per channel of the last
        axis) or None when ``value`` is not such a constant (a tensor, a constant that would
        broadcast the other axes, or a non-finite value).
    """
    if isinstance(value, TensorRef) or isinstance(value, (str, bytes)) or value is None:
        return None
    if tf.is_tensor(value):
        if not hasattr(value, "numpy"):
            return None  # a symbolic tensor
        value = value.numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    rank, channels = tensor.shape.rank, tensor.shape[-1] if tensor.shape.rank else None
    if not np.all(np.isfinite(array)) or rank is None or array.ndim > rank:
        return None
    if array.size == 1:
        return float(array.reshape(-1)[0])
    if channels is None or array.shape[-1] != channels or \
            any(d != 1 for d in array.shape[:-1]):
        return None
    return [float(v) for v in array.reshape(-1)]


def tfop_operands(node):
    """``(name, x, y)`` of a binary TFOpLambda node: its function name and first two operands,
    or None."""
    name = _function_name(node.layer)
    if name is None:
        return None
    arguments = _arguments(node)
    if arguments is None or len(arguments) < 2:
        return None
    x, y = list(arguments.values())[:2]
    return name, x, y


def _same_rank(a, b, out):
    """Whether a Merge layer computes ``op(a, b)`` with the shape of ``out``."""
    if a.shape.rank is None or a.shape.rank != b.shape.rank:
        return False
    try:
        shape = tf.broadcast_static_shape(a.shape, b.shape)
    except ValueError:
        return False
    return shape.as_list()[1:] == out.shape.as_list()[1:]


def _rescaling(scale, offset=0.0):
    return keras.layers.Rescaling, {"scale": scale, "offset": offset}


def _negate(value):
    return [-v for v in value] if isinstance(value, list) else -value


def _binary(node):
    operands = tfop_operands(node)
    if operands is None:
        return None
    name, x, y = operands
    out = node.outputs[0] if len(node.outputs) == 1 else None
    if out is None:
        return None
    if isinstance(x, TensorRef) and isinstance(y, TensorRef):
        if name in _MERGE and _same_rank(x, y, out):
            return _MERGE[name], {}, [x, y]
        return None
    tensor, value, tensor_first = (x, y, True) if isinstance(x, TensorRef) else (y, x, False)
    if not isinstance(tensor, TensorRef) or not tensor.tensor.dtype.is_floating:
        return None
    c = tfop_constant(value, tensor)
    if c is None:
        return _position_embedding(name, tensor, value, tensor_first)
    if name in _ADD:
        return (*_rescaling(1.0, c), tensor)
    if name in _SUBTRACT:
        return (*(_rescaling(1.0, _negate(c)) if tensor_first else _rescaling(-1.0, c)), tensor)
    if name in _MULTIPLY:
        return (*_rescaling(c), tensor)
    if name in _DIVIDE and tensor_first:
        values = c if isinstance(c, list) else [c]
        if any(v == 0 for v in values):
            return None
        return (*_rescaling([1.0 / v for v in c] if isinstance(c, list) else 1.0 / c), tensor)
    return None


def _position_embedding(name, tensor, value, tensor_first):
    """``x + c``, ``c + x`` or ``x - c`` with ``c`` a constant of the shape of a
    ``(batch, tokens, dim)`` tensor's tokens (``(tokens, dim)`` or ``(1, tokens, dim)``, e.g.
    Keras examples' ``x + Embedding(tokens, dim)(tf.range(tokens))``) -> ``AddPositionEmbs``
    holding ``c`` (``-c``), or None."""
    if name not in _ADD and not (name in _SUBTRACT and tensor_first):
        return None
    shape = tensor.shape
    if shape.rank != 3 or shape[1] is None or shape[2] is None:
        return None
    if tf.is_tensor(value):
        if not hasattr(value, "numpy"):
            return None
        value = value.numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    tokens = (int(shape[1]), int(shape[2]))
    if array.shape not in (tokens, (1, *tokens)) or not np.all(np.isfinite(array)):
        return None
    array = np.reshape(array if name in _ADD else -array, (1, *tokens))
    return AddPositionEmbs, {_WEIGHTS: [array]}, tensor


def _unary(node, name):
    arguments = _arguments(node)
    if arguments is None:
        return None
    values = list(arguments.values())
    x = values[0]
    if not isinstance(x, TensorRef) or not x.tensor.dtype.is_floating:
        return None
    if name in _NEGATIVE:
        return (*_rescaling(-1.0), x)
    if name in _RELU:
        return keras.layers.ReLU, {"max_value": _RELU[name]}, x
    if name in _LEAKY_RELU:
        alpha = tfop_constant(arguments.get("alpha", 0.2), x)
        return None if not isinstance(alpha, float) else \
            (keras.layers.ReLU, {"negative_slope": alpha}, x)
    if name in _GELU:
        return None if arguments.get("approximate", False) else \
            (keras.layers.Activation, {"activation": "gelu"}, x)
    if name in _SQUARE:
        return keras.layers.Multiply, {}, [x, x]
    if name in _ABS:
        return keras.layers.Activation, {"activation": absolute}, x
    if name in _SOFTMAX:
        axis = arguments.get("axis", -1)
        axis = -1 if axis is None else axis
        return None if isinstance(axis, bool) or not isinstance(axis, int) else \
            (keras.layers.Softmax, {"axis": axis}, x)
    if name in _ACTIVATIONS:
        return keras.layers.Activation, {"activation": _ACTIVATIONS[name]}, x
    if name in _CLIP:
        low = tfop_constant(arguments.get("clip_value_min"), x)
        high = tfop_constant(arguments.get("clip_value_max"), x)
        if low == 0.0 and isinstance(high, float) and high > 0:
            return keras.layers.ReLU, {"max_value": high}, x
    return None


def _reduction(node, kind):
    """``tf.reduce_mean/max(x, axis=[1, 2])`` of a rank-4 tensor (``axis=1`` of a rank-3
    one) -> the global pooling of these axes, ``keepdims`` kept."""
    arguments = _arguments(node)
    if arguments is None:
        return None
    x, axis = arguments.get("input_tensor"), arguments.get("axis")
    if not isinstance(x, TensorRef) or not x.tensor.dtype.is_floating or axis is None:
        return None
    rank = x.shape.rank
    cls = _GLOBAL_POOLING.get((kind, rank))
    try:
        axes = {int(a) % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])}
    except (TypeError, ValueError):
        return None
    keepdims = bool(arguments.get("keepdims", False))
    if axes == {rank - 1} and rank >= 3 and None not in x.shape[1:]:
        return _channel_reduction(x, kind, keepdims)
    if cls is None or axes != set(range(1, rank - 1)):
        return None
    return cls, {"keepdims": keepdims}, x


def _channel_reduction(x, kind, keepdims):
    """A mean, sum or maximum over the last axis (CBAM's channel pooling): mean and sum as a
    ``Dense(1, use_bias=False)`` of kernel ``1 / C`` or 1 (a weighted sum over the last axis,
    equal to float rounding), the maximum as ``Reshape((P, C, 1))``, ``MaxPooling2D((1,
    C))`` and a Reshape back (the same values); a last Reshape drops the axis without
    ``keepdims``."""
    shape = [int(d) for d in x.shape[1:]]
    channels, kept = shape[-1], shape[:-1] + [1]
    layers = []
    if kind == "max":
        positions = int(np.prod(shape[:-1]))
        layers += [(keras.layers.Reshape, {"target_shape": (positions, channels, 1)}),
                   (keras.layers.MaxPooling2D, {"pool_size": (1, channels)}),
                   (keras.layers.Reshape, {"target_shape": tuple(kept)})]
    else:
        weight = 1.0 / channels if kind == "avg" else 1.0
        layers.append((keras.layers.Dense, {"units": 1, "use_bias": False, _WEIGHTS: [
            np.full((channels, 1), weight, np.float32)]}))
    if not keepdims:
        layers.append((keras.layers.Reshape, {"target_shape": tuple(shape[:-1])}))
    return _CHAIN, layers, x


def _concat(node):
    """``tf.concat([x, y, ...], axis)`` of float tensors -> ``Concatenate(axis)``."""
    arguments = _arguments(node)
    if arguments is None:
        return None
    values, axis = arguments.get("values"), arguments.get("axis")
    if not isinstance(values, (list, tuple)) or len(values) < 2 or not isinstance(axis, int) \
            or not all(isinstance(v, TensorRef) and v.tensor.dtype.is_floating
                       for v in values):
        return None
    return keras.layers.Concatenate, {"axis": axis}, list(values)


def _slice_bounds(item, dim):
    """``(begin, end, step)`` of a slice item (a dict of tf_keras' serialized slice) on an
    axis of static size ``dim``, or None when it is not a plain forward slice."""
    if not isinstance(item, dict) or set(item) != {"start", "stop", "step"}:
        return None
    step = 1 if item["step"] is None else item["step"]
    if not isinstance(step, int) or step < 1 or dim is None:
        return None
    start = 0 if item["start"] is None else item["start"]
    stop = dim if item["stop"] is None else item["stop"]
    if not isinstance(start, int) or not isinstance(stop, int):
        return None
    start, stop = (v + dim if v < 0 else v for v in (start, stop))
    start, stop = min(max(start, 0), dim), min(max(stop, 0), dim)
    return start, max(start, stop), step


def _slicing(node):
    """``x[...]`` of slices only (an Ellipsis allowed, the batch axis whole) -> Slicing."""
    if len(node.args) != 2 or node.kwargs or not isinstance(node.args[0], TensorRef):
        return None
    x, spec = node.args
    spec = list(spec) if isinstance(spec, (tuple, list)) else [spec]
    shape = x.shape
    if shape is None or shape.rank is None or spec.count(Ellipsis) > 1 \
            or not x.tensor.dtype.is_floating:
        return None
    rank = shape.rank
    if Ellipsis in spec:
        at = spec.index(Ellipsis)
        whole = {"start": None, "stop": None, "step": None}
        spec = spec[:at] + [whole] * (rank - len(spec) + 1) + spec[at + 1:]
    spec = spec + [{"start": None, "stop": None, "step": None}] * (rank - len(spec))
    batch = spec[0] if len(spec) == rank else None
    if not isinstance(batch, dict) or batch.get("start") not in (None, 0) \
            or batch.get("stop") is not None or batch.get("step") not in (None, 1):
        return None
    indices = [axis for axis, item in enumerate(spec) if isinstance(item, int)
               and not isinstance(item, bool)]
    if indices:
        return _extract_token(x, spec, indices)
    bounds = [_slice_bounds(item, dim) for item, dim in zip(spec[1:], shape[1:])]
    if any(b is None for b in bounds):
        return None
    begin, end, strides = (list(v) for v in zip(*bounds))
    return Slicing, {"begin": begin, "end": end, "strides": strides}, x


def _extract_token(x, spec, indices):
    """``x[:, i]`` (one integer index on a static non-batch axis, every other axis whole) ->
    ``ExtractToken(i, axis)`` (a negative index counted from the end)."""
    whole = {"start": None, "stop": None, "step": None}
    if len(indices) != 1 or any(item != whole for axis, item in enumerate(spec)
                                if axis not in (0, indices[0])):
        return None
    axis = indices[0]
    dim, index = x.shape[axis], spec[axis]
    if dim is None or not -dim <= index < dim:
        return None
    return ExtractToken, {"token": index % int(dim), "axis": axis}, x


def _matmul(node):
    """``tf.linalg.matmul(a, b, transpose_a, transpose_b)`` of two rank-3 float tensors (a
    batch of matrices) -> ``Dot(axes)``: ``a @ b`` is ``Dot(axes=(2, 1))``, a transposed
    operand contracts its axis 1 (``a``) or 2 (``b``) instead."""
    args = _arguments(node)
    if args is None:
        return None
    a, b = args.get("a"), args.get("b")
    if not all(isinstance(t, TensorRef) and t.tensor.dtype.is_floating
               and t.shape.rank == 3 for t in (a, b)):
        return None
    if any(args.get(k) for k in ("adjoint_a", "adjoint_b", "a_is_sparse", "b_is_sparse",
                                 "output_type", "grad_a", "grad_b")):
        return None
    axes = (1 if args.get("transpose_a") else 2, 2 if args.get("transpose_b") else 1)
    return keras.layers.Dot, {"axes": axes}, [a, b]


def _resize(node):
    """``tf.image.resize(x, (h, w), method)`` of a rank-4 float tensor, nearest or bilinear,
    no antialias nor aspect ratio -> ``Resizing(h, w, method)`` (the same call)."""
    args = _arguments(node)
    if args is None or not isinstance(args.get("images"), TensorRef):
        return None
    x, size, method = args["images"], args.get("size"), str(args.get("method", "bilinear"))
    if isinstance(size, (tf.TensorShape, np.ndarray)):  # e.g. size=other.shape[1:3]
        size = [None if v is None else int(v) for v in
                (size.as_list() if isinstance(size, tf.TensorShape) else size.tolist())]
    if x.shape.rank != 4 or not x.tensor.dtype.is_floating or args.get("antialias") \
            or args.get("preserve_aspect_ratio") or method not in ("bilinear", "nearest"):
        return None
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return None
    return keras.layers.Resizing, {"height": size[0], "width": size[1],
                                   "interpolation": method}, x


def _extremum(node, name):
    """``tf.maximum(x, y)`` / ``tf.minimum(x, y)`` of two float tensors of the same rank ->
    ``Maximum`` / ``Minimum``; ``tf.maximum(x, 0)`` -> ``ReLU``."""
    args = _arguments(node)
    if args is None:
        return None
    x, y = args.get("x"), args.get("y")
    if isinstance(y, TensorRef) and not isinstance(x, TensorRef):
        x, y = y, x
    if not isinstance(x, TensorRef) or not x.tensor.dtype.is_floating:
        return None
    if isinstance(y, TensorRef):
        out = node.outputs[0]
        return (_EXTREMA[name], {}, [x, y]) if y.tensor.dtype.is_floating \
            and _same_rank(x, y, out) else None
    if _EXTREMA[name] is keras.layers.Maximum and tfop_constant(y, x) == 0.0:
        return keras.layers.ReLU, {}, x
    return None


def _pow(node):
    """``tf.pow(x, 2)`` -> ``Multiply()([x, x])``."""
    args = _arguments(node)
    x = None if args is None else args.get("x")
    if not isinstance(x, TensorRef) or not x.tensor.dtype.is_floating \
            or tfop_constant(args.get("y"), x) != 2.0:
        return None
    return keras.layers.Multiply, {}, [x, x]


def _static(ref):
    """The static non-batch dimensions of a tensor with a free batch axis, or None."""
    shape = ref.shape
    if shape.rank is None or shape.rank < 1 or any(d is None for d in shape[1:]):
        return None
    return [int(d) for d in shape[1:]]


def _reshape(node):
    """``tf.expand_dims`` / ``tf.squeeze`` of a static shape that keep the batch axis ->
    ``Reshape`` to the output shape (the same values in the same order)."""
    args = _arguments(node)
    if args is None:
        return None
    x = args.get("input")
    if not isinstance(x, TensorRef) or not x.tensor.dtype.is_floating:
        return None
    before, after = _static(x), _static(node.outputs[0])
    if before is None or after is None or node.outputs[0].shape.rank < 2 \
            or int(np.prod(before)) != int(np.prod(after)):
        return None
    return keras.layers.Reshape, {"target_shape": tuple(after)}, x


def _depth_space(node, to_space):
    """``tf.nn.depth_to_space(x, r)`` (pixel shuffle) / ``tf.nn.space_to_depth(x, r)`` of a
    static NHWC tensor -> ``Reshape``, ``Permute((1, 3, 2, 4, 5))``, ``Reshape``: TensorFlow's
    order, ``out[h r + i, w r + j, c] = in[h, w, (i r + j) C' + c]``."""
    args = _arguments(node)
    if args is None:
        return None
    x, r = args.get("input"), args.get("block_size")
    shape = None if not isinstance(x, TensorRef) else _static(x)
    if shape is None or len(shape) != 3 or not isinstance(r, int) or r < 2 \
            or args.get("data_format", "NHWC") != "NHWC" or not x.tensor.dtype.is_floating:
        return None
    h, w, c = shape
    if to_space:
        if c % (r * r):
            return None
        first, last = (h, w, r, r, c // (r * r)), (h * r, w * r, c // (r * r))
    else:
        if h % r or w % r:
            return None
        first, last = (h // r, r, w // r, r, c), (h // r, w // r, r * r * c)
    return _CHAIN, [(keras.layers.Reshape, {"target_shape": first}),
                    (keras.layers.Permute, {"dims": (1, 3, 2, 4, 5)}),
                    (keras.layers.Reshape, {"target_shape": last})], x


def _split(node):
    """``tf.split(x, n or sizes, axis)`` of a static non-batch axis -> one Slicing per part
    (a list of ``(class, config, inputs)``)."""
    args = _arguments(node)
    if args is None or not isinstance(args.get("value"), TensorRef) or args.get("num"):
        return None
    x, splits, axis = args["value"], args["num_or_size_splits"], args["axis"]
    shape = x.shape
    if shape is None or shape.rank is None or not isinstance(axis, int) \
            or not x.tensor.dtype.is_floating:
        return None
    axis = axis + shape.rank if axis < 0 else axis
    if not 0 < axis < shape.rank or shape[axis] is None:
        return None
    dim = int(shape[axis])
    if isinstance(splits, int) and not isinstance(splits, bool):
        if splits < 1 or dim % splits:
            return None
        sizes = [dim // splits] * splits
    elif isinstance(splits, (list, tuple)) and all(isinstance(v, int) and v >= 0
                                                   for v in splits) and sum(splits) == dim:
        sizes = list(splits)
    else:
        return None
    if len(sizes) != len(node.outputs):
        return None
    parts, start = [], 0
    for size in sizes:
        begin = [0] * (shape.rank - 1)
        end = [int(d) if d is not None else 2**31 - 1 for d in shape[1:]]
        begin[axis - 1], end[axis - 1] = start, start + size
        parts.append((Slicing, {"begin": begin, "end": end,
                                "strides": [1] * (shape.rank - 1)}, x))
        start += size
    return parts


def _replacement(node):
    """``(class, config, inputs)`` of the layer that replaces ``node`` (a list of them, one
    per output, for a split), or None."""
    name = _function_name(node.layer)
    if name in _SPLIT:
        return _split(node)
    if name is None or len(node.outputs) != 1:
        return None
    if name in _ADD or name in _SUBTRACT or name in _MULTIPLY or name in _DIVIDE:
        return _binary(node)
    if name in _NEGATIVE or name in _RELU or name in _LEAKY_RELU or name in _GELU \
            or name in _SOFTMAX or name in _ACTIVATIONS or name in _CLIP or name in _SQUARE \
            or name in _ABS:
        return _unary(node, name)
    if name in _REDUCTIONS:
        return _reduction(node, _REDUCTIONS[name])
    if name in _CONCAT:
        return _concat(node)
    if name in _GETITEM:
        return _slicing(node)
    if name in _MATMUL:
        return _matmul(node)
    if name in _RESIZE:
        return _resize(node)
    if name in _EXTREMA:
        return _extremum(node, name)
    if name in _POW:
        return _pow(node)
    if name in _RESHAPES:
        return _reshape(node)
    if name in _DEPTH_TO_SPACE or name in _SPACE_TO_DEPTH:
        return _depth_space(node, name in _DEPTH_TO_SPACE)
    return None


def _make(cls, config, name, inputs):
    """A new layer ``cls(**config)`` called on ``inputs``, its ``_WEIGHTS`` set."""
    config = dict(config)
    weights = config.pop(_WEIGHTS, None)
    layer = cls(**config, name=name)
    outputs = layer(inputs)
    if weights is not None:
        layer.set_weights(weights)
    return outputs


def replace_tfop_arithmetic(model):
    """Replaces the TFOpLambda arithmetic and activation layers of a model by Keras layers.

    tf_keras wraps the TF functions called on symbolic tensors (``x + y``, ``x * 0.5``,
    ``tf.math.sigmoid(x)``) into TFOpLambda layers, which quantize() cannot quantize. This
    transform rewrites them (recognised by the TF API name in their config and their call
    arguments):

    - of two tensors of the same rank (broadcasting allowed): ``x + y``, ``tf.math.add`` ->
      Add, ``tf.math.subtract`` -> Subtract, ``tf.math.multiply`` -> Multiply (the operands keep
      their order),
    - of a float tensor and a constant (a scalar or one value per channel of the last axis):
      ``x + c`` -> ``Rescaling(1, c)``, ``x - c`` -> ``Rescaling(1, -c)``,
      ``c - x`` -> ``Rescaling(-1, c)``, ``x * c`` -> ``Rescaling(c)``,
      ``x / c`` -> ``Rescaling(1 / c)``, ``-x`` -> ``Rescaling(-1)``,
    - ``x + c`` / ``x - c`` on a ``(batch, tokens, dim)`` tensor with a constant of shape
      ``(tokens, dim)`` (position embeddings computed once, e.g.
      ``x + Embedding(tokens, dim)(tf.range(tokens))``) -> :class:`AddPositionEmbs`
      holding the constant (trainable afterwards),
    - ``tf.nn.relu`` -> ReLU, ``tf.nn.relu6`` -> ``ReLU(max_value=6)``,
      ``tf.clip_by_value(x, 0, m)`` -> ``ReLU(max_value=m)``,
      ``tf.nn.leaky_relu(x, alpha)`` -> ``ReLU(negative_slope=alpha)``,
    - ``tf.math.sigmoid``, ``tf.math.tanh``, ``tf.nn.silu`` (``'swish'``), ``tf.nn.elu``,
      ``tf.nn.selu``, ``tf.math.softplus``, ``tf.nn.softsign``, ``tf.math.exp``
      (``'exponential'``) and ``tf.nn.gelu`` (exact) -> ``Activation(name)``;
      ``tf.nn.softmax(x, axis)`` -> ``Softmax(axis)``; ``tf.linalg.matmul(a, b,
      transpose_a, transpose_b)`` of two rank-3 tensors -> ``Dot(axes)``;
      ``tf.image.resize(x, (h, w), method)`` (nearest or bilinear, no antialias) ->
      ``Resizing(h, w, method)``,
    - ``x[...]`` of forward slices (``x[..., :16]``, ``x[:, 1:5, ::2, :]``; static shapes,
      the batch axis whole, no integer index or new axis) -> :class:`Slicing`; ``x[:, i]``
      (one integer index, e.g. a class token, every other axis whole) -> ``ExtractToken(i,
      axis)``; and
      ``tf.split(x, n or sizes, axis)`` of a static non-batch axis -> one Slicing per part,
    - ``tf.reduce_mean`` / ``tf.reduce_max`` over axes ``[1, 2]`` of a rank-4 tensor (axis 1
      of a rank-3 one) -> GlobalAveragePooling2D / GlobalMaxPooling2D (1-D), ``keepdims``
      kept; ``tf.reduce_mean`` / ``tf.reduce_sum`` / ``tf.reduce_max`` over the last axis of
      a static shape (CBAM's channel pooling) -> ``Dense(1, use_bias=False)`` of kernel
      ``1 / C`` or 1 / ``Reshape``, ``MaxPooling2D((1, C))``, ``Reshape`` (``<name>/0``...,
      the last named as the call; a Reshape drops the axis without ``keepdims``);
      ``tf.math.square(x)`` and ``tf.pow(x, 2)`` -> ``Multiply()([x, x])``; ``tf.abs(x)`` ->
      ``Activation(absolute)`` (a table); ``tf.concat`` of
      float tensors -> Concatenate; ``tf.maximum`` / ``tf.minimum`` of two tensors ->
      Maximum / Minimum, ``tf.maximum(x, 0)`` -> ReLU,
    - ``tf.expand_dims`` / ``tf.squeeze`` of static shapes -> ``Reshape``;
      ``tf.nn.depth_to_space(x, r)`` (pixel shuffle) and ``tf.nn.space_to_depth(x, r)`` ->
      ``Reshape``, ``Permute((1, 3, 2, 4, 5))``, ``Reshape`` (``<name>/0``, ``<name>/1``,
      then ``<name>``).

    Other TFOpLambda layers (``c / x``, ``x / y``, constants that broadcast other axes, integer
    tensors) are left as is. The new layers take the name of the layer they replace, and the
    outputs stay equal (``x / c`` becomes ``x * (1 / c)``: equal to float rounding).

    Args:
        model (keras.Model): the model of interest.

    Returns:
        keras.Model: the original model, or a new one with the TFOpLambda layers replaced.

    Example:
        ```python
        y = keras.layers.Conv2D(8, 3)(x) * 0.5 + 1.0   # two TFOpLambda layers
        model = replace_tfop_arithmetic(model)          # two Rescaling layers
        ```
    """
    graph = Graph(model)
    found = {}
    for node in graph.nodes:
        replacement = _replacement(node)
        if replacement is not None:
            found[node.index] = replacement
    if not found:
        return model

    def rewrite(node, rb):
        if node.index not in found:
            return None
        replacement = found[node.index]
        if isinstance(replacement, list):  # a split: one layer per output
            name = rb.name_for(node.layer)
            return [cls(**config, name=rb.unique(f"{name}_{i}"))(rb.map(inputs))
                    for i, (cls, config, inputs) in enumerate(replacement)]
        if replacement[0] == _CHAIN:  # several layers, the last named as the node's
            _, chain, inputs = replacement
            name, outputs = rb.name_for(node.layer), rb.map(inputs)
            for i, (cls, config) in enumerate(chain):
                last = i == len(chain) - 1
                outputs = _make(cls, config, name if last else rb.unique(f"{name}/{i}"),
                                outputs)
            return outputs
        cls, config, inputs = replacement
        return _make(cls, config, rb.name_for(node.layer), rb.map(inputs))

    return rebuild(graph, rewrite)
