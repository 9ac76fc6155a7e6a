"""OutputQuantizer (QTensor -> lower-bitwidth FixedPoint), InputQuantizer (float -> FixedPoint)
and Dequantizer (QTensor -> float)."""
import tensorflow as tf
import tf_keras as keras

from ...tensors import FixedPoint, QFloat, QTensor
from ...tensors.carrier import (BUFFER_BITS, MAX_VALUE_BITS, carrier_dtype, round_half_up,
                                round_shifted_half_up)
from ...tensors.fixed_point import shift_values
from ...tensors.fusion import Deferred, fused, taping
from ..base import StaticCallMixin, record_saturation, register_keras, saturation_observed
from ..calibration.observer import check_axis
from .quantizers import Quantizer, check_bitwidth


def clip_in_carrier(values, low, high, scalar_top=True):
    """``min(max(values, low), high)`` in the dtype of ``low`` (integer bounds), with the
    gradient of a clip (``dy`` where nothing was clipped, 0 elsewhere) from one comparison.

    Casting to the narrower carrier first is exact within the bounds and monotonic outside,
    so the clip is the same. The bounds get no gradient (integer constants). ``scalar_top``
    clips with a scalar when a per-channel ``high`` is the same on every channel (False in
    fused kernels, where broadcasting costs nothing).
    """
    @tf.custom_gradient
    def clip(values):
        cast = tf.cast(values, low.dtype)
        floor = tf.maximum(cast, low)
        if high.shape.rank and scalar_top:
            # a per-channel bound (a ReLU's maximum) broadcasts 2-3 times slower than a
            # scalar: use its largest value when it is the same for every channel
            top = tf.reduce_max(high)
            clipped = tf.cond(tf.reduce_min(high) < top, lambda: tf.minimum(floor, high),
                              lambda: tf.minimum(floor, top))
        else:
            clipped = tf.minimum(floor, high)

        def grad(dy):
            return tf.cast(dy * tf.cast(tf.equal(clipped, cast), dy.dtype), values.dtype)
        return clipped, grad
    return clip(values)


def ste_requantized(rounded, args, low, high, slope):
    """``clip(rounded(*args), low, high)`` in the dtype of ``low``, differentiated in one
    expression: ``dy * slope`` where nothing was clipped, 0 elsewhere, for ``args[0]``.

    It is the gradient that the op-by-op chain (straight-through rounding, then the clip of
    :func:`clip_in_carrier`) gets, with ``slope`` the derivative of ``rounded`` in ``args[0]``
    (a per-channel float32 multiplier, e.g. the requantization scale: exact in float32, an
    8-bit integer times a power of two). The other args, ``slope`` and the bounds are constants
    of the step (no gradient). In graphs the forward (clipped values and the mask of the values
    kept) and the gradient run as one fused kernel each (see
    :mod:`~quantizeml.tensors.fusion`), instead of five to seven passes over the tensor each.
    """
    @tf.custom_gradient
    def requantized(values):
        def forward(low, high, *args):
            cast = tf.cast(rounded(*args), low.dtype)
            clipped = tf.minimum(tf.maximum(cast, low), high)
            return clipped, tf.equal(clipped, cast)
        clipped, kept = fused(forward, low, high, values, *args[1:], under_tape=True)

        def grad(dy):
            def backward(dy, kept, slope):
                kept_dy = tf.where(kept, dy * tf.cast(slope, dy.dtype), tf.zeros_like(dy))
                return tf.cast(kept_dy, values.dtype)
            return fused(backward, dy, kept, slope, under_tape=True)
        return clipped, grad
    return requantized(args[0])


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
            # (value_bits + scale_bits + 1 bits, in float64) that _requantize shifts back.
            scales = QFloat.quantize_scales(inputs.scales, self.scale_bits)
            values = tf.cast(inputs.values, tf.float64) * tf.cast(scales.values, tf.float64)
            exact_bits = inputs.value_bits + scales.value_bits + 1
            value_bits = min(exact_bits, MAX_VALUE_BITS)
            return FixedPoint(values, value_bits, inputs.frac_bits + scales.frac_bits,
                              clip=exact_bits > MAX_VALUE_BITS)
        if isinstance(inputs, FixedPoint):
            return inputs
        raise TypeError(f"Layer {self.name} (OutputQuantizer) expected FixedPoint or QFloat "
                        f"inputs. Received: inputs of type {type(inputs).__name__}")

    def _requantize(self, fp):
        frac_bits = self.frac_bits
        # the rounded shift, computed in the carrier of the wider of both bitwidths
        value_bits = max(fp.value_bits, self.value_bits)
        return self._output(lambda values, shift: shift_values(values, shift, value_bits),
                            (fp.values, frac_bits - fp.frac_bits), frac_bits,
                            slope=lambda shift: tf.pow(2.0, tf.cast(shift, tf.float32)))

    def _output(self, rounded, args, frac_bits, low=None, high=None, observed=None,
                slope=None):
        """The output FixedPoint: ``rounded(*args)`` (exact rounded integers) clipped to
        ``[low, high]`` (the output range by default).

        In graphs both run as one fused kernel (see :mod:`~quantizeml.tensors.fusion`); eager
        (and compiled eager) calls record the saturation of ``observed(values)`` (the values by
        default) first: a value clipped by a single step (e.g. 1.0 on an 8-bit [0, 255/256]
        grid) is a rounding of the calibrated range, not a saturation worth reporting. Under a
        gradient tape in graphs (train steps), ``slope(*args[1:])`` (the float32 derivative of
        ``rounded`` in ``args[0]`` with a straight-through rounding, broadcast on the values)
        gives the gradient of the whole chain in one expression (see :func:`ste_requantized`).
        """
        low, high = self._bounds(low, high)
        if saturation_observed(args[0]):
            values = rounded(*args)
            record_saturation(self, "output", values if observed is None else observed(values),
                              self.value_bits, tolerance=1)
            values = clip_in_carrier(values, low, high)
        elif slope is not None and taping():
            values = ste_requantized(rounded, args, low, high, slope(*args[1:]))
        else:
            def kernel(values, low, high, *args):
                return clip_in_carrier(rounded(values, *args), low, high, scalar_top=False)
            deferred = Deferred.of(args[0])
            if deferred is None:
                values = fused(kernel, args[0], low, high, *args[1:])
            else:
                # a reducing layer's accumulator: its float32 parts summed in this kernel
                values = deferred.apply(kernel, low, high, *args[1:])
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
        """QFloat -> FixedPoint in one exact rounded multiplication.

        ``round(values * s_int * 2^(frac_out - frac_in - s_frac))``: the quantized scales and
        the shift form one float64 multiplier (an 8-bit integer times a power of two), and the
        product with the values is the exact integer ``values * s_int`` shifted, so
        :func:`round_shifted_half_up` rounds it exactly. The result equals
        ``_requantize(_to_fixed_point(inputs))``, with a ReLU clipped at ``max_value`` first
        when ``relu`` (rounding is monotonic: clipping before or after it is the same).
        """
        frac_bits, multiplier, low, high, relu_high = self._qfloat_parameters(
            inputs.scales, inputs.frac_bits, relu, max_value)

        def observed(values):
            # the saturation beyond the ReLU's own clip
            values = tf.maximum(values, 0.0) if relu else values
            return values if relu_high is None else tf.minimum(values, relu_high)

        def rounded(values, multiplier):
            return round_shifted_half_up(tf.cast(values, tf.float64) * multiplier)
        return self._output(rounded, (inputs.values, multiplier), frac_bits, low, high, observed,
                            slope=lambda multiplier: tf.cast(multiplier, tf.float32))

    def _qfloat_parameters(self, scales, frac_in_bits, relu, max_value):
        """(frac_bits, multiplier, low, high, relu_high) of :meth:`_requantize_qfloat`: the
        output fractional bits, the float64 multiplier of the values, the output bounds (None
        for the output range's) and the ReLU bound on the output grid (None without one)."""
        scales = QFloat.quantize_scales(scales, self.scale_bits)
        frac_in = frac_in_bits + scales.frac_bits
        frac_bits = self.frac_bits
        shift = tf.cast(frac_bits - frac_in, tf.float64)
        two = tf.constant(2.0, tf.float64)
        multiplier = tf.cast(scales.values, tf.float64) * tf.pow(two, shift)
        low, high, relu_high = self._low, None, None
        if relu:
            low = 0.0
            if max_value is not None:
                # the ReLU bound on the input grid (floored), then on the output one
                max_int = tf.floor(float(max_value) * tf.pow(two, tf.cast(frac_in, tf.float64)))
                relu_high = round_shifted_half_up(max_int * tf.pow(two, shift))
                high = tf.minimum(relu_high, 2.0**self.value_bits - 1)
        return frac_bits, multiplier, low, high, relu_high

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
        return self._output(lambda x, frac_bits: round_half_up(x * tf.pow(2.0, frac_bits)),
                            (x, frac_bits), frac_bits,
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
