"""Exact ONNX export of quantized ``tf_keras.applications`` models (issue 21, slow).

A few builders that cover the architectures issue's layers — table activations (hard-swish,
hard-sigmoid), squeeze-and-excite Multiply, grouped convolutions, ZeroPadding2D, depthwise and
pooling — built with ``weights=None`` at 32x32, quantized at 8/8 and exported: onnxruntime's
outputs (integers and floats) equal the Keras quantized model's bit for bit, and the graph
passes the full checker.
``benchmarks/deployment.py`` and ``benchmarks/export_speed.py`` time the larger ones.
"""
import importlib.util
import os

import numpy as np
import pytest

from quantizeml.models import quantize
from tests.onnx_support.test_export_merging import check_export_bit_exact

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "architectures.py")
_SPEC = importlib.util.spec_from_file_location("architectures_benchmark", _PATH)
architectures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(architectures)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV3Small", "RegNetX002", "ResNet50V2"])
def test_application_exports_bit_exact(name):
    import tf_keras as keras
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model, size = architectures.build(name, 32)
    rng = np.random.default_rng(0)
    shape = (8, size, size, 3)
    x = rng.uniform(0, 255, shape) if architectures._raw_pixels(model) \
        else rng.uniform(-1, 1, shape)
    x = x.astype(np.float32)
    architectures._reestimate_batchnorm(model, x)
    qmodel = quantize(model, samples=x, batch_size=8)

    check_export_bit_exact(qmodel, x)
