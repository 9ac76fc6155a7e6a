"""Plumbing shared by the quantized layers that reduce their inputs with weights.

Convolutions (plain, transposed, depthwise, separable) and Dense all follow the same integer
recipe, implemented once here:

1. input alignment (:meth:`QuantizedReduction.aligned_inputs`): the inputs of a per-axis
   FixedPoint are aligned on one fractional bit (their largest, an exact left shift); the
   shifts are applied to the weights' input channels instead of the (larger) inputs, which
   gives the same integer sums (see :meth:`QuantizedReduction.accumulate`); a QFloat
   contributes its FixedPoint and its scales, which are folded into the output scales;
2. weights: ``w = weight_quantizer(kernel)`` (a QFloat, or a FixedPoint with fp_quantizer);
3. accumulator (:meth:`QuantizedReduction.accumulate`): ``acc = sum(x_int * w_int)`` computed
   exactly by :func:`~quantizeml.tensors.carrier.exact_reduction` with
   ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales``;
4. bias (:meth:`QuantizedReduction.add_bias`): ``b = bias_quantizer(bias, acc)`` on the grid of
   the accumulator, added exactly;
5. the result is clipped to the ``buffer_bitwidth`` integer buffer (saturation recorded) and,
   when an ``output_quantizer`` is configured, requantized to its bitwidth.
"""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat
from ..tensors.carrier import (BUFFER_BITS, MAX_VALUE_BITS, SPLIT_VALUE_BITS, carrier_dtype,
                               exact_reduction, max_abs, reduction_parts)
from ..tensors.dispatch.common import bits_for
from ..tensors.fixed_point import fold_static, static_max
from ..tensors.fusion import Deferred, fused, fuses, sum_parts, taping
from ..tensors.qtensor import is_per_tensor
from .base import buffer_add, check_qtensor, clip_to_buffer, saturation_observed
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .quantizers import AlignedWeightQuantizer, WeightQuantizer

#: quant_config keys shared by every reducing layer (the weight keys are per layer).
COMMON_KEYS = ("bias_quantizer", *OUTPUT_KEYS)
#: Defaults of the sub-quantizers.
WEIGHT_DEFAULTS = {"bitwidth": 8, "axis": -1}
BIAS_DEFAULTS = {"bitwidth": 16}


def check_linear_activation(layer_name, activation):
    """Raises a ValueError unless ``activation`` is None or linear."""
    if activation is None:
        return
    if keras.activations.serialize(keras.activations.get(activation)) != "linear":
        raise ValueError(f"Layer {layer_name}: activation expected None or 'linear' (split the "
                         "activation into its own layer, e.g. with sanitize()). "
                         f"Received: activation={activation!r}")


def check_channels_last(layer_name, data_format):
    """Raises a ValueError unless the data format is channels_last."""
    if data_format not in (None, "channels_last"):
        raise ValueError(f"Layer {layer_name}: data_format expected 'channels_last'. "
                         f"Received: data_format={data_format!r}")


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


def to_single_frac_bits(fp):
    """Expands a per-axis FixedPoint to one fractional bit (its maximum), exactly.

    The value bits grow by the largest shift when it is known statically, otherwise they are
    widened to the 32-bit buffer (FixedPoint.expand checks at run time that nothing is lost).
    """
    if fp.per_tensor:
        return fp
    max_shift = static_max(tf.reduce_max(fp.frac_bits) - fp.frac_bits)
    return fp.expand(aligned_value_bits(fp.value_bits, max_shift))[0]


def aligned_value_bits(value_bits, max_shift):
    """Value bits of per-axis values shifted left by at most ``max_shift`` (a static int, or
    None when only known at run time: the 32-bit buffer, checked at run time)."""
    widened = BUFFER_BITS - 1 if max_shift is None else value_bits + int(max_shift)
    return min(max(widened, value_bits), MAX_VALUE_BITS)


class QuantizedReduction(QuantConfigMixin):
    """Mixin of the quantized layers that reduce inputs with weights (see module docstring).

    It extends :class:`~quantizeml.layers.quant_config.QuantConfigMixin` (``quant_config``,
    ``buffer_bitwidth``, ``out_quantizer`` and ``get_config``). A subclass calls
    :meth:`init_reduction` in its ``__init__`` (after the Keras layer ``__init__``), then, in
    ``call``: :meth:`aligned_inputs`, :meth:`quantize_weights`,
    :meth:`accumulate`, :meth:`add_bias` and :meth:`finalize`.
    """

    #: quant_config keys of the weight quantizers (one attribute of the same name each).
    weight_keys = ("weight_quantizer",)

    def init_reduction(self, quant_config, activation=None, data_format=None):
        """Validates ``quant_config`` and creates the sub-quantizers (weights, bias, output)."""
        check_linear_activation(self.name, activation)
        check_channels_last(self.name, data_format)
        self._init_quant_config(quant_config, (*self.weight_keys, *COMMON_KEYS))
        for key in self.weight_keys:
            kwargs = {**WEIGHT_DEFAULTS, **self.quant_config.get(key, {})}
            if kwargs["axis"] not in (None, -1):
                raise ValueError(f"Layer {self.name}: {key} axis expected -1 (per output "
                                 "channel) or None (per tensor). "
                                 f"Received: axis={kwargs['axis']!r}")
            setattr(self, key, WeightQuantizer(name=f"{self.name}/{key}", **kwargs))
        bias_kwargs = {**BIAS_DEFAULTS, **self.quant_config.get("bias_quantizer", {})}
        self.bias_quantizer = AlignedWeightQuantizer(name=self.name + "/bias_quantizer",
                                                     **bias_kwargs)

    def aligned_inputs(self, inputs, per_tensor=True):
        """Checks the inputs; returns their FixedPoint and scales (None for a FixedPoint).

        Args:
            inputs (QTensor): a FixedPoint or a QFloat.
            per_tensor (bool, optional): True when the layer sums over the input channels:
                QFloat scales must then be per-tensor, and :meth:`accumulate` aligns a
                per-axis FixedPoint on one fractional bit. Defaults to True.

        Raises:
            TypeError: for inputs that are not QTensors.
            ValueError: for per-axis QFloat scales where per-tensor ones are required.
        """
        check_qtensor(self, inputs, (FixedPoint, QFloat))
        fp, scales = split_qtensor(inputs)
        if per_tensor:
            if scales is not None and not is_per_tensor(scales):
                raise ValueError(f"Layer {self.name} ({type(self).__name__}) expected a QFloat "
                                 "with per-tensor scales (its inputs channels are summed). "
                                 f"Received: scales of shape {scales.shape}")
        return fp, scales

    def quantize_weights(self, key, kernel, training=None):
        """Quantizes a float kernel (output channels last) with the quantizer ``key``."""
        return getattr(self, key)(kernel, training=training)

    @staticmethod
    def accumulate(fn, x, w, x_scales=None, frac_bits=None, scales=None, with_bound=False):
        """Exact integer reduction ``fn(x_int, w_int)`` as a FixedPoint (QFloat with scales).

        Args:
            fn (callable): the reduction on the integer carriers, taking the weights in the
                layout of ``w`` (output channels last).
            x (FixedPoint): the inputs. Per-axis ones (when ``frac_bits`` is None) are aligned
                on their largest fractional bits by shifting the weights of their channels
                (axis -2 of ``w``), which gives the sums of the aligned inputs exactly.
            w (QTensor): the quantized weights, output channels last; every output sums at most
                ``prod(w.shape[:-1])`` products.
            x_scales (tf.Tensor, optional): the input scales. Defaults to None.
            frac_bits (tf.Tensor, optional): the accumulator fractional bits. Defaults to
                ``x.frac_bits + w.frac_bits``.
            scales (tf.Tensor, optional): the accumulator scales. Defaults to
                ``x_scales * w.scales``.
            with_bound (bool, optional): also return a float64 scalar bounding the magnitude
                of the accumulator values (for :meth:`add_bias`). Defaults to False.

        Returns:
            QTensor: the accumulator (value bits from the static bound, up to 52), and its
            bound when ``with_bound``.
        """
        terms = _Terms(fn, x, w, x_scales, frac_bits, scales)
        acc, bound = terms.accumulator()
        return (acc, bound) if with_bound else acc

    def add_bias(self, acc, bias, training=None, acc_bound=None):
        """Clips ``acc`` to the buffer and adds the bias quantized on its grid (if any), the
        sum clipped to the buffer: ``clip(clip(acc) + b)``.

        When ``max|acc| + max|b|`` fits the buffer (``max|acc|`` from ``acc_bound``, the value
        bits of ``acc``, or read from its values when they exceed the buffer), neither clip can
        change a value: the sum is then computed alone.
        """
        fp, scales = split_qtensor(acc)
        if bias is None:
            return as_qtensor(clip_to_buffer(self, fp, self.buffer_bitwidth), scales)
        bias_fp = self._quantized_bias(bias, fp.frac_bits, scales, training)
        dtype = carrier_dtype(max(fp.value_bits, bias_fp.value_bits) + 1)

        def exact_sum():
            # one fused kernel in graphs (the accumulator is often cast to a wider carrier)
            return fused(lambda a, b: tf.cast(a, dtype) + tf.cast(b, dtype),
                         fp.values, bias_fp.values)

        def clipped_sum():
            return self._clipped_bias_sum(fp, bias_fp)

        if saturation_observed(fp.values):
            # eager: the clipped path records the saturation of both clips
            values = tf.cast(clipped_sum(), dtype)
        else:
            values = tf.cond(self._fits_buffer(fp.value_bits, acc_bound, lambda: fp.values,
                                               bias_fp),
                             exact_sum, lambda: tf.cast(clipped_sum(), dtype))
        total = FixedPoint(values, self.buffer_bitwidth - 1, fp.frac_bits, clip=False)
        return as_qtensor(total, scales)

    def _quantized_bias(self, bias, frac_bits, scales, training):
        """The bias quantized on the accumulator grid (``frac_bits`` and ``scales``), as a
        FixedPoint."""
        grid = QFloat(FixedPoint(tf.zeros_like(bias), 1, frac_bits, clip=False),
                      tf.ones_like(bias) if scales is None else scales)
        return self.bias_quantizer(bias, grid, training=training).fp

    def _fits_buffer(self, value_bits, bound, values_fn, bias_fp):
        """bool tensor: whether ``max|acc| + max|b|`` fits the buffer, so that no buffer clip
        can change a value. ``max|acc|`` comes from the accumulator's value bits, else from
        ``bound`` (its run-time bound, None if unknown) when that proves it, else from its
        values (``values_fn()``, read only then)."""
        int_max = 2.0**(self.buffer_bitwidth - 1) - 1
        bias_max = tf.cast(tf.reduce_max(tf.abs(bias_fp.values)), tf.float64)
        if value_bits <= self.buffer_bitwidth - 1:
            acc_max = tf.constant(2.0**value_bits, tf.float64)
        elif bound is None:
            acc_max = max_abs(values_fn())
        else:
            acc_max = tf.cond(bound + bias_max <= int_max, lambda: bound,
                              lambda: max_abs(values_fn()))
        return acc_max + bias_max <= int_max

    def _clipped_bias_sum(self, fp, bias_fp):
        """``clip(clip(acc) + b)`` to the buffer (saturation recorded)."""
        clipped = clip_to_buffer(self, fp, self.buffer_bitwidth)
        return buffer_add(self, clipped, bias_fp, self.buffer_bitwidth).values

    def reduce(self, fn, x, w, x_scales=None, bias=None, training=None, frac_bits=None,
               scales=None):
        """:meth:`accumulate` (``frac_bits`` and ``scales`` as there) then :meth:`add_bias`
        (``bias`` None: no bias).

        In fused graphs (see :mod:`~quantizeml.tensors.fusion`) the quantized bias is added
        without a pass of its own over the accumulator: in train steps in the kernel that
        casts the reduction's result to float64, the buffer clips running only when the bounds
        do not prove them useless (:meth:`_fused_bias_sum`); in inference graphs in the kernel
        of the requantization that follows, the buffer clips included (:meth:`_deferred_sum`).
        """
        if bias is None or not fuses(under_tape=True) or saturation_observed(x.values):
            # (eager and compiled eager calls record the saturation of the buffer clips)
            acc, bound = self.accumulate(fn, x, w, x_scales, frac_bits, scales, with_bound=True)
            return self.add_bias(acc, bias, training, bound)
        terms = _Terms(fn, x, w, x_scales, frac_bits, scales)
        if terms.value_bits > MAX_VALUE_BITS:
            acc, bound = terms.accumulator()
            return self.add_bias(acc, bias, training, bound)
        bias_fp = self._quantized_bias(bias, terms.frac_bits, terms.scales, training)
        bias_values = tf.cast(bias_fp.values, tf.float64)
        if not taping() and terms.value_bits <= SPLIT_VALUE_BITS:
            values = self._deferred_sum(terms, bias_values)
        else:
            values = self._fused_bias_sum(terms, bias_fp, bias_values)
        return as_qtensor(FixedPoint(values, self.buffer_bitwidth - 1, terms.frac_bits,
                                     clip=False), terms.scales)

    def _fused_bias_sum(self, terms, bias_fp, bias_values):
        """The accumulator plus bias (float64) of :meth:`reduce` in train steps (and for sums
        past 48 bits): the bias is added in the kernel that casts the reduction's result to
        float64 (a custom gradient, see :func:`~quantizeml.tensors.carrier.exact_reduction`)."""
        total, bound = terms.reduce(addend=bias_values)

        def accumulator():
            # recovered exactly (integers in float64)
            return FixedPoint(total - bias_values, terms.value_bits, terms.frac_bits,
                              clip=False)

        return tf.cond(
            self._fits_buffer(terms.value_bits, bound, lambda: accumulator().values, bias_fp),
            lambda: total,
            lambda: tf.cast(self._clipped_bias_sum(accumulator(), bias_fp), tf.float64))

    def _deferred_sum(self, terms, bias_values):
        """The accumulator plus bias (in the buffer's carrier) of :meth:`reduce` in inference
        graphs, deferred (see :class:`~quantizeml.tensors.fusion.Deferred`) as the float32
        parts of the reduction and the bias: a requantization that follows adds them in its
        own kernel, and no float64 tensor is written. The buffer clips,
        ``clip(clip(acc) + b)``, run in that kernel too (two comparisons per value, a no-op
        where the sums fit): no bound to check, no conditional op."""
        parts, _ = terms.parts()
        low, high = -2.0**(self.buffer_bitwidth - 1), 2.0**(self.buffer_bitwidth - 1) - 1

        def clipped_sum(*parts):
            acc = tf.minimum(tf.maximum(sum_parts(*parts[:-1]), low), high)
            return tf.minimum(tf.maximum(acc + parts[-1], low), high)

        return Deferred((*parts, bias_values), clipped_sum,
                        carrier_dtype(self.buffer_bitwidth - 1)).values()

    def finalize(self, acc):
        """Clips to the buffer, then applies the output quantizer (if any)."""
        fp, scales = split_qtensor(acc)
        acc = as_qtensor(clip_to_buffer(self, fp, self.buffer_bitwidth), scales)
        if self.out_quantizer is not None:
            return self.out_quantizer(acc)
        return acc


class _Terms:
    """The operands of an exact reduction (see :meth:`QuantizedReduction.accumulate`): the
    integer inputs and weights (per-axis inputs aligned through the weights), the static bound
    ``value_bits`` of the sums, and the accumulator's ``frac_bits`` and ``scales``."""

    def __init__(self, fn, x, w, x_scales=None, frac_bits=None, scales=None):
        wf, w_scales = split_qtensor(w)
        terms = 1
        for dim in w.shape[:-1]:
            terms *= int(dim)
        w_values, x_bits, checks = wf.values, x.value_bits, []
        if frac_bits is None and not x.per_tensor:
            # Per-axis inputs, summed over their channels (axis -2 of w): aligned on their
            # largest fractional bits, ``x_c * 2^shift_c``. The shifts multiply the weights of
            # each input channel instead: same integer sums, and the inputs keep their carrier.
            target = fold_static(tf.reduce_max, x.frac_bits)
            shift = fold_static(tf.subtract, target, x.frac_bits)
            max_shift = static_max(shift)
            x_bits = aligned_value_bits(x.value_bits, max_shift)
            if max_shift is None:
                # as FixedPoint.expand: aligned inputs within the 32-bit buffer, checked
                checks = x._assert_fits(shift, x_bits, f"the inputs aligned on one fractional "
                                                       f"bit exceed {x_bits} value bits")
            factors = tf.pow(tf.constant(2.0, w_values.dtype), tf.cast(shift, w_values.dtype))
            w_values = w_values * tf.reshape(factors, [-1, 1])
            x = FixedPoint(x.values, x.value_bits, target, clip=False)
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
        :func:`~quantizeml.tensors.carrier.reduction_parts`."""
        with tf.control_dependencies(self.checks):
            return reduction_parts(self.fn, self.x.values, self.w_values, self.value_bits,
                                   x_bits=self.x.value_bits)

    def reduce(self, addend=None):
        """(sums, bound of their magnitudes), plus ``addend`` (float64) when given."""
        with tf.control_dependencies(self.checks):
            return exact_reduction(self.fn, self.x.values, self.w_values, self.value_bits,
                                   x_bits=self.x.value_bits, with_bound=True, addend=addend)
