"""Integer requantization: fixed-point multipliers, their numpy reference and ONNX subgraph.

A real rescaling factor ``M > 0`` (input scale over output scale) is applied to an integer
accumulator as a fixed-point multiplier and a rounded right shift:
``y = floor((acc * m + 2^(n-1)) / 2^n)`` with ``m = round(M * 2^n)`` an integer of
``MULTIPLIER_BITS`` bits, so that ``y = round_half_up(acc * M)`` up to a relative error of
``2^-MULTIPLIER_BITS`` on ``M``. Everything is computed in int64: with ``|acc| < 2^47`` and
``m <= 2^15`` the product stays below ``2^62``, and the shift is at most 62, so the ONNX graph
and the numpy reference agree bit for bit.
"""
import numpy as np
from onnx import TensorProto
from onnx import helper as onnx_helper

from .base_layer import constant

MULTIPLIER_BITS = 15
"""int: the bitwidth of the fixed-point multipliers (``2^14 <= m < 2^15`` when no clamp)."""
MAX_SHIFT = 62
"""int: the largest shift (2^shift must fit in int64)."""
MAX_ACCUMULATOR = 2 ** 47
"""int: the largest magnitude of an accumulator the requantization is exact for."""


def fixed_point_multiplier(multiplier):
    """Fixed-point form ``(m, n)`` of positive real multipliers: ``multiplier ~ m * 2^-n``.

    ``n`` is chosen per value so that ``2^(MULTIPLIER_BITS-1) <= m <= 2^MULTIPLIER_BITS``,
    then clamped to ``[0, MAX_SHIFT]``: a tiny multiplier rounds to ``m = 0``, and one above
    ``2^MULTIPLIER_BITS`` is clamped to it (``n = 0``), which changes no 8-bit result: any
    non-zero accumulator then saturates either way.

    Args:
        multiplier (np.ndarray): multipliers, all > 0 and finite.

    Returns:
        tuple: (int64 array m, int64 array n), of the shape of ``multiplier``.

    Raises:
        ValueError: a multiplier is not finite and > 0.
    """
    mult = np.asarray(multiplier, np.float64)
    if not np.all(np.isfinite(mult)) or np.any(mult <= 0):
        raise ValueError("fixed_point_multiplier expected finite multipliers > 0. "
                         f"Received: multiplier={mult}")
    mult = np.minimum(mult, 2.0 ** MULTIPLIER_BITS)
    exponent = np.floor(np.log2(mult))
    shift = np.clip(MULTIPLIER_BITS - 1 - exponent, 0, MAX_SHIFT).astype(np.int64)
    m = np.rint(mult * np.exp2(shift.astype(np.float64))).astype(np.int64)
    return m, shift


def requantize(acc, m, n):
    """Numpy reference of the requantization: ``floor((acc * m + 2^(n-1)) / 2^n)`` in int64
    (an arithmetic right shift, i.e. rounding half up).

    Args:
        acc (np.ndarray): integer accumulator.
        m (np.ndarray): int64 multipliers (broadcastable to ``acc``).
        n (np.ndarray): int64 shifts (same shape as ``m``).

    Returns:
        np.ndarray: int64 result.
    """
    acc = np.asarray(acc, np.int64)
    m = np.asarray(m, np.int64)
    n = np.asarray(n, np.int64)
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    return np.right_shift(acc * m + half, n)


def saturate(x, signed):
    """Numpy reference of the saturation to int8 ``[-128, 127]`` or uint8 ``[0, 255]``."""
    if signed:
        return np.clip(x, -128, 127).astype(np.int8)
    return np.clip(x, 0, 255).astype(np.uint8)


def requantize_nodes(acc, multiplier, shift, output, prefix="rq"):
    """Function-body nodes of the rounded fixed-point rescaling of an int64 tensor:
    ``output = floor((acc * multiplier + 2^(shift-1)) / 2^shift)`` (round half up), all in
    int64, with the floor division of a possibly negative numerator written with the
    Python-semantics ``Mod``: ``floor(a / d) = (a - Mod(a, d)) / d``.

    Args:
        acc (str): name of the int64 input.
        multiplier (str): name of the int64 multiplier (broadcastable to ``acc``).
        shift (str): name of the int64 shift (same shape as ``multiplier``, in [0, 62]).
        output (str): name of the int64 output.
        prefix (str, optional): prefix of the intermediate names. Defaults to "rq".

    Returns:
        list: the nodes.
    """
    p = prefix
    return [
        constant(f"{p}_one", np.array(1, np.uint64)),
        constant(f"{p}_two", np.array(2, np.int64)),
        onnx_helper.make_node("Cast", [shift], [f"{p}_shift_u"], to=TensorProto.UINT64),
        onnx_helper.make_node("BitShift", [f"{p}_one", f"{p}_shift_u"], [f"{p}_pow_u"],
                              direction="LEFT"),
        onnx_helper.make_node("Cast", [f"{p}_pow_u"], [f"{p}_pow"], to=TensorProto.INT64),
        onnx_helper.make_node("Div", [f"{p}_pow", f"{p}_two"], [f"{p}_half"]),
        onnx_helper.make_node("Mul", [acc, multiplier], [f"{p}_prod"]),
        onnx_helper.make_node("Add", [f"{p}_prod", f"{p}_half"], [f"{p}_num"]),
        onnx_helper.make_node("Mod", [f"{p}_num", f"{p}_pow"], [f"{p}_rem"]),
        onnx_helper.make_node("Sub", [f"{p}_num", f"{p}_rem"], [f"{p}_exact"]),
        onnx_helper.make_node("Div", [f"{p}_exact", f"{p}_pow"], [output]),
    ]


def saturate_nodes(x, output, signed, prefix="sat"):
    """Function-body nodes clipping an int64 tensor to int8 ``[-128, 127]`` (signed) or uint8
    ``[0, 255]`` (unsigned) and casting it to that type."""
    lo, hi, to = (-128, 127, TensorProto.INT8) if signed else (0, 255, TensorProto.UINT8)
    return [constant(f"{prefix}_lo", np.array(lo, np.int64)),
            constant(f"{prefix}_hi", np.array(hi, np.int64)),
            onnx_helper.make_node("Clip", [x, f"{prefix}_lo", f"{prefix}_hi"],
                                  [f"{prefix}_clipped"]),
            onnx_helper.make_node("Cast", [f"{prefix}_clipped"], [output], to=to)]


