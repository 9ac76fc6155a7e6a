"""OutputObserver: the calibration layer that measures activation ranges in the float model."""
import tensorflow as tf
import tf_keras as keras

from ..base import StaticCallMixin, register_keras

AXES = ("per-tensor", "per-axis")


def check_axis(axis, layer_name=""):
    if axis not in AXES:
        raise ValueError(f"Layer {layer_name}: axis expected one of {AXES}. "
                         f"Received: axis={axis!r}")
    return axis


@register_keras
class OutputObserver(StaticCallMixin, keras.layers.Layer):
    """Calibration layer.

    Placed where an OutputQuantizer will be inserted (end of blocks), it accumulates the
    observed maximum absolute values of its float inputs with momentum:
    ``range = momentum * range + (1 - momentum) * max|x|`` (the first batch sets it). It also
    keeps the largest value ever seen (``max_seen``) and the inputs' minimum (to tell signed
    from unsigned activations). It returns its inputs unchanged.

    Args:
        axis (str, optional): 'per-tensor' or 'per-axis' (last axis). Defaults to 'per-tensor'.
        momentum (float, optional): the momentum for the moving average. Defaults to 0.9.
    """

    #: observers update variables: always run op by op when called eagerly
    compile_eager_calls = False

    def __init__(self, axis="per-tensor", momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.axis = check_axis(axis, self.name)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"Layer {self.name}: momentum expected a float in [0, 1]. "
                             f"Received: momentum={momentum}")
        self.momentum = float(momentum)

    def build(self, input_shape):
        shape = () if self.axis == "per-tensor" else (input_shape[-1],)
        kw = dict(shape=shape, trainable=False, initializer="zeros")
        self.range_max = self.add_weight(name="range_max", **kw)
        self.max_seen = self.add_weight(name="max_seen", **kw)
        self.min_seen = self.add_weight(name="min_seen", **kw)
        self.count = self.add_weight(name="count", shape=(), trainable=False,
                                     initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        axes = list(range(len(x.shape))) if self.axis == "per-tensor" \
            else list(range(len(x.shape) - 1))
        batch_max = tf.reduce_max(tf.abs(x), axis=axes)
        batch_min = tf.reduce_min(x, axis=axes)
        first = tf.equal(self.count, 0.0)
        new_range = tf.where(first, batch_max,
                             self.momentum * self.range_max + (1 - self.momentum) * batch_max)
        self.range_max.assign(new_range)
        self.max_seen.assign(tf.where(first, batch_max, tf.maximum(self.max_seen, batch_max)))
        self.min_seen.assign(tf.where(first, batch_min, tf.minimum(self.min_seen, batch_min)))
        self.count.assign_add(1.0)
        return inputs

    def reset(self):
        """Forgets what was observed."""
        for v in (self.range_max, self.max_seen, self.min_seen, self.count):
            v.assign(tf.zeros_like(v))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum}
