"""The matmul recipe: matrix products of QTensors, exact up to the 32-bit buffer.

Integer maths: ``y_ij = sum_k a_ik * b_kj`` (frac bits added, QFloat scales multiplied), an
:func:`~quantizeml.recipes.reduction.exact_reduction`. Importing this module registers the
``tf.linalg.matmul`` (``@``) overloads of QTensors (:mod:`quantizeml.recipes` imports it, and
``import quantizeml`` imports the recipes), so the tensor types stay below the recipes.
"""
import tensorflow as tf

from ..tensors.dispatch.arithmetic import QTensorLike
from ..tensors.dispatch.common import bits_for, check_result_bits
from ..tensors.fixed_point import FixedPoint, fold_static
from ..tensors.qfloat import QFloat
from ..tensors.qtensor import QTensor, is_per_tensor
from .reduction import exact_reduction


def reduction_bits(x_value_bits, w_value_bits, terms):
    """Value bits holding any sum of ``terms`` products of such integers (static bound).

    Returns:
        tuple(int, float): the value bits and the bound ``terms * 2^(x_bits + w_bits)``.
    """
    bound = float(terms) * 2.0**(x_value_bits + w_value_bits)
    return bits_for(bound), bound


def matmul_fixed_points(a, b, transpose_a=False, transpose_b=False, op="matmul"):
    """Exact integer matmul of two FixedPoints.

    The contracted axis of ``a`` must be per-tensor (one fractional bit for all the summed
    terms); ``b`` may be per-axis along its output axis.
    """
    if not a.per_tensor:
        raise ValueError(f"{op} expected a per-tensor FixedPoint as left operand (its summed "
                         "axis must share one fractional bit; use FixedPoint.expand). "
                         f"Received: frac_bits of shape {a.frac_bits.shape}")
    b_frac = b.frac_bits
    if not b.per_tensor and transpose_b:
        raise ValueError(f"{op} expected a per-tensor right operand when transpose_b=True. "
                         f"Received: frac_bits of shape {b_frac.shape}")
    k = a.shape[-2] if transpose_a else a.shape[-1]
    kb = b.shape[-1] if transpose_b else b.shape[-2]
    if k is not None and kb is not None and k != kb:
        raise ValueError(f"{op} expected inner dimensions that match. Received: "
                         f"a.shape={a.shape}, b.shape={b.shape}")
    k = k if k is not None else kb
    if k is None:
        raise ValueError(f"{op} expected a static inner dimension. Received: a.shape={a.shape}")
    value_bits, bound = reduction_bits(a.value_bits, b.value_bits, k)
    check_result_bits(value_bits, op)
    l1_axis = -1 if transpose_b else -2

    def fn(x, w):
        if not transpose_a and w.shape.rank == 2 and x.shape.rank is not None \
                and x.shape.rank > 2:
            return last_axis_matmul(x, tf.transpose(w) if transpose_b else w)
        return tf.linalg.matmul(x, w, transpose_a=transpose_a, transpose_b=transpose_b)

    values = exact_reduction(fn, a.values, b.values, value_bits, l1_axes=[l1_axis])
    return FixedPoint(values, value_bits, fold_static(tf.add, a.frac_bits, b_frac))


def last_axis_matmul(x, w):
    """``x @ w`` on the last axis of ``x`` (any rank >= 2) for a 2-D ``w``, as a 2-D matrix
    product: ``x`` is reshaped to ``(-1, features)`` and the result back.

    A broadcast ``tf.linalg.matmul`` of a rank >= 4 ``x`` with a size-1 batch axis (e.g.
    ``(N, 1, T, C) @ (C, U)``) gives wrong values in float32 on CPU, and can corrupt the heap,
    with TensorFlow 2.21's oneDNN kernels; the 2-D product is the same sums without them.
    """
    if x.shape.rank == 2:
        return tf.linalg.matmul(x, w)
    shape = tf.shape(x)
    flat = tf.linalg.matmul(tf.reshape(x, [-1, tf.shape(w)[0]]), w)
    out = tf.reshape(flat, tf.concat([shape[:-1], tf.shape(w)[-1:]], 0))
    out.set_shape(x.shape[:-1].concatenate(w.shape[-1:]))
    return out



def _matmul(a, b, transpose_a, transpose_b):
    if not (isinstance(a, QTensor) and isinstance(b, QTensor)):
        raise TypeError("matmul expected two QTensors (quantize the float operand first). "
                        f"Received: a={type(a).__name__}, b={type(b).__name__}")
    fa = a.fp if isinstance(a, QFloat) else a
    fb = b.fp if isinstance(b, QFloat) else b
    product = matmul_fixed_points(fa, fb, transpose_a, transpose_b)
    scales = None
    if isinstance(a, QFloat):
        if not is_per_tensor(a.scales):
            raise ValueError("matmul expected per-tensor scales on a QFloat left operand. "
                             f"Received: scales of shape {a.scales.shape}")
        scales = a.scales
    if isinstance(b, QFloat):
        if transpose_b and not is_per_tensor(b.scales):
            raise ValueError("matmul expected per-tensor scales on a transposed QFloat right "
                             f"operand. Received: scales of shape {b.scales.shape}")
        scales = b.scales if scales is None else scales * b.scales
    return product if scales is None else QFloat(product, scales)


@tf.experimental.dispatch_for_api(tf.linalg.matmul, {"a": QTensorLike})
def _matmul_a(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False,
              a_is_sparse=False, b_is_sparse=False, output_type=None, grad_a=False,
              grad_b=False, name=None):
    return _matmul(a, b, transpose_a or adjoint_a, transpose_b or adjoint_b)


@tf.experimental.dispatch_for_api(tf.linalg.matmul, {"a": tf.Tensor, "b": QTensorLike})
def _matmul_b(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False,
              a_is_sparse=False, b_is_sparse=False, output_type=None, grad_a=False,
              grad_b=False, name=None):
    return _matmul(a, b, transpose_a or adjoint_a, transpose_b or adjoint_b)
