"""QFloat: a FixedPoint times float scales.

A QFloat represents ``fp.to_float() * scales``: the float tensor is first divided by its scales
(per-tensor or per-axis along the last dimension) to be aligned on an optimal range, then
quantized as a FixedPoint. It is the type of quantized weights, whose ranges are not powers of
two. ``to_fixed_point`` turns it into a pure FixedPoint by quantizing the scales themselves.
"""
import tensorflow as tf

from .carrier import check_value_bits
from .fixed_point import FixedPoint
from .qtensor import QTensor, is_per_tensor


class QFloat(QTensor):
    """A Tensor of FixedPoint values and scales representing float numbers.

    Args:
        fp (FixedPoint): a FixedPoint of values.
        scales (tf.Tensor): a Tensor of scales, broadcastable to the values.

    Example:
        ```python
        w = QFloat.quantize(x, value_bits=7, scales=QFloat.optimal_scales(ranges, 7))
        w.to_float()  # ~ x
        ```
    """
    __name__ = "quantizeml.QFloat"
    fp: FixedPoint
    scales: tf.Tensor

    class Spec:
        @property
        def shape(self):
            """tf.TensorShape: the shape of the values (KerasTensors require it)."""
            return self.fp.shape

    def __init__(self, fp, scales):
        if not isinstance(fp, FixedPoint):
            raise TypeError("QFloat expected a FixedPoint. "
                            f"Received: fp={type(fp).__name__}")
        self.fp = fp
        self.scales = tf.cast(scales, tf.float32)

    @property
    def shape(self):
        """tf.TensorShape: the shape of the values."""
        return self.fp.shape

    def _values(self):
        return self.fp.values

    @property
    def values(self):
        """tf.Tensor: the integer values of the inner FixedPoint."""
        return self.fp.values

    @property
    def value_bits(self):
        """int: the value bits of the inner FixedPoint."""
        return self.fp.value_bits

    @property
    def frac_bits(self):
        """tf.Tensor: the fractional bits of the inner FixedPoint."""
        return self.fp.frac_bits

    @property
    def per_tensor(self):
        """bool: True when both fractional bits and scales are single values."""
        return self.fp.per_tensor and is_per_tensor(self.scales)

    def to_float(self):
        """Returns a float representation of the QFloat: ``fp.to_float() * scales``.

        Computed in float64 and rounded once to float32, so that eager and graph execution
        (where grappler may fuse or reorder the multiplications) give identical results.

        Returns:
            tf.Tensor: the float representation.
        """
        values = tf.cast(self.fp.values, tf.float64) * tf.pow(
            tf.constant(2.0, tf.float64), -tf.cast(self.fp.frac_bits, tf.float64))
        return tf.cast(values * tf.cast(self.scales, tf.float64), tf.float32)

    @staticmethod
    def optimal_scales(ranges, value_bits):
        """Evaluates the optimal QFloat scales for quantization ranges.

        The optimal quantization range for a given bitwidth is ``[-int_max, int_max]`` with
        ``int_max = 2^value_bits - 1``: ``scales = ranges / int_max`` (1 for a zero range).

        Args:
            ranges (tf.Tensor): a tensor of quantization ranges.
            value_bits (int): the number of value bits.

        Returns:
            tf.Tensor: the optimal scales.
        """
        value_bits = check_value_bits(value_bits)
        ranges = tf.abs(tf.cast(ranges, tf.float32))
        int_max = 2.0**value_bits - 1
        if int_max == 0:
            int_max = 1.0
        # The division runs in float64 then rounds once to float32: graph optimizers may turn a
        # division by a constant into a multiplication by its reciprocal, which would make
        # float32 scales differ by an ulp between eager and graph execution.
        scales = tf.cast(tf.cast(ranges, tf.float64) / int_max, tf.float32)
        return tf.where(ranges > 0, scales, tf.ones_like(ranges))

    @staticmethod
    def max_frac_bits(value_bits, ranges, scales, clamp=True):
        """Evaluate the maximum fractional bit index for the ranges divided by the scales.

        Args:
            value_bits (int): the number of value bits.
            ranges (tf.Tensor): a tensor of float quantization ranges.
            scales (tf.Tensor): the scales to apply to the quantization ranges.
            clamp (bool, optional): clamp the results to value_bits. Defaults to True.

        Returns:
            tf.Tensor: a tensor of fractional bits.
        """
        ranges = tf.cast(ranges, tf.float32) / tf.cast(scales, tf.float32)
        return FixedPoint.max_frac_bits(value_bits, ranges, clamp)

    @staticmethod
    def quantize(x, value_bits, scales, frac_bits=0.0):
        """Converts a float Tensor to a QFloat.

        ``fp = FixedPoint.quantize(x / scales, value_bits, frac_bits)``; the integer values
        are clipped to ``[-int_max - 1, int_max]``.

        Args:
            x (tf.Tensor): a tensor of float values.
            value_bits (int): the number of value bits.
            scales (tf.Tensor): a tensor of alignment scales.
            frac_bits (int, optional): the inner FixedPoint fractional bits. Defaults to 0.

        Returns:
            QFloat: the QFloat representation.
        """
        scales = tf.cast(scales, tf.float32)
        x = tf.cast(x, tf.float32)
        fp = FixedPoint.quantize(x / scales, value_bits, frac_bits)
        return QFloat(fp, scales)

    @staticmethod
    def quantize_scales(scales, scale_bits):
        """Quantizes the QFloat scales with the specified bitwidth.

        Scales are positive: each is quantized on ``scale_bits`` significant bits with its own
        fractional bits (so small and large scales keep the same relative precision,
        ``<= 2^-scale_bits``).

        Args:
            scales (tf.Tensor): a tensor of float scales.
            scale_bits (int): the number of scales bits.

        Returns:
            FixedPoint: the FixedPoint scales.
        """
        scale_bits = check_value_bits(scale_bits, "scale_bits")
        scales = tf.cast(scales, tf.float32)
        frac_bits = FixedPoint.max_frac_bits(scale_bits, scales, clamp=False)
        return FixedPoint.quantize(scales, scale_bits, frac_bits)

    def to_fixed_point(self, scale_bits=8):
        """Returns a FixedPoint representation of the QFloat.

        The scales are quantized with :meth:`quantize_scales` and multiplied with the values
        (an exact integer product: the result has ``value_bits + scale_bits`` value bits and
        ``frac_bits + scales.frac_bits`` fractional bits).

        Args:
            scale_bits (int, optional): the scales quantization bitwidth. Defaults to 8.

        Returns:
            tuple(FixedPoint, FixedPoint): the FixedPoint representation and the quantized
            scales.
        """
        scales = QFloat.quantize_scales(self.scales, scale_bits)
        return self.fp * scales, scales

    def promote(self, bits):
        """Increase the number of value bits.

        Args:
            bits (int): the new number of value bits.

        Returns:
            QFloat: a QFloat with increased value bits.
        """
        return QFloat(self.fp.promote(bits), self.scales)

    def upscale(self, frac_bits, value_bits=None):
        """Align a QFloat to a specified precision.

        Args:
            frac_bits (tf.Tensor): the target fractional bits.
            value_bits (int, optional): the target value bits (defaults to current value bits).

        Returns:
            QFloat: the upscaled QFloat.
        """
        return QFloat(self.fp.upscale(frac_bits, value_bits), self.scales)

    def __add__(self, other):
        return tf.math.add(self, other)

    def __radd__(self, other):
        return tf.math.add(other, self)

    def __sub__(self, other):
        return tf.math.subtract(self, other)

    def __mul__(self, other):
        return tf.math.multiply(self, other)

    def __rmul__(self, other):
        return tf.math.multiply(other, self)

    def __matmul__(self, other):
        return tf.linalg.matmul(self, other)
