"""Calibration: set the OutputQuantizer ranges of a quantized model from samples.

Two passes over the samples, both on the reference (float) model's activations:

1. OutputObservers measure each block output's range (momentum average of the batch maxima
   and the largest value seen), per tensor or per channel as the OutputQuantizer is.
2. Range search: for each OutputQuantizer, the candidate fractional bits ``f0 .. f0 + 3``
   (``f0`` holding the largest value seen without clipping; each extra bit halves the range
   and the rounding step) are scored by the squared quantization error they give on the
   samples, and the best is kept, per channel for per-axis quantizers. Trading a little
   clipping of rare outliers for twice the resolution is where low-bit accuracy is won.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..layers import (Dequantizer, InputQuantizer, OutputObserver, OutputQuantizer,
                      QuantizedAdd, QuantizedConcatenate, QuantizedMaximum, QuantizedMinimum,
                      QuantizedSubtract, QuantizeWrapper)
from ..layers.registry import twin_spec
from ..recipes.fast_paths import unfused
from .graph import check_functional, is_qtensor
from .samples import Batches

#: The merges that align their operands on their largest fractional bits.
_ALIGNING_MERGES = (QuantizedAdd, QuantizedSubtract, QuantizedMaximum, QuantizedMinimum,
                    QuantizedConcatenate)
#: How many extra fractional bits the range search tries beyond the no-clipping ones.
SEARCH_BITS = 3


def output_quantizers(qmodel):
    """Maps reference-layer names to the OutputQuantizers calibrated from their outputs.

    An InputQuantizer named ``<input>_quantizer`` is calibrated from the model input
    ``<input>``; a layer's ``out_quantizer`` from the output of the layer with its name.
    """
    targets = {}
    for layer in qmodel.layers:
        if isinstance(layer, InputQuantizer) and layer.name.endswith("_quantizer"):
            targets[layer.name[:-len("_quantizer")]] = layer
        elif isinstance(layer, OutputQuantizer):
            targets[layer.name] = layer
        else:
            oq = getattr(layer, "out_quantizer", None)
            if isinstance(oq, OutputQuantizer):
                targets[layer.name] = oq
    return targets


def calibration_required(model):
    """Checks if a model requires calibration.

    Args:
        model (keras.Model): the model to check.

    Returns:
        bool: True if one of its OutputQuantizers still has its range_max set to 1.
    """
    for oq in output_quantizers(model).values():
        if oq.built and np.all(oq.range_max.numpy() == 1.0):
            return True
    return False


def _layer_output(model, layer):
    """The output of ``layer`` in ``model``; for a layer called several times in it (shared),
    the outputs of all its calls, each flattened to ``(-1, channels)`` and concatenated, so
    that its one OutputQuantizer is calibrated on every call."""
    nodes = getattr(model, "_network_nodes", None)
    outputs = []
    for index in range(len(layer._inbound_nodes)):
        if nodes is not None and f"{layer.name}_ib-{index}" not in nodes:
            continue  # a call in another model
        out = layer.get_output_at(index)
        outputs.append(out[0] if isinstance(out, (list, tuple)) else out)
    if len(outputs) <= 1:
        out = layer.output
        return out[0] if isinstance(out, (list, tuple)) else out
    outputs = [_dequantized(t) for t in outputs]
    return tf.concat([tf.reshape(t, (-1, t.shape[-1])) for t in outputs], axis=0)


def _reference_tensors(model, names):
    tensors = {}
    for t in model.inputs:
        tensors[t._keras_history.layer.name] = t
    for layer in model.layers:
        if layer.name in names and layer.name not in tensors:
            tensors[layer.name] = _layer_output(model, layer)
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise ValueError(f"calibrate expected the reference model to have the layers that the "
                         f"quantized model calibrates. Received: missing layers {missing}")
    return [tensors[n] for n in names]


def _dequantized(t):
    return Dequantizer()(t) if is_qtensor(t) else t


def _calibrate_wrappers(qmodel, batches):
    """Lets the fake quantizers of QuantizeWrapper layers (TF-MOT style, whose ranges move
    in training calls) see the samples: each wrapper alone is called with training=True on
    its inputs; nothing else of the model is trained."""
    wrappers = [layer for layer in qmodel.layers if isinstance(layer, QuantizeWrapper)]
    if not wrappers:
        return
    feeder = keras.Model(qmodel.inputs, [w.input for w in wrappers])
    for batch in batches:
        inputs = feeder(batch if len(batch) > 1 else batch[0], training=False)
        inputs = inputs if isinstance(inputs, (list, tuple)) and len(wrappers) > 1 else [inputs]
        for wrapper, x in zip(wrappers, inputs):
            wrapper(x, training=True)


class _SummaryObserver(OutputObserver):
    """An OutputObserver that returns its count (a scalar) instead of its inputs, so that the
    calibration pass does not return (and keep alive) the activation it read."""

    def call(self, inputs):
        super().call(inputs)
        return tf.identity(self.count)


class _CandidateErrors(keras.layers.Layer):
    """The range search's output for one quantizer: :func:`_candidate_errors` of its input
    (``SEARCH_BITS + 1`` rows, per channel for a per-axis quantizer), not the activation."""

    def __init__(self, quantizer, f0, **kwargs):
        super().__init__(**kwargs)
        # plain values, not the quantizer (a tracked sublayer would join this pass' model)
        self.grid = (int(quantizer.value_bits), bool(quantizer.signed), quantizer.axis)
        self.f0 = np.asarray(f0, np.float32)

    def call(self, inputs):
        vb, signed, axis = self.grid
        return _candidate_errors(tf.cast(inputs, tf.float32), vb, signed, axis,
                                 tf.constant(self.f0))


def _candidate_errors(x, vb, signed, axis, f0):
    """Sum of squared quantization errors of x for frac_bits f0 + k, k in [0, SEARCH_BITS]."""
    lo = -2.0**vb if signed else 0.0
    hi = 2.0**vb - 1
    axes = list(range(len(x.shape))) if axis == "per-tensor" \
        else list(range(len(x.shape) - 1))
    errors = []
    for k in range(SEARCH_BITS + 1):
        scale = tf.pow(2.0, f0 + k)
        q = tf.clip_by_value(tf.floor(x * scale + 0.5), lo, hi) / scale
        errors.append(tf.reduce_sum(tf.square(x - q), axis=axes))
    return tf.stack(errors)


@unfused
def calibrate(model, qmodel, samples=None, num_samples=1024, batch_size=None, epochs=1,
              verbose=False, batches=None):
    """Calibrates the model using the provided samples.

    When no samples are provided, random samples are generated.

    Args:
        model (keras.Model): the original (reference) model.
        qmodel (keras.Model): the quantized model to calibrate.
        samples (tf.Dataset, np.array or generator, optional): calibration samples.
            Defaults to None.
        num_samples (int, optional): number of samples to use in the provided samples or number
            of samples to generate. Defaults to 1024.
        batch_size (int, optional): the batch size. Defaults to None (32).
        epochs (int, optional): the number of epochs. Defaults to 1.
        verbose (bool, optional): show a progress bar. Defaults to False.
        batches (iterable, optional): already validated batches (used by quantize()); it is
            iterated several times (a list, or a re-iterable such as ``samples.Batches``).

    The samples are streamed: each calibration pass iterates them again, so memory does not
    grow with ``num_samples`` (a generator is spilled to a temporary directory on the first
    pass, see ``samples.Batches``).

    Raises:
        ValueError: invalid samples (NaN/Inf, wrong shape, empty) or mismatched models.
    """
    check_functional(model, "calibrate's model")
    check_functional(qmodel, "calibrate's qmodel")
    if batches is None:
        batches = Batches(model, samples, num_samples, batch_size, epochs)
    _calibrate_ranges(model, qmodel, batches, verbose)
    fit_merge_alignment(qmodel)
    # after the ranges: the wrappers' inputs come through the calibrated quantized layers
    _calibrate_wrappers(qmodel, batches)
    return qmodel


#: The first calibration batches of each pass of the range calibration run eagerly (layer by
#: layer); a pass compiles itself only after this many. Tracing and optimising a graph that
#: returns every block output costs about as much time as 30 eager batches (NASNetMobile, 566
#: layers: ~40 s), and its memory stays resident during the calibration (+600 MiB there): eager
#: passes make quantize() both faster and lighter for the usual calibration sets, and long runs
#: still get the per-batch saving of a compiled graph.
EAGER_CALIBRATION_BATCHES = 32


#: The calibration passes call the model on at most as many samples at once as keep the
#: activations they observe under this many bytes (the batches are split, the statistics do
#: not change: the passes keep maxima and sums): a model call's intermediate tensors stay
#: resident in the allocator, so the batch size set the calibration's memory. ResNet152 at
#: 96x96, batches of 32: quantize()'s peak RSS 2298 -> 1787 MiB (calls of 16 samples), 33 ->
#: 42 s (each eager call of a large model costs ~1 s of Python: 128 MiB, calls of 5 samples,
#: gave 1519 MiB but 58 s).
CALIBRATION_CALL_BYTES = 384 * 2**20


def _chunk_size(refs):
    """How many samples a calibration pass gives each model call (``CALIBRATION_CALL_BYTES``
    over the float32 bytes of one sample's observed activations)."""
    per_sample = sum(4 * int(np.prod([d or 1 for d in t.shape[1:]])) for t in refs)
    return max(1, CALIBRATION_CALL_BYTES // max(per_sample, 1))


def _split(batch, size):
    """The samples of ``batch`` (one array per model input) in parts of at most ``size``."""
    count = len(batch[0])
    if count <= size:
        yield batch
        return
    for start in range(0, count, size):
        yield [x[start:start + size] for x in batch]


class _Pass:
    """Calls ``fn`` eagerly for the first ``EAGER_CALIBRATION_BATCHES`` batches, then compiled."""

    def __init__(self, fn):
        self.fn, self.calls, self.compiled = fn, 0, None

    def __call__(self, x):
        self.calls += 1
        if self.calls <= EAGER_CALIBRATION_BATCHES:
            return self.fn(x)
        if self.compiled is None:
            self.compiled = tf.function(self.fn, reduce_retracing=True)
        return self.compiled(x)


def _calibrate_ranges(model, qmodel, batches, verbose):
    """The two passes of the module docstring: observers, then the range search."""
    targets = output_quantizers(qmodel)
    if not targets:
        return
    names = list(targets)
    refs = [_dequantized(t) for t in _reference_tensors(model, names)]
    for name, t in zip(names, refs):
        oq = targets[name]
        if not oq.built:
            oq.build(t.shape)
    observers = [_SummaryObserver(axis=targets[n].axis, name=f"{n}_observer") for n in names]
    # the passes return per-channel summaries, not the activations: a model call keeps its
    # outputs to the end, so returning every block output held all of them at once; each is
    # now dropped once its consumers have run
    observer_model = keras.Model(model.inputs, [obs(t) for obs, t in zip(observers, refs)])

    def observe(x):
        # Returns nothing: the observers keep their statistics in variables.
        observer_model(x, training=False)
    observe = _Pass(observe)
    progress = keras.utils.Progbar(2 * len(batches) if hasattr(batches, "__len__") else None,
                                   verbose=1 if verbose else 0, unit_name="batch")
    chunk = _chunk_size(refs)
    for batch in batches:
        for part in _split(batch, chunk):
            observe(part if len(part) > 1 else part[0])
        progress.add(1)

    f0 = []
    for name, obs in zip(names, observers):
        oq = targets[name]
        peak = tf.maximum(obs.max_seen, 1e-12)
        f0.append(tf.constant(
            oq.value_bits - np.ceil(np.log2(peak.numpy())), tf.float32))

    error_model = keras.Model(model.inputs, [_CandidateErrors(targets[n], f)(t)
                                             for t, n, f in zip(refs, names, f0)])

    def search(x):
        errs = error_model(x, training=False)
        return errs if isinstance(errs, (list, tuple)) else [errs]
    search = _Pass(search)

    totals = None
    for batch in batches:
        for part in _split(batch, chunk):
            errs = [e.numpy() for e in search(part if len(part) > 1 else part[0])]
            totals = errs if totals is None else [t + e for t, e in zip(totals, errs)]
        progress.add(1)
    for name, f, err in zip(names, f0, totals):
        oq = targets[name]
        best = f.numpy() + np.argmin(err, axis=0).astype(np.float32)
        # Any range in (2^(k-1), 2^k] gives the same fractional bits: store 0.75 * 2^k, so
        # that a calibrated range never reads as the uncalibrated 1.
        oq.range_max.assign(np.reshape(0.75 * 2.0**(oq.value_bits - best),
                                       oq.range_max.shape).astype(np.float32))


def _operand_quantizer(layer):
    """The quantizer that sets the grid of ``layer``'s output: its own output quantizer, or
    that of its input through pass-through layers (pooling, reshaping...); None otherwise."""
    while True:
        if isinstance(layer, InputQuantizer):
            return layer
        oq = getattr(layer, "out_quantizer", None)
        if isinstance(oq, OutputQuantizer):
            return oq
        spec = twin_spec(layer)
        if spec is None or not spec.passes_through(layer) or not layer.inbound_nodes:
            return None
        parents = tf.nest.flatten(layer.inbound_nodes[0].inbound_layers)
        if len(parents) != 1:
            return None
        layer = parents[0]


def _set_frac_bits(quantizer, frac_bits):
    """Sets a quantizer's range so that its fractional bits are ``frac_bits`` (per channel for
    a per-axis quantizer), where they are lower than the current ones."""
    current = np.asarray(quantizer.frac_bits, np.float64)
    target = np.minimum(current, frac_bits)
    if quantizer.axis == "per-tensor":
        target = np.min(target)
    if np.all(target >= current):
        return False
    ranges = np.asarray(quantizer.range_max.numpy(), np.float64)
    lowered = np.broadcast_to(target < current, ranges.shape)
    new = np.where(lowered, 0.75 * 2.0 ** (quantizer.value_bits - target), ranges)
    quantizer.range_max.assign(np.reshape(new, ranges.shape).astype(np.float32))
    return True


def fit_merge_alignment(qmodel, passes=4):
    """Keeps the operands of each aligning merge (Add, Subtract, Maximum, Minimum,
    Concatenate) within what their alignment can hold in the buffer.

    A merge aligns its operands on their largest fractional bits: the result needs
    ``max_i(vb_i + F - f_i) + 1`` value bits (``F = max_i f_i``, per channel; over every
    channel for a Concatenate). When an operand is ``2^22`` times finer than another (a
    near-dead branch of a random-weight network, next to a branch of huge values), that
    exceeds the 32-bit buffer and the merge raises. The finest operands' quantizers then get a
    coarser grid, ``F' = min_i(f_i - vb_i) + buffer_bits - 2`` fractional bits at most: the
    values they lose are below ``2^-22`` of the other operand's. Run by :func:`calibrate` and
    :func:`search_output_ranges`.

    Args:
        qmodel (keras.Model): a calibrated quantized model, updated in place.
        passes (int, optional): passes over the merges (a coarser quantizer can widen another
            merge's spread). Defaults to 4.

    Returns:
        list: the names of the merges whose operands' grids changed.
    """
    merges = [layer for layer in qmodel.layers if isinstance(layer, _ALIGNING_MERGES)]
    changed = []
    for _ in range(passes):
        moved = False
        for layer in merges:
            if not layer.inbound_nodes:
                continue
            parents = tf.nest.flatten(layer.inbound_nodes[0].inbound_layers)
            quantizers = [_operand_quantizer(p) for p in parents]
            if len(quantizers) < 2 or any(q is None or not q.built for q in quantizers):
                continue
            fracs = [np.asarray(q.frac_bits, np.float64) for q in quantizers]
            if isinstance(layer, QuantizedConcatenate):
                fracs = [np.min(f) for f in fracs]
            budget = int(getattr(layer, "buffer_bitwidth", 32)) - 2
            # per channel (operands of the same channels, or per-tensor ones)
            limit = np.min(np.stack(np.broadcast_arrays(
                *[f - q.value_bits for f, q in zip(fracs, quantizers)])), axis=0) + budget
            fixed = [_set_frac_bits(q, limit) for q in quantizers
                     if np.any(np.asarray(q.frac_bits, np.float64) > limit)]
            if any(fixed):
                moved = True
                if layer.name not in changed:
                    changed.append(layer.name)
        if not moved:
            break
    return changed


#: The samples (first of the calibration batches) :func:`search_output_ranges` scores on.
OUTPUT_SEARCH_SAMPLES = 512
#: The most OutputQuantizers quantize(range_search=None) searches: each
#: costs two passes of the quantized model over the samples per sweep.
OUTPUT_SEARCH_MAX_QUANTIZERS = 64
#: Relative gain of the output error a range change must bring to be kept.
_OUTPUT_SEARCH_GAIN = 1e-3


def _first_samples(batches, count):
    """The first ``count`` samples of the batches, one array per input."""
    parts = None
    for batch in batches:
        parts = [[] for _ in batch] if parts is None else parts
        for part, x in zip(parts, batch):
            part.append(np.asarray(x))
        if sum(len(p) for p in parts[0]) >= count:
            break
    return [np.concatenate(p)[:count] for p in parts]


def _output_error(outputs, references):
    """The squared error of the outputs, relative to each reference output's power, summed
    over the outputs."""
    total = 0.0
    for y, ref in zip(outputs, references):
        power = max(float(np.mean(np.square(ref, dtype=np.float64))), 1e-30)
        total += float(np.mean(np.square(np.asarray(y, np.float64) - ref))) / power
    return total


@unfused
def search_output_ranges(model, qmodel, batches, num_samples=OUTPUT_SEARCH_SAMPLES, sweeps=2,
                         batch_size=None):
    """Output-aware range search: moves each OutputQuantizer's range by a factor of two when
    that brings the quantized model's outputs closer to the float model's.

    :func:`calibrate` chooses each range for the squared error of its own activations. At 4
    bits and below, how one layer's clipping and rounding errors carry to the outputs matters
    more than its local error (a residual stream or a normalization output is worth more
    resolution than a local optimum gives it). For each OutputQuantizer in model order, the
    range halved (one more fractional bit) and doubled (one fewer) are scored by the relative
    squared error of the quantized model's outputs against the float model's on the first
    ``num_samples`` calibration samples, and the best of the three is kept (a change must lower
    the error by 0.1 %); ``sweeps`` passes, stopping early when nothing changes. Ranges stay
    powers of two (per channel for a per-axis quantizer, all channels moved together): the
    model stays integer-exact. ``quantize(..., range_search=True)`` runs it after calibration
    and bias correction.

    Args:
        model (keras.Model): the float (sanitized) model, with the outputs of ``qmodel``.
        qmodel (keras.Model): the calibrated quantized model, updated in place.
        batches (iterable): calibration batches (lists of arrays, one per input).
        num_samples (int, optional): samples scored. Defaults to 512.
        sweeps (int, optional): passes over the quantizers. Defaults to 2.
        batch_size (int, optional): the batch size of the scoring passes. Defaults to None
            (all ``num_samples`` at once).

    Returns:
        dict: OutputQuantizer name -> the factor applied to its range (2.0 or 0.5), for the
        quantizers whose range moved.
    """
    targets = output_quantizers(qmodel)
    if not targets:
        return {}
    x = _first_samples(batches, num_samples)
    x = x if len(x) > 1 else x[0]
    size = batch_size or num_samples

    def outputs(fn):
        chunks = []
        n = len(x[0]) if isinstance(x, list) else len(x)
        for start in range(0, n, size):
            part = [a[start:start + size] for a in x] if isinstance(x, list) \
                else x[start:start + size]
            y = fn(part)
            chunks.append([np.asarray(t) for t in (y if isinstance(y, (list, tuple)) else [y])])
        return [np.concatenate(c) for c in zip(*chunks)]

    references = [np.asarray(r, np.float64)
                  for r in outputs(lambda a: model(a, training=False))]
    scored = tf.function(lambda a: qmodel(a, training=False), reduce_retracing=True)
    best = _output_error(outputs(scored), references)
    moved = {}
    for _ in range(sweeps):
        changed = False
        for name, oq in targets.items():
            start = oq.range_max.numpy()
            choice = 1.0
            for factor in (2.0, 0.5):
                oq.range_max.assign(start * factor)
                error = _output_error(outputs(scored), references)
                if error < best * (1 - _OUTPUT_SEARCH_GAIN):
                    best, choice = error, factor
            oq.range_max.assign(start * choice)
            if choice != 1.0:
                changed = True
                factor = moved.get(name, 1.0) * choice
                if factor == 1.0:
                    moved.pop(name, None)
                else:
                    moved[name] = factor
        if not changed:
            break
    fit_merge_alignment(qmodel)
    return moved
