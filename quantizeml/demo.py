"""The end-to-end demo behind ``quantizeml demo``: digits CNN, 8/8 PTQ, 4/4 PTQ + QAT.

Progress goes to stderr (a line per stage, and a progress bar on a terminal or a line per
epoch elsewhere, see ``quantizeml.progress``); the results table goes to stdout.
"""
import json
import os
import sys
import time

import numpy as np
import tf_keras as keras

from .progress import ProgressBar

BATCH_SIZE = 32


def accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of a model returning logits (float or dequantized)."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def weight_sizes(model):
    """Bytes of a model's weights: float32, int8 and packed int4 storage of the kernels.

    Kernels (the quantized weights) take 1 byte (int8) or half a byte (int4, two per byte,
    see ``quantizeml.quantizers.pack_int4``) per value; everything else (biases, scales,
    normalization parameters) is counted as float32 in all three.
    """
    kernels = others = 0
    for v in model.trainable_weights:
        n = int(np.prod(v.shape))
        if "kernel" in v.name:
            kernels += n
        else:
            others += n
    return {"float32": 4 * (kernels + others), "int8": kernels + 4 * others,
            "int4_packed": (kernels + 1) // 2 + 4 * others}


class _FitProgress(keras.callbacks.Callback):
    """Reports ``fit()``: the bar advances per batch (terminal), or a line per epoch (pipes)."""

    def __init__(self, bar, epochs, log):
        super().__init__()
        self.bar, self.epochs, self.log = bar, epochs, log
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.bar.update(0, f"epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        self.bar.update(1, f"epoch {self.epoch + 1}/{self.epochs}"
                           + (f", loss {float(loss):.3f}" if loss is not None else ""))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self.bar.enabled:
            self.log(f"  epoch {epoch + 1}/{self.epochs}: loss {float(logs.get('loss', 0)):.4f}"
                     f", train accuracy {float(logs.get('accuracy', 0)):.4f}")


def run_demo(output="quantizeml_demo", epochs=10, qat_epochs=3, verbose=True, seed=0):
    """Trains, quantizes and saves the digits CNN; returns the results table (list of dicts).

    The float model is ``models.zoo.digits_cnn`` trained as ``models.zoo.train_digits_cnn``
    does (Adam 1e-3, batch size 32, seeded), here with a progress callback.

    Args:
        output (str, optional): folder for the models and q_configs.
        epochs (int, optional): float training epochs. Defaults to 10.
        qat_epochs (int, optional): QAT epochs of the 4/4-bit model. Defaults to 3.
        verbose (bool, optional): print progress (stderr) and the table (stdout). Defaults to
            True.
        seed (int, optional): random seed. Defaults to 0.

    Returns:
        list(dict): one row per model: ``model``, ``accuracy`` (on the test split),
        ``weights_bytes`` and ``storage`` (see :func:`weight_sizes`).
    """
    from .models import QuantizationParams, check_quantization, quantize
    from .models.transforms import sanitize
    from .models.zoo import digits_cnn, load_digits_data

    def log(msg):
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    def bar(total, label, tick=None):
        return ProgressBar(total, label, enabled=None if verbose else False, tick=tick)

    start = time.perf_counter()
    os.makedirs(output, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits_data()
    steps = int(np.ceil(len(x_train) / BATCH_SIZE))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    stage = time.perf_counter()
    log(f"[1/4] Training the float digits CNN on {len(x_train)} images ({epochs} epochs)...")
    keras.utils.set_random_seed(seed)
    model = digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    with bar(epochs * steps, "  training") as progress:
        model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=0,
                  callbacks=[_FitProgress(progress, epochs, log)])
    float_acc = accuracy(model, x_test, y_test)
    model.save(os.path.join(output, "float.h5"))
    log(f"  float model: test accuracy {float_acc:.4f} ({time.perf_counter() - stage:.0f} s)")
    float_model = sanitize(model)
    rows = [{"model": "float", "accuracy": float_acc, **_sizes(model, "float32")}]

    stage = time.perf_counter()
    log(f"[2/4] Quantizing at 8/8 bits (calibrated on the {len(x_train)} training images)...")
    with bar(1, "  calibrating", tick=0.5):
        q8 = quantize(float_model, qparams=QuantizationParams(), samples=x_train,
                      num_samples=len(x_train))
        rows.append({"model": "8/8 PTQ", "accuracy": accuracy(q8, x_test, y_test),
                     **_sizes(model, "int8")})
        _save(q8, "q8", output)
        issues = check_quantization(q8, samples=x_test[:64])
    for issue in issues:
        log(f"  check: {issue}")
    log(f"  8/8 model: test accuracy {rows[-1]['accuracy']:.4f} "
        f"({time.perf_counter() - stage:.0f} s)")

    stage = time.perf_counter()
    qparams4 = QuantizationParams(activation_bits=4, weight_bits=4, output_bits=4,
                                  input_weight_bits=4)
    log("[3/4] Quantizing at 4/4 bits...")
    with bar(1, "  calibrating", tick=0.5):
        q4 = quantize(float_model, qparams=qparams4, samples=x_train,
                      num_samples=len(x_train))
        rows.append({"model": "4/4 PTQ", "accuracy": accuracy(q4, x_test, y_test),
                     **_sizes(model, "int4_packed")})
    log(f"  4/4 model: test accuracy {rows[-1]['accuracy']:.4f} "
        f"({time.perf_counter() - stage:.0f} s)")

    stage = time.perf_counter()
    log(f"[4/4] Quantization-aware training of the 4/4 model ({qat_epochs} epochs)...")
    keras.utils.set_random_seed(seed)
    # a cosine-decayed learning rate: the quantized model starts close to its optimum
    q4.compile(optimizer=keras.optimizers.Adam(
                   keras.optimizers.schedules.CosineDecay(1e-4, max(qat_epochs * steps, 1))),
               loss=loss, metrics=["accuracy"])
    with bar(qat_epochs * steps, "  QAT") as progress:
        q4.fit(x_train, y_train, epochs=qat_epochs, batch_size=BATCH_SIZE, verbose=0,
               callbacks=[_FitProgress(progress, qat_epochs, log)])
    rows.append({"model": "4/4 QAT", "accuracy": accuracy(q4, x_test, y_test),
                 **_sizes(model, "int4_packed")})
    _save(q4, "q4_qat", output)
    log(f"  4/4 QAT model: test accuracy {rows[-1]['accuracy']:.4f} "
        f"({time.perf_counter() - stage:.0f} s)")

    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    if verbose:
        print(format_table(rows, num_test=len(x_test), num_train=len(x_train),
                           qat_epochs=qat_epochs))
        print(f"\nModels and q_configs written to {output}/ "
              f"({time.perf_counter() - start:.0f} s)")
    return rows


def _sizes(model, storage):
    return {"weights_bytes": weight_sizes(model)[storage], "storage": storage}


def _save(qmodel, name, output):
    from .models import dump_config
    qmodel.save(os.path.join(output, f"{name}.h5"))
    with open(os.path.join(output, f"{name}_q_config.json"), "w") as f:
        json.dump(dump_config(qmodel), f, indent=2)


_STORAGE = {"float32": "float32, 4 bytes per weight",
            "int8": "int8 kernels, 1 byte per weight",
            "int4_packed": "int4 kernels, 2 weights per byte"}


def format_table(rows, num_test=540, num_train=1257, qat_epochs=3):
    """Formats the demo results as a text table, followed by what its rows and columns mean.

    Args:
        rows (list(dict)): the rows returned by :func:`run_demo`.
        num_test (int, optional): test images the accuracy is measured on. Defaults to 540.
        num_train (int, optional): training (and calibration) images. Defaults to 1257.
        qat_epochs (int, optional): QAT epochs of the "4/4 QAT" row. Defaults to 3.

    Returns:
        str: the table and its legend.
    """
    lines = [f"Results on the {num_test} test digits (8x8 images that no model saw in training):",
             "",
             f"{'model':<10} {'accuracy':>9} {'weights':>10}   weights stored as",
             "-" * 68]
    for r in rows:
        storage = _STORAGE.get(r["storage"], r["storage"])
        lines.append(f"{r['model']:<10} {r['accuracy']:>9.4f} {r['weights_bytes']:>8} B   "
                     f"{storage}")
    lines += [
        "",
        "model     float: the trained float32 CNN; W/A PTQ: post-training quantization to",
        "          W-bit weights and A-bit activations, calibrated on the "
        f"{num_train} training images;",
        f"          4/4 QAT: the 4/4 model after {qat_epochs} epochs of quantization-aware "
        "training.",
        f"accuracy  top-1 accuracy on the {num_test} test digits (1.0 = all correct).",
        "weights   bytes of the weights: kernels at the model's weight bits, biases and scales",
        "          as float32 (the integer files: quantizeml.models.save_integer_weights).",
    ]
    return "\n".join(lines)
