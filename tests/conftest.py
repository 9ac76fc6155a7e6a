"""Shared test fixtures: deterministic seeds and a clean Keras session per test."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.backend.clear_session()
    np.random.seed(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
