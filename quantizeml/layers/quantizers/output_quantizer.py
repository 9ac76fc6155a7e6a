"""OutputQuantizer (QTensor -> lower-bitwidth FixedPoint), InputQuantizer (float -> FixedPoint)
and Dequantizer (QTensor -> float)."""
import tensorflow as tf
import tf_keras as keras

from ...recipes.requantize import (qfloat_requantization, qfloat_to_fixed_point, requantize,
                                   rounded_multiply, rounded_scaling, rounded_shift)
from ...tensors import BUFFER_BITS, FixedPoint, MAX_VALUE_BITS, QFloat, QTensor, carrier_dtype
from ..base import StaticCallMixin, record_saturation, register_keras, saturation_observed
from ..calibration.observer import check_axis
from .quantizers import Quantizer, check_bitwidth


@register_keras
class OutputQuantizer(Quantizer):
    """A uniform FixedPoint quantizer that selects the optimal number of fractional bits for the
    range of its inputs and updates them accordingly.

    Its calibrated ``range_max`` variable (per tensor, or per channel of the last axis) sets the
    fractional bits ``frac_bits = value_bits - ceil(log2(range_max))``; the inputs are then
    rescaled (exact rounded shift) to those fractional bits and clipped to the bitwidth
    (unsigned quantizers also clip negative values to zero). A QFloat input is first converted
    to a FixedPoint with its scales quantized on ``scale_bits``. ``range_max`` starts at 1,
    which means "not calibrated" (see ``calibration_required``).

    Integer maths: ``y = clip(round(x * 2^(frac_out - frac_in)), int_min, int_max)``.

    Args:
        bitwidth (int, optional): the quantization bitwidth. Defaults to 8.
        signed (bool, optional): whether the quantizer expects signed values or unsigned.
            Defaults to True.
        axis (str, optional): 'per-tensor' or 'per-axis' (last axis). Defaults to 'per-tensor'.
        scale_bits (int, optional): the bitwidth to use when quantizing output scales.
            Defaults to 8.
        buffer_bitwidth (int, optional): buffer bitwidth value. Defaults to 32.
    """

    def __init__(self, bitwidth=8, signed=True, axis="per-tensor", scale_bits=8,
                 buffer_bitwidth=32, **kwargs):
        super().__init__(bitwidth, signed, **kwargs)
        self.axis = check_axis(axis, self.name)
        self.scale_bits = check_bitwidth(scale_bits, self.name, name="scale_bits")
        self.buffer_bitwidth = check_bitwidth(buffer_bitwidth, self.name, max_bits=BUFFER_BITS,
                                              name="buffer_bitwidth")
        if bitwidth > buffer_bitwidth:
            raise ValueError(f"Layer {self.name}: bitwidth expected <= buffer_bitwidth "
                             f"({buffer_bitwidth}). Received: bitwidth={bitwidth}")

    def build(self, input_shape):
        shape = () if self.axis == "per-tensor" else (input_shape[-1],)
        self.range_max = self.add_weight(name="range_max", shape=shape, trainable=False,
                                         initializer="ones")
        super().build(input_shape)

    #: Largest spread of per-axis fractional bits (see ``frac_bits``).
    MAX_AXIS_SPREAD = 8

    @property
    def frac_bits(self):
        """tf.Tensor: the output fractional bits given by the calibrated range.

        Per-axis fractional bits span at most ``MAX_AXIS_SPREAD`` bits: channels of a much
        smaller range than the widest one share the finest allowed step. Aligning the channels
        (as a convolution over them must) then costs at most 8 more value bits, instead of
        overflowing the 32-bit buffer for near-dead channels.
        """
        frac_bits = FixedPoint.max_frac_bits(self.value_bits, self.range_max, clamp=False)
        if self.axis == "per-axis":
            frac_bits = tf.minimum(frac_bits, tf.reduce_min(frac_bits) + self.MAX_AXIS_SPREAD)
        return frac_bits

    def _to_fixed_point(self, inputs):
        if isinstance(inputs, QFloat):
            # The buffer times the quantized scales, an exact product wider than the buffer
            # that _requantize shifts back.
            return qfloat_to_fixed_point(inputs, self.scale_bits)
        if isinstance(inputs, FixedPoint):
            return inputs
        raise TypeError(f"Layer {self.name} (OutputQuantizer) expected FixedPoint or QFloat "
                        f"inputs. Received: inputs of type {type(inputs).__name__}")

    def _requantize(self, fp):
        frac_bits = self.frac_bits
        # the rounded shift, computed in the carrier of the wider of both bitwidths
        value_bits = max(fp.value_bits, self.value_bits)
        return self._output(rounded_shift(value_bits), (fp.values, frac_bits - fp.frac_bits),
                            frac_bits, slope=lambda shift: tf.pow(2.0, tf.cast(shift, tf.float32)))

    def _output(self, rounded, args, frac_bits, low=None, high=None, observed=None,
                slope=None, multiplier_slope=None):
        """The output FixedPoint: ``rounded(*args)`` (exact rounded integers) clipped to
        ``[low, high]`` (the output range by default), by
        :func:`~quantizeml.recipes.requantize.requantize`.

        Eager (and compiled eager) calls record the saturation of ``observed(values)`` (the
        values by default) first: a value clipped by a single step (e.g. 1.0 on an 8-bit
        [0, 255/256] grid) is a rounding of the calibrated range, not a saturation worth
        reporting. ``slope(*args[1:])`` is the float32 derivative of ``rounded`` in ``args[0]``
        (a straight-through rounding) that train steps differentiate with;
        ``multiplier_slope(args[0])`` the derivative in ``args[1]`` where that is a multiplier
        with a gradient (the scales of learned weight ranges).
        """
        low, high = self._bounds(low, high)
        record = None
        if saturation_observed(args[0]):
            def record(values):
                record_saturation(self, "output",
                                  values if observed is None else observed(values),
                                  self.value_bits, tolerance=1)
        values = requantize(rounded, args, low, high, slope=slope, record=record,
                            multiplier_slope=multiplier_slope)
        return FixedPoint(values, self.value_bits, frac_bits, clip=False)

    @property
    def _low(self):
        """float: the smallest output integer, ``-2^vb`` (signed) or 0."""
        return -2.0**self.value_bits if self.signed else 0.0

    def _bounds(self, low=None, high=None):
        """The integer bounds of the output, as tensors in the output carrier: ``[low, high]``
        (the output range by default)."""
        dtype = carrier_dtype(self.value_bits)
        low = self._low if low is None else low
        high = tf.constant(2.0**self.value_bits - 1, dtype) if high is None \
            else tf.cast(tf.stop_gradient(high), dtype)
        return tf.constant(low, dtype), high

    def fuses(self, inputs):
        """bool: whether ``call(inputs, relu=True)`` takes these inputs (QFloats whose product
        with the quantized scales float64 holds exactly)."""
        return isinstance(inputs, QFloat) \
            and inputs.value_bits + self.scale_bits <= MAX_VALUE_BITS

    def _requantize_qfloat(self, inputs, relu=False, max_value=None):
        """QFloat -> FixedPoint in one exact rounded multiplication (see
        :func:`~quantizeml.recipes.requantize.qfloat_requantization`).

        ``round(values * s_int * 2^(frac_out - frac_in - s_frac))``. The result equals
        ``_requantize(_to_fixed_point(inputs))``, with a ReLU clipped at ``max_value`` first
        when ``relu``.
        """
        frac_bits = self.frac_bits
        multiplier, low, high, relu_high = qfloat_requantization(
            inputs.scales, inputs.frac_bits, frac_bits, self.scale_bits, self._low,
            self.value_bits, relu, max_value)

        def observed(values):
            # the saturation beyond the ReLU's own clip
            values = tf.maximum(values, 0.0) if relu else values
            return values if relu_high is None else tf.minimum(values, relu_high)

        return self._output(rounded_multiply, (inputs.values, multiplier), frac_bits, low, high,
                            observed, slope=lambda multiplier: tf.cast(multiplier, tf.float32),
                            multiplier_slope=lambda values: values)

    def call(self, inputs, relu=False, max_value=None):
        """Quantize the QTensor inputs to a lower bitwidth.

        Args:
            inputs (QTensor): the inputs tensor.
            relu (bool, optional): apply a ReLU first (QuantizedReLU fuses itself with its
                output quantizer this way): ``min(max(x, 0), max_value)`` with
                ``max_value`` floored on the input grid. Defaults to False.
            max_value (float, optional): the ReLU maximum (None: unbounded). Defaults to None.

        Returns:
            FixedPoint: the quantized tensor.
        """
        if self.fuses(inputs):
            return self._requantize_qfloat(inputs, relu, max_value)
        if relu:
            raise ValueError(f"Layer {self.name}: relu expected QFloat inputs of at most "
                             f"{MAX_VALUE_BITS - self.scale_bits} value bits. Received: "
                             f"inputs of type {type(inputs).__name__}")
        return self._requantize(self._to_fixed_point(inputs))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "scale_bits": self.scale_bits,
                "buffer_bitwidth": self.buffer_bitwidth}


@register_keras
class InputQuantizer(OutputQuantizer):
    """Quantizes float model inputs to a FixedPoint with a calibrated range.

    ``x_int = clip(round(x * 2^frac_bits), int_min, int_max)`` with ``frac_bits`` from the
    calibrated ``range_max`` as in OutputQuantizer. quantize() places one after each model
    input that feeds a layer expecting QTensors.

    Args: as OutputQuantizer (defaults: bitwidth=8, signed=True, axis='per-tensor').
    """

    def call(self, inputs):
        if isinstance(inputs, QTensor):
            return super().call(inputs)
        x = tf.cast(inputs, tf.float32)
        frac_bits = self.frac_bits
        # x * 2^frac_bits is exact in float32 (a power-of-two scaling; an overflow to +-inf
        # is clipped like any saturated value), then rounded exactly
        return self._output(rounded_scaling, (x, frac_bits), frac_bits,
                            slope=lambda frac_bits: tf.pow(2.0, frac_bits))


@register_keras
class Dequantizer(StaticCallMixin, keras.layers.Layer):
    """Layer that allows to dequantize its inputs.

    QTensor inputs (or nests of them) are converted to float with ``to_float()``; float
    tensors pass through.
    """

    def call(self, inputs):
        """Convert QTensor inputs to float.

        Args:
            inputs (tf.Tensor or QTensor): the inputs tensor(s).

        Returns:
            tf.Tensor: the dequantized tensor(s).
        """
        def dequantize(x):
            return x.to_float() if isinstance(x, QTensor) else x
        if isinstance(inputs, (list, tuple)):
            return type(inputs)(dequantize(x) for x in inputs)
        if isinstance(inputs, dict):
            return {k: dequantize(v) for k, v in inputs.items()}
        return dequantize(inputs)
