"""QTensor: the abstract base of the quantized tensor types."""
import tensorflow as tf


class QTensor(tf.experimental.BatchableExtensionType):
    """Abstract class to exchange quantized tensors between layers.

    Concrete types (:class:`FixedPoint`, :class:`QFloat`) are ``tf.ExtensionType``s: they flow
    between ``tf_keras`` functional layers, through ``tf.function`` and ``tf.data``, and are
    encoded by SavedModel under their registered name (``quantizeml.FixedPoint``, ...).
    """
    __name__ = "quantizeml.QTensor"
    #: numpy defers to the QTensor operators (``ndarray + FixedPoint`` calls ``__radd__``)
    #: instead of building an object array of QTensors.
    __array_ufunc__ = None

    @property
    def shape(self):
        """tf.TensorShape: the shape of the quantized tensor."""
        raise TypeError(f"{type(self).__name__} is abstract: use FixedPoint or QFloat")

    @property
    def name(self):
        """Returns the QTensor name.

        Returns:
            str: the name of the underlying values tensor ('' in eager mode).
        """
        values = self._values()
        try:
            return values.name
        except AttributeError:
            return ""

    @property
    def per_tensor(self):
        """Returns if QTensor is quantized per-tensor.

        Returns:
            bool: True if QTensor is quantized per-tensor or False on per-axis case.
        """
        raise TypeError(f"{type(self).__name__} is abstract: use FixedPoint or QFloat")

    def assert_per_tensor(self):
        """Asserts that a QTensor is quantized per-tensor.

        Raises:
            ValueError: if the QTensor is quantized per-axis.
        """
        if not self.per_tensor:
            raise ValueError(f"{type(self).__name__} expected to be quantized per-tensor. "
                             f"Received: a per-axis {type(self).__name__} of shape {self.shape}")

    def clone(self):
        """Returns a copy of the QTensor.

        Returns:
            QTensor: the copy.
        """
        return tf.nest.map_structure(tf.identity, self, expand_composites=True)

    def to_float(self):
        """Returns a float representation of the QTensor.

        Returns:
            tf.Tensor: the float representation.
        """
        raise TypeError(f"{type(self).__name__} is abstract: use FixedPoint or QFloat")

    def _values(self):
        raise TypeError(f"{type(self).__name__} is abstract: use FixedPoint or QFloat")


def is_per_tensor(t):
    """True when tensor ``t`` holds a single value (scalar or one element), statically."""
    shape = t.shape
    return shape.rank == 0 or shape.num_elements() == 1
