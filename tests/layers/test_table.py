"""Lookup-table activations (quantizeml.layers.table): integer tables against numpy float64
references, eager == traced == SavedModel, QAT gradients, quantize() end to end."""
import numpy as np
import pytest
import scipy.special
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers import eager_layer_calls
from quantizeml.layers.registry import twin_spec
from quantizeml.layers.table import (DEFAULT_OUTPUT_VALUE_BITS, MAX_TABLE_VALUE_BITS,
                                     QuantizedActivation, QuantizedELU, QuantizedLeakyReLU,
                                     QuantizedPReLU, QuantizedTableReLU, TableReLU, build_table,
                                     absolute, gelu_approximate, hard_swish, lookup)
from quantizeml.models import QuantizationParams, quantize
from quantizeml.tensors import FixedPoint, QFloat
from tests.layers.references import frac, ints, quantize_scales
from tests.utils import (check_config_roundtrip, check_save_load, check_signature_parity,
                         to_numpy)

L = keras.layers


# ---- numpy float64 references -------------------------------------------------------------------
def _sigmoid(x):
    return scipy.special.expit(x)


def _softplus(x):
    return np.logaddexp(0.0, x)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
NP_FUNCTIONS = {
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "swish": lambda x: x * _sigmoid(x),
    "hard_swish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hard_sigmoid_relu6": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "gelu": lambda x: 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0))),
    "gelu_approximate": lambda x: 0.5 * x * (1.0 + np.tanh(
        np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)),
    "softplus": _softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "exponential": np.exp,
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "abs": np.abs,
}
#: the Keras activation argument of each (hard_swish, gelu_approximate: quantizeml functions)
KERAS_ACTIVATIONS = {**{name: name for name in NP_FUNCTIONS},
                     "hard_swish": hard_swish, "gelu_approximate": gelu_approximate,
                     "abs": absolute,
                     "hard_sigmoid_relu6": "quantizeml>hard_sigmoid_relu6"}


def _keras_activation(name):
    """The Keras activation argument; skips a quantizeml function not registered here (the
    MobileNetV3 hard sigmoid comes with the fuse_hard_swish transform)."""
    activation = KERAS_ACTIVATIONS[name]
    if isinstance(activation, str) and activation.startswith("quantizeml>") \
            and keras.saving.get_registered_object(activation) is None:
        pytest.skip(f"{activation} is not registered")
    return activation


def _round_half_up(v):
    floored = np.floor(v)
    return floored + (v - floored >= 0.5)


def _ceil_log2(v):
    """ceil(log2(v)) of float32 values, exactly (as FixedPoint.max_frac_bits)."""
    mantissa, exponent = np.frexp(np.maximum(np.asarray(v, np.float32), np.float32(2.0**-126)))
    return np.where(mantissa == 0.5, exponent - 1, exponent).astype(np.int64)


def np_table(fn, value_bits, frac_bits, out_frac_bits=None,
             out_value_bits=DEFAULT_OUTPUT_VALUE_BITS, signed=True, scales=None):
    """The table in numpy float64: ``(table (rows, channels) int64, out_frac_bits)``."""
    ints_ = np.arange(-2**value_bits, 2**value_bits, dtype=np.float64)
    step = 2.0**-np.atleast_1d(np.asarray(frac_bits, np.float64))
    if scales is not None:
        step = step * np.atleast_1d(np.asarray(scales, np.float64))
    y = fn(ints_[:, None] * step[None, :])
    if out_frac_bits is None:
        peak = np.max(np.abs(y), axis=0).astype(np.float32)
        out_frac_bits = np.where(peak > 0, out_value_bits - _ceil_log2(peak), out_value_bits)
    out_frac_bits = np.asarray(out_frac_bits, np.int64)
    table = _round_half_up(y * 2.0**np.atleast_1d(out_frac_bits).astype(np.float64))
    low = -2.0**out_value_bits if signed else 0.0
    return np.clip(table, low, 2.0**out_value_bits - 1).astype(np.int64), out_frac_bits


def np_lookup(table, values, value_bits):
    """``table[x + 2^vb, channel]`` (one table broadcast on every channel)."""
    rows = np.asarray(values, np.int64) + 2**value_bits
    channels = np.broadcast_to(np.arange(values.shape[-1]) % table.shape[1], values.shape)
    return table[rows, channels]


def _layer_function(layer):
    """The numpy function of a table twin, per channel (PReLU: its slopes on the last axis)."""
    if isinstance(layer, QuantizedActivation):
        return NP_FUNCTIONS[layer.activation_name]
    if isinstance(layer, QuantizedLeakyReLU):
        alpha = float(layer.alpha)
        return lambda x: np.where(x >= 0, x, alpha * x)
    if isinstance(layer, QuantizedELU):
        alpha = float(layer.alpha)
        return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if isinstance(layer, QuantizedTableReLU):
        # keras' ReLU: x above the threshold (at most max_value), slope * (x - t) below
        slope, top, t = float(layer.negative_slope), layer.max_value, float(layer.threshold)

        def relu(x):
            y = np.where(x > t, x, 0.0) if t else np.maximum(x, 0.0)
            y = y if top is None else np.minimum(y, float(top))
            return y - slope * np.maximum(t - x, 0.0)
        return relu
    alpha = np.asarray(layer.alpha.numpy(), np.float64).reshape(-1)
    return lambda x: np.maximum(x, 0) - alpha * np.maximum(-x, 0)


def table_reference(layer, x):
    """The integer outputs of a table twin in numpy: ``(values, frac_bits)`` (a REFERENCES
    entry of tests/layers/test_twins.py). PReLU slopes must vary along the last axis only."""
    values, value_bits, frac_bits, scales = ints(x), x.value_bits, frac(x), None
    if isinstance(x, QFloat):
        s_int, s_frac = quantize_scales(np.asarray(x.scales), layer.scale_bits)
        scales = s_int * 2.0**-s_frac.astype(np.float64)
    oq = layer.out_quantizer
    if oq is None:
        table, out_frac = np_table(_layer_function(layer), value_bits, frac_bits, scales=scales)
    else:
        table, out_frac = np_table(_layer_function(layer), value_bits, frac_bits, frac(oq),
                                   oq.value_bits, oq.signed, scales)
    return np_lookup(table, values, value_bits), out_frac


# ---- inputs --------------------------------------------------------------------------------------
def _all_integers(value_bits, channels, batch=2):
    """Every integer of ``value_bits`` on every channel (plus random ones)."""
    n = 2**(value_bits + 1)
    grid = np.arange(-2**value_bits, 2**value_bits, dtype=np.float32)
    rng = np.random.default_rng(0)
    extra = rng.integers(-2**value_bits, 2**value_bits, size=(batch, 3, channels))
    values = np.concatenate([np.broadcast_to(grid[None, :, None], (batch, n, channels)),
                             extra.astype(np.float32)], axis=1)
    return values


def _input(kind, value_bits=7, channels=4):
    values = tf.constant(_all_integers(value_bits, channels))
    if kind == "per-tensor":
        return FixedPoint(values, value_bits, tf.constant(5.0))
    if kind == "per-axis":
        return FixedPoint(values, value_bits, tf.constant([3.0, 4.0, 5.0, 6.0][:channels]))
    scales = [0.3, 0.11, 0.7, 0.052][:channels] if kind == "qfloat-per-axis" else 0.37
    return QFloat(FixedPoint(values, value_bits, tf.constant(4.0)), tf.constant(scales))


def _with_oq(layer_cls, *args, bits=8, signed=True, axis="per-tensor", **kwargs):
    config = {"output_quantizer": {"bitwidth": bits, "signed": signed, "axis": axis}}
    return layer_cls(*args, quant_config=config, **kwargs)


def _calibrated(layer, x, range_max):
    """Calls the layer once (builds it), sets its output quantizer's range."""
    layer(x)
    if layer.out_quantizer is not None and range_max is not None:
        shape = layer.out_quantizer.range_max.shape
        layer.out_quantizer.range_max.assign(np.broadcast_to(range_max, shape).astype("f4"))
    return layer


def _check_layer(layer, x):
    with eager_layer_calls():
        out = layer(x)
    values, frac_bits = table_reference(layer, x)
    np.testing.assert_array_equal(ints(out), values)
    channels = out.shape[-1:]
    np.testing.assert_array_equal(np.broadcast_to(frac(out), channels),
                                  np.broadcast_to(frac_bits, channels))
    traced = tf.function(lambda t: layer(t))(x)
    np.testing.assert_array_equal(ints(traced), ints(out))
    return out


INPUT_KINDS = ["per-tensor", "per-axis", "qfloat-per-tensor", "qfloat-per-axis"]


# ---- the tables ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("name", sorted(NP_FUNCTIONS))
def test_activation_table_matches_numpy(name, kind):
    """Every entry of every table equals the numpy float64 function rounded half up onto the
    output quantizer's grid (signed 8-bit, per-axis ranges) and clipped."""
    layer = _with_oq(QuantizedActivation, _keras_activation(name), axis="per-axis")
    x = _input(kind)
    _calibrated(layer, x, np.array([0.9, 3.0, 7.0, 0.2]))
    out = _check_layer(layer, x)
    assert out.value_bits == 7


@pytest.mark.parametrize("name", ["sigmoid", "gelu", "exponential", "softsign"])
def test_default_grid_without_output_quantizer(name):
    """A model output: 15 value bits, frac bits from max |f| on the input interval."""
    layer = QuantizedActivation(_keras_activation(name))
    x = _input("per-axis")
    out = _check_layer(layer, x)
    assert out.value_bits == DEFAULT_OUTPUT_VALUE_BITS
    # the grid holds the function's peak without clipping (below the largest integer)
    assert np.max(np.abs(ints(out))) <= 2**DEFAULT_OUTPUT_VALUE_BITS


def test_unsigned_output_quantizer():
    layer = _with_oq(QuantizedActivation, "sigmoid", signed=False)
    x = _input("per-tensor")
    _calibrated(layer, x, 0.5)  # frac_bits 9: sigmoid above 255/512 clips to 255
    out = _check_layer(layer, x)
    assert ints(out).min() >= 0 and ints(out).max() == 255


def test_four_bit_input_has_a_16_entry_table():
    layer = _with_oq(QuantizedActivation, "tanh")
    x = FixedPoint(tf.constant(np.arange(-8, 8, dtype=np.float32).reshape(1, 16, 1)), 3,
                   tf.constant(2.0))
    _calibrated(layer, x, 1.0)
    table, out_frac, out_bits, _ = layer.table(3, tf.constant(2.0))
    assert table.shape == (16,)
    expected, _ = np_table(np.tanh, 3, 2, 7, 7)
    np.testing.assert_array_equal(table.numpy().astype(np.int64), expected[:, 0])
    _check_layer(layer, x)


def test_build_table_and_lookup_functions():
    """The plain functions, per channel: table (rows, C) and the flat-index lookup."""
    frac_bits = tf.constant([2.0, 5.0, 7.0])
    table, out_frac = build_table(tf.math.sigmoid, 7, frac_bits, tf.constant([7.0, 6.0, 8.0]),
                                  8, signed=False, table_shape=(3,))
    expected, _ = np_table(_sigmoid, 7, [2, 5, 7], [7, 6, 8], 8, signed=False)
    np.testing.assert_array_equal(table.numpy().astype(np.int64), expected)
    values = _all_integers(7, 3)
    np.testing.assert_array_equal(lookup(table, tf.constant(values), 7).numpy(),
                                  np_lookup(expected, values, 7))


def test_leaky_relu_table():
    layer = _with_oq(QuantizedLeakyReLU, 0.1, axis="per-axis")
    x = _input("per-axis")
    _calibrated(layer, x, np.array([1.0, 2.0, 4.0, 8.0]))
    _check_layer(layer, x)
    _check_layer(QuantizedLeakyReLU(0.2), _input("qfloat-per-tensor"))


TABLE_RELUS = {"slope-max": dict(max_value=6.0, negative_slope=0.1),
               "threshold": dict(threshold=0.5),
               "threshold-slope-max": dict(threshold=1.0, negative_slope=0.2, max_value=4.0)}


@pytest.mark.parametrize("kind", ["per-axis", "qfloat-per-tensor"])
@pytest.mark.parametrize("config", list(TABLE_RELUS))
def test_table_relu(config, kind):
    """ReLUs with a threshold, or a slope and a maximum: tables of keras' ReLU."""
    layer = _with_oq(QuantizedTableReLU, axis="per-axis", **TABLE_RELUS[config])
    x = _input(kind)
    _calibrated(layer, x, np.array([1.0, 2.0, 4.0, 8.0]))
    _check_layer(layer, x)
    _check_layer(QuantizedTableReLU(**TABLE_RELUS[config]), x)
    # the float layer they stand for is keras' ReLU itself
    y = np.linspace(-8, 8, 257).astype(np.float32)
    np.testing.assert_array_equal(TableReLU(**TABLE_RELUS[config])(y).numpy(),
                                  L.ReLU(**TABLE_RELUS[config])(y).numpy())


def test_quantize_table_relus_end_to_end():
    """quantize() turns them into tables (replace_leaky_relu -> TableReLU): all integer,
    bit-identical reload, ONNX bit-exact."""
    from tests.onnx_support.test_export_merging import check_export_bit_exact
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    y = L.ReLU(max_value=6.0, negative_slope=0.1, name="r1")(y)
    y = L.Conv2D(8, 3, padding="same", name="c2")(y)
    y = L.ReLU(threshold=0.1, name="r2")(y)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="out")(y))
    x = np.random.default_rng(0).uniform(-1, 1, (40, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x[:32])
    assert isinstance(qmodel.get_layer("r1"), QuantizedTableReLU)
    assert isinstance(qmodel.get_layer("r2"), QuantizedTableReLU)
    assert qmodel.get_layer("r1").out_quantizer.signed  # slope: negative values
    assert not qmodel.get_layer("r2").out_quantizer.signed
    assert _sqnr(model(x[32:]).numpy(), qmodel(x[32:]).numpy()) > 15
    check_save_load(qmodel, x[32:])
    check_export_bit_exact(qmodel, x[32:])


def test_prelu_tables_per_channel():
    layer = _with_oq(QuantizedPReLU, shared_axes=[1],
                        alpha_initializer=keras.initializers.RandomUniform(0.05, 0.5))
    x = _input("per-axis")
    _calibrated(layer, x, 4.0)
    assert tuple(layer.alpha.shape) == (1, 4)
    table, *_ = layer.table(7, x.frac_bits)
    assert table.shape == (256, 1, 4)
    _check_layer(layer, x)


def test_value_bits_and_activation_refusals():
    layer = QuantizedActivation("sigmoid", name="act")
    wide = FixedPoint(tf.zeros((1, 4)), MAX_TABLE_VALUE_BITS + 1, 4.0)
    with pytest.raises(ValueError, match=r"act \(QuantizedActivation\) expected inputs of at "
                                         r"most 12 value bits.*requantize.*value_bits=13"):
        layer(wide)
    for activation in ("softmax", lambda x: x):
        with pytest.raises(ValueError, match=r"QuantizedActivation\) expected an elementwise "
                                             r"activation"):
            QuantizedActivation(activation)
    spec = twin_spec(L.Activation("softmax"))
    assert "softmax" in spec.refusal(L.Activation("softmax"))
    assert spec.refusal(L.Activation("silu")) is None
    with pytest.raises(ValueError, match="PReLU\\(shared_axes"):
        big = QuantizedPReLU()
        big(FixedPoint(tf.zeros((1, 64, 64, 16)), 7, 4.0))


def test_config_roundtrip_and_signature():
    for layer in (QuantizedActivation("gelu", quant_config={"output_quantizer": {}}),
                  QuantizedActivation(hard_swish), QuantizedLeakyReLU(0.2),
                  QuantizedPReLU(shared_axes=[1, 2]),
                  QuantizedTableReLU(max_value=6.0, negative_slope=0.1, threshold=0.5)):
        clone = check_config_roundtrip(layer)
        assert getattr(clone, "activation_name", None) == getattr(layer, "activation_name", None)
    check_signature_parity(QuantizedActivation, L.Activation)
    check_signature_parity(QuantizedLeakyReLU, L.LeakyReLU)
    check_signature_parity(QuantizedPReLU, L.PReLU)
    check_signature_parity(QuantizedTableReLU, TableReLU)


# ---- models --------------------------------------------------------------------------------------
def _float_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, name="conv1")(inputs)
    x = L.Activation("swish", name="swish")(x)
    x = L.Conv2D(8, 3, name="conv2")(x)
    x = L.Activation("sigmoid", name="sigmoid")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(5, name="dense")(x)
    return keras.Model(inputs, outputs)


def _samples(n=64, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 12, 12, 3)).astype(np.float32)


def _sqnr(reference, quantized):
    noise = np.sum((reference - quantized) ** 2)
    return 10 * np.log10(np.sum(reference ** 2) / max(noise, 1e-30))


def test_quantize_swish_sigmoid_model_close_to_float(capsys):
    """Conv2D -> swish -> Conv2D -> sigmoid -> GAP -> Dense at 8/8: the tables get output
    quantizers, their producers too; outputs close to the float model."""
    model, x = _float_model(), _samples()
    qmodel = quantize(model, qparams=QuantizationParams(weight_bits=8, activation_bits=8,
                                                        output_bits=8), samples=x)
    for name, signed in (("swish", True), ("sigmoid", False)):
        layer = qmodel.get_layer(name)
        assert isinstance(layer, QuantizedActivation)
        # swish dips below zero; sigmoid's outputs are positive: an unsigned range
        assert layer.out_quantizer is not None and layer.out_quantizer.signed == signed
    assert not qmodel.get_layer("gap").out_quantizer.signed  # an average of sigmoids
    for name in ("conv1", "conv2"):
        assert qmodel.get_layer(name).out_quantizer is not None
    reference = model.predict(x, verbose=0)
    quantized = qmodel.predict(x, verbose=0)
    sqnr = _sqnr(reference, quantized)
    agreement = np.mean(np.argmax(reference, -1) == np.argmax(quantized, -1))
    with capsys.disabled():
        print(f"\n[table] 8/8 swish/sigmoid model: SQNR {sqnr:.1f} dB, "
              f"argmax agreement {agreement:.3f}")
    assert sqnr > 20 and agreement >= 0.9
    # eager op by op == traced == SavedModel (h5 too) reload, bit for bit
    with eager_layer_calls():
        eager = to_numpy(qmodel(x))
    np.testing.assert_array_equal(eager, to_numpy(tf.function(qmodel)(x)))
    np.testing.assert_array_equal(eager, quantized)
    check_save_load(qmodel, x)


def test_quantize_keeps_a_softmax_tail_float():
    inputs = keras.Input((8,))
    x = L.Dense(4, name="dense")(inputs)
    x = L.Activation("tanh", name="tanh")(x)
    y = L.Activation("softmax", name="softmax")(L.Dense(3, name="head")(x))
    qmodel = quantize(keras.Model(inputs, y), samples=np.random.default_rng(0).uniform(
        -1, 1, (32, 8)).astype(np.float32))
    assert isinstance(qmodel.get_layer("tanh"), QuantizedActivation)
    assert type(qmodel.get_layer("softmax")) is L.Activation


def test_qat_gradients_reach_the_producer_and_prelu_slopes():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.PReLU(shared_axes=[1, 2], name="prelu",
                alpha_initializer=keras.initializers.Constant(0.25))(x)
    x = L.Conv2D(3, 1, name="head")(x)
    model = keras.Model(inputs, L.Activation("gelu", name="gelu")(x))
    x = _samples(16)[:, :8, :8]
    qmodel = quantize(model, samples=x)
    conv = qmodel.get_layer("conv")
    prelu = qmodel.get_layer("prelu")
    head = qmodel.get_layer("head")
    variables = [conv.kernel, prelu.alpha, head.kernel]
    for step in (lambda f: f, tf.function):
        def loss_and_grads(t):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(qmodel(t, training=True) ** 2)
            return loss, tape.gradient(loss, variables)
        loss, grads = step(loss_and_grads)(x)
        for v, g in zip(variables, grads):
            assert g is not None, f"no gradient for {v.name}"
            assert float(tf.reduce_sum(tf.abs(g))) > 0, f"zero gradient for {v.name}"
        # the forward values under a tape are the table's (the straight-through term is 0)
        np.testing.assert_array_equal(to_numpy(qmodel(x, training=True)), to_numpy(qmodel(x)))
