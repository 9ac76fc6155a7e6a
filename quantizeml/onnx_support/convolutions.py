"""Exact ONNX emitters of the convolutions beyond Conv2D/DepthwiseConv2D: the transposed ones
(QuantizedConv2DTranspose, QuantizedDepthwiseConv2DTranspose) and QuantizedSeparableConv2D.

A transposed convolution is written as the equivalent forward convolution (exact in integers):
the inputs are spread with ``stride - 1`` zeros between them (``Unsqueeze``, ``Pad``,
``Reshape``), padded (or cropped) so that output ``o`` reads the inputs ``i`` with
``o + before = i * stride + kk * dilation`` (``before`` the 'same' padding that TensorFlow's
``conv2d_backprop_input`` derives from the output size), and convolved with the spatially
flipped kernel by the 8-bit limbs ``ConvInteger`` of :func:`export.exact_reduction`. The
separable convolution is the depthwise accumulator (exact, clipped to the buffer, aligned on one
fractional bit), then a 1x1 ``ConvInteger`` with the pointwise kernel in which the layer folded
the depthwise scales (``QuantizedSeparableConv2D.folded_pointwise_kernel``).
"""
import numpy as np
import tensorflow as tf

from ..layers.convolution import deconv_length
from ..tensors import MAX_VALUE_BITS, QFloat, bits_for
from .exact import (_T, _check_qfloat_input, _fold_scales, _int8_weights, _np, _one_input,
                    _pad_amounts, _reduction_output, align, clip_to_buffer, exact_reduction,
                    register_emitters)

__all__ = ["EMITTERS"]


def _static_nhwc(layer, x):
    if x.shape is None or len(x.shape) != 3 or None in x.shape:
        raise ValueError(f"export expected static 4D inputs for {layer.name} "
                         f"({type(layer).__name__}). Received: shape {x.shape}")
    return tuple(int(d) for d in x.shape)


def _crop_pad(b, v, pads):
    """Pads (positive amounts) or crops (negative ones) the rows and columns of NHWC ``v``:
    ``pads = [(top, bottom), (left, right)]``, the cropped extents given as static sizes."""
    (top, bottom), (left, right), sizes = pads[0], pads[1], pads[2]
    if min(top, bottom, left, right) < 0:
        h, w_ = sizes
        starts = [max(-top, 0), max(-left, 0)]
        ends = [h - max(-bottom, 0), w_ - max(-right, 0)]
        v = b.node("Slice", [v, b.i64(starts), b.i64(ends), b.i64([1, 2])], "tc_crop")
    if max(top, bottom, left, right) > 0:
        amounts = [0, max(top, 0), max(left, 0), 0, 0, max(bottom, 0), max(right, 0), 0]
        v = b.node("Pad", [v, b.i64(amounts), b.i64(0)], "tc_pad", mode="constant")
    return v


def _conv_accumulator(b, x, onnx_w, strides, dilations, group, terms, w_bits):
    """``ConvInteger`` (8-bit limbs) of NHWC int64 ``x`` (a ``_T``, already padded) with the
    int8 ONNX kernel (M, C / group, kh, kw): the int64 NHWC accumulator and its value bits."""
    xv = b.node("Transpose", [x.name], "nchw", perm=[0, 3, 1, 2])
    padded = _T(xv, x.vb, 0, None, x.unsigned)
    wname = b.const(onnx_w.astype(np.int8), "w")

    def make_op(u, zp):
        return b.node("ConvInteger", [u, wname] + ([zp] if zp else []), "conv",
                      strides=list(strides), dilations=list(dilations), group=group)
    acc = exact_reduction(b, padded, make_op, terms)
    acc = b.node("Transpose", [acc], "nhwc", perm=[0, 2, 3, 1])
    return acc, min(bits_for(terms * 2.0 ** (x.vb + w_bits)), MAX_VALUE_BITS)


def _transposed(b, layer, x, w_int, group, terms, w_bits):
    """The accumulator of a transposed convolution of ``x`` (a ``_T``) with the integer kernel
    ``w_int`` (kh, kw, C / group, M) in the forward layout: returns (name, vb, out shape)."""
    h, w_, _ = _static_nhwc(layer, x)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    dh, dw = layer.dilation_rate
    out_pad = layer.output_padding or (None, None)
    sizes = (h, w_)
    outs = [deconv_length(sizes[i], layer.kernel_size[i], layer.padding, out_pad[i],
                          layer.strides[i], layer.dilation_rate[i]) for i in range(2)]
    v = x.name
    spread = (h * sh, w_ * sw)
    if sh > 1 or sw > 1:  # x[i] at i * stride, zeros between (and stride - 1 after the last)
        v = b.node("Unsqueeze", [v, b.i64([2, 4])], "tc_unsq")
        v = b.node("Pad", [v, b.i64([0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1, 0]), b.i64(0)],
                   "tc_spread", mode="constant")
        v = b.node("Reshape", [v, b.i64([-1, spread[0], spread[1], x.shape[2]])], "tc_spread")
    pads = []
    for i, (k, s, d) in enumerate(((kh, sh, dh), (kw, sw, dw))):
        effective = (k - 1) * d + 1
        before = 0
        if layer.padding == "same":  # the forward conv from the output size back to the input
            before = max((sizes[i] - 1) * s + effective - outs[i], 0) // 2
        first = effective - 1 - before
        last = outs[i] + effective - 1 - first - spread[i]
        pads.append((first, last))
    v = _crop_pad(b, v, (pads[0], pads[1], spread))
    flipped = w_int[::-1, ::-1]
    onnx_w = flipped.transpose(3, 2, 0, 1)
    xt = _T(v, x.vb, 0, None, x.unsigned)
    acc, _ = _conv_accumulator(b, xt, onnx_w, (1, 1), (dh, dw), group, terms, w_bits)
    return acc, (outs[0], outs[1])


def _conv_transpose(b, layer, x):
    """QuantizedConv2DTranspose: the spread, padded inputs convolved with the flipped kernel;
    then the bias on the accumulator grid and the output quantizer (as QuantizedConv2D)."""
    _static_nhwc(layer, x)
    _check_qfloat_input(layer, x)
    xin = align(b, x)
    wq = layer.weight_quantizer(layer.quantizer_kernel())  # (kh, kw, C, filters)
    wfp = wq.fp if isinstance(wq, QFloat) else wq
    w_int = _int8_weights(layer, wfp)
    kh, kw, c, filters = w_int.shape
    terms = kh * kw * c
    acc, (oh_, ow) = _transposed(b, layer, xin, w_int, 1, terms, wfp.value_bits)
    acc_vb = min(bits_for(terms * 2.0 ** (xin.vb + wfp.value_bits)), MAX_VALUE_BITS)
    frac = xin.frac + _np(wfp.frac_bits).astype(np.float64)
    scales = _fold_scales(x.scales, getattr(wq, "scales", None))
    return _reduction_output(b, layer, acc, acc_vb, frac, scales, filters, (oh_, ow, filters))


def _depthwise_weights(layer, x, key):
    """The depthwise kernel (kh, kw, C, M) quantized as (kh, kw, 1, C * M): the int8 values
    (kh, kw, C, M), the weights' FixedPoint and QTensor, and the output frac bits and scales."""
    kernel = layer.depthwise_kernel
    kh, kw, channels, mult = kernel.shape
    wq = getattr(layer, key)(tf.reshape(kernel, (kh, kw, 1, channels * mult)))
    wfp = wq.fp if isinstance(wq, QFloat) else wq
    w_int = _int8_weights(layer, wfp).reshape(kh, kw, channels, mult)
    x_frac = x.frac if x.frac.size == 1 else np.repeat(x.frac.reshape(-1), mult)
    frac = x_frac + _np(wfp.frac_bits).astype(np.float64)
    x_scales = x.scales
    if x_scales is not None and x_scales.size > 1 and mult > 1:
        x_scales = np.repeat(x_scales.reshape(-1), mult)
    scales = _fold_scales(x_scales, getattr(wq, "scales", None))
    return w_int, wfp, frac, scales


def _depthwise_conv_transpose(b, layer, x):
    """QuantizedDepthwiseConv2DTranspose: the transposed convolution of each channel alone
    (``group = C``); per-axis inputs as they are."""
    _static_nhwc(layer, x)
    w_int, wfp, frac, scales = _depthwise_weights(layer, x, layer.weight_keys[0])
    kh, kw, channels, mult = w_int.shape
    grouped = w_int.reshape(kh, kw, 1, channels * mult)  # (kh, kw, C / group, M)
    acc, (oh_, ow) = _transposed(b, layer, x, grouped, channels, kh * kw, wfp.value_bits)
    acc_vb = min(bits_for(kh * kw * 2.0 ** (x.vb + wfp.value_bits)), MAX_VALUE_BITS)
    return _reduction_output(b, layer, acc, acc_vb, frac, scales, channels * mult,
                             (oh_, ow, channels * mult))


def _separable_conv(b, layer, x):
    """QuantizedSeparableConv2D: the exact depthwise accumulator (clipped to the buffer,
    aligned on one fractional bit), then the 1x1 ``ConvInteger`` with the pointwise kernel that
    folds the depthwise scales, the bias and the output quantizer."""
    h, w_, _ = _static_nhwc(layer, x)
    w_int, wfp, frac, d_scales = _depthwise_weights(layer, x, "dw_weight_quantizer")
    kh, kw, channels, mult = w_int.shape
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    ph = _pad_amounts(h, kh, sh, dh, layer.padding)
    pw = _pad_amounts(w_, kw, sw, dw, layer.padding)
    v = x.name
    if any(ph) or any(pw):
        v = b.node("Pad", [v, b.i64([0, ph[0], pw[0], 0, 0, ph[1], pw[1], 0]), b.i64(0)],
                   "sep_pad", mode="constant")
    onnx_w = w_int.reshape(kh, kw, channels * mult).transpose(2, 0, 1)[:, None]
    xt = _T(v, x.vb, 0, None, x.unsigned)
    acc, _ = _conv_accumulator(b, xt, onnx_w, (sh, sw), (dh, dw), channels, kh * kw,
                               wfp.value_bits)
    out_h = (h + sum(ph) - ((kh - 1) * dh + 1)) // sh + 1
    out_w = (w_ + sum(pw) - ((kw - 1) * dw + 1)) // sw + 1
    depth = channels * mult
    acc_vb = min(bits_for(kh * kw * 2.0 ** (x.vb + wfp.value_bits)), MAX_VALUE_BITS)
    d = _T(acc, acc_vb, frac, d_scales, False, (out_h, out_w, depth))
    d = align(b, clip_to_buffer(b, d, layer.buffer_bitwidth))
    kernel, common = layer.folded_pointwise_kernel(
        None if d_scales is None else tf.constant(d_scales))
    pq = layer.pw_weight_quantizer(kernel)
    pfp = pq.fp if isinstance(pq, QFloat) else pq
    p_int = _int8_weights(layer, pfp)  # (1, 1, C * M, filters)
    filters = p_int.shape[-1]
    acc, _ = _conv_accumulator(b, d, p_int.transpose(3, 2, 0, 1), (1, 1), (1, 1), 1, depth,
                               pfp.value_bits)
    acc_vb = min(bits_for(depth * 2.0 ** (d.vb + pfp.value_bits)), MAX_VALUE_BITS)
    frac = d.frac + _np(pfp.frac_bits).astype(np.float64)
    common = None if common is None else _np(common).astype(np.float32)
    scales = _fold_scales(common, getattr(pq, "scales", None))
    return _reduction_output(b, layer, acc, acc_vb, frac, scales, filters,
                             (out_h, out_w, filters))


#: Emitter name (``TwinSpec.export``) -> ``(emit, refuses)``, merged into ``export.EMITTERS``.
EMITTERS = {
    "conv_transpose": (_one_input(_conv_transpose), None),
    "depthwise_conv_transpose": (_one_input(_depthwise_conv_transpose), None),
    "separable_conv": (_one_input(_separable_conv), None),
}
register_emitters(EMITTERS)
