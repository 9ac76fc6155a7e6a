"""Layer normalization by the mean absolute deviation: LayerMadNormalization and
QuantizedLayerNormalization."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from ..tensors.dispatch.common import bits_for
from ..tensors.qtensor import is_per_tensor
from .base import buffer_add, check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .quantizers import AlignedWeightQuantizer, WeightQuantizer
from .reduction import to_single_frac_bits
from .registry import BLOCK_END, register_twin

__all__ = ["LayerMadNormalization", "QuantizedLayerNormalization"]

#: Default arguments of the gamma and beta quantizers (overridden by quant_config entries).
GAMMA_QUANTIZER_DEFAULTS = {"bitwidth": 8, "axis": -1}
BETA_QUANTIZER_DEFAULTS = {"bitwidth": 16}
#: Largest integer the int64 rounded division handles (sign excluded).
_INT64_VALUE_BITS = 62


def _last_axis_error(layer, axis):
    return ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected axis=-1 (the "
                      f"last axis, the only supported one). Received: axis={axis}")


@register_keras
class LayerMadNormalization(keras.layers.LayerNormalization):
    """Approximates the keras.layers.LayerNormalization (LN), replacing the computation of the
    standard deviation by the mean absolute deviation (mad).

    With the mean zeroed (more hardware-friendly), ``mad(x) = sum(|x|) / nb_channels`` on the
    last axis, and the layer computes ``LMN(x) = gamma * x / mad(x) + beta``. A row of zeros
    (``mad = 0``) gives ``beta``.

    A tuning step in the switching procedure between the LN to LMN layer will be required to
    find the ``(gamma, beta)`` parameters that match the standard deviation changes.

    Args: as keras.layers.LayerNormalization; only ``axis=-1`` is supported and ``epsilon`` is
        not used (kept so that a LayerNormalization config converts).

    Raises:
        ValueError: when axis is not the last axis.
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(axis=axis, epsilon=epsilon, center=center, scale=scale,
                         beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                         **kwargs)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if len(axes) != 1 or (axes[0] < 0 and axes[0] != -1):
            raise _last_axis_error(self, axis)

    def build(self, input_shape):
        rank = tf.TensorShape(input_shape).rank
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        if rank is not None and axis % rank != rank - 1:
            raise _last_axis_error(self, axis)
        super().build(input_shape)

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        mad = tf.reduce_sum(tf.abs(x), axis=-1, keepdims=True) / tf.cast(tf.shape(x)[-1],
                                                                           x.dtype)
        outputs = tf.math.divide_no_nan(x, mad)
        if self.scale:
            outputs = outputs * tf.cast(self.gamma, outputs.dtype)
        if self.center:
            outputs = outputs + tf.cast(self.beta, outputs.dtype)
        return outputs

    def get_config(self):
        config = super().get_config()
        axis = config["axis"]
        # the Keras build turns axis into a tracked list: return JSON-native ints
        config["axis"] = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else axis
        return config


@register_keras
@register_twin(LayerMadNormalization, weights=("gamma_quantizer",), output=BLOCK_END)
class QuantizedLayerNormalization(QuantConfigMixin, LayerMadNormalization):
    """A LayerNormalization layer that operates on quantized inputs and weights.

    It computes ``gamma * x / mad(x) + beta`` with ``mad(x) = sum(|x|) / N`` over the ``N``
    channels of the last axis. Since ``x / mad(x) = N * x_int / sum(|x_int|)`` does not depend
    on the input fractional bits (nor on a per-tensor QFloat scale), the normalized value is
    an exact rounded integer division: ``z_int = round(x_int * N * 2^fz / sum(|x_int|))``
    (half up, 0 for a row of zeros), so ``|z - z_int * 2^-fz| <= 2^-(fz+1)``, with
    ``fz = buffer_bitwidth - 3 - gamma_value_bits - bits(N)``, the most fractional bits for
    which ``gamma * z + beta`` fits the buffer (``|z| <= N``). Per-axis FixedPoint inputs are
    first aligned on one fractional bit (exact); per-axis QFloats are converted to FixedPoint
    (scales on the output quantizer's ``scale_bits``).

    gamma is quantized by the "gamma_quantizer" (a WeightQuantizer, per channel by default),
    beta by the "beta_quantizer" (an AlignedWeightQuantizer) on the grid of ``gamma * z``.

    Integer maths: ``y = g_int * round(x_int * N * 2^fz / sum(|x_int|)) + b_int`` (frac_bits
    ``fz + f_g``, scales ``s_g``), clipped to the buffer, then the output quantizer if
    configured. Gradient: that of the float ``x * N / sum(|x|)`` (straight-through rounding).

    Args: as LayerMadNormalization, plus:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "gamma_quantizer" (WeightQuantizer arguments, default ``{"bitwidth": 8,
            "axis": -1}``), "beta_quantizer" (AlignedWeightQuantizer arguments, default
            ``{"bitwidth": 16}``), "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: when axis is not the last axis, or the buffer is too small for the
            number of channels.
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 quant_config=None, **kwargs):
        super().__init__(axis=axis, epsilon=epsilon, center=center, scale=scale,
                         beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                         **kwargs)
        self._init_quant_config(quant_config,
                                OUTPUT_KEYS + ("gamma_quantizer", "beta_quantizer"))
        gamma_kwargs = {**GAMMA_QUANTIZER_DEFAULTS, **self.quant_config.get("gamma_quantizer", {})}
        if gamma_kwargs["axis"] not in (None, -1, 0):
            raise ValueError(f"Layer {self.name}: gamma_quantizer axis expected -1 (per "
                             f"channel) or None (per tensor). "
                             f"Received: axis={gamma_kwargs['axis']!r}")
        self.gamma_quantizer = WeightQuantizer(name=self.name + "/gamma_quantizer",
                                               **gamma_kwargs)
        self.beta_quantizer = AlignedWeightQuantizer(
            name=self.name + "/beta_quantizer",
            **{**BETA_QUANTIZER_DEFAULTS, **self.quant_config.get("beta_quantizer", {})})

    def norm_frac_bits(self, channels):
        """The fractional bits ``fz`` of the normalized values for ``channels`` channels."""
        gamma_bits = self.gamma_quantizer.value_bits if self.scale else 0
        frac_bits = self.buffer_bitwidth - 3 - gamma_bits - bits_for(channels)
        if frac_bits < 0:
            raise ValueError(f"Layer {self.name} (QuantizedLayerNormalization): buffer_bitwidth "
                             f"expected at least {3 + gamma_bits + bits_for(channels)} for "
                             f"{channels} channels. Received: "
                             f"buffer_bitwidth={self.buffer_bitwidth}")
        return frac_bits

    def _fixed_point_inputs(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        if isinstance(x, QFloat):
            # a per-tensor (positive) scale cancels in x / mad(x)
            x = x.fp if is_per_tensor(x.scales) else self._to_fixed_point(x)
        return to_single_frac_bits(x)

    def normalize(self, x):
        """``x / mad(x)`` as a FixedPoint ``z_int * 2^-fz`` (exact rounded division)."""
        channels = x.shape[-1]
        if channels is None:
            raise ValueError(f"Layer {self.name} (QuantizedLayerNormalization) expected a "
                             f"static last dimension. Received: shape={x.shape}")
        frac_bits = self.norm_frac_bits(channels)
        multiplier = channels * 2**frac_bits
        if x.value_bits + bits_for(multiplier) + 2 > _INT64_VALUE_BITS:
            raise ValueError(f"Layer {self.name} (QuantizedLayerNormalization) expected inputs "
                             f"of at most {_INT64_VALUE_BITS - bits_for(multiplier) - 2} value "
                             f"bits. Received: value_bits={x.value_bits}")
        x_int = tf.cast(x.values, tf.int64)
        total = tf.reduce_sum(tf.abs(x_int), axis=-1, keepdims=True)
        # round half up of x * M / total = floor((2 * x * M + total) / (2 * total))
        numerator = 2 * x_int * multiplier + total
        z_int = tf.math.floordiv(numerator, tf.maximum(2 * total, 1))
        z_int = tf.where(total > 0, z_int, tf.zeros_like(z_int))
        # straight-through gradient of the float x * M / total (adds exactly 0.0)
        values = tf.cast(x.values, tf.float64)
        smooth = tf.math.divide_no_nan(
            values * multiplier, tf.reduce_sum(tf.abs(values), axis=-1, keepdims=True))
        z = tf.cast(z_int, tf.float64) + (smooth - tf.stop_gradient(smooth))
        return FixedPoint(z, bits_for(multiplier), float(frac_bits))

    def call(self, inputs, training=None):
        z = self.normalize(self._fixed_point_inputs(inputs))
        if self.scale:
            gamma = self.gamma_quantizer(self.gamma, training=training)
            acc = tf.math.multiply(z, gamma)
        else:
            acc = z
        if not isinstance(acc, QFloat):  # no gamma, or fp_quantizer=True
            acc = QFloat(acc, tf.constant(1.0))
        if self.center:
            beta = self.beta_quantizer(self.beta, acc, training=training)
            acc = buffer_add(self, acc, beta, self.buffer_bitwidth)
        return self._quantize_output(acc)
