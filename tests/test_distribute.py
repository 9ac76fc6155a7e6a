"""tf.distribute: QAT fine-tuning of a quantized model under MirroredStrategy (2 logical CPU
devices) gives the weights of one device with the same global batch, and quantize() (with its
calibration) works inside a strategy scope.

The logical devices must be configured before TensorFlow initialises its devices, which the
test session has already done: the training runs in a subprocess (SCRIPT).
"""
import json
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import tf_keras as keras
from quantizeml.models import QuantizationParams, quantize, check_quantization

GLOBAL_BATCH, STEPS = 16, 8


def float_model():
    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 6, 1), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(8, name="dense")(x)
    x = keras.layers.ReLU(name="relu_2")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    return model


rng = np.random.default_rng(1)
x = rng.uniform(0, 1, (GLOBAL_BATCH * STEPS, 6, 6, 1)).astype(np.float32)
y = rng.normal(0, 1, (GLOBAL_BATCH * STEPS, 3)).astype(np.float32)


def finetune(strategy):
    keras.backend.clear_session()
    model = float_model()
    with strategy.scope():
        # calibration (quantize) inside the strategy scope: the quantized model's variables
        # are distributed variables
        qmodel = quantize(model, qparams=QuantizationParams(weight_bits=8, activation_bits=8),
                          samples=x[:64])
        kinds = sorted({type(v).__name__ for v in qmodel.variables})
        qmodel.compile(keras.optimizers.SGD(0.05), "mse")
    before = qmodel(x[:32]).numpy()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    history = qmodel.fit(dataset, epochs=2, verbose=0).history["loss"]
    weights = {v.name: v.numpy().tolist() for v in qmodel.trainable_variables}
    ranges = {v.name: v.numpy().tolist() for v in qmodel.non_trainable_variables}
    return {"replicas": strategy.num_replicas_in_sync, "loss": history, "weights": weights,
            "ranges": ranges, "before": before.tolist(), "variable_types": kinds,
            "finite": bool(np.all(np.isfinite(qmodel(x).numpy())))}


one = finetune(tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored = finetune(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print("RESULT " + json.dumps({"one": one, "mirrored": mirrored}))
'''


@pytest.fixture(scope="module")
def results():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")][0]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_calibration_inside_strategy_scope(results):
    import numpy as np
    one, mirrored = results["one"], results["mirrored"]
    assert mirrored["replicas"] == 2
    assert any("Mirrored" in t for t in mirrored["variable_types"])
    # same calibration, hence the same quantized model before training
    np.testing.assert_allclose(mirrored["before"], one["before"], atol=1e-6)
    assert mirrored["ranges"].keys() == one["ranges"].keys()


@pytest.mark.slow
def test_mirrored_qat_matches_one_device(results):
    import numpy as np
    one, mirrored = results["one"], results["mirrored"]
    assert one["finite"] and mirrored["finite"]
    assert mirrored["loss"][-1] < mirrored["loss"][0]
    np.testing.assert_allclose(mirrored["loss"], one["loss"], rtol=1e-4)
    assert mirrored["weights"].keys() == one["weights"].keys()
    for name in one["weights"]:
        np.testing.assert_allclose(mirrored["weights"][name], one["weights"][name],
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    for name in one["ranges"]:
        np.testing.assert_allclose(mirrored["ranges"][name], one["ranges"][name],
                                   rtol=1e-4, atol=1e-5, err_msg=name)
