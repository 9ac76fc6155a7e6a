"""The integer recipes of the quantized layers: one module per integer operation, each one
function with one op-by-op reference body, and one module of fast paths.

=================  ===========================================================================
module             integer maths
=================  ===========================================================================
``reduction``      ``acc = sum_k x_k * w_k`` exactly (float32 or float64 carrier from bounds)
``matmul``         ``y = a @ b`` on QTensors (the ``tf.linalg.matmul`` overloads), a reduction
``alignment``      ``y_c = x_c * 2^(max(frac) - frac_c)`` (per-axis values on one frac bit)
``bias``           ``y = clip(clip(acc) + b)``, the bias on the accumulator grid
``buffer``         ``y = clip(x, -2^(B-1), 2^(B-1) - 1)``, the integer buffer
``requantize``     ``y = clip(round(x * m), low, high)``, rounded shift or QFloat scales, STE
``fast_paths``     fused (XLA) kernels, custom gradients, deferred accumulators, and the one
                   place choosing between them and the reference bodies
=================  ===========================================================================

Layers call these functions (and the public ``quantizeml.tensors`` API); the ONNX exporter
(:mod:`quantizeml.onnx_support.export`) mirrors them function by function, under the same
names. Only :mod:`~quantizeml.recipes.fast_paths` imports ``tensorflow.python``.
"""
from . import matmul  # noqa: F401  (registers tf.linalg.matmul for QTensors)

__all__ = ["alignment", "bias", "buffer", "fast_paths", "matmul", "reduction", "requantize"]
