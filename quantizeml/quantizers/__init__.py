"""Functional quantizers and the quantizer registry.

- utilities of Keras 3's ``keras.quantizers``: ``fake_quant_with_min_max_vars``,
  ``abs_max_quantize``, ``pack_int4``/``unpack_int4``, ``quantize_and_dequantize``, the float8
  scaling helpers, ``get``/``serialize``/``deserialize``;
- the low-bit quantizers of Larq (``SteSign``, ``ApproxSign``, ..., ``DoReFa``), their functional
  forms, the ``WeightClip`` constraint and the ``FlipRatio`` metric;
- the extension API of TF Model Optimization: ``Quantizer``, ``QuantizeConfig``,
  ``LastValueQuantizer``, ``MovingAverageQuantizer``, ``AllValuesQuantizer``.
"""
from .abs_max import AbsMaxQuantizer, abs_max_quantize
from .constraints import WeightClip, get_constraint, weight_clip
from .fake_quant import fake_quant_with_min_max_vars
from .float8 import compute_float8_amax_history, compute_float8_scale, quantize_and_dequantize
from .int4 import pack_int4, unpack_int4
from .metrics import FlipRatio
from .registry import deserialize, get, register_quantizer, registered_names, serialize
from .ste import (ApproxSign, BaseQuantizer, DoReFa, DoReFaQuantizer, MagnitudeAwareSign, NoOp,
                  SteHeaviside, SteSign, SteTern, SwishSign, approx_sign, dorefa,
                  magnitude_aware_sign, ste_heaviside, ste_sign, ste_tern, swish_sign)
from .tfmot import (AllValuesQuantizer, LastValueQuantizer, MovingAverageQuantizer,
                    QuantizeConfig, Quantizer)

__all__ = [
    # Keras 3 utilities
    "abs_max_quantize", "AbsMaxQuantizer", "compute_float8_amax_history",
    "compute_float8_scale", "fake_quant_with_min_max_vars", "pack_int4", "unpack_int4",
    "quantize_and_dequantize",
    # registry
    "get", "serialize", "deserialize", "register_quantizer", "registered_names",
    # Larq family
    "BaseQuantizer", "NoOp", "SteSign", "ApproxSign", "SteHeaviside", "SwishSign",
    "MagnitudeAwareSign", "SteTern", "DoReFa", "DoReFaQuantizer", "ste_sign", "approx_sign",
    "ste_heaviside", "swish_sign", "magnitude_aware_sign", "ste_tern", "dorefa",
    "WeightClip", "weight_clip", "get_constraint", "FlipRatio",
    # TF-MOT extension API
    "Quantizer", "QuantizeConfig", "LastValueQuantizer", "MovingAverageQuantizer",
    "AllValuesQuantizer",
]
