"""QuantizedDot: the batched product of two quantized sequences (Keras' Dot), exact."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint
from .base import check_qtensor, clip_to_buffer, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin

__all__ = ["QuantizedDot", "dot_axes"]


def dot_axes(layer, shapes=None):
    """The contracted axes ``(a, b)`` of a Dot layer on two rank-3 inputs, each 1 or 2, or
    None when they are not such axes (negative axes are counted from the end)."""
    axes = layer.axes
    axes = (axes, axes) if isinstance(axes, int) else tuple(axes)
    if len(axes) != 2 or not all(isinstance(a, int) for a in axes):
        return None
    axes = tuple(a + 3 if a < 0 else a for a in axes)
    if not all(a in (1, 2) for a in axes):
        return None
    if shapes is not None and any(tf.TensorShape(s).rank != 3 for s in shapes):
        return None
    return axes


def _dot_refuses(layer):
    if layer.normalize:
        return "normalize=True (a cosine proximity)"
    shapes = [t.shape for t in layer.input] if isinstance(layer.input, (list, tuple)) else None
    if dot_axes(layer, shapes) is None:
        return f"axes={layer.axes} on inputs other than two (batch, steps, features) tensors"
    return None


@register_keras
@register_twin(keras.layers.Dot, output=BLOCK_END, per_tensor_inputs=True,
               refuses=_dot_refuses, export="dot")
class QuantizedDot(QuantConfigMixin, keras.layers.Dot):
    """Keras' Dot of two ``(batch, n, k)`` quantized tensors, the exact integer product.

    ``Dot(axes=(i, j))`` contracts axis ``i`` of ``a`` with axis ``j`` of ``b`` (each 1 or 2):
    ``(2, 2)`` is ``a @ b^T`` (attention scores), ``(2, 1)`` ``a @ b`` (probabilities times
    values), ``(1, 1)`` ``a^T @ b``, ``(1, 2)`` ``a^T @ b^T``. Both inputs are per-tensor
    FixedPoints (quantize() puts an OutputQuantizer before it); their channels are summed.

    Integer maths: ``y = a_int @ b_int`` (transposed as the axes say), fractional bits
    ``f_a + f_b``, every partial sum exact in the buffer (the value bits are checked), clipped
    to the buffer, then the output quantizer.

    Args:
        axes (int or tuple): the contracted axes, as Keras' Dot.
        normalize (bool, optional): must be False (a cosine proximity is not quantized).
            Defaults to False.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: normalize, axes other than 1 or 2 of rank-3 inputs, per-axis inputs.
        TypeError: inputs that are not FixedPoints.
    """

    def __init__(self, axes, normalize=False, quant_config=None, **kwargs):
        super().__init__(axes=axes, normalize=normalize, **kwargs)
        if normalize:
            raise ValueError(f"Layer {self.name} (QuantizedDot) expected normalize=False. "
                             f"Received: normalize={normalize}")
        if dot_axes(self) is None:
            raise ValueError(f"Layer {self.name} (QuantizedDot) expected axes 1 or 2 of "
                             f"(batch, steps, features) inputs. Received: axes={axes!r}")
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def build(self, input_shape):
        if dot_axes(self, input_shape) is None:
            raise ValueError(f"Layer {self.name} (QuantizedDot) expected two inputs of rank 3. "
                             f"Received: input_shape={input_shape}")
        super().build(input_shape)

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"Layer {self.name} (QuantizedDot) expected two inputs. "
                             f"Received: {type(inputs).__name__} inputs")
        a, b = (check_qtensor(self, x, (FixedPoint,), per_tensor=True) for x in inputs)
        axis_a, axis_b = dot_axes(self)
        out = tf.linalg.matmul(a, b, transpose_a=axis_a == 1, transpose_b=axis_b == 2)
        out = clip_to_buffer(self, out, self.buffer_bitwidth)
        return self._quantize_output(out)
