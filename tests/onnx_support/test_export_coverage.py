"""Export coverage: every layer quantize() can produce exports bit-exactly.

Each new emitter (the float layers of the head, islands and tail; QuantizedPermute,
QuantizedConcatenate, QuantizedRescaling, ...) is checked on a tiny quantized model: the ONNX
model passes ``onnx.checker.check_model(full_check=True)``, and onnxruntime's integer outputs
equal the Keras ``.values`` bit for bit, its float outputs the Keras float outputs.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.layers import (Dequantizer, InputQuantizer, QuantizedConcatenate,
                               QuantizedPermute, QuantizedRescaling)
from quantizeml.layers.registry import twin_specs
from quantizeml.models import QuantizationParams, float_islands, quantize
from quantizeml.onnx_support import export
from quantizeml.onnx_support.export import EMITTERS, FLOAT_EMITTERS

L = keras.layers

#: Registered twins the exporter does not export yet, with the reason. A new twin must either
#: name an emitter (``register_twin(..., export="<name>")``) or be listed here.
NOT_EXPORTABLE = {}


def _session(qmodel):
    proto = export(qmodel)
    onnx.checker.check_model(proto, full_check=True)
    assert {op.domain for op in proto.opset_import} == {""}
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return proto, session


def _check(qmodel, x, max_ulp=0):
    """Exports and runs ``qmodel``: integer outputs (before the last Dequantizer) bit for bit,
    float outputs equal (within ``max_ulp`` float32 ulps after a float tail computing a
    transcendental function: exp, softmax, sigmoid... differ in the last bits between
    TensorFlow and onnxruntime). Returns the ONNX op types."""
    proto, session = _session(qmodel)
    floats, integers = session.run(None, {session.get_inputs()[0].name: x})
    source = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    keras_int = keras.Model(qmodel.inputs, source.input)(x).values.numpy()
    np.testing.assert_array_equal(integers, keras_int.astype(np.int64))
    keras_float = qmodel(x).numpy()
    assert floats.shape == keras_float.shape
    if max_ulp:
        np.testing.assert_array_max_ulp(floats, keras_float, maxulp=max_ulp)
    else:
        np.testing.assert_array_equal(floats, keras_float)
    return {node.op_type for node in proto.graph.node}


def _check_outputs(qmodel, x):
    """Exports and runs a model with several outputs, each a Dequantizer: every integer output
    bit for bit, every float output exactly. Returns the ONNX op types."""
    proto, session = _session(qmodel)
    results = session.run(None, {session.get_inputs()[0].name: x})
    dequantizers = [qmodel.get_layer(name) for name in qmodel.output_names]
    assert all(isinstance(dq, Dequantizer) for dq in dequantizers)
    count = len(dequantizers)
    keras_ints = keras.Model(qmodel.inputs, [dq.input for dq in dequantizers])(x)
    keras_floats = qmodel(x)
    for i, dq in enumerate(dequantizers):
        np.testing.assert_array_equal(results[count + i],
                                      keras_ints[i].values.numpy().astype(np.int64),
                                      err_msg=dq.name)
        np.testing.assert_array_equal(results[i], keras_floats[i].numpy(), err_msg=dq.name)
    return {node.op_type for node in proto.graph.node}


def _samples(shape, n=16, seed=0, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, (n, *shape)).astype(np.float32)


def _quantize(model, x, **kwargs):
    return quantize(model, samples=x, num_samples=len(x), batch_size=len(x), **kwargs)


# ---- float layers: tail, head, islands --------------------------------------------------------
def test_export_float_tail_softmax():
    """Conv2D -> GAP -> Dense -> Activation('softmax') (float tail after the Dequantizer)."""
    inputs = keras.Input((8, 8, 3), name="inp")
    y = L.Conv2D(6, 3, bias_initializer="random_normal", name="conv")(inputs)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(5, bias_initializer="random_normal", name="dense")(y)
    y = L.Activation("softmax", name="probs")(y)
    x = _samples((8, 8, 3))
    qmodel = _quantize(keras.Model(inputs, y), x)
    assert type(qmodel.layers[-1]) is L.Activation
    ops = _check(qmodel, x, max_ulp=4)
    assert "Softmax" in ops


def test_export_float_head_rescaling():
    """Rescaling(1/127.5, offset=-1) on raw pixels, kept float (head), then the InputQuantizer
    ``<layer>_quantizer`` and a padded Conv2D."""
    inputs = keras.Input((8, 8, 3), name="inp")
    y = L.Rescaling(1 / 127.5, offset=-1, name="pre")(inputs)
    y = L.Conv2D(4, 3, padding="same", bias_initializer="random_normal", name="conv")(y)
    y = L.ReLU(name="relu")(y)
    y = L.Conv2D(3, 1, name="head")(y)
    x = np.round(_samples((8, 8, 3), low=0, high=255))
    qmodel = _quantize(keras.Model(inputs, y), x)
    assert type(qmodel.get_layer("pre")) is L.Rescaling
    assert isinstance(qmodel.get_layer("pre_quantizer"), InputQuantizer)
    _check(qmodel, x)


def _island_model(make_layer, two_inputs=False, dense=False):
    """Conv2D (and a second Conv2D branch) -> the float island -> a quantized Conv2D/Dense."""
    inputs = keras.Input((6, 6, 3), name="inp")
    a = L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs)
    if two_inputs:
        b = L.Conv2D(4, 3, bias_initializer="random_normal", name="b")(inputs)
        y = make_layer()([a, b])
    else:
        y = make_layer()(a)
    if dense:
        y = L.Dense(3, name="out")(L.Flatten(name="fl")(y) if len(y.shape) > 2 else y)
    else:
        y = L.Conv2D(3, 1, name="out")(y)
    return keras.Model(inputs, y)


#: name -> (layer factory, two inputs, dense head).
ISLANDS = {
    "relu6": (lambda: L.ReLU(6.0, name="island"), False, False),
    "leaky": (lambda: L.ReLU(negative_slope=0.25, name="island"), False, False),
    "rescaling": (lambda: L.Rescaling([0.5, 2.0, 1.0, 0.25], offset=0.25, name="island"),
                  False, False),
    "permute": (lambda: L.Permute((2, 1, 3), name="island"), False, False),
    "dropout": (lambda: L.Dropout(0.5, name="island"), False, False),
    "flatten": (lambda: L.Flatten(name="island"), False, True),
    "reshape": (lambda: L.Reshape((16, 4), name="island"), False, True),
    "add": (lambda: L.Add(name="island"), True, False),
    "subtract": (lambda: L.Subtract(name="island"), True, False),
    "multiply": (lambda: L.Multiply(name="island"), True, False),
    "maximum": (lambda: L.Maximum(name="island"), True, False),
    "concatenate": (lambda: L.Concatenate(name="island"), True, False),
    "activation_relu": (lambda: L.Activation("relu", name="island"), False, False),
    "dense": (lambda: L.Dense(5, name="island"), False, True),
}


@pytest.mark.parametrize("kind", list(ISLANDS), ids=list(ISLANDS))
def test_export_float_island(kind):
    """A float layer kept float with q_config {name: "float"}: Dequantizer before it, the
    InputQuantizer ``island_quantizer`` after it; integer and float outputs bit-exact."""
    make_layer, two_inputs, dense = ISLANDS[kind]
    model = _island_model(make_layer, two_inputs, dense)
    x = _samples((6, 6, 3))
    qmodel = _quantize(model, x, q_config={"island": "float"})
    assert type(qmodel.get_layer("island")) in FLOAT_EMITTERS  # float (maybe prepared)
    assert isinstance(qmodel.get_layer("island_quantizer"), InputQuantizer)
    _check(qmodel, x)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softmax", "elu", "softplus",
                                        "hard_sigmoid", "swish"])
def test_export_float_island_activations(activation):
    """Transcendental float activations (an island): ONNX and TensorFlow may differ in the last
    float bit, so the requantized integers are compared on the samples used here and the float
    output is checked close."""
    model = _island_model(lambda: L.Activation(activation, name="island"))
    x = _samples((6, 6, 3))
    qmodel = _quantize(model, x, q_config={"island": "float"})
    proto, session = _session(qmodel)
    floats, integers = session.run(None, {session.get_inputs()[0].name: x})
    keras_int = keras.Model(qmodel.inputs, qmodel.layers[-1].input)(x).values.numpy()
    mismatch = np.mean(integers != keras_int.astype(np.int64))
    assert mismatch <= 0.01, mismatch
    np.testing.assert_allclose(floats, qmodel(x).numpy(), rtol=0.05, atol=0.05)


def _check_close(qmodel, x, max_mismatch=0.01, rtol=1e-3, atol=0.05):
    """Exports and runs ``qmodel`` whose float layers compute in float32 in another order than
    TensorFlow (convolutions, normalizations, averages): their results may differ in the last
    float bits, so at most ``max_mismatch`` of the integer outputs (requantized after a float
    island) may differ, by one rounding step, and the float outputs are close. Returns the
    ONNX op types."""
    proto, session = _session(qmodel)
    floats, integers = session.run(None, {session.get_inputs()[0].name: x})
    source = [layer for layer in qmodel.layers if isinstance(layer, Dequantizer)][-1]
    keras_int = keras.Model(qmodel.inputs, source.input)(x).values.numpy().astype(np.int64)
    assert integers.shape == keras_int.shape
    mismatch = np.mean(integers != keras_int)
    assert mismatch <= max_mismatch, mismatch
    assert np.abs(integers - keras_int).max() <= 1
    keras_float = qmodel(x).numpy()
    assert floats.shape == keras_float.shape
    np.testing.assert_allclose(floats, keras_float, rtol=rtol, atol=atol)
    return {node.op_type for node in proto.graph.node}


def _random(stddev=1.0):
    return keras.initializers.RandomNormal(stddev=stddev, seed=1)


def _batchnorm_after_relu():
    """A ReLU then the BatchNormalization (not folded into a convolution), random statistics."""
    bn = L.BatchNormalization(gamma_initializer=_random(), beta_initializer=_random(),
                              moving_mean_initializer=_random(0.5),
                              moving_variance_initializer=keras.initializers.RandomUniform(
                                  0.2, 3.0, seed=2), epsilon=0.01, name="island")
    return lambda t: bn(L.ReLU(name="pre")(t))


def _after_reshape(make_layer):
    """A 1D island factory: a quantized Reshape of the 4x4x4 input to (16, 4), then the layer."""
    return lambda: lambda t: make_layer()(L.Reshape((16, 4), name="pre")(t))


#: float spatial and normalization layers kept float -> (island factory, dense head, exact):
#: exact ones (copies, maxima) are compared bit for bit, the others with ``_check_close``; the
#: island's input is 4x4x4 or 16x4 (the 'same' ones with stride 2 pad one row/column at the end
#: only).
SPATIAL_ISLANDS = {
    "conv_same_s2": (lambda: L.Conv2D(5, 3, strides=2, padding="same", activation="relu",
                                      bias_initializer=_random(), name="island"), False, False),
    "conv_groups_dilated": (lambda: L.Conv2D(6, 2, dilation_rate=2, groups=2, padding="same",
                                             bias_initializer=_random(), name="island"),
                            False, False),
    "conv_valid_nobias": (lambda: L.Conv2D(3, (3, 2), use_bias=False, name="island"),
                          False, False),
    "depthwise": (lambda: L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                            bias_initializer=_random(), name="island"),
                  False, False),
    "separable": (lambda: L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2,
                                            activation="tanh", bias_initializer=_random(),
                                            name="island"), False, False),
    "batchnorm": (_batchnorm_after_relu, False, False),
    "layernorm": (lambda: L.LayerNormalization(gamma_initializer=_random(),
                                               beta_initializer=_random(), name="island"),
                  False, False),
    "layernorm_hwc": (lambda: L.LayerNormalization(axis=[1, 2, 3], center=False, epsilon=0.1,
                                                   gamma_initializer=_random(), name="island"),
                      False, False),
    "gap": (lambda: L.GlobalAveragePooling2D(name="island"), True, False),
    "gap_keepdims": (lambda: L.GlobalAveragePooling2D(keepdims=True, name="island"),
                     False, False),
    "gmp_keepdims": (lambda: L.GlobalMaxPooling2D(keepdims=True, name="island"), False, True),
    "gmp": (lambda: L.GlobalMaxPooling2D(name="island"), True, True),
    "maxpool_same": (lambda: L.MaxPooling2D(3, 2, padding="same", name="island"), False, True),
    "maxpool_valid": (lambda: L.MaxPooling2D(name="island"), False, True),
    "avgpool_same": (lambda: L.AveragePooling2D(3, 2, padding="same", name="island"),
                     False, False),
    "avgpool_valid": (lambda: L.AveragePooling2D((2, 1), name="island"), False, False),
    "zero_pad": (lambda: L.ZeroPadding2D(((1, 0), (0, 2)), name="island"), False, True),
    "crop": (lambda: L.Cropping2D(((1, 0), (0, 2)), name="island"), False, True),
    "upsample": (lambda: L.UpSampling2D((2, 3), name="island"), False, True),
    # Conv1D and the 1D poolings (no quantized twin) after a quantized Reshape to (16, 4)
    "conv1d_same_s2_groups": (_after_reshape(lambda: L.Conv1D(
        4, 3, strides=2, padding="same", groups=2, bias_initializer=_random(), name="island")),
                              True, False),
    "conv1d_causal_dilated": (_after_reshape(lambda: L.Conv1D(5, 3, padding="causal",
                                                              dilation_rate=2, name="island")),
                              True, False),
    "gap1d": (_after_reshape(lambda: L.GlobalAveragePooling1D(name="island")), True, False),
    "gmp1d_keepdims": (_after_reshape(lambda: L.GlobalMaxPooling1D(keepdims=True,
                                                                   name="island")), True, True),
    "maxpool1d_same": (_after_reshape(lambda: L.MaxPooling1D(3, 2, padding="same",
                                                             name="island")), True, True),
    "avgpool1d_same": (_after_reshape(lambda: L.AveragePooling1D(3, 2, padding="same",
                                                                 name="island")), True, False),
}


@pytest.mark.parametrize("kind", list(SPATIAL_ISLANDS), ids=list(SPATIAL_ISLANDS))
def test_export_float_island_spatial(kind):
    """A float convolution, normalization, pooling, padding, cropping or upsampling kept float
    (q_config {name: "float"}) between quantized Conv2Ds (NHWC tensors, NCHW ``Conv``/pools);
    then the same layer as the float tail after a Conv2D, whose float outputs are the layer's
    own: equal for the exact ones, within 1e-5 for the others."""
    make_layer, dense, exact = SPATIAL_ISLANDS[kind]
    x = _samples((6, 6, 3))
    qmodel = _quantize(_island_model(make_layer, dense=dense), x, q_config={"island": "float"})
    assert type(qmodel.get_layer("island")) in FLOAT_EMITTERS
    assert isinstance(qmodel.get_layer("island_quantizer"), InputQuantizer)
    if exact:
        _check(qmodel, x)
    else:
        _check_close(qmodel, x)
    inputs = keras.Input((6, 6, 3), name="inp")
    y = make_layer()(L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs))
    qmodel = _quantize(keras.Model(inputs, y), x, q_config={"island": "float"})
    if exact:
        _check(qmodel, x)
    else:
        _check_close(qmodel, x, max_mismatch=0, rtol=1e-5, atol=1e-5)


def test_export_float_tail_gap_dense():
    """Conv2D, then GlobalAveragePooling2D and Dense kept float: the float tail after the last
    Dequantizer (integer outputs bit-exact, float outputs close)."""
    inputs = keras.Input((6, 6, 3), name="inp")
    y = L.Conv2D(4, 3, bias_initializer="random_normal", name="conv")(inputs)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(3, bias_initializer="random_normal", name="d")(y)
    x = _samples((6, 6, 3))
    qmodel = _quantize(keras.Model(inputs, y), x, q_config={"gap": "float", "d": "float"})
    assert type(qmodel.get_layer("gap")) is L.GlobalAveragePooling2D
    assert isinstance(qmodel.get_layer("gap_dequantizer"), Dequantizer)
    proto, session = _session(qmodel)
    floats, integers = session.run(None, {"inp": x})
    keras_int = keras.Model(qmodel.inputs, qmodel.get_layer("gap_dequantizer").input)(x)
    np.testing.assert_array_equal(integers, keras_int.values.numpy().astype(np.int64))
    np.testing.assert_allclose(floats, qmodel(x).numpy(), rtol=1e-5, atol=1e-6)


def test_export_float_island_bilinear_refused():
    """A bilinear UpSampling2D kept float is listed by the export error with its emitter's
    reason (nearest only), and the error still lists the supported layers."""
    model = _island_model(lambda: L.UpSampling2D(interpolation="bilinear", name="island"))
    x = _samples((6, 6, 3), n=4)
    qmodel = _quantize(model, x, q_config={"island": "float"})
    reason = FLOAT_EMITTERS[L.UpSampling2D][1](qmodel.get_layer("island"))
    assert "bilinear" in reason
    with pytest.raises(ValueError) as info:
        export(qmodel)
    message = str(info.value)
    assert f"island (UpSampling2D): {reason}" in message, message
    hint = message.split("Received:")[0]  # the supported layers
    assert "made of" in hint and "UpSampling2D" in hint and "Conv2D" in hint, message


def test_export_unsupported_float_layer_listed():
    """A float-tail layer without a float emitter is reported by name and class."""
    inputs = keras.Input((6, 6, 3), name="inp")
    y = L.Conv2D(4, 3, name="conv")(inputs)
    y = L.Flatten(name="fl")(y)
    y = L.Dense(3, name="d")(y)
    y = L.Activation("softmax", name="probs")(y)
    y = L.Lambda(lambda t: t * 2.0, name="lam")(y)
    x = _samples((6, 6, 3))
    qmodel = _quantize(keras.Model(inputs, y), x)
    with pytest.raises(ValueError, match=r"lam \(Lambda\)"):
        export(qmodel)


def test_float_emitters_refuse():
    assert FLOAT_EMITTERS[L.ReLU][1](L.ReLU(threshold=0.5)) is not None
    assert FLOAT_EMITTERS[L.Activation][1](L.Activation("gelu")) is not None
    assert FLOAT_EMITTERS[L.Activation][1](L.Activation("tanh")) is None
    inputs = keras.Input((6, 6, 4))
    refused = [L.Conv2D(3, 3, data_format="channels_first"),
               L.Conv2D(3, 3, activation="gelu"),
               L.MaxPooling2D(data_format="channels_first"),
               L.UpSampling2D(interpolation="bilinear"),
               L.BatchNormalization(axis=1),
               L.LayerNormalization(axis=[1, 3])]
    for layer in refused:
        layer(inputs)
        assert FLOAT_EMITTERS[type(layer)][1](layer) is not None, layer
    steps = keras.Input((5, 4))
    conv1d, gap1d = L.Conv1D(3, 3, data_format="channels_first"), L.GlobalAveragePooling1D()
    conv1d(steps)
    gap1d(L.Masking()(steps))
    assert "channels_first" in FLOAT_EMITTERS[L.Conv1D][1](conv1d)
    assert "masked" in FLOAT_EMITTERS[L.GlobalAveragePooling1D][1](gap1d)
    for layer in (L.Conv2D(3, 3, padding="same"), L.UpSampling2D(), L.BatchNormalization(),
                  L.LayerNormalization(axis=[2, 3])):
        layer(inputs)
        assert FLOAT_EMITTERS[type(layer)][1](layer) is None, layer
    dynamic = keras.Input((None, None, 4))
    layer = L.Conv2D(3, 3, padding="same")
    layer(dynamic)
    assert "dynamic" in FLOAT_EMITTERS[L.Conv2D][1](layer)


@pytest.mark.slow
def test_export_mobilenet_softmax_head():
    """MobileNet(alpha=0.25) with its float softmax head (the issue's failing export)."""
    model = keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None,
                                         classes=10)
    x = _samples((32, 32, 3), n=8)
    qmodel = _quantize(model, x)
    assert type(qmodel.layers[-1]) is L.Activation
    ops = _check(qmodel, x, max_ulp=4)
    assert "Softmax" in ops


# ---- integer emitters -------------------------------------------------------------------------
@pytest.mark.parametrize("qparams", [None, QuantizationParams(weight_bits=4, activation_bits=4)],
                         ids=["8bit", "4bit"])
def test_export_permute(qparams):
    inputs = keras.Input((6, 5, 3), name="inp")
    y = L.Conv2D(4, 3, bias_initializer="random_normal", name="conv")(inputs)
    y = L.Permute((2, 1, 3), name="perm")(y)
    y = L.Conv2D(4, 2, name="c2")(y)
    y = L.Permute((3, 1, 2), name="perm2")(y)
    y = L.Flatten(name="fl")(y)
    y = L.Dense(3, name="d")(y)
    x = _samples((6, 5, 3))
    qmodel = _quantize(keras.Model(inputs, y), x, qparams=qparams)
    assert isinstance(qmodel.get_layer("perm"), QuantizedPermute)
    ops = _check(qmodel, x)
    assert "Transpose" in ops


@pytest.mark.parametrize("qparams", [None, QuantizationParams(per_tensor_activations=True)],
                         ids=["default", "per-tensor"])
def test_export_concatenate(qparams):
    """Two branches of different ranges (different frac bits) and a ReLU branch, concatenated
    on the channels, then a Conv2D; and a concatenation on the rows."""
    inputs = keras.Input((6, 6, 3), name="inp")
    a = L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs)
    b = L.Conv2D(3, 3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0),
                 bias_initializer="random_normal", name="b")(inputs)
    c = L.ReLU(name="relu")(L.Conv2D(2, 3, name="c")(inputs))
    y = L.Concatenate(name="cat")([a, b, c])
    y = L.Conv2D(4, 1, name="mix")(y)
    z = L.Concatenate(axis=1, name="cat_rows")([y, a])
    z = L.Conv2D(3, 1, name="out")(z)
    x = _samples((6, 6, 3))
    qmodel = _quantize(keras.Model(inputs, z), x, qparams=qparams)
    assert isinstance(qmodel.get_layer("cat"), QuantizedConcatenate)
    ops = _check(qmodel, x)
    assert "Concat" in ops


def test_export_concatenate_model_output():
    """A Concatenate producing the model output (no output quantizer: its aligned buffer)."""
    inputs = keras.Input((6, 6, 3), name="inp")
    a = L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs)
    b = L.Conv2D(3, 3, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0),
                 name="b")(inputs)
    y = L.Concatenate(name="cat")([a, b])
    x = _samples((6, 6, 3))
    _check(_quantize(keras.Model(inputs, y), x), x)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_export_quantized_rescaling(signed):
    """QuantizedRescaling takes the raw float inputs: round half up (halves and non-integers
    included), clip to the input range, scale as QFloat."""
    inputs = keras.Input((6, 6, 3), name="inp")
    y = L.Rescaling(1 / 255, name="pre")(inputs)
    y = L.Conv2D(4, 3, bias_initializer="random_normal", name="conv")(y)
    y = L.Conv2D(3, 1, name="out")(y)
    model = keras.Model(inputs, y)
    low = -128 if signed else 0
    pixels = np.round(_samples((6, 6, 3), low=low, high=255))
    x = pixels.copy()
    x[:, 0, 0, :] = [[0.5, 2.5, 254.5]] * 1  # halves round up
    x[:, 1, 0, :] = [[0.49999997, -0.5, 300.0]]  # below a half; negative half; saturation
    q_config = {"pre": {"input_signed": True, "input_bitwidth": 9}} if signed else None
    # calibrated on integer pixels (other samples keep the Rescaling float), run on all
    qmodel = _quantize(model, pixels, q_config=q_config)
    assert isinstance(qmodel.get_layer("pre"), QuantizedRescaling)
    _check(qmodel, x)


@pytest.mark.parametrize("qparams", [None, QuantizationParams(per_tensor_activations=True),
                                     QuantizationParams(weight_bits=4, activation_bits=4)],
                         ids=["default", "per-tensor", "4bit"])
def test_export_global_max_pool(qparams):
    """GlobalMaxPooling2D (the ``pooling="max"`` head of the applications): after a ReLU,
    flat into a Dense; and with keepdims into a 1x1 Conv2D producing the model output."""
    inputs = keras.Input((6, 6, 3), name="inp")
    y = L.Conv2D(5, 3, bias_initializer="random_normal", name="conv")(inputs)
    a = L.GlobalMaxPooling2D(name="gmp")(L.ReLU(name="relu")(y))
    a = L.Dense(3, name="dense")(a)
    b = L.GlobalMaxPooling2D(keepdims=True, name="gmp_keep")(y)
    b = L.Conv2D(2, 1, name="mix")(b)
    x = _samples((6, 6, 3))
    qmodel = _quantize(keras.Model(inputs, [a, b]), x, qparams=qparams)
    assert type(qmodel.get_layer("gmp")).__name__ == "QuantizedGlobalMaxPooling2D"
    ops = _check_outputs(qmodel, x)
    assert "ReduceMax" in ops


def test_export_global_max_pool_negative_scales():
    """A QFloat of negative scales (a Rescaling by a negative factor) takes the minimum of its
    values: the maximum of the real values, in Keras and in ONNX."""
    inputs = keras.Input((5, 5, 2), name="inp")
    y = L.Rescaling(-1 / 255, name="pre")(inputs)
    y = L.GlobalMaxPooling2D(name="gmp")(y)
    y = L.Dense(3, name="dense")(y)
    x = np.round(_samples((5, 5, 2), low=0, high=255))
    qmodel = _quantize(keras.Model(inputs, y), x)
    probe = keras.Model(qmodel.inputs, qmodel.get_layer("gmp").input)(x)
    assert np.all(probe.scales.numpy() < 0)
    _check(qmodel, x)


def test_export_application_max_pooling():
    """An application built with ``include_top=False, pooling="max"`` quantizes whole (no
    float island) and exports bit-exactly, in both forms."""
    model = keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None,
                                         include_top=False, pooling="max")
    x = _samples((32, 32, 3), n=8)
    qmodel = _quantize(model, x)
    # (quantize() moves the last ReLU after the pooling: a max commutes with it)
    assert any(type(layer).__name__ == "QuantizedGlobalMaxPooling2D" for layer in qmodel.layers)
    assert not float_islands(qmodel)
    _check(qmodel, x)
    proto = export(qmodel, format="qdq")
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    floats = session.run(None, {session.get_inputs()[0].name: x})[0]
    dq = qmodel.layers[-1]
    step = 2.0 ** -np.asarray(keras.Model(qmodel.inputs, dq.input)(x).frac_bits)
    assert np.all(np.abs(floats - qmodel(x).numpy()) <= step + 1e-7)


# ---- coverage ---------------------------------------------------------------------------------
def test_every_twin_exports_or_is_listed():
    """Every registered twin names an emitter, or is in NOT_EXPORTABLE with a reason."""
    missing, stale = [], []
    for spec in twin_specs():
        name = spec.twin.__name__
        if spec.export is None and name not in NOT_EXPORTABLE:
            missing.append(name)
        if spec.export is not None:
            assert spec.export in EMITTERS, (name, spec.export)
            if name in NOT_EXPORTABLE:
                stale.append(name)
    assert not missing, f"twins without export and not in NOT_EXPORTABLE: {missing}"
    assert not stale, f"NOT_EXPORTABLE lists exportable twins: {stale}"


@pytest.mark.parametrize("qparams", [None, QuantizationParams(per_tensor_activations=True)],
                         ids=["default", "per-tensor"])
def test_export_batchnorm(qparams):
    """A BatchNormalization after a Concatenate (not foldable, DenseNet): ``x * a + b``."""
    inputs = keras.Input((6, 6, 3), name="inp")
    a = L.Conv2D(4, 3, bias_initializer="random_normal", name="a")(inputs)
    c = L.ReLU(name="relu")(L.Conv2D(3, 3, name="c")(inputs))
    y = L.Concatenate(name="cat")([a, c])
    bn = L.BatchNormalization(name="bn")
    y = bn(y)
    y = L.ReLU(name="relu2")(y)
    y = L.Conv2D(3, 1, name="out")(y)
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(3)
    bn.set_weights([rng.uniform(0.5, 2, 7), rng.normal(size=7), rng.normal(size=7),
                    rng.uniform(0.2, 3, 7)])
    x = _samples((6, 6, 3))
    qmodel = _quantize(model, x, qparams=qparams)
    assert type(qmodel.get_layer("bn")).__name__ == "QuantizedBatchNormalization"
    _check(qmodel, x)


def test_export_relu_huge_max_value():
    """ReLU(max_value=1e30): the bound ``floor(max_value * 2^f)`` is beyond int64; it is capped
    at the input range (where it cannot clip) instead of overflowing."""
    inputs = keras.Input((6, 6, 3), name="inp")
    y = L.Conv2D(4, 3, bias_initializer="random_normal", name="conv")(inputs)
    y = L.ReLU(1e30, name="relu")(y)
    y = L.Conv2D(3, 1, name="out")(y)
    x = _samples((6, 6, 3), n=8, low=-8, high=8)
    _check(_quantize(keras.Model(inputs, y), x), x)
