"""Quantization quality over seeds (issue 19): accuracy drops against each seed's float model.

For each seed, the digits CNN is trained by its recipe (``train_digits_cnn``: Adam 1e-3, batch
32, 10 epochs, ``keras.utils.set_random_seed(seed)``; op determinism on for the whole process),
then quantized for each configuration, calibrated on the training digits (the first 1024, as
``quantize()`` takes by default) and evaluated on the 540 test digits. The tiny ViT
(``train_digits_vit``, 40 epochs) likewise. Each configuration is measured on two paths:

* ``sanitized``: ``quantize(sanitize(model), ...)``, as the README shows it;
* ``raw``: ``quantize(model, ...)`` on the trained model as it is (BatchNormalizations and
  all). When the raw path's PTQ model is the sanitized path's one (same weights, same test
  outputs, bit for bit), the configurations derived from it (learned rounding, QAT) are the
  same computations and their rows are copied (``same_as_sanitized``); otherwise they are
  measured again.

Configurations (``QuantizationParams``; "first" is the first layer with weights):

* ``w8a8``: 8/8 PTQ;
* ``w4a4``: 4/4 PTQ, first layer 4-bit too;
* ``w3a3``: 3-bit weights and activations, first layer 8-bit;
* ``w2a4``: 2-bit weights, 4-bit activations, first layer 8-bit;
* ``_lr``: then ``learn_rounding`` (AdaRound, 500 iterations per layer, on the calibration
  digits);
* ``_qat``: then the plain QAT recipe: ``compile(Adam(1e-4), SparseCategoricalCrossentropy(
  from_logits=True))``, ``fit`` batch 32, 3 epochs (5 for ``w2a4``), after
  ``set_random_seed(seed)``. ``fit`` is the one of the ``QuantizedModel`` quantize() returns:
  the updates of 2-3-bit kernels are scaled (``--plain-updates``: not, the baseline);
  ``--learn-ranges``: the weight-range ratios are learned too (``QuantizedModel.learn_ranges``).
  ``--range-search``: quantize() with ``range_search=True`` (the output-aware range search).

Drops are in accuracy points, ``100 * (float - quantized)``: negative means above float.

Usage::

    python benchmarks/quality.py                       # 5 CNN seeds, 3 ViT seeds -> quality.json
    python benchmarks/quality.py --seeds 1 2 --configs w4a4 w4a4_lr --no-vit
    python benchmarks/quality.py --quick --output /tmp/quality.json   # 1 seed, short runs
"""
import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from quantizeml.models import QuantizationParams, learn_rounding, quantize  # noqa: E402
from quantizeml.models.transforms import sanitize  # noqa: E402
from quantizeml.models.zoo import load_digits_data, train_digits_cnn  # noqa: E402
from quantizeml.models.zoo_vit import train_digits_vit  # noqa: E402

#: The PTQ settings the configurations start from.
BASES = {
    "w8a8": QuantizationParams(input_weight_bits=8, weight_bits=8, activation_bits=8,
                               output_bits=8),
    "w4a4": QuantizationParams(input_weight_bits=4, weight_bits=4, activation_bits=4,
                               output_bits=4),
    "w3a3": QuantizationParams(input_weight_bits=8, weight_bits=3, activation_bits=3,
                               output_bits=3),
    "w2a4": QuantizationParams(input_weight_bits=8, weight_bits=2, activation_bits=4,
                               output_bits=4),
}

#: Configuration name -> (base, learned rounding, QAT epochs).
CONFIGS = {
    "w8a8": ("w8a8", False, 0),
    "w4a4": ("w4a4", False, 0),
    "w4a4_lr": ("w4a4", True, 0),
    "w4a4_qat": ("w4a4", False, 3),
    "w4a4_lr_qat": ("w4a4", True, 3),
    "w3a3": ("w3a3", False, 0),
    "w3a3_lr": ("w3a3", True, 0),
    "w2a4": ("w2a4", False, 0),
    "w2a4_lr": ("w2a4", True, 0),
    "w2a4_qat": ("w2a4", False, 5),
    "w2a4_lr_qat": ("w2a4", True, 5),
}
VIT_CONFIGS = ("w8a8", "w4a4", "w4a4_qat")

#: The issue's targets: (model, config) -> {statistic: bound on the drop, in points}.
TARGETS = {
    ("digits_cnn", "w8a8"): {"worst": 0.2},
    ("digits_cnn", "w4a4"): {"mean": 0.3, "worst": 0.6},
    ("digits_cnn", "w4a4_lr"): {"mean": 0.3, "worst": 0.6},
    ("digits_cnn", "w4a4_qat"): {"worst": 0.0},
    ("digits_cnn", "w3a3"): {"mean": 2.0},
    ("digits_cnn", "w3a3_lr"): {"mean": 2.0},
    ("digits_cnn", "w2a4_lr"): {"mean": 5.0},
    ("digits_cnn", "w2a4_qat"): {"mean": 1.0},
    ("digits_cnn", "w2a4_lr_qat"): {"mean": 1.0},
    ("digits_vit", "w8a8"): {"worst": 0.5},
    ("digits_vit", "w4a4_qat"): {"mean": 1.0},
}

PATHS = ("sanitized", "raw")


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def _clone(qmodel):
    clone = type(qmodel).from_config(qmodel.get_config())
    clone.set_weights(qmodel.get_weights())
    return clone


def _same(a, b, x):
    """Whether two quantized models have the same weights and the same outputs on x."""
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(
        u.shape == v.shape and np.array_equal(u, v) for u, v in zip(wa, wb)) and \
        np.array_equal(a.predict(x, batch_size=256, verbose=0),
                       b.predict(x, batch_size=256, verbose=0))


def qat(qmodel, x, y, epochs, seed, samples=None, scaled_updates=True, learn_ranges=False):
    """The plain QAT recipe on a copy of qmodel (a QuantizedModel: with ``scaled_updates``
    False its 2-3-bit kernels get the optimizer's update unscaled, as before; with
    ``learn_ranges`` the clipping ratios of its 2-4-bit weight ranges train too)."""
    qmodel = _clone(qmodel)
    qmodel.scaled_updates = scaled_updates
    qmodel.learn_ranges = learn_ranges
    keras.utils.set_random_seed(seed)
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-4),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x[:samples], y[:samples], batch_size=32, epochs=epochs, verbose=0)
    return qmodel


def measure_path(model, float_acc, path, configs, data, args, seed, log):
    """Rows of one seed and one path: {config: row}, and the PTQ models by base."""
    x_train, y_train, x_test, y_test = data
    source = sanitize(model) if path == "sanitized" else model
    bases, learned, rows = {}, {}, {}
    for name in configs:
        base, lr, epochs = CONFIGS[name]
        start = time.perf_counter()
        extra = {}
        if base not in bases:
            bases[base] = quantize(source, qparams=BASES[base], samples=x_train,
                                   num_samples=args.calibration_samples,
                                   range_search=args.range_search)
        qmodel = bases[base]
        if lr:
            if base not in learned:
                report = []
                t0 = time.perf_counter()
                learned[base] = (learn_rounding(source, qmodel, x_train,
                                                iterations=args.iterations,
                                                num_samples=args.calibration_samples,
                                                report=report), report,
                                 time.perf_counter() - t0)
            qmodel, report, seconds = learned[base]
            layers = [e for e in report if "skipped" not in e]
            extra["lr_seconds"] = round(seconds, 2)
            extra["lr_seconds_per_layer"] = {e["name"]: round(e["seconds"], 2) for e in layers}
            extra["lr_errors"] = {e["name"]: [round(e["error_nearest"], 5),
                                              round(e["error_learned"], 5)] for e in layers}
        if epochs:
            qmodel = qat(qmodel, x_train, y_train, epochs, seed, args.fit_samples,
                         not args.plain_updates, args.learn_ranges)
        acc = accuracy(qmodel, x_test, y_test)
        rows[name] = {"config": name, "path": path, "seed": seed, "float": float_acc,
                      "accuracy": acc, "drop": round(100 * (float_acc - acc), 4),
                      "seconds": round(time.perf_counter() - start, 2), **extra}
        log(f"  {path:9s} {name:12s} {acc:.4f} (drop {rows[name]['drop']:+.2f}) "
            f"{rows[name]['seconds']:.1f} s")
    return rows, bases


def measure_seed(kind, seed, configs, data, args, log):
    start = time.perf_counter()
    if kind == "digits_cnn":
        model, float_acc = train_digits_cnn(epochs=args.epochs, seed=seed)
    else:
        model, float_acc = train_digits_vit(epochs=args.vit_epochs, seed=seed)
    log(f"[{kind} seed {seed}] float {float_acc:.4f} ({time.perf_counter() - start:.0f} s)")
    rows, bases = measure_path(model, float_acc, "sanitized", configs, data, args, seed, log)
    out = list(rows.values())
    if args.no_raw:
        return float_acc, out
    # the raw path: measured again unless its PTQ model is the sanitized path's one
    x_train, x_test = data[0], data[2]
    same = {}
    for base in sorted({CONFIGS[name][0] for name in configs}):
        raw = quantize(model, qparams=BASES[base], samples=x_train,
                       num_samples=args.calibration_samples, range_search=args.range_search)
        same[base] = _same(raw, bases[base], x_test)
    log(f"  raw path: PTQ model identical to the sanitized one: {same}")
    copied = [name for name in configs if same[CONFIGS[name][0]]]
    for name in copied:
        out.append({**rows[name], "path": "raw", "same_as_sanitized": True})
    others = [name for name in configs if name not in copied]
    if others:
        raw_rows, _ = measure_path(model, float_acc, "raw", others, data, args, seed, log)
        out.extend({**row, "same_as_sanitized": False} for row in raw_rows.values())
    return float_acc, out


def summarize(rows):
    """{model: {path: {config: {mean, worst, drops, seeds, target, met}}}}."""
    summary = {}
    for row in rows:
        entry = summary.setdefault(row["model"], {}).setdefault(row["path"], {}).setdefault(
            row["config"], {"seeds": [], "drops": []})
        entry["seeds"].append(row["seed"])
        entry["drops"].append(row["drop"])
    for model, paths in summary.items():
        for configs in paths.values():
            for name, entry in configs.items():
                drops = np.array(entry["drops"])
                entry["mean"] = round(float(np.mean(drops)), 4)
                entry["worst"] = round(float(np.max(drops)), 4)
                target = TARGETS.get((model, name))
                if target:
                    entry["target"] = target
                    entry["met"] = all(entry[k] <= v + 1e-9 for k, v in target.items())
    return summary


def markdown(summary, configs_by_model):
    lines = []
    for model, paths in summary.items():
        configs = [c for c in configs_by_model[model] if c in paths.get("sanitized", {})]
        lines.append(f"{model}: drop in accuracy points, mean / worst over seeds "
                     f"{paths['sanitized'][configs[0]]['seeds']}")
        lines.append("")
        lines.append("| path | " + " | ".join(configs) + " |")
        lines.append("| --- |" + " --- |" * len(configs))
        for path in PATHS:
            if path not in paths:
                continue
            cells = []
            for name in configs:
                e = paths[path].get(name)
                if e is None:
                    cells.append("")
                    continue
                mark = "" if "met" not in e else (" ✓" if e["met"] else " ✗")
                cells.append(f"{e['mean']:.2f} / {e['worst']:.2f}{mark}")
            lines.append(f"| {path} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="digits CNN seeds (default 1 2 3 4 5)")
    parser.add_argument("--vit-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="tiny ViT seeds (default 0 1 2)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        help="digits CNN configurations (default: all)")
    parser.add_argument("--vit-configs", nargs="+", default=list(VIT_CONFIGS),
                        choices=list(CONFIGS))
    parser.add_argument("--no-vit", action="store_true", help="skip the tiny ViT")
    parser.add_argument("--no-raw", action="store_true", help="sanitized path only")
    parser.add_argument("--iterations", type=int, default=500,
                        help="learned rounding iterations per layer (default 500)")
    parser.add_argument("--quick", action="store_true",
                        help="1 CNN seed, no ViT, 2 training epochs, 50 rounding iterations, "
                             "QAT on 128 samples: a smoke run")
    parser.add_argument("--range-search", action="store_true",
                        help="quantize with range_search=True (output-aware range search)")
    parser.add_argument("--learn-ranges", action="store_true",
                        help="QAT learns the clipping ratios of the 2-4-bit weight ranges "
                             "(QuantizedModel.learn_ranges = True)")
    parser.add_argument("--plain-updates", action="store_true",
                        help="QAT without the scaled updates of 2-3-bit kernels "
                             "(QuantizedModel.scaled_updates = False): the baseline")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "quality.json"))
    args = parser.parse_args(argv)
    args.epochs, args.vit_epochs, args.fit_samples = 10, 40, None
    args.calibration_samples = 1024
    if args.quick:
        args.seeds, args.no_vit, args.epochs = args.seeds[:1], True, 2
        args.iterations, args.fit_samples, args.calibration_samples = 50, 128, 128
    tf.config.experimental.enable_op_determinism()
    data = load_digits_data()

    def log(message):
        print(message, flush=True)

    plan = [("digits_cnn", seed, args.configs) for seed in args.seeds]
    if not args.no_vit:
        plan += [("digits_vit", seed, args.vit_configs) for seed in args.vit_seeds]
    rows, floats, start = [], {}, time.perf_counter()
    result = {"config": {k: v for k, v in vars(args).items() if k != "output"},
              "environment": {"python": platform.python_version(),
                              "tensorflow": tf.__version__, "cpus": os.cpu_count()}}
    for kind, seed, configs in plan:
        float_acc, seed_rows = measure_seed(kind, seed, configs, data, args, log)
        floats.setdefault(kind, {})[seed] = float_acc
        rows.extend({"model": kind, **row} for row in seed_rows)
        # written after every seed: a run stopped early keeps what it measured
        result.update({"floats": floats, "rows": rows, "summary": summarize(rows),
                       "seconds": round(time.perf_counter() - start, 1)})
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
        # each seed builds ~15 models and their traced functions: without this the process
        # grows to ~7 GB over the full run
        keras.backend.clear_session()
        gc.collect()
    table = markdown(result["summary"], {"digits_cnn": args.configs,
                                         "digits_vit": args.vit_configs})
    result["markdown"] = table
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(table)
    return result


if __name__ == "__main__":
    main()
