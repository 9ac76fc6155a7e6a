"""Keras 3 models at the door: their tf_keras twin, layer by layer.

quantizeml works on tf_keras models. A functional or Sequential model built with Keras 3
(``import keras``, or ``tf.keras`` in TF >= 2.16) is rebuilt by :func:`from_keras3` from its
functional graph (``model.get_config()``, public API): each Keras 3 layer becomes the tf_keras
layer of the same class name, built from its translated config, called in the same node order
and given the same weights (the layers that Keras 3's applications define themselves, ConvNeXt's
LayerScale and StochasticDepth and InceptionResNetV2's CustomScaleLayer, become their tf_keras
applications' twins); the Keras 3 elementwise ops of the graph (``x + 3.0``,
``keras.ops.relu(x)``), ``keras.ops.mean`` / ``max`` (axis, keepdims),
``keras.ops.concatenate``, ``keras.ops.matmul`` / ``transpose`` / ``softmax``, slices
(``x[..., :4]``) and ``keras.ops.split`` become TF ops on the
tf_keras tensors (TFOpLambda and SlicingOpLambda layers, that ``sanitize()`` rewrites).
Options tf_keras names otherwise are renamed (LeakyReLU's
``negative_slope`` is tf_keras' ``alpha``). The new model is checked to give the outputs of
the Keras 3 model.

Keras 3 is imported lazily: :func:`is_keras3_model` only looks at ``sys.modules``.
"""
import importlib
import inspect
import sys

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .transforms.fuse_hard_swish import HARD_SIGMOID, HARD_SWISH

__all__ = ["from_keras3", "is_keras3_model"]

# Keras 3 activation names that tf_keras spells differently or defines otherwise
_ACTIVATIONS = {"silu": "swish", "hard_sigmoid": HARD_SIGMOID, "hard_silu": HARD_SWISH,
                "hard_swish": HARD_SWISH}


def _getitem(x, key):
    """Keras 3's ``x[key]`` (``GetItem``) on a tf_keras tensor: a SlicingOpLambda, which
    ``replace_tfop_arithmetic`` turns into a Slicing layer."""
    return x[tuple(key) if isinstance(key, list) else key]


def _split(x, indices_or_sections=2, axis=0):
    """Keras 3's ``ops.split`` (numpy's: a number of equal sections, or split indices) as
    ``tf.split`` (a number of sections, or sizes: the indices of a static axis become sizes)."""
    if isinstance(indices_or_sections, int):
        return tf.split(x, indices_or_sections, axis=axis)
    dim = x.shape[axis]
    if dim is None:
        raise ValueError("from_keras3 expected ops.split indices on a static axis. Received: "
                         f"axis {axis} of shape {x.shape}")
    bounds = [0] + [int(i) for i in indices_or_sections] + [int(dim)]
    return tf.split(x, [b - a for a, b in zip(bounds[:-1], bounds[1:])], axis=axis)


def _transpose(x, axes=None):
    """Keras 3's ``ops.transpose(x, axes)`` (numpy's) as ``tf.transpose(x, perm)``."""
    return tf.transpose(x, perm=axes)


def _depth_to_space(x, block_size, data_format="channels_last"):
    """Keras 3's ``ops.depth_to_space`` (channels_last) as ``tf.nn.depth_to_space``."""
    if data_format != "channels_last":
        raise ValueError(f"from_keras3 expected depth_to_space on channels_last data. "
                         f"Received: data_format={data_format!r}")
    return tf.nn.depth_to_space(x, block_size)


def _space_to_depth(x, block_size, data_format="channels_last"):
    """Keras 3's ``ops.space_to_depth`` (channels_last) as ``tf.nn.space_to_depth``."""
    if data_format != "channels_last":
        raise ValueError(f"from_keras3 expected space_to_depth on channels_last data. "
                         f"Received: data_format={data_format!r}")
    return tf.nn.space_to_depth(x, block_size)


def _reshape(x, newshape):
    """Keras 3's ``ops.reshape(x, newshape)`` (batch axis included) as ``tf.reshape``."""
    return tf.reshape(x, newshape)


# Keras 3 ops (class name in ``keras.src.ops``) -> the TF function applied to the tf_keras
# tensors (arithmetic: a TFOpLambda layer) or an activation name (an Activation layer)
_OPS = {"Add": tf.math.add, "Subtract": tf.math.subtract, "Multiply": tf.math.multiply,
        "Divide": tf.math.truediv, "TrueDivide": tf.math.truediv,
        "Negative": tf.math.negative, "Maximum": tf.math.maximum, "Minimum": tf.math.minimum,
        "Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Tanh": "tanh",
        "Silu": "swish", "Swish": "swish", "HardSigmoid": HARD_SIGMOID,
        "HardSilu": HARD_SWISH, "HardSwish": HARD_SWISH, "GetItem": _getitem,
        "Matmul": tf.linalg.matmul, "Square": tf.math.square, "Power": tf.math.pow,
        "Absolute": tf.math.abs, "Abs": tf.math.abs}
# Keras 3 ops with options -> (TF function, the options it takes as keyword arguments):
# reductions (spatial ones become global pooling layers in quantize()) and concatenation
_OPTION_OPS = {"Mean": (tf.math.reduce_mean, ("axis", "keepdims")),
               "Max": (tf.math.reduce_max, ("axis", "keepdims")),
               "Concatenate": (tf.concat, ("axis",)),
               "Split": (_split, ("indices_or_sections", "axis")),
               "Softmax": (tf.nn.softmax, ("axis",)),
               "Transpose": (_transpose, ("axes",)),
               "Sum": (tf.math.reduce_sum, ("axis", "keepdims")),
               "ExpandDims": (tf.expand_dims, ("axis",)),
               "Squeeze": (tf.squeeze, ("axis",)),
               "Reshape": (_reshape, ("newshape",)),
               "DepthToSpace": (_depth_to_space, ("block_size", "data_format")),
               "SpaceToDepth": (_space_to_depth, ("block_size", "data_format"))}
# Keras 3 layer options that tf_keras names otherwise: (class name, key) -> tf_keras key
_RENAMED = {("LeakyReLU", "negative_slope"): "alpha"}
_OP_MODULE = "keras.src.ops"
_MODELS = ("Functional", "Sequential", "Model")
# Layer.__init__ keyword arguments of tf_keras
_BASE_KWARGS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape",
                "batch_input_shape", "batch_size", "weights", "activity_regularizer",
                "autocast", "implementation"}
# Keras 3 options without effect at inference that tf_keras layers do not take
_DROPPED = {"synchronized", "seed"}
# Keras 3 options that tf_keras layers do not take, without effect at these values: (class
# name, key) -> value (a Resizing's fill only pads when pad_to_aspect_ratio, which tf_keras
# lacks and _filter refuses when set)
_INERT = {("Resizing", "data_format"): "channels_last", ("Resizing", "fill_mode"): "constant",
          ("Resizing", "fill_value"): 0.0}
# tf_keras layers whose from_config expects keys of their own get_config (MultiHeadAttention:
# the build shapes): built from the translated options by their constructor instead
_CONSTRUCTED = (keras.layers.MultiHeadAttention,)
# The layers that Keras 3's applications define themselves (not in keras.layers), by
# (module, class name) -> (tf_keras module, class name) of the same layer in tf_keras'
# applications (same config keys, same weights): ConvNeXt, InceptionResNetV2
_APPLICATION_LAYERS = {
    ("keras.src.applications.convnext", "LayerScale"):
        ("tf_keras.src.applications.convnext", "LayerScale"),
    ("keras.src.applications.convnext", "StochasticDepth"):
        ("tf_keras.src.applications.convnext", "StochasticDepth"),
    ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"):
        ("tf_keras.src.applications.inception_resnet_v2", "CustomScaleLayer"),
}


def _application_layer(module, class_name):
    """The tf_keras class of a layer defined by Keras 3's applications, or None."""
    target = _APPLICATION_LAYERS.get((module, class_name))
    if target is None:
        return None
    return getattr(importlib.import_module(target[0]), target[1], None)


class _Unsupported(Exception):
    """A Keras 3 layer (or one of its options) with no tf_keras equivalent."""


def _keras3():
    """The Keras 3 module when it is imported, else None."""
    module = sys.modules.get("keras")
    if module is None or module is keras or not hasattr(module, "Model"):
        return None
    try:
        major = int(str(getattr(module, "__version__", "0")).split(".")[0])
    except ValueError:
        return None
    return module if major >= 3 else None


def is_keras3_model(obj):
    """Whether ``obj`` is a Keras 3 model (``keras.Model`` of Keras 3, or ``tf.keras.Model``
    in TF >= 2.16), not a tf_keras one.

    Args:
        obj: any object.

    Returns:
        bool: True for a Keras 3 model.
    """
    k3 = _keras3()
    return k3 is not None and isinstance(obj, k3.Model)


# ---- config translation ------------------------------------------------------------------------
def _accepted(cls):
    """The keyword arguments the constructor of a tf_keras class takes (its MRO up to Layer)."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
        if klass is keras.layers.Layer:
            break
    return names | _BASE_KWARGS


def _value(value, tensors=None):
    """A Keras 3 serialized value with its constants (``__numpy__``, ``__tensor__``) as numpy
    arrays and, when ``tensors`` is given, its ``__keras_tensor__`` as the tensors it maps
    ``(layer name, node index, tensor index)`` to (KeyError for one not rebuilt yet)."""
    if isinstance(value, dict):
        kind = value.get("class_name")
        if kind in ("__numpy__", "__tensor__"):
            config = value["config"]
            return np.asarray(config["value"], dtype=config.get("dtype"))
        if kind == "__keras_tensor__" and tensors is not None:
            return tensors[tuple(value["config"]["keras_history"])]
        if kind == "__slice__":
            config = value["config"]
            return slice(config.get("start"), config.get("stop"), config.get("step"))
        if kind == "__ellipsis__":
            return Ellipsis
        return {k: _value(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_value(v, tensors) for v in value)
    return value


def _filter(cls, config, what):
    """``config`` with the keys that ``cls`` does not take dropped when they are unset (None or
    False) or listed in _DROPPED; raises _Unsupported for the others."""
    accepted = _accepted(cls)
    out = {}
    for key, value in config.items():
        if key in accepted:
            out[key] = value
        elif (getattr(cls, "__name__", None), key) in _INERT \
                and value == _INERT[(cls.__name__, key)]:
            continue
        elif value is not None and value is not False and key not in _DROPPED:
            raise _Unsupported(f"{what} option {key}={value!r} has no tf_keras equivalent")
    return out


def _object(value, module, what):
    """A Keras 3 serialized initializer/regularizer/constraint as a tf_keras one."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict) or "class_name" not in value:
        raise _Unsupported(f"{what}={value!r} is not a serialized Keras object")
    cls = getattr(module, value["class_name"], None)
    if not isinstance(cls, type) or (value.get("module") or "keras").split(".")[0] != "keras":
        raise _Unsupported(f"{what} {value['class_name']} has no tf_keras equivalent")
    return {"class_name": value["class_name"],
            "config": _filter(cls, value.get("config") or {}, what)}


def _activation(value, what):
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Unsupported(f"{what} activation {value!r} is not a built-in activation")
    name = _ACTIVATIONS.get(value, value)
    try:
        keras.activations.get(name)
    except ValueError as error:
        raise _Unsupported(f"{what} activation {value!r} has no tf_keras equivalent") from error
    return name


def _dtype(value, what):
    if isinstance(value, dict):
        if value.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy"):
            raise _Unsupported(f"{what} dtype policy {value.get('class_name')} has no tf_keras "
                               "equivalent")
        return value["config"]["name"]
    return value


#: The config keys of the wrappers (TimeDistributed, Bidirectional) that hold a layer.
_NESTED_LAYER_KEYS = ("layer", "forward_layer", "backward_layer")


def _nested_layer(value, what):
    """A Keras 3 serialized layer held by a wrapper, as a tf_keras serialized layer."""
    cls = getattr(keras.layers, value["class_name"], None)
    if (value.get("module") or "keras.layers") != "keras.layers" or not isinstance(cls, type) \
            or not issubclass(cls, keras.layers.Layer):
        raise _Unsupported(f"{what} wraps {value['class_name']}, which has no tf_keras "
                           "equivalent")
    return {"class_name": value["class_name"],
            "config": _translate(cls, dict(value.get("config") or {}))}


def _translate(cls, config):
    """The tf_keras config of a Keras 3 layer config."""
    out = {}
    for key, value in config.items():
        key = _RENAMED.get((cls.__name__, key), key)
        if key == "dtype":
            value = _dtype(value, cls.__name__)
        elif key.endswith("_initializer"):
            value = _object(value, keras.initializers, key)
        elif key.endswith("_regularizer"):
            value = _object(value, keras.regularizers, key)
        elif key.endswith("_constraint"):
            value = _object(value, keras.constraints, key)
        elif key == "activation":
            value = _activation(value, cls.__name__)
        elif key in _NESTED_LAYER_KEYS and isinstance(value, dict) and "class_name" in value:
            value = _nested_layer(value, cls.__name__)
        else:
            value = _value(value)
            if isinstance(value, np.ndarray):
                value = value.tolist()
        out[key] = value
    return _filter(cls, out, cls.__name__)


# ---- the plan: one builder per Keras 3 layer or op ----------------------------------------------
class _Builder:
    """How one Keras 3 layer (or op) of the graph is rebuilt with tf_keras.

    Args:
        name (str): the layer name.
        make (callable): ``make() -> callable`` applied to the rebuilt call arguments (a new
            tf_keras layer, or a TF function for an op).
        source: the Keras 3 layer whose weights are copied, or None.
    """

    def __init__(self, name, make, source=None):
        self.name = name
        self.make = make
        self.source = source
        self.target = None


def _layer_builder(entry, source):
    class_name, config = entry["class_name"], dict(entry.get("config") or {})
    module = entry.get("module") or ""
    name = config.get("name", entry.get("name"))
    if class_name in _MODELS and source is not None and is_keras3_model(source):
        return _Builder(name, lambda: _convert(source))
    if module.startswith(_OP_MODULE):
        return _op_builder(class_name, config, name)
    cls = _application_layer(module, class_name)
    if cls is not None:
        new_config = _translate(cls, config)
        return _Builder(name, lambda: cls.from_config(dict(new_config)), source)
    cls = getattr(keras.layers, class_name, None)
    if module != "keras.layers" or not isinstance(cls, type) or \
            not issubclass(cls, keras.layers.Layer):
        where = [f"registered as {entry['registered_name']!r}"] \
            if entry.get("registered_name") else []
        where += [f"module {module!r}"] if module else []
        where = f" ({', '.join(where)})" if where else ""
        raise _Unsupported(f"a custom or unknown layer{where}: tf_keras has no layer of this "
                           "class")
    if cls is keras.layers.Lambda:
        return _lambda_builder(source, name)
    new_config = _translate(cls, config)
    if cls in _CONSTRUCTED:
        return _Builder(name, lambda: cls(**new_config), source)
    return _Builder(name, lambda: cls.from_config(dict(new_config)), source)


def _lambda_builder(source, name):
    if source is None or not callable(getattr(source, "function", None)):
        raise _Unsupported("a Lambda layer without its function")
    arguments = dict(getattr(source, "arguments", None) or {})
    return _Builder(name, lambda: keras.layers.Lambda(source.function, arguments=arguments,
                                                      name=name))


def _resize_builder(config, name):
    """Keras 3's ``ops.image.resize`` (nearest or bilinear, channels_last, no antialias, crop
    or pad) as ``tf.image.resize`` (the same half-pixel resize; a Resizing in quantize())."""
    method = config.get("interpolation")
    if method not in ("bilinear", "nearest") or config.get("antialias") \
            or config.get("crop_to_aspect_ratio") or config.get("pad_to_aspect_ratio") \
            or config.get("data_format") not in (None, "channels_last"):
        raise _Unsupported(f"the Keras 3 op Resize with {config} has no tf_keras equivalent "
                           "here (nearest or bilinear, channels_last, without antialias, crop "
                           "or pad)")
    size = [int(v) for v in _value(config["size"])]
    return _Builder(name, lambda: lambda x: tf.image.resize(x, size, method=method))


def _op_builder(class_name, config, name):
    if class_name == "Resize":
        return _resize_builder(config, name)
    function = _OPS.get(class_name)
    # ``initial=None`` (Max): the default, nothing to translate
    options = {k: v for k, v in config.items()
               if k != "name" and not (k == "initial" and v is None)}
    if class_name in _OPTION_OPS and set(options) <= set(_OPTION_OPS[class_name][1]):
        function = _OPTION_OPS[class_name][0]
        options = {k: _value(v) for k, v in options.items()}
        options = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in options.items()}
        return _Builder(name, lambda: lambda *args, **kwargs: function(*args, **kwargs,
                                                                       **options))
    if function is None or options:
        raise _Unsupported(f"the Keras 3 op {class_name} (options {options}) has no tf_keras "
                           f"equivalent here (supported ops: "
                           f"{', '.join(sorted({**_OPS, **_OPTION_OPS}))})")
    if isinstance(function, str):
        return _Builder(name, lambda: keras.layers.Activation(function, name=name))
    return _Builder(name, lambda: function)


def _plan(entries, sources):
    """The builders of the layer entries, or raises a ValueError that lists all the layers that
    cannot be converted."""
    builders, errors = {}, []
    for entry in entries:
        name = entry.get("name") or entry["config"].get("name")
        if entry["class_name"] == "InputLayer":
            continue
        try:
            builders[name] = _layer_builder(entry, sources.get(name))
        except _Unsupported as reason:
            errors.append(f"{name} ({entry['class_name']}): {reason}")
    if errors:
        raise ValueError(
            "from_keras3 expected Keras 3 layers that tf_keras can rebuild: the built-in "
            "layers of keras.layers that tf_keras also has (with options tf_keras takes), "
            "Lambda layers, nested functional or Sequential models and the ops "
            f"{', '.join(sorted({**_OPS, **_OPTION_OPS}))}. Received: {len(errors)} layer(s) "
            "that cannot be "
            "converted: " + "; ".join(errors))
    return builders


# ---- the rebuild ---------------------------------------------------------------------------------
def _input(config):
    if config.get("optional"):
        raise ValueError(f"from_keras3 expected non-optional inputs. Received: "
                         f"input {config.get('name')} is optional")
    return keras.Input(batch_shape=tuple(config["batch_shape"]),
                       dtype=_dtype(config.get("dtype"), "InputLayer"),
                       sparse=bool(config.get("sparse")), ragged=bool(config.get("ragged")),
                       name=config["name"])


def _copy_weights(builder):
    source, target = builder.source, builder.target
    if source is None or not isinstance(target, keras.layers.Layer):
        return
    weights = source.get_weights()
    expected = [tuple(w.shape) for w in target.weights]
    if [tuple(w.shape) for w in weights] != expected:
        raise ValueError(f"from_keras3 expected the weights of layer {builder.name} "
                         f"({type(source).__name__}) to have the shapes of its tf_keras twin "
                         f"{expected}. Received: {[tuple(w.shape) for w in weights]}")
    if weights:
        target.set_weights(weights)


def _call(builder, args, kwargs):
    first = builder.target is None
    if first:
        builder.target = builder.make()
    outputs = builder.target(*args, **kwargs)
    if first:
        _copy_weights(builder)
    return outputs


_DROPPED_KWARGS = {"training"}  # tf_keras layers follow the learning phase


def _call_kwargs(kwargs):
    # unset masks (``mask``, MultiHeadAttention's ``query_mask``...) are tf_keras' default
    return {k: v for k, v in kwargs.items()
            if k not in _DROPPED_KWARGS and not (k.endswith("mask") and v is None)}


def _functional(model, config):
    sources = {layer.name: layer for layer in model.layers}
    builders = _plan(config["layers"], sources)
    tensors = {}  # (layer name, node index, tensor index) -> tf_keras tensor
    new_inputs = {}
    for entry in config["layers"]:
        if entry["class_name"] == "InputLayer":
            tensor = _input(entry["config"])
            new_inputs[entry["name"]] = tensor
            tensors[(entry["name"], 0, 0)] = tensor

    pending = [(entry["name"], i, node) for entry in config["layers"]
               if entry["class_name"] != "InputLayer"
               for i, node in enumerate(entry.get("inbound_nodes") or [])]
    while pending:
        remaining = []
        for name, index, node in pending:
            try:
                args = _value(list(node.get("args", [])), tensors)
                kwargs = _value(_call_kwargs(node.get("kwargs", {})), tensors)
            except KeyError:
                remaining.append((name, index, node))
                continue
            outputs = _call(builders[name], args, kwargs)
            for i, tensor in enumerate(tf.nest.flatten(outputs)):
                tensors[(name, index, i)] = tensor
        if len(remaining) == len(pending):
            raise ValueError(f"from_keras3 expected a graph whose nodes can be ordered. "
                             f"Received: {len(remaining)} nodes with missing inputs "
                             f"({', '.join(n for n, _, _ in remaining)})")
        pending = remaining

    def io(refs):
        refs = refs if refs and isinstance(refs[0], (list, tuple)) else [refs]
        return [tensors[tuple(ref)] for ref in refs]

    inputs, outputs = io(config["input_layers"]), io(config["output_layers"])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0],
                       outputs if len(outputs) > 1 else outputs[0], name=model.name)


def _sequential(model, config):
    try:
        defined = bool(model.inputs)
    except AttributeError:  # Keras 3 raises for a Sequential without inputs
        defined = False
    if not defined:
        raise ValueError(f"from_keras3 expected a built Sequential model with defined inputs. "
                         f"Received: model {model.name} is not built (build it or start it "
                         "with keras.Input)")
    entries = [e for e in config["layers"] if e["class_name"] != "InputLayer"]
    heads = [e for e in config["layers"] if e["class_name"] == "InputLayer"]
    builders = _plan(entries, {layer.name: layer for layer in model.layers})
    source = model.inputs[0]
    head = heads[0]["config"] if heads else \
        {"batch_shape": tuple(source.shape), "dtype": source.dtype, "name": f"{model.name}_input"}
    inputs = x = _input(head)
    for entry in entries:
        name = entry.get("name") or entry["config"]["name"]
        x = _call(builders[name], [x], {})
    return keras.Model(inputs, x, name=model.name)


def _convert(model):
    k3 = _keras3()
    config = model.get_config()
    if isinstance(model, k3.Sequential):
        return _sequential(model, config)
    if not isinstance(config, dict) or "input_layers" not in config or "layers" not in config:
        raise ValueError(f"from_keras3 expected a functional or Sequential Keras 3 model. "
                         f"Received: a subclassed model ({type(model).__name__}); rebuild it "
                         "with the functional API")
    return _functional(model, config)


# ---- the check -------------------------------------------------------------------------------
def _batch(model, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for tensor in model.inputs:
        shape = [batch] + [d if d is not None else 16 for d in tuple(tensor.shape)[1:]]
        dtype = np.dtype(str(getattr(tensor.dtype, "name", tensor.dtype)))
        out.append(rng.integers(0, 10, shape).astype(dtype) if np.issubdtype(dtype, np.integer)
                   else rng.uniform(-1, 1, shape).astype(dtype))
    return out


def _outputs(model, x):
    y = model(x if len(x) > 1 else x[0], training=False)
    return [np.asarray(v) for v in tf.nest.flatten(y)]


def _sample_batch(model, samples, batch=2):
    """The first ``batch`` samples (an array, or one per model input) as the check's inputs,
    cast to the inputs' dtypes; None when ``samples`` is not arrays of the inputs' shapes."""
    arrays = list(samples) if isinstance(samples, (list, tuple)) else [samples]
    if len(arrays) != len(model.inputs) or not all(
            isinstance(a, np.ndarray) and a.ndim == len(t.shape) and len(a) > 0
            for a, t in zip(arrays, model.inputs)):
        return None
    return [np.asarray(a[:batch]).astype(np.dtype(str(getattr(t.dtype, "name", t.dtype))))
            for a, t in zip(arrays, model.inputs)]


#: The relative perturbation of the check's inputs that measures how much the Keras 3 model
#: itself amplifies float rounding (``_check_outputs``): about ten float32 roundings.
ROUNDING_PROBE = 1e-6


def _perturbed(x, seed=1):
    rng = np.random.default_rng(seed)
    return [v * (1 + ROUNDING_PROBE * rng.standard_normal(v.shape)).astype(v.dtype)
            if np.issubdtype(v.dtype, np.floating) else v for v in x]


def _check_outputs(model, new, atol, samples=None):
    """The twin's outputs equal the model's within ``atol * max(1, max|y|)``, or within how far
    the model's own outputs move when its float inputs move by ``ROUNDING_PROBE`` (relative):
    a network that grows float rounding 1000-fold (random weights) cannot be held to the
    ulps; a wrongly converted layer or a lost weight still differs by far more."""
    x = (None if samples is None else _sample_batch(model, samples)) or _batch(model)
    reference = _outputs(model, x)
    moved = None
    for i, (a, b) in enumerate(zip(reference, _outputs(new, x))):
        bound = atol * max(1.0, float(np.max(np.abs(a), initial=0.0)))
        diff = float(np.max(np.abs(a - b), initial=0.0)) if a.shape == b.shape else np.inf
        if diff > bound and np.isfinite(diff):
            if moved is None:
                moved = _outputs(model, _perturbed(x))
            bound = max(bound, float(np.max(np.abs(moved[i] - a), initial=0.0)))
        if not diff <= bound:
            raise ValueError(f"from_keras3 expected the tf_keras twin of model {model.name} to "
                             f"give its outputs (atol={atol}, or the model's own move under a "
                             f"{ROUNDING_PROBE:g} relative input perturbation). Received: "
                             f"max |difference|={diff:.3g} on output {i} (shapes {a.shape} "
                             f"and {b.shape}). Where that is float rounding grown by a "
                             "random-weight network, check on data-like inputs "
                             "(from_keras3(model, samples=x); quantize() passes its samples) "
                             "or raise atol")


def from_keras3(model, atol=1e-4, samples=None):
    """Converts a Keras 3 functional or Sequential model into its tf_keras twin.

    Each Keras 3 layer becomes the tf_keras layer of the same class name, built from its config
    translated to tf_keras (dtype policies -> dtype names, serialized initializers, regularizers
    and constraints -> tf_keras ones without the Keras 3 only keys, ``InputLayer.batch_shape``,
    the activation names ``'silu'`` -> ``'swish'``, ``'hard_sigmoid'`` ->
    ``'quantizeml>hard_sigmoid_relu6'``, ``'hard_silu'``/``'hard_swish'`` ->
    ``'quantizeml>hard_swish'``; options tf_keras does not take are dropped when unset, like
    ``lora_rank=None`` or ``quantization_config=None``, and BatchNormalization ``synchronized``),
    called in the same node order on the same arguments (``training`` call arguments dropped:
    tf_keras layers follow the learning phase), and gets the weights of the Keras 3 layer
    (same order, shapes checked). Lambda layers keep their function; nested functional or
    Sequential models are converted recursively; the Keras 3 ops of the graph (``x + 3.0``,
    ``keras.ops.multiply``, ``keras.ops.relu``...) become TF ops (TFOpLambda layers, that
    ``sanitize()`` rewrites) or Activation layers. The new model is then checked on two of
    ``samples`` (else a random batch in [-1, 1]): its outputs equal the Keras 3 model's to
    ``atol`` (relative to the output range), or to how far the Keras 3 model's own outputs
    move when its inputs move by 1e-6 (relative; ``ROUNDING_PROBE``), whichever is larger: the
    two libraries' kernels round float32 differently, and a deep random-weight network grows
    that 1000-fold (Keras 3's InceptionV3 at 75x75: 3.6e-4 of its output range).

    Args:
        model (keras.Model): a Keras 3 functional or built Sequential model.
        atol (float, optional): the tolerance of the output check, times ``max(1, max|y|)``;
            None skips the check. Defaults to 1e-4: the two libraries' kernels round float32
            differently (BatchNormalization, for one), and a deep random-weight network
            amplifies that to 1-3e-5 of its output range (Keras 3's MobileNet, ResNet50 and
            EfficientNetB0 with re-estimated statistics); a layer converted wrongly or a weight
            not copied differs by far more.
        samples (np.ndarray or list, optional): inputs like the model's data (an array, or one
            per model input): the check runs on the first two. Inputs far from the data the
            statistics came from can push a random-weight network where those rounding
            differences grow (Keras 3's EfficientNetV2B0, statistics of raw pixels, fed
            [-1, 1]: 103 apart; on pixels: within 1e-4). Defaults to None (a random batch in
            [-1, 1]).

    Returns:
        tf_keras.Model: a functional tf_keras model, with the layer names of ``model``.

    Raises:
        TypeError: if ``model`` is not a Keras 3 model.
        ValueError: for a subclassed or unbuilt model, for layers that cannot be converted
            (all of them listed, by name and class, with the reason), for weights of
            different shapes, or outputs that differ.

    Example:
        ```python
        import keras  # Keras 3
        float_model = from_keras3(keras.applications.MobileNetV2(weights=None))
        model_q = quantize(float_model)
        ```
    """
    if not is_keras3_model(model):
        raise TypeError(f"from_keras3 expected a Keras 3 model. Received: "
                        f"{type(model).__module__}.{type(model).__name__}")
    new = _convert(model)
    if atol is not None:
        _check_outputs(model, new, atol, samples)
    return new
