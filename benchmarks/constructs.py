"""Hand-written constructs (issue 18: the models users write, beyond the applications).

Each construct is a small functional model built the way users write it (TF functions called
on Keras tensors, Keras layers, random weights), quantized by ``quantize(model, samples)`` at
each configuration, then measured:

* ``integer``: no float island (every layer before a float output head is quantized);
* ``sqnr_db`` of the quantized outputs against the float model on the calibration inputs;
* ``onnx_bit_exact``: ``export(qmodel)`` run in onnxruntime equals the Keras quantized model
  bit for bit (a float output head, e.g. a final softmax, is compared within 1e-6);
* ``quantize_s``.

A construct that stops quantize() records the error instead.

Usage::

    python benchmarks/constructs.py                   # all constructs -> constructs.json
    python benchmarks/constructs.py --only cbam espcn --configs w8a8
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf_keras as keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from quantizeml.models import QuantizationParams, float_islands, quantize  # noqa: E402
from quantizeml.onnx_support import export  # noqa: E402

L = keras.layers
HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "w8a8": QuantizationParams(),
    "w4a4": QuantizationParams(input_weight_bits=8, weight_bits=4, activation_bits=4,
                               output_bits=4),
    "w8a8_per_tensor": QuantizationParams(per_tensor_activations=True),
}


def _image(block, shape=(16, 16, 3)):
    """Input -> Conv2D + ReLU -> ``block`` -> a 1x1 Conv2D head (Dense on rank 2), flattened."""
    def build():
        inputs = keras.Input(shape, name="inp")
        x = block(L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs))
        x = L.Conv2D(4, 1, name="head")(x) if len(x.shape) == 4 else L.Dense(4, name="head")(x)
        return keras.Model(inputs, L.Flatten(name="flat")(x) if len(x.shape) > 2 else x)
    return build


def _sequence(block, shape=(16, 4)):
    """Input -> Conv1D + ReLU -> ``block`` -> Dense head of the flattened features."""
    def build():
        inputs = keras.Input(shape, name="inp")
        x = block(L.Conv1D(8, 3, padding="same", activation="relu", name="stem")(inputs))
        return keras.Model(inputs, L.Dense(4, name="head")(L.Flatten(name="flat")(x)))
    return build


def _cbam(x):
    channels = x.shape[-1]
    avg = L.GlobalAveragePooling2D(keepdims=True)(x)
    peak = L.GlobalMaxPooling2D(keepdims=True)(x)
    hidden, out = L.Dense(4, activation="relu"), L.Dense(channels)
    gate = L.Activation("sigmoid")(L.Add()([out(hidden(avg)), out(hidden(peak))]))
    x = L.Multiply()([x, gate])
    pooled = L.Concatenate()([tf.reduce_mean(x, axis=-1, keepdims=True),
                              tf.reduce_max(x, axis=-1, keepdims=True)])
    return L.Multiply()([x, L.Conv2D(1, 7, padding="same", activation="sigmoid")(pooled)])


def _unet(x):
    down = L.Conv2D(16, 3, padding="same", activation="relu")(L.MaxPooling2D()(x))
    up = L.UpSampling2D(interpolation="bilinear")(down)
    transposed = L.Conv2DTranspose(8, 3, strides=2, padding="same")(down)
    return L.Concatenate()([x, up, transposed])


def _aspp(x):
    """DeepLab's pooling branch: a global average resized back with tf.image.resize."""
    dilated = L.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu")(x)
    pooled = L.Conv2D(8, 1, activation="relu")(L.GlobalAveragePooling2D(keepdims=True)(x))
    pooled = tf.image.resize(pooled, x.shape[1:3])
    return L.Conv2D(8, 1)(L.Concatenate()([dilated, pooled]))


def _siamese():
    base_in = keras.Input((8, 8, 1))
    y = L.Conv2D(8, 3, activation="relu")(base_in)
    base = keras.Model(base_in, L.Dense(6)(L.GlobalAveragePooling2D()(y)), name="base")
    left, right = keras.Input((8, 8, 1), name="left"), keras.Input((8, 8, 1), name="right")
    distance = tf.abs(base(left) - base(right))
    return keras.Model([left, right], L.Dense(1, activation="sigmoid")(distance))


def _encoder():
    """A pre-norm transformer encoder block (MultiHeadAttention, gelu MLP)."""
    inputs = keras.Input((8, 16), name="inp")
    x = L.LayerNormalization()(inputs)
    x = L.Add()([inputs, L.MultiHeadAttention(2, 8)(x, x)])
    y = L.Dense(16)(L.Dense(32, activation="gelu")(L.LayerNormalization()(x)))
    x = L.Add()([x, y])
    return keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling1D()(x)))


#: construct name -> builder of the float model.
CONSTRUCTS = {
    "resizing_any_size": _image(lambda x: L.Conv2D(8, 3, padding="same")(
        L.Resizing(11, 7)(x))),
    "tf_image_resize": _image(lambda x: tf.image.resize(L.Conv2D(8, 3)(x), (16, 16))),
    "group_normalization": _image(lambda x: L.Activation("swish")(
        L.GroupNormalization(4)(L.Conv2D(16, 3, padding="same")(x)))),
    "cbam": _image(_cbam),
    "unet_skip": _image(_unet),
    "aspp_pooling": _image(_aspp),
    "pixel_shuffle": _image(lambda x: tf.nn.depth_to_space(L.Conv2D(16, 3, padding="same")(x),
                                                           2)),
    "space_to_depth": _image(lambda x: tf.nn.space_to_depth(x, 2)),
    "expand_squeeze": _image(lambda x: tf.squeeze(tf.expand_dims(x, 3), 3)),
    "tensor_min_max": _image(lambda x: tf.maximum(tf.minimum(x, x * 0.5), x * 0.25)),
    "square_abs": _image(lambda x: L.Concatenate()([tf.square(x), tf.abs(
        x - L.Conv2D(8, 1)(x))])),
    "affine_offset": _image(lambda x: tf.abs(x * 2.0 - 1.0) * (1.0 - x)),
    "keras_attention": _sequence(lambda x: L.Attention(use_scale=True)([x, x])),
    # Bahdanau's additive attention: no quantized form yet (recorded failing)
    "additive_attention": _sequence(lambda x: L.AdditiveAttention()([x, x])),
    "repeat_vector": _sequence(lambda x: L.Concatenate()([
        x, L.RepeatVector(16)(L.GlobalAveragePooling1D()(x))])),
    "causal_tcn": _sequence(lambda x: L.Conv1D(8, 3, padding="causal", dilation_rate=2,
                                               activation="relu")(x)),
    "siamese_l1": _siamese,
    "transformer_encoder": _encoder,
}


def _samples(model, seed=0, n=32):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (n, *t.shape[1:])).astype(np.float32) for t in model.inputs]


def measure(name, config):
    """The figures of one construct at one configuration (a dict; ``error`` when quantize()
    or the export raises)."""
    keras.utils.set_random_seed(0)
    model = CONSTRUCTS[name]()
    x = _samples(model)
    feed = x if len(x) > 1 else x[0]
    row = {"construct": name, "config": config}
    start = time.perf_counter()
    try:
        qmodel = quantize(model, qparams=CONFIGS[config], samples=feed, batch_size=32)
    except Exception as e:  # noqa: BLE001 - the benchmark records why a construct fails
        row["error"] = f"{type(e).__name__}: {str(e).strip()[:400]}"
        return row
    row["quantize_s"] = round(time.perf_counter() - start, 2)
    y, yq = np.asarray(model(feed), np.float64), np.asarray(qmodel(feed), np.float64)
    noise = np.sum((y - yq) ** 2)
    row["sqnr_db"] = float("inf") if noise == 0 else float(10 * np.log10(np.sum(y**2) / noise))
    row["integer"] = not float_islands(qmodel)
    try:
        session = ort.InferenceSession(export(qmodel).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        out = session.run(None, {t.name: v for t, v in zip(session.get_inputs(), x)})[0]
        head = type(qmodel.layers[-1]).__name__ != "Dequantizer"
        row["onnx_bit_exact"] = bool(np.array_equal(out, yq.astype(np.float32))) or \
            (head and bool(np.allclose(out, yq, rtol=0, atol=1e-6)))
    except Exception as e:  # noqa: BLE001
        row["onnx_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    return row


def markdown(rows, configs):
    """One line per construct: SQNR per configuration (integer, ONNX bit-exact)."""
    lines = ["| construct | " + " | ".join(configs) + " |",
             "| --- |" + " --- |" * len(configs)]
    for name in dict.fromkeys(r["construct"] for r in rows):
        cells = []
        for config in configs:
            r = next(r for r in rows if r["construct"] == name and r["config"] == config)
            if "error" in r:
                cells.append("fails")
            else:
                flags = ("" if r["integer"] else ", float island") + \
                    ("" if r.get("onnx_bit_exact") else ", ONNX differs")
                cells.append(f"{r['sqnr_db']:.1f} dB{flags}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CONSTRUCTS), metavar="NAME")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--output", default=os.path.join(HERE, "constructs.json"))
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or list(CONSTRUCTS):
        for config in args.configs:
            row = measure(name, config)
            rows.append(row)
            print(f"{name} {config}: " + (row["error"][:120] if "error" in row else
                                          f"{row['sqnr_db']:.1f} dB, integer {row['integer']}, "
                                          f"ONNX exact {row.get('onnx_bit_exact')}"),
                  file=sys.stderr, flush=True)
    table = markdown(rows, args.configs)
    with open(args.output, "w") as f:
        json.dump({"command": "python3 benchmarks/constructs.py" + (
            f" --only {' '.join(args.only)}" if args.only else ""), "rows": rows,
            "markdown": table}, f, indent=1)
    print(table)
    return rows


if __name__ == "__main__":
    main()
