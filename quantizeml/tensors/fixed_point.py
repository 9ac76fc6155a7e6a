"""FixedPoint: integers with fractional bits, the integer value type of quantizeml.

A FixedPoint holds integer ``values`` whose real value is ``values * 2^-frac_bits``. Its
``value_bits`` (a static int, sign bit excluded) bound the integers to
``[-2^value_bits, 2^value_bits - 1]``; ``frac_bits`` is a float tensor of integers, a scalar
(per-tensor) or a vector broadcast along the last axis (per-axis).

Exactness: the values live in a float *carrier* (float32 up to 23 value bits, float64 beyond,
see :mod:`quantizeml.tensors.carrier`) so every integer that fits the value bits is held
exactly, and every operation below is an exact integer operation: shifts are multiplications by
powers of two, rounded right shifts round half up (``floor(x + 0.5)``, what hardware does with
``(x + 2^(s-1)) >> s``), and results are clipped to the value bits only where the documentation
says so.
"""
import numpy as np
import tensorflow as tf

from .carrier import (BUFFER_BITS, MAX_VALUE_BITS, carrier_dtype, check_value_bits,
                      round_half_up, round_shifted_half_up)
from .gradients import in_scratch_graph
from .qtensor import QTensor, is_per_tensor


def _as_frac_bits(frac_bits):
    return tf.cast(frac_bits, tf.float32)


def _check_fixed_point_value_bits(value_bits):
    """Validates the value bits of a FixedPoint: an int in [1, MAX_VALUE_BITS] (a FixedPoint of
    0 value bits would only hold -1 and 0)."""
    value_bits = check_value_bits(value_bits)
    if value_bits < 1:
        raise ValueError(f"FixedPoint value_bits expected an int in [1, {MAX_VALUE_BITS}] "
                         f"(a signed quantizer of bitwidth b has b - 1 value bits). "
                         f"Received: value_bits={value_bits}")
    return value_bits


def _check_integer_values(values):
    """Raises a ValueError for concrete non-integer values: Python numbers and lists, numpy
    arrays and eager tensors. Symbolic (graph) tensors are not checked: no op is added to a
    traced graph. NaN and infinities are not reported (they are not fractions)."""
    if isinstance(values, tf.Tensor):
        if tf.is_symbolic_tensor(values) or not values.dtype.is_floating:
            return
        array = values.numpy()
    elif isinstance(values, (np.ndarray, np.generic, int, float, list, tuple)):
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            return
    else:  # variables, KerasTensors, ...: not checked
        return
    if np.array_equal(array, np.floor(array)):  # the common case, in one pass
        return
    fractional = np.isfinite(array) & (array != np.floor(array))
    if np.any(fractional):
        first = array[fractional].flat[0]
        raise ValueError(f"FixedPoint values expected integers (use FixedPoint.quantize to "
                         f"quantize float values). Received: values with "
                         f"{int(np.sum(fractional))} non-integer value(s), e.g. {first!r}")


def _pow2(exponent, dtype):
    return tf.pow(tf.constant(2.0, dtype), tf.cast(exponent, dtype))


def ceil_log2(x):
    """``ceil(log2(x))`` of positive float32 values, exactly, from their binary exponent.

    A normal float32 ``x = 1.m * 2^e`` has ``ceil(log2(x)) = e`` when ``m == 0`` (a power of
    two), ``e + 1`` otherwise; subnormals (below 2^-126) count as 2^-126. The result is
    meaningless for ``x <= 0`` (callers select another value there).
    """
    bits = tf.bitcast(tf.maximum(tf.cast(x, tf.float32), 2.0**-126), tf.int32)
    exponent = tf.bitwise.right_shift(bits, 23) - 127
    fraction = tf.bitwise.bitwise_and(bits, 0x7FFFFF)
    return tf.cast(exponent + tf.cast(fraction > 0, tf.int32), tf.float32)


def static_max(t):
    """The maximum of ``t`` as a Python float when it is known statically, else None."""
    value = tf.get_static_value(t)
    if value is None:
        return None
    return float(np.max(value)) if np.size(value) else 0.0


def fold_static(fn, *tensors):
    """``fn(*tensors)``, folded into a constant when every tensor is known statically.

    ``tf.get_static_value`` does not fold arithmetic (``Sub``, ``Maximum``, ...) in a graph, so
    fractional bits derived from constant ones would look dynamic inside ``tf.function``, and
    value bits deduced from them (alignment shifts) would differ from eager mode.
    """
    static = [tf.get_static_value(t) for t in tensors]
    if any(s is None for s in static):
        return fn(*tensors)
    with tf.init_scope():
        value = fn(*[tf.constant(s) for s in static]).numpy()
    return tf.constant(value)


class FixedPoint(QTensor):
    """A Tensor of integer values representing fixed-point numbers.

    The value_bits parameter sets the maximum integer values that can be stored:
    ``int_max = 2^value_bits - 1``. When a FixedPoint is created, its values are clipped to
    ``[-int_max - 1, int_max]``.

    Args:
        values (tf.Tensor): a tensor of integer values.
        value_bits (int): the number of value bits (sign bit excluded), in [1, 52].
        frac_bits (tf.Tensor): an integer tensor of fractional bits, scalar or per-axis.
        clip (bool, optional): clip the values to the value bits. Only an exact result known
            to fit them (a sum of values with one more value bit, a product with the sum of
            the value bits...) may skip it. Defaults to True.

    Raises:
        TypeError: for value_bits that are not an int, or values of a non-numeric dtype.
        ValueError: for value_bits outside [1, 52], or non-integer values.

    What is checked where: ``value_bits`` is a static Python int, checked at every
    construction (in graphs at trace time, no op). The values are checked to be integers when
    they are concrete: Python numbers or lists, numpy arrays and eager tensors. Symbolic
    tensors (inside ``tf.function`` and Keras graphs) are not checked, so that traced graphs
    carry no extra op: there the values come from the exact integer operations of this module
    (``quantize`` rounds, shifts are exact), and a float input must go through ``quantize``.

    Example:
        ```python
        x = FixedPoint.quantize(tf.constant([0.3, -1.2]), value_bits=7, frac_bits=4)
        x.values      # [5., -19.]  (round(0.3 * 16), round(-1.2 * 16))
        x.to_float()  # [0.3125, -1.1875]
        ```
    """
    __name__ = "quantizeml.FixedPoint"
    values: tf.Tensor
    value_bits: int
    frac_bits: tf.Tensor

    class Spec:
        @property
        def shape(self):
            """tf.TensorShape: the shape of the values (KerasTensors require it)."""
            return self.values.shape

    def __init__(self, values, value_bits, frac_bits, *, clip=True):
        value_bits = _check_fixed_point_value_bits(value_bits)
        dtype = carrier_dtype(value_bits)
        if isinstance(values, tf.Tensor) and not values.dtype.is_floating \
                and not values.dtype.is_integer:
            raise TypeError("FixedPoint values expected an integer or float tensor. "
                            f"Received: values.dtype={values.dtype}")
        _check_integer_values(values)
        values = tf.cast(values, dtype)
        if clip:
            int_max = 2.0**value_bits - 1
            values = tf.minimum(tf.maximum(values, tf.constant(-int_max - 1, dtype)),
                                tf.constant(int_max, dtype))
        self.values = values
        self.value_bits = value_bits
        self.frac_bits = _as_frac_bits(frac_bits)

    @property
    def shape(self):
        """tf.TensorShape: the shape of the values."""
        return self.values.shape

    def _values(self):
        return self.values

    @property
    def per_tensor(self):
        """bool: True if the fractional bits are a single value (known statically)."""
        return is_per_tensor(self.frac_bits)

    @property
    def int_max(self):
        """float: the largest integer the value bits hold, ``2^value_bits - 1``."""
        return 2.0**self.value_bits - 1

    def to_float(self):
        """Returns a float representation of the FixedPoint: ``values * 2^-frac_bits``.

        Returns:
            tf.Tensor: the float32 representation.
        """
        dtype = self.values.dtype
        return tf.cast(self.values * _pow2(-self.frac_bits, dtype), tf.float32)

    # ---- construction --------------------------------------------------------------------
    @staticmethod
    def max_frac_bits(value_bits, ranges, clamp=True):
        """Evaluate the maximum fractional bit index for the quantization ranges.

        ``int_bits = ceil(log2(ranges))`` (negative below 0.5) and
        ``frac_bits = value_bits - int_bits`` (negative above the largest integer). A zero
        range gets ``value_bits`` fractional bits.

        Args:
            value_bits (int): the number of value bits.
            ranges (tf.Tensor): a tensor of float quantization ranges.
            clamp (bool, optional): clamp the results to value_bits. Defaults to True.

        Returns:
            tf.Tensor: a tensor of fractional bits.
        """
        value_bits = check_value_bits(value_bits)
        ranges = tf.abs(tf.cast(ranges, tf.float32))
        int_bits = ceil_log2(ranges)
        frac_bits = tf.where(ranges > 0, value_bits - int_bits, float(value_bits))
        if clamp:
            frac_bits = tf.minimum(frac_bits, float(value_bits))
        return frac_bits

    @staticmethod
    def quantize(x, value_bits, frac_bits=None):
        """Converts a float Tensor to a FixedPoint.

        ``x_int = round(x * 2^frac_bits)`` clipped to ``[-2^value_bits, 2^value_bits - 1]``.
        Without ``frac_bits``, they are deduced from the largest magnitude of ``x`` with
        :meth:`max_frac_bits` (this works in eager and in graph mode).

        Args:
            x (tf.Tensor): a tensor of float values.
            value_bits (int): the number of value bits, in [1, 52].
            frac_bits (tf.Tensor, optional): an integer tensor of fractional bits.
                Defaults to None.

        Returns:
            FixedPoint: the FixedPoint tensor.

        Raises:
            ValueError: for value_bits outside [1, 52] (TypeError when not an int).
        """
        value_bits = _check_fixed_point_value_bits(value_bits)
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            x = tf.cast(x, tf.float32)
        if frac_bits is None:
            frac_bits = FixedPoint.max_frac_bits(value_bits, tf.reduce_max(tf.abs(x)))
        frac_bits = _as_frac_bits(frac_bits)
        dtype = tf.float64 if (value_bits > 23 or x.dtype == tf.float64) else tf.float32
        scaled = tf.cast(x, dtype) * _pow2(frac_bits, dtype)
        return FixedPoint(round_half_up(scaled), value_bits, frac_bits)

    # ---- precision and bitwidth ----------------------------------------------------------
    def promote(self, bits):
        """Increase the number of value bits.

        Args:
            bits (int): the new number of value bits.

        Returns:
            FixedPoint: a FixedPoint with increased value bits (same values).

        Raises:
            ValueError: if bits is lower than the current value bits.
        """
        bits = check_value_bits(bits, "bits")
        if bits < self.value_bits:
            raise ValueError(f"FixedPoint.promote expected bits >= value_bits "
                             f"({self.value_bits}). Received: bits={bits}")
        return FixedPoint(self.values, bits, self.frac_bits, clip=False)

    def shifted_values(self, shift, value_bits, left=False):
        """The values times ``2^shift``, not clipped (see :func:`shift_values`)."""
        return shift_values(self.values, shift, value_bits, left)

    def rescale(self, frac_bits, value_bits=None):
        """Rescale a FixedPoint to a specified precision and bitwidth.

        A left shift of the values where the precision increases, a rounded right shift where
        it decreases; the results are clipped to the target value bits.

        Args:
            frac_bits (tf.Tensor): the target fractional bits.
            value_bits (int, optional): the target value bits. Defaults to the current ones.

        Returns:
            FixedPoint: the rescaled FixedPoint.
        """
        value_bits = self.value_bits if value_bits is None else check_value_bits(value_bits)
        frac_bits = _as_frac_bits(frac_bits)
        values = self.shifted_values(frac_bits - self.frac_bits, value_bits)
        return FixedPoint(values, value_bits, frac_bits)

    def _check_direction(self, frac_bits, method, higher):
        static_target = tf.get_static_value(frac_bits)
        static_current = tf.get_static_value(self.frac_bits)
        if static_target is not None and static_current is not None:
            diff = np.asarray(static_target, np.float32) - np.asarray(static_current,
                                                                      np.float32)
            ok = bool(np.all(diff >= 0) if higher else np.all(diff <= 0))
            if not ok:
                word = "higher" if higher else "lower"
                raise ValueError(f"FixedPoint.{method} expected frac_bits {word} than or equal "
                                 f"to the current ones ({static_current}). "
                                 f"Received: frac_bits={static_target}")
            return []
        cmp = (tf.debugging.assert_greater_equal if higher
               else tf.debugging.assert_less_equal)
        return [cmp(frac_bits, self.frac_bits,
                    message=f"FixedPoint.{method}: invalid target frac_bits")]

    def upscale(self, frac_bits, value_bits=None):
        """Align a FixedPoint to a specified precision (a left shift).

        The target precision must be higher than the current one.

        Args:
            frac_bits (tf.Tensor): the target fractional bits.
            value_bits (int, optional): the target value bits. Defaults to the current ones.

        Returns:
            FixedPoint: the upscaled FixedPoint.

        Raises:
            ValueError: if ``frac_bits`` is lower than the current fractional bits.
        """
        frac_bits = _as_frac_bits(frac_bits)
        checks = self._check_direction(frac_bits, "upscale", higher=True)
        with tf.control_dependencies(checks):
            return self.rescale(frac_bits, value_bits)

    def downscale(self, frac_bits):
        """Reduce the precision of a FixedPoint (a rounded right shift).

        Args:
            frac_bits (tf.Tensor): the target fractional bits.

        Returns:
            FixedPoint: the downscaled FixedPoint.

        Raises:
            ValueError: if ``frac_bits`` is higher than the current fractional bits.
        """
        frac_bits = _as_frac_bits(frac_bits)
        checks = self._check_direction(frac_bits, "downscale", higher=False)
        with tf.control_dependencies(checks):
            return self.rescale(frac_bits, self.value_bits)

    def shift(self, s):
        """Apply a tensor-wide left or right shift.

        Positive ``s`` shifts left (the result is clipped to the value bits), negative ``s``
        shifts right (the result is floored). Value bits and fractional bits are unchanged.

        Args:
            s (tf.Tensor): the shift values, broadcastable to the values.

        Returns:
            FixedPoint: the result.
        """
        dtype = self.values.dtype
        values = tf.floor(self.values * _pow2(s, dtype))
        return FixedPoint(values, self.value_bits, self.frac_bits)

    def floor(self):
        """Floors the FixedPoint.

        Returns:
            tuple(FixedPoint, tf.Tensor): a FixedPoint without fractional bits (same value
            bits), and the right shift that was applied (the former fractional bits).
        """
        dtype = self.values.dtype
        values = tf.floor(self.values * _pow2(-self.frac_bits, dtype))
        return FixedPoint(values, self.value_bits, 0.0), self.frac_bits

    def _widened(self, shift, value_bits, method, dynamic_bits=BUFFER_BITS - 1):
        """Value bits that hold ``self`` shifted left by ``shift``, and the run-time checks.

        When the shift is only known at run time, the values are widened to ``dynamic_bits``
        (the 32-bit buffer by default) and a run-time check raises if they do not fit.
        """
        if value_bits is not None:
            return check_value_bits(value_bits), []
        max_shift = static_max(shift)
        if max_shift is not None:
            return check_value_bits(self.value_bits + max(0, int(max_shift))), []
        # The shift is only known at run time: widen to the 32-bit buffer and check.
        value_bits = max(self.value_bits, dynamic_bits)
        return value_bits, self._assert_fits(
            shift, value_bits, f"FixedPoint.{method}: the shifted values exceed {value_bits} "
                               f"value bits (the {BUFFER_BITS}-bit buffer)")

    def _assert_fits(self, shift, value_bits, message):
        """Run-time checks that ``values * 2^shift`` lies in
        ``[-2^value_bits, 2^value_bits - 1]`` (element-wise shifts, per-axis included).

        The check reads the values only when the shifts alone do not prove it
        (``self.value_bits + max(shift) <= value_bits``). No check while tf_keras only infers a
        layer's output signature (its scratch graph never runs).
        """
        if in_scratch_graph():
            return []
        shift = tf.cast(shift, tf.float64)

        def values_fit():
            shifted = tf.cast(self.values, tf.float64) * _pow2(shift, tf.float64)
            return tf.logical_and(
                tf.reduce_max(shifted) <= tf.constant(2.0**value_bits - 1, tf.float64),
                tf.reduce_min(shifted) >= tf.constant(-2.0**value_bits, tf.float64))

        by_shift = tf.reduce_max(shift) <= float(value_bits - self.value_bits)
        fits = tf.cond(by_shift, lambda: tf.constant(True), values_fit)
        return [tf.debugging.assert_equal(fits, True, message=message)]

    def align(self, other, value_bits=None):
        """Align fractional bits.

        Returns an equivalent FixedPoint with a scalar fractional bit: the maximum of the
        fractional bits of ``self`` and ``other`` on all channels. Without ``value_bits``, the
        result is widened so that no value is clipped (by the largest shift when it is known
        statically, else to the 32-bit buffer with a run-time overflow check).

        Args:
            other (FixedPoint): a FixedPoint to align to.
            value_bits (int, optional): the target value bits. Defaults to None.

        Returns:
            tuple(FixedPoint, tf.Tensor): a new FixedPoint with aligned fractional bits and the
            shift that was applied.
        """
        if not isinstance(other, FixedPoint):
            raise TypeError("FixedPoint.align expected a FixedPoint. "
                            f"Received: other={type(other).__name__}")
        target = fold_static(lambda a, b: tf.maximum(tf.reduce_max(a), tf.reduce_max(b)),
                             self.frac_bits, other.frac_bits)
        return self._left_align(target, value_bits, "align")

    def expand(self, value_bits):
        """Expand the FixedPoint to the specified bitwidth.

        Returns an equivalent FixedPoint with a higher or equal number of value bits and a
        scalar fractional bit: the maximum of the initial fractional bits on all channels.

        Args:
            value_bits (int): the target value_bits.

        Returns:
            tuple(FixedPoint, tf.Tensor): a new FixedPoint with expanded fractional bits and the
            shift that was applied.

        Raises:
            ValueError: if value_bits is lower than the current value bits.
        """
        value_bits = check_value_bits(value_bits)
        if value_bits < self.value_bits:
            raise ValueError(f"FixedPoint.expand expected value_bits >= {self.value_bits}. "
                             f"Received: value_bits={value_bits}")
        target = fold_static(tf.reduce_max, self.frac_bits)
        shift = fold_static(tf.subtract, target, self.frac_bits)
        checks = self._assert_fits(
            shift, value_bits, f"FixedPoint.expand: the expanded values exceed {value_bits} "
                               "value bits")
        with tf.control_dependencies(checks):
            values = self.shifted_values(shift, value_bits, left=True)
        return FixedPoint(values, value_bits, target, clip=False), shift

    def _left_align(self, target, value_bits, method, dynamic_bits=BUFFER_BITS - 1):
        shift = fold_static(tf.subtract, target, self.frac_bits)
        # an explicit value_bits may clip; deduced ones hold every shifted value
        clip = value_bits is not None
        value_bits, checks = self._widened(shift, value_bits, method, dynamic_bits)
        with tf.control_dependencies(checks):
            values = self.shifted_values(shift, value_bits, left=True)
        return FixedPoint(values, value_bits, target, clip=clip), shift

    # ---- element-wise --------------------------------------------------------------------
    def abs(self):
        """Returns the absolute value of the FixedPoint.

        ``|-2^value_bits|`` does not fit the value bits: the result gains one value bit when it
        is signed so that it is always exact.

        Returns:
            FixedPoint: the absolute value.
        """
        return FixedPoint(tf.abs(self.values), self.value_bits + 1, self.frac_bits, clip=False)

    @property
    def sign(self):
        """Returns the sign of the FixedPoint.

        Returns:
            FixedPoint: -1, 0 or 1, with 1 value bit and no fractional bits.
        """
        return FixedPoint(tf.sign(self.values), 1, 0.0, clip=False)

    # ---- operators (see quantizeml.tensors.dispatch) -------------------------------------
    def __add__(self, other):
        return tf.math.add(self, other)

    def __radd__(self, other):
        return tf.math.add(other, self)

    def __sub__(self, other):
        return tf.math.subtract(self, other)

    def __rsub__(self, other):
        return tf.math.subtract(other, self)

    def __mul__(self, other):
        return tf.math.multiply(self, other)

    def __rmul__(self, other):
        return tf.math.multiply(other, self)

    def __matmul__(self, other):
        return tf.linalg.matmul(self, other)

    def __neg__(self):
        return FixedPoint(-self.values, self.value_bits + 1, self.frac_bits, clip=False)

    def __getitem__(self, key):
        values = self.values[key]
        frac_bits = self.frac_bits
        if not self.per_tensor:
            frac_bits = tf.broadcast_to(frac_bits, tf.shape(self.values))[key]
        return FixedPoint(values, self.value_bits, frac_bits)


def shift_values(values, shift, value_bits, left=False):
    """Integer values times ``2^shift``, exactly, rounded half up on right shifts, not clipped.

    Computed in the wider of the carriers of ``values`` and ``value_bits`` (the result's
    dtype).

    Args:
        values (tf.Tensor): integer values in their carrier.
        shift (tf.Tensor): the shifts (broadcast with the values; negative: right shifts).
        value_bits (int): the value bits the result is meant for.
        left (bool, optional): the caller promises that every shift is a left shift (nothing
            to round). Defaults to False.

    Returns:
        tf.Tensor: the shifted values.
    """
    out_dtype = carrier_dtype(value_bits)
    dtype = tf.float64 if tf.float64 in (out_dtype, values.dtype) else tf.float32
    values = tf.cast(values, dtype) * _pow2(shift, dtype)
    if left:
        return values
    return round_shifted_half_up(values)
