"""Fake quantization with a [min, max] range: quantize to integers and back to floats.

The arithmetic replicates the kernels of ``tf.quantization.fake_quant_with_min_max_vars`` and
``tf.quantization.fake_quant_with_min_max_vars_per_channel`` step by step (same nudging of the
range, same rounding, same float32 operation order), so that outputs and gradients are equal to
those ops where they apply; unlike them it takes any channel axis and any float dtype.
"""
import numpy as np
import tensorflow as tf

from ..tensors.gradients import custom_gradient

#: bounds of ``num_bits`` (those of the TF fake-quant kernels).
MIN_NUM_BITS, MAX_NUM_BITS = 2, 16


def check_num_bits(num_bits, name="num_bits"):
    """Validates a fake-quantization bit width: an int in [2, 16].

    Returns:
        int: the bit width.

    Raises:
        ValueError: when num_bits is not an int in [2, 16].
    """
    if isinstance(num_bits, (bool, np.bool_)) or not isinstance(num_bits, (int, np.integer)) \
            or not MIN_NUM_BITS <= num_bits <= MAX_NUM_BITS:
        raise ValueError(f"{name} expected an int in [{MIN_NUM_BITS}, {MAX_NUM_BITS}]. "
                         f"Received: {name}={num_bits!r}")
    return int(num_bits)


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} expected a bool. Received: {name}={value!r}")
    return bool(value)


def _round_half_up(x):
    """``std::round`` for x >= 0, exact in floating point (``floor(x + 0.5)`` is not)."""
    floor = tf.math.floor(x)
    return floor + tf.cast(x - floor >= 0.5, x.dtype)


def nudge(min_vals, max_vals, num_bits=8, narrow_range=False):
    """Nudges a [min, max] range so that the real value 0 is exactly representable.

    With ``qmin = 1 if narrow_range else 0`` and ``qmax = 2^num_bits - 1``:
    ``scale = (max - min) / (qmax - qmin)``,
    ``zero_point = round(clip(qmin - min / scale, qmin, qmax))`` (half away from zero),
    ``nudged_min = (qmin - zero_point) * scale``, ``nudged_max = (qmax - zero_point) * scale``.

    Args:
        min_vals (tf.Tensor): range minimum(s), float.
        max_vals (tf.Tensor): range maximum(s), same shape and dtype.
        num_bits (int, optional): the bit width, in [2, 16]. Defaults to 8.
        narrow_range (bool, optional): whether the integer range starts at 1. Defaults to False.

    Returns:
        tuple: ``(nudged_min, nudged_max, scale)`` tensors.
    """
    quant_min = 1.0 if narrow_range else 0.0
    quant_max = float((1 << num_bits) - 1)
    scale = (max_vals - min_vals) / (quant_max - quant_min)
    zero_point_from_min = quant_min - min_vals / scale
    zero_point = _round_half_up(tf.clip_by_value(zero_point_from_min, quant_min, quant_max))
    nudged_min = (quant_min - zero_point) * scale
    nudged_max = (quant_max - zero_point) * scale
    return nudged_min, nudged_max, scale


def _as_float(value, dtype):
    """A float tensor: python numbers and integer tensors are converted to ``dtype``."""
    value = tf.convert_to_tensor(value, dtype_hint=dtype)
    return value if value.dtype.is_floating else tf.cast(value, dtype)


def _check_range(min_vals, max_vals):
    """min <= max: a ValueError for static values, a runtime assertion otherwise."""
    static_min, static_max = tf.get_static_value(min_vals), tf.get_static_value(max_vals)
    if static_min is not None and static_max is not None:
        if np.any(static_min > static_max):
            raise ValueError("fake_quant_with_min_max_vars expected min_vals <= max_vals. "
                             f"Received: min_vals={static_min.tolist()}, "
                             f"max_vals={static_max.tolist()}")
        return []
    return [tf.debugging.assert_less_equal(
        min_vals, max_vals,
        message="fake_quant_with_min_max_vars expected min_vals <= max_vals")]


def fake_quant_with_min_max_vars(inputs, min_vals, max_vals, num_bits=8, narrow_range=False,
                                 axis=None):
    """Performs per-tensor or per-channel fake quantization.

    ``[min_vals, max_vals]`` define the clamping range for the inputs. The range is first
    nudged so that 0 is exactly representable (see :func:`nudge`), then the inputs are
    quantized into ``[0, 2^num_bits - 1]`` (``[1, 2^num_bits - 1]`` when ``narrow_range``) and
    dequantized back to floats in ``[nudged_min, nudged_max]``.

    Forward, with ``zq = floor(-nmin / scale + 0.5)`` the integer zero point:
    ``q(x) = floor((clip(x, nmin, nmax) - nmin) / scale - zq + 0.5) * scale``
    (in the operation order of TF's kernel). If min and max are both 0 the output is 0.

    Gradients (those of the TF ops):
    ``dq/dx = 1 if nmin <= x <= nmax else 0``,
    ``dq/dmin = sum(upstream where x < nmin)``, ``dq/dmax = sum(upstream where x > nmax)``
    (summed over every axis but ``axis`` when per channel). If min and max are both 0 the
    upstream gradient passes to the inputs and min and max get 0.

    Args:
        inputs (tf.Tensor): float inputs. Computed in float32 (float64 inputs in float64),
            returned in the inputs dtype.
        min_vals (tf.Tensor or float): a global minimum scalar (any shape with one element)
            or a per-channel minimum vector.
        max_vals (tf.Tensor or float): a global maximum scalar or a per-channel maximum vector.
        num_bits (int, optional): quantization bit width, in [2, 16]. Defaults to 8.
        narrow_range (bool, optional): whether to use the narrow quantization range.
            Defaults to False.
        axis (int, optional): axis along which to perform per-channel quantization. If None,
            per-tensor quantization is performed. Defaults to None.

    Returns:
        tf.Tensor: the fake-quantized inputs, same shape and dtype.

    Raises:
        ValueError: for num_bits outside [2, 16], min_vals > max_vals, an axis out of range or
            min/max shapes that do not fit.
        TypeError: for non-float inputs or a non-bool narrow_range.

    Example:
        ```python
        x = tf.constant([-1.0, 0.1, 0.5, 2.0])
        fake_quant_with_min_max_vars(x, -1.0, 1.0, num_bits=4)
        ```
    """
    num_bits = check_num_bits(num_bits)
    narrow_range = _check_bool(narrow_range, "narrow_range")
    inputs = tf.convert_to_tensor(inputs)
    if not inputs.dtype.is_floating:
        raise TypeError("fake_quant_with_min_max_vars expected float inputs. "
                        f"Received: inputs.dtype={inputs.dtype.name}")
    compute_dtype = tf.float64 if inputs.dtype == tf.float64 else tf.float32
    min_vals = _as_float(min_vals, compute_dtype)
    max_vals = _as_float(max_vals, compute_dtype)
    min_shape, max_shape = min_vals.shape, max_vals.shape
    rank = inputs.shape.rank
    if axis is None:
        for name, shape in (("min_vals", min_shape), ("max_vals", max_shape)):
            if shape.num_elements() not in (None, 1):
                raise ValueError(f"fake_quant_with_min_max_vars expected a scalar {name} when "
                                 f"axis is None. Received: {name}.shape={shape}")
        broadcast_shape = []
        reduce_axes = None
    else:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or rank is None \
                or not -rank <= axis < rank:
            raise ValueError(f"fake_quant_with_min_max_vars expected an int axis in "
                             f"[-{rank}, {rank}). Received: axis={axis!r}")
        axis = int(axis) % rank
        channels = inputs.shape[axis]
        for name, shape in (("min_vals", min_shape), ("max_vals", max_shape)):
            if shape.rank != 1 or (channels is not None and shape[0] not in (None, channels)):
                raise ValueError(f"fake_quant_with_min_max_vars expected {name} of shape "
                                 f"({channels},) for axis={axis}. Received: {name}.shape={shape}")
        broadcast_shape = [1] * rank
        broadcast_shape[axis] = -1
        reduce_axes = [i for i in range(rank) if i != axis]
    checks = _check_range(min_vals, max_vals)

    @custom_gradient
    def _fake_quant(x, mn, mx):
        xc = tf.cast(x, compute_dtype)
        mnc = tf.reshape(tf.cast(mn, compute_dtype), broadcast_shape)
        mxc = tf.reshape(tf.cast(mx, compute_dtype), broadcast_shape)
        with tf.control_dependencies(checks):
            nmin, nmax, scale = nudge(mnc, mxc, num_bits, narrow_range)
        # Both 0: TF outputs 0 and passes gradients to the inputs only.
        null_range = tf.logical_and(tf.equal(mnc, 0.0), tf.equal(mxc, 0.0))
        quant_zero = tf.math.floor(-nmin / scale + 0.5)
        clamped = tf.maximum(tf.minimum(xc, nmax), nmin)
        shifted = clamped - nmin
        outputs = tf.math.floor(shifted / scale - quant_zero + 0.5) * scale
        outputs = tf.where(null_range, tf.zeros_like(outputs), outputs)

        def grad(upstream):
            up = tf.cast(upstream, compute_dtype)
            zeros = tf.zeros_like(up)
            inside = tf.logical_and(xc >= nmin, xc <= nmax)
            dx = tf.where(tf.logical_or(inside, null_range), up, zeros)
            dmin = tf.where(tf.logical_and(xc < nmin, tf.logical_not(null_range)), up, zeros)
            dmax = tf.where(tf.logical_and(xc > nmax, tf.logical_not(null_range)), up, zeros)
            dmin = tf.reduce_sum(dmin, axis=reduce_axes)
            dmax = tf.reduce_sum(dmax, axis=reduce_axes)
            return (tf.cast(dx, x.dtype),
                    tf.reshape(tf.cast(dmin, mn.dtype), tf.shape(mn)),
                    tf.reshape(tf.cast(dmax, mx.dtype), tf.shape(mx)))

        return tf.cast(outputs, x.dtype), grad

    return _fake_quant(inputs, min_vals, max_vals)
