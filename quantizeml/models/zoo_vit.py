"""A tiny Vision Transformer for scikit-learn's 8x8 digits: the transformer reference model.

It exercises every transformer layer of quantizeml (ClassToken, AddPositionEmbs,
LayerMadNormalization, Attention, ExtractToken) and trains in seconds on a CPU. Both attention
softmaxes quantize with ``quantize()`` defaults: QuantizedAttention has an integer shiftmax and
a rounded softmax (see its docstring).

The default width (64-channel tokens, 4 heads of 16 channels, 128-unit MLPs) is what makes the
model robust at 4 bits: with 32-channel tokens, 4/4-bit QAT lost 3 to 6 points against the
float model, against about 1 point at 64 channels (seeded runs, digits test split).
"""
import numpy as np
import tf_keras as keras

from ..layers.attention import Attention
from ..layers.layer_norm import LayerMadNormalization
from ..layers.tokens import AddPositionEmbs, ClassToken, ExtractToken
from .zoo import load_digits_data

#: The number of training samples per batch of :func:`train_digits_vit`.
BATCH_SIZE = 32

__all__ = ["digits_vit", "train_digits_vit"]


def _block(x, index, hidden_size, num_heads, mlp_dim, softmax):
    """One encoder block: pre-norm attention and MLP, each with a skip connection."""
    name = f"block_{index}"
    y = LayerMadNormalization(name=f"{name}/norm_1")(x)
    query = keras.layers.Dense(hidden_size, name=f"{name}/query")(y)
    key = keras.layers.Dense(hidden_size, name=f"{name}/key")(y)
    value = keras.layers.Dense(hidden_size, name=f"{name}/value")(y)
    y = Attention(num_heads, softmax=softmax, name=f"{name}/attention")([query, key, value])
    y = keras.layers.Dense(hidden_size, name=f"{name}/attention_output")(y)
    x = keras.layers.Add(name=f"{name}/add_1")([x, y])
    y = LayerMadNormalization(name=f"{name}/norm_2")(x)
    y = keras.layers.Dense(mlp_dim, name=f"{name}/mlp_1")(y)
    y = keras.layers.ReLU(name=f"{name}/relu")(y)
    y = keras.layers.Dense(hidden_size, name=f"{name}/mlp_2")(y)
    return keras.layers.Add(name=f"{name}/add_2")([x, y])


def digits_vit(softmax="softmax", hidden_size=64, num_heads=4, mlp_dim=128, num_blocks=2):
    """The untrained tiny ViT for the 8x8 digits.

    ``Input(8, 8, 1) -> Conv2D(hidden, 2, strides=2)`` (patch embedding, 16 patches) ``->
    Reshape(16, hidden) -> ClassToken -> AddPositionEmbs -> num_blocks x [LayerMadNormalization
    -> Dense query, key, value -> Attention -> Dense -> Add skip -> LayerMadNormalization ->
    Dense(mlp_dim) -> ReLU -> Dense(hidden) -> Add skip] -> ExtractToken(0) -> Dense(10)``
    (logits).

    Args:
        softmax (str, optional): the attention softmax, 'softmax' or 'shiftmax'.
            Defaults to 'softmax'.
        hidden_size (int, optional): the token size. Defaults to 64.
        num_heads (int, optional): the attention heads (the default gives heads of 16
            channels, a power of 4, so that the quantized rescale is a shift). Defaults to 4.
        mlp_dim (int, optional): the hidden units of the MLPs. Defaults to 128.
        num_blocks (int, optional): the encoder blocks. Defaults to 2.

    Returns:
        keras.Model: a functional tf_keras model named ``digits_vit``.

    Example:
        ```python
        model = digits_vit(softmax="shiftmax")
        logits = model(np.zeros((1, 8, 8, 1), np.float32))
        ```
    """
    inputs = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Conv2D(hidden_size, 2, strides=2, name="patch_embedding")(inputs)
    x = keras.layers.Reshape((16, hidden_size), name="tokens")(x)
    x = ClassToken(name="class_token")(x)
    x = AddPositionEmbs(name="position_embedding")(x)
    for index in range(1, num_blocks + 1):
        x = _block(x, index, hidden_size, num_heads, mlp_dim, softmax)
    x = ExtractToken(0, name="extract_token")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_vit")


def train_digits_vit(softmax="softmax", epochs=40, seed=0, verbose=0, **kwargs):
    """Trains :func:`digits_vit` on :func:`~quantizeml.models.zoo.load_digits_data`.

    Adam with a cosine decay of the learning rate from 2e-3 to 0 over the training, batch size
    32, ``SparseCategoricalCrossentropy(from_logits=True)``, seeded with
    ``keras.utils.set_random_seed(seed)`` (global state; op determinism is not enabled).

    Args:
        softmax (str, optional): the attention softmax. Defaults to 'softmax'.
        epochs (int, optional): the number of training epochs. Defaults to 40.
        seed (int, optional): the random seed. Defaults to 0.
        verbose (int, optional): the Keras ``fit`` verbosity. Defaults to 0.
        **kwargs: other :func:`digits_vit` arguments (hidden_size, num_heads, ...).

    Returns:
        tuple: the trained model and its float test accuracy.
    """
    x_train, y_train, x_test, y_test = load_digits_data()
    keras.utils.set_random_seed(seed)
    model = digits_vit(softmax=softmax, **kwargs)
    steps = epochs * int(np.ceil(len(x_train) / BATCH_SIZE))
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                      2e-3, max(steps, 1))),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose)
    logits = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_test))
    return model, accuracy
