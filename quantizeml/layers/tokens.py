"""Transformer token layers: ClassToken, AddPositionEmbs, ExtractToken and quantized twins."""
import tensorflow as tf
import tf_keras as keras

from ..tensors import BUFFER_BITS, FixedPoint, MAX_VALUE_BITS, QFloat, carrier_dtype
from .base import check_qtensor, clip_to_buffer, record_saturation, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import register_twin
from .quantizers import Quantizer

__all__ = ["TokenQuantizer", "ClassToken", "QuantizedClassToken", "AddPositionEmbs",
           "QuantizedAddPositionEmbs", "ExtractToken", "QuantizedExtractToken"]

#: Default arguments of the token quantizers.
TOKEN_QUANTIZER_DEFAULTS = {"bitwidth": 8}


@register_keras
class TokenQuantizer(Quantizer):
    """Quantizes a float weight (a token, embeddings) onto the grid of a FixedPoint.

    The weight takes the fractional bits of ``other`` (per-tensor or per-axis), so that it is
    concatenated with or added to ``other`` without any alignment shift:
    ``t_int = clip(round(t * 2^f_other), int_min, int_max)`` on ``bitwidth`` bits (saturation
    recorded). Gradient: straight-through (identity) inside the range, 0 outside.

    Args:
        bitwidth (int, optional): the quantization bitwidth. Defaults to 8.
        signed (bool, optional): whether the quantizer expects signed values or unsigned.
            Defaults to True.
    """

    def __init__(self, bitwidth=8, signed=True, **kwargs):
        super().__init__(bitwidth, signed, **kwargs)

    def call(self, inputs, other):
        """Quantize the float inputs on the grid of ``other``.

        Args:
            inputs (tf.Tensor): the float weight.
            other (FixedPoint): the FixedPoint whose fractional bits are used.

        Returns:
            FixedPoint: the quantized weight, with the fractional bits of ``other``.
        """
        if not isinstance(other, FixedPoint):
            raise TypeError(f"Layer {self.name} (TokenQuantizer): other expected a FixedPoint. "
                            f"Received: other of type {type(other).__name__}")
        wide = FixedPoint.quantize(inputs, BUFFER_BITS - 1, other.frac_bits)
        record_saturation(self, "weights", wide.values, self.value_bits)
        values = wide.values
        if not self.signed:
            values = tf.maximum(values, tf.zeros_like(values))
        return FixedPoint(values, self.value_bits, other.frac_bits)


def _check_tokens_shape(layer, input_shape):
    shape = tf.TensorShape(input_shape)
    if shape.rank != 3 or shape[-1] is None:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected inputs of shape "
                         f"[batch, tokens, hidden] with a static hidden size. "
                         f"Received: input_shape={shape}")
    return shape


def _token_quantizer(layer, key):
    kwargs = {**TOKEN_QUANTIZER_DEFAULTS, **layer.quant_config.get(key, {})}
    unknown = sorted(set(kwargs) - {"bitwidth", "signed"})
    if unknown:
        raise ValueError(f"Layer {layer.name}: quant_config['{key}'] expected keys among "
                         f"['bitwidth', 'signed']. Received: unknown keys {unknown}")
    return TokenQuantizer(name=f"{layer.name}/{key}", **kwargs)


def _fixed_point_inputs(layer, inputs):
    x = check_qtensor(layer, inputs, (FixedPoint, QFloat))
    return layer._to_fixed_point(x)


@register_keras
class ClassToken(keras.layers.Layer):
    """Append a class token to an input layer.

    A trainable ``cls`` variable of shape ``[1, 1, hidden]`` is prepended to the tokens:
    ``[batch, tokens, hidden] -> [batch, tokens + 1, hidden]``.

    Args:
        initializer (keras.initializers.Initializer): Initializer for the class variable.
            Defaults to None (zeros).
    """

    def __init__(self, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer or "zeros")

    def build(self, input_shape):
        shape = _check_tokens_shape(self, input_shape)
        self.cls = self.add_weight(name="cls", shape=(1, 1, shape[-1]),
                                   initializer=self.initializer, trainable=True)
        super().build(input_shape)

    def _broadcast(self, cls, inputs):
        batch = tf.shape(inputs)[0]
        return tf.broadcast_to(cls, [batch, 1, cls.shape[-1]])

    def call(self, inputs):
        cls = tf.cast(self._broadcast(self.cls, inputs), inputs.dtype)
        return tf.concat([cls, inputs], axis=1)

    def get_config(self):
        return {**super().get_config(),
                "initializer": keras.initializers.serialize(self.initializer)}


@register_keras
@register_twin(ClassToken, pass_through=True, export="class_token")
class QuantizedClassToken(QuantConfigMixin, ClassToken):
    """Quantize the ClassToken layer, allowing quantization of the output.

    The class token is quantized on the grid of the FixedPoint inputs (QFloat inputs are
    converted first) by the "cls_quantizer" (a :class:`TokenQuantizer`), then concatenated
    with them: the output keeps the input fractional bits (per-tensor or per-axis).

    Integer maths: ``y = concat([clip(round(cls * 2^f_x)), x_int], axis=1)`` (frac_bits
    ``f_x``), then the output quantizer if configured.

    Args:
        initializer (keras.initializers.Initializer): Initializer for the class variable.
            Defaults to None (zeros).
        quant_config (dict, optional): the serialized quantization configuration, keys
            "cls_quantizer" (TokenQuantizer arguments, default ``{"bitwidth": 8}``),
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, initializer=None, quant_config=None, **kwargs):
        super().__init__(initializer=initializer, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS + ("cls_quantizer",))
        self.cls_quantizer = _token_quantizer(self, "cls_quantizer")

    def call(self, inputs):
        x = _fixed_point_inputs(self, inputs)
        cls = self.cls_quantizer(self.cls, x)
        value_bits = max(cls.value_bits, x.value_bits)
        dtype = carrier_dtype(value_bits)
        values = tf.concat([tf.cast(self._broadcast(cls.values, x.values), dtype),
                            tf.cast(x.values, dtype)], axis=1)
        output = FixedPoint(values, value_bits, x.frac_bits)
        output = clip_to_buffer(self, output, self.buffer_bitwidth)
        return self._quantize_output(output)


@register_keras
class AddPositionEmbs(keras.layers.Layer):
    """Adds (optionally learned) positional embeddings to the inputs.

    A trainable ``pos_embedding`` variable of shape ``[1, tokens, hidden]`` is added to the
    ``[batch, tokens, hidden]`` inputs.

    Args:
        initializer (keras.initializers.Initializer): Initializer for the class variable.
            Defaults to None (RandomNormal with stddev 0.02).
    """

    def __init__(self, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomNormal(stddev=0.02))

    def build(self, input_shape):
        shape = _check_tokens_shape(self, input_shape)
        if shape[1] is None:
            raise ValueError(f"Layer {self.name} (AddPositionEmbs) expected a static number of "
                             f"tokens. Received: input_shape={shape}")
        self.pe = self.add_weight(name="pos_embedding", shape=(1, shape[1], shape[2]),
                                  initializer=self.initializer, trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        return inputs + tf.cast(self.pe, inputs.dtype)

    def get_config(self):
        return {**super().get_config(),
                "initializer": keras.initializers.serialize(self.initializer)}


@register_keras
@register_twin(AddPositionEmbs, pass_through=True, export="add_position_embs")
class QuantizedAddPositionEmbs(QuantConfigMixin, AddPositionEmbs):
    """Quantize the AddPositionEmbs layer, allowing operations in FixedPoint domain.

    The embeddings are quantized on the grid of the FixedPoint inputs (QFloat inputs are
    converted first) by the "pe_quantizer" (a :class:`TokenQuantizer`), then added to them:
    the output keeps the input fractional bits, with one more value bit.

    Integer maths: ``y = x_int + clip(round(pe * 2^f_x))`` (frac_bits ``f_x``), clipped to the
    buffer, then the output quantizer if configured.

    Args:
        initializer (keras.initializers.Initializer): Initializer for the class variable.
            Defaults to None (RandomNormal with stddev 0.02).
        quant_config (dict, optional): the serialized quantization configuration, keys
            "pe_quantizer" (TokenQuantizer arguments, default ``{"bitwidth": 8}``),
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, initializer=None, quant_config=None, **kwargs):
        super().__init__(initializer=initializer, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS + ("pe_quantizer",))
        self.pe_quantizer = _token_quantizer(self, "pe_quantizer")

    def call(self, inputs):
        x = _fixed_point_inputs(self, inputs)
        pe = self.pe_quantizer(self.pe, x)
        value_bits = min(max(pe.value_bits, x.value_bits) + 1, MAX_VALUE_BITS)
        dtype = carrier_dtype(value_bits)
        output = FixedPoint(tf.cast(x.values, dtype) + tf.cast(pe.values, dtype), value_bits,
                            x.frac_bits)
        output = clip_to_buffer(self, output, self.buffer_bitwidth)
        return self._quantize_output(output)


@register_keras
class ExtractToken(keras.layers.Layer):
    """Wrapper class of tf.gather operation that allows to extract a Token.

    Args:
        token (int): the indice of the token to extract.
        axis (int, optional): axis over which the user gather the token. Defaults to 1.
    """

    def __init__(self, token, axis=1, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("token", token), ("axis", axis)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Layer {self.name} ({type(self).__name__}) expected {name} to "
                                 f"be an int. Received: {name}={value!r}")
        self.token = token
        self.axis = axis

    def call(self, inputs):
        return tf.gather(inputs, self.token, axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "token": self.token, "axis": self.axis}


@register_keras
@register_twin(ExtractToken, pass_through=True, export="extract_token")
class QuantizedExtractToken(QuantConfigMixin, ExtractToken):
    """Quantized version of the ExtractToken layer. Accepts only FixedPoint inputs.

    Integer maths: ``y = gather(x_int, token, axis)`` (same fractional bits; per-axis ones are
    gathered too when the token is taken on the last axis), then the output quantizer if
    configured.

    Args:
        token (int): the indice of the token to extract.
        axis (int, optional): axis over which the user gather the token. Defaults to 1.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, token, axis=1, quant_config=None, **kwargs):
        super().__init__(token=token, axis=axis, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint,))
        values = tf.gather(x.values, self.token, axis=self.axis)
        frac_bits = x.frac_bits
        rank = x.shape.rank
        if not x.per_tensor and self.axis % rank == rank - 1:
            frac_bits = tf.gather(frac_bits, self.token)
        return self._quantize_output(FixedPoint(values, x.value_bits, frac_bits))
