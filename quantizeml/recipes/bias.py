"""The bias on the accumulator grid: ``clip(clip(acc) + b)`` on the integer buffer.

The bias is quantized on the grid of the accumulator (its fractional bits and scales, by the
layer's AlignedWeightQuantizer) and added exactly; both the accumulator and the sum are clipped
to the buffer. :func:`add_bias_reference` is the op-by-op body; :func:`add_bias` and
:func:`reduce_and_add_bias` run it, or a fast path of :mod:`~quantizeml.recipes.fast_paths`
(the clips skipped where a bound proves them useless, the bias added in the kernel casting the
reduction's result, or deferred to the requantization that follows).
"""
import tensorflow as tf

from ..tensors.carrier import carrier_dtype
from ..tensors.fixed_point import FixedPoint
from . import fast_paths
from .buffer import buffer_add, clip_to_buffer, fits_buffer
from .reduction import as_qtensor, split_qtensor

__all__ = ["add_bias", "add_bias_reference", "reduce_and_add_bias"]


def add_bias_reference(acc, bias, buffer_bits, record=None):
    """The op-by-op reference of :func:`add_bias`: the clipped accumulator plus the bias, the
    sum clipped (saturation recorded by ``record(values, value_bits)`` before each clip).

    Integer maths: ``y = clip(clip(acc) + b, -2^(B-1), 2^(B-1) - 1)``.

    Args:
        acc (FixedPoint): the accumulator.
        bias (FixedPoint): the bias on the accumulator grid (same fractional bits).
        buffer_bits (int): the buffer bitwidth ``B``.
        record (callable, optional): the saturation report. Defaults to None.

    Returns:
        tf.Tensor: the integer values.
    """
    clipped = clip_to_buffer(acc, buffer_bits, record)
    return buffer_add(clipped, bias, buffer_bits, record).values


def add_bias(acc, bias, buffer_bits, acc_bound=None, record=None):
    """Clips ``acc`` to the buffer and adds the bias on its grid (if any), the sum clipped.

    Integer maths: ``y = clip(clip(acc) + b, -2^(B-1), 2^(B-1) - 1)``, equal to
    :func:`add_bias_reference` bit for bit.

    Where saturation is recorded (``record`` given: eager and compiled eager calls) the
    reference body runs; elsewhere, when ``max|acc| + max|b|`` fits the buffer (``max|acc|``
    from ``acc_bound``, the value bits of ``acc``, or read from its values when they exceed
    the buffer), neither clip can change a value and the sum is computed alone (one fused
    kernel).

    Args:
        acc (QTensor): the accumulator, a FixedPoint or a QFloat.
        bias (FixedPoint): the bias on the accumulator grid, or None (a clip only).
        buffer_bits (int): the buffer bitwidth ``B``.
        acc_bound (tf.Tensor, optional): a float64 bound of ``|acc|``. Defaults to None.
        record (callable, optional): ``record(values, value_bits)``, the saturation report
            (given only where saturation is observed). Defaults to None.

    Returns:
        QTensor: the sum, on the buffer's value bits, with the scales of ``acc``.
    """
    fp, scales = split_qtensor(acc)
    if bias is None:
        return as_qtensor(clip_to_buffer(fp, buffer_bits, record), scales)
    dtype = carrier_dtype(max(fp.value_bits, bias.value_bits) + 1)

    def clipped_sum():
        return add_bias_reference(fp, bias, buffer_bits, record)

    if fast_paths.bias_path(record is not None) == fast_paths.REFERENCE:
        # eager: the reference body records the saturation of both clips
        values = tf.cast(clipped_sum(), dtype)
    else:
        def exact_sum():
            # one fused kernel in graphs (the accumulator is often cast to a wider carrier)
            return fast_paths.fused(lambda a, b: tf.cast(a, dtype) + tf.cast(b, dtype),
                                    fp.values, bias.values)
        values = fast_paths.checked_bias_sum(
            fits_buffer(fp.value_bits, acc_bound, lambda: fp.values, bias, buffer_bits),
            exact_sum, clipped_sum, dtype)
    total = FixedPoint(values, buffer_bits - 1, fp.frac_bits, clip=False)
    return as_qtensor(total, scales)


def reduce_and_add_bias(terms, quantize_bias, buffer_bits, record=None):
    """The exact reduction of ``terms`` then :func:`add_bias`: ``clip(clip(acc) + b)``.

    Integer maths: ``y = clip(clip(sum_k x_k * w_k) + b, -2^(B-1), 2^(B-1) - 1)``.

    In fused graphs (see :func:`~quantizeml.recipes.fast_paths.reduction_path`) the quantized
    bias is added without a pass of its own over the accumulator: in train steps in the kernel
    that casts the reduction's result to float64, the buffer clips running only when the bounds
    do not prove them useless (:func:`~quantizeml.recipes.fast_paths.fused_bias_sum`); in
    inference graphs in the kernel of the requantization that follows, the buffer clips
    included (:func:`~quantizeml.recipes.fast_paths.deferred_bias_sum`).

    Args:
        terms (ReductionTerms): the operands of the reduction.
        quantize_bias (callable): ``quantize_bias(frac_bits, scales)``, the bias quantized on
            that grid as a FixedPoint; None: no bias.
        buffer_bits (int): the buffer bitwidth ``B``.
        record (callable, optional): ``record(values, value_bits)``, the saturation report
            (given only where saturation is observed). Defaults to None.

    Returns:
        QTensor: the accumulator plus bias, on the buffer's value bits.
    """
    path = fast_paths.reduction_path(record is not None, quantize_bias is not None,
                                     terms.value_bits)
    if path == fast_paths.SEPARATE:
        acc, bound = terms.accumulator()
        fp, scales = split_qtensor(acc)
        bias = None if quantize_bias is None else quantize_bias(fp.frac_bits, scales)
        return add_bias(acc, bias, buffer_bits, bound, record)
    bias = quantize_bias(terms.frac_bits, terms.scales)
    bias_values = tf.cast(bias.values, tf.float64)
    if path == fast_paths.DEFERRED:
        parts, _ = terms.parts()
        values = fast_paths.deferred_bias_sum(parts, bias_values, buffer_bits,
                                              carrier_dtype(buffer_bits - 1))
    else:
        total, bound = terms.reduce(addend=bias_values)

        def accumulator():
            # recovered exactly (integers in float64)
            return FixedPoint(total - bias_values, terms.value_bits, terms.frac_bits,
                              clip=False)

        values = fast_paths.fused_bias_sum(
            total,
            fits_buffer(terms.value_bits, bound, lambda: accumulator().values, bias,
                        buffer_bits),
            lambda: add_bias_reference(accumulator(), bias, buffer_bits))
    return as_qtensor(FixedPoint(values, buffer_bits - 1, terms.frac_bits, clip=False),
                      terms.scales)
