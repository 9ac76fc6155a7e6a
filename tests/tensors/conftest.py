"""Fixtures of the quantized tensor tests."""
import pytest
import tensorflow as tf


class Runner:
    """Calls ``fn(*args)`` eagerly (mode "eager"), or traced by ``tf.function``.

    Numpy arrays closed over by ``fn`` become graph constants (statically known fractional
    bits); arguments become graph inputs (fractional bits only known at run time).
    """

    def __init__(self, mode):
        self.mode = mode

    def __call__(self, fn, *args):
        if self.mode == "eager":
            return fn(*args)
        return tf.function(fn, autograph=False)(*args)

    def __repr__(self):
        return f"Runner({self.mode!r})"


@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    return Runner(request.param)
