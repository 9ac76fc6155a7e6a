"""Models: quantize(), calibration, quantization parameters, transforms and utilities."""
from . import transforms, zoo  # noqa: F401
from .zoo_vit import digits_vit, train_digits_vit
from .calibrate import calibrate, calibration_required, search_output_ranges
from .check import check_quantization, float_islands
from .config import dump_config
from .keras3 import from_keras3, is_keras3_model
from .integer_weights import (integer_weights, load_integer_weights,
                              save_integer_weights)
from .mixed_precision import layer_sensitivity, mixed_precision_config, weight_bytes
from .quantization_params import QuantizationParams, get_quantization_params, quantization
from .learned_rounding import layer_reconstruction_error, learn_rounding
from .qat import QuantizedModel, range_variables, update_gains
from .quantize import quantize
from .saving import (apply_weights_to_model, load_model, record_quantization_variables,
                     save_model)

__all__ = ["quantize", "calibrate", "calibration_required", "search_output_ranges",
           "check_quantization", "float_islands",
           "dump_config", "integer_weights", "save_integer_weights", "load_integer_weights",
           "QuantizationParams", "get_quantization_params", "quantization",
           "apply_weights_to_model", "load_model", "record_quantization_variables", "save_model",
           "transforms", "zoo", "digits_vit", "train_digits_vit", "from_keras3",
           "is_keras3_model", "layer_sensitivity", "mixed_precision_config", "weight_bytes",
           "learn_rounding", "layer_reconstruction_error", "QuantizedModel", "update_gains",
           "range_variables"]
