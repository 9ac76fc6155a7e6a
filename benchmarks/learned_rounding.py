"""Accuracy of the digits CNN quantized with nearest and with learned rounding (AdaRound).

For each seed: train the digits CNN, quantize it (PTQ, the training digits as calibration
samples) for each setting, with nearest rounding and after ``learn_rounding``; accuracy on the
540 test digits and drop against that seed's float model; seconds per learned layer.

Usage: ``python benchmarks/learned_rounding.py [--seeds 0 1 2] [--iterations 500]
[--output results.json]``
"""
import argparse
import json
import time

import numpy as np

from quantizeml.models import QuantizationParams, learn_rounding, quantize
from quantizeml.models.zoo import load_digits_data, train_digits_cnn

SETTINGS = {
    "w4a4": QuantizationParams(input_weight_bits=4, weight_bits=4, activation_bits=4,
                               output_bits=4),
    "w3a3": QuantizationParams(input_weight_bits=8, weight_bits=3, activation_bits=3,
                               output_bits=3),
    "w2a4": QuantizationParams(input_weight_bits=8, weight_bits=2, activation_bits=4,
                               output_bits=4),
}


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    x_train, _, x_test, y_test = load_digits_data()
    rows = []
    for seed in args.seeds:
        model, float_acc = train_digits_cnn(seed=seed)
        for name in args.settings:
            qmodel = quantize(model, qparams=SETTINGS[name], samples=x_train)
            nearest = accuracy(qmodel, x_test, y_test)
            report = []
            start = time.perf_counter()
            learned_model = learn_rounding(model, qmodel, x_train, iterations=args.iterations,
                                           report=report)
            total = time.perf_counter() - start
            learned = accuracy(learned_model, x_test, y_test)
            layers = [e for e in report if "skipped" not in e]
            row = {"seed": seed, "setting": name, "float": float_acc, "nearest": nearest,
                   "learned": learned, "drop_nearest": 100 * (float_acc - nearest),
                   "drop_learned": 100 * (float_acc - learned), "seconds": total,
                   "seconds_per_layer": {e["name"]: round(e["seconds"], 2) for e in layers},
                   "errors": {e["name"]: (round(e["error_nearest"], 4),
                                          round(e["error_learned"], 4)) for e in layers}}
            rows.append(row)
            print(f"seed {seed} {name}: float {float_acc:.4f} nearest {nearest:.4f} "
                  f"(drop {row['drop_nearest']:.2f}) learned {learned:.4f} "
                  f"(drop {row['drop_learned']:.2f}) {total:.1f} s "
                  f"{row['seconds_per_layer']}", flush=True)
    for name in args.settings:
        sel = [r for r in rows if r["setting"] == name]
        for key in ("drop_nearest", "drop_learned"):
            drops = [r[key] for r in sel]
            print(f"{name} {key}: mean {np.mean(drops):.2f} worst {np.max(drops):.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
