"""Per-layer comparison of a float model and its quantized twin: which layer needs more bits.

``compare(model, qmodel, samples)`` runs both models on the samples and returns a table (a list
of dicts), one row per quantized layer with an OutputQuantizer or with quantized weights, and
per layer producing a model output:

* ``layer``: the layer name (the same in both models), ``type``: its quantized class;
* ``sqnr_db``: the signal-to-quantization-noise ratio of the layer output, in dB,
  ``10 log10(sum(f^2) / sum((f - q)^2))`` over all the samples, where ``f`` is the float model
  output of the same-named layer and ``q`` the dequantized output of the quantized layer
  (``inf`` when they are equal);
* ``max_abs_error``: ``max |f - q|``;
* ``saturation``: the share of values its OutputQuantizer clipped on the samples (by more than
  the rounding of the calibrated range), ``None`` for a layer without OutputQuantizer;
* ``weight_error``: the relative error ``||Q(w) - w|| / ||w||`` of its weights as quantized
  (the largest over its weight quantizers), ``None`` for a layer without weights;
* ``scale_error``: the largest relative error of its weight scales once quantized on the
  OutputQuantizer's ``scale_bits`` (what ``check_quantization`` reports above 2^-6), ``None``
  without QFloat weights.

``weight_changes(before, after)`` tells how far training (QAT) moved the integer weights of a
quantized model: per weight quantizer, the share of integer weights that changed, their mean
change and the largest float move in quantization steps.

``plot(table, path=None)`` draws the SQNR per layer as a bar chart (matplotlib, an optional
dependency). ``format_sensitivity`` and ``plot_sensitivity`` show the per-layer sensitivity
table of :func:`quantizeml.models.layer_sensitivity` (the output SQNR when only that layer's
weights go to fewer bits).

Example:
    ```python
    qmodel = quantize(model, samples=x_train)
    table = compare(model, qmodel, x_test[:128])
    print(format_table(table))
    plot(table, "sqnr.png")
    ```
"""
import math
import re

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .layers import Dequantizer, OutputQuantizer, WeightQuantizer, saturation
from .layers.registry import twin_spec
from .models.check import float_islands
from .models.graph import is_qtensor, producer
from .models.integer_weights import integer_weights, kernel_for_quantizer
from .models.transforms import sanitize
from .tensors import QFloat, QTensor

__all__ = ["compare", "sqnr", "format_table", "plot", "format_sensitivity", "plot_sensitivity",
           "weight_changes", "format_weight_changes"]

_WEIGHT_SOURCES = {"weight_quantizer": ("kernel", "depthwise_kernel"),
                   "dw_weight_quantizer": ("depthwise_kernel",),
                   "pw_weight_quantizer": ("pointwise_kernel",)}


def sqnr(reference, quantized):
    """The SQNR (dB) of ``quantized`` with respect to ``reference`` (``inf`` when equal).

    Args:
        reference (np.ndarray): the float values.
        quantized (np.ndarray): the quantized (dequantized) values, same shape.

    Returns:
        float: ``10 log10(sum(reference^2) / sum((reference - quantized)^2))``.
    """
    reference = np.asarray(reference, np.float64)
    quantized = np.asarray(quantized, np.float64)
    noise = float(np.sum((reference - quantized) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _output(layer):
    out = layer.output
    return out[0] if isinstance(out, (list, tuple)) else out


def _rows_layers(qmodel):
    """The quantized layers with an OutputQuantizer or weights, the float islands and the
    layers producing model outputs."""
    finals = []
    for t in qmodel.outputs:
        layer = producer(t)
        while isinstance(layer, Dequantizer):
            layer = producer(layer.input)
        finals.append(layer.name)
    finals.extend(float_islands(qmodel))
    layers = []
    for layer in qmodel.layers:
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer, Dequantizer):
            continue
        spec = twin_spec(layer)
        has_weights = spec is not None and isinstance(layer, spec.twin) and spec.has_weights
        if isinstance(getattr(layer, "out_quantizer", None), OutputQuantizer) \
                or has_weights or layer.name in finals:
            layers.append(layer)
    return layers


def _weight_errors(layer):
    """(relative weight error, relative scale error) of a layer, None where not applicable."""
    oq = getattr(layer, "out_quantizer", None)
    scale_bits = oq.scale_bits if isinstance(oq, OutputQuantizer) else 8
    weight_error = scale_error = None
    for attr, quantizer in vars(layer).items():
        if not isinstance(quantizer, WeightQuantizer):
            continue
        weights = next((getattr(layer, name) for name in _WEIGHT_SOURCES.get(attr, ())
                        if getattr(layer, name, None) is not None), None)
        if weights is None:
            continue
        qw = quantizer.quantize(weights)
        if not isinstance(qw, QTensor):
            continue
        w = weights.numpy().astype(np.float64)
        err = np.linalg.norm(qw.to_float().numpy() - w) / max(np.linalg.norm(w), 1e-30)
        weight_error = float(max(weight_error or 0.0, err))
        if isinstance(qw, QFloat):
            scales = qw.scales.numpy()
            q = QFloat.quantize_scales(qw.scales, scale_bits).to_float().numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(scales > 0, np.abs(q - scales) / np.abs(scales), 0.0)
            scale_error = float(max(scale_error or 0.0, float(np.max(rel))))
    return weight_error, scale_error


def compare(model, qmodel, samples, batch_size=32, verbose=False):
    """Compares a float model and its quantized twin layer by layer on samples.

    The float model is the one the quantized model was quantized from (raw or sanitized:
    it is prepared as quantize() prepares it; layers are matched by name, quantized layers with
    no float counterpart are skipped; float islands get a row, their type marked
    "(float island)"). The quantized model is run eagerly, so the OutputQuantizer saturation it records
    is the one of these samples.

    Args:
        model (keras.Model): the float (sanitized) model.
        qmodel (keras.Model): the quantized model.
        samples (np.ndarray): input samples (one input models).
        batch_size (int, optional): the batch size. Defaults to 32.
        verbose (bool, optional): show a progress bar. Defaults to False.

    Returns:
        list(dict): one row per layer (keys in the module docstring), in the qmodel order.

    Raises:
        ValueError: when no layer can be compared or the samples are empty.
    """
    model = sanitize(model)  # quantize() prepared it so: the same layers and names
    samples = np.asarray(samples, np.float32)
    if samples.ndim == 0 or len(samples) == 0:
        raise ValueError(f"compare expected a non-empty batch of samples. Received: shape "
                         f"{samples.shape}")
    float_layers = {layer.name: layer for layer in model.layers}
    layers = [layer for layer in _rows_layers(qmodel) if layer.name in float_layers]
    if not layers:
        raise ValueError(f"compare expected quantized layers named as layers of "
                         f"{model.name!r}. Received: no matching layer in {qmodel.name!r}")
    q_outputs = []
    for layer in layers:
        t = _output(layer)
        q_outputs.append(Dequantizer(name=f"{layer.name}_analysis")(t)
                         if is_qtensor(t) else t)
    f_outputs = [_output(float_layers[layer.name]) for layer in layers]
    q_probe = keras.Model(qmodel.inputs, q_outputs)
    f_probe = keras.Model(model.inputs, f_outputs)
    for layer in layers:
        oq = getattr(layer, "out_quantizer", None)
        if oq is not None:
            oq.__dict__.pop("_saturation", None)
    n = len(layers)
    signal, noise = np.zeros(n), np.zeros(n)
    max_err = np.zeros(n)
    bar = keras.utils.Progbar(len(samples), unit_name="sample") if verbose else None
    for start in range(0, len(samples), batch_size):
        batch = tf.constant(samples[start:start + batch_size])
        qs = q_probe(batch, training=False)
        fs = f_probe(batch, training=False)
        qs = qs if isinstance(qs, (list, tuple)) else [qs]
        fs = fs if isinstance(fs, (list, tuple)) else [fs]
        for i, (f, q) in enumerate(zip(fs, qs)):
            f = np.asarray(f, np.float64)
            d = f - np.asarray(q, np.float64)
            signal[i] += np.sum(f ** 2)
            noise[i] += np.sum(d ** 2)
            max_err[i] = max(max_err[i], float(np.max(np.abs(d))) if d.size else 0.0)
        if bar is not None:
            bar.add(len(batch))
    islands = set(float_islands(qmodel))
    table = []
    for i, layer in enumerate(layers):
        if noise[i] == 0:
            db = math.inf
        elif signal[i] == 0:
            db = -math.inf
        else:
            db = 10.0 * math.log10(signal[i] / noise[i])
        oq = getattr(layer, "out_quantizer", None)
        sat = saturation(oq).get("output", 0.0) if oq is not None else None
        weight_error, scale_error = _weight_errors(layer)
        kind = type(layer).__name__ + (" (float island)" if layer.name in islands else "")
        table.append({"layer": layer.name, "type": kind, "sqnr_db": db,
                      "max_abs_error": float(max_err[i]), "saturation": sat,
                      "weight_error": weight_error, "scale_error": scale_error})
    return table


def weight_changes(before, after):
    """How far training moved the integer weights of a quantized model (e.g. a QAT ``fit``).

    ``before`` and ``after`` are two quantized models of the same layers (``after`` a copy of
    ``before`` that was trained). For each weight quantizer of a Conv2D, DepthwiseConv2D,
    Conv2DTranspose or Dense twin (the keys of
    :func:`~quantizeml.models.integer_weights`), with ``q`` the integer weights and ``w`` the
    float weights they quantize, and ``step`` the quantization step of each output channel
    (``scales * 2^-frac_bits`` of ``before``):

    * ``changed``: the share of integer weights that differ, ``mean(q_after != q_before)``;
    * ``mean_abs_change``: ``mean |q_after - q_before|`` (in integer steps);
    * ``travel_steps``: the largest move of a float weight in steps of its channel,
      ``max |w_after - w_before| / step``; below 0.5 no weight can cross more than one rounding
      threshold, and only those that started within that distance of one;
    * ``bitwidth``.

    At 4 and 2 bits the steps are wide: the plain QAT recipe (Adam 1e-4, 3 to 5 epochs on the
    digits) moves the float weights by at most 0.03-0.14 step, and 0-3.3 % of each layer's
    integers change, against 11-47 % at 8 bits (see the README's QAT recipe).

    Args:
        before (keras.Model): the quantized model before training.
        after (keras.Model): the same quantized model after training.

    Returns:
        dict: ``<layer>/<quantizer>`` -> dict (keys above), in the layer order of ``before``.

    Raises:
        ValueError: when a quantized layer of ``before`` is missing from ``after`` or its
            weights have another shape.
    """
    ints_before, ints_after = integer_weights(before), integer_weights(after)
    rows = {}
    for key, b in ints_before.items():
        layer_name = key.rsplit("/", 1)[0]
        a = ints_after.get(key)
        if a is None or a["values"].shape != b["values"].shape:
            raise ValueError(f"weight_changes expected the quantized layer {layer_name!r} of "
                             f"{before.name!r} in {after.name!r} with the same weights. "
                             f"Received: {'no such layer' if a is None else a['values'].shape}")
        w_before = np.asarray(kernel_for_quantizer(before.get_layer(layer_name)), np.float64)
        w_after = np.asarray(kernel_for_quantizer(after.get_layer(layer_name)), np.float64)
        step = np.asarray(b["scales"], np.float64) * 2.0 ** -np.asarray(b["frac_bits"],
                                                                        np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            travel = np.where(step > 0, np.abs(w_after - w_before) / step, 0.0)
        delta = np.abs(a["values"] - b["values"])
        rows[key] = {"changed": float(np.mean(delta != 0)),
                     "mean_abs_change": float(np.mean(delta)),
                     "travel_steps": float(np.max(travel)) if travel.size else 0.0,
                     "bitwidth": int(b["bitwidth"])}
    return rows


def format_weight_changes(rows):
    """Formats a :func:`weight_changes` table as text."""
    lines = [f"{'weights':<36} {'bits':>4} {'changed':>8} {'mean |dq|':>9} {'travel':>8}",
             "-" * 69]
    for key, r in rows.items():
        lines.append(f"{key:<36} {r['bitwidth']:>4} {r['changed']:8.2%} "
                     f"{r['mean_abs_change']:9.4f} {r['travel_steps']:8.3f}")
    return "\n".join(lines)


def format_table(table):
    """Formats a :func:`compare` table as text."""
    def fmt(value, spec):
        width = int(re.match(r"\d+", spec).group())
        return "-".rjust(width) if value is None else format(value, spec)
    lines = [f"{'layer':<24} {'SQNR dB':>8} {'max err':>9} {'satur.':>7} {'w err':>8} "
             f"{'scale err':>9}", "-" * 70]
    for r in table:
        lines.append(f"{r['layer']:<24} {fmt(r['sqnr_db'], '8.2f')} "
                     f"{fmt(r['max_abs_error'], '9.3g')} {fmt(r['saturation'], '7.2%')} "
                     f"{fmt(r['weight_error'], '8.3g')} {fmt(r['scale_error'], '9.3g')}")
    return "\n".join(lines)


def format_sensitivity(table):
    """Formats a :func:`quantizeml.models.layer_sensitivity` table as text (most sensitive
    layer first)."""
    lines = [f"{'layer':<24} {'bits':>4} {'SQNR dB':>8} {'drop dB':>8} {'score':>8} "
             f"{'bytes':>8} {'saved':>8}", "-" * 74]
    for name, r in table.items():
        lines.append(f"{name:<24} {r['bits']:>4} {r['sqnr_db']:8.2f} {r['drop_db']:8.2f} "
                     f"{r['score']:8.4g} {r['weight_bytes']:>8} {r['saved_bytes']:>8}")
    return "\n".join(lines)


def _pyplot(name, path):
    """matplotlib.pyplot, imported lazily (Agg backend when saving to a file)."""
    try:
        import matplotlib
        if path is not None and "matplotlib.pyplot" not in __import__("sys").modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"quantizeml.analysis.{name} requires matplotlib: "
                          "pip install matplotlib") from e
    return plt


def plot_sensitivity(table, path=None, title=None):
    """Bar chart of the output SQNR per layer when only that layer's weights go to fewer bits.

    Args:
        table (dict): the table returned by :func:`quantizeml.models.layer_sensitivity`.
        path (str, optional): where to save the figure (png, svg, ...). Defaults to None.
        title (str, optional): the figure title. Defaults to "One layer on N-bit weights".

    Returns:
        matplotlib.figure.Figure: the figure.

    Raises:
        ImportError: when matplotlib is not installed.
    """
    plt = _pyplot("plot_sensitivity", path)
    names = list(table)
    values = [table[n]["sqnr_db"] for n in names]
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite) if finite else 1.0
    shown = [v if math.isfinite(v) else (top * 1.1 if v > 0 else 0.0) for v in values]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.5))
    bars = ax.bar(range(len(names)), shown, color="tab:orange")
    for bar, name, v in zip(bars, names, values):
        label = "inf" if math.isinf(v) else f"{v:.1f}"
        ax.annotate(f"{label}\n-{table[name]['saved_bytes']} B",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("output SQNR (dB)")
    bits = sorted({table[n]["bits"] for n in names})
    low, high = min(shown + [0.0]) * 1.2, max(shown + [0.0]) * 1.2
    ax.set_ylim(low, high if high > low else low + 1.0)  # room for the labels
    ax.set_title(title or f"One layer on {'/'.join(map(str, bits))}-bit weights",
                 fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot(table, path=None, title="SQNR per layer"):
    """Bar chart of the SQNR per layer of a :func:`compare` table.

    Args:
        table (list(dict)): the table returned by :func:`compare`.
        path (str, optional): where to save the figure (png, svg, ...). Defaults to None.
        title (str, optional): the figure title.

    Returns:
        matplotlib.figure.Figure: the figure.

    Raises:
        ImportError: when matplotlib is not installed.
    """
    try:
        import matplotlib
        if path is not None and "matplotlib.pyplot" not in __import__("sys").modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("quantizeml.analysis.plot requires matplotlib: "
                          "pip install matplotlib") from e
    names = [r["layer"] for r in table]
    values = [r["sqnr_db"] for r in table]
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite) if finite else 1.0
    shown = [v if math.isfinite(v) else (top * 1.1 if v > 0 else 0.0) for v in values]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.5))
    bars = ax.bar(range(len(names)), shown, color="tab:blue")
    for bar, v in zip(bars, values):
        label = "inf" if math.isinf(v) else f"{v:.1f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
