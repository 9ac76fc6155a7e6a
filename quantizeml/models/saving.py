"""Loading quantized models and applying weights."""
import warnings

import numpy as np
import tf_keras as keras

from .. import QuantizeMLWarning
from ..layers import recording


def load_model(model_path, custom_layers=None, compile_model=True):
    """Loads a model with quantizeml custom layers.

    quantizeml layers are registered with Keras when the package is imported, so no
    custom_objects are needed for them.

    Args:
        model_path (str): path of the model to load (h5 file or SavedModel directory).
        custom_layers (dict, optional): custom layers to add to the model. Defaults to None.
        compile_model (bool, optional): whether to compile the model. Defaults to True.

    Returns:
        keras.Model: the loaded model.
    """
    return keras.models.load_model(model_path, custom_objects=custom_layers,
                                   compile=compile_model)


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
