#!/usr/bin/env python3
"""Integer deployment (issue 21 points 3-4): both ONNX forms of the quantized model against the
float model, batch 32, in one process.

Usage::

    python3 benchmarks/deployment.py                      # 4 architectures, 2 variants (~10 min)
    python3 benchmarks/deployment.py --only ResNet50 --variants per-tensor --output /tmp/d.json
    python3 benchmarks/deployment.py --quick --output /tmp/d.json   # digits CNN, untrained
    python3 benchmarks/deployment.py --tf2onnx-path DIR  # float ONNX baseline (see README)

Per architecture (``digits_cnn`` of ``quantizeml.models.zoo``, trained 3 epochs, calibrated and
evaluated on the digits; ``ResNet50`` at 96x96, ``MobileNetV2`` alpha 0.35 at 96x96,
``MobileNet`` alpha 0.25 at 96x96: ``tf_keras.applications`` with ``weights=None``, 10
logits, seeded, BatchNormalization statistics re-estimated on the calibration inputs as in
``architectures.py``, uniform [-1, 1] inputs) and per variant (``per-axis``: the default 8/8
``quantize()``, per-axis activations; ``per-tensor``: 8/8 with
``QuantizationParams(per_tensor_activations=True)``), quantized on 32 calibration samples:

* ``nodes`` and ``export_s`` of the exact form (``export(qmodel)``) and of the QDQ form
  (``export(qmodel, format="qdq")``), the QDQ fallbacks (layers written by the exact
  emitters), ``qdq_ties`` (``qdq.TIES_KEY``: the output channels of the fused unsigned
  requantizations, those proven to round like quantizeml and those whose scale moved) and
  the operators onnxruntime's default CPU session runs the QDQ model with (``ort_ops``: its
  optimized graph, QLinearConv, QLinearAdd, QGemm...);
* ``exact_bit_exact``: the exact form's ``integer_outputs`` equal the Keras integers and its
  float outputs the Keras ones, on the 32 evaluation samples;
* ``qdq_match``: on the logits, ``within_one_step`` (the fraction of output values within one
  output quantization step of the Keras quantized model: ``|onnx - keras| / step <= 1`` with
  ``step = 2^-frac * scales`` of the Keras integer output), ``exact_match`` (0 steps),
  ``max_steps``, ``argmax_agreement``, ``sqnr_db_vs_keras`` (and, for context,
  ``keras_sqnr_db_vs_float``: the Keras quantized logits against the float ones); the same
  on the last 8-bit activation
  (``qdq_match_last_8bit``: the logits of a model without output quantizer are on the
  accumulator grid, where one step of an input is up to ``max|w|`` output steps); and the
  same for the other QDQ forms (``QDQ_VARIANTS``: ``qdq_half_even_*``, onnxruntime's
  rounding, the form before the ties were rounded up; ``qdq_float_depthwise_*``);
* times (median of ``--repeats``, batch 32, after a warm-up): ``float_tf_s`` (the sanitized
  float model under ``tf.function``), ``float_onnx_s`` (that model converted by ``tf2onnx``,
  when importable), ``exact_onnx_s``, ``qdq_onnx_s`` and the other QDQ forms' (onnxruntime,
  default CPU session), and their ratios to ``float_tf_s``. The float model and the QDQ
  sessions are called in turn, each after a ``PAUSE_S`` pause (the same machine load on
  each; an onnxruntime call right after TensorFlow's ran slower), and the QDQ ratios are to
  that ``float_tf_s``.

Results go to ``benchmarks/deployment.json`` (or ``--output``) and a Markdown table to stdout.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

ARCHITECTURES = ("digits_cnn", "ResNet50", "MobileNetV2", "MobileNet")
VARIANTS = ("per-axis", "per-tensor")
BATCH = 32
CALIBRATION = 32
TARGETS = {"ResNet50": 0.6, "MobileNetV2": 0.8}  # QDQ time / float TF time (issue 21)
#: The QDQ forms measured besides the default one (``export(qmodel, format="qdq")``: int8
#: depthwise convolutions, ties rounded up), as ``export_qdq`` options: ``qdq_half_even`` is
#: the form before the ties were rounded up.
QDQ_VARIANTS = {"qdq_float_depthwise": {"depthwise": "float"},
                "qdq_half_even": {"ties": "half_even"}}
PAUSE_S = 0.2  # before each timed call: TensorFlow's and onnxruntime's threads spin a while


def _median_times(fns, repeats, warmup=1):
    """The median times of several functions called in turn (the same load on each), with a
    pause before each call: an onnxruntime call right after TensorFlow's (in the same
    process) was measured 1.3x slower."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name, quick=False):
    """(float model, calibration inputs, evaluation inputs) of an architecture."""
    import numpy as np
    import tf_keras as keras
    keras.utils.set_random_seed(0)
    if name == "digits_cnn":
        from quantizeml.models.zoo import digits_cnn, load_digits_data, train_digits_cnn
        x_train, _, x_test, _ = load_digits_data()
        model = digits_cnn() if quick else train_digits_cnn(epochs=3)[0]
        return model, x_train[:CALIBRATION], x_test[:BATCH]
    import architectures
    size = 32 if quick else 96
    model, size = architectures.build(name, size)
    x = np.random.default_rng(0).uniform(-1, 1, (CALIBRATION + BATCH, size, size, 3))
    x = x.astype(np.float32)
    architectures._reestimate_batchnorm(model, x[:CALIBRATION])
    return model, x[:CALIBRATION], x[CALIBRATION:]


def _session(proto, optimized_path=None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _keras_integers(qmodel, x):
    """The Keras QTensor before the last Dequantizer: (values, step)."""
    import numpy as np
    import tf_keras as keras
    from quantizeml.layers import Dequantizer
    deq = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    qt = keras.Model(qmodel.inputs, deq.input)(x)
    step = np.power(2.0, -qt.frac_bits.numpy().astype(np.float64))
    if hasattr(qt, "scales"):
        step = step * qt.scales.numpy().astype(np.float64)
    return qt.values.numpy(), step


def _sqnr(reference, other):
    import numpy as np
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    noise = np.sum((reference - other) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference ** 2) / noise))


def _match(got, expected, step, argmax=True):
    import numpy as np
    steps = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64)) / step
    match = {"within_one_step": float(np.mean(steps <= 1 + 1e-9)),
             "exact_match": float(np.mean(steps == 0)),
             "max_steps": float(np.max(steps)),
             "sqnr_db_vs_keras": _sqnr(expected, got)}
    if argmax:
        match["argmax_agreement"] = float(np.mean(np.argmax(got, -1)
                                                  == np.argmax(expected, -1)))
    return match


def _last_8bit_model(qmodel):
    """The quantized model stopped at the last 8-bit FixedPoint before its final Dequantizer
    (dequantized), or None."""
    import tf_keras as keras
    from quantizeml.layers import Dequantizer
    deq = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    layer = deq.inbound_nodes[0].inbound_layers
    while not isinstance(layer, list):
        oq = getattr(layer, "out_quantizer", None)
        if oq is not None and oq.bitwidth <= 8:
            return keras.Model(qmodel.inputs, Dequantizer(name="last_8bit")(layer.output))
        layer = layer.inbound_nodes[0].inbound_layers
    return None


def _float_onnx(model, x, repeats):
    try:
        import tf2onnx
    except ImportError as e:
        return {"error": f"tf2onnx not importable ({e})"}
    import numpy as np
    import tensorflow as tf
    try:
        spec = (tf.TensorSpec((None,) + x.shape[1:], tf.float32, name="x"),)
        start = time.perf_counter()
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        convert_s = time.perf_counter() - start
        session = _session(proto)
        name = session.get_inputs()[0].name
        got = session.run(None, {name: x})[0]
        seconds = _median_time(lambda: session.run(None, {name: x}), repeats)
    except Exception as e:  # noqa: BLE001 - the benchmark records why it fails
        return {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
    return {"float_onnx_s": seconds, "convert_s": round(convert_s, 2),
            "nodes": len(proto.graph.node), "tf2onnx_version": tf2onnx.__version__,
            "max_abs_diff_vs_tf": float(np.max(np.abs(got - np.asarray(model(x)))))}


def measure(name, variant, model, x_calib, x_eval, repeats, exact_repeats, float_fn):
    """Quantizes ``model`` and measures both ONNX forms (see the module docstring)."""
    import numpy as np
    import onnx
    import tensorflow as tf
    from quantizeml.models import QuantizationParams, quantize
    from quantizeml.onnx_support import export
    from quantizeml.onnx_support.qdq import FALLBACKS_KEY, TIES_KEY, export_qdq

    qparams = QuantizationParams(per_tensor_activations=variant == "per-tensor")
    result = {"architecture": name, "variant": variant, "input_shape": list(x_eval.shape[1:])}
    start = time.perf_counter()
    qmodel = quantize(model, qparams=qparams, samples=x_calib, batch_size=CALIBRATION)
    result["quantize_s"] = round(time.perf_counter() - start, 2)
    values, step = _keras_integers(qmodel, x_eval)
    expected = np.asarray(qmodel(x_eval))
    # context: the quantization noise itself (the Keras quantized logits against the float)
    result["keras_sqnr_db_vs_float"] = _sqnr(np.asarray(model(x_eval)), expected)

    # the exact form
    start = time.perf_counter()
    exact = export(qmodel)
    result["exact_export_s"] = round(time.perf_counter() - start, 3)
    result["exact_nodes"] = len(exact.graph.node)
    session = _session(exact)
    feed = {session.get_inputs()[0].name: x_eval}
    outputs = session.run(None, feed)
    result["exact_bit_exact"] = bool(np.array_equal(outputs[1], values.astype(np.int64))
                                     and np.array_equal(outputs[0], expected))
    result["exact_onnx_s"] = _median_time(lambda: session.run(None, feed), exact_repeats)
    del session

    # the QDQ form: the default (float depthwise, ties half up) and, for comparison, the
    # int8 depthwise layout and the form before (int8 depthwise, ties half to even)
    start = time.perf_counter()
    qdq = export(qmodel, format="qdq")
    result["qdq_export_s"] = round(time.perf_counter() - start, 3)
    result["qdq_nodes"] = len(qdq.graph.node)
    onnx.checker.check_model(qdq, full_check=True)
    props = dict((p.key, p.value) for p in qdq.metadata_props)
    result["qdq_fallbacks"] = [f for f in props[FALLBACKS_KEY].split(",") if f]
    result["qdq_ties"] = json.loads(props[TIES_KEY])
    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        session = _session(qdq, optimized)
        ops = Counter(n.op_type for n in onnx.load(optimized).graph.node)
    result["ort_ops"] = dict(ops.most_common())
    feed = {session.get_inputs()[0].name: x_eval}
    got = session.run(None, feed)[0]
    result["qdq_match"] = _match(got, expected, step)
    sessions = {"qdq": session}
    for key, options in QDQ_VARIANTS.items():
        proto = export_qdq(qmodel, **options)
        onnx.checker.check_model(proto, full_check=True)
        sessions[key] = _session(proto)
        result[f"{key}_match"] = _match(sessions[key].run(None, feed)[0], expected, step)
    fns = [float_fn] + [lambda s=s: s.run(None, feed) for s in sessions.values()]
    times = _median_times(fns, repeats)
    result["float_tf_s"] = times[0]
    for key, seconds in zip(sessions, times[1:]):
        result[f"{key}_onnx_s"] = seconds
    del session, sessions
    last = _last_8bit_model(qmodel)
    if last is not None:
        sub_values, sub_step = _keras_integers(last, x_eval)
        sub_expected = np.asarray(last(x_eval))
        layer = last.layers[-1].inbound_nodes[0].inbound_layers.name
        for key, options in [("qdq", {})] + list(QDQ_VARIANTS.items()):
            sub = _session(export_qdq(last, **options))
            sub_got = sub.run(None, {sub.get_inputs()[0].name: x_eval})[0]
            result[f"{key}_match_last_8bit"] = {
                "layer": layer, **_match(sub_got, sub_expected, sub_step, argmax=False)}
    tf.keras.backend.clear_session()
    return result


def run_architecture(name, variants, quick, repeats, exact_repeats):
    import numpy as np
    import tensorflow as tf
    from quantizeml.models.transforms import sanitize

    model, x_calib, x_eval = build(name, quick)
    model = sanitize(model)  # as quantize() does: the float baseline is the deployed float
    fn = tf.function(model)
    x_tensor = tf.constant(x_eval)
    float_tf_s = _median_time(lambda: np.asarray(fn(x_tensor)), repeats, warmup=2)
    float_onnx = _float_onnx(model, x_eval, repeats)
    rows = []
    for variant in variants:
        try:
            row = measure(name, variant, model, x_calib, x_eval, repeats, exact_repeats,
                          lambda: np.asarray(fn(x_tensor)))
        except Exception as e:  # noqa: BLE001 - the benchmark records why a model fails
            row = {"architecture": name, "variant": variant,
                   "error": f"{type(e).__name__}: {str(e).strip()[:600]}"}
        # the QDQ sessions are timed in turn with the float model; the rest against the
        # float model timed first
        row.setdefault("float_tf_s", float_tf_s)
        row["float_onnx"] = float_onnx
        for key in ("exact_onnx_s",):
            if key in row:
                row[key.replace("_s", "_ratio")] = round(row[key] / float_tf_s, 3)
        for key in ("qdq",) + tuple(QDQ_VARIANTS):
            if f"{key}_onnx_s" in row:
                row[f"{key}_onnx_ratio"] = round(row[f"{key}_onnx_s"] / row["float_tf_s"], 3)
        if "float_onnx_s" in float_onnx:
            row["float_onnx_ratio"] = round(float_onnx["float_onnx_s"] / float_tf_s, 3)
        if name in TARGETS and "qdq_onnx_ratio" in row:
            row["qdq_target_ratio"] = TARGETS[name]
            row["qdq_target_met"] = row["qdq_onnx_ratio"] <= TARGETS[name]
        rows.append(row)
        print(json.dumps(row), flush=True, file=sys.stderr)
    return rows


def _pct(value):
    return "" if value is None else f"{100 * value:.2f}%"


def _rates(match):
    return f"{_pct(match.get('within_one_step'))} / {_pct(match.get('exact_match'))}"


def format_table(rows):
    lines = ["| model | variant | nodes exact / QDQ | export s exact / QDQ | bit-exact | "
             "QDQ within 1 step / exact (logits): ties up (half even) | "
             "QDQ within 1 step / exact (last 8-bit): ties up (half even) | "
             "argmax | SQNR dB QDQ vs Keras (Keras vs float) | channels exact / moved / all | "
             "float TF ms | float ONNX ms (x) | exact ONNX ms (x) | "
             "QDQ ms (x): default / half even / float depthwise | QDQ fallbacks |",
             "|" + " --- |" * 15]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['architecture']} | {r['variant']} | error: {r['error'][:120]} |"
                         + " |" * 13)
            continue
        m = r["qdq_match"]
        fo = r["float_onnx"]
        fo_text = f"{1e3 * fo['float_onnx_s']:.1f} ({r['float_onnx_ratio']:.2f})" \
            if "float_onnx_s" in fo else "n/a"
        ties = r.get("qdq_ties", {})
        qdq_times = " / ".join(
            f"{1e3 * r[key + '_onnx_s']:.1f} ({r[key + '_onnx_ratio']:.2f})"
            for key in ("qdq", "qdq_half_even", "qdq_float_depthwise") if key + "_onnx_s" in r)
        lines.append(
            f"| {r['architecture']} | {r['variant']} | {r['exact_nodes']} / {r['qdq_nodes']} | "
            f"{r['exact_export_s']:.2f} / {r['qdq_export_s']:.2f} | "
            f"{'yes' if r['exact_bit_exact'] else 'NO'} | "
            f"{_rates(m)} ({_rates(r.get('qdq_half_even_match', {}))}) | "
            f"{_rates(r.get('qdq_match_last_8bit', {}))} "
            f"({_rates(r.get('qdq_half_even_match_last_8bit', {}))}) | "
            f"{_pct(m['argmax_agreement'])} | {m['sqnr_db_vs_keras']:.1f} "
            f"({r['keras_sqnr_db_vs_float']:.1f}) | "
            f"{ties.get('exact', '')} / {ties.get('ties_up', '')} / {ties.get('channels', '')} | "
            f"{1e3 * r['float_tf_s']:.1f} | {fo_text} | "
            f"{1e3 * r['exact_onnx_s']:.1f} ({r['exact_onnx_ratio']:.2f}) | {qdq_times} | "
            f"{', '.join(r['qdq_fallbacks']) or '-'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(HERE, "deployment.json"))
    parser.add_argument("--only", nargs="+", choices=ARCHITECTURES, default=None)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--exact-repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="digits CNN untrained, 1 repeat (a smoke run)")
    parser.add_argument("--tf2onnx-path", metavar="DIR",
                        help="a folder holding tf2onnx (pip install --no-deps --target DIR "
                             "tf2onnx), for the float ONNX baseline")
    args = parser.parse_args(argv)
    if args.tf2onnx_path:
        sys.path.insert(0, args.tf2onnx_path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnxruntime
    import tensorflow as tf
    names = args.only or (["digits_cnn"] if args.quick else list(ARCHITECTURES))
    repeats = 1 if args.quick else args.repeats
    exact_repeats = 1 if args.quick else args.exact_repeats
    rows = []
    for name in names:
        rows.extend(run_architecture(name, args.variants, args.quick, repeats, exact_repeats))
    results = {"config": {"batch": BATCH, "calibration": CALIBRATION, "repeats": repeats,
                          "exact_repeats": exact_repeats, "quick": args.quick,
                          "variants": args.variants},
               "environment": {"tensorflow": tf.__version__,
                               "onnxruntime": onnxruntime.__version__,
                               "python": platform.python_version(),
                               "cpu_count": os.cpu_count(), "machine": platform.machine()},
               "results": rows}
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
    print(format_table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
