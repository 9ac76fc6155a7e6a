"""Carrier dtypes for exact integer arithmetic.

quantizeml stores the integer values of a :class:`FixedPoint` in a floating-point tensor, the
*carrier*, because TensorFlow's CPU kernels for float32 are 2-3 times faster than their int32
counterparts, and int32 kernels wrap silently on overflow.

A float carrier is exact as long as every integer it holds, and every partial sum computed
while reducing, stays within its contiguous integer range:

* float32 holds every integer of magnitude up to 2^24, so it carries values of up to 23 value
  bits (plus the sign);
* float64 holds every integer up to 2^53, so it carries everything a 32-bit buffer (31 value
  bits plus the sign) can hold, and the products and sums of such values, up to 52 bits.

The carrier of a FixedPoint is chosen from its ``value_bits`` (a static Python int), so the dtype
of its values is known when a graph is traced. Reductions (matmul, convolutions) choose their
compute dtype from a bound of their partial sums: statically when the bitwidths prove float32
exact, otherwise at run time from the actual magnitudes of the operands (see
:func:`exact_reduction`).
"""
import tensorflow as tf

from .fusion import fused

#: Largest number of value bits a float32 carrier holds exactly.
FLOAT32_VALUE_BITS = 23
#: Largest number of value bits quantizeml supports (float64 carrier).
MAX_VALUE_BITS = 52
#: Default integer buffer of quantized operations, sign bit included.
BUFFER_BITS = 32


def carrier_dtype(value_bits):
    """Returns the float dtype that holds integers of ``value_bits`` bits (plus sign) exactly.

    Args:
        value_bits (int): the number of value bits, sign excluded.

    Returns:
        tf.DType: tf.float32 up to 23 value bits, tf.float64 beyond.
    """
    return tf.float32 if value_bits <= FLOAT32_VALUE_BITS else tf.float64


def check_value_bits(value_bits, name="value_bits"):
    """Validates a number of value bits and returns it as an int."""
    if isinstance(value_bits, bool) or not isinstance(value_bits, int):
        try:
            as_int = int(value_bits)
        except (TypeError, ValueError):
            as_int = None
        if as_int is None or as_int != value_bits or isinstance(value_bits, bool):
            raise TypeError(f"{name} expected an int. Received: {name}={value_bits!r}")
        value_bits = as_int
    if not 0 <= value_bits <= MAX_VALUE_BITS:
        raise ValueError(f"{name} expected an int in [0, {MAX_VALUE_BITS}]. "
                         f"Received: {name}={value_bits}")
    return value_bits


@tf.custom_gradient
def round_half_up(x):
    """Rounds to the nearest integer, halves towards +inf (what a rounded right shift does).

    The gradient is the straight-through estimator (identity), so that quantization-aware
    training reaches the float weights.
    """
    # floor(x + 0.5) computed without rounding the sum: x + 0.5 rounds up to the next integer
    # for the largest float below a half (0.49999997 + 0.5 == 1.0 in float32). ``x - floor(x)``
    # is exact (Sterbenz for |x| >= 1, and rounds monotonically around 0.5 in (-1, 0)).
    floored = tf.floor(x)
    rounded = floored + tf.cast(x - floored >= tf.constant(0.5, x.dtype), x.dtype)

    def grad(dy):
        return dy
    return rounded, grad


@tf.custom_gradient
def round_shifted_half_up(x):
    """``floor(x + 0.5)`` for integers scaled by a power of two, gradient identity (STE).

    Exact (equal to :func:`round_half_up`) when ``x = n * 2^s`` with an integer ``n`` that
    its carrier holds exactly (``|n| < 2^23`` in float32, ``2^52`` in float64), as the values
    of a FixedPoint shifted by ``2^s`` are:

    * ``s >= 0``: ``x`` is an integer and ``x + 0.5`` is exact below ``2^23`` (``2^52``);
      beyond, a tie may round up to ``x + 1``, which the clipping to the value bits of the
      carrier that follows absorbs;
    * ``-(bits(n) + 1) <= s < 0``: ``x + 0.5 = (n + 2^(-s-1)) * 2^s`` with
      ``|n + 2^(-s-1)| < 2^(bits(n) + 1)``, exact;
    * ``s < -(bits(n) + 1)``: ``|x| < 1/4`` and ``x + 0.5`` stays in ``(1/4, 3/4)``: 0.

    Two operations instead of the five of the general rounding, and no straight-through
    ``x + stop_gradient(r - x)`` arithmetic.
    """
    rounded = tf.floor(x + tf.constant(0.5, x.dtype))

    def grad(dy):
        return dy
    return rounded, grad


def in_float32(fn, x, w):
    """``fn`` on the operands cast to float32 (exact when a bound proves it)."""
    return fn(tf.cast(x, tf.float32), tf.cast(w, tf.float32))


def max_abs(values):
    """``max|values|`` in float64, from two read-only reductions (no |x| tensor written)."""
    return tf.cast(tf.maximum(tf.reduce_max(values), -tf.reduce_min(values)), tf.float64)


def exact_reduction(fn, x, w, max_abs_sum_bits_static, l1_axes=None, x_bits=None,
                    with_bound=False, addend=None):
    """Runs an integer reduction ``fn(x, w)`` (matmul, convolution) exactly.

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
            :mod:`~quantizeml.tensors.fusion`); the bound stays the bound of the reduction
            alone. The caller ensures that the sum needs no clipping. Defaults to None.

    Returns:
        tf.Tensor: the exact integer result, float64 when the static bound exceeds float32
        (and the bound when ``with_bound``). Its gradients are computed in float32
        (quantization-aware training needs no exact gradients, and float64 convolution
        gradients are several times slower).
    """
    def finish(values):
        # (in the custom gradient below: its gradient function differentiates the sum)
        if addend is None:
            return tf.cast(values, tf.float64)
        return fused(_cast_add, values, addend, under_tape=True)

    if max_abs_sum_bits_static <= FLOAT32_VALUE_BITS + 1:
        values = in_float32(fn, x, w)
        if addend is not None:
            values = add_to_float32(values, addend)
        if with_bound:
            return values, tf.constant(2.0**max_abs_sum_bits_static, tf.float64)
        return values

    @tf.custom_gradient
    def reduction(x, w, *addends):
        values, bound = _in_exact_carrier(
            fn, x, w, l1_axes, x_bits,
            lambda: finish(in_float32(fn, x, w)),
            lambda w64: finish(fn(tf.cast(x, tf.float64), w64)))

        def grad(dy, _):
            # gradients in float32, whichever carrier ran the (exact) forward reduction
            return (*float32_gradients(fn, x, w, dy),
                    *[sum_to_shape(dy, a) for a in addends])
        return (values, bound), grad

    values, bound = reduction(x, w, *([] if addend is None else [addend]))
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


#: Largest static bound (bits) of the results that :func:`reduction_parts` splits exactly.
SPLIT_VALUE_BITS = 2 * (FLOAT32_VALUE_BITS + 1)


def reduction_parts(fn, x, w, max_abs_sum_bits_static, l1_axes=None, x_bits=None):
    """Runs an integer reduction ``fn(x, w)`` exactly (as :func:`exact_reduction`), its result
    given as float32 parts whose float64 sum it is, for inference.

    A consumer adds the parts inside its own fused kernel (see :class:`~quantizeml.tensors.
    fusion.Deferred`): the float64 result is then never written. One part (the float32
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
        return fused(_split, fn(tf.cast(x, tf.float64), w64))

    (hi, lo), bound = _in_exact_carrier(fn, x, w, l1_axes, x_bits, with_zero, in_float64)
    return (hi, lo), tf.minimum(bound, 2.0**max_abs_sum_bits_static)


def _split(values):
    # |values| < 2^48: hi keeps the 24 leading bits, the remainder has at most 24 bits
    hi = tf.cast(values, tf.float32)
    return hi, tf.cast(values - tf.cast(hi, tf.float64), tf.float32)


def _cast_add(values, addend):
    return tf.cast(values, tf.float64) + addend


@tf.custom_gradient
def add_to_float32(values, addend):
    """``cast(values, float64) + addend`` (float32 integers plus a broadcast float64 addend)
    as one fused kernel in graphs, train steps included: its gradient (the gradient cast back
    to float32, and summed to the addend's shape) is one kernel too."""
    total = fused(_cast_add, values, addend, under_tape=True)

    def grad(dy):
        return fused(lambda dy, b: (tf.cast(dy, values.dtype), sum_to_shape(dy, b)), dy, addend,
                     under_tape=True)
    return total, grad


def sum_to_shape(dy, target):
    """The gradient of a tensor ``target`` broadcast to the shape of ``dy``: ``dy`` summed over
    the broadcast axes, in the dtype of ``target``."""
    rank, shape = dy.shape.rank, target.shape.as_list()
    padded = [1] * (rank - len(shape)) + shape
    axes = [i for i, dim in enumerate(padded) if dim == 1 and dy.shape[i] != 1]
    summed = tf.reduce_sum(dy, axis=axes, keepdims=True) if axes else dy
    return tf.cast(tf.reshape(summed, tf.shape(target)), target.dtype)


def float32_gradients(fn, x, w, dy):
    """The gradients of ``fn(x, w)`` for ``dy``, computed in float32, in the dtypes of x, w."""
    x32, w32 = tf.cast(x, tf.float32), tf.cast(w, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x32, w32])
        y = fn(x32, w32)
    gx, gw = tape.gradient(y, [x32, w32], output_gradients=tf.cast(dy, tf.float32))
    return tf.cast(gx, x.dtype), tf.cast(gw, w.dtype)
