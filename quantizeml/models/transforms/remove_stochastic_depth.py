"""Removes ConvNeXt's StochasticDepth layers (drop path), the identity at inference."""
from ..graph import bypass_layers

__all__ = ["remove_stochastic_depth", "is_stochastic_depth"]

#: The keys of keras.layers.Layer.get_config.
_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape"}


def is_stochastic_depth(layer):
    """Whether ``layer`` is a StochasticDepth (drop path): the identity at inference.

    ConvNeXt's ``StochasticDepth`` (``tf_keras.applications.convnext``, and the Keras 3 layer
    that ``from_keras3`` converts to it) is not part of the public tf_keras API, so it is
    matched on its class name, its config (``drop_path_rate`` and nothing else) and having no
    weight.

    Args:
        layer (keras.layers.Layer): a layer.

    Returns:
        bool: True for a StochasticDepth layer.
    """
    if type(layer).__name__ != "StochasticDepth" or layer.weights:
        return False
    return set(layer.get_config()) - _BASE_KEYS == {"drop_path_rate"}


def remove_stochastic_depth(model):
    """Returns a new model without its StochasticDepth layers (ConvNeXt built with
    ``drop_path_rate > 0``).

    A StochasticDepth layer drops whole residual branches at random in training and is the
    identity at inference: it is removed and its consumers read its input. The inference
    outputs are unchanged (bit for bit); the input model is not modified.

    Args:
        model (keras.Model): a functional or Sequential model.

    Returns:
        keras.Model: the original model, or a new model without StochasticDepth layers.

    Example:
        ```python
        model = keras.applications.ConvNeXtTiny(weights=None, drop_path_rate=0.1)
        model = remove_stochastic_depth(model)
        ```
    """
    return bypass_layers(model, is_stochastic_depth)
