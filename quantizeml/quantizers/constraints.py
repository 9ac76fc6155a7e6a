"""The weight clip constraint of binarized networks (Larq's ``WeightClip``)."""
import numbers

import tensorflow as tf
import tf_keras as keras

#: names that :func:`get_constraint` resolves to :class:`WeightClip`.
WEIGHT_CLIP_NAMES = ("WeightClip", "weight_clip")


@keras.saving.register_keras_serializable(package="quantizeml")
class WeightClip(keras.constraints.Constraint):
    """Constrains the weights to ``[-clip_value, clip_value]``: ``w <- clip(w, -c, c)``.

    Keeps the latent weights of a sign quantizer inside its gradient clip range, so that they
    do not grow out of reach of the straight-through gradient.

    Args:
        clip_value (float, optional): the bound, > 0. Defaults to 1.

    Raises:
        ValueError: when clip_value is not a positive real.
    """

    def __init__(self, clip_value=1):
        if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real) \
                or not clip_value > 0:
            raise ValueError("clip_value expected a real number > 0. "
                             f"Received: clip_value={clip_value!r}")
        self.clip_value = clip_value

    def __call__(self, x):
        return tf.clip_by_value(x, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), self.clip_value))


#: Larq's alias of :class:`WeightClip`.
weight_clip = WeightClip


def get_constraint(identifier):
    """Retrieves a constraint: ``"weight_clip"``/``"WeightClip"`` or anything Keras accepts.

    Args:
        identifier (None, str, dict or callable): the constraint identifier; a dict is a
            serialized constraint (a registered class is found by its registered name).

    Returns:
        keras.constraints.Constraint: the constraint, or None.
    """
    if isinstance(identifier, str) and identifier in WEIGHT_CLIP_NAMES:
        return WeightClip()
    if isinstance(identifier, dict):
        # Resolve registered classes by their registered name: the legacy (h5) deserializer
        # looks up the bare class name only.
        registered_name = identifier.get("registered_name")
        cls = keras.saving.get_registered_object(registered_name) if registered_name else None
        if cls is None and identifier.get("class_name") in WEIGHT_CLIP_NAMES:
            cls = WeightClip
        if cls is not None:
            return cls.from_config(dict(identifier.get("config") or {}))
    return keras.constraints.get(identifier)
