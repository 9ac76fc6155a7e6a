#!/usr/bin/env python3
"""Every ``tf_keras.applications`` builder through ``quantize()`` at 8/8: fidelity and scale.

Usage::

    python3 benchmarks/architectures.py                          # all 71 builders (long)
    python3 benchmarks/architectures.py --only ResNet50 MobileNetV2 --output /tmp/a.json
    python3 benchmarks/architectures.py --families               # one builder per family
    python3 benchmarks/architectures.py --tfmot                  # also TF-MOT's quantize_model
    python3 benchmarks/architectures.py --timing-only --only VGG16  # quantize() time, peak RSS
    python3 benchmarks/architectures.py --sqnr-seeds 0 1 2 3 --only ResNet101  # SQNR vs TF-MOT

Each builder runs in a fresh subprocess (so its peak RSS is its own and a crash is recorded,
not fatal): the model is built with ``weights=None`` and ``classifier_activation=None`` (logits)
at the input size of ``SIZES`` (the smallest it accepts, 96 for ResNet50 and MobileNetV2), its
BatchNormalization statistics re-estimated on the calibration inputs (random-weight models
otherwise see vanishing or exploding activations), then ``quantize(model, samples=x[:64])``
runs directly (no ``sanitize`` call) and we record:

* ``quantize_s``, ``s_per_layer`` (quantize() wall time over the float model's layer count),
  ``peak_rss_mb`` during quantize() and the float weights' bytes (target: peak RSS <= 1.5 GiB
  + 3x the weights, time <= 0.15 s per layer). Where ``peak_reset_before_quantize`` is true,
  the process' peak was reset (``/proc/self/clear_refs``) right before quantize(), so the
  peak is that of quantize() alone, from ``rss_before_quantize_mb`` (the float model built,
  its BatchNorm re-estimated); in older rows it is the process' peak since it started;
* ``quantized_layers``, the float layers left (``float_layers``: they must all be in the
  output head) and ``integer_before_head`` (no float layer between quantized ones);
* ``sqnr_db`` of the 8/8 logits against the float model and ``argmax_agreement`` on 32
  held-out inputs, with the logits' ``correlation`` and ``power_ratio`` (``_fidelity``); ``worst_layers``: the three layers with the lowest SQNR
  (``quantizeml.analysis.compare``) where the SQNR is low;
* ``savedmodel_bit_identical``: ``quantizeml.models.save_model`` (SavedModel without
  per-layer traces, with a ``serving_default`` signature) + ``load_model`` give the same
  outputs (rows without a ``savedmodel_saver`` key used ``qmodel.save``, with per-layer
  traces);
* ``onnx_export_s``, ``onnx_nodes``, ``onnx_bit_exact``: quantizeml's exact ONNX export
  (``quantizeml.onnx_support.export``, full checker) and whether onnxruntime's integer
  outputs (before the last Dequantizer) and dequantized float outputs equal Keras' bit for bit
  on the held-out inputs; after a float tail (NASNet's softmax) the floats are compared by
  ``onnx_float_tail_max_diff`` (``onnx_error`` when the export fails; not measured with
  ``--no-onnx`` or on rows without these keys);
* ``phase_s``: the seconds of each phase (build and BatchNorm re-estimation, quantize,
  fidelity, SavedModel round trip, ONNX, TF-MOT), ``phase_peak_rss_mb`` the process's peak
  RSS at the end of each (since the reset before quantize() for the later phases);
* with ``--tfmot``: the SQNR and agreement of TF-MOT's default 8-bit ``quantize_model``
  (fake quant, ranges set by training-mode passes over the same calibration inputs), or the
  error it stops with. TF-MOT is installed by the benchmark's user
  (``pip install tensorflow-model-optimization``), never by quantizeml.

``--sqnr-seeds`` measures only the two SQNRs (quantize()'s and TF-MOT's 8/8 logits against the
float model) on the models and inputs drawn with each seed (seed 0 is the model of the other
modes): on deep random-weight models whose float outputs amplify any perturbation, the SQNR of
one model is a draw, and this mode says whether a difference holds across draws
(``architectures_sqnr_seeds.json``).

Results go to ``benchmarks/architectures.json`` (or ``--output``), and a Markdown table to
stdout.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: builder name -> family
FAMILIES = {
    **{f"ConvNeXt{s}": "ConvNeXt" for s in ("Tiny", "Small", "Base", "Large", "XLarge")},
    **{f"DenseNet{n}": "DenseNet" for n in (121, 169, 201)},
    **{f"EfficientNetB{i}": "EfficientNet" for i in range(8)},
    **{f"EfficientNetV2{s}": "EfficientNetV2" for s in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    "InceptionResNetV2": "InceptionResNetV2", "InceptionV3": "InceptionV3",
    "MobileNet": "MobileNet", "MobileNetV2": "MobileNetV2",
    "MobileNetV3Small": "MobileNetV3", "MobileNetV3Large": "MobileNetV3",
    "NASNetMobile": "NASNet", "NASNetLarge": "NASNet",
    **{f"RegNetX{n}": "RegNetX" for n in ("002", "004", "006", "008", "016", "032", "040",
                                           "064", "080", "120", "160", "320")},
    **{f"RegNetY{n}": "RegNetY" for n in ("002", "004", "006", "008", "016", "032", "040",
                                           "064", "080", "120", "160", "320")},
    **{f"ResNet{n}": "ResNet" for n in (50, 101, 152)},
    **{f"ResNet{n}V2": "ResNetV2" for n in (50, 101, 152)},
    **{f"ResNetRS{n}": "ResNetRS" for n in (50, 101, 152, 200, 270, 350, 420)},
    "VGG16": "VGG", "VGG19": "VGG", "Xception": "Xception",
}
#: the input size of each builder (the smallest it accepts, unless the issue names one; the
#: deeper ResNets at ResNet50's 96x96: at 32x32 their last stage is 1x1 pixel and random
#: weights amplify any perturbation to noise level, for TF-MOT as for quantize())
SIZES = {name: 32 for name in FAMILIES}
SIZES.update({"ResNet50": 96, "ResNet101": 96, "ResNet152": 96, "MobileNetV2": 96,
              "InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71, "NASNetMobile": 32,
              "NASNetLarge": 32})
#: the first builder of each family (the slow test's sweep)
FIRST_OF_FAMILY = {}
for _name, _family in FAMILIES.items():
    FIRST_OF_FAMILY.setdefault(_family, _name)

CALIBRATION = 64
HELD_OUT = 32


def _kwargs(name, size):
    kwargs = {"weights": None, "input_shape": (size, size, 3), "classes": 10}
    if name not in ("NASNetMobile", "NASNetLarge"):
        kwargs["classifier_activation"] = None
    if name.startswith("MobileNet") and name != "MobileNetV3Large":
        kwargs["alpha"] = {"MobileNet": 0.25, "MobileNetV2": 0.35}.get(name, 1.0)
    return kwargs


def build(name, size=None):
    """The float model of a builder (``weights=None``, 10 logits), and its input size."""
    import tf_keras as keras
    size = size or SIZES[name]
    model = getattr(keras.applications, name)(**_kwargs(name, size))
    return model, size


def _raw_pixels(model):
    import tf_keras as keras
    return any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
               for layer in model.layers[:4])


def _reestimate_batchnorm(model, x, layers=None):
    """Sets the moving statistics of ``layers`` (default: every tf_keras BatchNormalization of
    ``model``) to those of ``x``: momentum 0 for one training call."""
    if layers is None:
        import tf_keras as keras
        layers = [layer for layer in model.submodules
                  if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def _model_and_inputs(name, size=None, seed=0):
    """The float model of a builder (weights drawn with ``seed``), its input size, and its
    calibration and held-out inputs (uniform, drawn with ``seed``; integer pixels in [0, 255]
    for a model that starts with a Rescaling or Normalization), its BatchNormalization
    statistics re-estimated on the calibration inputs."""
    import numpy as np
    import tf_keras as keras
    keras.utils.set_random_seed(seed)
    model, size = build(name, size)
    rng = np.random.default_rng(seed)
    shape = (CALIBRATION + HELD_OUT, size, size, 3)
    # raw pixels are 8-bit integers (quantize() keeps a Rescaling float for other values)
    x = (np.floor(rng.uniform(0, 256, shape)) if _raw_pixels(model)
         else rng.uniform(-1, 1, shape))
    x = x.astype(np.float32)
    x_calib, x_eval = x[:CALIBRATION], x[CALIBRATION:]
    _reestimate_batchnorm(model, x_calib)
    return model, size, x_calib, x_eval


def measure_sqnr_seed(name, seed):
    """The 8/8 SQNR of quantize() and of TF-MOT's quantize_model on the model and inputs of
    one seed (``--sqnr-seeds``; runs in the subprocess)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from quantizeml.models import quantize
    model, size, x_calib, x_eval = _model_and_inputs(name, seed=seed)
    y = np.asarray(model(x_eval, training=False))
    yq = np.asarray(quantize(model, samples=x_calib, batch_size=32)(x_eval))
    return {"name": name, "seed": seed, "input_size": size, **_fidelity(y, yq),
            "tfmot": _tfmot(model, x_calib, x_eval, y)}


def _fidelity(y, yq):
    """SQNR and argmax agreement of ``yq`` against ``y``, with the two figures that tell a
    faithful model from a quiet one where the SQNR is near 0 dB: the correlation of the
    logits (1 when ``yq`` is ``y`` up to a positive scale) and their power ratio
    ``|yq|^2 / |y|^2`` (an output that shrinks towards 0 scores 0 dB without being close:
    ``yq = 0`` scores exactly 0 dB)."""
    import numpy as np
    a, b = np.asarray(y, np.float64).ravel(), np.asarray(yq, np.float64).ravel()
    return {"sqnr_db": _sqnr(y, yq),
            "argmax_agreement": float(np.mean(np.argmax(y, -1) == np.argmax(yq, -1))),
            "correlation": float(np.corrcoef(a, b)[0, 1]) if np.std(b) > 0 else 0.0,
            "power_ratio": float(np.sum(b**2) / max(np.sum(a**2), 1e-300))}


def _sqnr(y, yq):
    import numpy as np
    y, yq = np.asarray(y, np.float64), np.asarray(yq, np.float64)
    noise = np.sum((y - yq) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(y ** 2) / noise))


def _peak_rss_mb():
    """The process' peak RSS (VmHWM) in MiB (run.py's reader; imported late: run.py imports
    TensorFlow, which only the per-builder subprocess loads)."""
    from run import _read_status
    return _read_status("VmHWM")


def _tfmot(model, x_calib, x_eval, y):
    """TF-MOT's default 8-bit quantize_model, ranges from training-mode passes."""
    import numpy as np
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as e:
        return {"error": f"not installed ({e})"}
    import tf_keras as keras
    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        qat = tfmot.quantization.keras.quantize_model(clone)
        for start in range(0, len(x_calib), 32):
            qat(x_calib[start:start + 32], training=True)
        yq = np.asarray(qat(x_eval, training=False))
    except Exception as e:  # noqa: BLE001 - record why TF-MOT stops
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}
    return _fidelity(y, yq)


def _onnx_exact(qmodel, x_eval, yq):
    """quantizeml's exact ONNX export of ``qmodel``: its time, node count, the full checker,
    and whether onnxruntime's float and integer outputs equal Keras' bit for bit."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import tf_keras as keras

    from quantizeml.layers import Dequantizer
    from quantizeml.onnx_support import export
    start = time.perf_counter()
    try:
        proto = export(qmodel)
        seconds = time.perf_counter() - start
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        floats, integers = session.run(None, {session.get_inputs()[0].name: x_eval})[:2]
    except Exception as e:  # noqa: BLE001 - the benchmark records why an export fails
        return {"onnx_error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
    # the integers before the last Dequantizer (before the float tail, e.g. NASNet's softmax)
    last = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    ints = keras.Model(qmodel.inputs, last.input)(x_eval).values.numpy().astype(np.int64)
    result = {"onnx_export_s": round(seconds, 2), "onnx_nodes": len(proto.graph.node),
              "onnx_bit_exact": bool(np.array_equal(integers, ints))}
    if qmodel.layers[-1] is last:  # dequantized outputs: equal too
        result["onnx_bit_exact"] &= bool(np.array_equal(floats, yq))
    else:  # a float tail (transcendental ops may differ in the last float bits)
        result["onnx_float_tail_max_diff"] = float(np.max(np.abs(floats - yq)))
    return result


def measure(name, size=None, tfmot=False, timing_only=False, onnx=True):
    """Quantizes one builder and measures it (runs in the subprocess); ``timing_only``: stop
    after quantize() (its time and the peak RSS)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from quantizeml.layers import Dequantizer, InputQuantizer
    from quantizeml.layers.registry import twin_spec
    from quantizeml.models import float_islands, load_model, quantize, save_model

    phases, mark = {}, [time.perf_counter()]

    def phase(key):
        now = time.perf_counter()
        phases[key] = round(now - mark[0], 1)
        phase_rss[key] = round(_peak_rss_mb())
        mark[0] = now

    phase_rss = {}

    model, size, x_calib, x_eval = _model_and_inputs(name, size)
    weights_bytes = int(sum(np.asarray(w).nbytes for w in model.get_weights()))
    y = np.asarray(model(x_eval, training=False))
    phase("build")
    result = {"name": name, "family": FAMILIES[name], "input_size": size,
              "float_layers_total": len(model.layers), "weights_bytes": weights_bytes}
    from run import _read_status, _reset_peak  # the quantize() benchmark's memory helpers
    result["rss_before_quantize_mb"] = round(_read_status("VmRSS"))
    result["peak_reset_before_quantize"] = _reset_peak()
    start = time.perf_counter()
    try:
        qmodel = quantize(model, samples=x_calib, batch_size=32)
    except Exception as e:  # noqa: BLE001 - the benchmark records why a model fails
        result["error"] = f"{type(e).__name__}: {str(e).strip()[:600]}"
        result["peak_rss_mb"] = _peak_rss_mb()
        return result
    seconds = time.perf_counter() - start
    phase("quantize")
    result.update({"quantize_s": round(seconds, 2),
                   "s_per_layer": round(seconds / max(1, len(model.layers)), 4),
                   "peak_rss_mb": _peak_rss_mb(),
                   "rss_target_mb": round(1.5 * 1024 + 3 * weights_bytes / 2**20, 1)})
    if timing_only:
        result.update({"timing_only": True, "phase_s": phases})
        return result
    quantized = [layer for layer in qmodel.layers if twin_spec(layer) is not None
                 and isinstance(layer, twin_spec(layer).twin)]
    floating = [layer.name for layer in qmodel.layers
                if not isinstance(layer, (keras.layers.InputLayer, InputQuantizer, Dequantizer))
                and layer not in quantized and not type(layer).__module__.startswith(
                    "quantizeml")]
    yq = np.asarray(qmodel(x_eval))
    result.update({
        "quantized_layers": len(quantized),
        "float_layers": floating,
        "float_islands": float_islands(qmodel),
        "integer_before_head": not float_islands(qmodel),
        **_fidelity(y, yq),
    })
    if result["sqnr_db"] < 20:
        from quantizeml.analysis import compare
        rows = compare(model, qmodel, x_eval[:8], batch_size=8)
        rows = sorted(rows, key=lambda r: r["sqnr_db"])[:3]
        result["worst_layers"] = [(r["layer"], r["type"], round(r["sqnr_db"], 1)) for r in rows]
    phase("fidelity")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saved")
        save_model(qmodel, path)
        loaded = load_model(path, compile_model=False)
        result["savedmodel_bit_identical"] = bool(
            np.array_equal(np.asarray(loaded(x_eval)), yq))
    result["savedmodel_saver"] = "quantizeml.models.save_model"
    phase("savedmodel")
    if onnx:
        result.update(_onnx_exact(qmodel, x_eval, yq))
        phase("onnx")
    if tfmot:
        result["tfmot"] = _tfmot(model, x_calib, x_eval, y)
        phase("tfmot")
    result["phase_s"], result["phase_peak_rss_mb"] = phases, phase_rss
    tf.keras.backend.clear_session()
    return result


def run_one(name, tfmot, timeout, timing_only=False, onnx=True):
    """Runs :func:`measure` in a subprocess; returns its result (or the error)."""
    return _in_subprocess(name, f"a.measure({name!r}, tfmot={tfmot!r}, "
                                f"timing_only={timing_only!r}, onnx={onnx!r})", timeout)


def _in_subprocess(name, call, timeout):
    """Runs ``call`` (an expression on the module ``a``, this file) in a fresh subprocess;
    returns its JSON result (or the error)."""
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import architectures as a; "
            f"print('RESULT ' + json.dumps({call}))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"name": name, "family": FAMILIES[name], "error": f"timeout after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["process_s"] = round(time.perf_counter() - start, 1)
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"name": name, "family": FAMILIES[name],
            "error": f"process exit {proc.returncode}: {' | '.join(tail)[:600]}"}


def format_table(results):
    lines = ["| model | input | quantized layers | quantize s (s/layer) | peak RSS MB (target) "
             "| SQNR dB | argmax | SavedModel | ONNX exact (nodes) | TF-MOT SQNR dB | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('input_size', '')} | | | | | | | | | "
                         f"fails: {r['error'][:120]} |")
            continue
        tf_sqnr = r.get("tfmot", {}).get("sqnr_db")
        tf_cell = (f"{tf_sqnr:.1f}" if isinstance(tf_sqnr, float)
                   else (r.get("tfmot", {}).get("error", "")[:40] or "-"))
        if "onnx_bit_exact" in r:
            onnx_cell = (f"{'bit-exact' if r['onnx_bit_exact'] else 'DIFFERS'} "
                         f"({r['onnx_nodes']})")
        else:
            onnx_cell = ("fails: " + r["onnx_error"][:40]) if "onnx_error" in r else "-"
        ok = r["integer_before_head"] and r["savedmodel_bit_identical"] and \
            r.get("onnx_bit_exact", True)
        lines.append(
            f"| {r['name']} | {r['input_size']} | {r['quantized_layers']} | "
            f"{r['quantize_s']:.1f} ({r['s_per_layer']:.3f}) | {r['peak_rss_mb']:.0f} "
            f"({r['rss_target_mb']:.0f}) | {r['sqnr_db']:.1f} | {r['argmax_agreement']:.2f} | "
            f"{'bit-identical' if r['savedmodel_bit_identical'] else 'DIFFERS'} | {onnx_cell} | "
            f"{tf_cell} | "
            f"{'ok' if ok else 'check'} |")
    return "\n".join(lines)


def format_seed_table(results):
    """One row per builder: quantize()'s and TF-MOT's 8/8 SQNR per seed, their means, and on
    how many seeds quantize() is at least TF-MOT."""
    lines = ["| model | seeds | quantize() SQNR dB per seed | TF-MOT SQNR dB per seed | "
             "mean (ours / TF-MOT) | seeds where ours >= TF-MOT | correlation, mean (ours / "
             "TF-MOT) | power ratio, mean (ours / TF-MOT) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["name"] for r in results):
        rows = [r for r in results if r["name"] == name and "error" not in r
                and isinstance(r["tfmot"].get("sqnr_db"), float)]
        if not rows:
            lines.append(f"| {name} | | | | | no seed measured on both |")
            continue
        ours = [r["sqnr_db"] for r in rows]
        theirs = [r["tfmot"]["sqnr_db"] for r in rows]
        wins = sum(a >= b for a, b in zip(ours, theirs))

        def mean(key, source):
            values = [source(r).get(key) for r in rows]
            return (f"{sum(values) / len(values):.2f}" if all(isinstance(v, float)
                                                               for v in values) else "-")
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rows)} | "
                     f"{', '.join(f'{v:.2f}' for v in ours)} | "
                     f"{', '.join(f'{v:.2f}' for v in theirs)} | "
                     f"{sum(ours) / len(ours):.2f} / {sum(theirs) / len(theirs):.2f} | "
                     f"{wins} of {len(rows)} | {mean('correlation', lambda r: r)} / "
                     f"{mean('correlation', lambda r: r['tfmot'])} | "
                     f"{mean('power_ratio', lambda r: r)} / "
                     f"{mean('power_ratio', lambda r: r['tfmot'])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="builder names (default: all 71)")
    parser.add_argument("--families", action="store_true", help="one builder per family")
    parser.add_argument("--tfmot", action="store_true", help="also TF-MOT's quantize_model")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per builder")
    parser.add_argument("--no-onnx", action="store_true", help="skip the exact ONNX export")
    parser.add_argument("--timing-only", action="store_true",
                        help="quantize() time and peak RSS only (no fidelity, SavedModel, TF-MOT)")
    parser.add_argument("--sqnr-seeds", type=int, nargs="+", metavar="SEED",
                        help="instead: the 8/8 SQNR of quantize() and TF-MOT on the model "
                             "and inputs drawn with each seed (architectures_sqnr_seeds.json)")
    parser.add_argument("--output", help="the JSON file (default: architectures.json, or "
                                         "architectures_sqnr_seeds.json with --sqnr-seeds)")
    args = parser.parse_args(argv)
    names = args.only or (list(FIRST_OF_FAMILY.values()) if args.families else list(FAMILIES))
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown builders {unknown}; known: {sorted(FAMILIES)}")
    if args.sqnr_seeds:
        return _seed_sweep(names, args.sqnr_seeds, args.timeout, args.output or os.path.join(
            HERE, "architectures_sqnr_seeds.json"))
    args.output = args.output or os.path.join(HERE, "architectures.json")
    results = []
    for name in names:
        result = run_one(name, args.tfmot, args.timeout, args.timing_only,
                         not args.no_onnx)
        results.append(result)
        status = result.get("error") or (
            f"{result['quantize_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB"
            if args.timing_only else f"{result['quantized_layers']} layers, "
            f"{result['sqnr_db']:.1f} dB, {result['quantize_s']:.1f} s")
        print(f"{name}: {status}", file=sys.stderr, flush=True)
        with open(args.output, "w") as f:
            json.dump({"results": results}, f, indent=1)
    if args.timing_only:
        print("| model | quantize s (s/layer) | peak RSS MB (target) |\n| --- | --- | --- |")
        for r in results:
            print(f"| {r['name']} | " + (f"fails: {r['error'][:120]} | |" if "error" in r else
                  f"{r['quantize_s']:.1f} ({r['s_per_layer']:.3f}) | {r['peak_rss_mb']:.0f} "
                  f"({r['rss_target_mb']:.0f}) |"))
    else:
        print(format_table(results))
    return 0


def _seed_sweep(names, seeds, timeout, output):
    """``--sqnr-seeds``: quantize()'s and TF-MOT's SQNR over model seeds."""
    results = []
    for name in names:
        for seed in seeds:
            result = _in_subprocess(name, f"a.measure_sqnr_seed({name!r}, {seed!r})", timeout)
            result.setdefault("seed", seed)
            results.append(result)
            status = result.get("error") or (
                f"{result['sqnr_db']:.2f} dB, TF-MOT "
                f"{result['tfmot'].get('sqnr_db', result['tfmot'].get('error'))}")
            print(f"{name} seed {seed}: {status}", file=sys.stderr, flush=True)
            with open(output, "w") as f:
                json.dump({"command": "python3 benchmarks/architectures.py --sqnr-seeds "
                                      f"{' '.join(map(str, seeds))} --only {' '.join(names)}",
                           "results": results}, f, indent=1)
    print(format_seed_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
