"""Element-wise merges of two quantized inputs: QuantizedMultiply, QuantizedSubtract,
QuantizedMaximum, QuantizedMinimum.

The two inputs have the same rank and broadcastable shapes, as the Keras merge layers accept
them (e.g. the ``(N, H, W, C) * (N, 1, 1, C)`` product of a squeeze-and-excite block). Every
result is exact in the integer buffer:

* a product keeps both grids: values multiply, fractional bits add, value bits add (plus one
  for the sign), QFloat scales multiply; a product wider than the buffer is refused;
* a difference, a maximum or a minimum first converts QFloats to FixedPoints (as QuantizedAdd
  does) and left-aligns both inputs on the element-wise maximum of their fractional bits.

All four end a block (``BLOCK_END``): their result can have more value bits than their inputs
(a product adds them; the alignment of a difference, a maximum or a minimum adds the frac-bit
gap), so quantize() gives them an OutputQuantizer unless they feed activations or the output.
"""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, aligned_pair, carrier_dtype
from .base import check_qtensor, clip_to_buffer, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin


def _check_two_inputs(layer, input_shape):
    """Two inputs of the same rank whose shapes broadcast (Keras broadcasts merge inputs)."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected a list of two "
                         f"inputs. Received: input_shape={input_shape}")
    a, b = (tf.TensorShape(s) for s in input_shape)
    if a.rank is None or b.rank is None or a.rank != b.rank:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected two inputs of "
                         f"the same rank. Received: shapes {a} and {b}")
    for i, j in zip(a.as_list()[1:], b.as_list()[1:]):
        if i is not None and j is not None and 1 not in (i, j) and i != j:
            raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected two inputs "
                             f"of broadcastable shapes. Received: shapes {a} and {b}")


def _two_qtensors(layer, inputs):
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise TypeError(f"Layer {layer.name} ({type(layer).__name__}) expected a list of two "
                        f"FixedPoint or QFloat inputs. Received: inputs={inputs!r}")
    return [check_qtensor(layer, x, (FixedPoint, QFloat)) for x in inputs]


class _MergeMixin(QuantConfigMixin):
    """The quant_config and input checks shared by the merges of this module."""

    def __init__(self, quant_config=None, **kwargs):
        super().__init__(**kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def build(self, input_shape):
        _check_two_inputs(self, input_shape)
        super().build(input_shape)

    def _aligned_fixed_points(self, inputs):
        """Both inputs as FixedPoints (QFloat scales quantized on ``scale_bits``), left-aligned
        on the element-wise maximum of their fractional bits: ``(x, y, frac_bits)``."""
        x, y = (self._to_fixed_point(t) for t in _two_qtensors(self, inputs))
        return aligned_pair(x, y, type(self).__name__)

    def _extremum(self, inputs, fn):
        x, y, frac_bits = self._aligned_fixed_points(inputs)
        value_bits = max(x.value_bits, y.value_bits)
        dtype = carrier_dtype(value_bits)
        values = fn(tf.cast(x.values, dtype), tf.cast(y.values, dtype))
        output = FixedPoint(values, value_bits, frac_bits, clip=False)
        output = clip_to_buffer(self, output, self.buffer_bitwidth)
        return self._quantize_output(output)


@register_keras
@register_twin(keras.layers.Multiply, output=BLOCK_END, export="multiply")
class QuantizedMultiply(_MergeMixin, keras.layers.Multiply):
    """Multiplies two quantized inputs element-wise (broadcast), exactly.

    The inputs are FixedPoint or QFloat of the same rank and broadcastable shapes, e.g. the
    ``(N, H, W, C)`` features and ``(N, 1, 1, C)`` channel weights of a squeeze-and-excite
    block. Per-axis fractional bits and scales (along the last axis) broadcast with the values.

    Integer maths: ``y = x1 * x2`` with ``frac_bits = f1 + f2``, ``value_bits = v1 + v2 + 1``
    and ``scales = s1 * s2`` (a QFloat when an input is one), then the output quantizer (or the
    buffer clip without one).

    Args:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: when the exact product needs more value bits than the integer buffer
            holds (``v1 + v2 + 1 > buffer_bitwidth - 1``): requantize an input on fewer bits.
    """

    def call(self, inputs):
        x, y = _two_qtensors(self, inputs)
        value_bits = x.value_bits + y.value_bits + 1
        if value_bits > self.buffer_bitwidth - 1:
            raise ValueError(
                f"Layer {self.name} (QuantizedMultiply) expected inputs whose exact product "
                f"fits the {self.buffer_bitwidth}-bit buffer (value bits v1 + v2 + 1 <= "
                f"{self.buffer_bitwidth - 1}); requantize an input on fewer bits (an "
                f"OutputQuantizer) or widen buffer_bitwidth. Received: "
                f"value_bits={x.value_bits} and {y.value_bits}")
        return self._quantize_output(tf.math.multiply(x, y))


@register_keras
@register_twin(keras.layers.Subtract, output=BLOCK_END, export="subtract")
class QuantizedSubtract(_MergeMixin, keras.layers.Subtract):
    """Subtracts two quantized inputs element-wise (broadcast), exactly.

    QFloat inputs are first converted to FixedPoint (their scales quantized on the output
    quantizer's ``scale_bits``, 8 without one), as in QuantizedAdd; both are left-aligned on
    the element-wise maximum of their fractional bits and subtracted in the integer buffer.

    Integer maths: ``y = (x1 << (f - f1)) - (x2 << (f - f2))`` with ``f = max(f1, f2)``,
    clipped to the buffer, then the output quantizer.

    Args:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def call(self, inputs):
        x, y = (self._to_fixed_point(t) for t in _two_qtensors(self, inputs))
        output = clip_to_buffer(self, tf.math.subtract(x, y), self.buffer_bitwidth)
        return self._quantize_output(output)


@register_keras
@register_twin(keras.layers.Maximum, output=BLOCK_END, export="maximum")
class QuantizedMaximum(_MergeMixin, keras.layers.Maximum):
    """The element-wise (broadcast) maximum of two quantized inputs, exactly.

    QFloat inputs are first converted to FixedPoint as in QuantizedAdd; both are left-aligned
    on the element-wise maximum of their fractional bits (exact left shifts), so the maximum is
    taken on one grid. The aligned values can have more value bits than the inputs (the
    frac-bit gap), hence an output quantizer at the block end.

    Integer maths: ``y = max(x1 << (f - f1), x2 << (f - f2))`` with ``f = max(f1, f2)``,
    clipped to the buffer, then the output quantizer.

    Args:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def call(self, inputs):
        return self._extremum(inputs, tf.maximum)


@register_keras
@register_twin(keras.layers.Minimum, output=BLOCK_END, export="minimum")
class QuantizedMinimum(_MergeMixin, keras.layers.Minimum):
    """The element-wise (broadcast) minimum of two quantized inputs, exactly.

    As QuantizedMaximum, with a minimum.

    Integer maths: ``y = min(x1 << (f - f1), x2 << (f - f2))`` with ``f = max(f1, f2)``,
    clipped to the buffer, then the output quantizer.

    Args:
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def call(self, inputs):
        return self._extremum(inputs, tf.minimum)
