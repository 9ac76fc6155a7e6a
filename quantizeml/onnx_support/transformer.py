"""Exact ONNX emitters of the transformer layers: QuantizedShiftmax, QuantizedAttention,
QuantizedSoftmax and QuantizedDot (its rounded softmax and its products, alone), the layer
normalizations (QuantizedLayerNormalization by the mean absolute deviation,
QuantizedLayerStdNormalization by the standard deviation) and the token layers
(QuantizedClassToken, QuantizedAddPositionEmbs, QuantizedExtractToken).

Each emitter writes the integer maths of the layer's ``call`` as standard ONNX operators on
int64 tensors (see :mod:`quantizeml.onnx_support.export`):

* the integer part ``floor(x)`` of a FixedPoint (or of a QFloat whose scales are quantized on
  ``scale_bits``, as ``shiftmax.floor_logits``) is an exact int64 floor division by
  ``2^frac_bits``;
* the integer shiftmax (``shiftmax.integer_shiftmax``): ``2^(y + E)`` is a ``Gather`` in the
  table ``[0, 1, 2, ..., 2^E]`` (0 for ``y + E < 0``), ``floor(log2(s))`` counts the powers of
  two ``2^j <= s``, ``round(log2(s))`` adds ``s^2 >= 2^(2k + 1)`` (int64: ``s < 2^31``), and
  the normalization is an int64 division by ``2^(r - E)`` (values >= 0: truncation is floor);
* the matrix products of activations (the attention scores ``q @ k^T`` and ``mask @ v``) are
  float64 ``MatMul``s of integers, exact because every partial sum is an integer below
  ``2^53`` (checked statically from the value bits; the export raises otherwise);
* the rounded softmax of QuantizedAttention(softmax='softmax') is the one float step of the
  layer, as in Keras: the float64 scores, then ``exp(x - max) * (1 / sum)`` (as TensorFlow's
  softmax kernel computes it), ``floor(p * 2^E + 1/2)``. The float64 probabilities of
  onnxruntime and TensorFlow differ by up to 5 ulps (on 8.7% of 3.4 million probabilities of
  random logits), which changes an integer only when ``p * 2^E`` lies within those ulps of a
  rounding tie: none of the 3.4 million masks (E = 8) differed;
* the layer normalizations use int64 sums, an int64 floor division (``Mod``-based), and for the
  standard deviation the float64 ``Div`` and ``Sqrt`` (correctly rounded in IEEE, so equal on
  every implementation) and a ``Log`` estimate of the exponent that ``std_normalize`` corrects
  by one step (so an ulp of difference in ``Log`` does not change the result); powers of two
  are ``Gather``s in exact tables;
* the tokens are int64 ``Concat`` (the class token broadcast on the batch with ``Expand``),
  ``Add`` (position embeddings quantized on the input grid) and ``Gather``.
"""
import math

import numpy as np
import tensorflow as tf
from onnx import TensorProto

from ..layers.attention import _sqrt_shift, softmax_axis
from ..layers.dot import dot_axes
from ..tensors import MAX_VALUE_BITS, FixedPoint, QFloat, bits_for
from .exact import (_T, _finish, _np, _one_input, align, clip_to_buffer, qfloat_to_fixed_point,
                    register_emitters)

__all__ = ["EMITTERS"]

#: Largest magnitude of a partial sum of a float64 ``MatMul`` of integers that stays exact.
_FLOAT64_EXACT_BITS = 53


# ---- int64 helpers ---------------------------------------------------------------------------
def _floor_div(b, x, d, base="fdiv"):
    """``floor(x / d)`` for int64 ``x`` and an int64 tensor ``d > 0`` (Python-semantics Mod)."""
    rem = b.node("Mod", [x, d], base + "_rem", fmod=0)
    return b.node("Div", [b.node("Sub", [x, rem], base + "_exact"), d], base)


def _pow2_table(b, low, high, dtype=np.int64):
    """A constant table of ``2^j`` for ``j`` in ``[low, high]`` (index ``j - low``)."""
    return b.const(np.power(2.0, np.arange(low, high + 1, dtype=np.float64)).astype(dtype),
                   "pow2")


def _gather(b, table, index, base):
    return b.node("Gather", [table, index], base, axis=0)


def _reduce(b, op, x, base, keepdims=1, axis=-1):
    """ReduceSum (axes input, opset 13) or ReduceMax (axes attribute) over one axis (the last
    by default)."""
    if op == "ReduceSum":
        return b.node(op, [x, b.i64([axis])], base, keepdims=keepdims)
    return b.node(op, [x], base, axes=[axis], keepdims=keepdims)


def _check_fixed_point(layer, x, what="inputs"):
    if x.scales is not None:
        raise ValueError(f"export expected FixedPoint {what} for {layer.name} "
                         f"({type(layer).__name__}). Received: a QFloat")


def _check_per_tensor(layer, x, what="inputs"):
    if not x.per_tensor:
        raise ValueError(f"export expected per-tensor {what} for {layer.name} "
                         f"({type(layer).__name__}). Received: frac bits of shape "
                         f"{x.frac.shape}")


def integer_part(b, layer, x, scale_bits):
    """``shiftmax.floor_logits``: ``floor(x * s_int * 2^-(f + s_f))`` in int64 (the scales of a
    QFloat quantized on ``scale_bits``; per-axis frac bits allowed)."""
    v, frac = x.name, x.frac
    if x.scales is not None:
        if x.vb + scale_bits + 1 > MAX_VALUE_BITS:
            raise ValueError(f"export expected a QFloat of at most "
                             f"{MAX_VALUE_BITS - scale_bits - 1} value bits for {layer.name}. "
                             f"Received: value_bits={x.vb}")
        qs = QFloat.quantize_scales(tf.constant(x.scales), scale_bits)
        v = b.node("Mul", [v, b.i64(_np(qs.values).astype(np.int64))], "logit_s")
        frac = frac + _np(qs.frac_bits).astype(np.float64)
    if not np.all(frac == np.round(frac)) or np.max(np.abs(frac)) > 62:
        raise ValueError(f"export expected integer frac bits in [-62, 62] for {layer.name}. "
                         f"Received: {frac}")
    frac = frac.astype(np.int64)
    if x.vb + int(np.max(np.maximum(-frac, 0))) > 62:
        raise ValueError(f"export expected the integer part of the inputs of {layer.name} "
                         f"within int64. Received: value_bits={x.vb}, frac_bits={frac}")
    if np.any(frac < 0):
        v = b.node("Mul", [v, b.i64(np.left_shift(np.int64(1), np.maximum(-frac, 0)))],
                   "logit_l")
    if np.any(frac > 0):
        v = _floor_div(b, v, b.i64(np.left_shift(np.int64(1), np.maximum(frac, 0))), "logit")
    return v


def integer_shiftmax(b, layer, logits, n, exp_bits, buffer_bits):
    """``shiftmax.integer_shiftmax`` of int64 integer logits (last axis of ``n`` entries):
    the int64 outputs ``p`` (``E`` fractional bits, ``0 <= p <= 2^E``)."""
    sum_bits = bits_for(n * 2.0 ** exp_bits)
    if sum_bits > min(buffer_bits - 1, 31):  # s^2 in int64 (as Keras computes it)
        limit = min(buffer_bits - 1, 31) - bits_for(n)
        raise ValueError(f"export expected exp_bits of at most {limit} for {layer.name} "
                         f"({n} logits). Received: exp_bits={exp_bits}")
    top = _reduce(b, "ReduceMax", logits, "sm_max")
    y = b.node("Sub", [logits, top], "sm_y")
    index = b.node("Add", [b.node("Clip", [y, b.i64(-exp_bits - 1), b.i64(0)], "sm_clip"),
                           b.i64(exp_bits + 1)], "sm_index")
    table = np.concatenate([[0], np.left_shift(np.int64(1), np.arange(exp_bits + 1))])
    e = _gather(b, b.i64(table, "sm_exp"), index, "sm_e")  # 2^(y + E), 0 below 2^-E
    s = _reduce(b, "ReduceSum", e, "sm_sum")  # in [2^E, n * 2^E]
    powers = np.left_shift(np.int64(1), np.arange(1, sum_bits + 1))
    k = b.node("Cast", [b.node("GreaterOrEqual", [s, b.i64(powers)], "sm_ge")], "sm_bits",
               to=TensorProto.INT64)
    k = _reduce(b, "ReduceSum", k, "sm_k")  # floor(log2(s)) = #{j >= 1: 2^j <= s}
    pow2 = _pow2_table(b, 0, 62)
    threshold = _gather(b, pow2, b.node("Add", [b.node("Mul", [k, b.i64(2)], "sm_2k"),
                                               b.i64(1)], "sm_2k1"), "sm_thr")
    up = b.node("GreaterOrEqual", [b.node("Mul", [s, s], "sm_s2"), threshold], "sm_up")
    r = b.node("Add", [k, b.node("Cast", [up], "sm_upi", to=TensorProto.INT64)], "sm_r")
    divisor = _gather(b, pow2, b.node("Sub", [r, b.i64(exp_bits)], "sm_rE"), "sm_div")
    return b.node("Div", [e, divisor], "shiftmax")  # e >= 0: truncation is floor


def _last_dim(layer, x):
    if x.shape is None or x.shape[-1] is None:
        raise ValueError(f"export expected a static last dimension for {layer.name} "
                         f"({type(layer).__name__}). Received: shape {x.shape}")
    return int(x.shape[-1])


# ---- QuantizedShiftmax -----------------------------------------------------------------------
def _shiftmax(b, layer, x):
    """QuantizedShiftmax: the integer shiftmax of ``floor(x)``, E = exp_bits fractional bits."""
    n = _last_dim(layer, x)
    logits = integer_part(b, layer, x, layer.scale_bits)
    p = integer_shiftmax(b, layer, logits, n, layer.exp_bits, layer.buffer_bitwidth)
    return _finish(b, layer, _T(p, layer.exp_bits + 1, float(layer.exp_bits), None, True,
                                x.shape))


# ---- QuantizedAttention ----------------------------------------------------------------------
def _float64_matmul(b, layer, a, c, terms, a_bits, c_bits, transpose_c=False):
    """An exact int64 matmul ``a @ c`` (``terms`` products per output) as a float64 MatMul."""
    bound_bits = bits_for(terms * 2.0 ** (a_bits + c_bits))
    if bound_bits > _FLOAT64_EXACT_BITS:
        raise ValueError(f"export expected attention products below 2^{_FLOAT64_EXACT_BITS} "
                         f"for {layer.name}. Received: {terms} terms of {a_bits} and {c_bits} "
                         f"value bits")
    fa = b.node("Cast", [a], "mm_a", to=TensorProto.DOUBLE)
    fc = b.node("Cast", [c], "mm_c", to=TensorProto.DOUBLE)
    if transpose_c:
        fc = b.node("Transpose", [fc], "mm_ct", perm=[0, 1, 3, 2])
    out = b.node("MatMul", [fa, fc], "mm")
    return b.node("Cast", [out], "mm_int", to=TensorProto.INT64), min(bound_bits,
                                                                      MAX_VALUE_BITS)


def _softmax_mask(b, layer, scores, exp_bits, scale_bits, axis=-1):
    """``attention.quantized_softmax``: ``floor(softmax(x) * 2^E + 1/2)`` of the exact float64
    scores along ``axis`` (the last by default), the softmax as TensorFlow computes it:
    ``exp(x - max) * (1 / sum)``."""
    v = b.node("Cast", [scores.name], "sc_f64", to=TensorProto.DOUBLE)
    frac = scores.frac
    if scores.scales is not None:
        qs = QFloat.quantize_scales(tf.constant(scores.scales), scale_bits)
        v = b.node("Mul", [v, b.const(_np(qs.values).astype(np.float64))], "sc_s")
        frac = frac + _np(qs.frac_bits).astype(np.float64)
    v = b.node("Mul", [v, b.const(np.power(2.0, -frac))], "sc_f")
    shifted = b.node("Sub", [v, _reduce(b, "ReduceMax", v, "sc_max", axis=axis)], "sc_shift")
    ex = b.node("Exp", [shifted], "sc_exp")
    inv = b.node("Reciprocal", [_reduce(b, "ReduceSum", ex, "sc_sum", axis=axis)], "sc_inv")
    probs = b.node("Mul", [ex, inv], "sc_softmax")
    probs = b.node("Mul", [probs, b.const(np.array(2.0 ** exp_bits))], "sc_p")
    p = b.node("Floor", [b.node("Add", [probs, b.const(np.array(0.5))], "sc_half")], "sc_round")
    return b.node("Cast", [p], "sc_mask", to=TensorProto.INT64)


def _attention(b, layer, xs):
    """QuantizedAttention: exact integer scores, the shift or QFloat rescale by 1/sqrt(dim),
    the integer shiftmax (or the rounded float softmax), the exact ``mask @ v``."""
    if len(xs) != 3:
        raise ValueError(f"export expected three inputs for {layer.name}. Received: {len(xs)}")
    for name, x in zip(("query", "key", "value"), xs):
        _check_fixed_point(layer, x, name)
        _check_per_tensor(layer, x, name)
        if x.shape is None or len(x.shape) != 2 or None in x.shape:
            raise ValueError(f"export expected static [tokens, hidden] inputs for {layer.name}."
                             f" Received: {name} of shape {x.shape}")
    tokens, hidden = (int(d) for d in xs[0].shape)
    heads = layer.num_heads
    dim = hidden // heads
    q, k, v = (b.node("Transpose", [b.node("Reshape", [x.name, b.i64([-1, tokens, heads, dim])],
                                           "split")], "heads", perm=[0, 2, 1, 3]) for x in xs)
    scores, vb = _float64_matmul(b, layer, q, k, dim, xs[0].vb, xs[1].vb, transpose_c=True)
    frac, scales = float(xs[0].frac + xs[1].frac), None
    shift = _sqrt_shift(dim)
    if shift is not None:
        frac += shift
    else:
        scales = np.float32(_np(tf.constant(1.0 / math.sqrt(dim), tf.float32)))
    scores = _T(scores, vb, frac, scales, False, None)
    exp_bits = layer.exp_bits
    if layer.softmax == "softmax":
        mask = _softmax_mask(b, layer, scores, exp_bits, layer.scale_bits)
    else:
        logits = integer_part(b, layer, scores, layer.scale_bits)
        mask = integer_shiftmax(b, layer, logits, tokens, exp_bits, layer.buffer_bitwidth)
    out, vb = _float64_matmul(b, layer, mask, v, tokens, exp_bits + 1, xs[2].vb)
    out = b.node("Transpose", [out], "merge", perm=[0, 2, 1, 3])
    out = b.node("Reshape", [out, b.i64([-1, tokens, hidden])], "merged")
    t = _T(out, vb, exp_bits + float(xs[2].frac), None, False, (tokens, hidden))
    return _finish(b, layer, clip_to_buffer(b, t, layer.buffer_bitwidth))


# ---- QuantizedSoftmax, QuantizedDot ---------------------------------------------------------
def _softmax(b, layer, x):
    """QuantizedSoftmax: the rounded float64 softmax of QuantizedAttention along its axis."""
    if x.shape is None or None in x.shape:
        raise ValueError(f"export expected a static input shape for {layer.name}. "
                         f"Received: {x.shape}")
    axis = softmax_axis(layer)
    axis = axis if axis >= 0 else axis + len(x.shape) + 1
    mask = _softmax_mask(b, layer, x, layer.exp_bits, layer.scale_bits, axis=axis)
    return _finish(b, layer, _T(mask, layer.exp_bits + 1, float(layer.exp_bits), None, True,
                                x.shape))


def _dot(b, layer, xs):
    """QuantizedDot: the exact integer batched product, a float64 ``MatMul`` of integers (its
    operands transposed as the axes say)."""
    if len(xs) != 2:
        raise ValueError(f"export expected two inputs for {layer.name}. Received: {len(xs)}")
    for name, x in zip(("a", "b"), xs):
        _check_fixed_point(layer, x, name)
        _check_per_tensor(layer, x, name)
        if x.shape is None or len(x.shape) != 2 or None in x.shape:
            raise ValueError(f"export expected static [steps, features] inputs for "
                             f"{layer.name}. Received: {name} of shape {x.shape}")
    axis_a, axis_b = dot_axes(layer)
    a, c = xs[0].name, xs[1].name
    if axis_a == 1:
        a = b.node("Transpose", [a], "dot_at", perm=[0, 2, 1])
    if axis_b == 2:
        c = b.node("Transpose", [c], "dot_bt", perm=[0, 2, 1])
    terms = int(xs[0].shape[axis_a - 1])
    out, vb = _float64_matmul(b, layer, a, c, terms, xs[0].vb, xs[1].vb)
    shape = (int(xs[0].shape[2 - axis_a]), int(xs[1].shape[2 - axis_b]))
    t = _T(out, vb, float(xs[0].frac + xs[1].frac), None, False, shape)
    return _finish(b, layer, clip_to_buffer(b, t, layer.buffer_bitwidth))


# ---- layer normalizations --------------------------------------------------------------------
def _gamma_beta(b, layer, z, channels):
    """``gamma * z + beta`` of the layer normalizations: the product with the quantized gamma
    (QFloat scales kept; scale 1.0 without), beta quantized on that grid by the
    AlignedWeightQuantizer and added, clipped to the buffer, then the output quantizer."""
    if layer.scale:
        gq = layer.gamma_quantizer(layer.gamma)
        gfp = gq.fp if isinstance(gq, QFloat) else gq
        name = b.node("Mul", [z.name, b.i64(_np(gfp.values).astype(np.int64))], "ln_gamma")
        vb = z.vb + gfp.value_bits + 1
        if vb > MAX_VALUE_BITS:
            raise ValueError(f"export expected gamma * z within {MAX_VALUE_BITS} value bits "
                             f"for {layer.name}. Received: {vb}")
        frac = z.frac + _np(gfp.frac_bits).astype(np.float64)
        scales = _np(gq.scales).astype(np.float32) if isinstance(gq, QFloat) else None
        acc = _T(name, vb, frac, scales, False, z.shape)
    else:
        acc = z
    if acc.scales is None:
        acc = _T(acc.name, acc.vb, acc.frac, np.float32(1.0), acc.unsigned, acc.shape)
    if layer.center:
        frac_t = tf.constant(np.broadcast_to(acc.frac, (channels,)).astype(np.float32)
                             if acc.frac.size > 1 else np.float32(acc.frac.reshape(())))
        grid = QFloat(FixedPoint(tf.zeros((1, channels)), acc.vb, frac_t),
                      tf.constant(acc.scales))
        bq = layer.beta_quantizer(layer.beta, grid)
        bfp = bq.fp if isinstance(bq, QFloat) else bq
        name = b.node("Add", [acc.name, b.i64(_np(bfp.values).astype(np.int64))], "ln_beta")
        acc = _T(name, min(max(acc.vb, bfp.value_bits) + 1, MAX_VALUE_BITS), acc.frac,
                 acc.scales, False, acc.shape)
        acc = clip_to_buffer(b, acc, layer.buffer_bitwidth)
    return _finish(b, layer, acc)


def _mad_norm(b, layer, x):
    """QuantizedLayerNormalization: ``z = round_half_up(x * N * 2^fz / sum(|x|))`` (0 for a row
    of zeros) as ``floor((2 x M + total) / (2 total))``, then gamma and beta."""
    if x.scales is not None:
        if x.scales.size == 1:  # a per-tensor scale cancels in x / mad(x)
            x = _T(x.name, x.vb, x.frac, None, x.unsigned, x.shape)
        else:
            x = qfloat_to_fixed_point(b, x, layer.scale_bits)
    x = align(b, x)
    channels = _last_dim(layer, x)
    frac_bits = layer.norm_frac_bits(channels)
    multiplier = channels * 2 ** frac_bits
    if x.vb + bits_for(multiplier) + 2 > 62:
        raise ValueError(f"export expected inputs of at most {60 - bits_for(multiplier)} value "
                         f"bits for {layer.name}. Received: value_bits={x.vb}")
    total = _reduce(b, "ReduceSum", b.node("Abs", [x.name], "ln_abs"), "ln_total")
    numerator = b.node("Add", [b.node("Mul", [x.name, b.i64(2 * multiplier)], "ln_2xm"), total],
                       "ln_num")
    denominator = b.node("Max", [b.node("Mul", [total, b.i64(2)], "ln_2t"), b.i64(1)], "ln_den")
    z = _floor_div(b, numerator, denominator, "ln_z")
    z = b.node("Where", [b.node("Greater", [total, b.i64(0)], "ln_nz"), z, b.i64(0)], "ln_zero")
    vb = bits_for(multiplier)
    z = b.clip_bits(z, vb, base="ln_zc")
    return _gamma_beta(b, layer, _T(z, vb, float(frac_bits), None, False, x.shape), channels)


def _std_norm(b, layer, x):
    """QuantizedLayerStdNormalization (``layer_norm.std_normalize``): ``d = N x - sum(x)``,
    ``S = sum(d^2)`` in int64, ``r = sqrt(N / (S + eps_units N^3))`` in float64, its mantissa
    ``m`` of rsqrt_bits bits and exponent ``e``, ``z = round_half_up(d m 2^(fz - e))``."""
    _check_per_tensor(layer, x)
    channels = _last_dim(layer, x)
    frac_bits = layer.norm_frac_bits(channels)
    max_bits = layer.max_input_value_bits(channels)
    if x.vb > max_bits:
        raise ValueError(f"export expected inputs of at most {max_bits} value bits for "
                         f"{layer.name}. Received: value_bits={x.vb}")
    eps_units = np.float64(float(layer.epsilon)) * np.power(2.0, 2.0 * float(x.frac))
    if x.scales is not None:
        scale = np.float64(np.float32(x.scales.reshape(())))
        eps_units = eps_units / (scale * scale)
    n = float(channels)
    d = b.node("Sub", [b.node("Mul", [x.name, b.i64(channels)], "ln_nx"),
                       _reduce(b, "ReduceSum", x.name, "ln_sum")], "ln_d")
    total = _reduce(b, "ReduceSum", b.node("Mul", [d, d], "ln_d2"), "ln_s")
    q = b.node("Add", [b.node("Cast", [total], "ln_sf", to=TensorProto.DOUBLE),
                       b.const(np.float64(eps_units * float(channels ** 3)))], "ln_q")
    q = b.node("Where", [b.node("Greater", [total, b.i64(0)], "ln_pos"), q,
                         b.const(np.float64(n))], "ln_q1")
    r = b.node("Sqrt", [b.node("Div", [b.const(np.float64(n)), q], "ln_nq")], "ln_r")
    rsqrt_bits = layer.rsqrt_bits
    top = float(2 ** rsqrt_bits)
    log2 = b.node("Div", [b.node("Log", [r], "ln_log"), b.const(np.float64(math.log(2.0)))],
                  "ln_log2")
    e = b.node("Sub", [b.const(np.float64(rsqrt_bits - 1)), b.node("Floor", [log2], "ln_fl")],
               "ln_e0")
    e = b.node("Clip", [e, b.const(np.float64(-200.0)), b.const(np.float64(200.0))], "ln_ec")
    pow2f = _pow2_table(b, -201, 201, np.float64)

    def scaled(e_name, base):
        index = b.node("Add", [b.node("Cast", [e_name], base + "_i", to=TensorProto.INT64),
                               b.i64(201)], base + "_idx")
        return b.node("Mul", [r, _gather(b, pow2f, index, base + "_p2")], base)
    t = scaled(e, "ln_t")
    down = b.node("Cast", [b.node("GreaterOrEqual", [t, b.const(np.float64(top))], "ln_ge")],
                  "ln_down", to=TensorProto.DOUBLE)
    up = b.node("Cast", [b.node("Less", [t, b.const(np.float64(top / 2))], "ln_lt")], "ln_up",
                to=TensorProto.DOUBLE)
    e = b.node("Add", [b.node("Sub", [e, down], "ln_e1"), up], "ln_e")
    m = b.node("Cast", [b.node("Floor", [scaled(e, "ln_rm")], "ln_mf")], "ln_m",
               to=TensorProto.INT64)
    shift = b.node("Sub", [b.node("Cast", [e], "ln_ei", to=TensorProto.INT64), b.i64(frac_bits)],
                   "ln_shift")
    shift = b.node("Clip", [shift, b.i64(-62), b.i64(62)], "ln_shc")
    right = b.node("Max", [shift, b.i64(0)], "ln_right")
    left = b.node("Max", [b.node("Neg", [shift], "ln_neg"), b.i64(0)], "ln_left")
    pow2 = _pow2_table(b, 0, 62)
    halves = b.i64(np.concatenate([[0], np.left_shift(np.int64(1), np.arange(62))]), "half")
    v = b.node("Add", [b.node("Mul", [d, m], "ln_dm"), _gather(b, halves, right, "ln_half")],
               "ln_dmh")
    z = _floor_div(b, v, _gather(b, pow2, right, "ln_rdiv"), "ln_z")
    z = b.node("Mul", [z, _gather(b, pow2, left, "ln_lmul")], "ln_zl")
    vb = bits_for(math.isqrt((channels - 1) << (2 * frac_bits)) + 1)
    z = b.clip_bits(z, vb, base="ln_zc")
    return _gamma_beta(b, layer, _T(z, vb, float(frac_bits), None, False, x.shape), channels)


# ---- tokens ----------------------------------------------------------------------------------
def _token_grid(x, channels):
    """A FixedPoint with the frac bits of ``x`` (the grid the TokenQuantizers read)."""
    frac = np.broadcast_to(x.frac, (channels,)).astype(np.float32) if x.frac.size > 1 \
        else np.float32(x.frac.reshape(()))
    return FixedPoint(tf.zeros((1, 1, channels)), x.vb, tf.constant(frac))


def _class_token(b, layer, x):
    """QuantizedClassToken: ``concat([cls_int broadcast on the batch, x_int], axis=1)``."""
    x = qfloat_to_fixed_point(b, x, layer.scale_bits)
    channels = _last_dim(layer, x)
    cls = layer.cls_quantizer(layer.cls, _token_grid(x, channels))
    batch = b.node("Slice", [b.node("Shape", [x.name], "ct_shape"), b.i64([0]), b.i64([1])],
                   "ct_batch")
    shape = b.node("Concat", [batch, b.i64([1, channels])], "ct_dims", axis=0)
    token = b.node("Expand", [b.i64(_np(cls.values).astype(np.int64), "cls"), shape], "ct_cls")
    v = b.node("Concat", [token, x.name], "class_token", axis=1)
    out_shape = None if x.shape is None or x.shape[0] is None else \
        (int(x.shape[0]) + 1, channels)
    t = _T(v, max(cls.value_bits, x.vb), x.frac, None, False, out_shape)
    return _finish(b, layer, clip_to_buffer(b, t, layer.buffer_bitwidth))


def _add_position_embs(b, layer, x):
    """QuantizedAddPositionEmbs: ``x_int + pe_int`` (pe quantized on the input grid)."""
    x = qfloat_to_fixed_point(b, x, layer.scale_bits)
    channels = _last_dim(layer, x)
    pe = layer.pe_quantizer(layer.pe, _token_grid(x, channels))
    v = b.node("Add", [x.name, b.i64(_np(pe.values).astype(np.int64), "pe")], "position_embs")
    t = _T(v, min(max(pe.value_bits, x.vb) + 1, MAX_VALUE_BITS), x.frac, None, False, x.shape)
    return _finish(b, layer, clip_to_buffer(b, t, layer.buffer_bitwidth))


def _extract_token(b, layer, x):
    """QuantizedExtractToken: ``Gather(x_int, token, axis)`` (per-axis frac bits gathered when
    the token is taken on the last axis)."""
    _check_fixed_point(layer, x)
    if x.shape is None:
        raise ValueError(f"export expected a known rank for {layer.name}.")
    rank = len(x.shape) + 1
    axis = layer.axis % rank
    if axis == 0:
        raise ValueError(f"export expected an ExtractToken axis other than the batch for "
                         f"{layer.name}. Received: axis={layer.axis}")
    v = b.node("Gather", [x.name, b.i64(layer.token)], "extract_token", axis=axis)
    frac = x.frac
    if frac.size > 1 and axis == rank - 1:
        frac = frac.reshape(-1)[layer.token]
    shape = tuple(d for i, d in enumerate(x.shape) if i != axis - 1)
    return _finish(b, layer, _T(v, x.vb, frac, None, x.unsigned, shape))


#: Emitter name (``TwinSpec.export``) -> ``(emit, refuses)``, merged into ``export.EMITTERS``.
EMITTERS = {
    "shiftmax": (_one_input(_shiftmax), None),
    "attention": (_attention, None),
    "layer_mad_norm": (_one_input(_mad_norm), None),
    "layer_std_norm": (_one_input(_std_norm), None),
    "class_token": (_one_input(_class_token), None),
    "add_position_embs": (_one_input(_add_position_embs), None),
    "extract_token": (_one_input(_extract_token), None),
    "softmax": (_one_input(_softmax), None),
    "dot": (_dot, None),
}
register_emitters(EMITTERS)
