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
  emitters) and the operators onnxruntime's default CPU session runs the QDQ model with
  (``ort_ops``: its optimized graph, QLinearConv, QLinearAdd, QGemm...);
* ``exact_bit_exact``: the exact form's ``integer_outputs`` equal the Keras integers and its
  float outputs the Keras ones, on the 32 evaluation samples;
* ``qdq_match``: on the logits, ``within_one_step`` (the fraction of output values within one
  output quantization step of the Keras quantized model: ``|onnx - keras| / step <= 1`` with
  ``step = 2^-frac * scales`` of the Keras integer output), ``exact_match`` (0 steps),
  ``max_steps``, ``argmax_agreement``, ``sqnr_db_vs_keras`` (and, for context,
  ``keras_sqnr_db_vs_float``: the Keras quantized logits against the float ones); the same
  on the last 8-bit activation
  (``qdq_match_last_8bit``: the logits of a model without output quantizer are on the
  accumulator grid, where one step of an input is up to ``max|w|`` output steps);
* times (median of ``--repeats``, batch 32, after a warm-up): ``float_tf_s`` (the sanitized
  float model under ``tf.function``), ``float_onnx_s`` (that model converted by ``tf2onnx``,
  when importable), ``exact_onnx_s``, ``qdq_onnx_s`` (onnxruntime, default CPU session), and
  their ratios to ``float_tf_s``.

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


def measure(name, variant, model, x_calib, x_eval, repeats, exact_repeats):
    """Quantizes ``model`` and measures both ONNX forms (see the module docstring)."""
    import numpy as np
    import onnx
    import tensorflow as tf
    from quantizeml.models import QuantizationParams, quantize
    from quantizeml.onnx_support import export
    from quantizeml.onnx_support.qdq import FALLBACKS_KEY

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

    # the QDQ form
    start = time.perf_counter()
    qdq = export(qmodel, format="qdq")
    result["qdq_export_s"] = round(time.perf_counter() - start, 3)
    result["qdq_nodes"] = len(qdq.graph.node)
    onnx.checker.check_model(qdq, full_check=True)
    fallbacks = dict((p.key, p.value) for p in qdq.metadata_props)[FALLBACKS_KEY]
    result["qdq_fallbacks"] = [f for f in fallbacks.split(",") if f]
    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        session = _session(qdq, optimized)
        ops = Counter(n.op_type for n in onnx.load(optimized).graph.node)
    result["ort_ops"] = dict(ops.most_common())
    feed = {session.get_inputs()[0].name: x_eval}
    got = session.run(None, feed)[0]
    result["qdq_match"] = _match(got, expected, step)
    result["qdq_onnx_s"] = _median_time(lambda: session.run(None, feed), repeats)
    del session
    last = _last_8bit_model(qmodel)
    if last is not None:
        sub = _session(export(last, format="qdq"))
        sub_got = sub.run(None, {sub.get_inputs()[0].name: x_eval})[0]
        sub_values, sub_step = _keras_integers(last, x_eval)
        result["qdq_match_last_8bit"] = {
            "layer": last.layers[-1].inbound_nodes[0].inbound_layers.name,
            **_match(sub_got, np.asarray(last(x_eval)), sub_step, argmax=False)}
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
            row = measure(name, variant, model, x_calib, x_eval, repeats, exact_repeats)
        except Exception as e:  # noqa: BLE001 - the benchmark records why a model fails
            row = {"architecture": name, "variant": variant,
                   "error": f"{type(e).__name__}: {str(e).strip()[:600]}"}
        row["float_tf_s"] = float_tf_s
        row["float_onnx"] = float_onnx
        for key in ("exact_onnx_s", "qdq_onnx_s"):
            if key in row:
                row[key.replace("_s", "_ratio")] = round(row[key] / float_tf_s, 3)
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


def format_table(rows):
    lines = ["| model | variant | nodes exact / QDQ | export s exact / QDQ | bit-exact | "
             "QDQ within 1 step / exact (logits) | QDQ within 1 step / exact (last 8-bit) | "
             "argmax | SQNR dB QDQ vs Keras (Keras vs float) | float TF ms | "
             "float ONNX ms (x) | exact ONNX ms (x) | QDQ ms (x) | "
             "QDQ fallbacks |",
             "|" + " --- |" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['architecture']} | {r['variant']} | error: {r['error'][:120]} |"
                         + " |" * 12)
            continue
        m = r["qdq_match"]
        last = r.get("qdq_match_last_8bit", {})
        fo = r["float_onnx"]
        fo_text = f"{1e3 * fo['float_onnx_s']:.1f} ({r['float_onnx_ratio']:.2f})" \
            if "float_onnx_s" in fo else "n/a"
        lines.append(
            f"| {r['architecture']} | {r['variant']} | {r['exact_nodes']} / {r['qdq_nodes']} | "
            f"{r['exact_export_s']:.2f} / {r['qdq_export_s']:.2f} | "
            f"{'yes' if r['exact_bit_exact'] else 'NO'} | "
            f"{_pct(m['within_one_step'])} / {_pct(m['exact_match'])} | "
            f"{_pct(last.get('within_one_step'))} / {_pct(last.get('exact_match'))} | "
            f"{_pct(m['argmax_agreement'])} | {m['sqnr_db_vs_keras']:.1f} "
            f"({r['keras_sqnr_db_vs_float']:.1f}) | {1e3 * r['float_tf_s']:.1f} | {fo_text} | "
            f"{1e3 * r['exact_onnx_s']:.1f} ({r['exact_onnx_ratio']:.2f}) | "
            f"{1e3 * r['qdq_onnx_s']:.1f} ({r['qdq_onnx_ratio']:.2f}) | "
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
