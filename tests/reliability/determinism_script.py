"""Quantizes a fixed small CNN and prints the SHA-256 of its weights and outputs (run by
test_determinism.py in-process and in subprocesses)."""
import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402


def build(seed=0):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_1")(x)
    x = keras.layers.ReLU(name="relu_1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw_2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="det")
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = [rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, .2, w.shape)
                       for i, w in enumerate(weights)]
        else:
            weights = [rng.normal(0, 0.3, w.shape) for w in weights]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return model


def digest(seed=0):
    from quantizeml.models import QuantizationParams, quantize
    from quantizeml.models.transforms import sanitize
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = sanitize(build(seed))
    x = np.random.default_rng(seed + 1).uniform(0, 1, (96, 8, 8, 1)).astype(np.float32)
    qmodel = quantize(model, qparams=QuantizationParams(weight_bits=4, activation_bits=4),
                      samples=x, batch_size=32)
    h = hashlib.sha256()
    for v in sorted(qmodel.variables, key=lambda v: v.name):
        h.update(v.name.encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    h.update(np.ascontiguousarray(qmodel(x).numpy()).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print("DIGEST", digest())
