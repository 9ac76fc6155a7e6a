"""Recording: store quantized weights and alignment shifts so inference skips recomputing them.

In recording mode (``with recording(True):``), quantizers store what they compute (quantized
weights, shifts) in recorders. Outside recording mode, inference calls (``training`` falsy)
reuse a recorded value instead of recomputing it; any training call recomputes and drops the
records (the float weights are about to change). Records are plain tensors held outside Keras
tracking: they are never saved with the model (re-record after loading or after changing the
weights; :func:`quantizeml.models.record_quantization_variables` does it).
"""
import tensorflow as tf

from ..recording import bump_generation, generation, is_recording, recording  # noqa: F401


class NonTrackVariable:
    """A wrapper class for the temporary Tensor variables that should be tracked only during the
    call and which does not require to be serialized within the layer.

    Args:
        name (str, optional): the variable name. Defaults to ''.
    """

    def __init__(self, name=""):
        self.name = name
        self._value = None

    @property
    def value(self):
        """The stored value (None when nothing is stored)."""
        return self._value

    def set_var(self, value):
        """Stores ``value`` (a tensor, or a nest of tensors)."""
        self._value = value
        bump_generation()

    def reset(self):
        """Drops the stored value."""
        if self._value is not None:
            bump_generation()
        self._value = None

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, recorded={self._value is not None})"


class NonTrackFixedPointVariable(NonTrackVariable):
    """A NonTrackVariable holding a FixedPoint."""


class TensorRecorder(NonTrackVariable):
    """Wrapper class to store and retrieve a tf.Tensor extracted from a graph.

    This is mainly used to recover FixedPoint alignment shift information.
    """

    def __call__(self, compute, training=None):
        """Returns the recorded value, or ``compute()`` (recorded in recording mode).

        Args:
            compute (callable): computes the value.
            training (bool, optional): a training call recomputes and drops the record.
        """
        if training:
            self.reset()
            return compute()
        if is_recording():
            value = compute()
            if tf.executing_eagerly():
                self.set_var(value)
            return value
        if self._value is not None:
            return self._value
        return compute()


class FixedPointRecorder(TensorRecorder):
    """Wrapper class to store and retrieve a FixedPoint extracted from a graph.

    This is mainly used to recover FixedPoint quantized weights.
    """


class QFloatRecorder(TensorRecorder):
    """Wrapper class to store and retrieve a QFloat extracted from a graph.

    This is mainly used to recover QFloat quantized weights.
    """
