"""Layer normalizations: LayerMadNormalization and its twin QuantizedLayerNormalization (by the
mean absolute deviation), and QuantizedLayerStdNormalization, the twin of
keras.layers.LayerNormalization (by the standard deviation)."""
import math

import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, bits_for, is_per_tensor
from .base import buffer_add, check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .quantizers import AlignedWeightQuantizer, WeightQuantizer
from .reduction import to_single_frac_bits
from .registry import BLOCK_END, register_twin

__all__ = ["LayerMadNormalization", "QuantizedLayerNormalization",
           "QuantizedLayerStdNormalization", "std_normalize"]

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
@register_twin(LayerMadNormalization, weights=("gamma_quantizer",), output=BLOCK_END,
               export="layer_mad_norm")
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


#: Default bits of the integer mantissa of the normalizing factor of
#: QuantizedLayerStdNormalization (quant_config "rsqrt_bits").
RSQRT_BITS = 16
#: Largest exponent shift of std_normalize (int64 shifts of 0..62).
_MAX_SHIFT = 62


def _pow2(e):
    return tf.pow(tf.constant(2.0, tf.float64), e)


def std_normalize(x_int, eps_units, frac_bits, rsqrt_bits=RSQRT_BITS):
    """The integer layer normalization ``(x - mean) / sqrt(var + eps)`` on the last axis.

    With ``N`` channels and ``x = x_int * u`` (``u`` the input step, ``2^-f`` or ``s * 2^-f``):

    - ``d = N * x_int - sum(x_int)`` (``= N * (x - mean) / u``) and ``S = sum(d^2)``
      (``= N^3 * var / u^2``) are exact int64 integers;
    - ``Q = float64(S) + eps_units * N^3`` with ``eps_units = eps / u^2``, so that
      ``(x - mean) / sqrt(var + eps) = d * r`` with ``r = sqrt(N / Q)``;
    - the normalizing factor ``r`` is represented per sample (per row of the last axis) by an
      integer mantissa ``m`` of ``rsqrt_bits`` bits and an exponent ``e``:
      ``m = floor(r * 2^e)`` in ``[2^(rsqrt_bits-1), 2^rsqrt_bits)``, so
      ``m * 2^-e <= r < (m + 1) * 2^-e`` (r is computed in float64 with the correctly rounded
      ``/`` and ``sqrt`` only, so every IEEE implementation gives the same ``m`` and ``e``);
    - ``z_int = round_half_up(d * m * 2^(frac_bits - e))``: an exact int64 product and a
      rounded shift (the shift clipped to [-62, 62]).

    A row with ``S = 0`` (all values equal) gives ``z_int = 0``.

    Args:
        x_int (tf.Tensor): int64 integer values ``[..., N]``.
        eps_units (tf.Tensor): float64 scalar, the epsilon in squared input steps ``eps / u^2``.
        frac_bits (int): the fractional bits of the result.
        rsqrt_bits (int, optional): bits of the mantissa of ``r``. Defaults to 16.

    Returns:
        tuple: int64 ``z_int``, ``d`` and the per-row int64 mantissa ``m`` and exponent ``e``
        (shape ``[..., 1]``).
    """
    channels = x_int.shape[-1]
    d = channels * x_int - tf.reduce_sum(x_int, axis=-1, keepdims=True)
    total = tf.reduce_sum(d * d, axis=-1, keepdims=True)
    q = tf.cast(total, tf.float64) + eps_units * float(channels**3)
    q = tf.where(total > 0, q, tf.constant(float(channels), tf.float64))
    r = tf.sqrt(float(channels) / q)
    # e such that 2^(R-1) <= r * 2^e < 2^R: a log2 estimate, corrected exactly by one step
    top = float(2**rsqrt_bits)
    e = float(rsqrt_bits - 1) - tf.floor(tf.math.log(r) / math.log(2.0))
    e = tf.clip_by_value(e, -200.0, 200.0)
    t = r * _pow2(e)
    e = e - tf.cast(t >= top, tf.float64) + tf.cast(t < top / 2, tf.float64)
    m = tf.cast(tf.floor(r * _pow2(e)), tf.int64)
    e = tf.cast(e, tf.int64)
    shift = tf.clip_by_value(e - frac_bits, -_MAX_SHIFT, _MAX_SHIFT)
    right = tf.maximum(shift, 0)
    one = tf.ones_like(right)
    half = tf.where(right > 0, tf.bitwise.left_shift(one, tf.maximum(right - 1, 0)),
                    tf.zeros_like(right))
    z_int = tf.math.floordiv(d * m + half, tf.bitwise.left_shift(one, right))
    z_int = z_int * tf.bitwise.left_shift(one, tf.maximum(-shift, 0))
    return z_int, d, m, e


@register_keras
@register_twin(keras.layers.LayerNormalization, weights=("gamma_quantizer",), output=BLOCK_END,
               per_tensor_inputs=True, export="layer_std_norm")
class QuantizedLayerStdNormalization(QuantConfigMixin, keras.layers.LayerNormalization):
    """The quantized twin of keras.layers.LayerNormalization (last axis only).

    It computes ``gamma * (x - mean) / sqrt(var + eps) + beta`` over the ``N`` channels of the
    last axis, with ``mean = sum(x) / N`` and ``var = sum((x - mean)^2) / N``. (The name says
    "Std" because ``QuantizedLayerNormalization`` is the twin of LayerMadNormalization, which
    divides by the mean absolute deviation instead.)

    What is integer (see :func:`std_normalize`): ``d = N * x_int - sum(x_int)`` and
    ``S = sum(d^2)`` (``N^2`` times the integer mean and ``N^3`` times the integer variance) are
    exact int64 values; the normalizing factor ``1 / sqrt(var + eps)`` (times the input step
    ``u`` over ``N``) is represented per sample by an integer mantissa ``m`` of
    ``rsqrt_bits`` bits (16 by default) and a power-of-two exponent ``e``,
    ``m * 2^-e = floor(2^e * sqrt(N / (S + eps * N^3 / u^2))) * 2^-e`` (relative error below
    ``2^-(rsqrt_bits-1)``), computed in float64 with IEEE ``/`` and ``sqrt`` only; the
    normalized values are ``z_int = round(d * m * 2^(fz - e))``, ``|z| <= sqrt(N - 1)``, with
    ``fz = buffer_bitwidth - 3 - gamma_value_bits - bits(sqrt(N - 1))`` fractional bits (the
    most for which ``gamma * z + beta`` fits the buffer). The input step ``u`` (``2^-f``, or
    ``s * 2^-f`` for a per-tensor QFloat) only enters through ``eps / u^2``.

    Inputs must be per tensor (one fractional bit, one scale: the mean mixes the channels);
    ``quantize()`` gives the layer before it a per-tensor output quantizer. They may have at
    most ``(60 - bits(N^3)) // 2`` value bits (int64 exactness: 15 for 768 channels).

    gamma is quantized by the "gamma_quantizer" (a WeightQuantizer, per channel by default),
    beta by the "beta_quantizer" (an AlignedWeightQuantizer) on the grid of ``gamma * z``.

    Integer maths: ``y = g_int * round(d * m * 2^(fz - e)) + b_int`` (frac_bits ``fz + f_g``,
    scales ``s_g``), clipped to the buffer, then the output quantizer if configured. Gradient:
    that of the float ``d * sqrt(N / (S + eps * N^3 / u^2))`` (straight-through rounding).

    Args: as keras.layers.LayerNormalization (only the last axis), plus:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "gamma_quantizer" (WeightQuantizer arguments, default ``{"bitwidth": 8,
            "axis": -1}``), "beta_quantizer" (AlignedWeightQuantizer arguments, default
            ``{"bitwidth": 16}``), "rsqrt_bits" (bits of the mantissa of the normalizing
            factor, in [2, 30], default 16), "output_quantizer" and "buffer_bitwidth".
            Defaults to None.

    Raises:
        ValueError: when axis is not the last axis, the inputs are per-axis or too wide, or
            the buffer is too small for the number of channels.
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
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if len(axes) != 1 or (axes[0] < 0 and axes[0] != -1):
            raise _last_axis_error(self, axis)
        self._init_quant_config(
            quant_config, OUTPUT_KEYS + ("gamma_quantizer", "beta_quantizer", "rsqrt_bits"))
        rsqrt_bits = self.quant_config.get("rsqrt_bits", RSQRT_BITS)
        if isinstance(rsqrt_bits, bool) or not isinstance(rsqrt_bits, int) \
                or not 2 <= rsqrt_bits <= 30:
            raise ValueError(f"Layer {self.name}: rsqrt_bits expected an int in [2, 30]. "
                             f"Received: rsqrt_bits={rsqrt_bits!r}")
        self.rsqrt_bits = rsqrt_bits
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

    def build(self, input_shape):
        rank = tf.TensorShape(input_shape).rank
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        if rank is not None and axis % rank != rank - 1:
            raise _last_axis_error(self, axis)
        super().build(input_shape)

    def get_config(self):
        config = super().get_config()
        axis = config["axis"]
        # the Keras build turns axis into a tracked list: return JSON-native ints
        config["axis"] = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else axis
        return config

    def norm_frac_bits(self, channels):
        """The fractional bits ``fz`` of the normalized values for ``channels`` channels."""
        gamma_bits = self.gamma_quantizer.value_bits if self.scale else 0
        root_bits = bits_for(math.isqrt(max(channels - 1, 0)) + 1)
        frac_bits = self.buffer_bitwidth - 3 - gamma_bits - root_bits
        if frac_bits < 0:
            raise ValueError(f"Layer {self.name} (QuantizedLayerStdNormalization): "
                             f"buffer_bitwidth expected at least {3 + gamma_bits + root_bits} "
                             f"for {channels} channels. Received: "
                             f"buffer_bitwidth={self.buffer_bitwidth}")
        return frac_bits

    def max_input_value_bits(self, channels):
        """The widest inputs (value bits) for which the int64 maths is exact."""
        # |x_i - x_j| < 2^(vb+1): S < N^3 * 2^(2 vb + 2) and |d * m| < N * 2^(vb + 1 + R)
        by_sum = (_INT64_VALUE_BITS - 2 - (channels**3).bit_length()) // 2
        by_product = _INT64_VALUE_BITS - 1 - self.rsqrt_bits - channels.bit_length()
        return min(by_sum, by_product)

    def _integer_inputs(self, inputs):
        """The FixedPoint of the inputs and ``eps / u^2`` (float64), ``u`` the input step."""
        x = check_qtensor(self, inputs, (FixedPoint, QFloat), per_tensor=True)
        fp = x.fp if isinstance(x, QFloat) else x
        steps = _pow2(2.0 * tf.cast(tf.reshape(fp.frac_bits, []), tf.float64))
        eps_units = float(self.epsilon) * steps
        if isinstance(x, QFloat):
            scale = tf.cast(tf.reshape(x.scales, []), tf.float64)
            eps_units = eps_units / (scale * scale)
        return fp, tf.stop_gradient(eps_units)

    def normalize(self, x, eps_units):
        """``(x - mean) / sqrt(var + eps)`` as a FixedPoint ``z_int * 2^-fz``."""
        channels = x.shape[-1]
        if channels is None:
            raise ValueError(f"Layer {self.name} (QuantizedLayerStdNormalization) expected a "
                             f"static last dimension. Received: shape={x.shape}")
        frac_bits = self.norm_frac_bits(channels)
        max_bits = self.max_input_value_bits(channels)
        if x.value_bits > max_bits:
            raise ValueError(f"Layer {self.name} (QuantizedLayerStdNormalization) expected "
                             f"inputs of at most {max_bits} value bits for {channels} "
                             f"channels. Received: value_bits={x.value_bits}")
        z_int, _, _, _ = std_normalize(tf.cast(x.values, tf.int64), eps_units, frac_bits,
                                       self.rsqrt_bits)
        # straight-through gradient of the float d * sqrt(N / (S + eps_units * N^3)) * 2^fz
        values = tf.cast(x.values, tf.float64)
        d = channels * values - tf.reduce_sum(values, axis=-1, keepdims=True)
        q = tf.reduce_sum(d * d, axis=-1, keepdims=True) + eps_units * float(channels**3)
        q = tf.where(q > 0, q, tf.constant(float(channels), tf.float64))
        smooth = d * tf.sqrt(float(channels) / q) * float(2**frac_bits)
        z = tf.cast(z_int, tf.float64) + (smooth - tf.stop_gradient(smooth))
        bound = math.isqrt((channels - 1) << (2 * frac_bits)) + 1
        return FixedPoint(z, bits_for(bound), float(frac_bits))

    def call(self, inputs, training=None):
        x, eps_units = self._integer_inputs(inputs)
        z = self.normalize(x, eps_units)
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
