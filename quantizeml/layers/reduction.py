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
   exactly by :func:`~quantizeml.recipes.reduction.exact_reduction` with
   ``frac_bits = x.frac_bits + w.frac_bits`` and ``scales = x.scales * w.scales``;
4. bias (:meth:`QuantizedReduction.add_bias`): ``b = bias_quantizer(bias, acc)`` on the grid of
   the accumulator, added exactly;
5. the result is clipped to the ``buffer_bitwidth`` integer buffer (saturation recorded) and,
   when an ``output_quantizer`` is configured, requantized to its bitwidth.

The integer maths of each step is a recipe of :mod:`quantizeml.recipes` (alignment, exact
reduction, bias on the accumulator grid, buffer clip, requantization); this mixin holds the
layer's side: its sub-quantizers and its saturation reports.
"""
import functools

import tensorflow as tf
import tf_keras as keras

from ..recipes import bias as bias_recipe
from ..recipes.alignment import align
from ..recipes.reduction import (ReductionTerms, as_qtensor, fold_scales,  # noqa: F401
                                 split_qtensor)
from ..tensors import FixedPoint, QFloat, is_per_tensor
from .base import check_qtensor, clip_to_buffer, record_saturation, saturation_observed
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


def refuses_channels_first(layer):
    """The registry's ``refuses`` of the convolution twins: why a channels-first float layer
    has no twin (None for a channels-last one), so that quantize() lists it with the other
    unsupported layers and the float-island switch instead of failing on it alone."""
    data_format = layer.get_config().get("data_format")
    if data_format in (None, "channels_last"):
        return None
    return f"data_format={data_format!r} (the quantized convolutions are channels last)"


def check_channels_last(layer_name, data_format):
    """Raises a ValueError unless the data format is channels_last."""
    if data_format not in (None, "channels_last"):
        raise ValueError(f"Layer {layer_name}: data_format expected 'channels_last'. "
                         f"Received: data_format={data_format!r}")


#: The former name of :func:`quantizeml.recipes.alignment.align`.
to_single_frac_bits = align


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
    #: the float variables they quantize (attribute names, in the order of ``weight_keys``).
    weight_variables = ("kernel",)

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
        terms = ReductionTerms(fn, x, w, x_scales, frac_bits, scales)
        acc, bound = terms.accumulator()
        return (acc, bound) if with_bound else acc

    def add_bias(self, acc, bias, training=None, acc_bound=None):
        """Clips ``acc`` to the buffer and adds the bias quantized on its grid (if any), the
        sum clipped to the buffer: ``clip(clip(acc) + b)`` (see
        :func:`~quantizeml.recipes.bias.add_bias`)."""
        fp, scales = split_qtensor(acc)
        bias_fp = None if bias is None else self._quantized_bias(bias, fp.frac_bits, scales,
                                                                  training)
        return bias_recipe.add_bias(acc, bias_fp, self.buffer_bitwidth, acc_bound,
                                    self._buffer_record(fp.values))

    def _quantized_bias(self, bias, frac_bits, scales, training):
        """The bias quantized on the accumulator grid (``frac_bits`` and ``scales``), as a
        FixedPoint."""
        grid = QFloat(FixedPoint(tf.zeros_like(bias), 1, frac_bits, clip=False),
                      tf.ones_like(bias) if scales is None else scales)
        return self.bias_quantizer(bias, grid, training=training).fp

    def _buffer_record(self, values):
        """The saturation report of the buffer clips where it is observed, else None."""
        if saturation_observed(values):
            return functools.partial(record_saturation, self, "buffer")
        return None

    def reduce(self, fn, x, w, x_scales=None, bias=None, training=None, frac_bits=None,
               scales=None):
        """:meth:`accumulate` (``frac_bits`` and ``scales`` as there) then :meth:`add_bias`
        (``bias`` None: no bias), by :func:`~quantizeml.recipes.bias.reduce_and_add_bias`
        (which adds the bias in the kernels of the reduction or of the requantization that
        follows in fused graphs)."""
        terms = ReductionTerms(fn, x, w, x_scales, frac_bits, scales)
        quantize_bias = None
        if bias is not None:
            def quantize_bias(frac_bits, scales):
                return self._quantized_bias(bias, frac_bits, scales, training)
        return bias_recipe.reduce_and_add_bias(terms, quantize_bias, self.buffer_bitwidth,
                                               self._buffer_record(x.values))

    def finalize(self, acc):
        """Clips to the buffer, then applies the output quantizer (if any)."""
        fp, scales = split_qtensor(acc)
        acc = as_qtensor(clip_to_buffer(self, fp, self.buffer_bitwidth), scales)
        if self.out_quantizer is not None:
            return self.out_quantizer(acc)
        return acc
