"""Random small CNNs/MLPs for the fuzz tests (a plain description -> a tf_keras model)."""
import numpy as np
import tf_keras as keras

CNN_KINDS = ("conv", "depthwise", "dense_1x1", "relu", "batchnorm", "maxpool", "add")
MLP_KINDS = ("dense", "relu", "batchnorm", "add")


def build(spec):
    """Builds a model from a spec dict: ``cnn`` (bool), ``size`` (spatial size or features),
    ``channels``, ``blocks`` (list of (kind, width)), ``head`` ("gap" or "flatten"),
    ``hidden`` (0 or units of a Dense + ReLU before the final Dense), ``outputs``, ``seed``.

    Kernels are drawn with a fixed seed; BatchNormalization statistics are random, so that
    folding does something.
    """
    rng = np.random.default_rng(spec["seed"])
    if spec["cnn"]:
        inputs = keras.Input((spec["size"], spec["size"], spec["channels"]), name="input")
    else:
        inputs = keras.Input((spec["size"],), name="input")
    x = inputs
    for i, (kind, width) in enumerate(spec["blocks"]):
        name = f"{kind}_{i}"
        if kind == "conv":
            x = keras.layers.Conv2D(width, 3, padding="same", name=name)(x)
        elif kind == "dense_1x1":
            x = keras.layers.Dense(width, name=name)(x)  # Dense on the channels of a 4D map
        elif kind == "depthwise":
            x = keras.layers.DepthwiseConv2D(3, padding="same", name=name)(x)
        elif kind == "dense":
            x = keras.layers.Dense(width, name=name)(x)
        elif kind == "relu":
            x = keras.layers.ReLU(name=name)(x)
        elif kind == "batchnorm":
            x = keras.layers.BatchNormalization(name=name)(x)
        elif kind == "maxpool":
            if x.shape[1] >= 2:
                x = keras.layers.MaxPooling2D(2, name=name)(x)
        elif kind == "add":
            layer = keras.layers.Conv2D(x.shape[-1], 1, name=f"{name}_branch") if spec["cnn"] \
                else keras.layers.Dense(x.shape[-1], name=f"{name}_branch")
            x = keras.layers.Add(name=name)([x, layer(x)])
    if spec["cnn"]:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x) if spec["head"] == "gap" \
            else keras.layers.Flatten(name="flatten")(x)
    if spec["hidden"]:
        x = keras.layers.Dense(spec["hidden"], name="hidden")(x)
        x = keras.layers.ReLU(name="hidden_relu")(x)
    outputs = keras.layers.Dense(spec["outputs"], name="logits")(x)
    model = keras.Model(inputs, outputs, name="fuzz")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])
        elif layer.weights:
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            layer.set_weights([rng.normal(0, np.sqrt(2.0 / np.prod(
                w.shape[:2] if depthwise else w.shape[:-1])), w.shape)
                               if w.ndim > 1 else rng.normal(0, 0.1, w.shape)
                               for w in layer.get_weights()])
    return model


def samples(model, n, seed):
    shape = (n,) + tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)
