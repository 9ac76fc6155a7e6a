"""The ``flip_ratio`` training metric: how many quantized values flip between two updates."""
import numpy as np
import tensorflow as tf
import tf_keras as keras


@keras.saving.register_keras_serializable(package="quantizeml")
class FlipRatio(keras.metrics.Metric):
    """Computes the mean ratio of changed values in a given tensor (Larq's ``FlipRatio``).

    Each update compares the values (cast to ``values_dtype``) with those of the previous
    update: ``ratio = 1 - count(values == previous) / size``. The first update only records
    the values. The result is the mean ratio over the updates after the first.

    Args:
        values_dtype (str, optional): the dtype the values are compared in. Defaults to "int8".
        name (str, optional): the metric name. Defaults to "flip_ratio".
        dtype (str, optional): the dtype of the result. Defaults to None.

    Example:
        ```python
        m = FlipRatio()
        m.update_state((1, 1))  # result: 0
        m.update_state((2, 2))  # result: 1
        m.update_state((1, 2))  # result: 0.75
        ```
    """

    def __init__(self, values_dtype="int8", name="flip_ratio", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.values_dtype = tf.as_dtype(values_dtype)
        self._previous_values = None

    def build(self, input_shape):
        """Creates the variables for values of shape ``input_shape``."""
        input_shape = tf.TensorShape(input_shape)
        if not input_shape.is_fully_defined():
            raise ValueError("FlipRatio expected a fully defined shape. "
                             f"Received: input_shape={input_shape}")
        self._previous_values = self.add_weight(
            "previous_values", shape=input_shape, dtype=self.values_dtype,
            initializer="zeros")
        self.total = self.add_weight("total", initializer="zeros")
        self.count = self.add_weight("count", initializer="zeros")
        self._size = float(np.prod(input_shape.as_list()))

    def update_state(self, values, sample_weight=None):
        values = tf.cast(values, self.values_dtype)
        if self._previous_values is None:
            with tf.init_scope():
                self.build(values.shape)
        unchanged = tf.math.count_nonzero(tf.equal(self._previous_values, values))
        ratio = 1.0 - tf.cast(unchanged, self.dtype) / self._size
        # The first update has nothing to compare with: it only records the values. (The cast
        # undoes the autocast of a mixed precision policy inside a layer call.)
        first = tf.sign(tf.cast(self.count, self.dtype))
        update_total = self.total.assign_add(ratio * first)
        with tf.control_dependencies([update_total]):
            update_count = self.count.assign_add(1.0)
            with tf.control_dependencies([update_count]):
                return self._previous_values.assign(values)

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count - 1.0)

    def reset_state(self):
        """Resets the mean; the previous values are kept to compare the next update with."""
        if self._previous_values is not None:
            for variable in (self.total, self.count):
                variable.assign(tf.zeros_like(variable))

    def get_config(self):
        return {**super().get_config(), "values_dtype": self.values_dtype.name}
