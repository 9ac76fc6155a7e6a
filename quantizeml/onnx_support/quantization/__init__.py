"""Quantization of float ONNX models: patterns, calibration with onnxruntime, quantize()."""
from .graph import OnnxGraph, fold_batchnorms
from .patterns import DEFAULT_PATTERNS, custom_pattern_scope, get_patterns
from ...models.quantize import register_onnx_quantize
from .quantize import quantize

register_onnx_quantize(quantize)  # quantizeml.models.quantize(onnx_model) hands it here

__all__ = ["quantize", "custom_pattern_scope", "get_patterns", "DEFAULT_PATTERNS", "OnnxGraph",
           "fold_batchnorms"]
