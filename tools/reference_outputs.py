"""Saves the quantized outputs of reference models, to check that a refactoring changes no bit.

Usage (run it at two commits, then compare):

    python3 tools/reference_outputs.py save /tmp/before.npz      # at the old commit
    python3 tools/reference_outputs.py save /tmp/after.npz       # at the new commit
    python3 tools/reference_outputs.py compare /tmp/before.npz /tmp/after.npz

The models: the digits CNN (untrained, seeded; raw and sanitized, at 8/8 and 4/4 with per-tensor
activations), the digits ViT (8/8) and MobileNet(0.25, 96) (weights=None, seeded, 8/8). Each is
quantized on fixed samples and run on fixed inputs (eager call and ``predict``); the file holds
the dequantized outputs and the dumped q_config of each.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402


def _models():
    from quantizeml.models.zoo import digits_cnn
    from quantizeml.models.zoo_vit import digits_vit
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    cnn = digits_cnn()
    x_cnn = rng.uniform(0, 16, size=(64,) + tuple(cnn.input_shape[1:])).astype(np.float32)
    yield "cnn", cnn, x_cnn
    keras.utils.set_random_seed(1)
    vit = digits_vit()
    x_vit = rng.uniform(0, 16, size=(32,) + tuple(vit.input_shape[1:])).astype(np.float32)
    yield "vit", vit, x_vit
    keras.utils.set_random_seed(2)
    mobilenet = keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, weights=None)
    x_mn = rng.uniform(-1, 1, size=(32, 96, 96, 3)).astype(np.float32)
    yield "mobilenet", mobilenet, x_mn


def save(path):
    from quantizeml.models import QuantizationParams, dump_config, quantize
    from quantizeml.models.transforms import sanitize
    out = {}
    for name, model, x in _models():
        variants = [("8", model, QuantizationParams())]
        if name == "cnn":
            variants += [
                ("sanitized8", sanitize(model), QuantizationParams()),
                ("sanitized4", sanitize(model), QuantizationParams(
                    input_weight_bits=4, weight_bits=4, activation_bits=4, output_bits=4,
                    per_tensor_activations=True))]
        if name == "mobilenet":
            variants = [("sanitized8", sanitize(model), QuantizationParams())]
        for tag, m, qparams in variants:
            q = quantize(m, qparams=qparams, samples=x, batch_size=16)
            out[f"{name}_{tag}_call"] = np.asarray(q(x[:8]))
            out[f"{name}_{tag}_predict"] = q.predict(x, batch_size=16, verbose=0)
            out[f"{name}_{tag}_config"] = np.asarray(json.dumps(dump_config(q), sort_keys=True))
            print(f"{name}_{tag}: done", flush=True)
    np.savez(path, **out)


def compare(a, b):
    a, b = np.load(a), np.load(b)
    bad = 0
    for key in sorted(set(a.files) | set(b.files)):
        if key not in a.files or key not in b.files:
            print(f"{key}: missing in one file")
            bad += 1
        elif a[key].dtype.kind == "U":
            same = str(a[key]) == str(b[key])
            print(f"{key}: {'identical' if same else 'DIFFERENT'}")
            bad += not same
        else:
            same = a[key].shape == b[key].shape and np.array_equal(a[key], b[key])
            print(f"{key}: {'bit-identical' if same else 'DIFFERENT'} {a[key].shape}")
            bad += not same
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save(sys.argv[2])
    else:
        sys.exit(1 if compare(sys.argv[2], sys.argv[3]) else 0)
