"""Symmetric quantization scaled by the maximum absolute value: ``abs_max_quantize``."""
import numpy as np
import tensorflow as tf

from .registry import ConfigEquality, register_quantizer


def _check_value_range(value_range):
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2 \
            or not all(isinstance(v, (int, float, np.integer, np.floating))
                       and not isinstance(v, bool) for v in value_range) \
            or not value_range[0] < value_range[1] or value_range[1] <= 0:
        raise ValueError("value_range expected a pair (low, high) with low < high and high > 0. "
                         f"Received: value_range={value_range!r}")
    return tuple(value_range)


def _normalize_axis(axis):
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    return axis


def abs_max_quantize(inputs, axis, value_range=(-127, 127), dtype="int8", epsilon=1e-07,
                     to_numpy=False):
    """Quantizes inputs with a scale that maps their maximum absolute value to ``value_range[1]``.

    ``scale = value_range[1] / (max(|x|, axis, keepdims=True) + epsilon)``,
    ``q = cast(clip(round(x * scale), value_range[0], value_range[1]), dtype)``
    (rounding half to even), so that ``x ~= q / scale``. The integer outputs carry no
    gradient (use :func:`quantize_and_dequantize` for a straight-through estimator).

    Args:
        inputs (tf.Tensor): float inputs.
        axis (int or tuple of int): axis (axes) reduced to compute the maximum; None reduces
            everything.
        value_range (tuple, optional): the integer range. Defaults to (-127, 127).
        dtype (str, optional): the dtype of the quantized values. Defaults to "int8".
        epsilon (float, optional): avoids a division by zero. Defaults to 1e-07.
        to_numpy (bool, optional): compute in numpy (float32) to save device memory.
            Defaults to False.

    Returns:
        tuple: ``(quantized, scale)``; the scale has the inputs dtype and keeps the reduced
        axes with size 1.

    Raises:
        ValueError: for a bad value_range.
    """
    value_range = _check_value_range(value_range)
    axis = _normalize_axis(axis)
    if to_numpy:
        values = np.asarray(inputs)
        original_dtype = values.dtype
        values = values.astype("float32")
        scale = np.divide(value_range[1],
                          np.add(np.max(np.abs(values), axis=axis, keepdims=True), epsilon))
        outputs = np.clip(np.round(values * scale), value_range[0], value_range[1]).astype(dtype)
        return tf.convert_to_tensor(outputs), tf.convert_to_tensor(scale, dtype=original_dtype)
    inputs = tf.convert_to_tensor(inputs)
    scale = tf.math.divide(
        tf.cast(value_range[1], inputs.dtype),
        tf.reduce_max(tf.abs(inputs), axis=axis, keepdims=True) + tf.cast(epsilon, inputs.dtype))
    outputs = tf.clip_by_value(tf.round(inputs * scale), value_range[0], value_range[1])
    return tf.cast(outputs, dtype), scale


@register_quantizer("abs_max_quantizer")
class AbsMaxQuantizer(ConfigEquality):
    """Quantizer calling :func:`abs_max_quantize` (Keras 3's ``AbsMaxQuantizer``).

    Args:
        axis (int or tuple of int): the reduced axis (axes).
        value_range (tuple, optional): the integer range. Defaults to (-127, 127).
        epsilon (float, optional): avoids a division by zero. Defaults to 1e-07.
        output_dtype (str, optional): the dtype of the quantized values. Defaults to "int8".

    Returns (when called):
        tuple: ``(quantized, scale)``.
    """

    def __init__(self, axis, value_range=(-127, 127), epsilon=1e-07, output_dtype="int8"):
        self.axis = (axis,) if isinstance(axis, int) else _normalize_axis(axis)
        self.value_range = _check_value_range(value_range)
        self.epsilon = float(epsilon)
        self.output_dtype = tf.as_dtype(output_dtype).name

    def __call__(self, x):
        return abs_max_quantize(x, self.axis, self.value_range, self.output_dtype, self.epsilon)

    def get_config(self):
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {"axis": axis, "value_range": list(self.value_range),
                "epsilon": self.epsilon, "output_dtype": self.output_dtype}
