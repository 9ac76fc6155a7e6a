"""Saving and loading quantized models, applying weights."""
import os
import warnings

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .. import QuantizeMLWarning
from ..layers import recording


class ModelFileError(OSError):
    """A model file (or SavedModel directory) that cannot be read: missing, truncated, corrupt,
    not HDF5, not a SavedModel. The message names the file (also in ``path``); the
    original error is the ``__cause__``."""


class ModelContentError(ValueError):
    """A model file that was read but whose model cannot be rebuilt (no model config, an
    unknown layer class, ...). The message names the file (also in ``path``); the original
    error is the ``__cause__``."""


def _load_error(path, error):
    """The ModelFileError or ModelContentError naming ``path`` that wraps ``error``."""
    original = f"{type(error).__name__}: {error}"
    if isinstance(error, (OSError, tf.errors.OpError)) or \
            type(error).__name__ == "DecodeError":  # protobuf: a corrupt saved_model.pb
        wrapped = ModelFileError(f"load_model expected a readable Keras model file (h5, "
                                 f".keras or SavedModel directory). Received: "
                                 f"model_path={path!r} ({original})")
    else:
        wrapped = ModelContentError(f"load_model expected a model that Keras can rebuild "
                                    f"(pass the classes of user layers in custom_layers). "
                                    f"Received: model_path={path!r} ({original})")
    wrapped.path = path
    return wrapped


def load_model(model_path, custom_layers=None, compile_model=True):
    """Loads a model with quantizeml custom layers.

    quantizeml layers are registered with Keras when the package is imported, so no
    custom_objects are needed for them.

    Args:
        model_path (str or os.PathLike): path of the model to load (h5 file or SavedModel
            directory).
        custom_layers (dict, optional): custom layers to add to the model. Defaults to None.
        compile_model (bool, optional): whether to compile the model. Defaults to True.

    Returns:
        keras.Model: the loaded model.

    Raises:
        ModelFileError: (an ``OSError``) for a file that cannot be read: missing, truncated,
            corrupt, not HDF5, or a directory that is not a SavedModel.
        ModelContentError: (a ``ValueError``) for a file whose model cannot be rebuilt, e.g.
            an HDF5 file without a model config or with an unregistered layer class.

        Both name ``model_path`` in their message and keep the original error as
        ``__cause__``.
    """
    path = os.fspath(model_path)
    try:
        return keras.models.load_model(path, custom_objects=custom_layers,
                                       compile=compile_model)
    except Exception as e:  # noqa: BLE001 - every loader error names the file
        raise _load_error(path, e) from e


def _serving_function(model):
    """The ``serving_default`` concrete function of a SavedModel: the model in inference
    mode on inputs of its input shapes (any batch size), outputs named as its outputs."""
    specs = [tf.TensorSpec(t.shape, t.dtype, name=name)
             for t, name in zip(model.inputs, model.input_names)]
    names = list(model.output_names)

    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(names, outputs))

    return tf.function(serve, input_signature=specs).get_concrete_function()


def save_model(model, model_path, save_format=None, serving=True, **kwargs):
    """Saves a (quantized) model, fast: h5, or a SavedModel without per-layer traces.

    ``model.save(path)`` writes a SavedModel that holds a traced function for every layer
    (each layer called in training and inference mode): ~80 s for a quantized ResNet50 and
    minutes for a DenseNet, because every quantized layer traces its integer arithmetic
    several times. ``save_model`` writes the SavedModel with ``save_traces=False`` (the
    layers are rebuilt from their configs at load, as quantizeml's layers are registered)
    and one traced ``serving_default`` signature, the whole model in inference mode, so the
    SavedModel still serves without Python (``tf.saved_model.load(path).signatures``). On a
    quantized ResNet50 (32x32): save 24 s (2.5 s with ``serving=False``) instead of 82 s,
    :func:`load_model` 10-17 s instead of 36 s, and the reloaded model gives bit-identical
    outputs.

    Args:
        model (keras.Model): the model to save.
        model_path (str or os.PathLike): an h5 file (``.h5``/``.hdf5``) or a SavedModel
            directory.
        save_format (str, optional): "h5" or "tf". Defaults to None: "h5" for a path ending in
            ``.h5``/``.hdf5``, "tf" otherwise.
        serving (bool, optional): with a SavedModel, write the ``serving_default`` signature.
            Defaults to True.
        **kwargs: other ``keras.Model.save`` arguments (``include_optimizer``, ``options``,
            ...).

    Raises:
        ValueError: for a save_format other than "h5" and "tf", or ``save_traces`` or
            ``signatures`` given with h5.
    """
    path = os.fspath(model_path)
    if save_format is None:
        save_format = "h5" if path.lower().endswith((".h5", ".hdf5")) else "tf"
    if save_format not in ("h5", "tf"):
        raise ValueError(f"save_model expected save_format 'h5' or 'tf'. Received: "
                         f"save_format={save_format!r}")
    if save_format == "h5":
        extra = sorted(set(kwargs) & {"save_traces", "signatures"})
        if extra:
            raise ValueError(f"save_model expected no {extra} with save_format='h5' (they "
                             f"apply to SavedModels). Received: model_path={path!r}")
        model.save(path, save_format="h5", **kwargs)
        return
    kwargs.setdefault("save_traces", False)
    if serving and "signatures" not in kwargs:
        kwargs["signatures"] = {"serving_default": _serving_function(model)}
    model.save(path, save_format="tf", **kwargs)


def apply_weights_to_model(model, weights, verbose=True):
    """Loads weights from a dictionary and apply it to a model.

    Go through the dictionary of weights, find the corresponding variable in the model and
    partially load its weights.

    Args:
        model (keras.Model): the model to update.
        weights (dict): variable name -> array.
        verbose (bool, optional): warn when a dict item is not found in the model.
            Defaults to True.

    Raises:
        ValueError: when an array does not have the shape of its variable.
    """
    variables = {v.name: v for v in model.variables}
    for name, value in weights.items():
        var = variables.get(name)
        if var is None:
            if verbose:
                warnings.warn(f"apply_weights_to_model: no variable named {name!r} in model "
                              f"{model.name!r}", QuantizeMLWarning, stacklevel=2)
            continue
        value = np.asarray(value)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"apply_weights_to_model expected {name} of shape "
                             f"{tuple(var.shape)}. Received: shape={value.shape}")
        var.assign(value)


def record_quantization_variables(model):
    """Helper method to record quantization objects in the graph.

    Passing a dummy sample through the model in recording mode, this triggers the recording of
    all dynamic quantization objects (quantized weights, alignment shifts), which inference
    then reuses instead of recomputing them.

    Args:
        model (keras.Model): model for which objects need to be recorded.
    """
    inputs = [np.zeros((1,) + tuple(t.shape[1:]), t.dtype.as_numpy_dtype)
              for t in model.inputs]
    with recording(True):
        model(inputs if len(inputs) > 1 else inputs[0], training=False)
