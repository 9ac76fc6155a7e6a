"""One ``tf_keras.applications`` builder per family through ``quantize()`` (issue 18, slow).

Each builder of ``benchmarks/architectures.py::FIRST_OF_FAMILY`` is built with ``weights=None``
at the smallest input it accepts, its BatchNormalization statistics re-estimated, and quantized
at 8/8 with ``quantize(model, samples=...)`` directly: no ``sanitize``, no hand edit. The
quantized model must be integer before its head (no float island), leave the float model
untouched, and follow the float model (its 8/8 logits closer to the float logits than their
own magnitude: SQNR > 0 dB on the calibration inputs). The benchmark measures the same on all
71 builders, with SQNR on held-out inputs, time and memory.
"""
import importlib.util
import os

import numpy as np
import pytest

from quantizeml.models import float_islands, quantize

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "architectures.py")
_SPEC = importlib.util.spec_from_file_location("architectures_benchmark", _PATH)
architectures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(architectures)

SAMPLES = 8
#: the families whose first builder takes minutes to quantize on 2 cores: swept only with
#: QUANTIZEML_ALL_FAMILIES=1 (CI budget); benchmarks/architectures.py measures them all
HEAVY = {"ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0",
         "InceptionResNetV2", "InceptionV3", "NASNetMobile", "ResNetRS50"}
#: the smallest input each first builder accepts
MIN_SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(architectures.FIRST_OF_FAMILY.values()))
def test_family_quantizes_integer(name):
    if name in HEAVY and os.environ.get("QUANTIZEML_ALL_FAMILIES") != "1":
        pytest.skip(f"{name}: minutes on 2 cores; set QUANTIZEML_ALL_FAMILIES=1 to sweep it")
    import tf_keras as keras
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model, size = architectures.build(name, MIN_SIZES.get(name, 32))
    rng = np.random.default_rng(0)
    shape = (SAMPLES, size, size, 3)
    x = rng.uniform(0, 255, shape) if architectures._raw_pixels(model) \
        else rng.uniform(-1, 1, shape)
    x = x.astype(np.float32)
    architectures._reestimate_batchnorm(model, x)
    weights = [np.array(w) for w in model.get_weights()]
    y = np.asarray(model(x, training=False))

    qmodel = quantize(model, samples=x, batch_size=SAMPLES)

    assert float_islands(qmodel) == [], name
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    yq = np.asarray(qmodel(x))
    assert yq.shape == y.shape and np.all(np.isfinite(yq))
    assert architectures._sqnr(y, yq) > 0.0, name
