#!/usr/bin/env python3
"""quantizeml benchmarks: quantized vs float, measured side by side in one process.

Usage::

    python3 benchmarks/run.py                       # full run (several minutes on 2 cores)
    python3 benchmarks/run.py --quick --output /tmp/b.json   # tiny sizes (the test suite)

Every timing is the median of ``--repeats`` runs after ``--warmup`` runs, with the float and the
quantized model measured interleaved (float, quantized, float, quantized, ...) so that the
ratio is not skewed by the load of a shared machine. Every measurement records the peak
resident memory (``peak_rss_mb``) of the process during it: the kernel's high-water mark is
reset before it (``/proc/self/clear_refs``), else the ``resource.getrusage`` maximum is used
(a delta over the previous peak, ``rss_method`` says which).

See benchmarks/README.md for the measures and the targets of issue #8.
"""
import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import quantizeml  # noqa: E402
from quantizeml.demo import weight_sizes  # noqa: E402
from quantizeml.models import (QuantizationParams, quantize,  # noqa: E402
                               record_quantization_variables)
from quantizeml.models.transforms import sanitize  # noqa: E402
from quantizeml.models.zoo import load_digits_data, train_digits_cnn  # noqa: E402

TARGETS = {
    "eager_ratio": 5.0,
    "predict_ratio": 2.0,
    "xla_ratio": 2.0,
    "qat_step_ratio": 2.0,
    "quantize_mobilenet_s": 10.0,
}


# --------------------------------------------------------------------------------- memory
def _read_status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return None


def _reset_peak():
    """Resets the kernel's peak-RSS mark (Linux >= 4.0); True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


@contextlib.contextmanager
def peak_memory(record):
    """Records ``peak_rss_mb`` (and ``rss_before_mb``) of the process during the block."""
    before = _read_status("VmRSS") or _maxrss_mb()
    maxrss_before = _maxrss_mb()
    hwm = _reset_peak()
    try:
        yield
    finally:
        if hwm and _read_status("VmHWM") is not None:
            record["peak_rss_mb"] = round(_read_status("VmHWM"), 1)
            record["rss_method"] = "VmHWM"
        else:
            # getrusage's maximum only grows: the delta is the growth over the previous peak
            record["peak_rss_mb"] = round(_maxrss_mb(), 1)
            record["rss_method"] = "getrusage"
            record["peak_rss_growth_mb"] = round(_maxrss_mb() - maxrss_before, 1)
        record["rss_before_mb"] = round(before, 1)


# --------------------------------------------------------------------------------- timing
def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns, repeats, warmup):
    """Median seconds of each of ``fns`` (dict name -> callable), run interleaved."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn))
    return {name: statistics.median(t) for name, t in times.items()}, times


def _ratio(q, f):
    return round(q / f, 3) if f else None


def _sync(y):
    """Forces the computation of an eager result (a QTensor or a nest of them)."""
    for t in tf.nest.flatten(y, expand_composites=True):
        if hasattr(t, "numpy"):
            t.numpy()
    return y


# ------------------------------------------------------------------------------ workloads
def digits_workload(cfg):
    x_train, y_train, x_test, y_test = load_digits_data()
    model, accuracy = train_digits_cnn(epochs=cfg["train_epochs"], seed=0)
    return {"name": "digits_cnn", "model": model, "float_accuracy": accuracy,
            "x_calib": x_train, "x_eval": x_test, "y_eval": y_test,
            "x_train": x_train, "y_train": y_train,
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}


def reestimate_batchnorm(model, x):
    """Sets the BatchNormalization statistics to those of ``x`` (one training-mode pass).

    With its initial statistics (mean 0, variance 1) a randomly initialized MobileNet's
    activations shrink layer after layer until they vanish, unlike those of a trained network;
    the quantized model then takes paths (float64 convolutions, saturated biases) a trained
    one does not. Re-estimating the statistics on the inputs, as after training, keeps every
    layer's activations in a realistic range.
    """
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def mobilenet_workload(cfg):
    size = cfg["mobilenet_size"]
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(alpha=0.25, input_shape=(size, size, 3),
                                         weights=None)
    rng = np.random.RandomState(0)
    n = max(cfg["num_samples"], cfg["eval_samples"])
    x = rng.uniform(-1, 1, (n,) + (size, size, 3)).astype(np.float32)
    y = rng.randint(0, 1000, (n,)).astype(np.int64)
    if not cfg.get("raw_batchnorm"):
        reestimate_batchnorm(model, x[:cfg["num_samples"]])
    return {"name": f"mobilenet_a0.25_{size}", "model": model, "float_accuracy": None,
            "x_calib": x, "x_eval": x[:cfg["eval_samples"]], "y_eval": None,
            "x_train": x, "y_train": y,
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=False)}


# ------------------------------------------------------------------------------- measures
def measure_quantize(work, float_model, cfg):
    """1. quantize() + calibration wall time and calibration throughput."""
    n = cfg["num_samples"]
    x = work["x_calib"][:n]
    rec = {"num_samples": n}
    out = {}

    def run_quantize():
        out["qmodel"] = quantize(float_model, samples=x, num_samples=n)

    def run_float():
        # the float reference: one inference pass over the same calibration samples
        float_model.predict(x, batch_size=32, verbose=0)

    with peak_memory(rec):
        rec["first_quantize_s"] = round(_time(run_quantize), 3)
        first = out["qmodel"]
        if cfg["quantize_repeats"]:
            med, raw = interleaved({"float": run_float, "quantize": run_quantize},
                                   cfg["quantize_repeats"], 0)
        else:  # quick mode: the first (cold) call only
            run_float()
            med = {"float": _time(run_float), "quantize": rec["first_quantize_s"]}
            raw = {"quantize": [med["quantize"]]}
    rec["quantize_s"] = round(med["quantize"], 3)
    rec["quantize_runs_s"] = [round(t, 3) for t in raw["quantize"]]
    rec["float_predict_s"] = round(med["float"], 4)
    rec["calibration_samples_per_s"] = round(n / med["quantize"], 1)
    rec["ratio_vs_float_predict"] = _ratio(med["quantize"], med["float"])
    # the first model for inference, the last one (maybe the same) for the train step
    return rec, first, out["qmodel"]


def _xla_blockers(model, x):
    """The layers whose call fails under ``tf.function(jit_compile=True)`` (tested one by one)."""
    blockers = []
    values = {}
    try:
        probe = keras.Model(model.inputs,
                            [layer.output for layer in model.layers
                             if not isinstance(layer, keras.layers.InputLayer)])
        outputs = probe(x, training=False)
        names = [layer.name for layer in model.layers
                 if not isinstance(layer, keras.layers.InputLayer)]
        values = dict(zip(names, outputs))
    except Exception:  # noqa: BLE001 - fall back on the first layer only
        pass
    for node_layer in model.layers:
        if isinstance(node_layer, keras.layers.InputLayer):
            continue
        inbound = node_layer._inbound_nodes[0].inbound_layers
        inbound = inbound if isinstance(inbound, list) else [inbound]
        try:
            args = [x if isinstance(p, keras.layers.InputLayer) else values[p.name]
                    for p in inbound]
        except KeyError:
            continue
        fn = tf.function(lambda *a, layer=node_layer: layer(
            a[0] if len(a) == 1 else list(a), training=False), jit_compile=True)
        try:
            _sync(fn(*args))
        except Exception as e:  # noqa: BLE001 - report, do not fail
            blockers.append({"layer": node_layer.name, "class": type(node_layer).__name__,
                             "error": f"{type(e).__name__}: {_first_line(e)}"})
    return blockers


def _first_line(e):
    text = str(e).strip().splitlines()
    for line in text:
        if "No registered" in line or "unsupported" in line.lower() or "XLA" in line:
            return line.strip()[:300]
    return (text[0] if text else "")[:300]


def measure_inference(work, float_model, qmodel, cfg):
    """2. inference throughput: eager call, predict, tf.function(jit_compile=True)."""
    xb = work["x_eval"][:cfg["batch_size"]]
    xe = work["x_eval"]
    reps, warm = cfg["repeats"], cfg["warmup"]
    results = {}

    def eager(m):
        return lambda: _sync(m(xb, training=False))

    def predict(m):
        return lambda: m.predict(xe, batch_size=32, verbose=0)

    rec = {"batch_size": len(xb)}
    with peak_memory(rec):
        med, _ = interleaved({"float": eager(float_model), "quantized": eager(qmodel)},
                             reps, warm)
    rec.update(_pair(med, len(xb)))
    results["eager"] = rec

    rec = {"num_samples": len(xe), "batch_size": 32}
    with peak_memory(rec):
        med, _ = interleaved({"float": predict(float_model), "quantized": predict(qmodel)},
                             reps, warm)
    rec.update(_pair(med, len(xe)))
    results["predict"] = rec

    rec = {"batch_size": len(xb)}
    if not cfg["xla"]:
        rec["supported"] = None
        rec["skipped"] = "--quick: XLA compilation of the quantized model takes ~20 s"
        results["xla"] = rec
    with contextlib.nullcontext() if not cfg["xla"] else peak_memory(rec):
        fns = {}
        for name, m in (("float", float_model), ("quantized", qmodel)) if cfg["xla"] else ():
            f = tf.function(lambda x, m=m: m(x, training=False), jit_compile=True)
            try:
                start = time.perf_counter()
                _sync(f(xb))
                rec[f"{name}_compile_s"] = round(time.perf_counter() - start, 3)
                fns[name] = (lambda f=f: _sync(f(xb)))
            except Exception as e:  # noqa: BLE001 - report which layers block XLA
                rec[f"{name}_error"] = f"{type(e).__name__}: {_first_line(e)}"
                rec[f"{name}_blocking_layers"] = _xla_blockers(m, xb)
        if len(fns) == 2:
            med, _ = interleaved(fns, reps, warm)
            rec.update(_pair(med, len(xb)))
    if cfg["xla"]:
        rec["supported"] = len(fns) == 2
        results["xla"] = rec

    # recording mode: quantized weights stored once instead of recomputed per call
    rec = {"batch_size": len(xb)}
    with peak_memory(rec):
        before, _ = interleaved({"float": eager(float_model), "quantized": eager(qmodel)},
                                reps, warm)
        start = time.perf_counter()
        record_quantization_variables(qmodel)
        rec["record_s"] = round(time.perf_counter() - start, 3)
        qmodel.predict_function = None  # retrace predict with the records
        after, _ = interleaved({"float": eager(float_model), "quantized": eager(qmodel)},
                               reps, warm)
        p_after, _ = interleaved({"float": predict(float_model), "quantized": predict(qmodel)},
                                 reps, warm)
    rec["eager_quantized_s_before"] = round(before["quantized"], 5)
    rec["eager_quantized_s_after"] = round(after["quantized"], 5)
    rec["eager_speedup"] = _ratio(before["quantized"], after["quantized"])
    rec["eager_ratio_after"] = _ratio(after["quantized"], after["float"])
    rec["predict_quantized_s_after"] = round(p_after["quantized"], 5)
    rec["predict_ratio_after"] = _ratio(p_after["quantized"], p_after["float"])
    rec["predict_speedup"] = _ratio(results["predict"]["quantized_s"], p_after["quantized"])
    results["recording"] = rec
    return results


def _pair(med, n):
    return {"float_s": round(med["float"], 5), "quantized_s": round(med["quantized"], 5),
            "float_samples_per_s": round(n / med["float"], 1),
            "quantized_samples_per_s": round(n / med["quantized"], 1),
            "ratio": _ratio(med["quantized"], med["float"])}


def measure_train_step(work, float_model, qmodel, cfg):
    """3. QAT train step (train_on_batch, batch 32) vs the float train step."""
    bs = cfg["batch_size"]
    x, y = work["x_train"][:bs], work["y_train"][:bs]
    fmodel = keras.models.clone_model(float_model)
    fmodel.set_weights(float_model.get_weights())
    for m in (fmodel, qmodel):
        m.compile(optimizer=keras.optimizers.Adam(1e-5), loss=work["loss"])
    rec = {"batch_size": bs}
    with peak_memory(rec):
        med, _ = interleaved({"float": lambda: fmodel.train_on_batch(x, y),
                              "quantized": lambda: qmodel.train_on_batch(x, y)},
                             cfg["repeats"], max(cfg["warmup"], 1))
    rec.update(_pair(med, bs))
    return rec


def _binary_sizes(model):
    """Bytes of the binary model: 1 bit per binarized kernel value, float32 elsewhere."""
    bits = 0
    for layer in model.layers:
        binarized = getattr(layer, "kernel_quantizer", None) is not None or \
            getattr(layer, "depthwise_quantizer", None) is not None
        for v in layer.trainable_weights:
            n = int(np.prod(v.shape))
            bits += n if binarized and "kernel" in v.name else 32 * n
    return (bits + 7) // 8


def measure_accuracy(work, float_model, cfg):
    """4. accuracy on digits: float, 8/8 PTQ, 4/4 PTQ, 4/4 QAT, binary; with model sizes."""
    from quantizeml.demo import accuracy
    from quantizeml.layers import binary_digits_cnn

    xc, xt, yt = work["x_calib"], work["x_eval"], work["y_eval"]
    fit = cfg["fit_samples"]
    x_train, y_train = work["x_train"][:fit], work["y_train"][:fit]
    sizes = weight_sizes(work["model"])
    n = min(len(xc), cfg["accuracy_calib_samples"])
    rows = []

    def row(name, fn, storage, size=None):
        rec = {"model": name}
        with peak_memory(rec):
            start = time.perf_counter()
            rec["accuracy"] = round(float(fn()), 4)
            rec["time_s"] = round(time.perf_counter() - start, 2)
        rec["storage"] = storage
        rec["weights_bytes"] = sizes[storage] if size is None else size
        rows.append(rec)

    row("float", lambda: accuracy(float_model, xt, yt), "float32")
    row("8/8 PTQ", lambda: accuracy(quantize(float_model, samples=xc, num_samples=n), xt, yt),
        "int8")
    q4p = QuantizationParams(activation_bits=4, weight_bits=4, output_bits=4,
                             input_weight_bits=4)
    holder = {}

    def ptq4():
        holder["q4"] = quantize(float_model, qparams=q4p, samples=xc, num_samples=n)
        return accuracy(holder["q4"], xt, yt)

    row("4/4 PTQ", ptq4, "int4_packed")

    def qat4():
        q4 = holder["q4"]
        epochs = cfg["qat_epochs"]
        keras.utils.set_random_seed(0)
        steps = epochs * int(np.ceil(len(x_train) / 32))
        q4.compile(optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(1e-4, max(steps, 1))),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        q4.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
        return accuracy(q4, xt, yt)

    row(f"4/4 QAT ({cfg['qat_epochs']} ep)", qat4, "int4_packed")

    def binary():
        epochs = cfg["binary_epochs"]
        keras.utils.set_random_seed(0)
        steps = epochs * int(np.ceil(len(x_train) / 32))
        model = binary_digits_cnn(decay_steps=steps)
        model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
        holder["binary_bytes"] = _binary_sizes(model)
        return accuracy(model, xt, yt)

    row(f"binary ({cfg['binary_epochs']} ep)", binary, "binary", size=0)
    rows[-1]["weights_bytes"] = holder["binary_bytes"]
    return rows


# ------------------------------------------------------------------------------- driver
def run_workload(work, cfg, log):
    name = work["name"]
    result = {"workload": name}
    float_model = sanitize(work["model"])
    log(f"[{name}] quantize + calibrate ({cfg['num_samples']} samples)...")
    result["quantize"], qmodel, qat_model = measure_quantize(work, float_model, cfg)
    log(f"[{name}] inference (eager, predict, XLA, recording)...")
    result["inference"] = measure_inference(work, float_model, qmodel, cfg)
    log(f"[{name}] train step...")
    result["train_step"] = measure_train_step(work, float_model, qat_model, cfg)
    if work["y_eval"] is not None and cfg["accuracy"]:
        log(f"[{name}] accuracy table...")
        result["accuracy"] = measure_accuracy(work, float_model, cfg)
    return result


def configs(quick):
    if quick:
        return {"quick": True, "workloads": ["digits"], "train_epochs": 1, "num_samples": 32,
                "accuracy_calib_samples": 64, "eval_samples": 64, "batch_size": 32,
                "repeats": 1, "warmup": 1, "quantize_repeats": 0, "qat_epochs": 1,
                "fit_samples": 128, "xla": False,
                "binary_epochs": 1, "mobilenet_size": 32, "accuracy": True}
    return {"quick": False, "workloads": ["digits", "mobilenet"], "train_epochs": 10,
            "num_samples": 256, "accuracy_calib_samples": 1257, "eval_samples": 256,
            "batch_size": 32, "repeats": 11, "warmup": 2, "quantize_repeats": 3,
            "qat_epochs": 3, "binary_epochs": 10, "fit_samples": None, "mobilenet_size": 96, "xla": True,
            "accuracy": True}


def check_targets(results):
    """The issue #8 targets, checked on the MobileNet workload (digits when it is absent)."""
    by_name = {r["workload"]: r for r in results["workloads"] if "error" not in r}
    ref = next((r for n, r in by_name.items() if n.startswith("mobilenet")), None)
    ref = ref or next(iter(by_name.values()), None)
    if ref is None:
        return []
    inf = ref["inference"]
    checks = [("eager quantized/float", inf["eager"].get("ratio"), TARGETS["eager_ratio"]),
              ("predict quantized/float", inf["predict"].get("ratio"),
               TARGETS["predict_ratio"]),
              ("tf.function(jit) quantized/float", inf["xla"].get("ratio"),
               TARGETS["xla_ratio"]),
              ("QAT step quantized/float", ref["train_step"].get("ratio"),
               TARGETS["qat_step_ratio"]),
              ("quantize+calibrate (s)", ref["quantize"].get("quantize_s"),
               TARGETS["quantize_mobilenet_s"])]
    return [{"workload": ref["workload"], "measure": m, "value": v, "target": t,
             "met": (v is not None and v <= t)} for m, v, t in checks]


def format_table(results):
    lines = []
    for r in results["workloads"]:
        name = r["workload"]
        if "error" in r:
            lines.append(f"{name}: ERROR {r['error']}")
            continue
        q = r["quantize"]
        lines.append(f"== {name}")
        lines.append(f"{'measure':<34}{'float':>12}{'quantized':>12}{'ratio':>8}"
                     f"{'peak MiB':>10}")
        lines.append("-" * 76)
        lines.append(f"{'quantize+calib ' + str(q['num_samples']) + ' (s)':<34}"
                     f"{q['float_predict_s']:>12.3f}{q['quantize_s']:>12.3f}"
                     f"{_fmt(q['ratio_vs_float_predict']):>8}{q['peak_rss_mb']:>10.0f}")
        lines.append(f"{'  calibration samples/s':<34}{'':>12}"
                     f"{q['calibration_samples_per_s']:>12.1f}")
        inf = r["inference"]
        for key, label in (("eager", "eager call (s/batch)"), ("predict", "predict (s)"),
                           ("xla", "tf.function jit (s/batch)")):
            m = inf[key]
            if m.get("skipped"):
                lines.append(f"{label:<34}{'skipped':>12}  ({m['skipped']})")
            elif "ratio" in m:
                lines.append(f"{label:<34}{m['float_s']:>12.5f}{m['quantized_s']:>12.5f}"
                             f"{_fmt(m['ratio']):>8}{m['peak_rss_mb']:>10.0f}")
            else:
                blockers = ", ".join(sorted({b["class"] for b in
                                             m.get("quantized_blocking_layers", [])}))
                lines.append(f"{label:<34}{'unsupported':>12}  blocked by: {blockers or '?'}")
        rec = inf["recording"]
        lines.append(f"{'recording: eager speed-up':<34}{'':>12}"
                     f"{_fmt(rec['eager_speedup']):>12}{_fmt(rec['eager_ratio_after']):>8}"
                     f"{rec['peak_rss_mb']:>10.0f}")
        lines.append(f"{'recording: predict speed-up':<34}{'':>12}"
                     f"{_fmt(rec['predict_speedup']):>12}{_fmt(rec['predict_ratio_after']):>8}")
        t = r["train_step"]
        lines.append(f"{'train step b32 (s)':<34}{t['float_s']:>12.5f}{t['quantized_s']:>12.5f}"
                     f"{_fmt(t['ratio']):>8}{t['peak_rss_mb']:>10.0f}")
        if "accuracy" in r:
            lines.append("")
            lines.append(f"{'model':<20}{'accuracy':>9}{'weights (B)':>13}  {'storage':<12}"
                         f"{'time s':>7}{'peak MiB':>10}")
            lines.append("-" * 72)
            for a in r["accuracy"]:
                lines.append(f"{a['model']:<20}{a['accuracy']:>9.4f}{a['weights_bytes']:>13}  "
                             f"{a['storage']:<12}{a['time_s']:>7.1f}{a['peak_rss_mb']:>10.0f}")
        lines.append("")
    if results.get("targets"):
        lines.append("== targets (issue #8)")
        for c in results["targets"]:
            lines.append(f"{c['measure']:<36}{_fmt(c['value']):>9}  <= {c['target']:<5} "
                         f"{'met' if c['met'] else 'MISSED'}  ({c['workload']})")
    return "\n".join(lines)


def _fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__),
                                                         "results.json"))
    parser.add_argument("--workloads", nargs="+", choices=["digits", "mobilenet"],
                        help="restrict the workloads")
    parser.add_argument("--repeats", type=int, help="timed repeats (median)")
    parser.add_argument("--xla", action="store_true", help="measure XLA in --quick mode too")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy table")
    parser.add_argument("--raw-batchnorm", action="store_true",
                        help="keep MobileNet's initial BatchNormalization statistics (its "
                             "activations vanish after a few blocks)")
    args = parser.parse_args(argv)
    cfg = configs(args.quick)
    if args.workloads:
        cfg["workloads"] = args.workloads
    if args.repeats:
        cfg["repeats"] = args.repeats
    if args.xla:
        cfg["xla"] = True
    if args.no_accuracy:
        cfg["accuracy"] = False
    cfg["raw_batchnorm"] = args.raw_batchnorm

    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    results = {"config": cfg, "environment": {
        "python": platform.python_version(), "tensorflow": tf.__version__,
        "tf_keras": keras.__version__, "quantizeml": getattr(quantizeml, "__version__", "?"),
        "cpus": os.cpu_count(), "machine": platform.machine()}, "workloads": []}
    builders = {"digits": digits_workload, "mobilenet": mobilenet_workload}
    for w in cfg["workloads"]:
        keras.backend.clear_session()
        try:
            work = builders[w](cfg)
            results["workloads"].append(run_workload(work, cfg, log))
        except Exception as e:  # noqa: BLE001 - keep the other workloads
            traceback.print_exc()
            results["workloads"].append({"workload": w, "error": f"{type(e).__name__}: {e}"})
    results["targets"] = check_targets(results)
    results["total_s"] = round(time.perf_counter() - start, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results))
    print(f"results written to {args.output} ({results['total_s']} s)")
    return 1 if any("error" in r for r in results["workloads"]) else 0


if __name__ == "__main__":
    sys.exit(main())
