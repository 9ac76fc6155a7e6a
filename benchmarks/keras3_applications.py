"""Keras 3 applications (issue 18, point 5): ``quantize()`` takes the Keras 3 model itself.

For one builder per family of ``keras.applications`` (Keras 3; ``weights=None``, seeded, 10
logits, the input size of ``architectures.SIZES``), BatchNormalization statistics re-estimated on
the calibration inputs (as ``architectures.py`` does: random-weight models with the initial
statistics are degenerate, e.g. MobileNet's logits fall to 1e-21), then
``quantize(keras3_model, samples=...)`` at 8/8 (64 calibration, 32 held-out uniform inputs;
integer pixels in [0, 255] for a model that starts with a Rescaling or Normalization), and:

* ``integer``: no float island (every layer before the output head is quantized);
* ``sqnr_db``, ``argmax_agreement`` and ``correlation`` of the quantized logits against the
  Keras 3 model's (random weights: see ``architectures._fidelity``);
* the exact ONNX export (``architectures._onnx_exact``): onnxruntime's integers equal the
  quantized model's bit for bit;
* ``quantize_s`` (the conversion at the door included).

Usage::

    python benchmarks/keras3_applications.py                   # -> keras3_applications.json
    python benchmarks/keras3_applications.py --only MobileNetV2 ResNet50 --output /tmp/k3.json
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import architectures  # noqa: E402

#: One builder per family that Keras 3's applications have (no RegNet, no ResNetRS there).
BUILDERS = ("ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0",
            "InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2", "MobileNetV3Small",
            "MobileNetV3Large", "NASNetMobile", "ResNet50", "ResNet50V2", "VGG16", "Xception")


def measure(name, seed=0, calibration=architectures.CALIBRATION,
            held_out=architectures.HELD_OUT, onnx=True):
    """Quantizes the Keras 3 builder ``name`` and measures it (one row)."""
    import keras
    import numpy as np

    from quantizeml.models import float_islands, quantize
    size = architectures.SIZES[name]
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(**architectures._kwargs(name, size))
    rng = np.random.default_rng(seed)
    shape = (calibration + held_out, size, size, 3)
    raw = any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
              for layer in model.layers[:4])
    x = (np.floor(rng.uniform(0, 256, shape)) if raw else rng.uniform(-1, 1, shape))
    x = x.astype(np.float32)
    x_calib, x_eval = x[:calibration], x[calibration:]
    architectures._reestimate_batchnorm(model, x_calib, [
        layer for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)])
    y = np.asarray(model(x_eval, training=False))
    row = {"name": name, "input_size": size, "keras": keras.__version__,
           "float_layers_total": len(model.layers)}
    start = time.perf_counter()
    try:
        qmodel = quantize(model, samples=x_calib, batch_size=32)
    except Exception as e:  # noqa: BLE001 - the benchmark records why a model fails
        row["error"] = f"{type(e).__name__}: {str(e).strip()[:600]}"
        return row
    row["quantize_s"] = round(time.perf_counter() - start, 2)
    yq = np.asarray(qmodel(x_eval))
    fidelity = architectures._fidelity(y, yq)
    row.update({"float_islands": float_islands(qmodel),
                "integer": not float_islands(qmodel),
                "sqnr_db": round(fidelity["sqnr_db"], 2),
                "argmax_agreement": fidelity["argmax_agreement"],
                "correlation": round(fidelity["correlation"], 3)})
    if onnx:
        row.update(architectures._onnx_exact(qmodel, x_eval, yq))
    return row


def markdown(rows):
    lines = ["| builder (input) | quantize() s | integer | SQNR dB | argmax agree | "
             "ONNX bit-exact (nodes) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} ({r['input_size']}) | fails: {r['error'][:100]} | "
                         "| | | |")
            continue
        onnx = ("-" if "onnx_bit_exact" not in r and "onnx_error" not in r else
                f"fails: {r['onnx_error'][:60]}" if "onnx_error" in r else
                f"{'yes' if r['onnx_bit_exact'] else 'NO'} ({r['onnx_nodes']})")
        lines.append(f"| {r['name']} ({r['input_size']}) | {r['quantize_s']:.1f} | "
                     f"{'yes' if r['integer'] else 'no'} | {r['sqnr_db']:.1f} | "
                     f"{r['argmax_agreement']:.2f} | {onnx} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=BUILDERS, metavar="NAME")
    parser.add_argument("--no-onnx", action="store_true", help="skip the exact ONNX export")
    parser.add_argument("--output", default=os.path.join(HERE, "keras3_applications.json"))
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or BUILDERS:
        rows.append(measure(name, onnx=not args.no_onnx))
        r = rows[-1]
        print(f"{name}: " + (r["error"][:120] if "error" in r else
                             f"{r['sqnr_db']:.1f} dB, integer {r['integer']}, "
                             f"ONNX exact {r.get('onnx_bit_exact')}"),
              file=sys.stderr, flush=True)
        table = markdown(rows)
        with open(args.output, "w") as f:
            json.dump({"command": "python3 benchmarks/keras3_applications.py" + (
                f" --only {' '.join(args.only)}" if args.only else ""), "rows": rows,
                "markdown": table}, f, indent=1)
    print(table)
    return rows


if __name__ == "__main__":
    main()
