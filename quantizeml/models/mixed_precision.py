"""Mixed precision under a weight-memory budget: per-layer sensitivity and bit allocation.

Three functions, all working on the layers with quantized weights (the twins whose
``TwinSpec.weights`` is not empty; names are those of the prepared model,
``quantizeml.models.transforms.sanitize(model)``, as in every q_config):

* :func:`weight_bytes`: the packed bytes of each layer's quantized weights,
  ``ceil(n * bits / 8) + 4 * num_scales`` per weight quantizer (``n`` weight values on ``bits``
  bits packed without padding, plus one float32 scale per output channel, or one per tensor).
  The value part is the kernel count of ``quantizeml.demo.weight_sizes`` (int8: 1 byte per
  value, int4: half a byte); biases are not counted (they do not depend on the weight bits);
* :func:`layer_sensitivity`: one quantization with every weight on ``qparams.weight_bits``
  (the baseline), then, for each layer in turn, the same q_config with only that layer's
  weights on ``low_bits``: the SQNR (dB) of the model outputs (logits) against the float model
  on the samples says how much that layer alone costs;
* :func:`mixed_precision_config`: the q_config that minimises the estimated output noise under
  a budget of weight bytes, picking one bitwidth per layer among ``candidate_bits``.

How the bitwidths are picked: every layer's sensitivity is measured at each lower candidate
bitwidth (the others at the highest), and turned into an additive loss
``10^(-sqnr_db / 10) - 10^(-base_sqnr_db / 10)`` (the relative noise power that layer adds to
the outputs; for a custom metric, ``base_score - score``). A multiple-choice knapsack solved
by dynamic programming over bytes then minimises the summed loss subject to
``sum(weight_bytes) <= budget_bytes``: the budget holds exactly, in bytes as
:func:`weight_bytes` counts them on the quantized model.

Example:
    ```python
    x_train, y_train, x_test, y_test = zoo.load_digits_data()
    model, _ = zoo.train_digits_cnn()
    qparams = QuantizationParams(activation_bits=4, output_bits=4)
    q4 = quantize(model, qparams=QuantizationParams(activation_bits=4, output_bits=4,
                                                    weight_bits=4, input_weight_bits=4),
                  samples=x_train)
    budget = int(sum(weight_bytes(q4).values()) * 1.1)
    q_config = mixed_precision_config(model, x_train[:256], budget, qparams=qparams)
    qmodel = quantize(model, q_config=q_config, samples=x_train)
    print(layer_sensitivity(model, x_train[:256], qparams=qparams))
    ```
"""
import copy
import dataclasses
import math

import numpy as np

from ..layers.registry import twin_spec
from .config import dump_config
from .integer_weights import kernel_for_quantizer
from .quantization_params import QuantizationParams, get_quantization_params
from .quantize import quantize
from .transforms.sanitize import sanitize

__all__ = ["weight_bytes", "layer_sensitivity", "mixed_precision_config"]

#: Scales are stored as float32: 4 bytes each.
SCALE_BYTES = 4
#: The largest number of byte units the knapsack works on (coarser units beyond, rounded up).
_MAX_UNITS = 1 << 22


def _depthwise_as_quantized(layer):
    kh, kw, channels, multiplier = layer.depthwise_kernel.shape
    return (kh, kw, 1, channels * multiplier)


#: quant_config key of a weight quantizer -> the shape of the tensor it quantizes, in the
#: layout it sees (output channels last).
_SOURCES = {
    "weight_quantizer": lambda layer: tuple(kernel_for_quantizer(layer).shape),
    "dw_weight_quantizer": _depthwise_as_quantized,
    "pw_weight_quantizer": lambda layer: tuple(layer.pointwise_kernel.shape),
    "a_quantizer": lambda layer: tuple(layer.moving_variance.shape),
    "gamma_quantizer": lambda layer: tuple(layer.gamma.shape),
}


def _weighted_layers(qmodel):
    """The layers of a quantized model with quantized weights, and their weight keys."""
    out = {}
    for layer in qmodel.layers:
        spec = twin_spec(layer)
        if spec is not None and isinstance(layer, spec.twin) and spec.has_weights:
            out[layer.name] = (layer, spec.weights)
    return out


def _sizes(qmodel):
    """layer name -> list of ``(key, num_values, num_scales, bitwidth)`` per weight quantizer.

    Raises:
        ValueError: for a weight quantizer whose weights this module cannot size.
    """
    sizes = {}
    for name, (layer, keys) in _weighted_layers(qmodel).items():
        rows = []
        for key in keys:
            quantizer = getattr(layer, key, None)
            source = _SOURCES.get(key)
            if quantizer is None or source is None:
                raise ValueError(f"weight_bytes expected weight quantizers among "
                                 f"{sorted(_SOURCES)}. Received: layer {name} "
                                 f"({type(layer).__name__}) with quantizer {key!r}")
            shape = source(layer)
            num_scales = 1 if quantizer.axis is None else int(shape[quantizer.axis])
            rows.append((key, int(np.prod(shape)), num_scales, int(quantizer.bitwidth)))
        sizes[name] = rows
    return sizes


def _packed_bytes(num_values, num_scales, bits):
    return -(-num_values * bits // 8) + SCALE_BYTES * num_scales


def _config_bits(q_config, name, key, default):
    entry = q_config.get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get(key), dict):
        return default
    return entry[key].get("bitwidth", default)


def weight_bytes(qmodel, q_config=None):
    """The packed bytes of the quantized weights of each layer.

    Per weight quantizer: ``ceil(n * bits / 8) + 4 * num_scales``, ``n`` weight values packed
    on ``bits`` bits each, ``num_scales`` float32 scales (one per output channel, or one for a
    per-tensor quantizer). At 8 and 4 bits the value bytes are the kernel bytes of
    ``quantizeml.demo.weight_sizes`` (``int8``, ``int4_packed``); biases are not counted.

    Args:
        qmodel (keras.Model): a quantized model (its shapes, and its bitwidths unless
            ``q_config`` gives them).
        q_config (dict, optional): layer name -> quant_config: the weight bitwidths to count
            (``{"weight_quantizer": {"bitwidth": b}, ...}``) instead of the model's, e.g. to
            price a q_config before quantizing with it. Defaults to None.

    Returns:
        dict: layer name -> bytes (int), for every layer with quantized weights, in the model
        order.

    Raises:
        ValueError: for a weight quantizer whose weights cannot be sized.
    """
    out = {}
    for name, rows in _sizes(qmodel).items():
        total = 0
        for key, num_values, num_scales, bits in rows:
            if q_config is not None:
                bits = _config_bits(q_config, name, key, bits)
            total += _packed_bytes(num_values, num_scales, bits)
        out[name] = total
    return out


def _sqnr_db(reference, quantized):
    noise = float(np.sum((reference - quantized) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _flat_outputs(model, samples, batch_size):
    """The model outputs on the samples (eager inference calls, batched), as float64."""
    batches = []
    for start in range(0, len(samples), batch_size):
        out = model(samples[start:start + batch_size], training=False)
        batches.append([np.asarray(o, np.float64)
                        for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate(parts) for parts in zip(*batches)]


class _Probe:
    """The float reference and the baseline quantization shared by the measurements."""

    def __init__(self, model, samples, qparams, base_bits, q_config, metric, batch_size):
        if isinstance(metric, str) and metric != "sqnr":
            raise ValueError(f"metric expected 'sqnr' or a callable(reference, outputs) -> "
                             f"score. Received: metric={metric!r}")
        if not isinstance(metric, str) and not callable(metric):
            raise ValueError(f"metric expected 'sqnr' or a callable(reference, outputs) -> "
                             f"score. Received: metric={metric!r}")
        samples = np.asarray(samples)
        self.samples = samples
        if samples.ndim == 0 or len(samples) == 0:
            raise ValueError(f"samples expected a non-empty batch. Received: samples of "
                             f"shape {np.shape(samples)}")
        self.model = sanitize(model)
        self.metric = metric
        self.batch_size = batch_size
        self.reference = _flat_outputs(self.model, samples, batch_size)
        if q_config is None:
            qparams = get_quantization_params() if qparams is None else qparams
            if not isinstance(qparams, QuantizationParams):
                raise TypeError(f"qparams expected a QuantizationParams. "
                                f"Received: qparams={qparams!r}")
            if base_bits is not None:
                qparams = dataclasses.replace(qparams, weight_bits=base_bits,
                                              input_weight_bits=base_bits)
            qmodel = self.quantize(None, qparams)
        else:
            qmodel = self.quantize(q_config, None)
        self.config = dump_config(qmodel)
        self.sizes = _sizes(qmodel)
        if not self.sizes:
            raise ValueError(f"mixed precision expected a model with quantized weights. "
                             f"Received: no layer with weights in {model.name!r}")
        self.base_score, self.base_sqnr = self.measure(qmodel)

    def quantize(self, q_config, qparams):
        return quantize(self.model, q_config=q_config, qparams=qparams, samples=self.samples,
                        num_samples=len(self.samples), batch_size=self.batch_size)

    def measure(self, qmodel):
        """(score, sqnr_db) of a quantized model's outputs against the float ones."""
        outputs = _flat_outputs(qmodel, self.samples, self.batch_size)
        reference = np.concatenate([r.ravel() for r in self.reference])
        flat = np.concatenate([o.ravel() for o in outputs])
        db = _sqnr_db(reference, flat)
        if self.metric == "sqnr":
            return db, db
        ref = self.reference if len(self.reference) > 1 else self.reference[0]
        out = outputs if len(outputs) > 1 else outputs[0]
        return float(self.metric(ref, out)), db

    def with_bits(self, bits_by_layer):
        """The baseline q_config with the weights of some layers on other bitwidths."""
        config = copy.deepcopy(self.config)
        for name, bits in bits_by_layer.items():
            for key, *_ in self.sizes[name]:
                config[name].setdefault(key, {})["bitwidth"] = int(bits)
        return config

    def layer_bytes(self, name, bits):
        return sum(_packed_bytes(n, s, bits) for _, n, s, _ in self.sizes[name])

    def base_bytes(self, name):
        return sum(_packed_bytes(n, s, b) for _, n, s, b in self.sizes[name])

    def score_at(self, name, bits):
        """(score, sqnr_db) with only ``name``'s weights on ``bits``."""
        return self.measure(self.quantize(self.with_bits({name: bits}), None))


def _check_bits(bits, name):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise ValueError(f"{name} expected an int in [1, 32]. Received: {name}={bits!r}")
    return int(bits)


def layer_sensitivity(model, samples, qparams=None, low_bits=4, metric="sqnr", batch_size=32,
                      q_config=None):
    """Measures how much each layer's weights at ``low_bits`` alone degrade the model outputs.

    The model is quantized once with ``qparams`` (every weight on ``qparams.weight_bits``,
    including the first layer), or with ``q_config`` when given (e.g. ``dump_config(qmodel)``);
    then, for each layer with quantized weights, it is quantized again from that q_config with
    only this layer's weights on ``low_bits`` (calibrated on the same samples), and its outputs
    are compared with the float model's on the samples: SQNR
    ``10 log10(sum(f^2) / sum((f - q)^2))`` over all outputs.

    Args:
        model (keras.Model): the float model (prepared by quantize() as usual: layer names are
            those of ``sanitize(model)``).
        samples (np.ndarray): calibration and evaluation samples (one input models), e.g. 256
            training samples.
        qparams (QuantizationParams, optional): the baseline parameters (activation settings
            and the baseline weight bits). Defaults to the ones of the enclosing
            ``quantization`` context, else QuantizationParams() (8/8).
        low_bits (int, optional): the weight bitwidth tried on each layer. Defaults to 4.
        metric (str or callable, optional): "sqnr" (the output SQNR), or
            ``metric(reference_outputs, quantized_outputs) -> score`` (higher is better, e.g.
            an accuracy against labels). Defaults to "sqnr".
        batch_size (int, optional): the batch size. Defaults to 32.
        q_config (dict, optional): the baseline q_config, instead of ``qparams``. Defaults to
            None.

    Returns:
        dict: layer name -> ``{"bits": low_bits, "sqnr_db": float, "drop_db": float (the
        baseline SQNR minus sqnr_db), "score": float (sqnr_db for "sqnr"), "weight_bytes": int
        (its weight bytes at low_bits), "saved_bytes": int (bytes saved vs the baseline)}``,
        the most sensitive layer (lowest score) first.

    Raises:
        ValueError: invalid bits or metric, empty samples, or no layer with weights.
    """
    low_bits = _check_bits(low_bits, "low_bits")
    probe = _Probe(model, samples, qparams, None, q_config, metric, batch_size)
    table = {}
    for name in probe.sizes:
        score, db = probe.score_at(name, low_bits)
        low = probe.layer_bytes(name, low_bits)
        table[name] = {"bits": low_bits, "sqnr_db": db, "drop_db": probe.base_sqnr - db,
                       "score": score, "weight_bytes": low,
                       "saved_bytes": probe.base_bytes(name) - low}
    order = sorted(table, key=lambda n: (table[n]["score"], -table[n]["saved_bytes"]))
    return {name: table[name] for name in order}


def _knapsack(options, capacity):
    """Multiple-choice knapsack: one option per layer, ``sum(cost) <= capacity``, least loss.

    Args:
        options (list): per layer, a list of ``(cost, loss)`` (integer cost >= 0); the first
            option wins ties.
        capacity (int): the capacity (>= 0).

    Returns:
        list of int: the chosen option index per layer.
    """
    unit = max(1, -(-capacity // _MAX_UNITS))
    cap = capacity // unit  # costs rounded up, capacity down: sum(cost) <= capacity still
    best = np.zeros(cap + 1)
    choices = []
    for layer_options in options:
        new = np.full(cap + 1, np.inf)
        choice = np.full(cap + 1, -1, np.int16)
        for index, (cost, loss) in enumerate(layer_options):
            units = -(-cost // unit)
            if units > cap:
                continue
            candidate = np.full(cap + 1, np.inf)
            candidate[units:] = best[:cap + 1 - units] + loss
            better = candidate < new
            new[better] = candidate[better]
            choice[better] = index
        best = new
        choices.append(choice)
    picks, c = [], cap
    for layer_options, choice in zip(reversed(options), reversed(choices)):
        index = int(choice[c])
        picks.append(index)
        c -= -(-layer_options[index][0] // unit)
    return picks[::-1]


def mixed_precision_config(model, samples, budget_bytes, candidate_bits=(8, 4, 2), qparams=None,
                           metric="sqnr", batch_size=32):
    """A q_config with one weight bitwidth per layer that fits a weight-memory budget.

    Every layer with quantized weights gets one of ``candidate_bits`` (all the weight
    quantizers of a layer, e.g. both of a SeparableConv2D, share it); the activation settings
    come from ``qparams``. The choice minimises the summed loss each layer causes alone at each
    bitwidth (measured as :func:`layer_sensitivity` does, module docstring) subject to
    ``sum(weight_bytes(quantize(model, q_config=result))) <= budget_bytes`` (bytes as
    :func:`weight_bytes` counts them). A budget above the highest bits everywhere, or one
    that leaves no room to raise any layer above the lowest bits, returns that uniform setting
    without any measurement.

    Args:
        model (keras.Model): the float model.
        samples (np.ndarray): calibration and evaluation samples (one input models).
        budget_bytes (int): the weight-memory budget, in bytes.
        candidate_bits (tuple of int, optional): the weight bitwidths to choose from.
            Defaults to (8, 4, 2).
        qparams (QuantizationParams, optional): activation and output settings (its weight
            bits are ignored). Defaults to the ones of the enclosing ``quantization`` context,
            else QuantizationParams().
        metric (str or callable, optional): "sqnr", or ``metric(reference_outputs,
            quantized_outputs) -> score`` (higher is better). Defaults to "sqnr".
        batch_size (int, optional): the batch size. Defaults to 32.

    Returns:
        dict: a complete q_config (layer name -> quant_config) for
        ``quantize(model, q_config=...)``.

    Raises:
        ValueError: when even the lowest candidate bits everywhere exceed the budget, or for
            invalid bits, metric or samples.

    Example:
        ```python
        q_config = mixed_precision_config(model, x_train[:256], budget_bytes=3600,
                                          qparams=QuantizationParams(activation_bits=4,
                                                                     output_bits=4))
        qmodel = quantize(model, q_config=q_config, samples=x_train)
        ```
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) \
            or budget_bytes < 0:
        raise ValueError(f"mixed_precision_config expected budget_bytes to be an int >= 0. "
                         f"Received: budget_bytes={budget_bytes!r}")
    if not candidate_bits:
        raise ValueError("mixed_precision_config expected at least one candidate bitwidth. "
                         f"Received: candidate_bits={candidate_bits!r}")
    bits = sorted({_check_bits(b, "candidate_bits") for b in candidate_bits}, reverse=True)
    probe = _Probe(model, samples, qparams, bits[0], None, metric, batch_size)
    names = list(probe.sizes)
    lowest = sum(probe.layer_bytes(name, bits[-1]) for name in names)
    if lowest > budget_bytes:
        raise ValueError(f"mixed_precision_config expected budget_bytes >= {lowest} (every "
                         f"layer's weights on {bits[-1]} bits, the lowest candidate). "
                         f"Received: budget_bytes={budget_bytes}")
    highest = sum(probe.layer_bytes(name, bits[0]) for name in names)
    if highest <= budget_bytes:
        return probe.with_bits({name: bits[0] for name in names})
    steps = [probe.layer_bytes(name, bits[-2]) - probe.layer_bytes(name, bits[-1])
             for name in names]
    if budget_bytes - lowest < min(steps):  # no layer can go above the lowest bits
        return probe.with_bits({name: bits[-1] for name in names})
    base_noise = 10.0 ** (-probe.base_sqnr / 10.0)
    options = []
    for name in names:
        layer_options = [(probe.layer_bytes(name, bits[0]) - probe.layer_bytes(name, bits[-1]),
                          0.0)]
        for b in bits[1:]:
            score, db = probe.score_at(name, b)
            if metric == "sqnr":
                loss = 10.0 ** (-db / 10.0) - base_noise
            else:
                loss = probe.base_score - score
            cost = probe.layer_bytes(name, b) - probe.layer_bytes(name, bits[-1])
            layer_options.append((cost, max(0.0, loss)))
        options.append(layer_options)
    picks = _knapsack(options, budget_bytes - lowest)
    chosen = {name: bits[index] for name, index in zip(names, picks)}
    total = sum(probe.layer_bytes(name, b) for name, b in chosen.items())
    if total > budget_bytes:  # the knapsack guarantees it; never return a config over budget
        raise RuntimeError(f"mixed_precision_config expected a config within budget_bytes. "
                           f"Received: {total} bytes for budget_bytes={budget_bytes}")
    return probe.with_bits(chosen)
