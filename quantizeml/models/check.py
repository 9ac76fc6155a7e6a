"""check_quantization: find what a better quantization configuration would fix."""
import numpy as np
import tensorflow as tf

from ..layers import OutputQuantizer, WeightQuantizer
from ..layers.base import saturation
from ..tensors import QFloat
from .integer_weights import kernel_for_quantizer

#: Relative error of a quantized scale above which it is reported.
SCALE_TOLERANCE = 2.0**-6
#: Share of saturated output values above which an OutputQuantizer is reported.
OUTPUT_SATURATION_TOLERANCE = 0.01


def _sublayers(layer):
    for attr in vars(layer).values():
        if isinstance(attr, (WeightQuantizer, OutputQuantizer)):
            yield attr


def _weight_issues(layer):
    issues = []
    oq = getattr(layer, "out_quantizer", None)
    scale_bits = oq.scale_bits if isinstance(oq, OutputQuantizer) else 8
    for attr_name, quantizer in vars(layer).items():
        if not isinstance(quantizer, WeightQuantizer) or quantizer.fp_quantizer:
            continue
        weights = kernel_for_quantizer(layer) if attr_name == "weight_quantizer" else None
        if weights is None:
            continue
        qw = quantizer.quantize(weights)
        if not isinstance(qw, QFloat):
            continue
        scales = qw.scales.numpy()
        q = QFloat.quantize_scales(qw.scales, scale_bits).to_float().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(q - scales) / np.abs(scales)
        rel = np.where(scales > 0, rel, 0.0)
        if np.max(rel) > SCALE_TOLERANCE:
            issues.append(f"{layer.name}: inaccurate weight scales quantization in "
                          f"{attr_name} (max relative error {np.max(rel):.3g} with "
                          f"{scale_bits}-bit scales): increase scale_bits")
        tiny = np.sum(np.abs(scales) < 1e-30)
        if tiny:
            issues.append(f"{layer.name}: {tiny} weight scales in {attr_name} are too small to "
                          "be represented")
    return issues


def check_quantization(model, samples=None, batch_size=32):
    """Checks the specified model quantization.

    It looks for errors that can be fixed in the quantization configuration:

    * inaccurate weight scales quantization,
    * saturation in integer operations: the 32-bit buffers (any clipped value) and the
      OutputQuantizers (more than 1% of clipped values), as observed on ``samples`` (or on the
      last eager calls of the model when no samples are given).

    Args:
        model (keras.Model): the model to check.
        samples (np.ndarray, optional): samples to run through the model. Defaults to None.
        batch_size (int, optional): batch size for the samples. Defaults to 32.

    Returns:
        list(str): the quantization issues that were detected.
    """
    if samples is not None:
        for layer in model.layers:
            for sub in [layer, *_sublayers(layer)]:
                sub.__dict__.pop("_saturation", None)
        samples = np.asarray(samples, np.float32)
        for start in range(0, len(samples), batch_size):
            model(tf.constant(samples[start:start + batch_size]), training=False)
    issues = []
    for layer in model.layers:
        issues.extend(_weight_issues(layer))
        ratios = saturation(layer)
        if ratios.get("buffer", 0.0) > 0:
            issues.append(f"{layer.name}: saturation in integer operations: "
                          f"{100 * ratios['buffer']:.3g}% of the buffer values clipped: "
                          "reduce the input or weight bitwidth, or increase buffer_bitwidth")
        for sub in [layer, *_sublayers(layer)]:
            ratio = saturation(sub).get("output", 0.0)
            if ratio > OUTPUT_SATURATION_TOLERANCE:
                issues.append(f"{layer.name}: saturation in integer operations: "
                              f"{100 * ratio:.3g}% of the output values clipped by "
                              f"{sub.name}: recalibrate with more representative samples")
    return issues
