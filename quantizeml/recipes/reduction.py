"""The exact integer reduction: ``acc = sum_k x_k * w_k`` (matmul, convolutions), in the cheapest
exact carrier.

A float carrier is exact as long as every partial sum stays within its contiguous integer range
(see :mod:`quantizeml.tensors.carrier`). The partial sums of ``sum_k x_k * w_k`` are bounded by
``max|x| * max_c sum_k |w_kc|``: the reduction runs in float32 when a static bound (from the
bitwidths) or a run-time bound (from the operands) proves it exact, in float64 else.
:func:`exact_reduction_reference` is the op-by-op body (float64); the fast paths (float32
gradients, the bias added in the kernel of the cast, the float32 parts of an inference graph)
are in :mod:`~quantizeml.recipes.fast_paths`.
"""
import tensorflow as tf

from ..tensors.carrier import FLOAT32_VALUE_BITS, MAX_VALUE_BITS, SPLIT_VALUE_BITS
from ..tensors.dispatch.common import bits_for
from ..tensors.fixed_point import FixedPoint
from ..tensors.qfloat import QFloat
from . import fast_paths
from .alignment import align_through_weights

__all__ = ["exact_reduction", "exact_reduction_reference", "reduction_parts", "ReductionTerms",
           "in_float32", "max_abs", "SPLIT_VALUE_BITS"]


def in_float32(fn, x, w):
    """``fn`` on the operands cast to float32 (exact when a bound proves it)."""
    return fn(tf.cast(x, tf.float32), tf.cast(w, tf.float32))


def max_abs(values):
    """``max|values|`` in float64, from two read-only reductions (no |x| tensor written)."""
    return tf.cast(tf.maximum(tf.reduce_max(values), -tf.reduce_min(values)), tf.float64)


def exact_reduction_reference(fn, x, w, addend=None):
    """The op-by-op reference of :func:`exact_reduction`: ``fn`` in float64 (exact for sums of
    up to 52 bits), plus ``addend``.

    Integer maths: ``acc = sum_k x_k * w_k (+ addend)``.
    """
    values = fn(tf.cast(x, tf.float64), tf.cast(w, tf.float64))
    return values if addend is None else values + tf.cast(addend, tf.float64)


def exact_reduction(fn, x, w, max_abs_sum_bits_static, l1_axes=None, x_bits=None,
                    with_bound=False, addend=None):
    """Runs an integer reduction ``fn(x, w)`` (matmul, convolution) exactly.

    Integer maths: ``acc = sum_k x_k * w_k (+ addend)``, equal to
    :func:`exact_reduction_reference` bit for bit.

    The partial sums of ``sum_k x_k * w_k`` are bounded by ``max|x| * max_c sum_k |w_kc|``.
    When ``max_abs_sum_bits_static`` (a static bound, in bits) is at most 24, ``fn`` runs in
    float32. Otherwise the bound is evaluated at run time from the operands (``2^x_bits *
    L1(w)`` from the small weights first, then ``max|x| * L1(w)``, then the largest
    ``sum_k |x_k| |w_k|`` of any output) and ``fn`` runs in float32 when one proves exactness,
    in float64 else. (Splitting the weights in two halves that each
    fit float32 was measured no faster than one float64 reduction: 1x1 float64 convolutions
    are matrix products.)

    Args:
        fn (callable): the reduction, taking two tensors of the same float dtype.
        x (tf.Tensor): integer-valued inputs.
        w (tf.Tensor): integer-valued weights.
        max_abs_sum_bits_static (int): bits of the static bound of any partial sum magnitude.
        l1_axes (list, optional): axes of ``w`` summed by the reduction, to compute the run-time
            bound ``max|x| * max(sum(|w|, l1_axes))``. Defaults to all axes but the last.
        x_bits (int, optional): the value bits of ``x``: the bound ``2^x_bits * L1(w)``, from
            the (small) weights alone, is tried before reading ``max|x|`` from the inputs.
            Defaults to None.
        with_bound (bool, optional): also return a float64 scalar bounding ``|result|``
            (static, or the run-time bound). Defaults to False.
        addend (tf.Tensor, optional): integer values added to the result (broadcast), in
            float64, in one fused kernel with the cast of a float32 reduction (see
            :mod:`~quantizeml.recipes.fast_paths`); the bound stays the bound of the reduction
            alone. The caller ensures that the sum needs no clipping. Defaults to None.

    Returns:
        tf.Tensor: the exact integer result, float64 when the static bound exceeds float32
        (and the bound when ``with_bound``). Its gradients are computed in float32
        (quantization-aware training needs no exact gradients, and float64 convolution
        gradients are several times slower).
    """
    if max_abs_sum_bits_static <= FLOAT32_VALUE_BITS + 1:
        values = in_float32(fn, x, w)
        if addend is not None:
            values = fast_paths.add_to_float32(values, addend)
        if with_bound:
            return values, tf.constant(2.0**max_abs_sum_bits_static, tf.float64)
        return values

    if fast_paths.inferring_signature():
        # only the output spec matters (float64, as below): no run-time bound
        values = exact_reduction_reference(fn, x, w, addend)
        bound = tf.constant(2.0**max_abs_sum_bits_static, tf.float64)
        return (values, bound) if with_bound else values

    def forward(x, w):
        # (in the custom gradient: its gradient function differentiates the sum)
        return _in_exact_carrier(
            fn, x, w, l1_axes, x_bits,
            lambda: fast_paths.cast_add(in_float32(fn, x, w), addend),
            lambda w64: fast_paths.cast_add(fn(tf.cast(x, tf.float64), w64), addend))

    values, bound = fast_paths.float32_gradient_reduction(
        fn, forward, x, w, [] if addend is None else [addend])
    bound = tf.minimum(bound, 2.0**max_abs_sum_bits_static)
    return (values, bound) if with_bound else values


def _in_exact_carrier(fn, x, w, l1_axes, x_bits, on_float32, on_float64):
    """``(on_float32(), bound)`` when a run-time bound of the partial sums proves float32
    exact, else ``(on_float64(w64), bound)`` (``w64``: the weights in float64). The bounds,
    tried in turn: ``2^x_bits * L1(w)`` (the weights alone), ``max|x| * L1(w)``, then the
    largest ``sum_k |x_k| |w_k|`` of any output (``fn`` on the magnitudes, in float32: one
    more float32 reduction, far cheaper than a float64 one)."""
    if l1_axes is None:
        l1_axes = list(range(len(w.shape) - 1))
    float32_max = 2.0**(FLOAT32_VALUE_BITS + 1)
    # the weights' L1 norms in float64 (small tensors), max|x| in the carrier of x (exact)
    w64 = tf.cast(w, tf.float64)
    l1 = tf.reduce_max(tf.reduce_sum(tf.abs(w64), axis=l1_axes))

    def by_values():
        bound = max_abs(x) * l1

        def by_terms():
            # max over the outputs of sum |x_k| |w_k|, in float32: exact below 2^24, and at
            # least 2^24 once any true sum (or term, or cast operand) reaches it (non-negative
            # terms rounded monotonically, summed in any order), so that "< 2^24" proves every
            # partial sum of every output exact in float32
            terms_max = tf.cast(tf.reduce_max(in_float32(fn, tf.abs(x), tf.abs(w))), tf.float64)
            return tf.cond(terms_max < float32_max, lambda: (on_float32(), terms_max),
                           lambda: (on_float64(w64), bound))
        return tf.cond(bound <= float32_max, lambda: (on_float32(), bound), by_terms)

    if x_bits is None:
        return by_values()
    bound = 2.0**x_bits * l1
    return tf.cond(bound <= float32_max, lambda: (on_float32(), bound), by_values)


def reduction_parts(fn, x, w, max_abs_sum_bits_static, l1_axes=None, x_bits=None):
    """Runs an integer reduction ``fn(x, w)`` exactly (as :func:`exact_reduction`), its result
    given as float32 parts whose float64 sum it is, for inference.

    Integer maths: ``acc = sum_k x_k * w_k = hi + lo``.

    A consumer adds the parts inside its own fused kernel (see :class:`~quantizeml.recipes.
    fast_paths.Deferred`): the float64 result is then never written. One part (the float32
    result) when the static bound proves float32 exact; else two, ``hi`` and ``lo``: the
    float32 result and a broadcastable zero when the run-time bound proves float32 exact, else
    the float64 result rounded to float32 and its (exact) float32 remainder. No gradient.

    Args:
        fn, x, w, max_abs_sum_bits_static, l1_axes, x_bits: as :func:`exact_reduction`;
            ``max_abs_sum_bits_static`` at most ``SPLIT_VALUE_BITS`` (48): a remainder of
            at most 24 bits is exact in float32.

    Returns:
        (tuple of tf.Tensor, tf.Tensor): the parts and the float64 bound of ``|result|``.
    """
    if max_abs_sum_bits_static > SPLIT_VALUE_BITS:
        raise ValueError(f"max_abs_sum_bits_static expected <= {SPLIT_VALUE_BITS}. "
                         f"Received: max_abs_sum_bits_static={max_abs_sum_bits_static}")
    if max_abs_sum_bits_static <= FLOAT32_VALUE_BITS + 1:
        return (in_float32(fn, x, w),), tf.constant(2.0**max_abs_sum_bits_static, tf.float64)

    def with_zero():
        values = in_float32(fn, x, w)
        return values, tf.zeros([1] * values.shape.rank, tf.float32)

    def in_float64(w64):
        return fast_paths.fused(_split, fn(tf.cast(x, tf.float64), w64))

    (hi, lo), bound = _in_exact_carrier(fn, x, w, l1_axes, x_bits, with_zero, in_float64)
    return (hi, lo), tf.minimum(bound, 2.0**max_abs_sum_bits_static)


def _split(values):
    # |values| < 2^48: hi keeps the 24 leading bits, the remainder has at most 24 bits
    hi = tf.cast(values, tf.float32)
    return hi, tf.cast(values - tf.cast(hi, tf.float64), tf.float32)


def fold_scales(*scales):
    """The product of the scales that are not None (None when all are None)."""
    result = None
    for s in scales:
        if s is not None:
            result = s if result is None else result * s
    return result


def as_qtensor(fp, scales):
    """A QFloat of ``fp`` and ``scales``, or ``fp`` itself when scales is None."""
    return fp if scales is None else QFloat(fp, scales)


def split_qtensor(t):
    """(FixedPoint, scales or None) of a FixedPoint or QFloat."""
    if isinstance(t, QFloat):
        return t.fp, t.scales
    return t, None


class ReductionTerms:
    """The operands of an exact reduction of a quantized layer: the integer inputs and weights
    (per-axis inputs aligned through the weights, see
    :func:`~quantizeml.recipes.alignment.align_through_weights`), the static bound
    ``value_bits`` of the sums, and the accumulator's ``frac_bits`` and ``scales``.

    Integer maths: ``acc = sum_k x_k * 2^shift_k * w_k`` on the grid ``2^-(frac_x + frac_w)``
    with the scales ``x_scales * w_scales``.

    Args:
        fn (callable): the reduction on the integer carriers, weights output channels last.
        x (FixedPoint): the inputs.
        w (QTensor): the quantized weights, output channels last; every output sums at most
            ``prod(w.shape[:-1])`` products.
        x_scales (tf.Tensor, optional): the input scales. Defaults to None.
        frac_bits (tf.Tensor, optional): the accumulator fractional bits (the inputs then are
            not aligned). Defaults to ``x.frac_bits + w.frac_bits``.
        scales (tf.Tensor, optional): the accumulator scales. Defaults to
            ``x_scales * w.scales``.
    """

    def __init__(self, fn, x, w, x_scales=None, frac_bits=None, scales=None):
        wf, w_scales = split_qtensor(w)
        terms = 1
        for dim in w.shape[:-1]:
            terms *= int(dim)
        w_values, x_bits, checks = wf.values, x.value_bits, []
        if frac_bits is None and not x.per_tensor:
            x, w_values, x_bits, checks = align_through_weights(x, w_values)
        self.fn, self.x, self.w_values, self.checks = fn, x, w_values, checks
        self.value_bits = bits_for(terms * 2.0**(x_bits + wf.value_bits))
        self.frac_bits = x.frac_bits + wf.frac_bits if frac_bits is None else frac_bits
        self.scales = fold_scales(x_scales, w_scales) if scales is None else scales

    def accumulator(self):
        """(the accumulator QTensor, the bound of its magnitudes)."""
        values, bound = self.reduce()
        # the static bound holds every sum: nothing to clip below MAX_VALUE_BITS
        acc = FixedPoint(values, min(self.value_bits, MAX_VALUE_BITS), self.frac_bits,
                         clip=self.value_bits > MAX_VALUE_BITS)
        return as_qtensor(acc, self.scales), bound

    def parts(self):
        """(float32 parts of the sums, bound of their magnitudes): see
        :func:`reduction_parts`."""
        with tf.control_dependencies(self.checks):
            return reduction_parts(self.fn, self.x.values, self.w_values, self.value_bits,
                                   x_bits=self.x.value_bits)

    def reduce(self, addend=None):
        """(sums, bound of their magnitudes), plus ``addend`` (float64) when given."""
        with tf.control_dependencies(self.checks):
            return exact_reduction(self.fn, self.x.values, self.w_values, self.value_bits,
                                   x_bits=self.x.value_bits, with_bound=True, addend=addend)
