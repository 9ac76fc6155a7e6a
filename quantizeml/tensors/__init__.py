"""Quantized tensor types: QTensor, FixedPoint, QFloat, and their TF op dispatch.

The public API of the tensors, for the recipes, layers and exporter: the types, the carrier
constants and rounding primitives, and the static bit-count helpers.
"""
from .carrier import BUFFER_BITS, FLOAT32_VALUE_BITS, MAX_VALUE_BITS, carrier_dtype, round_half_up
from .fixed_point import FixedPoint
from .qfloat import QFloat
from .qtensor import QTensor, is_per_tensor
from . import dispatch  # noqa: F401  (registers the tf op overloads)
from .dispatch.common import aligned_pair, bits_for
from .dispatch.shape import concat

__all__ = ["QTensor", "FixedPoint", "QFloat", "BUFFER_BITS", "FLOAT32_VALUE_BITS",
           "MAX_VALUE_BITS", "carrier_dtype", "round_half_up", "is_per_tensor", "bits_for",
           "aligned_pair", "concat"]
