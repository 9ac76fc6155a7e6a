"""ONNX support: custom-domain quantized layers and the quantization of float ONNX models.

``quantization.quantize(model_proto)`` turns a float ONNX conv net into a quantized one made of
``com.quantizeml`` nodes (``layers``), each defined as an ONNX function of standard operators.
"""
from . import layers, quantization  # noqa: F401
from .export import export  # noqa: E402

__all__ = ["layers", "quantization", "export"]
