"""Removes the layers that are the identity at inference (noise, regularization, Identity)."""
import tf_keras as keras

from ..graph import bypass_layers

__all__ = ["remove_identities", "IDENTITY_LAYERS"]

_L = keras.layers

#: The exact classes removed: the identity at inference (noise and dropouts act in training
#: only, ActivityRegularization only adds a training loss).
IDENTITY_LAYERS = tuple(getattr(_L, name) for name in (
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "ActivityRegularization", "Identity") if hasattr(_L, name))


def remove_identities(model):
    """Returns a new model without the layers that are the identity at inference.

    ``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout``, ``SpatialDropout1D/2D/3D``,
    ``ActivityRegularization`` and ``Identity`` only act in training (or add a training loss):
    each is removed and its consumers read its input. Plain ``Dropout`` stays (its quantized
    twin is a pass-through). A quantized model is fine-tuned without these regularizers. The
    inference outputs are unchanged (bit for bit); the input model is not modified.

    Args:
        model (keras.Model): a functional or Sequential model.

    Returns:
        keras.Model: the original model (nothing to remove) or a new model without them.

    Example:
        ```python
        model = remove_identities(model)  # GaussianNoise, SpatialDropout2D, ... removed
        ```
    """
    return bypass_layers(model, lambda layer: type(layer) in IDENTITY_LAYERS)
