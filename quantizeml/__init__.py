"""quantizeml: quantization-aware training and integer deployment of tf_keras models.

Importing the package registers every quantizeml Keras object (layers, quantizers) with
Keras serialization, so saved models reload with no ``custom_objects``.
"""
from .version import __version__


class QuantizeMLWarning(UserWarning):
    """Base class of the warnings raised by quantizeml."""


from . import tensors  # noqa: E402,F401
from . import recipes  # noqa: E402,F401  (registers tf.linalg.matmul for QTensors)
from . import quantizers  # noqa: E402,F401
from . import layers  # noqa: E402,F401
from . import models  # noqa: E402,F401
from . import onnx_support  # noqa: E402,F401  (registers the quantizer of ONNX models)

__all__ = ["__version__", "QuantizeMLWarning", "tensors", "quantizers", "layers", "models",
           "onnx_support"]
