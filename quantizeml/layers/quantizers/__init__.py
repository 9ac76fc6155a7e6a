"""Quantizer layers."""
from .output_quantizer import Dequantizer, InputQuantizer, OutputQuantizer
from .quantizers import AlignedWeightQuantizer, Quantizer, WeightQuantizer

__all__ = ["Quantizer", "WeightQuantizer", "AlignedWeightQuantizer", "OutputQuantizer",
           "InputQuantizer", "Dequantizer"]
