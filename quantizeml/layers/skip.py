"""Skip connections: Add (float, optional average), QuantizedAdd, QuantizedConcatenate."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, concat
from .base import check_qtensor, clip_to_buffer, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin


def _check_two_inputs(layer, input_shape):
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected a list of two "
                         f"inputs. Received: input_shape={input_shape}")
    a, b = (tf.TensorShape(s) for s in input_shape)
    if not a.is_compatible_with(b):
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected two inputs of "
                         f"the same shape. Received: shapes {a} and {b}")


@register_keras
class Add(keras.layers.Add):
    """Wrapper class of ``keras.layers.Add`` that can also average its inputs.

    We only support a tuple of two inputs with the same shape.

    Args:
        average (bool, optional): if True, compute the average across all inputs.
            Defaults to False.
    """

    def __init__(self, average=False, **kwargs):
        super().__init__(**kwargs)
        self.average = bool(average)

    def build(self, input_shape):
        _check_two_inputs(self, input_shape)
        super().build(input_shape)

    def _merge_function(self, inputs):
        output = super()._merge_function(inputs)
        return output / 2 if self.average else output

    def get_config(self):
        return {**super().get_config(), "average": self.average}


def _qtensor_list(layer, inputs):
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"Layer {layer.name} ({type(layer).__name__}) expected a list of "
                        f"FixedPoint or QFloat inputs. Received: inputs of type "
                        f"{type(inputs).__name__}")
    return [layer._to_fixed_point(check_qtensor(layer, x, (FixedPoint, QFloat)))
            for x in inputs]


@register_keras
@register_twin(keras.layers.Add, Add, output=BLOCK_END, export="add")
class QuantizedAdd(QuantConfigMixin, Add):
    """Sums two inputs and quantize the output.

    The two inputs must be provided as a list or tuple of FixedPoint or QFloat (QFloats are
    first converted to FixedPoint, their scales quantized on the output quantizer's
    ``scale_bits``, 8 without one). They are aligned on their largest fractional bits (exact
    left shifts) and summed exactly in the integer buffer; averaging adds one fractional bit.

    Integer maths: ``y = (x1 << (f - f1)) + (x2 << (f - f2))`` with ``f = max(f1, f2)``
    (``frac_bits = f + 1`` when averaging), clipped to the buffer, then the output quantizer.

    Args:
        average (bool, optional): if True, compute the average of the inputs.
            Defaults to False.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, average=False, quant_config=None, **kwargs):
        super().__init__(average=average, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x, y = _qtensor_list(self, inputs)
        total = tf.math.add(x, y)
        if self.average:
            total = FixedPoint(total.values, total.value_bits, total.frac_bits + 1.0)
        total = clip_to_buffer(self, total, self.buffer_bitwidth)
        return self._quantize_output(total)


@register_keras
@register_twin(keras.layers.Concatenate, output=BLOCK_END, per_tensor_inputs=True,
               export="concatenate")
class QuantizedConcatenate(QuantConfigMixin, keras.layers.Concatenate):
    """A Concatenate layer that operates on quantized inputs.

    FixedPoint inputs (QFloats are first converted as in QuantizedAdd) are aligned on their
    largest fractional bit (exact left shifts) and concatenated: the result is per-tensor.

    Integer maths: ``y = concat(x_i << (f - f_i))`` with ``f = max_i max(f_i)``, clipped to the
    buffer, then the output quantizer.

    Args:
        axis (int, optional): the concatenation axis. Defaults to -1.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, axis=-1, quant_config=None, **kwargs):
        super().__init__(axis=axis, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        output = concat(_qtensor_list(self, inputs), self.axis)
        output = clip_to_buffer(self, output, self.buffer_bitwidth)
        return self._quantize_output(output)
