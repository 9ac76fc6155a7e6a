"""check_quantization: find what a better quantization configuration would fix."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..layers import Dequantizer, InputQuantizer, OutputQuantizer, WeightQuantizer
from ..layers.base import saturation
from ..layers.quantize_wrapper import QuantizeWrapper
from ..layers.registry import QUANTIZATION_TARGETS
from ..tensors import QFloat
from .integer_weights import kernel_for_quantizer

#: Relative error of a quantized scale above which it is reported.
SCALE_TOLERANCE = 2.0**-6
#: Share of saturated output values above which an OutputQuantizer is reported.
OUTPUT_SATURATION_TOLERANCE = 0.01
#: Channels listed by name in one issue (the count is always given).
MAX_LISTED_CHANNELS = 8


def is_quantized_layer(layer):
    """bool: whether a layer is a quantized twin, a quantizer, a Dequantizer or a
    QuantizeWrapper (the layers of a quantized model that are not float)."""
    return type(layer) in set(QUANTIZATION_TARGETS.values()) or \
        isinstance(layer, (InputQuantizer, OutputQuantizer, Dequantizer, QuantizeWrapper))


def float_islands(model):
    """The float islands of a quantized model: float layers between quantized ones, kept float
    by a ``"float"`` q_config entry or ``float_fallback`` (they read dequantized tensors, and
    the output of each island, one layer or a chain of float layers, is requantized by an
    InputQuantizer named ``<layer>_quantizer``).

    Args:
        model (keras.Model): a quantized model.

    Returns:
        list(str): the names of the float island layers, in the model order.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]

    def is_float(layer):
        return not is_quantized_layer(layer)

    parents = {layer.name: [p for node in layer.inbound_nodes[:1]
                            for p in tf.nest.flatten(node.inbound_layers)]
               for layer in layers}
    children = {}
    for name, inbound in parents.items():
        for parent in inbound:
            children.setdefault(parent.name, []).append(name)
    by_name = {layer.name: layer for layer in layers}
    # float layers reading quantized data (through a Dequantizer, maybe via other float
    # layers) whose output is requantized (an InputQuantizer, maybe via other float layers);
    # a float layer that reads only float model inputs is a preprocessing head, one that is
    # never requantized a float tail
    after = {}
    for layer in layers:  # model order: producers first
        after[layer.name] = is_float(layer) and any(
            isinstance(p, Dequantizer) or after.get(p.name, False)
            for p in parents[layer.name])
    before = {}
    for layer in reversed(layers):
        before[layer.name] = is_float(layer) and any(
            isinstance(by_name[c], InputQuantizer) or before.get(c, False)
            for c in children.get(layer.name, []))
    return [layer.name for layer in layers if after[layer.name] and before[layer.name]]


def _sublayers(layer):
    for attr in vars(layer).values():
        if isinstance(attr, (WeightQuantizer, OutputQuantizer)):
            yield attr


def _consumers(model):
    """layer name -> names of the layers that take its outputs (from the model's config)."""
    consumers = {}

    def inbound_names(entry):
        # node entries are [name, node_index, tensor_index, kwargs], nested in lists
        if isinstance(entry, (list, tuple)):
            if entry and isinstance(entry[0], str):
                yield entry[0]
            else:
                for item in entry:
                    yield from inbound_names(item)

    try:
        layers = model.get_config()["layers"]
    except (NotImplementedError, KeyError, TypeError):  # subclassed or sequential-like
        return consumers
    for config in layers:
        for name in inbound_names(config.get("inbound_nodes", [])):
            consumers.setdefault(name, []).append(config["name"])
    return consumers


def _requantizer(model, layer, consumers):
    """The OutputQuantizer that requantizes the outputs of ``layer``: its own, else the one of
    its only consumer (e.g. the ReLU after a convolution); None if there is none."""
    oq = getattr(layer, "out_quantizer", None)
    if isinstance(oq, OutputQuantizer):
        return oq
    names = consumers.get(layer.name, [])
    if len(names) == 1:
        oq = getattr(model.get_layer(names[0]), "out_quantizer", None)
        if isinstance(oq, OutputQuantizer):
            return oq
    return None


def _channel_list(channels):
    listed = ", ".join(str(int(c)) for c in channels[:MAX_LISTED_CHANNELS])
    return listed + (", ..." if len(channels) > MAX_LISTED_CHANNELS else "")


def _channel_issues(layer, attr_name, quantizer, weights, qw, requantizer):
    """Output channels (last axis) of the weights that their quantization cannot represent.

    * lost at the weights (per-tensor weights, FixedPoint weights whose fractional bits are
      clamped to the value bits): the channel's quantized weights are all zero, or its largest
      error exceeds half its largest magnitude (it has at most one quantization level);
    * lost at the outputs (per-axis QFloat weights): the channel's scale is so far below the
      largest one that its outputs are below half a step of the OutputQuantizer that
      requantizes the layer (one step per tensor, or per-axis steps spread over at most
      ``OutputQuantizer.MAX_AXIS_SPREAD`` bits), estimated from the weight ranges: the scale
      ratio is below ``2^-(value_bits + 1 [+ MAX_AXIS_SPREAD])`` (nothing to report when no
      OutputQuantizer follows: the per-axis scales then reach the outputs as they are).
    """
    channels = weights.shape[-1]
    w = np.reshape(np.asarray(weights, np.float64), (-1, channels))
    dequantized = np.reshape(np.asarray(qw.to_float(), np.float64), (-1, channels))
    ranges = np.max(np.abs(w), axis=0)
    bound = np.abs(w)
    if isinstance(qw, QFloat) and getattr(quantizer, "searches_ranges", False):
        # clipped ranges (range_ratios): the weights beyond int_max * scales saturate by
        # design; the representation is judged on the clipped range and the weights inside it
        int_max = 2.0**quantizer.value_bits - 1
        bound = np.reshape(np.broadcast_to(np.asarray(qw.scales, np.float64) * int_max,
                                           np.shape(weights)), (-1, channels))
        ranges = np.minimum(ranges, np.max(bound, axis=0))
    inside = np.abs(w) <= bound
    errors = np.max(np.where(inside, np.abs(dequantized - w), 0.0), axis=0)
    live = ranges > 0
    bad = np.all(dequantized == 0, axis=0)
    if not (quantizer.signed and quantizer.bitwidth == 1):  # binary: sign(w) * mean|w|
        bad |= errors > 0.5 * ranges
    lost = np.flatnonzero(live & bad)
    issues = []
    if lost.size:
        worst = float(np.max(errors[lost] / ranges[lost]))
        issues.append(f"{layer.name}: inaccurate weight scales quantization in {attr_name}: "
                      f"channel(s) {_channel_list(lost)} of {channels} cannot be represented "
                      f"(quantized weights all zero or relative error up to {worst:.3g} with "
                      f"{quantizer.bitwidth}-bit weights): quantize the weights per-axis "
                      "(axis=-1) with QFloat scales, or increase the weight bitwidth")
    if isinstance(qw, QFloat) and quantizer.axis is not None and channels > 1 and \
            np.max(ranges) > 0 and requantizer is not None:
        spread = 0 if requantizer.axis == "per-tensor" else OutputQuantizer.MAX_AXIS_SPREAD
        bits = requantizer.value_bits + spread
        where = f"the {requantizer.axis} output steps of {requantizer.name}"
        ratio = ranges / np.max(ranges)
        tiny = np.setdiff1d(np.flatnonzero(live & (ratio < 2.0**-(bits + 1))), lost)
        if tiny.size:
            issues.append(f"{layer.name}: inaccurate weight scales quantization in {attr_name}: "
                          f"the scales of channel(s) {_channel_list(tiny)} of {channels} are "
                          f"{float(np.min(ratio[tiny])):.3g} of the largest, below what "
                          f"{where} can represent (their outputs quantize to zero): check "
                          "these weights (dead channels?) or rescale them")
    return issues


def _weight_issues(layer, requantizer=None):
    issues = []
    oq = getattr(layer, "out_quantizer", None)
    scale_bits = oq.scale_bits if isinstance(oq, OutputQuantizer) else 8
    for attr_name, quantizer in vars(layer).items():
        if not isinstance(quantizer, WeightQuantizer):
            continue
        weights = kernel_for_quantizer(layer) if attr_name == "weight_quantizer" else None
        if weights is None:
            continue
        qw = quantizer.quantize(weights)
        issues.extend(_channel_issues(layer, attr_name, quantizer, weights, qw, requantizer))
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

    * inaccurate weight scales quantization: weight scales that their ``scale_bits`` quantize
      with a large relative error, and output channels (named by index) whose weights the
      quantization cannot represent: quantized weights all zero or a relative error above
      1/2 (per-tensor or FixedPoint weights), or per-axis scales so far below the layer's
      largest that the channel's outputs quantize to zero in the OutputQuantizer that follows,
    * float islands (layers kept float on request between quantized layers), reported so that
      an integer deployment knows where it leaves integers,
    * saturation in integer operations: the 32-bit buffers (any clipped value) and the
      OutputQuantizers (more than 1% of clipped values), as observed on ``samples`` (or on the
      last eager calls of the model when no samples are given).

    Args:
        model (keras.Model): the model to check.
        samples (np.ndarray, optional): samples to run through the model (a list of arrays,
            one per input, for a multi-input model). Defaults to None.
        batch_size (int, optional): batch size for the samples. Defaults to 32.

    Returns:
        list(str): the quantization issues that were detected.
    """
    if samples is not None:
        for layer in model.layers:
            for sub in [layer, *_sublayers(layer)]:
                sub.__dict__.pop("_saturation", None)
        # one array per model input (a list or tuple of them for a multi-input model)
        arrays = [np.asarray(x) for x in samples] \
            if isinstance(samples, (list, tuple)) and len(model.inputs) > 1 \
            else [np.asarray(samples)]
        arrays = [x.astype(np.float32) if x.dtype.kind == "f" else x for x in arrays]
        for start in range(0, len(arrays[0]), batch_size):
            batch = [tf.constant(x[start:start + batch_size]) for x in arrays]
            model(batch if len(batch) > 1 else batch[0], training=False)
    issues = [f"{name}: float island: kept float (dequantized before it, requantized after it "
              f"by {name}_quantizer); quantize it with a twin to keep the model integer"
              for name in float_islands(model)]
    consumers = _consumers(model)
    for layer in model.layers:
        issues.extend(_weight_issues(layer, _requantizer(model, layer, consumers)))
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
