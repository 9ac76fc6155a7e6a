"""Quantized rescaling: QuantizedRescaling, the integer entry of a model."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, QTensor, round_half_up
from .base import record_saturation, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import register_twin
from .quantizers.quantizers import check_bitwidth


def _refuses(layer):
    """A Rescaling with a per-channel scale or an offset has no QuantizedRescaling (quantize()
    keeps it float when it only reads the model inputs: a float preprocessing head)."""
    config = layer.get_config()
    if np.size(config.get("scale", 1.0)) != 1:
        return "QuantizedRescaling takes a scalar scale only"
    if np.any(np.asarray(config.get("offset", 0.0)) != 0):
        return "QuantizedRescaling takes a zero offset only"
    return None


@register_keras
@register_twin(keras.layers.Rescaling, float_inputs=True, refuses=_refuses,
               export="rescaling")
class QuantizedRescaling(QuantConfigMixin, keras.layers.Rescaling):
    """A layer that multiplies integer inputs by a scale.

    This is a simplified version of the keras Rescaling layer:

    - it only supports a scalar scale,
    - it only supports zero offsets.

    Float inputs are taken as integers (8-bit unsigned by default, e.g. pixels): it simply
    wraps them into a per-tensor QFloat with the specified scale. Inputs are rounded (half up)
    and clipped to the input range, so non-integer or out-of-range inputs are still valid
    integers (the clipping is recorded as saturation; quantize() keeps a Rescaling float when
    its calibration samples are not such integers).

    Quantized inputs (a constant multiplication inside the model, ``x * 0.5`` written as a TF
    op) keep their integers: only the scales change, ``QFloat(x.fp, x.scales * scale)`` (a
    FixedPoint ``x`` gets the scales ``scale``); their scale must be positive.

    Integer maths: ``y = clip(round(x), int_min, int_max)`` with frac_bits 0 and scales
    ``scale`` (float inputs), ``y = x`` with scales times ``scale`` (quantized inputs); then
    the output quantizer if configured.

    Args:
        scale (float): a scalar scale.
        offset (float, optional): only 0 is supported. Defaults to 0.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "input_bitwidth" (default 8), "input_signed" (default False), "output_quantizer"
            and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for a non-scalar scale or a non-zero offset.
    """

    def __init__(self, scale, offset=0.0, quant_config=None, **kwargs):
        super().__init__(scale=scale, offset=offset, **kwargs)
        if np.size(scale) != 1:
            raise ValueError(f"Layer {self.name} (QuantizedRescaling) expected a scalar scale. "
                             f"Received: scale={scale}")
        if np.any(np.asarray(offset) != 0):
            raise ValueError(f"Layer {self.name} (QuantizedRescaling) expected a zero offset "
                             f"(the only supported value). Received: offset={offset}")
        self._init_quant_config(quant_config,
                                OUTPUT_KEYS + ("input_bitwidth", "input_signed"))
        bitwidth = check_bitwidth(self.quant_config.get("input_bitwidth", 8), self.name,
                                  name="input_bitwidth")
        self.input_signed = bool(self.quant_config.get("input_signed", False))
        if self.input_signed and bitwidth < 2:
            raise ValueError(f"Layer {self.name}: input_bitwidth expected >= 2 for signed "
                             f"inputs. Received: input_bitwidth={bitwidth}")
        self.input_value_bits = bitwidth - 1 if self.input_signed else bitwidth

    def call(self, inputs):
        value = float(np.ravel(self.scale)[0])
        scale = tf.constant(value, tf.float32)
        if isinstance(inputs, QTensor) and not value > 0:
            raise ValueError(f"Layer {self.name} (QuantizedRescaling) expected a positive scale "
                             f"for quantized inputs. Received: scale={value}")
        if isinstance(inputs, QFloat):
            return self._quantize_output(QFloat(inputs.fp, inputs.scales * scale))
        if isinstance(inputs, FixedPoint):
            return self._quantize_output(QFloat(inputs, scale))
        if isinstance(inputs, QTensor):
            raise TypeError(f"Layer {self.name} (QuantizedRescaling) expected float, "
                            f"FixedPoint or QFloat inputs. Received: inputs of type "
                            f"{type(inputs).__name__}")
        values = round_half_up(tf.cast(inputs, tf.float32))
        record_saturation(self, "input", values, self.input_value_bits)
        int_min = -2.0**self.input_value_bits if self.input_signed else 0.0
        values = tf.clip_by_value(values, int_min, 2.0**self.input_value_bits - 1)
        output = QFloat(FixedPoint(values, self.input_value_bits, 0.0), scale)
        return self._quantize_output(output)
