"""The reference model of quantizeml: a small CNN trained on scikit-learn's digits.

The data set ships with scikit-learn (no download), the model trains in seconds on a CPU, and
its float accuracy is the reference that quantized variants are compared with.
"""
import numpy as np
import tf_keras as keras

__all__ = ["load_digits_data", "digits_cnn", "train_digits_cnn"]


def load_digits_data():
    """Loads scikit-learn's bundled 8x8 digits, split for training and test.

    The images are scaled to [0, 1] (``/ 16``) as float32 of shape ``(N, 8, 8, 1)``; the split
    is ``train_test_split(test_size=0.3, random_state=0)`` (1257 training and 540 test
    samples). Requires scikit-learn.

    Returns:
        tuple: ``(x_train, y_train, x_test, y_test)`` numpy arrays, labels as int.

    Example:
        ```python
        x_train, y_train, x_test, y_test = load_digits_data()
        ```
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    return x_train, y_train, x_test, y_test


def _conv_block(x, conv, index, batchnorm=True):
    x = conv(x)
    if batchnorm:
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn_{index}")(x)
    return keras.layers.ReLU(name=f"relu_{index}")(x)


def digits_cnn():
    """The untrained reference CNN for the 8x8 digits.

    ``Input(8, 8, 1) -> Conv2D(16, 3, same) + BN + ReLU -> Conv2D(32, 3, strides=2, same) + BN
    + ReLU -> DepthwiseConv2D(3, same) + BN + ReLU -> Conv2D(32, 1) + ReLU ->
    GlobalAveragePooling2D -> Dense(10)`` (logits).

    Returns:
        keras.Model: a functional tf_keras model named ``digits_cnn``.

    Example:
        ```python
        model = digits_cnn()
        logits = model(np.zeros((1, 8, 8, 1), np.float32))
        ```
    """
    inputs = keras.Input((8, 8, 1), name="input")
    x = _conv_block(inputs, keras.layers.Conv2D(16, 3, padding="same", name="conv_1"), 1)
    x = _conv_block(x, keras.layers.Conv2D(32, 3, strides=2, padding="same", name="conv_2"), 2)
    x = _conv_block(x, keras.layers.DepthwiseConv2D(3, padding="same", name="dw_conv_3"), 3)
    x = _conv_block(x, keras.layers.Conv2D(32, 1, name="conv_4"), 4, batchnorm=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train_digits_cnn(epochs=10, seed=0, verbose=0):
    """Trains :func:`digits_cnn` on :func:`load_digits_data`.

    Adam(1e-3), batch size 32, ``SparseCategoricalCrossentropy(from_logits=True)``. The run is
    seeded with ``keras.utils.set_random_seed(seed)``, which sets the Python, NumPy and
    TensorFlow global seeds (global state; op determinism is not enabled, so the accuracy may
    vary in the last digit across machines or thread counts).

    Args:
        epochs (int, optional): the number of training epochs. Defaults to 10.
        seed (int, optional): the random seed. Defaults to 0.
        verbose (int, optional): the Keras ``fit`` verbosity. Defaults to 0.

    Returns:
        tuple: the trained model and its float test accuracy.

    Example:
        ```python
        model, accuracy = train_digits_cnn()  # accuracy ~0.97
        ```
    """
    x_train, y_train, x_test, y_test = load_digits_data()
    keras.utils.set_random_seed(seed)
    model = digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=verbose)
    logits = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_test))
    return model, accuracy
