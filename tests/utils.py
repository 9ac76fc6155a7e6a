"""Helpers shared by the layer and model tests (STYLE.md, Tests)."""
import inspect
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras as keras

from quantizeml.tensors import QTensor


def to_numpy(x):
    """Float numpy value of a tensor or QTensor (nested structures too)."""
    if isinstance(x, QTensor):
        return x.to_float().numpy()
    if isinstance(x, (list, tuple)):
        return [to_numpy(v) for v in x]
    return np.asarray(x)


def check_config_roundtrip(obj):
    """get_config -> from_config -> get_config gives the same config, JSON-serializable, and
    Keras (de)serialization by registered name revives the same class."""
    import json
    config = obj.get_config()
    json.dumps(config)  # values must be JSON-native
    clone = type(obj).from_config(config)
    assert clone.get_config() == config, (clone.get_config(), config)
    serialized = keras.saving.serialize_keras_object(obj)
    assert serialized["registered_name"].startswith("quantizeml>"), serialized
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(obj)
    return clone


def check_save_load(model, inputs, formats=("h5", "tf")):
    """Saves and reloads a model in each format; asserts bit-identical outputs.

    The reload uses plain ``keras.models.load_model`` with no custom_objects.
    """
    expected = to_numpy(model(inputs))
    for fmt in formats:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.h5" if fmt == "h5" else "model")
            model.save(path, save_format=fmt)
            loaded = keras.models.load_model(path, compile=False)
            got = to_numpy(loaded(inputs))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected),
                                          err_msg=f"format {fmt}")
    return True


def check_signature_parity(quantized_cls, float_cls, extra=("quant_config",)):
    """The quantized twin keeps the float layer's parameter names, order and defaults; it may
    add the parameters in ``extra``."""
    def params(cls):
        sig = inspect.signature(cls.__init__)
        return [(p.name, p.default) for p in sig.parameters.values()
                if p.name not in ("self", "kwargs") and p.kind != p.VAR_KEYWORD]
    q = [p for p in params(quantized_cls) if p[0] not in extra]
    f = params(float_cls)
    assert q == f, f"{quantized_cls.__name__} {q} != {float_cls.__name__} {f}"
    return True


def check_gradients_reach(model, inputs, variables=None):
    """A gradient step's loss has non-zero gradients for every trainable float variable."""
    variables = model.trainable_variables if variables is None else variables
    with tf.GradientTape() as tape:
        out = model(inputs, training=True)
        out = out.to_float() if isinstance(out, QTensor) else out
        loss = tf.reduce_sum(tf.square(out))
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, f"no gradient for {v.name}"
        assert float(tf.reduce_sum(tf.abs(g))) > 0, f"zero gradient for {v.name}"
    return grads


def train_step_gradients(model, x):
    """``sum(model(x, training=True)^2)`` and its gradients for ``[x, *trainable variables]``,
    from an eager call run op by op and from a traced train step: ``(eager, graph, step)``
    with ``eager`` and ``graph`` as ``(loss, gradients)`` and ``step`` the tf.function."""
    from quantizeml.layers import eager_layer_calls

    def loss_and_gradients(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(model(t, training=True) ** 2)
        return loss, tape.gradient(loss, [t, *model.trainable_variables])

    with eager_layer_calls():
        eager = loss_and_gradients(x)
    step = tf.function(loss_and_gradients)
    return eager, step(x), step
