"""Quantized tensor types: QTensor, FixedPoint, QFloat, and their TF op dispatch."""
from .carrier import BUFFER_BITS, carrier_dtype
from .fixed_point import FixedPoint
from .qfloat import QFloat
from .qtensor import QTensor
from . import dispatch  # noqa: F401  (registers the tf op overloads)
from .dispatch.shape import concat

__all__ = ["QTensor", "FixedPoint", "QFloat", "BUFFER_BITS", "carrier_dtype", "concat"]
