"""One table over the twin registry (``quantizeml.layers.registry``): every registered quantized
twin is quantized from a tiny float model and checked for config round trip, h5 and SavedModel
reload, integer exactness and QAT gradients.

A new twin is covered by adding one line to ``CASES`` (``test_every_twin_has_a_case`` fails
until it is added).
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import quantizeml.layers.registry as registry
from quantizeml.layers import eager_layer_calls
from quantizeml.layers.activations import QuantizedReLU
from quantizeml.layers.attention import Attention, QuantizedAttention, QuantizedSoftmax
from quantizeml.layers.convolution import QuantizedConv2D, QuantizedConv2DTranspose
from quantizeml.layers.dense import QuantizedDense
from quantizeml.layers.dot import QuantizedDot
from quantizeml.layers.depthwise import (DepthwiseConv2DTranspose, QuantizedDepthwiseConv2D,
                                         QuantizedDepthwiseConv2DTranspose)
from quantizeml.layers.dropout import QuantizedDropout
from quantizeml.layers.layer_norm import (LayerMadNormalization, QuantizedLayerNormalization,
                                          QuantizedLayerStdNormalization)
from quantizeml.layers.merging import (QuantizedMaximum, QuantizedMinimum, QuantizedMultiply,
                                       QuantizedSubtract)
from quantizeml.layers.normalization import QuantizedBatchNormalization
from quantizeml.layers.pooling import (QuantizedAveragePooling2D, QuantizedGlobalAveragePooling2D,
                                       QuantizedGlobalMaxPooling2D, QuantizedMaxPool2D)
from quantizeml.layers.quant_config import OUTPUT_KEYS, QuantConfigMixin
from quantizeml.layers.registry import register_twin, twin_spec, twin_specs
from quantizeml.layers.rescaling import QuantizedRescaling
from quantizeml.layers.reshaping import (QuantizedFlatten, QuantizedPermute, QuantizedReshape,
                                        QuantizedSlicing, Slicing)
from quantizeml.layers.separable import QuantizedSeparableConv2D
from quantizeml.layers.shiftmax import QuantizedShiftmax, Shiftmax
from quantizeml.layers.skip import QuantizedAdd, QuantizedConcatenate
from quantizeml.layers.spatial import (QuantizedCropping2D, QuantizedResizing,
                                       QuantizedUpSampling2D, QuantizedZeroPadding2D)
from quantizeml.layers.table import (QuantizedActivation, QuantizedELU, QuantizedLeakyReLU,
                                     QuantizedPReLU, QuantizedTableReLU)
from quantizeml.layers.tokens import (AddPositionEmbs, ClassToken, ExtractToken,
                                      QuantizedAddPositionEmbs, QuantizedClassToken,
                                      QuantizedExtractToken)
from quantizeml.models import load_model, quantize
from quantizeml.onnx_support.export import EMITTERS, supported_layers
from quantizeml.tensors import FixedPoint, QFloat, QTensor
from tests.layers.references import frac, ints, output_quantizer, rounded_shift, to_int_fixed
from tests.layers.test_average_pooling import np_average_pool
from tests.layers.test_convolution import (aligned_ints, conv_reference, finish_reference, fold,
                                           np_conv2d, np_conv2d_transpose, weight_ints)
from tests.layers.test_depthwise import depthwise_weights, input_ints, per_channel
from tests.layers.test_keras_layer_norm import keras_layer_norm_reference
from tests.layers.test_merging import reference as merge_reference
from tests.layers.test_pooling import np_max_pool
from tests.layers.test_resizing import reference as resizing_reference
from tests.layers.test_table import table_reference
from tests.utils import check_config_roundtrip

L = keras.layers
SAMPLES = 16


# ---- the float cases: (model, samples) for each twin -----------------------------------------
def _image(shape=(8, 8, 3)):
    return np.random.RandomState(0).uniform(-1, 1, (SAMPLES, *shape)).astype(np.float32)


def _model(inputs, outputs, x):
    return keras.Model(inputs, outputs), x


def _conv_then(*layers, shape=(8, 8, 3), filters=4):
    """Input -> Conv2D 3x3 -> layers..."""
    inputs = keras.Input(shape)
    y = L.Conv2D(filters, 3, bias_initializer="random_normal")(inputs)
    for layer in layers:
        y = layer(y)
    return _model(inputs, y, _image(shape))


def _single(layer, shape=(8, 8, 3)):
    inputs = keras.Input(shape)
    return _model(inputs, layer(inputs), _image(shape))


def _batchnorm():
    bn = L.BatchNormalization(beta_initializer="random_normal", gamma_initializer="ones",
                              moving_mean_initializer="random_normal",
                              moving_variance_initializer=keras.initializers.RandomUniform(
                                  0.5, 2.0))
    # after an Add, so that quantize()'s preparation cannot fold it into a convolution
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    b = L.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    return _model(inputs, bn(L.Add()([a, b])), _image())


def _merge(merge):
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    b = L.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    return _model(inputs, merge([a, b]), _image())


def _merge_broadcast(merge):
    """A Conv2D merged with another averaged to (N, 1, 1, C) (squeeze-and-excite), then a
    1x1 Conv2D (the merge ends a block: it gets an OutputQuantizer)."""
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    b = L.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    y = merge([a, L.GlobalAveragePooling2D(keepdims=True)(b)])
    return _model(inputs, L.Conv2D(2, 1)(y), _image())


def _rescaling():
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3)(L.Rescaling(1 / 255)(inputs))
    pixels = np.random.RandomState(0).randint(0, 256, (SAMPLES, 8, 8, 3)).astype(np.float32)
    return _model(inputs, y, pixels)


def _tokens(*layers, tokens=4, hidden=8):
    """Input (tokens, hidden) -> Dense -> layers... (the ViT stem of zoo_vit)."""
    inputs = keras.Input((tokens, hidden))
    y = L.Dense(hidden, bias_initializer="random_normal")(inputs)
    for layer in layers:
        y = layer(y)
    return _model(inputs, y, _image((tokens, hidden)))


def _attention():
    inputs = keras.Input((4, 8))
    qkv = [L.Dense(8, name=n)(inputs) for n in ("query", "key", "value")]
    y = Attention(2, softmax="shiftmax")(qkv)
    return _model(inputs, L.Dense(3)(y), _image((4, 8)))


def _dot_softmax():
    """Dense query and key -> Dot(axes=(2, 2)) -> Softmax -> Dot with a value -> Dense."""
    inputs = keras.Input((4, 8))
    q, k, v = (L.Dense(8, bias_initializer="random_normal")(inputs) for _ in range(3))
    scores = L.Softmax()(L.Dot(axes=(2, 2))([q, k]))
    return _model(inputs, L.Dense(3)(L.Dot(axes=(2, 1))([scores, v])), _image((4, 8)))


def _token_stem():
    return _tokens(ClassToken(), AddPositionEmbs(), ExtractToken(0), L.Dense(3))


#: twin class -> a function building (a tiny float model containing what it replaces, samples)
CASES = {
    QuantizedReLU: lambda: _conv_then(L.ReLU(6.0)),
    QuantizedActivation: lambda: _conv_then(L.Activation("swish"), L.Conv2D(3, 1)),
    QuantizedLeakyReLU: lambda: _conv_then(L.LeakyReLU(0.2)),  # a model output: default grid
    QuantizedELU: lambda: _conv_then(L.ELU(0.5), L.Conv2D(3, 1)),
    QuantizedTableReLU: lambda: _conv_then(L.ReLU(6.0, negative_slope=0.1), L.Conv2D(3, 1)),
    QuantizedPReLU: lambda: _conv_then(L.PReLU(
        shared_axes=[1, 2], alpha_initializer=keras.initializers.Constant(0.25)),
        L.GlobalAveragePooling2D(), L.Dense(3)),
    QuantizedDropout: lambda: _conv_then(L.Dropout(0.5), L.ReLU()),
    QuantizedBatchNormalization: _batchnorm,
    QuantizedMaxPool2D: lambda: _conv_then(L.MaxPooling2D(2)),
    QuantizedAveragePooling2D: lambda: _conv_then(
        L.AveragePooling2D(3, strides=2, padding="same"), L.Conv2D(3, 1)),
    QuantizedGlobalAveragePooling2D: lambda: _conv_then(L.GlobalAveragePooling2D(), L.Dense(3)),
    QuantizedGlobalMaxPooling2D: lambda: _conv_then(L.GlobalMaxPooling2D(), L.Dense(3)),
    QuantizedRescaling: _rescaling,
    QuantizedFlatten: lambda: _conv_then(L.Flatten(), L.Dense(3)),
    QuantizedReshape: lambda: _conv_then(L.Reshape((36, 4)), L.Dense(3)),
    QuantizedPermute: lambda: _conv_then(L.Permute((3, 1, 2)), L.Dense(3)),
    QuantizedSlicing: lambda: _conv_then(Slicing([1, 0, 1], [6, 5, 3], [2, 1, 1]),
                                         L.Conv2D(3, 1)),
    QuantizedAdd: lambda: _merge(L.Add()),
    QuantizedConcatenate: lambda: _merge(L.Concatenate()),
    QuantizedMultiply: lambda: _merge_broadcast(L.Multiply()),
    QuantizedSubtract: lambda: _merge(L.Subtract()),
    QuantizedMaximum: lambda: _merge_broadcast(L.Maximum()),
    QuantizedMinimum: lambda: _merge(L.Minimum()),
    QuantizedConv2D: lambda: _single(L.Conv2D(4, 3, bias_initializer="random_normal")),
    QuantizedConv2DTranspose: lambda: _single(L.Conv2DTranspose(
        4, 3, strides=2, padding="same", bias_initializer="random_normal"), (4, 4, 3)),
    QuantizedDense: lambda: _single(L.Dense(4, bias_initializer="random_normal"), (8,)),
    QuantizedDepthwiseConv2D: lambda: _single(L.DepthwiseConv2D(
        3, bias_initializer="random_normal")),
    QuantizedDepthwiseConv2DTranspose: lambda: _single(DepthwiseConv2DTranspose(
        3, strides=2, padding="same", bias_initializer="random_normal"), (4, 4, 3)),
    QuantizedSeparableConv2D: lambda: _single(L.SeparableConv2D(
        4, 3, bias_initializer="random_normal")),
    QuantizedShiftmax: lambda: _tokens(Shiftmax()),
    QuantizedAttention: _attention,
    QuantizedSoftmax: _dot_softmax,
    QuantizedDot: _dot_softmax,
    QuantizedLayerNormalization: lambda: _tokens(LayerMadNormalization(), L.Dense(3)),
    QuantizedLayerStdNormalization: lambda: _tokens(L.LayerNormalization(
        epsilon=1e-6, beta_initializer="random_normal"), L.Dense(3)),
    QuantizedClassToken: _token_stem,
    QuantizedAddPositionEmbs: _token_stem,
    QuantizedExtractToken: _token_stem,
    QuantizedZeroPadding2D: lambda: _conv_then(L.ZeroPadding2D(((1, 2), (0, 1))), L.Conv2D(3, 3)),
    QuantizedCropping2D: lambda: _conv_then(L.Cropping2D(((1, 0), (2, 1))), L.ReLU()),
    QuantizedUpSampling2D: lambda: _conv_then(L.UpSampling2D((2, 3)), L.Conv2D(3, 3)),
    QuantizedResizing: lambda: _conv_then(L.Resizing(4, 9), L.Conv2D(3, 3)),
}


# ---- numpy int64 references: twin class -> fn(layer, inputs) -> (values, frac_bits) ---------
# Twins without one here (their integer maths is checked against numpy in their own test
# module, on hand-built inputs): BatchNormalization, GlobalAveragePooling2D, Rescaling (float
# inputs), Concatenate, SeparableConv2D, DepthwiseConv2DTranspose, Shiftmax, Attention,
# LayerMadNormalization, the three token layers. For them the table keeps the eager-vs-traced
# and reload bit-exactness checks.
def _identity(layer, x):
    return ints(x), frac(x)


def _reshaped(fn):
    def reference(layer, x):
        return fn(ints(x)), frac(x)
    return reference


def _with_oq(layer, values, frac_bits, scales=None):
    if layer.out_quantizer is None:
        return values, frac_bits
    return output_quantizer(values, frac_bits, layer.out_quantizer, scales)


def _relu(layer, x):
    xv, xf = to_int_fixed(x)
    ref = np.maximum(xv, 0)
    if layer.max_value is not None:
        ref = np.minimum(ref, np.floor(float(layer.max_value) * 2.0**xf).astype(np.int64))
    return _with_oq(layer, ref, xf)


def _add(layer, inputs):
    (xv, xf), (yv, yf) = (to_int_fixed(t) for t in inputs)
    f = np.maximum(xf, yf)
    ref = rounded_shift(xv, f - xf) + rounded_shift(yv, f - yf)
    return _with_oq(layer, ref, f + 1 if layer.average else f)


def _conv(layer, x):
    values, frac_bits, _, _ = conv_reference(layer, x)
    return values, frac_bits


def _dense(layer, x):
    xv, xf, sx = aligned_ints(x)
    wv, wf, sw = weight_ints(layer.weight_quantizer(layer.kernel))
    return finish_reference(layer, xv @ wv, xf + wf, fold(sx, sw))


def _conv_transpose(layer, x):
    xv, xf, sx = aligned_ints(x)
    wv, wf, sw = weight_ints(layer.weight_quantizer(layer.quantizer_kernel()))
    out_hw = layer.compute_output_shape(x.shape)[1:3]
    acc = np_conv2d_transpose(xv, wv.transpose(0, 1, 3, 2), out_hw, layer.strides,
                              layer.padding, layer.dilation_rate)
    return finish_reference(layer, acc, xf + wf, fold(sx, sw))


def _depthwise(layer, x):
    xv, xf, sx = input_ints(x, layer.depth_multiplier)
    _, wv, wf, sw = depthwise_weights(layer)
    acc = per_channel(lambda xc, wc: np_conv2d(xc, wc, layer.strides, layer.padding,
                                               layer.dilation_rate), xv, wv)
    return finish_reference(layer, acc, xf + wf, fold(sx, sw))


def _max_pool(layer, x):
    values = np_max_pool(ints(x), layer.pool_size, layer.strides, layer.padding)
    return _with_oq(layer, values, frac(x))


def _global_max_pool(layer, x):
    values = np.max(ints(x), axis=(1, 2), keepdims=layer.keepdims)
    return _with_oq(layer, values, frac(x))


def _average_pool(layer, x):
    values, lcm = np_average_pool(ints(x), layer.pool_size, layer.strides, layer.padding)
    scales = np.float32(1.0 / lcm)
    if isinstance(x, QFloat):
        scales = np.asarray(x.scales, np.float32) * scales
    return _with_oq(layer, values, frac(x), np.broadcast_to(scales, values.shape[-1:]))


def _merging(layer, inputs):
    values, frac_bits, _ = merge_reference(layer, inputs)
    return values, frac_bits


def _softmax(layer, x):
    xv, xf = to_int_fixed(x, layer.scale_bits)
    logits = xv * np.power(2.0, -xf.astype(np.float64))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return np.floor(probs * 2.0**layer.exp_bits + 0.5).astype(np.int64), layer.exp_bits


def _dot(layer, inputs):
    (av, af), (bv, bf) = (to_int_fixed(t) for t in inputs)
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes,) * 2
    av = av if axes[0] == 2 else av.transpose(0, 2, 1)
    bv = bv if axes[1] == 1 else bv.transpose(0, 2, 1)
    return _with_oq(layer, av @ bv, af + bf)


REFERENCES = {
    QuantizedReLU: _relu,
    QuantizedActivation: table_reference,
    QuantizedLeakyReLU: table_reference,
    QuantizedELU: table_reference,
    QuantizedTableReLU: table_reference,
    QuantizedPReLU: table_reference,
    QuantizedDropout: _identity,
    QuantizedMaxPool2D: _max_pool,
    QuantizedGlobalMaxPooling2D: _global_max_pool,
    QuantizedAveragePooling2D: _average_pool,
    QuantizedFlatten: _reshaped(lambda v: v.reshape(v.shape[0], -1)),
    QuantizedReshape: _reshaped(lambda v: v.reshape(v.shape[0], 36, 4)),
    QuantizedPermute: _reshaped(lambda v: v.transpose(0, 3, 1, 2)),
    QuantizedSlicing: _reshaped(lambda v: v[:, 1:6:2, 0:5, 1:3]),
    QuantizedAdd: _add,
    QuantizedMultiply: _merging,
    QuantizedSubtract: _merging,
    QuantizedMaximum: _merging,
    QuantizedMinimum: _merging,
    QuantizedConv2D: _conv,
    QuantizedConv2DTranspose: _conv_transpose,
    QuantizedDense: _dense,
    QuantizedDepthwiseConv2D: _depthwise,
    QuantizedLayerStdNormalization: keras_layer_norm_reference,
    QuantizedSoftmax: _softmax,
    QuantizedDot: _dot,
    QuantizedZeroPadding2D: _reshaped(lambda v: np.pad(v, ((0, 0), (1, 2), (0, 1), (0, 0)))),
    QuantizedCropping2D: _reshaped(lambda v: v[:, 1:, 2:-1, :]),
    QuantizedUpSampling2D: _reshaped(lambda v: np.repeat(np.repeat(v, 2, axis=1), 3, axis=2)),
    QuantizedResizing: lambda layer, x: _with_oq(layer, *resizing_reference(
        ints(x), frac(x), layer.height, layer.width, layer.interpolation)),
}


# ---- the checks --------------------------------------------------------------------------------
def _float(out):
    return out.to_float().numpy() if isinstance(out, QTensor) else np.asarray(out)


def _twin_layer(qmodel, twin):
    layers = [layer for layer in qmodel.layers if type(layer) is twin]
    assert layers, f"{twin.__name__} not in {[type(x).__name__ for x in qmodel.layers]}"
    return layers[0]


def _check_reload(qmodel, x, expected, tmp_path, formats=("h5", "tf"), save_traces=False):
    """Saves and reloads with quantizeml.models.load_model: bit-identical outputs.

    The SavedModel is saved without traces by default (0.3 s instead of 3 s a model): tf_keras
    revives registered classes from their configs either way; the traced SavedModel of each
    twin is saved and reloaded by its own test module (``check_save_load``).
    """
    for fmt in formats:
        path = str(tmp_path / ("model.h5" if fmt == "h5" else "saved_model"))
        qmodel.save(path, save_format=fmt, save_traces=save_traces)
        loaded = load_model(path, compile_model=False)
        assert np.array_equal(_float(loaded(x)), expected), f"{fmt} reload differs"


def _check_integer_reference(qmodel, qlayer, x):
    reference = REFERENCES.get(type(qlayer))
    if reference is None:
        return
    probe = keras.Model(qmodel.inputs, [qlayer.input, qlayer.output])
    with eager_layer_calls():
        inputs, out = probe(x)
    assert isinstance(out, (FixedPoint, QFloat)), type(out)
    values, frac_bits = reference(qlayer, inputs)
    np.testing.assert_array_equal(ints(out), values)
    channels = out.shape[-1:]
    np.testing.assert_array_equal(np.broadcast_to(frac(out), channels),
                                  np.broadcast_to(frac_bits, channels))


def _check_gradients(qmodel, qlayer, spec, x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(qmodel(x, training=True)))
    grads = tape.gradient(loss, qmodel.trainable_variables)
    for v, g in zip(qmodel.trainable_variables, grads):
        if g is not None:
            g = tf.convert_to_tensor(g)
            assert np.all(np.isfinite(g.numpy())), f"non-finite gradient for {v.name}"
    if spec.has_weights:
        own = {id(v) for v in qlayer.trainable_variables}
        assert own, f"{qlayer.name} has no trainable variables"
        for v, g in zip(qmodel.trainable_variables, grads):
            if id(v) in own:
                assert g is not None, f"no gradient for {v.name}"
                assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) > 0, \
                    f"zero gradient for {v.name}"


SPECS = twin_specs()
IDS = [spec.twin.__name__ for spec in SPECS]


def test_every_twin_has_a_case():
    missing = [spec.twin.__name__ for spec in twin_specs() if spec.twin not in CASES]
    assert not missing, f"add a case to CASES for {missing}"


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_twin(spec, tmp_path):
    if spec.twin not in CASES:
        pytest.fail(f"no case for {spec.twin.__name__}")
    model, x = CASES[spec.twin]()
    qmodel = quantize(model, samples=x, num_samples=SAMPLES, batch_size=SAMPLES)
    qlayer = _twin_layer(qmodel, spec.twin)
    assert twin_spec(qlayer) is spec
    # (a) config round trip
    config = qlayer.get_config()
    assert type(qlayer).from_config(config).get_config() == config
    check_config_roundtrip(qlayer)
    # (c) integer exactness: traced (predict, tf.function) == op by op, and numpy reference
    expected = _float(tf.function(qmodel)(x))
    with eager_layer_calls():
        eager = _float(qmodel(x))
    assert np.array_equal(eager, expected), "op-by-op eager call differs from the traced call"
    _check_integer_reference(qmodel, qlayer, x)
    # (b) h5 and SavedModel reload, bit identical
    _check_reload(qmodel, x, expected, tmp_path)
    # (d) QAT gradients
    _check_gradients(qmodel, qlayer, spec, x)


# ---- the registry ------------------------------------------------------------------------------
def test_registry_rules():
    with pytest.raises(ValueError, match="one twin per float layer"):
        @register_twin(keras.layers.Conv2D)
        class OtherConv2D(QuantizedConv2D):
            pass
    assert registry.QUANTIZATION_TARGETS[keras.layers.Conv2D] is QuantizedConv2D
    with pytest.raises(ValueError, match="output"):
        register_twin(keras.layers.Layer, output="bogus")
    exportable = set(supported_layers())
    for spec in twin_specs():
        assert spec.export is None or spec.export in EMITTERS, spec
        if spec.export is not None:
            assert spec.twin in exportable, spec.twin.__name__


@keras.saving.register_keras_serializable(package="tests_twins")
class Identity2D(keras.layers.Layer):
    """A float layer returning its input (no twin until the test registers one)."""

    def call(self, inputs):
        return inputs


@keras.saving.register_keras_serializable(package="tests_twins")
class QuantizedIdentity2D(QuantConfigMixin, Identity2D):
    """Its twin: passes a QTensor through (the QuantizedDropout pattern)."""

    def __init__(self, quant_config=None, **kwargs):
        super().__init__(**kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def get_config(self):
        return {**super().get_config(), "quant_config": self.quant_config}

    def call(self, inputs):
        return self._quantize_output(inputs)


def test_registering_a_twin_is_all_quantize_needs():
    def build():
        inputs = keras.Input((8, 8, 3))
        y = L.Conv2D(4, 3, name="conv")(inputs)
        y = Identity2D(name="identity")(y)
        return keras.Model(inputs, L.ReLU(name="relu")(y))
    x = _image()
    with pytest.raises(ValueError, match=r"identity \(Identity2D\)"):
        quantize(build(), samples=x, num_samples=SAMPLES)
    try:
        register_twin(Identity2D, pass_through=True)(QuantizedIdentity2D)
        qmodel = quantize(build(), samples=x, num_samples=SAMPLES)
        assert isinstance(qmodel.get_layer("identity"), QuantizedIdentity2D)
        assert "output_quantizer" not in qmodel.get_layer("conv").quant_config
        assert "output_quantizer" in qmodel.get_layer("relu").quant_config
        assert np.all(np.isfinite(qmodel.predict(x, verbose=0)))
    finally:
        registry.QUANTIZATION_TARGETS.pop(Identity2D, None)
        registry._SPECS.pop(QuantizedIdentity2D, None)
    assert twin_spec(Identity2D) is None
