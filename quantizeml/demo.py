"""The end-to-end demo behind ``quantizeml demo``: digits CNN, 8/8 PTQ, 4/4 PTQ + QAT."""
import json
import os
import time

import numpy as np
import tf_keras as keras


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


def run_demo(output="quantizeml_demo", epochs=10, qat_epochs=3, verbose=True, seed=0):
    """Trains, quantizes and saves the digits CNN; returns the results table (list of dicts).

    Args:
        output (str, optional): folder for the models and q_configs.
        epochs (int, optional): float training epochs. Defaults to 10.
        qat_epochs (int, optional): QAT epochs of the 4/4-bit model. Defaults to 3.
        verbose (bool, optional): print progress and the table. Defaults to True.
        seed (int, optional): random seed. Defaults to 0.
    """
    from .models import QuantizationParams, check_quantization, quantize
    from .models.transforms import sanitize
    from .models.zoo import load_digits_data, train_digits_cnn

    def log(msg):
        if verbose:
            print(msg, flush=True)

    start = time.perf_counter()
    os.makedirs(output, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits_data()
    log(f"Training the digits CNN ({epochs} epochs)...")
    model, float_acc = train_digits_cnn(epochs=epochs, seed=seed)
    model.save(os.path.join(output, "float.h5"))
    float_model = sanitize(model)
    rows = [{"model": "float", "accuracy": float_acc, **_sizes(model, "float32")}]

    log("Quantizing at 8/8 bits (calibrated on the train split)...")
    q8 = quantize(float_model, qparams=QuantizationParams(), samples=x_train,
                  num_samples=len(x_train))
    rows.append({"model": "8/8 PTQ", "accuracy": accuracy(q8, x_test, y_test),
                 **_sizes(model, "int8")})
    _save(q8, "q8", output)
    for issue in check_quantization(q8, samples=x_test[:64]):
        log(f"  check: {issue}")

    qparams4 = QuantizationParams(activation_bits=4, weight_bits=4, output_bits=4,
                                  input_weight_bits=4)
    log("Quantizing at 4/4 bits...")
    q4 = quantize(float_model, qparams=qparams4, samples=x_train, num_samples=len(x_train))
    rows.append({"model": "4/4 PTQ", "accuracy": accuracy(q4, x_test, y_test),
                 **_sizes(model, "int4_packed")})
    log(f"QAT fine-tuning at 4/4 bits ({qat_epochs} epochs)...")
    keras.utils.set_random_seed(seed)
    # a cosine-decayed learning rate: the quantized model starts close to its optimum
    steps = qat_epochs * int(np.ceil(len(x_train) / 32))
    q4.compile(optimizer=keras.optimizers.Adam(
                   keras.optimizers.schedules.CosineDecay(1e-4, max(steps, 1))),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=["accuracy"])
    q4.fit(x_train, y_train, epochs=qat_epochs, batch_size=32, verbose=0)
    rows.append({"model": "4/4 QAT", "accuracy": accuracy(q4, x_test, y_test),
                 **_sizes(model, "int4_packed")})
    _save(q4, "q4_qat", output)

    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    if verbose:
        print(format_table(rows))
        print(f"Models and q_configs written to {output}/ "
              f"({time.perf_counter() - start:.0f} s)")
    return rows


def _sizes(model, storage):
    return {"weights_bytes": weight_sizes(model)[storage], "storage": storage}


def _save(qmodel, name, output):
    from .models import dump_config
    qmodel.save(os.path.join(output, f"{name}.h5"))
    with open(os.path.join(output, f"{name}_q_config.json"), "w") as f:
        json.dump(dump_config(qmodel), f, indent=2)


def format_table(rows):
    """Formats the demo results as a text table."""
    lines = [f"{'model':<10} {'accuracy':>9} {'weights':>10} storage",
             "-" * 44]
    for r in rows:
        lines.append(f"{r['model']:<10} {r['accuracy']:>9.4f} {r['weights_bytes']:>8} B "
                     f"{r['storage']}")
    return "\n".join(lines)
