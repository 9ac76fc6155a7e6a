"""Weight quantizer layers: Quantizer (base), WeightQuantizer, AlignedWeightQuantizer."""
import tensorflow as tf
import tf_keras as keras

from ...tensors import BUFFER_BITS, FixedPoint, QFloat
from ..base import StaticCallMixin, register_keras
from ..calibration.recorders import QFloatRecorder


def check_bitwidth(bitwidth, layer_name, max_bits=BUFFER_BITS, name="bitwidth"):
    """Validates a bitwidth: an int in [1, max_bits]."""
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, int) \
            or not 1 <= bitwidth <= max_bits:
        raise ValueError(f"Layer {layer_name}: {name} expected an int in [1, {max_bits}]. "
                         f"Received: {name}={bitwidth!r}")
    return bitwidth


@register_keras
class Quantizer(StaticCallMixin, keras.layers.Layer):
    """The base class for all quantizers.

    The bitwidth defines the number of quantization levels: an unsigned quantizer maps to
    ``[0, 2^bitwidth - 1]``, a signed one to ``[-2^(bitwidth-1), 2^(bitwidth-1) - 1]`` (one bit
    stores the sign), i.e. ``value_bits = bitwidth - 1`` when signed, ``bitwidth`` otherwise.

    Args:
        bitwidth (int): the quantization bitwidth.
        signed (bool, optional): whether the quantizer expects signed values or unsigned.
            Defaults to True.
    """

    def __init__(self, bitwidth, signed=True, **kwargs):
        super().__init__(**kwargs)
        self.bitwidth = check_bitwidth(bitwidth, self.name)
        if signed and bitwidth < 2 and type(self).__name__ != "WeightQuantizer":
            raise ValueError(f"Layer {self.name}: bitwidth expected >= 2 for a signed "
                             f"quantizer. Received: bitwidth={bitwidth}")
        self.signed = bool(signed)
        self.value_bits = bitwidth - 1 if signed else bitwidth

    def get_config(self):
        return {**super().get_config(), "bitwidth": self.bitwidth, "signed": self.signed}


def reduction_axes(rank, axis):
    """Axes reduced to compute per-tensor (axis None) or per-axis ranges."""
    if axis is None:
        return list(range(rank))
    axis = axis % rank
    return [a for a in range(rank) if a != axis]


#: the clipping ratios of ``max|w|`` tried by :func:`search_ranges` (1 first: it wins ties)
RANGE_RATIOS = tuple(round(1.0 - 0.04 * k, 2) for k in range(20))
#: weight bitwidths up to which a WeightQuantizer searches its ranges (8 bits keep max|w|)
RANGE_SEARCH_MAX_BITS = 4


def search_ratios(inputs, axes, value_bits):
    """The clipping ratios of ``max|w|`` of least squared quantization error, per range.

    At 2 to 4 bits, ``max|w|`` wastes the few levels on the one largest weight of a channel
    (at 2 bits every weight under half of it rounds to zero); clipping it, the MSE range
    choice of TensorRT's and MQBench's weight observers, keeps the bulk of the distribution
    resolved. For each ratio of :data:`RANGE_RATIOS` the weights are quantized exactly as
    :meth:`QFloat.quantize` does with the ranges ``ratio * max|w|`` and the squared errors
    summed in float64 over ``axes``; each range keeps the ratio of least error (the first on a
    tie, so 1 when clipping does not help, e.g. a zero channel).

    Args:
        inputs (tf.Tensor): the float weights.
        axes (list): the reduced axes (all for a per-tensor range).
        value_bits (int): the quantization value bits.

    Returns:
        tf.Tensor: the float32 ratios, shaped as the ranges (the inputs reduced over ``axes``).
    """
    inputs = tf.stop_gradient(tf.convert_to_tensor(inputs, tf.float32))
    ranges = tf.reduce_max(tf.abs(inputs), axis=axes)
    best_ratios, best_errors = tf.ones_like(ranges), None
    for ratio in RANGE_RATIOS:
        scales = QFloat.optimal_scales(ranges * ratio, value_bits)
        for axis in sorted(axes):
            scales = tf.expand_dims(scales, axis)
        quantized = QFloat.quantize(inputs, value_bits, scales).to_float()
        errors = tf.reduce_sum(tf.square(tf.cast(inputs, tf.float64)
                                         - tf.cast(quantized, tf.float64)), axis=axes)
        if best_errors is None:
            best_errors = errors
            continue
        better = errors < best_errors
        best_ratios = tf.where(better, tf.constant(ratio, tf.float32), best_ratios)
        best_errors = tf.where(better, errors, best_errors)
    return best_ratios


@register_keras
class WeightQuantizer(Quantizer):
    """A uniform quantizer that converts a float Tensor to a QFloat representation.

    In order, the WeightQuantizer evaluates the scales that align the values on the optimal
    range ``[-int_max, int_max]`` (``scales = ranges / int_max``, per axis or per tensor) and
    quantizes the rescaled tensor as a FixedPoint: ``w_int = round(w / scales)``, clipped to
    ``[-int_max - 1, int_max]``. The ranges are ``max|w|``; at 2 to 4 bits (QFloat weights) they
    are ``range_ratios * max|w|``, with ``range_ratios`` (a non-trainable weight of the
    quantizer, 1 until set) the clipping ratios of least squared error that
    :meth:`search_ranges` finds on the float weights: quantize() searches them once, so a
    2-bit channel does not spend its levels on its one largest weight; learned rounding and
    QAT keep them, unless ``QuantizedModel.learn_ranges`` trains them. With
    ``fp_quantizer=True`` it returns a FixedPoint with power-of-two (per-axis) fractional bits
    of ``max|w|`` instead. The rounding has a straight-through gradient (identity inside the
    range), and ``max|w|`` is a constant of the step (``tf.stop_gradient``, as TF-MOT's weight
    ranges and Larq's magnitude-aware scales): the gradient of the dequantized weights
    ``scales * w_int`` in the weights is exactly the incoming gradient, as for the float
    weights. A train step that watches ``range_ratios`` gets their gradient through the scales:
    the step-size gradient of LSQ (Esser et al. 2020), ``(w_int - w / scales)`` per weight
    inside the grid and ``w_int`` where it clips, times ``max|w| / int_max``.

    A 1-bit signed quantizer has no integer level but -1 and 0: it is treated as a binary
    quantizer ``w_int = sign(w)`` (in {-1, +1}) with ``scales = mean|w|``.

    Args:
        bitwidth (int, optional): the quantization bitwidth. Defaults to 4.
        signed (bool, optional): whether the quantizer expects signed values or unsigned.
            Defaults to True.
        axis (int, optional): the quantization range is a scalar (None) or a vector
            corresponding to the given axis. Defaults to -1.
        fp_quantizer (bool, optional): True to enable FixedPoint quantization, QFloat
            otherwise. Defaults to False.
    """

    def __init__(self, bitwidth=4, signed=True, axis=-1, fp_quantizer=False, **kwargs):
        super().__init__(bitwidth, signed, **kwargs)
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ValueError(f"Layer {self.name}: axis expected an int or None. "
                             f"Received: axis={axis!r}")
        self.axis = axis
        self.fp_quantizer = bool(fp_quantizer)
        self.qweights = QFloatRecorder(self.name + "/qweights")

    @property
    def searches_ranges(self):
        """bool: whether the ranges are ``range_ratios * max|w|`` (QFloat weights of 2 to
        ``RANGE_SEARCH_MAX_BITS`` bits), the ratios set by :meth:`search_ranges`."""
        return (not self.fp_quantizer and self.bitwidth <= RANGE_SEARCH_MAX_BITS
                and not (self.signed and self.bitwidth == 1))

    def build(self, input_shape):
        if self.searches_ranges:
            shape = () if self.axis is None else (input_shape[self.axis],)
            # a weight of the layer (saved and reloaded with it), not trained: the ratios the
            # search chose for the float weights stay while QAT or learn_rounding move them
            self.range_ratios = self.add_weight(name="range_ratios", shape=shape,
                                                initializer="ones", trainable=False)
        super().build(input_shape)

    def search_ranges(self, inputs):
        """Sets ``range_ratios`` to the clipping ratios of least squared error on ``inputs``
        (:func:`search_ratios`): quantize() calls it once on the float weights.

        Args:
            inputs (tf.Tensor): the float weights this quantizer quantizes.
        """
        if not self.searches_ranges:
            return
        inputs = tf.convert_to_tensor(inputs, tf.float32)
        if not self.built:
            self.build(inputs.shape)
        axes = reduction_axes(len(inputs.shape), self.axis)
        self.range_ratios.assign(search_ratios(inputs, axes, self.value_bits))

    def _ranges(self, inputs):
        axes = reduction_axes(len(inputs.shape), self.axis)
        # no gradient through max|w|: it only reached each channel's largest weight, and it
        # costs a per-channel reduction over the batch in every layer of a train step
        ranges = tf.stop_gradient(tf.reduce_max(tf.abs(inputs), axis=axes))
        ratios = getattr(self, "range_ratios", None)  # None before build: max|w|
        if self.searches_ranges and ratios is not None:
            # the ratios carry the gradient of the ranges (the LSQ step-size gradient) to a
            # train step that watches them (QuantizedModel.learn_ranges)
            ranges = ranges * tf.cast(ratios, tf.float32)
        return ranges

    def quantize(self, inputs):
        """The quantization itself (no recording): float tensor -> QFloat/FixedPoint."""
        inputs = tf.convert_to_tensor(inputs, tf.float32)
        if self.signed and self.bitwidth == 1:
            axes = reduction_axes(len(inputs.shape), self.axis)
            scales = tf.reduce_mean(tf.abs(inputs), axis=axes)
            scales = tf.stop_gradient(tf.where(scales > 0, scales, tf.ones_like(scales)))
            signs = tf.where(inputs >= 0, 1.0, -1.0)
            # straight-through estimator clipped to |w / scales| <= 1
            ratio = inputs / scales
            ste = tf.clip_by_value(ratio, -1.0, 1.0)
            values = ste + tf.stop_gradient(signs - ste)
            return QFloat(FixedPoint(values, 1, 0.0), scales)
        ranges = self._ranges(inputs)
        if self.fp_quantizer:
            frac_bits = FixedPoint.max_frac_bits(self.value_bits, ranges)
            return FixedPoint.quantize(inputs, self.value_bits, frac_bits)
        scales = QFloat.optimal_scales(ranges, self.value_bits)
        return QFloat.quantize(inputs, self.value_bits, scales)

    def call(self, inputs, training=None):
        """Quantize the float inputs.

        Args:
            inputs (tf.Tensor): the inputs tensor.

        Returns:
            QFloat: the quantized tensor (FixedPoint with fp_quantizer).
        """
        if getattr(self, "search_pending", False) and tf.executing_eagerly():
            self.search_pending = False
            self.search_ranges(inputs)
        return self.qweights(lambda: self.quantize(inputs), training)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "fp_quantizer": self.fp_quantizer}


@register_keras
class AlignedWeightQuantizer(Quantizer):
    """A uniform quantizer that converts a float Tensor to a QFloat aligned on another QFloat.

    Unlike the WeightQuantizer, it takes the scales and fractional bits of ``other`` (typically
    the accumulator of a convolution, for its bias): it quantizes ``x / other.scales`` on at
    most ``bitwidth`` significant bits (fractional bits ``min(max_frac_bits, other.frac_bits)``)
    then shifts the values left onto ``other.frac_bits`` (exact).

    Args:
        bitwidth (int, optional): the quantization bitwidth. Defaults to 8.
        signed (bool, optional): whether the quantizer expects signed values or unsigned.
            Defaults to True.
    """

    def __init__(self, bitwidth=8, signed=True, **kwargs):
        super().__init__(bitwidth, signed, **kwargs)
        self.qweights = QFloatRecorder(self.name + "/qweights")

    def quantize(self, inputs, other):
        inputs = tf.convert_to_tensor(inputs, tf.float32)
        if not isinstance(other, QFloat):
            raise TypeError(f"Layer {self.name}: other expected a QFloat. "
                            f"Received: other of type {type(other).__name__}")
        rescaled = inputs / other.scales  # broadcast: other's scales are scalar or per-axis
        target = tf.cast(other.frac_bits, tf.float32)
        frac_bits = tf.minimum(FixedPoint.max_frac_bits(self.value_bits, rescaled, clamp=False),
                               target)
        fp = FixedPoint.quantize(rescaled, self.value_bits, frac_bits)
        # exact left shift onto the accumulator grid (frac_bits <= target), clipped to the
        # 32-bit buffer
        values = fp.shifted_values(target - frac_bits, BUFFER_BITS - 1, left=True)
        return QFloat(FixedPoint(values, BUFFER_BITS - 1, other.frac_bits), other.scales)

    def call(self, inputs, other, training=None):
        """Quantize the float inputs, aligned on another QFloat.

        Args:
            inputs (tf.Tensor): the inputs tensor.
            other (QFloat): a tensor to align on.

        Returns:
            QFloat: a quantized tensor with the same scales and frac_bits as other.
        """
        return self.qweights(lambda: self.quantize(inputs, other), training)
