"""The exact ONNX form of a quantized Keras model (from ``quantizeml.models.quantize``): the
emitters, their helpers (named after the recipes they mirror) and the graph walker
(:func:`export_exact`); :func:`quantizeml.onnx_support.export.export` is the entry point.

Every quantized layer is written as standard ONNX operators on **int64** tensors (NHWC, the
Keras layout) that reproduce the integer maths of the Keras layer exactly:

* ``InputQuantizer``: ``clip(floor(x * 2^f + 0.5))`` in float64 (exact), then int64;
* convolutions and Dense: the int64 inputs (padded explicitly, as TensorFlow pads 'same') are
  split into 8-bit limbs (``x = sum_j u_j * 256^j``, the top limb signed through a zero point
  of 128) and reduced with ``ConvInteger``/``MatMulInteger`` against the int8 quantized weights
  (exact int32 partial sums), the limbs recombined in int64; then the accumulator clip to the
  integer buffer, the bias quantized on the accumulator grid (taken from the Keras
  AlignedWeightQuantizer) and the buffer clip again;
* QFloat -> FixedPoint conversions multiply by the scales quantized on ``scale_bits``
  (``QFloat.quantize_scales``), an exact int64 product;
* rescalings (OutputQuantizer, alignments) are per-channel left shifts (multiplications) or
  rounded right shifts ``floor((v + 2^(s-1)) / 2^s)`` (round half up, the ``Mod``-based floor
  division), then the clip to the quantizer's range (and 0 for unsigned ones);
* ReLU is ``min(max(v, 0), floor(max_value * 2^f))``, the global average pooling an int64
  ``ReduceSum`` (its ``1 / (H * W)`` is a QFloat scale), the average pooling a sum of int64
  strided ``Slice``s times the integer table ``L / count`` (scale ``1 / L``), Add an aligned
  int64 sum; grouped convolutions use ``ConvInteger``'s ``group``.

**Float carriers (the lean form).** Where a static bound proves it exact, an integer tensor is
carried as float32 (or float64) holding the same integers (``_T.dtype``, ``_T.bound``): the
InputQuantizer writes float32; a Conv2D/DepthwiseConv2D/Dense whose partial sums are bounded by
``sum |w| * bound(x) + |bias| <= 2^24`` per output channel (computed from the int8 weights at
export time, the per-channel alignment shifts folded into the weights) is a float32
``Conv``/``MatMul`` with the bias as its ``B`` input (any summation order is exact: every
partial sum is an integer below 2^24); above that, two float32 ``Conv`` of the high and low
weights (``w = hi * 2^k + lo``) combined in float64, or a float64 ``MatMul``; the buffer clips
are dropped where the bound is within the buffer; requantization is ``floor(x * s * 2^-r +
1/2)`` then the clip (the ReLU's merged in): in float32 when the output range and the shift
fit its significand, even where the product does not (a clip of the accumulator that fuses
into the ``Conv``, one or two ``BatchNormalization``s as per-channel affine maps, ``Floor``),
else in float64 (proofs in :func:`_requantize_float`). The other layers get int64 inputs
(``_int64_inputs``) and keep the integer recipes below; every model integer output is int64.

The transposed and separable convolutions (:mod:`.convolutions`) and the transformer layers
(:mod:`.transformer`: shiftmax, attention, layer normalizations, tokens) have their emitters in
their own modules, merged into ``EMITTERS``.

The final Dequantizer is a float output (``values * 2^-f * scales`` in float64, rounded once to
float32, as ``QTensor.to_float`` does). The integer values before it are a second graph output
named ``integer_outputs`` (one per model output: ``integer_outputs``, ``integer_outputs_1``...).
A float tail that reads several quantized tensors (cross-attention) exports each of them, in
the graph order of their Dequantizers: ``integer_outputs``, ``integer_outputs_source1``...

The float layers quantize() leaves in a quantized model (the float preprocessing head before an
InputQuantizer ``<layer>_quantizer``, float islands between a Dequantizer and such an
InputQuantizer, the float tail after the last Dequantizer, e.g. a softmax) are written as
float32 ONNX operators (``FLOAT_EMITTERS``, keyed by Keras class): activations, ReLU,
LeakyReLU, Rescaling, Flatten, Reshape, Permute, Dense, the merges, Concatenate and dropouts
here; Conv2D, DepthwiseConv2D, SeparableConv2D, Conv1D, BatchNormalization,
LayerNormalization, the global and windowed 2D/1D poolings, ZeroPadding2D, Cropping2D and
UpSampling2D (nearest) in :mod:`.float_layers` (NHWC, a ``Transpose`` pair around
``Conv``/``MaxPool``/``AveragePool``, TensorFlow's 'same' pads explicit). Exact ones
(Rescaling, ReLU, reshapes, merges, dropout, padding, cropping, upsampling, max poolings) match
TensorFlow bit for bit; transcendental ones (Softmax, Sigmoid, Tanh, Exp...), the
convolutions, Dense, the normalizations and the averages may differ in the last float bits, so
the float outputs after a float tail match closely (a few ulps; within 1e-5 for the
convolutions and normalizations in the tests) while ``integer_outputs`` (taken before the
tail's Dequantizer) stay bit-exact.
"""
import numpy as np
import onnx
import tensorflow as tf
import tf_keras as keras
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from ..layers import Dequantizer, InputQuantizer, OutputQuantizer
from ..layers.pooling import average_table
from ..layers.spatial import bilinear_axis, resize_axis
from ..layers.registry import twin_spec, twin_specs
from ..models.graph import Graph
from ..tensors import MAX_VALUE_BITS, FixedPoint, QFloat, bits_for

__all__ = ["export", "EMITTERS", "supported_layers"]

#: ONNX standard opset of the exported graphs.
OPSET = 17

class _T:
    """An integer tensor of the graph: its ONNX name and the metadata of the QTensor it is.

    ``frac`` (float64 numpy, scalar or per channel) and ``scales`` (float32 numpy or None for
    a FixedPoint) follow the Keras QTensor; ``vb`` are its value bits and ``unsigned`` tells
    that the values are known to be >= 0.
    """

    def __init__(self, name, vb, frac, scales=None, unsigned=False, shape=None,
                 dtype="int64", bound=None):
        self.name = name
        self.vb = int(vb)
        self.frac = np.asarray(frac, np.float64)
        self.scales = None if scales is None else np.asarray(scales, np.float32)
        self.unsigned = unsigned
        self.shape = shape  # without batch
        # the ONNX element type: "int64", or a float carrier ("float32", "float64") that
        # holds the integer values exactly, and a static bound of their magnitude
        self.dtype = dtype
        self.bound = float(2.0 ** self.vb if bound is None else bound)

    @property
    def per_tensor(self):
        return self.frac.size == 1 and (self.scales is None or self.scales.size == 1)


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self._count = [], [], 0

    def uid(self, base):
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, value, base="c"):
        name = self.uid(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def i64(self, value, base="c"):
        return self.const(np.asarray(value, np.int64), base)

    def node(self, op, inputs, base, n_out=1, **attrs):
        outs = [self.uid(base) for _ in range(n_out)]
        self.nodes.append(oh.make_node(op, list(inputs), outs, name=self.uid(op), **attrs))
        return outs[0] if n_out == 1 else outs

    # ---- integer helpers -------------------------------------------------------------------
    def clip(self, x, lo, hi, base="clip"):
        return self.node("Clip", [x, self.i64(lo), self.i64(hi)], base)

    def clip_bits(self, x, value_bits, unsigned=False, base="clip"):
        lo = 0 if unsigned else -(2 ** value_bits)
        return self.clip(x, lo, 2 ** value_bits - 1, base)

    def floor_div(self, x, divisor, base="fdiv"):
        """floor(x / d) for int64 x and positive int64 d (Python-semantics Mod)."""
        d = self.i64(divisor)
        rem = self.node("Mod", [x, d], base + "_rem", fmod=0)
        exact = self.node("Sub", [x, rem], base + "_exact")
        return self.node("Div", [exact, d], base)

    def shift(self, x, shift, base="shift"):
        """x * 2^shift, exact left shifts and rounded-half-up right shifts, per channel."""
        shift = np.asarray(shift, np.float64)
        if not np.all(shift == np.round(shift)):
            raise ValueError(f"export expected integer shifts. Received: {shift}")
        shift = shift.astype(np.int64)
        if np.all(shift == 0):
            return x
        left = np.left_shift(np.int64(1), np.maximum(shift, 0))
        right = np.left_shift(np.int64(1), np.maximum(-shift, 0))
        if np.any(left != 1):
            x = self.node("Mul", [x, self.i64(left)], base + "_l")
        if np.any(right != 1):
            half = right // 2
            x = self.node("Add", [x, self.i64(half)], base + "_h")
            x = self.floor_div(x, right, base + "_r")
        return x


def _np(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _pad_amounts(size, kernel, stride, dilation, padding):
    if padding == "valid":
        return 0, 0
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


# ---- float carriers -------------------------------------------------------------------------
#: float carrier -> (ONNX type, numpy type, significand bits): every integer of magnitude
#: <= 2^bits is exact in it, and so is every sum, product or power-of-two scaling whose
#: exact result is an integer (or a dyadic fraction) within that magnitude.
_CARRIERS = {"float32": (TensorProto.FLOAT, np.float32, 24),
             "float64": (TensorProto.DOUBLE, np.float64, 53)}


def _carrier(bound):
    """The narrowest float carrier in which integers of magnitude <= ``bound`` are exact, or
    None (int64 needed)."""
    for dtype, (_, _, bits) in _CARRIERS.items():
        if bound <= 2.0 ** bits:
            return dtype
    return None


def _fconst(b, value, dtype, base="f"):
    return b.const(np.asarray(value, _CARRIERS[dtype][1]), base)


def _like(x, name, **changes):
    """A copy of the ``_T`` ``x`` named ``name`` (same metadata unless ``changes``)."""
    args = dict(vb=x.vb, frac=x.frac, scales=x.scales, unsigned=x.unsigned, shape=x.shape,
                dtype=x.dtype, bound=x.bound)
    args.update(changes)
    return _T(name, **args)


def as_int64(b, x):
    """``x`` as an int64 tensor (a ``Cast`` of a float carrier, exact: it holds integers)."""
    if x.dtype == "int64":
        return x
    return _like(x, b.node("Cast", [x.name], "to_i64", to=TensorProto.INT64), dtype="int64")


def as_float(b, x, dtype):
    """``x`` in the float carrier ``dtype`` (the caller checked ``x.bound`` fits it)."""
    if x.dtype == dtype:
        return x
    if x.bound > 2.0 ** _CARRIERS[dtype][2]:
        raise ValueError(f"export expected values within the {dtype} carrier. Received: "
                         f"bound {x.bound}")
    name = b.node("Cast", [x.name], "to_" + dtype, to=_CARRIERS[dtype][0])
    return _like(x, name, dtype=dtype)


def _clip_values(b, x, lo, hi, base="clip"):
    """``min(max(x, lo), hi)`` in the dtype of ``x`` (a ``_T``); ``lo``/``hi`` scalars or per
    channel: one ``Clip`` when both are scalars, else ``Max``/``Min``."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    const = b.i64 if x.dtype == "int64" else (lambda v: _fconst(b, v, x.dtype))
    if lo.size == 1 and hi.size == 1:
        return b.node("Clip", [x.name, const(lo.reshape(())), const(hi.reshape(()))], base)
    v = b.node("Max", [x.name, const(lo)], base + "_lo")
    return b.node("Min", [v, const(hi)], base + "_hi")


def _int64_inputs(emit):
    """An emitter that takes int64 inputs only: float carriers are cast to int64 first."""
    def emitter(b, layer, xs):
        return emit(b, layer, [as_int64(b, x) if isinstance(x, _T) else x for x in xs])
    return emitter


def _shift_rounded(n, up, down):
    """Exact ``floor((n * up + down / 2) / down)`` on (broadcast) Python integers."""
    n, up, down = np.broadcast_arrays(np.asarray(n, object), np.asarray(up, object),
                                      np.asarray(down, object))
    out = [(int(a) * int(u) + int(d) // 2) // int(d) for a, u, d in
           zip(n.ravel(), up.ravel(), down.ravel())]
    return np.asarray(out, object).reshape(n.shape)


def _grid_bits(mult):
    """Per channel, the ``g`` such that every ``n * mult`` (``n`` integer) is a multiple of
    ``2^-g`` (``mult = odd * 2^-g``; ``g <= 0`` when the products are integers)."""
    mult = np.asarray(mult, np.float64)
    grid = np.zeros(mult.shape, np.int64)
    for index, value in np.ndenumerate(mult):
        bits = 0
        while value != np.floor(value):  # mult * 2^bits an integer (mult is dyadic)
            value, bits = value * 2.0, bits + 1
        grid[index] = bits
    return grid


def _rounds_in_float32(mult, lo, hi):
    """Whether ``clip(floor(acc * mult + 0.5), lo, hi)`` is exact for every float32 integer
    ``acc`` with the float32 ``Mul``/``Add``/``Floor``/clip (proof in
    :func:`_requantize_float`): each ``mult > 0`` exact in float32 and ``max(|lo|, |lo + 1/2|,
    |hi|, |hi + 1/2|) * 2^max(g, 1) <= 2^24`` (``g`` of :func:`_grid_bits`)."""
    mult = np.asarray(mult, np.float64)
    if np.any(mult <= 0) or np.any(mult.astype(np.float32).astype(np.float64) != mult) \
            or float(np.max(mult)) * 2.0 ** 25 > 2.0 ** 126:
        return False
    grid = max(int(np.max(_grid_bits(mult))), 1)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    top = max(float(np.max(np.abs(v))) for v in (lo, lo + 0.5, hi, hi + 0.5))
    return grid <= 60 and top * 2.0 ** grid <= 2.0 ** 24


def _accumulator_clip(mult, lo, hi, bound):
    """The clip of the accumulator before the requantization ``q_c(a) = floor(a * mult_c +
    1/2)`` (exact rationals): ``(a_lo, a_hi)`` such that every channel saturates below
    ``a_lo`` (``q_c(a) <= lo``) and above ``a_hi`` (``q_c(a) >= hi_c``), within
    ``[-floor(bound), floor(bound)]``; and whether the output clips are still needed below
    and above (``q_c(a_lo) < lo`` or ``q_c(a_hi) > hi_c`` for some channel)."""
    from fractions import Fraction
    mult = np.asarray(mult, np.float64)
    his = np.broadcast_to(np.asarray(hi, np.int64), mult.shape).reshape(-1)
    ms = [Fraction(float(m)) for m in mult.reshape(-1)]
    if len(his) != len(ms):  # a per-channel bound on a per-tensor scale
        ms = ms * len(his)
    half = Fraction(1, 2)

    def q(a, m):
        return (a * m + half).__floor__()

    def ceil(f):
        return -((-f).__floor__())
    a_lo = min(ceil((lo + half) / m) - 1 for m in ms)
    a_hi = max(ceil((int(h) - half) / m) for m, h in zip(ms, his))
    top = int(np.floor(bound))
    a_lo, a_hi = max(a_lo, -top), min(a_hi, top)
    need_lo = any(q(a_lo, m) < lo for m in ms)
    need_hi = any(q(a_hi, m) > int(h) for m, h in zip(ms, his))
    return a_lo, a_hi, need_lo, need_hi


def _channels(x):
    """The channels of an NHWC or (N, C) ``_T`` (the axis a ``BatchNormalization`` scales
    through :func:`_channel_affine`), or None."""
    shape = x.shape
    if shape is None or len(shape) not in (1, 3) or shape[-1] is None:
        return None
    return int(shape[-1])


def _channel_affine(b, x, v, steps, dtype, floor=False):
    """``v * scale + bias`` per channel of the NHWC or (N, C) ``_T`` ``x`` (named ``v``), for
    each ``(scale, bias, relu)`` of ``steps`` in turn, a ``Relu`` after those with ``relu``,
    then a ``Floor`` if ``floor``. Each step is one ``BatchNormalization`` (mean 0, variance
    1, epsilon 0), rounded once or twice (the product, the sum), non-decreasing in ``v`` (for
    ``scale > 0``), exact where the product and the sum are. An NHWC ``x`` goes through one
    ``Transpose`` to NCHW and back (onnxruntime cancels them against those of the ``Conv``s,
    and runs the ``BatchNormalization``s and ``Relu``s inside its blocked layout)."""
    channels = _channels(x)
    if len(x.shape) == 3:
        v = b.node("Transpose", [v], "nchw", perm=[0, 3, 1, 2])
    for scale, bias, relu in steps:
        params = [np.broadcast_to(np.asarray(p, np.float64).reshape(-1), (channels,))
                  for p in (scale, bias, 0.0, 1.0)]
        names = [_fconst(b, p, dtype, "bn_param") for p in params]
        v = b.node("BatchNormalization", [v] + names, "rq_bn", epsilon=0.0)
        if relu:
            v = b.node("Relu", [v], "rq_relu")
    if floor:
        v = b.node("Floor", [v], "rq_floor")
    if len(x.shape) == 3:
        v = b.node("Transpose", [v], "nhwc", perm=[0, 2, 3, 1])
    return v


def _scale_half_floor(b, x, v, mult, dtype):
    """``floor(v * mult + 1/2)`` in the carrier ``dtype`` for the ``_T`` ``x`` named ``v``:
    one ``BatchNormalization`` and the ``Floor`` (:func:`_channel_affine`) for NHWC or (N, C)
    tensors, else ``Mul``, ``Add`` and ``Floor``."""
    if _channels(x) is None:
        v = b.node("Mul", [v, _fconst(b, mult, dtype)], "rq_mul")
        v = b.node("Add", [v, _fconst(b, 0.5, dtype)], "rq_half")
        return b.node("Floor", [v], "rq_floor")
    return _channel_affine(b, x, v, [(mult, 0.5, False)], dtype, floor=True)


#: ``1.5 * 2^23``: ``fl(w + _ROUNDING) - _ROUNDING`` is ``w`` rounded to the nearest integer
#: (ties to even) for ``|w| < 2^22`` (the float32 sums there are integers).
_ROUNDING = 1.5 * 2.0 ** 23


def _requantize_float32(b, x, mult, lo, hi, quantizer, frac):
    """The float32 requantization of :func:`_requantize_float` (``_rounds_in_float32``): the
    accumulator clip (``_accumulator_clip``), ``Mul``, ``Add 0.5``, ``Floor``, then the output
    clips that the accumulator clip leaves needed."""
    a_lo, a_hi, need_lo, need_hi = _accumulator_clip(mult, lo, hi, x.bound)
    v = x.name
    if a_lo > -x.bound or a_hi < x.bound or np.any(mult != 1):
        v = b.node("Clip", [v, _fconst(b, a_lo, "float32"), _fconst(b, a_hi, "float32")],
                   "rq_acc")
    grid = int(np.max(_grid_bits(mult)))
    if grid > 0 and lo == 0 and _channels(x) is not None:
        # min(z, hi) + 1/2 = hi + 1/2 - relu(hi - z), z = v * mult (z >= 0: a_lo >= 0)
        hi_c = np.broadcast_to(np.asarray(hi, np.float64).reshape(-1), (_channels(x),))
        first = (-np.asarray(mult, np.float64), hi_c, True)
        half = int(hi_c.max()).bit_length()
        if len(x.shape) == 3 and 1 <= half <= 24 - grid:  # rounding in the blocked layout
            centre, eps = 2.0 ** (half - 1), 2.0 ** -(grid + 1)
            steps = [first, (-1.0, hi_c - centre + eps, False), (1.0, _ROUNDING, False),
                     (1.0, centre - _ROUNDING, False)]
            v = _channel_affine(b, x, v, steps, "float32")
        else:
            v = _channel_affine(b, x, v, [first, (-1.0, hi_c + 0.5, False)], "float32", True)
        need_lo = need_hi = False
    elif np.any(_grid_bits(mult) > 0):
        v = _scale_half_floor(b, x, v, mult, "float32")
    elif np.any(mult != 1):
        v = b.node("Mul", [v, _fconst(b, mult, "float32")], "rq_mul")
    hi_c = np.asarray(hi)
    if need_lo and need_hi:
        v = _clip_values(b, _like(x, v), lo, hi, "oq")
    elif need_lo:
        v = b.node("Max", [v, _fconst(b, lo, "float32")], "oq_lo")
    elif need_hi:
        v = b.node("Min", [v, _fconst(b, hi_c, "float32")], "oq_hi")
    top = max(abs(lo), int(np.max(hi_c)))
    return _T(v, quantizer.value_bits, frac, None, not quantizer.signed, x.shape, "float32",
              float(top))


def _requantize_float64(b, x, mult, lo, hi, quantizer, frac):
    """The requantization of :func:`_requantize_float` of a float32 carrier whose product
    needs float64: the accumulator clip in float32 (``_accumulator_clip``: it fuses into a
    preceding ``Conv``), the ``Cast`` to float64, ``floor(x * m + 1/2)`` (``_scale_half_floor``)
    in float64, the ``Cast`` back to float32 and the output clips still needed
    (exact on integers below 2^24; in float64 before the ``Cast`` when they are larger)."""
    a_lo, a_hi, need_lo, need_hi = _accumulator_clip(mult, lo, hi, x.bound)
    v = b.node("Clip", [x.name, _fconst(b, a_lo, "float32"), _fconst(b, a_hi, "float32")],
               "rq_acc")
    v = b.node("Cast", [v], "to_float64", to=TensorProto.DOUBLE)
    v = _scale_half_floor(b, x, v, mult, "float64")
    hi_c = np.asarray(hi)
    reach = float(max(abs(a_lo), abs(a_hi))) * float(np.max(mult)) + 1.0
    top = max(abs(lo), int(np.max(hi_c)))
    if reach > 2.0 ** 24 and (need_lo or need_hi):  # clip the large values in float64
        v = _clip_values(b, _like(x, v, dtype="float64"), lo, np.max(hi_c), "oq")
        need_lo, need_hi = False, hi_c.size > 1
    v = b.node("Cast", [v], "rq_f32", to=TensorProto.FLOAT)
    if need_lo and need_hi:
        v = _clip_values(b, _like(x, v), lo, hi, "oq")
    elif need_lo:
        v = b.node("Max", [v, _fconst(b, lo, "float32")], "oq_lo")
    elif need_hi:
        v = b.node("Min", [v, _fconst(b, hi_c, "float32")], "oq_hi")
    return _T(v, quantizer.value_bits, frac, None, not quantizer.signed, x.shape, "float32",
              float(top))


def _requantize_float(b, x, quantizer, scale_bits=None, relu_max=None):
    """recipes.requantize (qfloat_to_fixed_point, then the rounded shift and the clip) of a
    float carrier ``x``, optionally after a ReLU ``clip(v, 0, relu_max)`` of the FixedPoint
    ``v``: at most ``Clip``, ``Mul``, ``Add``, ``Floor`` and one output clip in float32 (below),
    else in the carrier that holds ``n``, then a ``Cast`` back to float32. Returns None
    (nothing emitted) when no carrier holds it exactly.

    Exactness. Let ``n = x * s * 2^u`` (``s`` the integer scales, ``u >= 0`` the left shift of a
    channel, ``d = 2^r`` its right shift, one of ``u``, ``r`` zero): the integer path computes
    ``floor((n + d / 2) / d)``. Here one ``Mul`` by the constant ``s * 2^u / d`` (exact: an
    integer below 2^53 times a power of two) gives ``n / d`` exactly as long as ``|n|`` fits
    the significand; ``Add 0.5`` gives ``(n + d / 2) / d``, exact when ``2 |n| + d`` fits it
    (the numerator ``2n + d`` in units of ``1 / (2d)``), and ``Floor`` is exact: the result
    equals the integer path bit for bit, ties ``n + d / 2 = k d`` included (round half up).
    The carrier is chosen so that ``2 * (bound(n) + max(d)) <= 2^significand``. The ReLU
    commutes with the shift: ``q(clip(n, 0, M)) = clip(q(n), q(0), q(M))`` for the
    non-decreasing ``q`` with ``q(0) = 0``, so the two clips merge into one, with ``q(M)``
    computed here in Python integers.

    **Float32 rounding (beyond the float32 product).** When ``x`` is a float32 carrier, each
    ``m = s * 2^u / d`` is exact in float32 and ``W = 2^(24 - G)`` bounds ``|lo|, |hi|,
    |lo + 1/2|, |hi + 1/2|`` (``G >= 1``: every ``z = x * m`` is a multiple of ``2^-G``,
    :func:`_grid_bits`), the whole requantization runs in float32 even though ``n = x * s *
    2^u`` does not fit its significand (:func:`_requantize_float32`, :func:`_rounds_in_float32`):
    ``y = x * m + 1/2`` (one ``BatchNormalization``, :func:`_channel_affine`, rounded once or
    twice), ``floor(y)``, clipped. Proof, per channel, for the exact ``z = x * m``: the
    multiples of ``2^-G`` of magnitude ``<= W`` are float32 numbers, and float32 rounding is
    non-decreasing and fixes them. (i) ``lo <= z <= hi``: ``z`` and ``z + 1/2`` are such
    multiples, so ``y = z + 1/2`` exactly and ``floor(y) = floor(z + 1/2)``. (ii) ``z > hi``:
    ``y >= hi + 1/2``, the floor is ``>= hi`` and the clip gives ``hi``, as the integer path
    (``floor(z + 1/2) >= hi``). (iii) ``z < lo``: likewise ``<= lo``, clipped to ``lo``.
    Before that, the accumulator is clipped to integers ``[a_lo, a_hi]``
    (:func:`_accumulator_clip`, computed here on exact rationals) beyond which every channel
    saturates: the result is unchanged, the output clips that it makes redundant
    (``q_c(a_lo) >= lo`` and ``q_c(a_hi) <= hi_c`` for every channel, ``q_c`` non-decreasing)
    are left out, and it keeps onnxruntime from folding the scale into the weights of a
    preceding ``Conv`` (``ConvMulFusion``/``ConvBNFusion`` would round the partial sums): it
    fuses into that ``Conv`` as its activation instead. When only the upper clip remains (the
    ReLU outputs: ``a_lo >= 0``, so ``z >= 0``), it is merged before the ``Floor``: ``t = hi -
    x * m`` (a ``BatchNormalization`` of scale ``-m`` and bias ``hi``), ``Relu``, ``y = hi +
    1/2 - relu(t)`` (a second one), ``floor(y) = min(floor(z + 1/2), hi)``: for ``0 <= z <= hi``,
    ``t = hi - z`` and ``y = z + 1/2`` exactly (multiples of ``2^-G`` within ``W``); for ``z >
    hi``, ``t <= 0`` and ``y = hi + 1/2``. For NHWC tensors with ``hi < 2^K`` and ``K + G <=
    24``, the ``Floor`` goes too: ``w = hi - c + eps - relu(t)`` (``c = 2^(K-1)``, ``eps =
    2^-(G+1)``, a ``BatchNormalization``) is ``min(z, hi) - c + eps`` exactly (a multiple of
    ``2^-(G+1)`` of magnitude below ``2^(K-1)``) and never a half-integer (an odd multiple of
    ``2^-(G+1)``); ``fl(w + R)``, ``R = 1.5 * 2^23`` (another), is ``R + round(w)`` (float32
    numbers in ``[2^23, 2^24)`` are the integers, the sum is rounded to the nearest and has no
    tie), ``round(w) = floor(w + 1/2) = floor(min(z, hi) + 1/2) - c`` (``eps < 2^-G``), and a
    last one subtracts ``R - c`` exactly. onnxruntime runs these ``BatchNormalization``s and
    the ``Relu`` inside its blocked (NCHWc) convolution layout, the accumulator clip fused into
    the ``Conv``: the requantization of a ReLU output adds no layout reorder and no
    element-wise pass outside that layout. Unsigned 8-bit outputs take up to 16 bits of
    right shift this way, signed 7-bit ones up to 17 (tests: every tie and its nearest values).
    Beyond, a float32 ``x`` is clipped the same way, then ``y`` and its ``Floor`` are computed
    in float64 (exact: ``n`` fits it) and cast back to float32 before the remaining clips
    (:func:`_requantize_float64`).

    When the product needs float64 but the output range is small, the clip is done first,
    in float64, on ``z = n / d``: ``clip(floor(z + 0.5), lo, hi) = floor(clip(z, lo - 0.5,
    hi - 0.5) + 0.5)`` (``floor`` is non-decreasing and fixes the integers ``lo``, ``hi``),
    and the clipped ``z`` (a multiple of ``1 / d`` of magnitude <= ``top + 1``) is exact in
    float32 when ``(top + 1) * 2d <= 2^24``: the ``Cast``, ``Add 0.5``, ``Floor`` and the
    per-channel ReLU bound (``Min``, exact on integers) then run in float32.
    """
    s_int = np.ones((), np.int64)
    if x.scales is not None:
        qs = QFloat.quantize_scales(tf.constant(x.scales), scale_bits)
        s_int = _np(qs.values).astype(np.int64)
        x_frac = x.frac + _np(qs.frac_bits).astype(np.float64)
    else:
        x_frac = x.frac
    frac = _np(quantizer.frac_bits).astype(np.float64)
    shift = np.broadcast_to(frac - x_frac, np.broadcast_shapes(frac.shape, x_frac.shape))
    if not np.all(shift == np.round(shift)) or np.abs(shift).max() > 60:
        return None
    shift = shift.astype(np.int64)
    up = np.left_shift(np.int64(1), np.maximum(shift, 0))
    down = np.left_shift(np.int64(1), np.maximum(-shift, 0))
    n_bound = x.bound * float(np.max(s_int)) * float(np.max(up))
    dtype = _carrier(2.0 * (n_bound + float(np.max(down))))
    if dtype is None:
        return None
    hi = 2 ** quantizer.value_bits - 1
    lo = 0 if not quantizer.signed else -(2 ** quantizer.value_bits)
    if relu_max is not None:
        lo = max(lo, 0)
        if relu_max is not False:
            top = _shift_rounded(np.asarray(relu_max).astype(np.int64), 1, 1)
            q_max = _shift_rounded(top, up, down)
            hi = np.minimum(np.asarray(q_max, object), hi).astype(np.int64)
            if np.all(hi == hi.reshape(-1)[0]):
                hi = np.int64(hi.reshape(-1)[0])
    mult = s_int.astype(np.float64) * np.power(2.0, shift.astype(np.float64))
    top = max(abs(lo), int(np.max(hi)))
    if x.dtype == "float32" and _rounds_in_float32(mult, lo, hi):  # see the docstring
        return _requantize_float32(b, x, mult, lo, hi, quantizer, frac)
    if x.dtype == "float32" and dtype == "float64" and np.any(down != 1):
        return _requantize_float64(b, x, mult, lo, hi, quantizer, frac)
    x = as_float(b, x, dtype)
    v = x.name
    if dtype == "float64" and np.any(down != 1) and (top + 1) * 2.0 * float(np.max(down)) \
            <= 2.0 ** 24:  # the float64 clip, then the rounding in float32
        v = b.node("Mul", [v, _fconst(b, mult, dtype)], "rq_mul") if np.any(mult != 1) else v
        v = b.node("Clip", [v, _fconst(b, lo - 0.5, dtype),
                            _fconst(b, float(np.max(hi)) - 0.5, dtype)], "oq")
        v = b.node("Cast", [v], "rq_f32", to=TensorProto.FLOAT)
        v = b.node("Add", [v, _fconst(b, 0.5, "float32")], "rq_half")
        v = b.node("Floor", [v], "rq_floor")
        if np.asarray(hi).size > 1:
            v = b.node("Min", [v, _fconst(b, hi, "float32")], "oq_hi")
        return _T(v, quantizer.value_bits, frac, None, not quantizer.signed, x.shape,
                  "float32", float(top))
    if np.any(mult != 1):
        v = b.node("Mul", [v, _fconst(b, mult, dtype)], "rq_mul")
    if np.any(down != 1):
        v = b.node("Add", [v, _fconst(b, 0.5, dtype)], "rq_half")
        v = b.node("Floor", [v], "rq_floor")
    per_channel = np.asarray(hi).size > 1 and dtype == "float64" and top <= 2 ** 24
    v = _clip_values(b, _like(x, v), lo, np.max(hi) if per_channel else hi, "oq")
    out = _T(v, quantizer.value_bits, frac, None, not quantizer.signed, x.shape, dtype,
             float(top))
    out = as_float(b, out, "float32") if out.bound <= 2.0 ** 24 else out
    if per_channel:  # the per-channel ReLU bound after the Cast, on float32 integers
        out.name = b.node("Min", [out.name, _fconst(b, hi, "float32")], "oq_hi")
    return out


def _limbs(b, x):
    """Splits an int64 tensor into 8-bit limbs: [(uint8 name, zero point name or '', weight)]."""
    n = max(1, int(np.ceil(x.vb / 8)) if x.unsigned else int(np.ceil((x.vb + 1) / 8)))
    limbs, rest = [], x.name
    for j in range(n):
        top = j == n - 1
        if top and not x.unsigned:
            shifted = b.node("Add", [rest, b.i64(128)], "limb_off")
            u = b.node("Cast", [shifted], "limb", to=TensorProto.UINT8)
            limbs.append((u, b.const(np.array(128, np.uint8), "zp"), 256 ** j))
            break
        if top:
            u = b.node("Cast", [rest], "limb", to=TensorProto.UINT8)
            limbs.append((u, "", 256 ** j))
            break
        low = b.node("Mod", [rest, b.i64(256)], "limb_low", fmod=0)
        limbs.append((b.node("Cast", [low], "limb", to=TensorProto.UINT8), "", 256 ** j))
        rest = b.node("Div", [b.node("Sub", [rest, low], "limb_sub"), b.i64(256)], "limb_rest")
    return limbs


def exact_reduction(b, x, make_op, terms):
    """recipes.reduction.exact_reduction: ``sum_j make_op(limb_j, zp_j) * 256^j`` in int64
    (each make_op result is int32)."""
    if terms * 2 ** 15 >= 2 ** 31:
        raise ValueError(f"export expected reductions of less than 2^16 terms. "
                         f"Received: {terms} terms")
    total = None
    for u, zp, weight in _limbs(b, x):
        part = b.node("Cast", [make_op(u, zp)], "part", to=TensorProto.INT64)
        if weight != 1:
            part = b.node("Mul", [part, b.i64(weight)], "part_w")
        total = part if total is None else b.node("Add", [total, part], "acc")
    return total


def _int8_weights(layer, w):
    values = _np(w.values)
    if values.min() < -128 or values.max() > 127:
        raise ValueError(f"export expected weights of at most 8 bits. Received: layer "
                         f"{layer.name} with weights in [{values.min()}, {values.max()}]")
    return values.astype(np.int8)


def qfloat_to_fixed_point(b, x, scale_bits):
    """recipes.requantize.qfloat_to_fixed_point: QFloat -> FixedPoint, the values times the
    scales quantized on scale_bits (exact)."""
    if x.scales is None:
        return x
    qs = QFloat.quantize_scales(tf.constant(x.scales), scale_bits)
    s_int = _np(qs.values).astype(np.int64)
    vb = min(x.vb + qs.value_bits + 1, MAX_VALUE_BITS)
    frac = x.frac + _np(qs.frac_bits).astype(np.float64)
    if x.dtype != "int64":  # exact in the carrier that holds the product's bound
        bound = x.bound * float(np.max(np.abs(s_int)))
        dtype = _carrier(bound)
        if dtype is not None:
            x = as_float(b, x, dtype)
            name = b.node("Mul", [x.name, _fconst(b, s_int, dtype)], "qf2fp")
            return _T(name, vb, frac, None, x.unsigned, x.shape, dtype, bound)
        x = as_int64(b, x)
    name = b.node("Mul", [x.name, b.i64(s_int)], "qf2fp")
    return _T(name, vb, frac, None, x.unsigned, x.shape)


def requantize(b, x, quantizer):
    """recipes.requantize.requantize of a FixedPoint (OutputQuantizer._requantize): the rounded
    shift to the quantizer's frac bits, then the clip to its range."""
    frac = _np(quantizer.frac_bits).astype(np.float64)
    v = b.shift(x.name, frac - x.frac, "rq")
    v = b.clip_bits(v, quantizer.value_bits, unsigned=not quantizer.signed, base="oq")
    return _T(v, quantizer.value_bits, frac, None, not quantizer.signed, x.shape)


def _output_quantizer(b, x, quantizer):
    if x.dtype != "int64":
        out = _requantize_float(b, x, quantizer, quantizer.scale_bits)
        if out is not None:
            return out
        x = as_int64(b, x)
    return requantize(b, qfloat_to_fixed_point(b, x, quantizer.scale_bits), quantizer)


def clip_to_buffer(b, x, buffer_bits):
    """recipes.buffer.clip_to_buffer: ``clip(x, -2^(B-1), 2^(B-1) - 1)`` (no node for a float
    carrier whose static bound is within the buffer: the clip is the identity there)."""
    hi = 2 ** (buffer_bits - 1) - 1
    vb = min(x.vb, buffer_bits - 1)
    if x.dtype != "int64":
        if x.bound <= hi:
            return _like(x, x.name, vb=vb)
        name = _clip_values(b, x, -hi - 1, hi, "buf")
        return _like(x, name, vb=vb, bound=min(x.bound, hi + 1))
    name = b.clip_bits(x.name, buffer_bits - 1, base="buf")
    return _T(name, vb, x.frac, x.scales, x.unsigned, x.shape)


def _finish(b, layer, x):
    """QuantConfigMixin._quantize_output."""
    if layer.out_quantizer is not None:
        return _output_quantizer(b, x, layer.out_quantizer)
    return clip_to_buffer(b, x, layer.buffer_bitwidth)


# ---- layers ---------------------------------------------------------------------------------
def _input_quantizer(b, layer, x_name, shape):
    frac = float(_np(layer.frac_bits))
    v = b.node("Cast", [x_name], "xf32", to=TensorProto.FLOAT)
    v = b.node("Cast", [v], "x64", to=TensorProto.DOUBLE)
    v = b.node("Mul", [v, b.const(np.array(2.0 ** frac, np.float64))], "xs")
    v = b.node("Add", [v, b.const(np.array(0.5, np.float64))], "xh")
    v = b.node("Floor", [v], "xr")
    lo = 0.0 if not layer.signed else -(2.0 ** layer.value_bits)
    v = b.node("Clip", [v, b.const(np.array(lo)), b.const(np.array(2.0 ** layer.value_bits - 1))],
               "xc")
    if layer.value_bits <= 24:  # a float32 carrier (exact)
        v = b.node("Cast", [v], "xq", to=TensorProto.FLOAT)
        return _T(v, layer.value_bits, frac, None, not layer.signed, shape, "float32")
    v = b.node("Cast", [v], "xq", to=TensorProto.INT64)
    return _T(v, layer.value_bits, frac, None, not layer.signed, shape)


def align(b, x):
    """recipes.alignment.align: a per-axis FixedPoint expanded to its largest frac bits."""
    if x.frac.size == 1:
        return x
    target = float(x.frac.max())
    vb = min(max(x.vb + int(target - x.frac.min()), x.vb), MAX_VALUE_BITS)
    if x.dtype != "int64":  # left shifts: a Mul by powers of two, exact in the carrier
        bound = x.bound * 2.0 ** float(target - x.frac.min())
        dtype = _carrier(bound)
        if dtype is not None:
            x = as_float(b, x, dtype)
            name = b.node("Mul", [x.name, _fconst(b, np.power(2.0, target - x.frac), dtype)],
                          "expand")
            return _T(name, vb, target, None, x.unsigned, x.shape, dtype, bound)
        x = as_int64(b, x)
    name = b.shift(x.name, target - x.frac, "expand")
    return _T(name, vb, target, None, x.unsigned, x.shape)


def _check_qfloat_input(layer, x):
    if x.scales is not None and x.scales.size != 1:
        raise ValueError(f"export expected per-tensor scales on the inputs of {layer.name}. "
                         f"Received: scales of shape {x.scales.shape}")


def add_bias(b, layer, acc, channels):
    """recipes.bias.add_bias: ``clip(clip(acc) + b)``, the bias quantized on the accumulator
    grid by the layer's AlignedWeightQuantizer."""
    acc = clip_to_buffer(b, acc, layer.buffer_bitwidth)
    if layer.use_bias:
        frac, scales, shape = acc.frac, acc.scales, acc.shape
        bias_values, bias_bits = _quantized_bias(layer, acc, channels)
        name = b.node("Add", [acc.name, b.i64(bias_values)], "bias")
        acc = _T(name, max(acc.vb, bias_bits) + 1, frac, scales, False, shape)
        acc = clip_to_buffer(b, acc, layer.buffer_bitwidth)
    return acc


def _quantized_bias(layer, acc, channels):
    """The bias of ``layer`` quantized on the grid of the (buffer-clipped) accumulator ``acc``
    by the layer's AlignedWeightQuantizer: its int64 values and value bits."""
    frac, scales = acc.frac, acc.scales
    grid_scales = tf.ones_like(layer.bias) if scales is None else tf.constant(scales)
    frac_t = tf.constant(np.broadcast_to(frac, (channels,)).astype(np.float32)
                         if np.size(frac) > 1 else np.float32(np.reshape(frac, ())))
    grid = QFloat(FixedPoint(tf.zeros((1, channels)), acc.vb, frac_t), grid_scales)
    qbias = layer.bias_quantizer(layer.bias, grid)
    return _np(qbias.values).astype(np.int64), qbias.value_bits


def _split_weights(x, w_float, bound):
    """The weights ``w = hi * 2^k + lo`` (``hi = round(w / 2^k)``, ``|lo| <= 2^(k-1)``, both
    integers) for the smallest ``k`` with which both float32 reductions ``sum |hi| * bound(x)``
    and ``sum |lo| * bound(x)`` stay <= 2^24 (exact; their combination ``hi * 2^k + lo`` is
    exact in float64 while the total ``bound`` <= 2^53): (k, hi, lo) or None."""
    w = np.asarray(w_float, np.float64)
    rows = w.reshape(w.shape[0], -1)
    if bound > 2.0 ** 53:
        return None
    for k in range(1, 24):
        hi = np.round(rows / 2.0 ** k)
        lo = rows - hi * 2.0 ** k
        if max(np.abs(hi).sum(axis=1).max(), np.abs(lo).sum(axis=1).max()) * x.bound \
                <= 2.0 ** 24:
            return k, hi.reshape(w.shape), lo.reshape(w.shape)
    return None


def _align_shifts(x):
    """align's metadata without its nodes: (the aligned ``_T``'s vb and frac on ``x``'s name,
    the per-channel left shifts ``target - frac`` or None when ``x`` is per-tensor). A float
    reduction folds the shifts into its weights (``w * 2^shift`` per input channel, exact)."""
    if x.frac.size == 1:
        return x, None
    target = float(x.frac.max())
    vb = min(max(x.vb + int(target - x.frac.min()), x.vb), MAX_VALUE_BITS)
    return _T(x.name, vb, target, None, x.unsigned, x.shape, x.dtype, x.bound), \
        (target - x.frac).reshape(-1)


def _float_reduction(layer, x, onnx_w, acc_vb, frac, scales, channels, bits=24):
    """Whether the reduction of the carrier-able input ``x`` with the int8 kernel ``onnx_w``
    (output channels first), plus the quantized bias, is exact in float32: every partial sum
    (in any order) is an integer of magnitude <= ``sum |w| * bound(x) + |bias|`` per output
    channel, which must be <= 2^24 and within the buffer (so that its clips are identities).
    Returns (bias values or None, bound, value bits after add_bias) or None."""
    if x.dtype == "int64" and x.bound > 2.0 ** 24 or x.bound > 2.0 ** bits:
        return None
    w_abs = np.abs(np.asarray(onnx_w, np.float64)).reshape(onnx_w.shape[0], -1).sum(axis=1)
    bound = float(w_abs.max()) * x.bound
    hi = 2 ** (layer.buffer_bitwidth - 1) - 1
    vb = min(acc_vb, layer.buffer_bitwidth - 1)
    bias = None
    if layer.use_bias:
        grid = _T("", vb, frac, scales, False, None)
        bias, bias_bits = _quantized_bias(layer, grid, channels)
        bound = float((w_abs * x.bound + np.abs(bias.astype(np.float64))).max())
        vb = min(max(vb, bias_bits) + 1, layer.buffer_bitwidth - 1)
    if bound > 2.0 ** bits or bound > hi:
        return None
    return bias, bound, vb


def _finalize(b, layer, acc):
    """QuantizedReduction.finalize: clip_to_buffer, then the output quantizer (if any)."""
    acc = clip_to_buffer(b, acc, layer.buffer_bitwidth)
    if layer.out_quantizer is not None:
        return _output_quantizer(b, acc, layer.out_quantizer)
    return acc


def _reduction_output(b, layer, acc_name, acc_vb, frac, scales, channels, shape):
    """add_bias then _finalize on the accumulator of a convolution or a Dense."""
    acc = _T(acc_name, acc_vb, frac, scales, False, shape)
    return _finalize(b, layer, add_bias(b, layer, acc, channels))


def _fold_scales(x_scales, w_scales):
    if x_scales is None:
        return None if w_scales is None else _np(w_scales).astype(np.float32)
    if w_scales is None:
        return x_scales
    return _np(tf.constant(x_scales) * w_scales).astype(np.float32)


def _conv(b, layer, x, depthwise=False):
    if x.shape is None or len(x.shape) != 3 or None in x.shape:
        raise ValueError(f"export expected static 4D inputs for {layer.name}. "
                         f"Received: shape {x.shape}")
    h, w_, c = x.shape
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    if depthwise:
        kernel = layer.depthwise_kernel
        _, _, channels, mult = kernel.shape
        wq = getattr(layer, layer.weight_keys[0])(tf.reshape(kernel, (kh, kw, 1, channels * mult)))
        wfp = wq.fp if isinstance(wq, QFloat) else wq
        w_int = _int8_weights(layer, wfp).reshape(kh, kw, channels, mult)
        onnx_w = w_int.reshape(kh, kw, channels * mult).transpose(2, 0, 1)[:, None]
        out_channels = channels * mult
        xin = x
        x_frac = x.frac if x.frac.size == 1 else np.repeat(x.frac.reshape(-1), mult)
        frac = x_frac + _np(wfp.frac_bits).astype(np.float64)
        x_scales = x.scales
        if x_scales is not None and x_scales.size > 1 and mult > 1:
            x_scales = np.repeat(x_scales.reshape(-1), mult)
        terms = kh * kw
        group = channels
    else:
        _check_qfloat_input(layer, x)
        xin, in_shift = _align_shifts(x)  # folded into float weights, or aligned below
        wq = layer.weight_quantizer(layer.kernel)
        wfp = wq.fp if isinstance(wq, QFloat) else wq
        w_int = _int8_weights(layer, wfp)
        onnx_w = w_int.transpose(3, 2, 0, 1)
        out_channels = w_int.shape[-1]
        frac = xin.frac + _np(wfp.frac_bits).astype(np.float64)
        x_scales = x.scales
        group = layer.groups  # ConvInteger's group: kernel (K, C / group, kh, kw)
        terms = kh * kw * c // group
    if depthwise or in_shift is None:
        w_float = onnx_w
    else:  # output channel k reads the inputs of its group: g = k // (K / group)
        per_group = np.power(2.0, in_shift).reshape(group, -1)
        rows = per_group[np.arange(out_channels) // (out_channels // group)]
        w_float = onnx_w * rows[:, :, None, None]
    scales = _fold_scales(x_scales, getattr(wq, "scales", None))
    ph = _pad_amounts(h, kh, sh, dh, layer.padding)
    pw = _pad_amounts(w_, kw, sw, dw, layer.padding)
    out_h = (h + sum(ph) - ((kh - 1) * dh + 1)) // sh + 1
    out_w = (w_ + sum(pw) - ((kw - 1) * dw + 1)) // sw + 1
    acc_vb = min(bits_for(terms * 2.0 ** (xin.vb + wfp.value_bits)), MAX_VALUE_BITS)
    fast = None
    if w_float is not None:
        fast = _float_reduction(layer, x, w_float, acc_vb, frac, scales, out_channels)
    if fast is not None:  # a float32 Conv (bias included), exact: see _float_reduction
        bias, bound, vb = fast
        xv = as_float(b, x, "float32").name
        xv = b.node("Transpose", [xv], "nchw", perm=[0, 3, 1, 2])
        inputs = [xv, b.const(np.asarray(w_float, np.float32), "w")]
        if bias is not None:
            inputs.append(b.const(bias.astype(np.float32), "b"))
        acc = b.node("Conv", inputs, "conv", strides=[sh, sw], dilations=[dh, dw],
                     group=group, pads=[ph[0], pw[0], ph[1], pw[1]])
        acc = b.node("Transpose", [acc], "nhwc", perm=[0, 2, 3, 1])
        t = _T(acc, vb, frac, scales, False, (out_h, out_w, out_channels), "float32", bound)
        return _finalize(b, layer, t)
    wide = None if w_float is None else \
        _float_reduction(layer, x, w_float, acc_vb, frac, scales, out_channels, bits=53)
    split = None if wide is None or x.bound > 2.0 ** 24 else _split_weights(x, w_float, wide[1])
    if split is not None:  # two float32 Convs (high and low weights), combined in float64
        (k, w_hi, w_lo), (bias, bound, vb) = split, wide
        xv = as_float(b, x, "float32").name
        xv = b.node("Transpose", [xv], "nchw", perm=[0, 3, 1, 2])
        parts = []
        for w_part in (w_hi, w_lo):
            part = b.node("Conv", [xv, b.const(w_part.astype(np.float32), "w")], "conv",
                          strides=[sh, sw], dilations=[dh, dw], group=group,
                          pads=[ph[0], pw[0], ph[1], pw[1]])
            parts.append(b.node("Cast", [part], "conv64", to=TensorProto.DOUBLE))
        high = b.node("Mul", [parts[0], b.const(np.array(2.0 ** k))], "conv_hi")
        acc = b.node("Add", [high, parts[1]], "conv_sum")
        acc = b.node("Transpose", [acc], "nhwc", perm=[0, 2, 3, 1])
        if bias is not None:
            acc = b.node("Add", [acc, b.const(bias.astype(np.float64), "b")], "bias")
        t = _T(acc, vb, frac, scales, False, (out_h, out_w, out_channels), "float64", bound)
        return _finalize(b, layer, t)
    if not depthwise:
        xin = align(b, x)
    xin = as_int64(b, xin)
    xv = xin.name
    if any(ph) or any(pw):
        xv = b.node("Pad", [xv, b.i64([0, ph[0], pw[0], 0, 0, ph[1], pw[1], 0])], "pad")
    xv = b.node("Transpose", [xv], "nchw", perm=[0, 3, 1, 2])
    padded = _T(xv, xin.vb, 0, None, xin.unsigned)
    wname = b.const(onnx_w.astype(np.int8), "w")

    def make_op(u, zp):
        inputs = [u, wname] + ([zp] if zp else [])
        return b.node("ConvInteger", inputs, "conv", strides=[sh, sw], dilations=[dh, dw],
                      group=group)
    acc = exact_reduction(b, padded, make_op, terms)
    acc = b.node("Transpose", [acc], "nhwc", perm=[0, 2, 3, 1])
    return _reduction_output(b, layer, acc, acc_vb, frac, scales, out_channels,
                              (out_h, out_w, out_channels))


def _dense(b, layer, x):
    _check_qfloat_input(layer, x)
    xin, in_shift = _align_shifts(x)
    wq = layer.weight_quantizer(layer.kernel)
    wfp = wq.fp if isinstance(wq, QFloat) else wq
    w_int = _int8_weights(layer, wfp)
    w_float = w_int if in_shift is None else w_int * np.power(2.0, in_shift)[:, None]
    terms = w_int.shape[0]
    frac = xin.frac + _np(wfp.frac_bits).astype(np.float64)
    scales = _fold_scales(x.scales, getattr(wq, "scales", None))
    acc_vb = min(bits_for(terms * 2.0 ** (xin.vb + wfp.value_bits)), MAX_VALUE_BITS)
    shape = tuple(x.shape[:-1]) + (w_int.shape[1],)
    for dtype in ("float32", "float64"):  # a float MatMul (and bias), exact: _float_reduction
        bits = _CARRIERS[dtype][2]
        fast = _float_reduction(layer, x, w_float.T, acc_vb, frac, scales, w_int.shape[1], bits)
        if fast is None:
            continue
        bias, bound, vb = fast
        ftype = _CARRIERS[dtype][1]
        acc = b.node("MatMul", [as_float(b, x, dtype).name,
                                b.const(np.asarray(w_float, ftype), "w")], "matmul")
        if bias is not None:
            acc = b.node("Add", [acc, b.const(bias.astype(ftype), "b")], "bias")
        return _finalize(b, layer, _T(acc, vb, frac, scales, False, shape, dtype, bound))
    xin = as_int64(b, align(b, x))
    wname = b.const(w_int, "w")

    def make_op(u, zp):
        return b.node("MatMulInteger", [u, wname] + ([zp] if zp else []), "matmul")
    acc = exact_reduction(b, xin, make_op, terms)
    return _reduction_output(b, layer, acc, acc_vb, frac, scales, w_int.shape[1], shape)


def _relu(b, layer, x):
    """QuantizedReLU: ``min(max(x, 0), floor(max_value * 2^f))``.

    The bound is computed in float and may exceed int64 (a large max_value on many frac bits):
    it is capped at ``2^vb`` (values never reach it: the ``Min`` is then a no-op, as in Keras);
    a NaN or negative bound raises.
    """
    if x.dtype != "int64":
        out = _relu_float(b, layer, x)
        if out is not None:
            return out
        x = as_int64(b, x)
    if x.scales is not None:
        x = qfloat_to_fixed_point(b, x, layer.scale_bits)
    v = b.node("Max", [x.name, b.i64(0)], "relu")
    if layer.max_value is not None:
        max_int = _relu_max(layer, x)
        v = b.node("Min", [v, b.i64(max_int)], "relu_max")
    return _finish(b, layer, _T(v, x.vb, x.frac, None, True, x.shape))


def _relu_max(layer, x):
    """``floor(max_value * 2^f)`` of the FixedPoint ``x`` as int64 (capped at ``2^vb``)."""
    dtype = np.float32 if x.vb <= 23 else np.float64
    with np.errstate(over="ignore"):
        max_int = np.floor(dtype(float(layer.max_value))
                           * np.power(dtype(2.0), x.frac.astype(dtype)))
    if np.any(np.isnan(max_int)) or np.any(max_int < 0):
        raise ValueError(f"export expected a ReLU max_value >= 0 for {layer.name}. "
                         f"Received: max_value={layer.max_value}")
    # |x| < 2^vb <= 2^52: a bound above cannot clip, and its int64 would overflow
    return np.minimum(max_int.astype(np.float64), 2.0 ** x.vb).astype(np.int64)


def _relu_float(b, layer, x):
    """QuantizedReLU on a float carrier: with an output quantizer, the ReLU clip merged into
    the requantization (:func:`_requantize_float`); else the QFloat product and one clip.
    None when no carrier holds it exactly."""
    if layer.out_quantizer is not None:
        frac = x.frac
        if x.scales is not None:
            qs = QFloat.quantize_scales(tf.constant(x.scales), layer.scale_bits)
            frac = x.frac + _np(qs.frac_bits).astype(np.float64)
            vb = min(x.vb + qs.value_bits + 1, MAX_VALUE_BITS)
        else:
            vb = x.vb
        relu_max = False
        if layer.max_value is not None:
            relu_max = _relu_max(layer, _T("", vb, frac))
        return _requantize_float(b, x, layer.out_quantizer, layer.scale_bits, relu_max)
    x = qfloat_to_fixed_point(b, x, layer.scale_bits)
    if x.dtype == "int64":
        return None
    hi, bound = x.bound, x.bound
    if layer.max_value is not None:
        hi = _relu_max(layer, x)
        bound = min(bound, float(np.max(hi)))
    v = _clip_values(b, x, 0, hi, "relu")
    return _finish(b, layer, _T(v, x.vb, x.frac, None, True, x.shape, x.dtype, bound))


def _gap(b, layer, x):
    if x.shape is None or len(x.shape) != 3 or layer.data_format != "channels_last":
        raise ValueError(f"export expected channels_last 4D inputs for {layer.name}.")
    h, w_, c = x.shape
    bound = x.bound * h * w_
    if x.dtype != "int64":  # the sum in the carrier that holds its bound (else int64)
        dtype = _carrier(bound)
        x = as_int64(b, x) if dtype is None else as_float(b, x, dtype)
    total = b.node("ReduceSum", [x.name, b.i64([1, 2])], "gap", keepdims=int(layer.keepdims))
    vb = min(bits_for(h * w_ * 2.0 ** x.vb), MAX_VALUE_BITS)
    scales = tf.constant(1.0 / (h * w_), tf.float32)
    if x.scales is not None:
        scales = tf.constant(x.scales) * scales
    shape = (1, 1, c) if layer.keepdims else (c,)
    t = _T(total, vb, x.frac, _np(scales), x.unsigned, shape, x.dtype,
           None if x.dtype == "int64" else bound)
    t = clip_to_buffer(b, t, layer.buffer_bitwidth)
    return _finish(b, layer, t)


def _add(b, layer, xs):
    fps = [qfloat_to_fixed_point(b, x, layer.scale_bits) for x in xs]
    frac = np.maximum(fps[0].frac, fps[1].frac)
    if all(fp.dtype != "int64" for fp in fps):
        out = _add_float(b, layer, fps, frac)
        if out is not None:
            return out
    fps = [as_int64(b, fp) for fp in fps]
    names, vbs = [], []
    for fp in fps:
        shift = frac - fp.frac
        names.append(b.shift(fp.name, shift, "align"))
        vbs.append(fp.vb + int(max(0, shift.max())))
    total = b.node("Add", names, "add")
    if layer.average:
        frac = frac + 1.0
    t = _T(total, max(vbs) + 1, frac, None, all(x.unsigned for x in fps), fps[0].shape)
    t = clip_to_buffer(b, t, layer.buffer_bitwidth)
    return _finish(b, layer, t)


def _add_float(b, layer, fps, frac):
    """QuantizedAdd on float carriers: the left shifts are Muls by powers of two, the sum is
    exact in the carrier that holds the sum of the bounds (None when none does)."""
    ups = [np.power(2.0, frac - fp.frac) for fp in fps]
    bound = sum(fp.bound * float(np.max(up)) for fp, up in zip(fps, ups))
    dtype = _carrier(bound)
    if dtype is None:
        return None
    names, vbs = [], []
    for fp, up in zip(fps, ups):
        v = as_float(b, fp, dtype).name
        if np.any(up != 1):
            v = b.node("Mul", [v, _fconst(b, up, dtype)], "align")
        names.append(v)
        vbs.append(fp.vb + int(max(0, (frac - fp.frac).max())))
    total = b.node("Add", names, "add")
    if layer.average:
        frac = frac + 1.0
    t = _T(total, max(vbs) + 1, frac, None, all(x.unsigned for x in fps), fps[0].shape, dtype,
           bound)
    t = clip_to_buffer(b, t, layer.buffer_bitwidth)
    return _finish(b, layer, t)


def _broadcast_shape(xs):
    """The (batchless) shape of an element-wise merge of broadcastable inputs."""
    if any(x.shape is None for x in xs):
        return None
    return tuple(int(d) for d in np.broadcast_shapes(*(tuple(x.shape) for x in xs)))


def _multiply(b, layer, xs):
    """QuantizedMultiply: an int64 ``Mul`` (broadcast), frac bits added, scales multiplied."""
    x, y = xs
    v = b.node("Mul", [x.name, y.name], "mul")
    if x.scales is None or y.scales is None:
        scales = x.scales if y.scales is None else y.scales
    else:  # in float32, as the Keras QFloat product
        scales = _np(tf.constant(x.scales) * tf.constant(y.scales)).astype(np.float32)
    t = _T(v, min(x.vb + y.vb + 1, MAX_VALUE_BITS), x.frac + y.frac, scales,
           x.unsigned and y.unsigned, _broadcast_shape(xs))
    return _finish(b, layer, t)


def _aligned_merge(op, unsigned):
    """QuantizedSubtract/Maximum/Minimum: QFloats to FixedPoints, both left-aligned on the
    element-wise maximum of their frac bits, then the int64 ``op`` (broadcast)."""
    def emitter(b, layer, xs):
        fps = [qfloat_to_fixed_point(b, x, layer.scale_bits) for x in xs]
        frac = np.maximum(fps[0].frac, fps[1].frac)
        names, vbs = [], []
        for fp in fps:
            shift = frac - fp.frac
            names.append(b.shift(fp.name, shift, "align"))
            vbs.append(fp.vb + int(max(0, shift.max())))
        v = b.node(op, names, op.lower())
        vb = max(vbs) + (1 if op == "Sub" else 0)
        t = _T(v, min(vb, MAX_VALUE_BITS), frac, None, unsigned([x.unsigned for x in fps]),
               _broadcast_shape(fps))
        t = clip_to_buffer(b, t, layer.buffer_bitwidth)
        return _finish(b, layer, t)
    return emitter


def _real_max(b, x, reduce):
    """``reduce(b, name)`` (max nodes) on the values of ``x`` as the maximum of the real
    values, as Keras takes it: where a QFloat scale is negative, the values times the scales'
    signs (exact: ±1), reduced, times the signs again; int64 values in float64 (exact).
    Returns the output name, in the dtype of ``x``."""
    v = x.name
    if x.dtype == "int64":
        v = b.node("Cast", [v], "max64", to=TensorProto.DOUBLE)
    carrier = "float64" if x.dtype in ("int64", "float64") else "float32"
    signs = None
    if x.scales is not None and np.any(np.asarray(x.scales) < 0):
        signs = b.const(np.where(np.asarray(x.scales) < 0, -1.0, 1.0).astype(carrier), "sign")
        v = b.node("Mul", [v, signs], "signed")
    v = reduce(b, v)
    if signs is not None:
        v = b.node("Mul", [v, signs], "unsigned")
    if x.dtype == "int64":
        v = b.node("Cast", [v], "max", to=TensorProto.INT64)
    return v


def _maxpool(b, layer, x):
    """QuantizedMaxPool2D: the window maxima of the values (ONNX ``MaxPool`` pads as TF's
    'same', ignoring the padding); a QFloat keeps its per-channel scales (see
    :func:`_real_max`)."""
    h, w_, c = x.shape
    ph = _pad_amounts(h, layer.pool_size[0], layer.strides[0], 1, layer.padding)
    pw = _pad_amounts(w_, layer.pool_size[1], layer.strides[1], 1, layer.padding)

    def pool(b, v):
        v = b.node("Transpose", [v], "nchw", perm=[0, 3, 1, 2])
        v = b.node("MaxPool", [v], "maxpool", kernel_shape=list(layer.pool_size),
                   strides=list(layer.strides), pads=[ph[0], pw[0], ph[1], pw[1]])
        return b.node("Transpose", [v], "nhwc", perm=[0, 2, 3, 1])

    out_h = (h + sum(ph) - layer.pool_size[0]) // layer.strides[0] + 1
    out_w = (w_ + sum(pw) - layer.pool_size[1]) // layer.strides[1] + 1
    return _finish(b, layer, _like(x, _real_max(b, x, pool), shape=(out_h, out_w, c)))


def _global_maxpool(b, layer, x):
    """QuantizedGlobalMaxPooling2D: ``ReduceMax`` of the values over the spatial axes (see
    :func:`_real_max`)."""
    if x.shape is None or len(x.shape) != 3 or layer.data_format != "channels_last":
        raise ValueError(f"export expected channels_last 4D inputs for {layer.name}.")

    def reduce(b, v):
        return b.node("ReduceMax", [v], "global_max", axes=[1, 2], keepdims=int(layer.keepdims))

    c = x.shape[-1]
    return _finish(b, layer, _like(x, _real_max(b, x, reduce),
                                   shape=(1, 1, c) if layer.keepdims else (c,)))


def _average_pool(b, layer, x):
    """QuantizedAveragePooling2D: the window sums of the zero-padded int64 inputs (the sum of
    ``ph * pw`` strided ``Slice``s), times the integer table ``L / count`` when the windows have
    different counts ('same' borders); scales ``1 / L`` (see ``average_table``)."""
    if x.shape is None or len(x.shape) != 3 or None in x.shape:
        raise ValueError(f"export expected static 4D inputs for {layer.name}. "
                         f"Received: shape {x.shape}")
    h, w_, c = x.shape
    (kh, kw), (sh, sw) = layer.pool_size, layer.strides
    table, lcm = average_table((h, w_), layer.pool_size, layer.strides, layer.padding)
    ph = _pad_amounts(h, kh, sh, 1, layer.padding)
    pw = _pad_amounts(w_, kw, sw, 1, layer.padding)
    v = x.name
    if any(ph) or any(pw):
        v = b.node("Pad", [v, b.i64([0, ph[0], pw[0], 0, 0, ph[1], pw[1], 0]), b.i64(0)],
                   "ap_pad", mode="constant")
    out_h = (h + sum(ph) - kh) // sh + 1
    out_w = (w_ + sum(pw) - kw) // sw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            part = b.node("Slice", [v, b.i64([i, j]), b.i64([i + (out_h - 1) * sh + 1,
                                                          j + (out_w - 1) * sw + 1]),
                                    b.i64([1, 2]), b.i64([sh, sw])], "ap_win")
            total = part if total is None else b.node("Add", [total, part], "ap_sum")
    if np.any(table != 1):
        total = b.node("Mul", [total, b.i64(table[None, :, :, None])], "ap_table")
    vb = min(bits_for(2.0 ** x.vb * lcm), MAX_VALUE_BITS)
    scales = tf.constant(1.0 / lcm, tf.float32)
    if x.scales is not None:
        scales = tf.constant(x.scales) * scales
    t = _T(total, vb, x.frac, _np(scales), x.unsigned, (out_h, out_w, c))
    t = clip_to_buffer(b, t, layer.buffer_bitwidth)
    return _finish(b, layer, t)


def _channels_last_refuses(layer):
    if layer.data_format != "channels_last":
        return f"data_format {layer.data_format!r} (channels_last only)"
    return None


def _reshape(b, layer, x, target):
    if not x.per_tensor and target[-1] != x.shape[-1]:
        raise ValueError(f"export expected per-tensor inputs for {layer.name}.")
    v = b.node("Reshape", [x.name, b.i64([-1] + list(target))], "reshape")
    return _finish(b, layer, _like(x, v, shape=tuple(target)))


def _dequantize(b, x):
    """The float output ``x * 2^-f * scales`` (float64, rounded once to float32). A float
    carrier ``x`` becomes int64 in place (one ``Cast``): the model's integer outputs are
    int64."""
    v = x.name
    if x.dtype != "float64":
        v = b.node("Cast", [v], "dq64", to=TensorProto.DOUBLE)
    if x.dtype != "int64":
        x.name, x.dtype = as_int64(b, x).name, "int64"
    v = b.node("Mul", [v, b.const(np.power(2.0, -x.frac))], "dq_f")
    if x.scales is not None:
        v = b.node("Mul", [v, b.const(x.scales.astype(np.float64))], "dq_s")
    return b.node("Cast", [v], "dq", to=TensorProto.FLOAT)


# ---- driver ---------------------------------------------------------------------------------
def _flatten(b, layer, xs):
    return _reshape(b, layer, xs[0], (int(np.prod(xs[0].shape)),))


def _reshape_layer(b, layer, xs):
    return _reshape(b, layer, xs[0], tuple(int(d) for d in layer.output_shape[1:]))


def _one_input(emit, **kwargs):
    """An emitter of a single-input layer, as an ``(b, layer, xs)`` emitter."""
    def emitter(b, layer, xs):
        return emit(b, layer, xs[0], **kwargs)
    return emitter


def _identity(b, layer, xs):
    """Layers that are the identity at inference (dropout)."""
    return xs[0]


def _table(b, layer, x):
    """The lookup-table activations (quantizeml.layers.table): ``Gather`` on the layer's own
    table (``layer.table``, the one its call builds), an int64 initializer, at the index
    ``(x + 2^vb) * per_row + channel offsets``."""
    scales = None
    if x.scales is not None:
        scales = QFloat.quantize_scales(tf.constant(x.scales), layer.scale_bits).to_float()
    frac = tf.constant(x.frac.astype(np.float32))
    table, out_frac, out_bits, signed = layer.table(x.vb, frac, scales)
    table = _np(table).astype(np.int64)
    per_row = int(np.prod(table.shape[1:], dtype=np.int64))
    index = b.node("Add", [x.name, b.i64(2 ** x.vb)], "table_row")
    if per_row > 1:
        index = b.node("Mul", [index, b.i64(per_row)], "table_rows")
        offsets = np.arange(per_row, dtype=np.int64).reshape(table.shape[1:])
        index = b.node("Add", [index, b.i64(offsets)], "table_index")
    v = b.node("Gather", [b.i64(table.reshape(-1), "table"), index], "table_lookup", axis=0)
    return _T(v, out_bits, _np(out_frac), None, not signed, x.shape)


def _static_shape(layer, x):
    """The static (H, W, C) of a 4D channels_last input of a spatial layer."""
    if x.shape is None or len(x.shape) != 3 or any(d is None for d in x.shape):
        raise ValueError(f"export expected 4D inputs with static dimensions for {layer.name} "
                         f"({type(layer).__name__}). Received: shape {x.shape}")
    return tuple(int(d) for d in x.shape)


def _zero_pad(b, layer, x):
    """QuantizedZeroPadding2D: an int64 ``Pad`` with the constant 0 (exact on every grid)."""
    h, w_, c = _static_shape(layer, x)
    (top, bottom), (left, right) = layer.padding
    zero = b.i64(0) if x.dtype == "int64" else _fconst(b, 0, x.dtype)
    v = b.node("Pad", [x.name, b.i64([0, top, left, 0, 0, bottom, right, 0]), zero],
               "zero_pad", mode="constant")
    shape = (h + top + bottom, w_ + left + right, c)
    return _finish(b, layer, _like(x, v, shape=shape))


def _crop(b, layer, x):
    """QuantizedCropping2D: an int64 ``Slice`` of the rows and columns."""
    h, w_, c = _static_shape(layer, x)
    (top, bottom), (left, right) = layer.cropping
    v = b.node("Slice", [x.name, b.i64([top, left]), b.i64([h - bottom, w_ - right]),
                         b.i64([1, 2])], "crop")
    shape = (h - top - bottom, w_ - left - right, c)
    return _finish(b, layer, _T(v, x.vb, x.frac, x.scales, x.unsigned, shape))


def _slice(b, layer, x):
    """QuantizedSlicing: one ``Slice`` of the non-batch axes (any carrier: values only move;
    a slice of the last axis has a per-tensor input, as the Keras twin checks)."""
    if x.shape is None or any(d is None for d in x.shape):
        raise ValueError(f"export expected inputs with static dimensions for {layer.name} "
                         f"(Slicing). Received: shape {x.shape}")
    axes = list(range(1, len(layer.begin) + 1))
    v = b.node("Slice", [x.name, b.i64(layer.begin), b.i64(layer.end), b.i64(axes),
                         b.i64(layer.strides)], "slice")
    shape = tuple(layer.compute_output_shape([None] + list(x.shape))[1:])
    return _finish(b, layer, _like(x, v, shape=shape))


def _upsample(b, layer, x):
    """QuantizedUpSampling2D, nearest: ``Unsqueeze`` to (N, H, 1, W, 1, C), ``Expand`` to
    (N, H, sh, W, sw, C) and ``Reshape`` to (N, H * sh, W * sw, C), all int64 (onnxruntime's
    ``Resize`` does not take int64). Bilinear: per upsampled axis, two int64 ``Gather`` of
    the neighbours times their integer weights (``bilinear_axis``), as the Keras twin."""
    h, w_, c = _static_shape(layer, x)
    if layer.interpolation == "bilinear":
        x = as_int64(b, x)
        v, vb, frac, dims = x.name, x.vb, x.frac, [h, w_]
        for axis, s in ((1, int(layer.size[0])), (2, int(layer.size[1]))):
            if s == 1:
                continue
            v = _weighted_gather(b, v, axis, *bilinear_axis(dims[axis - 1], s))
            dims[axis - 1] *= s
            vb, frac = vb + int(np.log2(2 * s)), frac + int(np.log2(2 * s))
        return _finish(b, layer, _T(v, vb, frac, x.scales, x.unsigned, (*dims, c)))
    rows, cols = layer.size
    v = b.node("Unsqueeze", [x.name, b.i64([2, 4])], "up_unsq")
    v = b.node("Expand", [v, b.i64([1, 1, rows, 1, cols, 1])], "up_expand")
    shape = (h * rows, w_ * cols, c)
    v = b.node("Reshape", [v, b.i64([-1, *shape])], "upsample")
    return _finish(b, layer, _T(v, x.vb, x.frac, x.scales, x.unsigned, shape))


def _weighted_gather(b, v, axis, lo, hi, w_lo, w_hi):
    """``w_lo * v[lo] + w_hi * v[hi]`` along ``axis`` of a 4D int64 tensor: two ``Gather``,
    two ``Mul`` by the integer weights and an ``Add`` (a bilinear resize of one axis)."""
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    return b.node("Add", [
        b.node("Mul", [b.node("Gather", [v, b.i64(lo)], "bil_lo", axis=axis),
                       b.i64(w_lo.reshape(shape))], "bil_wlo"),
        b.node("Mul", [b.node("Gather", [v, b.i64(hi)], "bil_hi", axis=axis),
                       b.i64(w_hi.reshape(shape))], "bil_whi")], "bilinear")


def _resize(b, layer, x):
    """QuantizedResizing: per resized axis, int64 ``Gather`` of the neighbours of
    ``resize_axis`` (nearest: one ``Gather``, any carrier), bilinear ones times their integer
    weights and added, as the Keras twin."""
    h, w_, c = _static_shape(layer, x)
    axes = [(axis, n, int(out), *resize_axis(n, int(out), layer.interpolation))
            for axis, n, out in ((1, h, layer.height), (2, w_, layer.width))]
    if any(axis[-1] for axis in axes):
        x = as_int64(b, x)
    v, vb, frac, dims = x.name, x.vb, x.frac, [h, w_]
    for axis, n, out, lo, hi, w_lo, w_hi, bits in axes:
        if bits == 0 and n == out and np.array_equal(lo, np.arange(n)):
            continue
        dims[axis - 1] = out
        if bits == 0:
            v = b.node("Gather", [v, b.i64(lo)], "resize", axis=axis)
            continue
        v = _weighted_gather(b, v, axis, lo, hi, w_lo, w_hi)
        vb, frac = vb + bits, frac + bits
    return _finish(b, layer, _T(v, vb, frac, x.scales, x.unsigned, (*dims, c), dtype=x.dtype))


def _conv_refuses(layer):
    if layer.padding_value is not None:
        return "a padding value other than zero"
    return None


def _permute(b, layer, x):
    """QuantizedPermute: an int64 ``Transpose`` (``perm = [0] + dims``); the frac bits and
    scales follow the last axis, so a per-axis input must keep it last (as the Keras twin)."""
    perm = [0] + [int(d) for d in layer.dims]
    if perm[-1] != len(perm) - 1 and not x.per_tensor:
        raise ValueError(f"export expected per-tensor inputs for {layer.name} (Permute moves "
                         f"the last axis). Received: frac bits of shape {x.frac.shape}")
    v = b.node("Transpose", [x.name], "permute", perm=perm)
    shape = None if x.shape is None else tuple(x.shape[d - 1] for d in perm[1:])
    return _finish(b, layer, _T(v, x.vb, x.frac, x.scales, x.unsigned, shape))


def _concatenate(b, layer, xs):
    """QuantizedConcatenate: QFloats to FixedPoints (``scale_bits``), each input left-aligned
    on the largest frac bits of all inputs (per-tensor result), then the int64 ``Concat``."""
    fps = [qfloat_to_fixed_point(b, x, layer.scale_bits) for x in xs]
    target = float(max(fp.frac.max() for fp in fps))
    names, vbs = [], []
    for fp in fps:
        shift = target - fp.frac
        names.append(b.shift(fp.name, shift, "cat_align"))
        vbs.append(fp.vb + int(max(0, shift.max())))
    rank = None if fps[0].shape is None else len(fps[0].shape) + 1
    axis = int(layer.axis)
    v = b.node("Concat", names, "concat", axis=axis)
    shape = None
    if all(fp.shape is not None for fp in fps):
        shape = list(fps[0].shape)
        k = (axis % rank) - 1
        shape[k] = sum(int(fp.shape[k]) for fp in fps)
        shape = tuple(shape)
    t = _T(v, min(max(vbs), MAX_VALUE_BITS), target, None, all(fp.unsigned for fp in fps), shape)
    t = clip_to_buffer(b, t, layer.buffer_bitwidth)
    return _finish(b, layer, t)


def _rescaling(b, layer, xs):
    """QuantizedRescaling (float inputs holding integers): ``clip(round_half_up(x))`` in float32
    (``floor(x) + (x - floor(x) >= 0.5)``, as ``round_half_up``), as int64 with frac bits 0
    and the layer's scale as the QFloat scales. Quantized inputs keep their integers; their
    scales (1 for a FixedPoint) are multiplied by the scale in float32, as Keras does."""
    x = xs[0]
    scale = np.float32(float(np.ravel(layer.scale)[0]))
    if not isinstance(x, str):
        scales = scale if x.scales is None else (x.scales * scale).astype(np.float32)
        return _finish(b, layer, _T(x.name, x.vb, x.frac, scales, x.unsigned, x.shape, x.dtype,
                                    x.bound))
    v = b.node("Cast", [x], "rs_f32", to=TensorProto.FLOAT)
    floored = b.node("Floor", [v], "rs_floor")
    frac_part = b.node("Sub", [v, floored], "rs_frac")
    up = b.node("GreaterOrEqual", [frac_part, b.const(np.array(0.5, np.float32))], "rs_half")
    up = b.node("Cast", [up], "rs_up", to=TensorProto.FLOAT)
    v = b.node("Add", [floored, up], "rs_round")
    vb = layer.input_value_bits
    lo = -(2.0 ** vb) if layer.input_signed else 0.0
    v = b.node("Clip", [v, b.const(np.array(lo, np.float32)),
                        b.const(np.array(2.0 ** vb - 1, np.float32))], "rs_clip")
    v = b.node("Cast", [v], "rs_int", to=TensorProto.INT64)
    shape = tuple(int(d) if d is not None else None for d in layer.input_shape[1:])
    t = _T(v, vb, 0.0, scale, not layer.input_signed, shape)
    return _finish(b, layer, t)


def _batchnorm(b, layer, x):
    """QuantizedBatchNormalization: ``x * a_int`` (int64, frac bits and scales of the product
    as the Keras QTensor product), plus ``b`` quantized on that grid by the layer's
    AlignedWeightQuantizer, clipped to the buffer, then the output quantizer."""
    a, bias = layer._a_b()
    aq = layer.a_quantizer(a)
    afp = aq.fp if isinstance(aq, QFloat) else aq
    a_int = _np(afp.values).astype(np.int64)
    v = b.node("Mul", [x.name, b.i64(a_int)], "bn_ax")
    frac = x.frac + _np(afp.frac_bits).astype(np.float64)
    a_scales = getattr(aq, "scales", None)
    if x.scales is None:
        scales = None if a_scales is None else _np(a_scales).astype(np.float32)
    elif a_scales is None:
        scales = x.scales
    else:
        scales = _np(tf.constant(x.scales) * a_scales).astype(np.float32)
    vb = min(x.vb + afp.value_bits + 1, MAX_VALUE_BITS)
    channels = int(a_int.size)
    grid_scales = tf.constant(1.0) if scales is None else tf.constant(scales)
    frac_t = tf.constant(np.broadcast_to(frac, (channels,)).astype(np.float32)
                         if np.size(frac) > 1 else np.float32(np.reshape(frac, ())))
    grid = QFloat(FixedPoint(tf.zeros((1, channels)), vb, frac_t), grid_scales)
    bq = layer.b_quantizer(bias, grid)
    bfp = bq.fp if isinstance(bq, QFloat) else bq
    v = b.node("Add", [v, b.i64(_np(bfp.values).astype(np.int64))], "bn_b")
    t = _T(v, max(vb, bfp.value_bits) + 1, frac, scales, False, x.shape)
    t = clip_to_buffer(b, t, layer.buffer_bitwidth)
    return _finish(b, layer, t)


#: ONNX emitter name (``TwinSpec.export``) -> ``(emit(b, layer, inputs) -> _T, refuses)``:
#: ``refuses(layer)`` returns why a layer of that kind cannot be exported (or None).
_CORE_EMITTERS = {
    "conv": (_one_input(_conv), _conv_refuses),
    "depthwise_conv": (_one_input(_conv, depthwise=True), None),
    "dense": (_one_input(_dense), None),
    "relu": (_one_input(_relu), None),
    "global_average_pool": (_one_input(_gap), None),
    "add": (lambda b, layer, xs: _add(b, layer, xs), None),
    "multiply": (_multiply, None),
    "subtract": (_aligned_merge("Sub", lambda unsigned: False), None),
    "maximum": (_aligned_merge("Max", any), None),
    "minimum": (_aligned_merge("Min", all), None),
    "max_pool": (_one_input(_maxpool), None),
    "global_max_pool": (_one_input(_global_maxpool), None),
    "average_pool": (_one_input(_average_pool), _channels_last_refuses),
    "flatten": (_flatten, None),
    "reshape": (_reshape_layer, None),
    "identity": (_identity, None),
    "table": (_one_input(_table), None),
    "zero_pad": (_one_input(_zero_pad), None),
    "crop": (_one_input(_crop), None),
    "slice": (_one_input(_slice), None),
    "upsample": (_one_input(_upsample), None),
    "resize": (_one_input(_resize), None),
    "permute": (_one_input(_permute), None),
    "concatenate": (_concatenate, None),
    "rescaling": (_rescaling, None),
    "batchnorm": (_one_input(_batchnorm), None),
}
#: The emitters that take float carriers (``_T.dtype`` "float32"/"float64"); the others get
#: their inputs cast to int64.
_FLOAT_CARRIER_EMITTERS = ("conv", "depthwise_conv", "dense", "relu", "global_average_pool",
                           "add", "max_pool", "global_max_pool", "flatten", "reshape",
                           "identity", "zero_pad", "slice")


def register_emitters(table):
    """Adds emitters (name -> ``(emit, refuses)``) to :data:`EMITTERS`, the name being the
    ``export`` of a twin's registration; those not taking float carriers get their inputs cast
    to int64. The emitter modules (:mod:`.convolutions`, :mod:`.transformer`) register theirs
    when imported (:mod:`quantizeml.onnx_support.export` imports them).

    Raises:
        ValueError: when a name is already registered.
    """
    taken = sorted(set(table) & set(EMITTERS))
    if taken:
        raise ValueError(f"register_emitters expected new emitter names. Received: {taken}, "
                         "already registered")
    for key, (emit, refuses) in table.items():
        EMITTERS[key] = (emit if key in _FLOAT_CARRIER_EMITTERS else _int64_inputs(emit),
                         refuses)


#: emitter name (a twin's ``register_twin(..., export=...)``) -> ``(emit, refuses)``
EMITTERS = {}
register_emitters(_CORE_EMITTERS)

# ---- float layers: the float preprocessing head, float islands and the float tail ---------
#: Keras activation name -> the float32 ONNX operator (and its attributes) that computes it.
_FLOAT_ACTIVATIONS = {
    "linear": ("Identity", {}), "relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}), "softmax": ("Softmax", {"axis": -1}), "elu": ("Elu", {}),
    "selu": ("Selu", {}), "softplus": ("Softplus", {}), "softsign": ("Softsign", {}),
    "exponential": ("Exp", {}), "hard_sigmoid": ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
    "quantizeml>abs": ("Abs", {}),
}


def _activation_name(activation):
    name = keras.activations.serialize(activation)
    return name.get("config", name.get("class_name")) if isinstance(name, dict) else name


def _float_activation(b, name, x):
    """A float32 activation by its Keras name (``swish`` as ``x * Sigmoid(x)``, ``relu6`` as a
    ``Clip``)."""
    if name == "swish" or name == "silu":
        return b.node("Mul", [x, b.node("Sigmoid", [x], "f_sig")], "f_swish")
    if name == "relu6":
        return b.node("Clip", [x, b.const(np.array(0, np.float32)),
                               b.const(np.array(6, np.float32))], "f_relu6")
    op, attrs = _FLOAT_ACTIVATIONS[name]
    return b.node(op, [x], "f_" + op.lower(), **attrs)


def _float_activation_refuses(layer):
    name = _activation_name(layer.activation)
    if name in _FLOAT_ACTIVATIONS or name in ("swish", "silu", "relu6"):
        return None
    return f"the float activation {name!r} (no ONNX operator)"


def _float_activation_layer(b, layer, xs):
    """Activation: its ONNX operator on float32."""
    return _float_activation(b, _activation_name(layer.activation), xs[0])


def _float_softmax(b, layer, xs):
    """Softmax (one axis): the ONNX ``Softmax`` on float32."""
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    return b.node("Softmax", [xs[0]], "f_softmax", axis=int(axis))


def _float_softmax_refuses(layer):
    if isinstance(layer.axis, (list, tuple)) and len(layer.axis) != 1:
        return f"a softmax over several axes {layer.axis}"
    return None


def _float_relu(b, layer, xs):
    """ReLU (threshold 0): ``Relu``/``LeakyRelu``, then ``Min`` with max_value."""
    slope = float(layer.negative_slope)
    x = xs[0]
    v = b.node("LeakyRelu", [x], "f_leaky", alpha=slope) if slope else \
        b.node("Relu", [x], "f_relu")
    if layer.max_value is not None:
        v = b.node("Min", [v, b.const(np.array(float(layer.max_value), np.float32))], "f_max")
    return v


def _float_relu_refuses(layer):
    if float(layer.threshold) != 0:
        return f"a float ReLU with a threshold ({float(layer.threshold)})"
    return None


def _float_leaky_relu(b, layer, xs):
    """LeakyReLU: ``LeakyRelu`` with the layer's alpha."""
    return b.node("LeakyRelu", [xs[0]], "f_leaky", alpha=float(layer.alpha))


def _float_rescaling(b, layer, xs):
    """Rescaling: ``x * scale + offset`` in float32 (per-channel scale and offset broadcast)."""
    v = b.node("Cast", [xs[0]], "f_cast", to=TensorProto.FLOAT)
    v = b.node("Mul", [v, b.const(np.asarray(layer.scale, np.float32))], "f_scale")
    return b.node("Add", [v, b.const(np.asarray(layer.offset, np.float32))], "f_offset")


def _float_flatten(b, layer, xs):
    """Flatten (channels_last): ``Reshape`` to (N, -1)."""
    return b.node("Reshape", [xs[0], b.i64([0, -1])], "f_flatten")


def _float_reshape(b, layer, xs):
    """Reshape: ``Reshape`` to (N, *target_shape)."""
    return b.node("Reshape", [xs[0], b.i64([0] + [int(d) for d in layer.target_shape])],
                  "f_reshape")


def _float_permute(b, layer, xs):
    """Permute: ``Transpose`` with ``[0] + dims``."""
    return b.node("Transpose", [xs[0]], "f_permute", perm=[0] + [int(d) for d in layer.dims])


def _float_dense(b, layer, xs):
    """Dense: ``MatMul`` with the float32 kernel, ``Add`` the bias, then the activation."""
    v = b.node("MatMul", [xs[0], b.const(_np(layer.kernel).astype(np.float32), "f_kernel")],
               "f_matmul")
    if layer.use_bias:
        v = b.node("Add", [v, b.const(_np(layer.bias).astype(np.float32), "f_bias")], "f_bias")
    return _float_activation(b, _activation_name(layer.activation), v)


def _float_merge(op):
    """Add, Subtract, Multiply, Maximum, Minimum: the ONNX ``op`` folded over the inputs in
    order (as the Keras merge layers)."""
    def emitter(b, layer, xs):
        v = xs[0]
        for x in xs[1:]:
            v = b.node(op, [v, x], "f_" + op.lower())
        return v
    return emitter


def _float_concatenate(b, layer, xs):
    """Concatenate: ``Concat`` on the layer's axis."""
    return b.node("Concat", list(xs), "f_concat", axis=int(layer.axis))


def _float_identity(b, layer, xs):
    """Layers that are the identity at inference (dropout, noise)."""
    return xs[0]


#: Float Keras layer class (exact) -> ``(emit(b, layer, float input names) -> float output
#: name, refuses(layer) -> reason or None)``: the float layers quantize() leaves in a quantized
#: model (the float preprocessing head, float islands, the float tail), written as float32
#: ONNX operators.
FLOAT_EMITTERS = {
    keras.layers.Activation: (_float_activation_layer, _float_activation_refuses),
    keras.layers.Softmax: (_float_softmax, _float_softmax_refuses),
    keras.layers.ReLU: (_float_relu, _float_relu_refuses),
    keras.layers.LeakyReLU: (_float_leaky_relu, None),
    keras.layers.Rescaling: (_float_rescaling, None),
    keras.layers.Flatten: (_float_flatten, None),
    keras.layers.Reshape: (_float_reshape, None),
    keras.layers.Permute: (_float_permute, None),
    keras.layers.Dense: (_float_dense, _float_activation_refuses),
    keras.layers.Add: (_float_merge("Add"), None),
    keras.layers.Subtract: (_float_merge("Sub"), None),
    keras.layers.Multiply: (_float_merge("Mul"), None),
    keras.layers.Maximum: (_float_merge("Max"), None),
    keras.layers.Minimum: (_float_merge("Min"), None),
    keras.layers.Concatenate: (_float_concatenate, None),
    keras.layers.Dropout: (_float_identity, None),
    keras.layers.SpatialDropout2D: (_float_identity, None),
    keras.layers.GaussianNoise: (_float_identity, None),
    keras.layers.GaussianDropout: (_float_identity, None),
}
# The convolutions, normalizations, poolings, padding, cropping and upsampling
# (:mod:`.float_layers`) and the transformer layers (:mod:`.float_transformer`) add their entries
# when imported (by :mod:`.export`, as the integer emitters of :mod:`.convolutions`).


def _float_emitter(layer):
    """The FLOAT_EMITTERS entry of a float layer (exact class), or None."""
    return FLOAT_EMITTERS.get(type(layer))


def _integer_outputs(graph, tensors, ref):
    """The integer tensors (``_T``) before the Dequantizers that a float model output derives
    from (directly, or through float-tail layers), in the graph order of their Dequantizers:
    one for a plain output, several for a float tail that reads several quantized tensors
    (cross-attention ``mha(query, value, key)``); a tensor read through several
    Dequantizers (self-attention ``mha(y, y)``) counts once."""
    order = {id(node.layer): i for i, node in enumerate(graph.nodes)}
    found, stack, seen = [], [ref], set()
    while stack:
        r = stack.pop()
        if r.key in seen:
            continue
        seen.add(r.key)
        node = graph.producer(r)
        if node is None or not isinstance(tensors[r.key], str):
            continue
        if isinstance(node.layer, Dequantizer):
            x = tensors[node.inputs[0].key]
            if all(x.name != f.name for _, f in found):
                found.append((order[id(node.layer)], x))
        else:
            stack.extend(node.inputs)
    if not found:
        raise ValueError(f"export expected a dequantized integer tensor before each model "
                         f"output. Received: none for output "
                         f"{graph.producer(ref).layer.name!r}")
    return [x for _, x in sorted(found, key=lambda e: e[0])]


_QUANTIZER_LAYERS = (keras.layers.InputLayer, InputQuantizer, OutputQuantizer, Dequantizer)


def supported_layers():
    """tuple of type: the Keras layer classes the exporter supports (the quantizer layers,
    every registered twin whose ``export`` names an emitter, and the float layers of
    ``FLOAT_EMITTERS`` that quantize() may leave float: head, islands, tail)."""
    return _QUANTIZER_LAYERS + tuple(spec.twin for spec in twin_specs()
                                     if spec.export in EMITTERS) + tuple(FLOAT_EMITTERS)


def _emitter(layer):
    spec = twin_spec(layer)
    if spec is None or not isinstance(layer, spec.twin):
        return None
    return EMITTERS.get(spec.export)


def _unsupported_listing(bad):
    """The culprits of :func:`_check_supported` (``(layer, reason or None)``), one each as
    ``name (Class)`` or, when its emitter's ``refuses`` gave a reason, ``name (Class): reason``,
    separated by '; ' (a reason may hold commas)."""
    return "; ".join(f"{layer.name} ({type(layer).__name__})" + (f": {reason}" if reason else "")
                     for layer, reason in bad)


def _check_supported(qmodel):
    bad = []
    for layer in qmodel.layers:
        if isinstance(layer, _QUANTIZER_LAYERS):
            continue
        emitter = _emitter(layer) or _float_emitter(layer)
        if emitter is None:
            bad.append((layer, None))
        elif emitter[1] is not None and (reason := emitter[1](layer)) is not None:
            bad.append((layer, reason))
    if bad:
        listing = _unsupported_listing(bad)
        supported = ", ".join(c.__name__ for c in supported_layers())
        raise ValueError(f"export expected a quantized model made of {supported}. Received: "
                         f"layers it cannot export: {listing}")


def graph_input(b, layer, ref):
    """The ONNX graph input of a Keras model input and the float32 tensor that stands for it:
    the input itself (float32), or its ``Cast`` to float32 for another element type (an
    int32 token input keeps its type in the graph; the layers read float, as Keras casts)."""
    dtype = tf.as_dtype(ref.tensor.dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype.as_numpy_dtype))
    info = oh.make_tensor_value_info(layer.name, elem, ["N"] + [int(d) for d in ref.shape[1:]])
    if elem == TensorProto.FLOAT:
        return info, layer.name
    return info, b.node("Cast", [layer.name], f"{layer.name}_f32", to=TensorProto.FLOAT)


#: The forms ``export`` writes.
def export_exact(qmodel, path=None):
    """The exact form of :func:`quantizeml.onnx_support.export.export` (its checks done): a
    graph whose integer outputs equal the Keras QTensors' ``values`` bit for bit.

    Args:
        qmodel (keras.Model): a functional model from ``quantizeml.models.quantize``.
        path (str, optional): where to save the ONNX model. Defaults to None (not saved).

    Returns:
        onnx.ModelProto: the exported model.
    """
    b = _Builder()
    graph = Graph(qmodel)
    tensors, graph_inputs, outputs = {}, [], {}
    for layer, ref in zip(graph.input_layers, graph.inputs):
        info, tensors[ref.key] = graph_input(b, layer, ref)  # a float graph input
        graph_inputs.append(info)
    for node in graph.nodes:
        layer = node.layer
        args = [tensors[ref.key] for ref in node.inputs]
        x = args[0]
        if isinstance(layer, InputQuantizer):
            if not isinstance(x, str):
                raise ValueError(f"export expected float inputs for {layer.name}.")
            shape = tuple(int(d) for d in layer.input_shape[1:])
            out = _input_quantizer(b, layer, x, shape)
        elif _float_emitter(layer) is not None:  # a float layer: head, island or tail
            if not all(isinstance(a, str) for a in args):
                raise ValueError(f"export expected float inputs for the float layer "
                                 f"{layer.name} ({type(layer).__name__}). Received: quantized "
                                 f"inputs")
            out = _float_emitter(layer)[0](b, layer, args)
        elif isinstance(x, str) and not isinstance(layer, Dequantizer) \
                and not getattr(twin_spec(layer), "float_inputs", False):
            raise ValueError(f"export expected quantized inputs for {layer.name} "
                             f"({type(layer).__name__}).")
        elif isinstance(layer, OutputQuantizer):
            out = _output_quantizer(b, x, layer)
        elif isinstance(layer, Dequantizer):
            outputs[layer.name] = x
            out = _dequantize(b, x)  # float from here on (an island, the float tail)
        else:
            out = _emitter(layer)[0](b, layer, args)
        tensors[node.outputs[0].key] = out
    float_outputs, int_outputs = [], []
    for i, ref in enumerate(graph.outputs):
        name = graph.producer(ref).layer.name
        if not isinstance(tensors[ref.key], str):
            raise ValueError(f"export expected a Dequantizer on every model output. "
                             f"Received: output {name!r}")
        b.nodes.append(oh.make_node("Identity", [tensors[ref.key]], [name],
                                    name=b.uid("Identity")))
        fshape = ref.shape[1:]
        fshape = ["N"] + [None if d is None else int(d) for d in fshape] \
            if fshape.rank is not None else None
        float_outputs.append(oh.make_tensor_value_info(name, TensorProto.FLOAT, fshape))
        for j, x in enumerate(_integer_outputs(graph, tensors, ref)):
            iname = "integer_outputs" if i == 0 else f"integer_outputs_{i}"
            iname = iname if j == 0 else f"{iname}_source{j}"
            b.nodes.append(oh.make_node("Identity", [x.name], [iname], name=b.uid("Identity")))
            shape = ["N"] + [int(d) for d in x.shape] if x.shape is not None else None
            int_outputs.append(oh.make_tensor_value_info(iname, TensorProto.INT64, shape))
    graph_outputs = float_outputs + int_outputs
    graph = oh.make_graph(b.nodes, qmodel.name, graph_inputs, graph_outputs,
                          initializer=b.inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)],
                          producer_name="quantizeml")
    model.ir_version = 8
    if path is not None:
        onnx.save(model, path)
    return model
