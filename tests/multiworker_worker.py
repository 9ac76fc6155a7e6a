"""One worker of the MultiWorkerMirroredStrategy QAT run of tests/test_multiworker.py.

    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}' \
        python tests/multiworker_worker.py WORKDIR

WORKDIR holds ``float.h5`` (the float digits CNN) and ``data.npz`` (``x``, ``y``: training
samples, also the calibration samples; ``x_fixed``: inputs for the reload check), both written
by the test. The worker sanitizes and quantizes the float model inside the strategy scope,
fine-tunes it for one epoch on its shard of the data and writes ``weights_<index>.npz``
(final weights and loss). Worker 0 also saves ``qmodel.h5`` and ``outputs_0.npy`` (the
trained model's outputs on ``x_fixed``).

:func:`finetune` is the recipe of the README ("Distributed training and calibration"); the
test calls it in its own process with the default strategy for the single-process reference.
"""
import json
import os
import sys

GLOBAL_BATCH = 32
EPOCHS = 1


def finetune(strategy, workdir):
    """Sanitizes, quantizes (inside ``strategy.scope()``) and fine-tunes the float model.

    Args:
        strategy (tf.distribute.Strategy): the strategy to train under.
        workdir (str): the directory with ``float.h5`` and ``data.npz``.

    Returns:
        tuple: the trained quantized model and its loss per epoch.
    """
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from quantizeml.models import QuantizationParams, quantize
    from quantizeml.models.transforms import sanitize

    keras.utils.set_random_seed(0)
    data = np.load(os.path.join(workdir, "data.npz"))
    x, y = data["x"], data["y"]
    model = sanitize(keras.models.load_model(os.path.join(workdir, "float.h5"), compile=False))
    with strategy.scope():
        # quantize() is deterministic: every worker calibrates the same ranges
        qmodel = quantize(model, qparams=QuantizationParams(), samples=x)
        qmodel.compile(keras.optimizers.Adam(1e-4),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
    history = qmodel.fit(train_ds, epochs=EPOCHS, verbose=0)
    return qmodel, history.history["loss"]


def weights_dict(model):
    """The model's variables by ``<index>_<name>`` (names are not unique across layers)."""
    return {f"{i:03d}_{v.name}": v.numpy() for i, v in enumerate(model.weights)}


def main(workdir):
    import tensorflow as tf

    # Created first, before any other TensorFlow op, as MultiWorkerMirroredStrategy requires.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import numpy as np

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    qmodel, loss = finetune(strategy, workdir)
    np.savez(os.path.join(workdir, f"weights_{index}.npz"), loss=np.array(loss),
             replicas=np.array(strategy.num_replicas_in_sync), **weights_dict(qmodel))
    if index == 0:
        qmodel.save(os.path.join(workdir, "qmodel.h5"))
        x_fixed = np.load(os.path.join(workdir, "data.npz"))["x_fixed"]
        np.save(os.path.join(workdir, "outputs_0.npy"), qmodel(x_fixed, training=False).numpy())


if __name__ == "__main__":
    main(sys.argv[1])
