"""quantize(): a float tf_keras model in, a calibrated quantized model out.

How layers are quantized (the declarative table is the twin registry,
``quantizeml.layers.registry``: each twin registers its ``TwinSpec`` next to its class with
``register_twin``; the rules below read it and no class names):

* every layer with a quantized twin is replaced by it, its float weights copied (they remain
  the trainable variables, so the quantized model trains under QAT);
* weights are quantized on ``qparams.weight_bits`` (``input_weight_bits`` for the first layer
  with weights, in topological order);
* OutputQuantizers are placed at block ends: on every ReLU (unsigned, ``activation_bits``), and
  on every layer with weights, Add and GlobalAveragePooling2D that is not followed by a ReLU
  (signed, ``output_bits``; unsigned where the float values cannot be negative, see
  ``_nonnegative_layers``: a global average of ReLU outputs uses all its levels), except the
  layers that produce the model outputs, whose exact accumulators are dequantized. Shape-only
  layers (pooling, reshaping, dropout) pass their inputs through. Activations are per-axis
  unless ``per_tensor_activations`` or unless they flow into a Flatten/Reshape/Permute/
  Concatenate (which need one fractional bit);
* each float model input gets an InputQuantizer (signed when the samples have negative
  values), except inputs consumed by a Rescaling (raw integer pixels: when the calibration
  samples are not integers of its input range, e.g. images already in [0, 1], the Rescaling
  stays float as a preprocessing head and an InputQuantizer follows it), on
  ``max(activation_bits, min(input_weight_bits, 8))`` bits: a first layer kept on 8 bits in a
  low-bit model (the usual "first layer 8-bit" of low-bit recipes) reads 8-bit inputs too,
  instead of, e.g., 3-bit images (the same for the InputQuantizer ending a float preprocessing
  head; those after float islands are activations, ``activation_bits``);
* a Dequantizer is appended to each model output;
* after calibration, the biases of layers with weights of 4 bits or less are corrected for the
  mean output shift their weight rounding causes (``bias_correction.correct_biases``);
* on request (``range_search``), each OutputQuantizer's range then moves by
  a factor of two where that brings the model outputs closer to the float model's on the
  first calibration samples (``calibrate.search_output_ranges``);
* on request (``learned_rounding``), the rounding of the quantized weights is then learned on
  the calibration samples (``learned_rounding.learn_rounding``, AdaRound), layer by layer;
* the float tail rule: layers without a quantized twin are allowed only after the last
  quantized layers (no quantized layer downstream of them, e.g. a final softmax); they stay
  float and receive dequantized inputs. The float head rule: layers without a quantized twin
  that only read the model inputs (float preprocessing, e.g. a ``Rescaling(1/127.5,
  offset=-1)`` before a padded convolution) stay float too, and an InputQuantizer
  ``<layer>_quantizer`` (calibrated) requantizes their output. Anywhere else they are
  reported, all together.

* float islands, on request: a ``q_config`` entry ``"float"`` (``{"layer_name": "float"}``)
  keeps that layer float anywhere in the graph: its quantized inputs are dequantized before it
  (``Dequantizer``) and its output is requantized after it by an ``InputQuantizer`` named
  ``<layer>_quantizer``, calibrated on the float layer's outputs like every other quantizer;
  ``float_fallback=True`` makes every layer that would be reported an island.

A Keras 3 model (``tf.keras`` in TF 2.21, or ``import keras``) is first converted to its
tf_keras twin (``quantizeml.models.from_keras3``: weights copied, outputs checked; a layer it
cannot convert is named in the error).

Before all this, a float model is **prepared** by the equivalence-preserving transforms of
``quantizeml.models.transforms.sanitize`` (the float outputs stay equal to float rounding):
nested models are flattened; MultiHeadAttention self-attentions split into Dense
projections and an Attention; GroupNormalization split into a LayerNormalization per group and
a per-channel affine DepthwiseConv2D; fused activations split into layers of their own; Lambda /
TFOpLambda layers replaced by layers (ReLU, Permute, Reshape, Add, Subtract, Multiply,
Rescaling, Activation), the MobileNetV3 hard-swish / hard-sigmoid patterns fused into one
Activation; ReLUs with a negative slope become LeakyReLUs (TableReLUs with a threshold or a
maximum too); ZeroPadding2D merged into the next
'valid' convolution where it is a 'same' padding; BatchNormalization moved before pooling and
folded into the layer before it, Normalization (preprocessing) and LayerScale folded into
their neighbour layers; MaxPool2D moved before ReLU and Rescaling offsets moved into the next
bias (a Rescaling left inside the model with an offset or a negative scale becomes a
per-channel affine DepthwiseConv2D) — so ``quantize(model)`` needs no ``sanitize`` call first.
The input model is never modified; q_config keys and the quantized layers use the names of
the prepared model (``sanitize(model)`` shows it; a folded BatchNormalization has no layer of
its own).

``q_config`` entries (layer name -> quant_config, as ``dump_config`` returns) win over the
rules above.
"""
import warnings

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..layers import Dequantizer, InputQuantizer, OutputQuantizer, WeightQuantizer
from ..layers.registry import ACTIVATION, BLOCK_END, QUANTIZATION_TARGETS, twin_spec
from ..layers.table import TableReLU, activation_name
from ..layers.quantize_wrapper import QuantizeWrapper, annotated_config, as_quantize_config
from ..recipes.fast_paths import eager_layer_calls, unfused
from .bias_correction import correct_biases
from .calibrate import (OUTPUT_SEARCH_MAX_QUANTIZERS, calibrate, output_quantizers,
                        search_output_ranges)
from .check import is_quantized_layer
from .graph import (check_functional, consumers, is_qtensor, output_layers, producer,
                    replace_layers)
from .keras3 import from_keras3, is_keras3_model
from .learned_rounding import learn_rounding
from .qat import QuantizedModel, as_quantized_model
from .quantization_params import QuantizationParams, get_quantization_params
from .samples import Batches
from .transforms.sanitize import sanitize

def _spec(layer):
    """The layer's TwinSpec (float layer with a twin, or a twin), or None."""
    return twin_spec(layer)


def _has_weights(layer):
    spec = _spec(layer)
    return spec is not None and spec.has_weights


def _is_pass_through(layer):
    spec = _spec(layer)
    return spec is not None and spec.passes_through(layer)


def _is_activation(layer):
    spec = _spec(layer)
    return spec is not None and spec.output_for(layer) == ACTIVATION


def _effective_consumers(layer, consumer_map):
    """Consumers of a layer, looking through shape-only layers (which are returned too)."""
    seen, out, stack = set(), [], list(consumer_map.get(layer.name, []))
    while stack:
        c = stack.pop()
        if c.name in seen:
            continue
        seen.add(c.name)
        out.append(c)
        if _is_pass_through(c):
            stack.extend(consumer_map.get(c.name, []))
    return out


def _downstream(layer, consumer_map):
    seen, stack = set(), list(consumer_map.get(layer.name, []))
    while stack:
        c = stack.pop()
        if c.name not in seen:
            seen.add(c.name)
            stack.extend(consumer_map.get(c.name, []))
    return seen


def _refusal(layer):
    """Why no twin quantizes a float layer (None when one does)."""
    spec = _spec(layer) if type(layer) in QUANTIZATION_TARGETS else None
    if spec is None:
        return "no quantized twin"
    return spec.refusal(layer)


def _producers(consumer_map):
    """Layer name -> the set of names of the layers it reads (``consumer_map`` reversed)."""
    producers = {}
    for name, users in consumer_map.items():
        for user in users:
            producers.setdefault(user.name, set()).add(name)
    return producers


def _unsupported(model, consumer_map, wrapped, islands=(), refused=None):
    """Layers without a twin that accepts them (nor a QuantizeConfig, nor a float island), and
    which of them form the allowed float tail (no quantized layer after them) and float head
    (they only read the model inputs or other head layers: float preprocessing).
    ``refused`` maps more layer names to the reason their twin does not fit them.

    Returns:
        tuple: the sets of tail and head layer names, and the list of ``(layer, reason)``
        errors.
    """
    layers = [layer for layer in model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    reasons = {layer.name: _refusal(layer) or (refused or {}).get(layer.name)
               for layer in layers
               if not is_quantized_layer(layer) and layer.name not in wrapped
               and layer.name not in islands}
    bad = {name for name, reason in reasons.items() if reason is not None}
    for layer in reversed(layers):  # consumers first: a chain of them at the end stays float
        spec = _spec(layer) if layer.name in reasons else None
        if spec is not None and spec.float_at_end and layer.name not in bad \
                and all(n in bad for n in _downstream(layer, consumer_map)):
            reasons[layer.name] = "kept float at the end of the model"
            bad.add(layer.name)
    producers = _producers(consumer_map)
    inputs = {layer.name for layer in model.layers
              if isinstance(layer, keras.layers.InputLayer)}
    head, tail, errors = set(), set(), []
    for layer in layers:  # topological order: a head layer's producers are decided first
        if layer.name not in bad:
            continue
        down = _downstream(layer, consumer_map)
        if not any(n not in bad for n in down):
            tail.add(layer.name)
        elif producers.get(layer.name) and producers[layer.name] <= inputs | head:
            head.add(layer.name)
        else:
            errors.append((layer, reasons[layer.name]))
    return tail, head, errors


def _rescaling_refusals(model, consumer_map, batches, q_config):
    """Rescalings reading a model input whose calibration samples are not the integers
    QuantizedRescaling takes (8-bit unsigned pixels unless its q_config entry says otherwise):
    name -> reason. quantize() keeps them float (a float preprocessing head, an InputQuantizer
    after it) rather than rounding, e.g., images in [0, 1] to {0, 1}."""
    index = {producer(t).name: i for i, t in enumerate(model.inputs)}
    refused = {}
    for name, users in consumer_map.items():
        if name not in index:
            continue
        for layer in users:
            if type(layer) is not keras.layers.Rescaling or _refusal(layer) is not None \
                    or layer.name in refused:
                continue
            entry = q_config.get(layer.name)
            entry = entry if isinstance(entry, dict) else {}
            bits = int(entry.get("input_bitwidth", 8))
            signed = bool(entry.get("input_signed", False))
            low, high = (-2**(bits - 1), 2**(bits - 1) - 1) if signed else (0, 2**bits - 1)
            lowest, highest, integers = np.inf, -np.inf, True
            for batch in batches:
                x = np.asarray(batch[index[name]], np.float64)
                lowest, highest = min(lowest, float(np.min(x))), max(highest, float(np.max(x)))
                integers = integers and bool(np.all(x == np.floor(x)))
            if not integers or lowest < low or highest > high:
                refused[layer.name] = (
                    f"QuantizedRescaling reads {bits}-bit {'signed' if signed else 'unsigned'} "
                    f"integers [{low}, {high}]; the samples of {name!r} are "
                    f"{'not integers' if not integers else 'integers'} in "
                    f"[{lowest:.4g}, {highest:.4g}]")
    return refused


#: Elementwise activations whose outputs are >= 0 (their table needs no negative level).
NONNEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "hard_sigmoid_relu6",
                           "softplus", "exponential", "abs")
#: Layers whose output is >= 0 when all their inputs are (averages, maxima, sums, products,
#: concatenations, interpolations with nonnegative weights, and moves of values); Maximum
#: needs one nonnegative input only.
_SIGN_KEEPING = (keras.layers.GlobalAveragePooling2D, keras.layers.AveragePooling2D,
                 keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D,
                 keras.layers.UpSampling2D, keras.layers.Resizing, keras.layers.ZeroPadding2D,
                 keras.layers.Cropping2D, keras.layers.Flatten, keras.layers.Reshape,
                 keras.layers.Permute, keras.layers.Dropout, keras.layers.Concatenate,
                 keras.layers.Add, keras.layers.Multiply, keras.layers.Minimum)


def _nonnegative_layers(model, consumer_map):
    """The names of the layers whose float output is >= 0 whatever the model inputs: ReLUs,
    nonnegative activations (``NONNEGATIVE_ACTIVATIONS``, LeakyReLU excluded) and the
    sign-keeping layers of such outputs. quantize() gives their OutputQuantizers an unsigned
    range: a signed one would spend half its levels on values that never occur (a 4-bit
    global average pooling after a ReLU keeps 8 of its 16 levels)."""
    producers = _producers(consumer_map)
    found = set()
    for layer in model.layers:  # topological order: producers first
        inputs = producers.get(layer.name, set())
        if type(layer) in (keras.layers.ReLU, TableReLU) and not float(layer.negative_slope) \
                and not float(layer.threshold) < 0:
            found.add(layer.name)
        elif type(layer) is keras.layers.Activation \
                and activation_name(layer.activation) in NONNEGATIVE_ACTIVATIONS:
            found.add(layer.name)
        elif type(layer) is keras.layers.Maximum and any(n in found for n in inputs):
            found.add(layer.name)
        elif isinstance(layer, _SIGN_KEEPING) and inputs and all(n in found for n in inputs):
            found.add(layer.name)
    return found


def _output_quantizer(bits, signed, per_tensor, qparams):
    return {"bitwidth": bits, "signed": signed,
            "axis": "per-tensor" if per_tensor else "per-axis",
            "buffer_bitwidth": qparams.buffer_bits}


def _default_config(layer, qparams, consumer_map, final, first_weights, nonnegative=False):
    spec = _spec(layer)
    config = {}
    if spec.has_weights:
        bits = qparams.input_weight_bits if first_weights else qparams.weight_bits
        for key in spec.weights:
            config[key] = {"bitwidth": bits}
    effective = _effective_consumers(layer, consumer_map)
    per_tensor = qparams.per_tensor_activations or any(
        _spec(c) is not None and _spec(c).needs_per_tensor_inputs(c) for c in effective)
    output = spec.output_for(layer)
    if output == ACTIVATION:
        config["output_quantizer"] = _output_quantizer(qparams.activation_bits, False,
                                                       per_tensor, qparams)
    elif output == BLOCK_END and not final:
        real = [c for c in effective if not _is_pass_through(c)]
        if not real or not all(_is_activation(c) for c in real):
            config["output_quantizer"] = _output_quantizer(qparams.output_bits, not nonnegative,
                                                           per_tensor, qparams)
    if config or spec.has_weights or output == ACTIVATION:
        config["buffer_bitwidth"] = qparams.buffer_bits
    return config


def _copy_weights(layer, qlayer):
    """Copies the float weights by name; a float weight with no counterpart raises."""
    if isinstance(qlayer, QuantizeWrapper) and not isinstance(layer, QuantizeWrapper):
        for var, value in zip(qlayer.layer_weights, layer.get_weights()):
            var.assign(value)
        return
    qvars = {v.name: v for v in qlayer.weights}
    for v in layer.weights:
        target = qvars.get(v.name)
        if target is None or target.shape != v.shape:
            raise ValueError(f"quantize expected {type(qlayer).__name__} {qlayer.name!r} to "
                             f"hold the float weight {v.name} {tuple(v.shape)}. Received: "
                             f"weights {[(w.name, tuple(w.shape)) for w in qlayer.weights]}")
        target.assign(v)


#: The q_config entry that keeps a layer float (a float island).
FLOAT = "float"


def _check_q_config(model, q_config, raw_names=()):
    if q_config is None:
        return {}
    if not isinstance(q_config, dict):
        raise TypeError(f"quantize expected q_config to be a dict. Received: {q_config!r}")
    names = {layer.name for layer in model.layers}
    names |= {f"{layer.name}_quantizer" for layer in model.layers}
    missing = sorted(set(q_config) - names)
    if missing:
        folded = sorted(set(missing) & set(raw_names))
        hint = (f" ({folded} are removed by the preparation of the float model: "
                "quantizeml.models.transforms.sanitize(model) shows the layers quantize() "
                "works on)") if folded else ""
        raise ValueError(f"quantize expected q_config keys naming layers of the model. "
                         f"Received: unknown layer names {missing}{hint}")
    for name, entry in q_config.items():
        if isinstance(entry, str) and entry != FLOAT:
            raise ValueError(f"quantize expected a q_config entry to be a quant_config dict, a "
                             f"QuantizeConfig or {FLOAT!r}. Received: {name!r}: {entry!r}")
    return q_config


#: The quantizer of ONNX models, registered by ``quantizeml.onnx_support`` when it is imported
#: (``import quantizeml`` imports it): models never imports onnx_support, which depends on it.
_ONNX_QUANTIZE = {}


def register_onnx_quantize(fn):
    """Registers the function that quantize() hands an ``onnx.ModelProto`` to.

    Args:
        fn (callable): ``fn(model, qparams, samples, num_samples, batch_size, epochs)``.

    Returns:
        callable: ``fn``.
    """
    _ONNX_QUANTIZE["quantize"] = fn
    return fn


def _input_signed(batches, index):
    return bool(min(float(np.min(b[index])) for b in batches) < 0)


def _head_signed(model, layer, batches):
    """Whether the output of a float preprocessing layer takes negative values on the
    samples."""
    probe = keras.Model(model.inputs, layer.output)
    single = len(model.inputs) == 1
    return bool(min(float(np.min(probe(b[0] if single else b, training=False)))
                    for b in batches) < 0)


@unfused
def quantize(model, q_config=None, qparams=None, samples=None, num_samples=1024,
             batch_size=None, epochs=1, verbose=False, learned_rounding=False,
             range_search=False, float_fallback=False):
    """Quantizes a Keras or ONNX model using the provided configuration or parameters.

    * q_config has priority over qparams: when a layer name is found in q_config, its
      configuration is used instead of the one deduced from qparams.
    * when no configuration is given, quantization parameters are deduced from qparams and
      OutputQuantizers are automatically set on appropriate layers (module docstring).
    * qparams are only applied to 'float' Keras layers when they are first quantized: to
      re-quantize a quantized model, provide a complete q_config (``dump_config``).
    * an ``onnx.ModelProto`` is quantized by ``quantizeml.onnx_support.quantization.quantize``:
      8-bit weights and activations only (``per_tensor_activations`` honoured), epochs must be 1.

    If not already present, a final Dequantizer is added at the end of the Model. The model is
    then calibrated using the provided (or randomly generated) samples.

    Args:
        model (keras.Model or onnx.ModelProto): the model to quantize (tf_keras, Keras 3 or
            ONNX).
        q_config (dict, optional): layer name -> quantization configuration. Defaults to None.
        qparams (QuantizationParams, optional): global quantization parameters. Defaults to the
            ones of the enclosing ``quantization`` context, else QuantizationParams().
        samples (tf.Dataset, np.array or generator, optional): calibration samples; random
            samples when None. Defaults to None.
        num_samples (int, optional): number of samples to use or to generate. Defaults to 1024.
        batch_size (int, optional): the batch size. Defaults to None (32).
        epochs (int, optional): the number of calibration epochs. Defaults to 1.
        verbose (bool, optional): show a progress bar during calibration. Defaults to False.
        learned_rounding (bool or dict, optional): after calibration and bias correction,
            learn the rounding of the quantized weights on the calibration samples
            (``quantizeml.models.learn_rounding``, AdaRound: each weight rounds down or up to
            reconstruct the float layer's output; the result is integer-exact like any
            quantized model). True for its defaults, or a dict of its keyword arguments
            (``iterations``, ``batch_size``, ``reg``, ``beta``, ``learning_rate``,
            ``asymmetric``, ``report``, ``seed``). Worth it at 4 bits or less; it costs about
            ``iterations`` small steps per layer. Keras models quantized from float only.
            Defaults to False.
        range_search (bool, optional): after calibration and bias correction, move each
            OutputQuantizer's range by a factor of two where that brings the quantized
            model's outputs closer to the float model's on the first calibration samples
            (:func:`~quantizeml.models.calibrate.search_output_ranges`; the ranges stay powers
            of two). True: always; None (auto): when some OutputQuantizer has fewer than 8 bits
            and the model has at most ``OUTPUT_SEARCH_MAX_QUANTIZERS`` (64) of them (each costs
            two passes of the quantized model over 512 samples per sweep); False: never. It
            helps nearest-rounding PTQ at low bits, not learned rounding or QAT (measured in
            ``benchmarks/README.md``), hence off by default. Defaults to False.
        float_fallback (bool, optional): keep every layer that cannot be quantized float (a
            float island, as ``q_config={name: 'float'}`` does for each) instead of raising;
            a warning lists them, and ``check_quantization`` / ``quantizeml analyze`` report
            them. Defaults to False (one error listing every culprit).

    Returns:
        keras.Model or onnx.ModelProto: the quantized model; a Keras one is a
        :class:`~quantizeml.models.qat.QuantizedModel` (its ``fit`` scales the updates of the
        2-3-bit kernels).

    Raises:
        ValueError: unsupported layers (all listed), invalid samples or q_config, learned
            rounding on an ONNX or already quantized model or with unknown options.
        TypeError: learned_rounding neither a bool nor a dict.
    """
    rounding_options = _rounding_options(learned_rounding)
    if range_search is not None and not isinstance(range_search, bool):
        raise TypeError(f"quantize expected range_search to be None, True or False. "
                        f"Received: range_search={range_search!r}")
    if type(model).__module__.startswith("onnx"):
        if q_config is not None:
            raise ValueError("quantize expected q_config=None for an ONNX model (only qparams "
                             "apply). Received: a q_config")
        if epochs != 1:
            raise ValueError(f"quantize expected epochs=1 for an ONNX model. "
                             f"Received: epochs={epochs}")
        if rounding_options is not None:
            raise ValueError("quantize expected learned_rounding=False for an ONNX model "
                             "(learned rounding applies to Keras models). Received: "
                             f"learned_rounding={learned_rounding!r}")
        quantize_onnx = _ONNX_QUANTIZE.get("quantize")
        if quantize_onnx is None:
            raise ValueError("quantize expected quantizeml.onnx_support to be importable for an "
                             "ONNX model (it needs onnx and onnxruntime). Received: an "
                             "onnx.ModelProto")
        return quantize_onnx(model, qparams=qparams, samples=samples, num_samples=num_samples,
                             batch_size=batch_size, epochs=epochs)
    qparams = get_quantization_params() if qparams is None else qparams
    if not isinstance(qparams, QuantizationParams):
        raise TypeError(f"quantize expected qparams to be a QuantizationParams. "
                        f"Received: {qparams!r}")
    if is_keras3_model(model):
        # its tf_keras twin: weights copied, outputs checked (on two samples when arrays)
        model = from_keras3(model, samples=samples)
    check_functional(model)
    requantize = any(is_quantized_layer(layer) for layer in model.layers)
    if requantize and rounding_options is not None:
        raise ValueError(f"quantize expected a float model with learned_rounding (the rounding "
                         f"reconstructs the float layers' outputs). Received: the quantized "
                         f"model {model.name!r}; call "
                         "quantizeml.models.learn_rounding(float_model, qmodel, samples) "
                         "instead")
    annotations = {layer.name: annotated_config(layer) for layer in model.layers
                   if annotated_config(layer) is not None}
    raw_names = [layer.name for layer in model.layers]
    if not requantize:
        # a layer kept float on request is kept whole (a MultiHeadAttention is not split)
        model = sanitize(model, float_layers=[
            name for name, entry in (q_config.items() if isinstance(q_config, dict) else ())
            if isinstance(entry, str) and entry == FLOAT])
    q_config = _check_q_config(model, q_config, raw_names)
    islands = {name for name, entry in q_config.items() if entry == FLOAT}
    q_config = {name: entry for name, entry in q_config.items() if name not in islands}
    consumer_map = consumers(model)
    wrapped = {}
    for layer in model.layers:
        config = as_quantize_config(q_config.get(layer.name)) or annotations.get(layer.name)
        if config is not None and not isinstance(layer, QuantizeWrapper):
            wrapped[layer.name] = config
    batches = Batches(model, samples, num_samples, batch_size, epochs)
    # with samples, a Rescaling of the model inputs that are not integer pixels stays float
    refused = {} if samples is None or requantize else \
        _rescaling_refusals(model, consumer_map, batches, q_config)
    tail, head, errors = _unsupported(model, consumer_map, wrapped, islands, refused)
    if errors and float_fallback:
        fallback = [layer.name for layer, _ in errors]
        warnings.warn(f"quantize keeps {len(fallback)} unsupported layers float "
                      f"(float_fallback=True): {', '.join(fallback)}", stacklevel=3)
        islands |= set(fallback)
        tail, head, errors = _unsupported(model, consumer_map, wrapped, islands, refused)
    if errors:
        listing = ", ".join(
            f"{layer.name} ({type(layer).__name__}"
            f"{'' if reason == 'no quantized twin' else ': ' + reason})"
            for layer, reason in errors)
        raise ValueError(
            f"quantize expected layers with a quantized twin. Received: unsupported layers "
            f"{listing}. Hint: keep them float with q_config={{name: {FLOAT!r}}} (a float "
            "island: dequantized before, requantized and calibrated after; "
            "float_fallback=True does it for all of them), register a twin "
            "(quantizeml.layers.register_twin) or a QuantizeConfig for them, or keep them float "
            "after the last quantized layer.")
    floating = tail | islands | head | set(wrapped)
    finals = set()
    for name in output_layers(model):
        finals.add(name)
    for name in tail:
        for layer in model.layers:
            if name in [c.name for c in consumer_map.get(layer.name, [])]:
                finals.add(layer.name)
    for layer in model.layers:
        # a layer read only by float islands: its exact accumulator is dequantized
        users = consumer_map.get(layer.name, [])
        if users and any(u.name in islands for u in users) and \
                all(u.name in floating for u in _effective_consumers(layer, consumer_map)
                    if not _is_pass_through(u)):
            finals.add(layer.name)
    first = [True]
    nonnegative = _nonnegative_layers(model, consumer_map)

    def config_for(layer):
        is_first = first[0] and _has_weights(layer)
        if _has_weights(layer):
            first[0] = False
        if layer.name in q_config:
            return q_config[layer.name]
        if requantize:
            raise ValueError(f"quantize expected a q_config entry for every quantized layer when "
                             f"re-quantizing a quantized model. Received: none for "
                             f"{layer.name!r} (use dump_config)")
        return _default_config(layer, qparams, consumer_map, layer.name in finals, is_first,
                               layer.name in nonnegative)

    def convert(layer):
        if layer.name in wrapped:
            clone = layer.__class__.from_config(layer.get_config())
            return QuantizeWrapper(clone, wrapped[layer.name], name=layer.name)
        if layer.name in tail or layer.name in islands or layer.name in head or \
                isinstance(layer, (Dequantizer, QuantizeWrapper)):
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, (InputQuantizer, OutputQuantizer)):
            return type(layer).from_config({**layer.get_config(), **q_config.get(layer.name, {})})
        qcls = type(layer) if requantize else QUANTIZATION_TARGETS[type(layer)]
        config = {**layer.get_config(), "quant_config": config_for(layer)}
        try:
            return qcls.from_config(config)
        except TypeError as e:
            # Keras wraps the layer's own clear ValueError into a TypeError with a config dump
            if isinstance(e.__context__, ValueError):
                raise e.__context__ from None
            raise

    input_index = {producer(t).name: i for i, t in enumerate(model.inputs)}

    def input_quantizer(layer, signed, model_input=True):
        """The InputQuantizer after ``layer`` (q_config entry ``<layer>_quantizer`` first);
        ``model_input``: it quantizes the model's inputs (or a float head's output), on
        ``max(activation_bits, min(input_weight_bits, 8))`` bits (module docstring)."""
        name = f"{layer.name}_quantizer"
        bits = max(qparams.activation_bits, min(qparams.input_weight_bits, 8)) if model_input \
            else qparams.activation_bits
        kwargs = q_config.get(name) or {
            "bitwidth": bits, "axis": "per-tensor", "signed": signed,
            "buffer_bitwidth": qparams.buffer_bits}
        return InputQuantizer(name=name, **kwargs)

    def after(layer, outputs):
        if isinstance(layer, keras.layers.InputLayer) and not requantize:
            users = consumer_map.get(layer.name, [])
            if users and all((_spec(u) is not None and _spec(u).float_inputs)
                             or u.name in floating for u in users):
                return outputs
            return input_quantizer(layer, _input_signed(batches, input_index[layer.name]))(
                outputs)
        if layer.name in head and any(
                c.name not in floating for c in consumer_map.get(layer.name, [])):
            # integers from here on: the float preprocessing head ends
            return input_quantizer(layer, _head_signed(model, layer, batches))(outputs)
        if (layer.name in wrapped or layer.name in islands) and any(
                c.name not in floating for c in consumer_map.get(layer.name, [])):
            # back to integers after a fake-quantized layer
            return input_quantizer(layer, True, model_input=False)(outputs)
        return outputs

    def before(layer, args, kwargs):
        """Dequantizes the quantized tensors a float layer reads, positional or keyword: one
        Dequantizer per tensor (``<layer>_dequantizer``, then ``_1``...), reused where the
        layer reads it twice (self-attention ``mha(y, y)``)."""
        if layer.name not in floating:
            return args, kwargs
        dequantized = {}

        def dequantize(t):
            if not is_qtensor(t):
                return t
            if id(t) not in dequantized:
                index = len(dequantized)
                suffix = "" if index == 0 else f"_{index}"
                dequantized[id(t)] = Dequantizer(name=f"{layer.name}_dequantizer{suffix}")(t)
            return dequantized[id(t)]
        return tf.nest.map_structure(dequantize, (args, kwargs))

    qmodel, new_layers = replace_layers(model, convert, after=after, before=before,
                                        name=model.name + ("" if requantize else "_quantized"),
                                        weights_copied=True)
    for layer in model.layers:
        if layer.name in new_layers:
            _copy_weights(layer, new_layers[layer.name])
    qmodel = _append_dequantizers(qmodel)
    _search_weight_ranges(qmodel, batches)
    calibrate(model, qmodel, batches=batches, verbose=verbose)
    if not requantize:
        correct_biases(model, qmodel, batches)
    if not requantize and _searches_ranges(qmodel, range_search):
        search_output_ranges(model, qmodel, batches)
    if rounding_options is not None:
        qmodel = learn_rounding(model, qmodel, batches, verbose=verbose, **rounding_options)
    return qmodel


def _search_weight_ranges(qmodel, batches):
    """Sets the range ratios of the low-bit weight quantizers (``WeightQuantizer.search_ranges``)
    on the float weights: one eager call of ``qmodel`` on one sample, in which each such
    quantizer searches on the weights it is called with."""
    quantizers = [m for m in qmodel.submodules
                  if isinstance(m, WeightQuantizer) and m.searches_ranges]
    if not quantizers:
        return
    for quantizer in quantizers:
        quantizer.search_pending = True
    try:
        batch = next(iter(batches))
        sample = [np.asarray(x)[:1] for x in batch]
        with eager_layer_calls():
            qmodel(sample if len(sample) > 1 else sample[0], training=False)
    finally:
        # a quantizer the layer never calls (the gamma quantizer of a LayerNormalization
        # without scale) stays unbuilt: it quantizes nothing
        missed = [q.name for q in quantizers if q.search_pending and q.built]
        for quantizer in quantizers:
            quantizer.search_pending = False
    if missed:
        raise RuntimeError(f"quantize expected the weight quantizers {missed} to be called "
                           "once on their weights (to search their ranges). Received: a model "
                           "call that did not reach them (please report this)")


#: The learn_rounding keyword arguments quantize(learned_rounding={...}) accepts.
ROUNDING_OPTIONS = ("iterations", "batch_size", "reg", "beta", "learning_rate", "asymmetric",
                    "report", "seed", "output_ranges")


def _rounding_options(learned_rounding):
    """The learn_rounding keyword arguments of quantize's ``learned_rounding`` (None: off)."""
    if isinstance(learned_rounding, bool):
        return {} if learned_rounding else None
    if not isinstance(learned_rounding, dict):
        raise TypeError(f"quantize expected learned_rounding to be a bool or a dict of "
                        f"learn_rounding options. Received: learned_rounding="
                        f"{learned_rounding!r}")
    unknown = sorted(set(learned_rounding) - set(ROUNDING_OPTIONS))
    if unknown:
        raise ValueError(f"quantize expected learned_rounding options among "
                         f"{list(ROUNDING_OPTIONS)}. Received: unknown options {unknown}")
    return dict(learned_rounding)


def _searches_ranges(qmodel, range_search):
    """Whether quantize() runs the output-aware range search (its ``range_search``)."""
    if range_search is not None:
        return range_search
    targets = output_quantizers(qmodel)
    low = any(oq.bitwidth < 8 for oq in targets.values() if not isinstance(oq, InputQuantizer))
    return low and len(targets) <= OUTPUT_SEARCH_MAX_QUANTIZERS


def _append_dequantizers(qmodel):
    """The quantized model as a :class:`~quantizeml.models.qat.QuantizedModel`, with a
    Dequantizer after each quantized output."""
    outputs = qmodel.outputs
    if not any(is_qtensor(t) for t in outputs):
        return as_quantized_model(qmodel)
    new = [Dequantizer(name="dequantizer" if len(outputs) == 1 else f"dequantizer_{i}")(t)
           if is_qtensor(t) else t for i, t in enumerate(outputs)]
    return QuantizedModel(qmodel.inputs, new if len(new) > 1 else new[0], name=qmodel.name)
