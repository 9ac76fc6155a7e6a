"""Custom-domain ONNX layers: nodes whose definitions are ONNX functions of standard operators.

Every node lives in the ``com.quantizeml`` domain and carries its definition as a model-local
``FunctionProto``, so ``onnx.checker`` validates the model and a plain
``onnxruntime.InferenceSession`` runs it with no custom-operator library.
"""
from .add import QuantizedAdd
from .base_layer import (
                         DOMAIN,
                         DOMAIN_VERSION,
                         ONNX_OPSET,
                         OnnxLayer,
                         QuantInfo,
                         TensorRange,
                         activation_scale,
                         make_model,
)
from .convolution import QuantizedConv2D, QuantizedDepthwise2D
from .dense import QuantizedDense1D
from .quantizers import Dequantizer, InputQuantizer
from .requantization import fixed_point_multiplier, requantize

__all__ = ["OnnxLayer", "QuantizedConv2D", "QuantizedDepthwise2D", "QuantizedDense1D",
           "QuantizedAdd", "InputQuantizer", "Dequantizer", "QuantInfo", "TensorRange",
           "activation_scale", "make_model", "fixed_point_multiplier", "requantize", "DOMAIN",
           "DOMAIN_VERSION", "ONNX_OPSET"]
