"""Scaled quantization to a narrow dtype and back (float8, int8), and the float8 scaling recipe.

``compute_float8_amax_history`` and ``compute_float8_scale`` implement the delayed-scaling
recipe of Keras 3 (from NVIDIA Transformer Engine): keep a history of ``max(|x|)`` and derive
the scale that maps it to the largest finite value of the float8 dtype.
"""
import tensorflow as tf

from ..tensors.gradients import custom_gradient

#: dtypes accepted by :func:`quantize_and_dequantize`.
QUANTIZED_DTYPES = ("int8", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                    "float8_e5m2fnuz", "float8_e4m3b11fnuz")


def _as_dtype(dtype, allowed, name):
    try:
        as_dtype = tf.as_dtype(dtype)
    except TypeError:
        as_dtype = None
    if as_dtype is None or as_dtype.name not in allowed:
        raise ValueError(f"{name} expected one of {list(allowed)}. Received: {name}={dtype!r}")
    return as_dtype


def quantize_and_dequantize(inputs, scale, quantized_dtype, compute_dtype):
    """Quantizes scaled inputs to a narrow dtype and dequantizes them back.

    Forward, with ``M`` the largest finite value of ``quantized_dtype``:
    ``q(x) = cast(clip(x / scale, -M, M), quantized_dtype) * scale``, in ``compute_dtype``.
    Casting to a float8 dtype rounds to the nearest representable value (ties to even); for
    ``int8`` the values are rounded half to even before the cast (range ``[-127, 127]``).

    Pseudo-gradient (straight-through within the clipping range; none for ``scale``):
    ``dq/dx = 1 if |x / scale| <= M else 0``.

    Args:
        inputs (tf.Tensor): float inputs.
        scale (tf.Tensor or float): the scale (scalar, or broadcastable to inputs).
        quantized_dtype (str or tf.DType): one of :data:`QUANTIZED_DTYPES`.
        compute_dtype (str or tf.DType): the float dtype of the computation and result.

    Returns:
        tf.Tensor: the dequantized values, of dtype ``compute_dtype``.

    Raises:
        ValueError: for a quantized_dtype or compute_dtype that is not supported.

    Example:
        ```python
        quantize_and_dequantize(x, scale=0.5, quantized_dtype="float8_e4m3fn",
                                compute_dtype="float32")
        ```
    """
    quantized_dtype = _as_dtype(quantized_dtype, QUANTIZED_DTYPES, "quantized_dtype")
    compute_dtype = _as_dtype(compute_dtype, ("float16", "bfloat16", "float32", "float64"),
                              "compute_dtype")
    dtype_max = float(quantized_dtype.max)
    inputs = tf.cast(tf.convert_to_tensor(inputs), compute_dtype)
    scale = tf.cast(tf.convert_to_tensor(scale), compute_dtype)

    @custom_gradient
    def _quantize_and_dequantize(x, s):
        scaled = x / s
        clipped = tf.clip_by_value(scaled, -dtype_max, dtype_max)
        if quantized_dtype.is_integer:
            clipped = tf.round(clipped)
        outputs = tf.cast(tf.cast(clipped, quantized_dtype), compute_dtype) * s

        def grad(upstream):
            inside = tf.abs(scaled) <= dtype_max
            return tf.where(inside, upstream, tf.zeros_like(upstream)), None

        return outputs, grad

    return _quantize_and_dequantize(inputs, scale)


def compute_float8_scale(amax, scale, dtype_max, margin=0):
    """Computes the new float8 scale from an amax value.

    ``new_scale = 1 / ((dtype_max / amax) / 2^margin)``, falling back to the current ``scale``
    when ``amax`` is not positive or not finite.

    Args:
        amax (tf.Tensor): the maximum absolute value (e.g. the max of the amax history).
        scale (tf.Tensor): the current scale.
        dtype_max (float): the largest finite value of the float8 dtype.
        margin (int, optional): a safety margin, in powers of two. Defaults to 0.

    Returns:
        tf.Tensor: the new scale.
    """
    amax = tf.convert_to_tensor(amax)
    scale = tf.cast(tf.convert_to_tensor(scale), amax.dtype)
    reciprocal = tf.math.reciprocal(scale)
    factor = tf.cast(dtype_max, amax.dtype) / amax / tf.cast(2.0 ** margin, amax.dtype)
    factor = tf.where(amax > 0.0, factor, reciprocal)
    factor = tf.where(tf.math.is_finite(amax), factor, reciprocal)
    return tf.math.reciprocal(factor)


def compute_float8_amax_history(x, amax_history):
    """Updates an amax history with ``max(|x|)``.

    The history is rolled by one to the left (``roll(history, -1)``) and its first element is
    replaced by ``max(|x|)``, cast to the history dtype.

    Args:
        x (tf.Tensor): the tensor whose amax is recorded.
        amax_history (tf.Tensor): a 1-D history of amax values.

    Returns:
        tf.Tensor: the new history.

    Raises:
        ValueError: when amax_history is not 1-D.
    """
    amax_history = tf.convert_to_tensor(amax_history)
    if amax_history.shape.rank != 1:
        raise ValueError("compute_float8_amax_history expected a 1-D amax_history. "
                         f"Received: amax_history.shape={amax_history.shape}")
    amax_update = tf.cast(tf.reduce_max(tf.abs(x)), amax_history.dtype)
    return tf.tensor_scatter_nd_update(tf.roll(amax_history, shift=-1, axis=0), [[0]],
                                       tf.reshape(amax_update, [1]))
