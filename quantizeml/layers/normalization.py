"""Quantized normalization: QuantizedBatchNormalization."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from .base import buffer_add, check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin
from .quantizers import AlignedWeightQuantizer, WeightQuantizer

#: Default arguments of the quantizers of a and b (overridden by the quant_config entries).
A_QUANTIZER_DEFAULTS = {"bitwidth": 8, "axis": -1}
B_QUANTIZER_DEFAULTS = {"bitwidth": 16}


@register_keras
@register_twin(keras.layers.BatchNormalization, weights=("a_quantizer",), output=BLOCK_END,
               export="batchnorm")
class QuantizedBatchNormalization(QuantConfigMixin, keras.layers.BatchNormalization):
    """Layer that normalizes its inputs, on the last axis.

    The normalization ``y = (x - mu) * gamma / sigma + beta`` (``sigma = sqrt(var + eps)``,
    moving statistics) is rewritten ``y = a * x + b`` with ``a = gamma / sigma`` and
    ``b = beta - mu * a``. The layer holds gamma, beta, moving_mean and moving_variance like a
    BatchNormalization, so it can be converted from one; a and b are quantized on the fly:
    ``a`` per channel by the "a_quantizer" (a WeightQuantizer), ``b`` on the grid of ``a * x``
    by the "b_quantizer" (an AlignedWeightQuantizer). The moving statistics are never updated
    (gamma and beta are trained, with straight-through gradients through the roundings).

    Integer maths: ``y = x * a_int + b_int`` (frac_bits ``f_x + f_a``, scales ``s_a`` times the
    input scales), clipped to the buffer, then the output quantizer if configured.

    Args:
        axis (int, optional): the normalized axis; only the last axis is supported.
            Defaults to -1.
        momentum, epsilon, center, scale, *_initializer, *_regularizer, *_constraint,
            synchronized: as keras.layers.BatchNormalization (epsilon defaults to 1e-3).
        quant_config (dict, optional): the serialized quantization configuration, keys
            "a_quantizer" (WeightQuantizer arguments, default ``{"bitwidth": 8, "axis": -1}``),
            "b_quantizer" (AlignedWeightQuantizer arguments, default ``{"bitwidth": 16}``),
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: when axis is not the last axis.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, quant_config=None, **kwargs):
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, center=center,
                         scale=scale, beta_initializer=beta_initializer,
                         gamma_initializer=gamma_initializer,
                         moving_mean_initializer=moving_mean_initializer,
                         moving_variance_initializer=moving_variance_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                         synchronized=synchronized, **kwargs)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if len(axes) != 1 or (axes[0] < 0 and axes[0] != -1):
            self._raise_axis(axis)
        self._init_quant_config(quant_config, OUTPUT_KEYS + ("a_quantizer", "b_quantizer"))
        self.a_quantizer = WeightQuantizer(
            name=self.name + "/a_quantizer",
            **{**A_QUANTIZER_DEFAULTS, **self.quant_config.get("a_quantizer", {})})
        self.b_quantizer = AlignedWeightQuantizer(
            name=self.name + "/b_quantizer",
            **{**B_QUANTIZER_DEFAULTS, **self.quant_config.get("b_quantizer", {})})

    def _raise_axis(self, axis):
        raise ValueError(f"Layer {self.name} (QuantizedBatchNormalization) expected axis=-1 "
                         f"(the last axis, the only supported one). Received: axis={axis}")

    def build(self, input_shape):
        rank = tf.TensorShape(input_shape).rank
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        if rank is not None and axis % rank != rank - 1:
            self._raise_axis(axis)
        super().build(input_shape)

    def _a_b(self):
        """The float a and b (per channel) from the layer variables."""
        a = tf.math.rsqrt(self.moving_variance + self.epsilon)
        if self.scale:
            a = a * self.gamma
        b = -self.moving_mean * a
        if self.center:
            b = b + self.beta
        return a, b

    def call(self, inputs, training=None):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        a, b = self._a_b()
        a_q = self.a_quantizer(a, training=training)
        ax = tf.math.multiply(x, a_q)
        if not isinstance(ax, QFloat):  # fp_quantizer=True on a FixedPoint input
            ax = QFloat(ax, tf.constant(1.0))
        b_q = self.b_quantizer(b, ax, training=training)
        return self._quantize_output(buffer_add(self, ax, b_q, self.buffer_bitwidth))

    def get_config(self):
        config = super().get_config()
        axis = config["axis"]
        # the Keras build turns axis into a tracked list: return JSON-native ints
        config["axis"] = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else axis
        return config
