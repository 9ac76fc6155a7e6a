"""MaxPool on QFloat inputs (per-channel scales) exports bit-exactly.

ResNetV2's stem (Conv2D, ZeroPadding2D, MaxPool2D, then a pre-activation BatchNormalization
with positive gammas) quantizes with the BatchNormalization moved before the MaxPool: the
QuantizedBatchNormalization's QFloat output (per-channel scales) feeds the QuantizedMaxPool2D
(the export raised on it before).
"""
import numpy as np
import tf_keras as keras

from quantizeml.layers import QuantizedMaxPool2D
from quantizeml.models import quantize
from quantizeml.tensors import QFloat
from tests.onnx_support.test_export_merging import check_export_bit_exact


def _stem():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, name="conv")(inputs)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.MaxPool2D(3, strides=2, name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="dense")(x))
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([np.array([1.5, 0.7, 0.9, 1.2, 0.4, 1.1], np.float32), beta + 0.1,
                    mean + 0.05, var + 0.3])
    return model


def test_maxpool_of_qfloat_exports_bit_exact():
    model = _stem()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 12, 12, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x)
    pool = next(layer for layer in qmodel.layers if isinstance(layer, QuantizedMaxPool2D))
    probe = keras.Model(qmodel.inputs, pool.input)
    fed = probe(x[:2])
    assert isinstance(fed, QFloat) and np.all(fed.scales.numpy() > 0)
    check_export_bit_exact(qmodel, x)

