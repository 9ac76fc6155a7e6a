"""Quantization of float ONNX models: patterns, calibration with onnxruntime, quantize()."""
from .graph import OnnxGraph, fold_batchnorms
from .patterns import DEFAULT_PATTERNS, custom_pattern_scope, get_patterns
from .quantize import quantize

__all__ = ["quantize", "custom_pattern_scope", "get_patterns", "DEFAULT_PATTERNS", "OnnxGraph",
           "fold_batchnorms"]
