"""Calibrates a digits-size model (8x8x1) on a streamed tf.data.Dataset of N samples and prints
its peak RSS (run by test_scale.py in subprocesses): ``python scale_script.py N [--list]``
(``--list`` materialises the batches first, as calibrate did before streaming)."""
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from quantizeml.models import calibrate, quantize  # noqa: E402
from quantizeml.models.samples import iterate_batches  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(num_samples, materialise=False, batch_size=256):
    inputs = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)
    qmodel = quantize(model, samples=np.random.default_rng(0).uniform(
        0, 1, (64, 8, 8, 1)).astype(np.float32))
    dataset = tf.data.Dataset.range(num_samples).map(
        lambda i: tf.random.stateless_uniform((8, 8, 1), seed=tf.stack([i, 0])))
    # warm-up on a few batches so that tracing and allocator growth are not counted
    calibrate(model, qmodel, samples=dataset, num_samples=4 * batch_size,
              batch_size=batch_size)
    before = peak_rss_mb()
    start = time.time()
    if materialise:
        batches = list(iterate_batches(model, dataset, num_samples, batch_size))
        calibrate(model, qmodel, batches=batches)
    else:
        calibrate(model, qmodel, samples=dataset, num_samples=num_samples,
                  batch_size=batch_size)
    print(f"RSS {num_samples} {before:.1f} {peak_rss_mb():.1f} {time.time() - start:.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), "--list" in sys.argv)
