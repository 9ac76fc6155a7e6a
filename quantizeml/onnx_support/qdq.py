"""The deployable int8 form of the ONNX export: ``export(qmodel, format="qdq")``.

The quantized activations become uint8 tensors (zero point 0 for unsigned quantizers, 128 for
signed ones: onnxruntime fuses a convolution only when its input and output have the same
type) with the power-of-two scale ``2^-frac_bits`` of their quantizer (per channel for
per-axis quantizers); each operator reads them through a ``DequantizeLinear`` and writes them
through a ``QuantizeLinear``, the pattern that onnxruntime (and other QDQ runtimes) fuse into
int8 kernels (``QLinearConv``, ``QLinearMatMul``, ``QLinearAdd``...). 4D tensors run in NCHW (one
``Transpose`` of the float input, one before a Flatten or the output).

Mapping (the Keras quantized layer -> the QDQ group):

* ``InputQuantizer`` (<= 8 bits): ``Floor(x * 2^f + 1/2)`` then a ``QuantizeLinear`` of
  scale 1 (the uint8 saturation) of the float input (``ties='half_even'``:
  ``QuantizeLinear(x, 2^-f)``);
* Conv2D / DepthwiseConv2D / Dense: int8 weights ``w_int`` as initializers, dequantized per
  output channel (axis 0; axis 1 for Dense) with the scale the Keras output quantizer applies,
  ``s_int * 2^-(s_frac + f_w)`` (the weight scales quantized on its ``scale_bits``), the
  Keras bias integers as int32 dequantized at ``x_scale * w_scale`` (so onnxruntime folds them
  into the int32 accumulator), then ``QuantizeLinear`` with the output quantizer's scale. A
  Conv/Dense without an output quantizer followed by a QuantizedReLU that has one is fused
  with it (``Relu`` between the Conv and the QuantizeLinear, which onnxruntime drops for a
  uint8 zero point 0; a ReLU maximum becomes a ``Clip`` of the uint8 values); one followed
  by the final Dequantizer gives float outputs (``values * 2^-f * scales``). With
  ``depthwise='float'`` a DepthwiseConv2D is a float ``Conv`` instead (see ``export_qdq``);
* QuantizedAdd (its own or its ReLU's output quantizer): ``Add`` of the dequantized inputs;
* QuantizedReLU alone: ``Relu`` (and ``Min``) between a DequantizeLinear and a QuantizeLinear;
* GlobalAveragePooling2D: ``ReduceSum`` times the quantized ``1 / (H * W)``, quantized;
* MaxPool2D, ZeroPadding2D, Flatten, Reshape, Dropout: ``MaxPool``/``Pad`` (with the zero
  point)/``Reshape`` directly on the uint8 tensors.

Rounding. quantizeml rounds half up exactly (``floor(v + 1/2)``); onnxruntime's int8
kernels requantize the int32 accumulator as ``rint(fl32(float(acc) * M))`` with the float32
multiplier ``M = x_scale * w_scale / y_scale = s_int * 2^-k`` (the Keras one, exact), half to
even, and ``QuantizeLinear`` rounds ``x / scale`` half to even. With ``ties='half_up'`` (the
default) the QDQ form rounds like quantizeml where it can:

* the input quantization: explicitly (``Floor``), exact for every float input;
* convolutions and Dense with unsigned (ReLU or unsigned quantizer) per-tensor outputs, fused
  by onnxruntime: the weight scale of a channel is moved 1 or 2 float32 ulps up, so that
  ``M' = M (1 + eps)`` with ``2^-24 < eps``: a tie ``T = n + 1/2`` lands above ``T`` after the
  float32 rounding, while a value that is not a tie is at least ``2^(z - k)`` below the next
  tie (the exact product ``acc * s_int`` is an integer multiple of ``2^z | s_int``) and stays
  below it when ``eps * T + ulp(T) / 2`` is smaller, which holds for the small values and
  fails only near the top of the 8-bit range when ``k >= 15``. Each channel is checked by
  enumerating the accumulators around every tie of its output range (``_tie_mismatches``,
  cached per ``(s_int, k, max)``): moved only when that leaves no more mismatching
  accumulators than half to even (the ties break up, a few accumulators just below ties
  near the top of the range may round up), and counted as exact when none mismatches; the
  counts are in ``metadata_props`` under ``TIES_KEY``. The float depthwise form
  (``depthwise='float'``) does the same with a ``QuantizeLinear`` scale moved 1 or 2 ulps
  down (exact where its float Conv is, see ``export_qdq``);
* the requantizations that are rounded shifts (Add, ReLU, pooling) break their ties up
  (``_tie_break``, as before); a signed Add without ReLU, which ran in float to do so, is
  computed on the unsigned values ``v + 128`` instead, through lowered input zero points, so
  that onnxruntime fuses it (``_signed_add``).

Signed outputs of the fused kernels (a convolution without ReLU, zero point 128) keep
onnxruntime's half-to-even ties: a scale moves positive and negative ties the same way, away
from or towards zero, where quantizeml moves both up, and the int32 bias moves them by whole
accumulator steps. Those ties (about ``2^-k`` of the values for odd ``s_int``) and the
mismatches above leave each requantization within one output step of Keras; after many
layers the differences propagate (``benchmarks/deployment.py`` measures the match rates at
the outputs, before and after, with ``ties='half_even'``).

Everything else falls back (listed in the model's ``metadata_props`` under
``FALLBACKS_KEY``): the layer is written by the exact form's emitter (``exact.EMITTERS``)
on int64 values cast from the uint8 ones, and its result is cast back to uint8 when it is
an 8-bit FixedPoint (else later layers fall back too); float layers use ``FLOAT_EMITTERS``.
Per-axis activations stay QDQ (per-axis ``QuantizeLinear``) but onnxruntime only fuses
per-tensor ones: the convolutions that read them run in float.
"""
import json

import numpy as np
import onnx
import tensorflow as tf
import tf_keras as keras
from onnx import TensorProto
from onnx import helper as oh

from ..layers import Dequantizer, InputQuantizer, OutputQuantizer
from ..layers.registry import twin_spec
from ..models.graph import Graph
from ..tensors import FixedPoint, QFloat
# the exact form's module: its builder and emitters are the fallbacks
from . import exact

__all__ = ["export_qdq", "FALLBACKS_KEY", "TIES_KEY", "DEPTHWISE", "TIES"]

#: ``metadata_props`` key listing the layers written by the exact or float fallbacks.
FALLBACKS_KEY = "quantizeml.qdq_fallbacks"

#: ``metadata_props`` key: the output channels of the convolutions and Dense layers with
#: unsigned 8-bit outputs (JSON ``channels``), those whose requantization rounds like
#: quantizeml's on every accumulator (``exact``, by enumeration around the ties) and those
#: whose ties are broken up (``ties_up``).
TIES_KEY = "quantizeml.qdq_ties"

#: How ``export_qdq`` writes depthwise convolutions: int8 QDQ (default) or float Conv.
DEPTHWISE = ("int8", "float")

#: How ``export_qdq`` rounds ties: half up where proven exact (default), or half to even.
TIES = ("half_up", "half_even")


class _Q:
    """A quantized activation of the QDQ graph: its uint8 ONNX name, frac bits (scalar or
    per channel), signedness, Keras (batchless, channels last) shape and whether the ONNX
    tensor is NCHW (4D tensors)."""

    def __init__(self, name, frac, unsigned, shape):
        self.name = name
        self.frac = np.asarray(frac, np.float64)
        self.unsigned = bool(unsigned)
        self.shape = tuple(int(d) for d in shape)
        self.nchw = len(self.shape) == 3

    @property
    def per_tensor(self):
        return self.frac.size == 1

    @property
    def axis(self):
        return 1 if self.nchw else len(self.shape)


def _zero(unsigned):
    """The uint8 zero point of an activation: 0 (unsigned) or 128 (signed, [-128, 127])."""
    return 0 if unsigned else 128


def _scale_zp(b, frac, unsigned, shrink=1.0):
    """The scale ``2^-frac`` (times ``shrink``, a scalar or one per channel) and zero point
    initializers (scalars, or vectors per axis)."""
    frac = np.asarray(frac, np.float64)
    scale = (np.power(2.0, -frac) * np.asarray(shrink, np.float64)).astype(np.float32)
    frac = np.broadcast_to(frac, scale.shape)
    zp = np.full(frac.shape, _zero(unsigned), np.uint8)
    if frac.size == 1:
        return b.const(scale.reshape(()), "scale"), b.const(zp.reshape(()), "zp")
    return b.const(scale.reshape(-1), "scale"), b.const(zp.reshape(-1), "zp")


def _dq(b, q):
    """A fresh DequantizeLinear of a quantized activation (one per consumer, as the QDQ
    fusions expect)."""
    scale, zp = _scale_zp(b, q.frac, q.unsigned)
    attrs = {} if q.per_tensor else {"axis": q.axis}
    return b.node("DequantizeLinear", [q.name, scale, zp], "dq", **attrs)


def _quantize(b, x, frac, unsigned, shape, shrink=None):
    """QuantizeLinear of a float tensor (NCHW when 4D) on the grid ``2^-frac`` (its scale
    times ``shrink`` when given, a scalar or one per channel, see ``_tie_break`` and
    ``_scale_ties_up``; the consumers dequantize on the grid)."""
    frac = np.asarray(frac, np.float64).reshape(-1)
    frac = np.asarray(frac[0]) if np.all(frac == frac[0]) else frac
    if shrink is not None and np.size(shrink) > 1:
        shrink = np.asarray(shrink, np.float64).reshape(-1)
        shrink = shrink[0] if np.all(shrink == shrink[0]) else shrink
    scale, zp = _scale_zp(b, frac, unsigned, 1.0 if shrink is None else shrink)
    q = _Q(None, frac, unsigned, shape)
    attrs = {} if q.per_tensor and np.size(shrink if shrink is not None else 1) == 1 \
        else {"axis": q.axis}
    q.name = b.node("QuantizeLinear", [x, scale, zp], "q", **attrs)
    return q


def _to_nchw(b, name):
    return b.node("Transpose", [name], "nchw", perm=[0, 3, 1, 2])


def _to_nhwc(b, name):
    return b.node("Transpose", [name], "nhwc", perm=[0, 2, 3, 1])


def _as_float(b, x):
    """The float32 NHWC values of a state (quantized, exact int64 or already float)."""
    if isinstance(x, str):
        return x
    if isinstance(x, _Q):
        v = _dq(b, x)
        return _to_nhwc(b, v) if x.nchw else v
    return exact._dequantize(b, x)


def _as_exact(b, x):
    """A quantized activation as the exact form's int64 NHWC tensor (``export._T``)."""
    if not isinstance(x, _Q):
        return x
    v = b.node("Cast", [x.name], "i64", to=TensorProto.INT64)
    if not x.unsigned:
        v = b.node("Sub", [v, b.i64(_zero(False))], "i64_signed")
    if x.nchw:
        v = _to_nhwc(b, v)
    return exact._T(v, 8 if x.unsigned else 7, x.frac, None, x.unsigned, x.shape)


def _from_exact(b, t):
    """An exact int64 result back to uint8 when it is an 8-bit FixedPoint, else as is."""
    if not isinstance(t, exact._T) or t.scales is not None or t.shape is None \
            or None in t.shape or t.vb > (8 if t.unsigned else 7):
        return t
    v = t.name
    if getattr(t, "dtype", "int64") != "int64":  # a float carrier of the exact form
        v = b.node("Cast", [v], "i64", to=TensorProto.INT64)
    if not t.unsigned:
        v = b.node("Add", [v, b.i64(_zero(False))], "u8_signed")
    v = b.node("Cast", [v], "u8", to=TensorProto.UINT8)
    if len(t.shape) == 3:
        v = _to_nchw(b, v)
    frac = t.frac if t.frac.size > 1 else t.frac.reshape(())
    return _Q(v, frac, t.unsigned, t.shape)


def _fits8(quantizer):
    return quantizer is not None and quantizer.bitwidth <= 8


def _kind(layer):
    spec = twin_spec(layer)
    return spec.export if spec is not None and isinstance(layer, spec.twin) else None


def _relu_after(graph, node):
    """The QuantizedReLU node (with an 8-bit output quantizer) that alone consumes ``node``'s
    output, or None."""
    consumer = graph.sole_consumer(node)
    if consumer is None or _kind(consumer.layer) != "relu" \
            or not _fits8(consumer.layer.out_quantizer) or not graph.single_call(consumer):
        return None
    return consumer


def _scale_ints(scales, scale_bits, channels):
    """The scales quantized on ``scale_bits`` as (s_int, s_frac) per channel (1, 0 without)."""
    if scales is None:
        return np.ones(channels), np.zeros(channels)
    qs = QFloat.quantize_scales(tf.constant(scales, tf.float32), scale_bits)
    return (np.broadcast_to(exact._np(qs.values), (channels,)).astype(np.float64),
            np.broadcast_to(exact._np(qs.frac_bits), (channels,)).astype(np.float64))


def _channel_const(values, shape):
    """A per-channel float32 constant broadcasting on a tensor of Keras shape ``shape``
    (NCHW when 4D)."""
    values = np.asarray(values, np.float32).reshape(-1)
    return values.reshape((1, -1, 1, 1) if len(shape) == 3 else (1,) * len(shape) + (-1,))


def _tie_break(b, y, frac_in, frac_out, unsigned, fused, shape):
    """Makes the QuantizeLinear (round half to even) of ``y``, a float on the grid
    ``2^-frac_in``, round ties up as quantizeml's rounded right shift does.

    The ties are ``k = frac_in - frac_out > 0`` shifted bits (none when ``k <= 0``). Adding
    half an input step ``2^-(frac_in + 1)`` before the QuantizeLinear is exact: the values
    are multiples of ``2^-frac_in``, so a tie moves up by half a step and no other value
    crosses a rounding boundary (returns ``(y + delta, None)``; ``delta`` is 0 on the channels
    with ``k <= 0``). onnxruntime no longer fuses
    the op and its QuantizeLinear then; where the outputs are >= 0 after the clip (unsigned
    quantizers) and ``k <= 5``, a QuantizeLinear scale shrunk by ``1 - 2^-(k + 9)`` does the
    same and keeps the fusion (returns ``(y, shrink)``): in output steps, values below 256
    grow by at most ``2^-(k + 1)``, less than their distance ``2^-k`` to a boundary, and ties
    (>= 0.5) by at least ``2^-(k + 10) >= 2^-15``, more than the float32 rounding of the
    quantization (``256 * 2^-24 = 2^-16``); negative values clip to 0 either way.
    """
    k = np.asarray(frac_in, np.float64) - np.asarray(frac_out, np.float64)
    if not np.any(k > 0):
        return y, None
    kmax = int(k.max())
    if fused and unsigned and kmax <= 5:
        return y, 1.0 - 2.0 ** -(kmax + 9)
    # no offset on the channels that shift no bit out (their values are output integers)
    delta = np.where(k > 0, np.power(2.0, -(np.broadcast_to(frac_in, np.shape(k)) + 1.0)), 0.0)
    return b.node("Add", [y, b.const(_channel_const(delta, shape))], "tie_up"), None


def _relu_high(relu, oq, frac_in, frac_out):
    """The largest output integer per channel: the rounded ReLU maximum taken on the input
    grid ``2^-frac_in`` (as QuantizedReLU / qfloat_requantization do) or the quantizer's."""
    top = 2.0 ** oq.value_bits - 1
    if relu is None or relu.max_value is None:
        return np.full(np.shape(frac_out), top)
    max_int = np.floor(float(relu.max_value) * np.power(2.0, frac_in))
    return np.minimum(np.floor(max_int * np.power(2.0, frac_out - frac_in) + 0.5), top)


def _tie_mismatches(mode, s_int, k, high, factor):
    """The accumulators on which onnxruntime's requantization differs from quantizeml's
    ``min(floor(acc * s_int * 2^-k + 1/2), high)`` (``acc >= 0`` integers; negative values
    clip to 0 either way), counted by enumeration around every tie.

    ``mode`` is how onnxruntime computes (float32 operations, rounded to nearest, then
    ``round_half_even``):

    * ``'mul'``: a fused int8 kernel (``QLinearConv``, ``QGemm``: MLAS requantization),
      ``float(acc) * M`` with the float32 multiplier ``M = x_scale * w_scale / y_scale``,
      here ``fl32(s_int * 2^-k)`` moved ``factor`` float32 ulps up;
    * ``'div'``: a ``QuantizeLinear`` of the exact float32 value ``acc * s_int * 2^-k``
      (scaled by the output step) divided by its scale, here ``2^-f`` moved ``factor`` ulps
      down.

    Both computations deviate from the exact value ``v`` by less than
    ``delta = v * (factor + 2) * 2^-23``, so only the accumulators within ``delta`` of a tie
    ``T = n + 1/2`` can round differently: those, ``floor(T / M) +- window``, are enumerated
    (``high + 1`` ties, a handful each). Returns the count, or None when the window would be
    too wide (tiny multipliers).
    """
    m = s_int * 2.0 ** -k
    delta = (high + 1.0) * (factor + 2) * 2.0 ** -23
    window = int(np.ceil(delta / m)) + 2
    if window > 64:
        return None
    ties = np.arange(high, dtype=np.float64) + 0.5
    acc = np.floor(ties / m)[:, None] + np.arange(-window, window + 1)[None, :]
    acc = np.unique(acc[acc >= 0]).astype(np.int64)
    keras = np.minimum((acc * int(s_int) + (1 << int(k - 1))) >> int(k), high)
    if mode == "mul":
        mult = np.float32(m)
        for _ in range(factor):
            mult = np.nextafter(mult, np.float32(np.inf))
        got = acc.astype(np.float32) * mult
    else:
        scale = np.float32(1.0)
        for _ in range(factor):
            scale = np.nextafter(scale, np.float32(0.0))
        got = (acc * int(s_int)).astype(np.float32) * np.float32(2.0 ** -k) / scale
    got = np.minimum(np.rint(got.astype(np.float32)), high)
    return int(np.sum(got != keras))


_MISMATCH_CACHE = {}


def _tie_factors(mode, s_int, k, high):
    """Per channel: how many float32 ulps (1 or 2, see ``_tie_mismatches``) to move the
    requantization scale so that onnxruntime rounds ties up, with the fewest mismatching
    accumulators, no more than its half-to-even rounding has (else 0, unchanged); and
    whether the chosen rounding is exact (no mismatch at all)."""
    s_int, k, high = (np.broadcast_to(np.asarray(v, np.float64), np.shape(s_int))
                      for v in (s_int, k, high))
    chosen = np.zeros(s_int.shape, np.int64)
    exact_ = np.zeros(s_int.shape, bool)
    for i, (s, kk, h) in enumerate(zip(s_int.tolist(), k.tolist(), high.tolist())):
        if kk < 1 or s <= 0 or s != int(s) or h < 1:
            exact_[i] = True  # no tie: the shift drops no bit (or nothing to round)
            continue
        counts = []
        for factor in (0, 1, 2):
            key = (mode, s, kk, h, factor)
            if key not in _MISMATCH_CACHE:
                _MISMATCH_CACHE[key] = _tie_mismatches(mode, s, kk, int(h), factor)
            counts.append(_MISMATCH_CACHE[key])
        if None in counts:
            continue
        best = 1 if counts[1] <= counts[2] else 2
        if counts[best] <= counts[0]:
            chosen[i] = best
        exact_[i] = counts[chosen[i]] == 0
    return chosen, exact_


def _requantized(b, y, oq, relu, frac_in, channels, shape, ties=None, shrink=None):
    """``[Relu] -> QuantizeLinear(oq's grid) -> [Clip of the ReLU maximum]`` on the float
    result ``y`` (NCHW when 4D) whose Keras integers have frac bits ``frac_in`` (the rounded
    ReLU maximum is taken on that grid, as QuantizedReLU / qfloat_requantization do).
    ``ties``: None (a multiplier requantization, its ties broken by the caller: the scales
    of ``_reduction``, or ``shrink``, the QuantizeLinear scale factors per channel), 'fused'
    or 'float': the rounded shift's ties broken up (``_tie_break``), keeping the fusion
    ('fused') where that is proven exact."""
    frac_out = np.broadcast_to(exact._np(oq.frac_bits).astype(np.float64), (channels,))
    if relu is not None:
        y = b.node("Relu", [y], "relu")
    high = None
    if relu is not None and relu.max_value is not None:
        high = _relu_high(relu, oq, frac_in, frac_out)
        if np.all(high == high[0]) and high[0] >= 2.0 ** oq.value_bits - 1:
            high = None
        elif not np.all(high == high[0]):  # per-channel maxima: a float Min before the Q
            bound = high * np.power(2.0, -frac_out)
            y = b.node("Min", [y, b.const(_channel_const(bound, shape))], "relu_max")
            high = None
    if ties is not None:
        y, shrink = _tie_break(b, y, frac_in, frac_out, relu is not None or not oq.signed,
                               ties == "fused", shape)
    q = _quantize(b, y, frac_out, not oq.signed, shape, shrink)
    if high is not None:
        zp = _zero(q.unsigned)
        low = np.array(zp + (0 if relu else -128), np.uint8)
        q.name = b.node("Clip", [q.name, b.const(low), b.const(np.array(zp + high[0], np.uint8))],
                        "relu_clip")
    return q


def _weights(layer, kind):
    """(int8 ONNX weights, frac bits per channel, scales or None, output channels)."""
    if kind == "depthwise_conv":
        kh, kw = layer.kernel_size
        _, _, channels, mult = layer.depthwise_kernel.shape
        wq = getattr(layer, layer.weight_keys[0])(
            tf.reshape(layer.depthwise_kernel, (kh, kw, 1, channels * mult)))
    else:
        wq = layer.weight_quantizer(layer.kernel)
    wfp = wq.fp if isinstance(wq, QFloat) else wq
    values = exact._np(wfp.values)
    if values.min() < -128 or values.max() > 127:
        return None
    w_int = values.astype(np.int8)
    out = w_int.shape[-1]
    if kind == "depthwise_conv":
        onnx_w = w_int.reshape(kh, kw, out).transpose(2, 0, 1)[:, None]
    elif kind == "conv":
        onnx_w = w_int.transpose(3, 2, 0, 1)
    else:
        onnx_w = w_int
    f_w = np.broadcast_to(exact._np(wfp.frac_bits).astype(np.float64), (out,))
    scales = getattr(wq, "scales", None)
    scales = None if scales is None else np.broadcast_to(exact._np(scales), (out,))
    return onnx_w, f_w, scales, out


def _bias_ints(layer, acc_frac, scales, channels):
    """The Keras bias integers on the accumulator grid (QuantizedReduction._quantized_bias)."""
    grid = QFloat(FixedPoint(tf.zeros((channels,)), 1, tf.constant(acc_frac, tf.float32),
                             clip=False),
                  tf.ones((channels,)) if scales is None else tf.constant(scales, tf.float32))
    values = exact._np(layer.bias_quantizer(layer.bias, grid).fp.values)
    return np.clip(values, -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int32)


def _reduction(b, graph, node, x, kind, options):
    """Conv2D, DepthwiseConv2D and Dense as a QDQ group; None when they cannot be mapped."""
    layer = node.layer
    if not isinstance(x, _Q) or getattr(layer, "padding_value", None) is not None:
        return None
    if kind == "dense" and len(x.shape) != 1:
        return None
    oq, relu_node, out_node = layer.out_quantizer, None, node
    consumer = graph.sole_consumer(node)
    if oq is None:
        relu_node = _relu_after(graph, node)
        if relu_node is not None:
            oq, out_node = relu_node.layer.out_quantizer, relu_node
    to_float = oq is None and consumer is not None and isinstance(consumer.layer, Dequantizer)
    if not (to_float or _fits8(oq)):
        return None
    weights = _weights(layer, kind)
    if weights is None:
        return None
    onnx_w, f_w, scales, out = weights
    f_x = float(x.frac.max())  # Keras aligns per-axis inputs on their largest frac bits
    acc_frac = f_x + f_w
    if to_float:
        s_mult, s_frac = (np.ones(out) if scales is None else scales.astype(np.float64)), 0.0
    else:
        s_mult, s_frac = _scale_ints(scales, oq.scale_bits, out)
    relu = None if relu_node is None else relu_node.layer
    frac_in = acc_frac + s_frac
    w_scale = (s_mult * np.power(2.0, -(s_frac + f_w))).astype(np.float32)
    float_dw = kind == "depthwise_conv" and options["depthwise"] == "float" and not to_float
    if float_dw:
        # the input's steps 2^-f_c (per input channel; Keras aligns them on 2^-f_x) go in
        # the float weights, in units of the accumulator step: 2^(f_x - f_c)
        in_steps = np.broadcast_to(x.frac, (x.shape[-1],))
        in_steps = np.repeat(np.power(2.0, f_x - in_steps), out // x.shape[-1])
    bias = _bias_ints(layer, acc_frac, scales, out) if layer.use_bias else None
    shrink = None
    stats = options["tie_stats"]
    unsigned_out = not to_float and (relu is not None or not oq.signed)
    if unsigned_out and options["ties"] == "half_up":
        frac_out = np.broadcast_to(exact._np(oq.frac_bits).astype(np.float64), (out,))
        k = frac_in - frac_out
        high = _relu_high(relu, oq, frac_in, frac_out)
        if float_dw:
            # a QuantizeLinear scale 1 or 2 ulps below 2^-frac_out breaks the ties up; exact
            # where the float Conv is, when no partial sum can leave the float32 integers of
            # the accumulator grid (each product x * w_int * s_int is one: |x| <= 255 steps),
            # else only where the data keep them there
            w_abs = np.abs(onnx_w.astype(np.float64)).reshape(out, -1).sum(axis=1)
            bound = (w_abs * in_steps * 255.0 + (0.0 if bias is None else np.abs(bias))) \
                * s_mult
            ulps, proven = _tie_factors("div", s_mult, k, high)
            proven &= bound < 2.0 ** 24
            if ulps.any():
                shrink = 1.0 - ulps * 2.0 ** -24
            stats.append((layer.name, out, int(proven.sum()), int((ulps > 0).sum())))
        elif x.per_tensor and frac_out.min() == frac_out.max():
            # the fused kernel requantizes fl32(float(acc) * x_scale * w_scale / y_scale)
            # (x_scale, y_scale powers of two): the weight scale 1 or 2 float32 ulps up
            # moves the multiplier as many ulps up
            ulps, proven = _tie_factors("mul", s_mult, k, high)
            up = np.nextafter(w_scale, np.float32(np.inf))
            w_scale = np.select([ulps == 1, ulps == 2],
                                [up, np.nextafter(up, np.float32(np.inf))],
                                w_scale).astype(np.float32)
            stats.append((layer.name, out, int(proven.sum()), int((ulps > 0).sum())))
    w_axis = 1 if kind == "dense" else 0
    if float_dw:
        # float weights times the input steps on the uint8 values cast to float (no
        # DequantizeLinear: onnxruntime would quantize the float weights of a Conv between a
        # DequantizeLinear and a QuantizeLinear, WeightBiasQuantization, then fuse it)
        w = b.const((onnx_w.astype(np.float64)
                     * (w_scale * np.power(2.0, -f_x) * in_steps).reshape(-1, 1, 1, 1))
                    .astype(np.float32), "w_float")
        v = b.node("Cast", [x.name], "dw_in", to=TensorProto.FLOAT)
        if not x.unsigned:
            v = b.node("Sub", [v, b.const(np.float32(_zero(False)), "zp")], "dw_in_signed")
        inputs = [v, w]
    else:
        w = b.node("DequantizeLinear", [b.const(onnx_w, "w"), b.const(w_scale, "w_scale"),
                                        b.const(np.zeros(out, np.int8), "w_zp")], "w_dq",
                   axis=w_axis)
        inputs = [_dq(b, x), w]
    if bias is not None:
        # the bias scale x_scale * w_scale, computed in float32 as onnxruntime does
        b_scale = (np.float32(2.0 ** -f_x) * w_scale).astype(np.float32)
        if float_dw:
            inputs.append(b.const((bias.astype(np.float64) * b_scale).astype(np.float32),
                                  "b_float"))
        else:
            inputs.append(b.node("DequantizeLinear", [
                b.const(bias, "bias"), b.const(b_scale, "b_scale"),
                b.const(np.zeros(out, np.int32), "b_zp")], "b_dq", axis=0))
    if kind == "dense":
        y = b.node("Gemm", inputs, "gemm")
        shape = (out,)
    else:
        h, w_, _ = x.shape
        kh, kw = layer.kernel_size
        (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
        ph = exact._pad_amounts(h, kh, sh, dh, layer.padding)
        pw = exact._pad_amounts(w_, kw, sw, dw, layer.padding)
        group = x.shape[-1] if kind == "depthwise_conv" else layer.groups
        y = b.node("Conv", inputs, "conv", kernel_shape=[kh, kw], strides=[sh, sw],
                   dilations=[dh, dw], pads=[ph[0], pw[0], ph[1], pw[1]], group=group)
        shape = ((h + sum(ph) - ((kh - 1) * dh + 1)) // sh + 1,
                 (w_ + sum(pw) - ((kw - 1) * dw + 1)) // sw + 1, out)
    if to_float:
        return out_node, (_to_nhwc(b, y) if len(shape) == 3 else y)
    return out_node, _requantized(b, y, oq, relu, frac_in, out, shape, shrink=shrink)


def _shifted_zero_points(xs, frac_out):
    """uint8 zero points ``z_i - a_i`` (``0 <= a_i <= z_i``) of the two inputs of an Add whose
    dequantized sum is then its value plus exactly 128 output steps:
    ``a_0 2^(frac_out - f_0) + a_1 2^(frac_out - f_1) = 128``; None when there are none."""
    (x0, x1), (z0, z1) = xs, (_zero(xs[0].unsigned), _zero(xs[1].unsigned))
    k0, k1 = float(x0.frac) - frac_out, float(x1.frac) - frac_out
    for a0 in range(z0 + 1):
        a1 = (128.0 - a0 * 2.0 ** -k0) * 2.0 ** k1
        if a1 == np.floor(a1) and 0 <= a1 <= z1:
            return z0 - a0, z1 - int(a1)
    return None


def _signed_add(b, xs, oq, options):
    """A signed 8-bit Add (no ReLU) that onnxruntime fuses (``QLinearAdd``) and that rounds
    like quantizeml, or None.

    Its output is the uint8 ``v + 128`` (the zero point 128 representation) computed as an
    unsigned one: the inputs' zero points are lowered (``_shifted_zero_points``) so that the
    dequantized sum is ``v + 128`` output steps, non-negative, and the QuantizeLinear (zero
    point 0) has the scale shrunk by ``1 - 2^-(k + 9)`` that breaks ties up (``_tie_break``,
    ``k <= 5`` shifted bits). Checked on all 65536 input pairs of the 227 configurations
    ``2 <= f_0, f_1 <= 8``, ``1 <= k <= 5`` that have such zero points, in onnxruntime 1.32.
    """
    if options["ties"] != "half_up" or not oq.signed or oq.bitwidth != 8 \
            or not all(x.per_tensor for x in xs):
        return None
    frac_out = exact._np(oq.frac_bits).astype(np.float64).reshape(-1)
    if frac_out.min() != frac_out.max():
        return None
    frac_out = float(frac_out[0])
    k = max(float(x.frac) for x in xs) - frac_out
    zps = _shifted_zero_points(xs, frac_out) if 1 <= k <= 5 else None
    if zps is None:
        return None
    dqs = [b.node("DequantizeLinear", [x.name, b.const(np.float32(2.0 ** -float(x.frac)), "scale"),
                                       b.const(np.uint8(zp), "zp")], "dq")
           for x, zp in zip(xs, zps)]
    y = b.node("Add", dqs, "add")
    q = _quantize(b, y, frac_out, True, xs[0].shape, 1.0 - 2.0 ** -(k + 9))
    q.unsigned = False  # the same uint8 values as the zero point 128 representation
    return q


def _add(b, graph, node, xs, options):
    layer = node.layer
    if not all(isinstance(x, _Q) for x in xs) or layer.average or xs[0].shape != xs[1].shape:
        return None
    oq, relu_node, out_node = layer.out_quantizer, None, node
    if oq is None:
        relu_node = _relu_after(graph, node)
        if relu_node is None:
            return None
        oq, out_node = relu_node.layer.out_quantizer, relu_node
    if not _fits8(oq):
        return None
    if relu_node is None:
        q = _signed_add(b, xs, oq, options)
        if q is not None:
            return out_node, q
    channels = xs[0].shape[-1]
    y = b.node("Add", [_dq(b, xs[0]), _dq(b, xs[1])], "add")
    frac_in = np.broadcast_to(np.maximum(xs[0].frac, xs[1].frac), (channels,))
    relu = None if relu_node is None else relu_node.layer
    return out_node, _requantized(b, y, oq, relu, frac_in, channels, xs[0].shape, "fused")


def _relu(b, node, x):
    layer = node.layer
    if not isinstance(x, _Q) or not _fits8(layer.out_quantizer):
        return None
    channels = x.shape[-1]
    frac_in = np.broadcast_to(x.frac, (channels,))
    return _requantized(b, _dq(b, x), layer.out_quantizer, layer, frac_in, channels, x.shape,
                        "float")


def _gap(b, node, x):
    layer = node.layer
    oq = layer.out_quantizer
    if not isinstance(x, _Q) or not _fits8(oq) or not x.nchw \
            or layer.data_format != "channels_last":
        return None
    h, w_, c = x.shape
    s_int, s_frac = _scale_ints(np.float32(1.0 / (h * w_)), oq.scale_bits, 1)
    v = b.node("ReduceSum", [_dq(b, x), b.i64([2, 3])], "gap_sum", keepdims=1)
    v = b.node("Mul", [v, b.const(np.float32(s_int[0] * 2.0 ** -s_frac[0]))], "gap_mean")
    shape = (1, 1, c)
    if not layer.keepdims:
        v = b.node("Reshape", [v, b.i64([0, c])], "gap_flat")
        shape = (c,)
    frac = np.broadcast_to(exact._np(oq.frac_bits).astype(np.float64), (c,))
    # the mean is on the grid 2^-(f_x + s_frac): break its ties up as the rounded shift
    frac_in = np.broadcast_to(float(x.frac.max()) + s_frac[0], (c,))
    v, _ = _tie_break(b, v, frac_in, frac, not oq.signed, False, shape)
    return _quantize(b, v, frac, not oq.signed, shape)


def _pass_through(b, node, x, kind):
    """MaxPool, ZeroPadding2D, Flatten, Reshape and the identity on the uint8 values."""
    layer = node.layer
    if not isinstance(x, _Q) or getattr(layer, "out_quantizer", None) is not None:
        return None
    if kind == "identity":
        return x
    if kind == "max_pool":
        if not x.nchw or layer.data_format != "channels_last":
            return None
        h, w_, c = x.shape
        (kh, kw), (sh, sw) = layer.pool_size, layer.strides
        ph = exact._pad_amounts(h, kh, sh, 1, layer.padding)
        pw = exact._pad_amounts(w_, kw, sw, 1, layer.padding)
        v = b.node("MaxPool", [x.name], "maxpool", kernel_shape=[kh, kw], strides=[sh, sw],
                   pads=[ph[0], pw[0], ph[1], pw[1]])
        shape = ((h + sum(ph) - kh) // sh + 1, (w_ + sum(pw) - kw) // sw + 1, c)
        return _Q(v, x.frac, x.unsigned, shape)
    if kind == "zero_pad":
        if not x.nchw:
            return None
        (top, bottom), (left, right) = layer.padding
        zero = b.const(np.array(_zero(x.unsigned), np.uint8), "pad_zero")
        v = b.node("Pad", [x.name, b.i64([0, 0, top, left, 0, 0, bottom, right]), zero],
                   "zero_pad", mode="constant")
        h, w_, c = x.shape
        return _Q(v, x.frac, x.unsigned, (h + top + bottom, w_ + left + right, c))
    if kind in ("flatten", "reshape"):
        if not x.per_tensor:
            return None
        target = tuple(int(d) for d in layer.output_shape[1:])
        v = _to_nhwc(b, x.name) if x.nchw else x.name
        v = b.node("Reshape", [v, b.i64([0] + list(target))], "reshape")
        q = _Q(v, x.frac, x.unsigned, target)
        if q.nchw:
            q.name = _to_nchw(b, v)
        return q
    return None


_PASS_THROUGH = ("identity", "max_pool", "zero_pad", "flatten", "reshape")


def _input_quantizer(b, layer, x, ties):
    """The InputQuantizer (<= 8 bits) of the float input ``x`` as uint8.

    quantizeml rounds ``x * 2^f`` half up; ``QuantizeLinear(x, 2^-f)`` rounds half to even.
    With ``ties='half_up'`` the rounding is explicit: ``Floor(x * 2^f + 1/2)`` in float32,
    exact (``x * 2^f`` is exact, and so is adding 1/2 below ``2^22``, beyond which values
    saturate anyway), then a ``QuantizeLinear`` of scale 1 that saturates the integers to the
    uint8 range (consumers dequantize them on ``2^-f``).
    """
    shape = tuple(int(d) for d in layer.input_shape[1:])
    frac = exact._np(layer.frac_bits).astype(np.float64)
    unsigned = not layer.signed
    if ties == "half_up":
        v = b.node("Mul", [x, b.const(np.power(2.0, frac).astype(np.float32), "x_mult")], "xs")
        v = b.node("Add", [v, b.const(np.float32(0.5), "half")], "xh")
        v = b.node("Floor", [v], "xr")
        v = _to_nchw(b, v) if len(shape) == 3 else v
        q = _quantize(b, v, 0.0, unsigned, shape)
        q.frac = np.asarray(frac.reshape(()) if frac.size == 1 else frac, np.float64)
    else:
        v = _to_nchw(b, x) if len(shape) == 3 else x
        q = _quantize(b, v, frac, unsigned, shape)
    if layer.bitwidth < 8:  # saturate to the quantizer's own range
        zp = _zero(unsigned)
        low = zp + (0 if unsigned else -2 ** layer.value_bits)
        q.name = b.node("Clip", [q.name, b.const(np.array(low, np.uint8)),
                                 b.const(np.array(zp + 2 ** layer.value_bits - 1, np.uint8))],
                        "x_clip")
    return q


def _emit(b, graph, node, args, fallbacks, options):
    """Writes one node; returns ``(node whose output it computes, state)``."""
    layer = node.layer
    x = args[0]
    if isinstance(layer, InputQuantizer) and isinstance(x, str):
        if layer.bitwidth <= 8:
            return node, _input_quantizer(b, layer, x, options["ties"])
        fallbacks.append(layer.name)
        shape = tuple(int(d) for d in layer.input_shape[1:])
        return node, _from_exact(b, exact._input_quantizer(b, layer, x, shape))
    if exact._float_emitter(layer) is not None:
        return node, exact._float_emitter(layer)[0](b, layer, [_as_float(b, a) for a in args])
    if isinstance(layer, Dequantizer):
        return node, _as_float(b, x)
    kind = _kind(layer)
    mapped = None
    if kind in ("conv", "depthwise_conv", "dense"):
        mapped = _reduction(b, graph, node, x, kind, options)
    elif kind == "add":
        mapped = _add(b, graph, node, args, options)
    elif kind == "relu":
        mapped = _relu(b, node, x)
        mapped = mapped if mapped is None else (node, mapped)
    elif kind == "global_average_pool":
        mapped = _gap(b, node, x)
        mapped = mapped if mapped is None else (node, mapped)
    elif kind in _PASS_THROUGH:
        mapped = _pass_through(b, node, x, kind)
        mapped = mapped if mapped is None else (node, mapped)
    if mapped is not None:
        return mapped
    # the exact form's emitter, on int64 values
    fallbacks.append(layer.name)
    xs = [_as_exact(b, a) for a in args]
    if isinstance(layer, OutputQuantizer):
        return node, _from_exact(b, exact._output_quantizer(b, xs[0], layer))
    return node, _from_exact(b, exact._emitter(layer)[0](b, layer, xs))


def export_qdq(qmodel, path=None, depthwise="int8", ties="half_up"):
    """Exports a quantized Keras model to the deployable int8 (QDQ) ONNX form.

    See the module docstring for the mapping. The graph's inputs are the float Keras inputs
    (NHWC, dynamic batch), its outputs the dequantized float outputs (named after the Keras
    outputs): within one output step of the Keras model at each requantization, not bit-exact.
    The layers written by the exact or float fallbacks are listed, comma-separated, in
    ``metadata_props`` under ``FALLBACKS_KEY``.

    Args:
        qmodel (keras.Model): a functional model from ``quantizeml.models.quantize``.
        path (str, optional): where to save the ONNX model. Defaults to None (not saved).
        depthwise (str, optional): 'int8' (the default): int8 weights behind a
            ``DequantizeLinear``, fused by onnxruntime into ``QLinearConv`` (``group=C``).
            'float': a float ``Conv`` on the uint8 values cast to float, with float weights
            (the int8 ones times their scales and the input step, no ``DequantizeLinear``:
            onnxruntime would quantize float weights between a DequantizeLinear and a
            QuantizeLinear and fuse them), then the ``QuantizeLinear``. It is not the
            default because it measures slower: onnxruntime 1.32 runs the int8 convolutions
            NHWC and the float ones NCHWc, and the transposes and reorders around each float
            depthwise cost more than the int8 kernel (MobileNetV2(0.35) at 96x96, batch 32:
            104 ms against 77 ms; an isolated 3x3 depthwise on 32x16x48x48: 2.5 ms float
            against 2.0 ms int8; ``benchmarks/deployment.py``).
        ties (str, optional): 'half_up' (the default) rounds ties up as quantizeml does where
            that is proven exact (see the module docstring); 'half_even' leaves the input
            quantization and the requantizations of the fused kernels to onnxruntime's
            rounding (half to even), the form before that.

    Returns:
        onnx.ModelProto: the exported model.

    Raises:
        ValueError: when the model has layers the exporter cannot export (all listed), or
            for an unknown ``depthwise`` or ``ties``.
    """
    if not isinstance(qmodel, keras.Model) or getattr(qmodel, "inputs", None) is None:
        raise ValueError(f"export expected a functional keras.Model. Received: {qmodel!r}")
    if depthwise not in DEPTHWISE:
        raise ValueError(f"export_qdq expected depthwise in {DEPTHWISE}. "
                         f"Received: depthwise={depthwise!r}")
    if ties not in TIES:
        raise ValueError(f"export_qdq expected ties in {TIES}. Received: ties={ties!r}")
    options = {"depthwise": depthwise, "ties": ties, "tie_stats": []}
    exact._check_supported(qmodel)
    b = exact._Builder()
    graph = Graph(qmodel)
    states, graph_inputs, fallbacks, done = {}, [], [], set()
    for layer, ref in zip(graph.input_layers, graph.inputs):
        info, states[ref.key] = exact.graph_input(b, layer, ref)
        graph_inputs.append(info)
    for node in graph.nodes:
        if node.index in done:
            continue
        args = [states[ref.key] for ref in node.inputs]
        if any(isinstance(a, str) for a in args) and exact._float_emitter(node.layer) is None \
                and not isinstance(node.layer, (InputQuantizer, Dequantizer)) \
                and not getattr(twin_spec(node.layer), "float_inputs", False):
            raise ValueError(f"export expected quantized inputs for {node.layer.name} "
                             f"({type(node.layer).__name__}).")
        out_node, state = _emit(b, graph, node, args, fallbacks, options)
        done.add(out_node.index)
        states[out_node.outputs[0].key] = state
    outputs = []
    for ref in graph.outputs:
        name = graph.producer(ref).layer.name
        b.nodes.append(oh.make_node("Identity", [_as_float(b, states[ref.key])], [name],
                                    name=b.uid("Identity")))
        fshape = ref.shape[1:]
        fshape = ["N"] + [None if d is None else int(d) for d in fshape] \
            if fshape.rank is not None else None
        outputs.append(oh.make_tensor_value_info(name, TensorProto.FLOAT, fshape))
    onnx_graph = oh.make_graph(b.nodes, qmodel.name, graph_inputs, outputs,
                               initializer=b.inits)
    model = oh.make_model(onnx_graph, opset_imports=[oh.make_opsetid("", exact.OPSET)],
                          producer_name="quantizeml")
    model.ir_version = 8
    stats = options["tie_stats"]
    oh.set_model_props(model, {FALLBACKS_KEY: ",".join(fallbacks), TIES_KEY: json.dumps({
        "ties": ties, "channels": sum(s[1] for s in stats),
        "exact": sum(s[2] for s in stats), "ties_up": sum(s[3] for s in stats)})})
    if path is not None:
        onnx.save(model, path)
    return model
