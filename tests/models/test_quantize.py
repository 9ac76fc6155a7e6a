"""quantize() end to end: the reference digits CNN, save/load, q_config, errors."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.demo import accuracy
from quantizeml.layers import (Dequantizer, InputQuantizer, OutputQuantizer, QuantizedConv2D,
                               QuantizedReLU)
from quantizeml.models import (QuantizationParams, calibration_required, check_quantization,
                               dump_config, load_model, quantization, quantize,
                               record_quantization_variables)
from quantizeml.models.transforms import sanitize
from quantizeml.models.zoo import load_digits_data, train_digits_cnn
from tests.utils import check_save_load

QP44 = QuantizationParams(activation_bits=4, weight_bits=4, output_bits=4, input_weight_bits=4)


@pytest.fixture(scope="module")
def digits():
    keras.backend.clear_session()
    model, float_acc = train_digits_cnn(epochs=10, seed=0)
    return load_digits_data(), sanitize(model), float_acc


@pytest.fixture(scope="module")
def q8(digits):
    (x_train, _, _, _), model, _ = digits
    return quantize(model, samples=x_train, num_samples=len(x_train))


def test_digits_8bit_ptq_within_0_2_points(digits, q8):
    (_, _, x_test, y_test), model, float_acc = digits
    assert float_acc > 0.95
    q_acc = accuracy(q8, x_test, y_test)
    assert q_acc >= float_acc - 0.002, (q_acc, float_acc)


def test_quantized_model_structure(q8):
    names = [type(layer).__name__ for layer in q8.layers]
    assert names[1] == "InputQuantizer" and names[-1] == "Dequantizer"
    assert all(not n.startswith(("Conv2D", "Dense", "ReLU")) for n in names)
    relus = [layer for layer in q8.layers if isinstance(layer, QuantizedReLU)]
    assert relus and all(r.out_quantizer is not None and not r.out_quantizer.signed
                         for r in relus)
    # convolutions followed by a ReLU leave the requantization to the ReLU
    convs = [layer for layer in q8.layers if isinstance(layer, QuantizedConv2D)]
    assert all(c.out_quantizer is None for c in convs)
    assert not calibration_required(q8)


def test_quantize_does_not_modify_float_model(digits):
    (x_train, _, _, _), model, _ = digits
    before = [w.copy() for w in model.get_weights()]
    quantize(model, samples=x_train[:64], num_samples=64)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_digits_4bit_ptq_and_qat(digits):
    (x_train, y_train, x_test, y_test), model, float_acc = digits
    q4 = quantize(model, qparams=QP44, samples=x_train, num_samples=len(x_train))
    ptq = accuracy(q4, x_test, y_test)
    assert ptq >= float_acc - 0.005, (ptq, float_acc)  # at most 0.5 points lost
    keras.utils.set_random_seed(0)
    steps = 3 * int(np.ceil(len(x_train) / 32))
    q4.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-4,
                                                                                     steps)),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = q4.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    qat = accuracy(q4, x_test, y_test)
    assert np.all(np.isfinite(history.history["loss"]))
    # with clipped 4-bit weight ranges PTQ already reaches the float accuracy here; a short QAT
    # keeps it within a few of the 540 test digits (benchmarks/quality.py: float +- 2 digits
    # over seeds), and a broken QAT (gradients, ranges) loses far more
    assert qat >= float_acc - 0.01, (qat, float_acc)


def test_dump_config_reproduces_model(digits, q8):
    (x_train, _, x_test, _), model, _ = digits
    config = dump_config(q8)
    json.dumps(config)
    again = quantize(model, q_config=config, samples=x_train, num_samples=len(x_train))
    assert dump_config(again) == config
    np.testing.assert_array_equal(again.predict(x_test, verbose=0), q8.predict(x_test, verbose=0))


def test_q_config_wins_over_qparams(digits):
    (x_train, _, _, _), model, _ = digits
    conv = model.layers[1].name
    q_config = {conv: {"weight_quantizer": {"bitwidth": 3}, "buffer_bitwidth": 32}}
    q = quantize(model, q_config=q_config, qparams=QuantizationParams(weight_bits=6),
                 samples=x_train[:64], num_samples=64)
    assert q.get_layer(conv).weight_quantizer.bitwidth == 3
    others = [layer for layer in q.layers if hasattr(layer, "weight_quantizer")
              and layer.name != conv]
    assert others and all(layer.weight_quantizer.bitwidth == 6 for layer in others)


def test_input_weight_bits_for_first_layer(digits):
    (x_train, _, _, _), model, _ = digits
    q = quantize(model, qparams=QuantizationParams(input_weight_bits=5, weight_bits=7),
                 samples=x_train[:32], num_samples=32)
    weighted = [layer for layer in q.layers if hasattr(layer, "weight_quantizer")]
    assert weighted[0].weight_quantizer.bitwidth == 5
    assert {layer.weight_quantizer.bitwidth for layer in weighted[1:]} == {7}


@pytest.mark.parametrize("bits, expected", [
    (dict(activation_bits=3, weight_bits=3, output_bits=3), 8),  # first layer 8-bit: inputs too
    (dict(activation_bits=4, weight_bits=4, output_bits=4, input_weight_bits=4), 4),
    (dict(activation_bits=8, input_weight_bits=4), 8),
    (dict(activation_bits=6, weight_bits=16, input_weight_bits=16, output_bits=6), 8)])
def test_input_quantizer_bits(digits, bits, expected):
    """Model inputs are quantized on max(activation_bits, min(input_weight_bits, 8)); the 3-bit
    activations stay 3-bit; the quantized inputs equal a numpy rounding on their grid."""
    (x_train, _, x_test, _), model, _ = digits
    q = quantize(model, qparams=QuantizationParams(**bits), samples=x_train[:64],
                 num_samples=64)
    iq = [layer for layer in q.layers if isinstance(layer, InputQuantizer)]
    assert [layer.bitwidth for layer in iq] == [expected]
    relus = [layer for layer in q.layers if isinstance(layer, QuantizedReLU)]
    assert {r.out_quantizer.bitwidth for r in relus} == {bits["activation_bits"]}
    # the digits are k/16 in [0, 1]: on 8 bits they are within one 2^-8 step (1.0 clips to
    # 255/256), on 3 or 4 bits half of the 17 gray levels merge
    x = x_test[:16]
    y = iq[0](x).to_float().numpy()
    frac = float(np.max(iq[0].frac_bits))
    reference = np.clip(np.floor(x * 2.0**frac + 0.5), 0, 2**expected - 1) / 2.0**frac
    np.testing.assert_array_equal(y, reference)
    if expected == 8:
        assert np.max(np.abs(y - x)) <= 2.0**-8


def test_quantization_context(digits):
    (x_train, _, _, _), model, _ = digits
    with quantization(QuantizationParams(weight_bits=4, input_weight_bits=4)):
        q = quantize(model, samples=x_train[:32], num_samples=32)
    assert {layer.weight_quantizer.bitwidth for layer in q.layers
            if hasattr(layer, "weight_quantizer")} == {4}


def test_requantize_quantized_model(digits, q8):
    (x_train, _, x_test, _), _, _ = digits
    config = dump_config(q8)
    first = [name for name, c in config.items() if "weight_quantizer" in c][0]
    config[first]["weight_quantizer"]["bitwidth"] = 4
    q = quantize(q8, q_config=config, samples=x_train, num_samples=len(x_train))
    assert q.get_layer(first).weight_quantizer.bitwidth == 4
    assert type(q.layers[-1]) is Dequantizer and sum(
        isinstance(layer, Dequantizer) for layer in q.layers) == 1
    with pytest.raises(ValueError, match="q_config entry for every quantized layer"):
        quantize(q8, q_config={first: config[first]}, samples=x_train[:8], num_samples=8)


@pytest.mark.parametrize("kind", ["array", "dataset", "batched-dataset", "generator"])
def test_calibration_sample_kinds(digits, q8, kind):
    (x_train, y_train, _, _), model, _ = digits
    x = x_train[:96]
    samples = {"array": x,
               "dataset": tf.data.Dataset.from_tensor_slices(x),
               "batched-dataset": tf.data.Dataset.from_tensor_slices((x, y_train[:96])).batch(32),
               "generator": (x[i:i + 32] for i in range(0, 96, 32))}[kind]
    q = quantize(model, samples=samples, num_samples=96)
    reference = quantize(model, samples=x, num_samples=96, batch_size=32)
    for a, b in zip(q.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_random_samples_calibration(digits):
    _, model, _ = digits
    q = quantize(model, num_samples=64)
    assert not calibration_required(q)


@pytest.mark.parametrize("bad,match", [
    (np.full((8, 8, 8, 1), np.nan, np.float32), "finite"),
    (np.full((8, 8, 8, 1), np.inf, np.float32), "finite"),
    (np.zeros((8, 7, 8, 1), np.float32), "shape"),
    (np.zeros((0, 8, 8, 1), np.float32), "at least one sample"),
    (tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 1), np.float32)),
     "at least one sample"),
], ids=["nan", "inf", "shape", "empty", "empty-dataset"])
def test_bad_samples(digits, bad, match):
    _, model, _ = digits
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=match):
        quantize(model, samples=bad)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field", ["activation_bits", "weight_bits", "buffer_bits"])
@pytest.mark.parametrize("value", [0, 33, 2.5])
def test_invalid_bitwidths(field, value):
    with pytest.raises(ValueError, match=field):
        QuantizationParams(**{field: value})


def test_unsupported_layers_listed_together():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.Lambda(lambda t: t * t, name="square")(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.UpSampling2D(name="up", interpolation="bicubic")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3)(x)
    model = keras.Model(inp, out)
    with pytest.raises(ValueError) as info:
        quantize(model, num_samples=8)
    message = str(info.value)
    # (LeakyReLU and nearest / bilinear UpSampling2D have twins now: a Lambda and a bicubic
    # upsampling have none)
    assert "square (Lambda)" in message and "up (UpSampling2D" in message
    assert "'float'" in message  # the float-island switch


def test_float_tail_is_kept_after_dequantizer():
    inp = keras.Input((6,))
    x = keras.layers.Dense(5)(inp)
    out = keras.layers.Softmax(name="softmax")(x)
    model = keras.Model(inp, out)
    data = np.random.uniform(-1, 1, (64, 6)).astype(np.float32)
    q = quantize(model, samples=data, num_samples=64)
    assert type(q.get_layer("softmax")) is keras.layers.Softmax
    probs = q.predict(data, verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, model.predict(data, verbose=0), atol=0.02)


def test_q_config_unknown_layer():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    with pytest.raises(ValueError, match="unknown layer names \\['nope'\\]"):
        quantize(model, q_config={"nope": {}}, num_samples=8)


def test_subclassed_model_rejected():
    class Net(keras.Model):
        def call(self, x):
            return x
    with pytest.raises(ValueError, match="subclassed"):
        quantize(Net(), num_samples=8)


@pytest.mark.slow
def test_save_reload_bit_identical(digits, q8, tmp_path):
    (_, _, x_test, _), _, _ = digits
    check_save_load(q8, x_test[:16])
    # SavedModel serving signature through tf.saved_model.load
    path = os.path.join(tmp_path, "sm")
    q8.save(path)
    served = tf.saved_model.load(path)
    fn = served.signatures["serving_default"]
    out = list(fn(tf.constant(x_test[:16])).values())[0].numpy()
    np.testing.assert_array_equal(out, q8(x_test[:16]).numpy())
    reloaded = load_model(path)
    np.testing.assert_array_equal(reloaded(x_test[:16]).numpy(), q8(x_test[:16]).numpy())


def test_check_quantization_reports_saturation(digits, q8):
    (_, _, x_test, _), _, _ = digits
    assert not [i for i in check_quantization(q8, samples=x_test[:32]) if "relu" in i]
    # tighten a calibrated range: the layer saturates and is reported by name
    relu = [layer for layer in q8.layers if isinstance(layer, QuantizedReLU)][0]
    saved = relu.out_quantizer.range_max.numpy()
    try:
        relu.out_quantizer.range_max.assign(saved / 16)
        issues = check_quantization(q8, samples=x_test[:32])
        assert any(relu.name in i and "saturation" in i for i in issues), issues
    finally:
        relu.out_quantizer.range_max.assign(saved)


def test_record_quantization_variables(digits, q8):
    (_, _, x_test, _), _, _ = digits
    expected = q8(x_test[:8]).numpy()
    record_quantization_variables(q8)
    conv = [layer for layer in q8.layers if isinstance(layer, QuantizedConv2D)][0]
    assert conv.weight_quantizer.qweights.value is not None
    np.testing.assert_array_equal(q8(x_test[:8]).numpy(), expected)
    q8(x_test[:8], training=True)  # a training call drops the records
    assert conv.weight_quantizer.qweights.value is None


def test_calibration_required_on_uncalibrated():
    inp = keras.Input((4,))
    iq = InputQuantizer()
    oq = OutputQuantizer()
    model = keras.Model(inp, Dequantizer()(oq(iq(inp))))
    assert calibration_required(model)


@pytest.mark.slow
@pytest.mark.parametrize("builder,kwargs", [
    (keras.applications.MobileNet, {"alpha": 0.25}),
    (keras.applications.MobileNetV2, {"alpha": 0.35}),
], ids=["mobilenet", "mobilenet_v2"])
def test_mobilenets_quantize_after_sanitize(builder, kwargs):
    model = builder(input_shape=(96, 96, 3), weights=None, **kwargs)
    sane = sanitize(model)
    data = np.random.default_rng(0).uniform(0, 1, (8, 96, 96, 3)).astype(np.float32)
    q = quantize(sane, samples=data, num_samples=8, batch_size=8)
    assert not calibration_required(q)
    out = q.predict(data, verbose=0)
    assert out.shape == (8, 1000) and np.all(np.isfinite(out))


def test_bias_correction_removes_mean_shift(digits):
    (x_train, _, _, _), model, _ = digits
    from quantizeml.models.bias_correction import correct_biases
    q4 = quantize(model, qparams=QP44, samples=x_train[:256], num_samples=256)
    name = [layer.name for layer in q4.layers if hasattr(layer, "weight_quantizer")][0]
    x = x_train[:256]
    ref = keras.Model(model.inputs, model.get_layer(name).output)(x).numpy()
    part = keras.Model(q4.inputs, q4.get_layer(name).output)

    def mean_shift():
        return np.abs((part(x).to_float().numpy() - ref).reshape(-1, ref.shape[-1]).mean(0))
    # the bias lives on the accumulator grid: what is left is the rounding of the corrected
    # bias against the rounding of the old one, at most one step
    acc = part(x[:1])
    step = acc.scales.numpy() * 2.0**-acc.frac_bits.numpy() * (1 + 1e-4)
    assert np.all(mean_shift() <= step)
    bias = q4.get_layer(name).bias
    bias.assign(bias + 0.1)
    assert np.all(mean_shift() > 0.05)
    batches = [[x[i:i + 64]] for i in range(0, 256, 64)]
    assert name in correct_biases(model, q4, batches)
    assert np.all(mean_shift() <= step)


def test_check_quantization_reads_depthwise_scales(digits, q8):
    from quantizeml.layers import QuantizedDepthwiseConv2D
    dw = [layer for layer in q8.layers if isinstance(layer, QuantizedDepthwiseConv2D)][0]
    kernel = dw.depthwise_kernel.numpy()
    try:
        # one near-dead channel: its scale is far below the others but still representable;
        # a channel of zeros gets scale 1 and no report
        dw.depthwise_kernel.assign(kernel * np.array([1e-38] + [1.0] * (kernel.shape[2] - 1),
                                                     np.float32)[None, None, :, None])
        issues = check_quantization(q8)
        assert any(dw.name in i and "too small" in i for i in issues), issues
    finally:
        dw.depthwise_kernel.assign(kernel)


def test_copied_weights_draw_no_random_initial_values(monkeypatch):
    """The quantized layers build with zero initializers where their float weights are copied
    in right after (random draws cost about 1 s per 100 M weights); the result is the same."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, kernel_initializer="glorot_uniform")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5, kernel_initializer="he_normal",
                                 bias_initializer="random_normal")(x)
    model = keras.Model(inputs, outputs)
    samples = np.random.default_rng(3).uniform(0, 1, (16, 6, 6, 3)).astype(np.float32)
    expected = quantize(model, samples=samples, batch_size=16)(samples).numpy()
    draws = []

    def counting(self, *args, **kwargs):
        draws.append(type(self).__name__)
        return original(self, *args, **kwargs)
    original = keras.initializers.VarianceScaling.__call__
    monkeypatch.setattr(keras.initializers.VarianceScaling, "__call__", counting)
    monkeypatch.setattr(keras.initializers.RandomNormal, "__call__", counting)
    qmodel = quantize(model, samples=samples, batch_size=16)
    assert draws == []
    np.testing.assert_array_equal(qmodel(samples).numpy(), expected)
    # the quantized layers' configs keep the float initializers
    assert qmodel.get_layer(model.layers[-1].name).get_config()["kernel_initializer"][
        "class_name"] == "HeNormal"


@pytest.mark.parametrize("layer_fn", [lambda: keras.layers.Conv2D(4, 3, name="conv"),
                                      lambda: keras.layers.Dense(3, name="dense")],
                         ids=["conv", "dense"])
def test_sequential_needing_no_transform(layer_fn):
    """A Sequential model that sanitize leaves as it is (one Conv2D or Dense): its InputLayer
    is not in ``model.layers``; quantize() still finds the consumers of its input."""
    x = np.random.default_rng(0).uniform(-1, 1, (16, 6, 6, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((6, 6, 1)), layer_fn()])
    assert not any(isinstance(layer, keras.layers.InputLayer) for layer in model.layers)
    qmodel = quantize(model, samples=x)
    y, yq = model(x).numpy(), qmodel(x).numpy()
    assert 10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2)) > 30


def test_bias_correction_streamed_equals_sequential(monkeypatch):
    """Beyond SEQUENTIAL_MAX_LAYERS corrected layers, the correction is streamed node by node:
    the same sequential semantics (each layer measured after the corrections before it) in
    linear time. A 6-layer chain at 4 bits (the threshold lowered to 3): the streamed biases
    are those of the sequential form (to float rounding), and both remove the mean shift."""
    import quantizeml.models.bias_correction as bc
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = inputs
    for i in range(6):
        x = keras.layers.Conv2D(6, 3, padding="same", bias_initializer="random_normal",
                                name=f"c{i}")(x)
        x = keras.layers.ReLU(name=f"r{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(x))
    samples = np.random.default_rng(0).uniform(-1, 1, (48, 6, 6, 3)).astype(np.float32)
    qparams = QuantizationParams(weight_bits=4, input_weight_bits=4)

    def biases(sequential_max):
        monkeypatch.setattr(bc, "SEQUENTIAL_MAX_LAYERS", sequential_max)
        calls = []
        monkeypatch.setattr(bc, "_correct_streamed",
                            lambda *a: calls.append(1) or _STREAMED(*a))
        q = quantize(model, qparams=qparams, samples=samples, batch_size=16)
        assert bool(calls) == (sequential_max < 6)
        return q, [q.get_layer(f"c{i}").bias.numpy() for i in range(6)]

    _STREAMED = bc._correct_streamed
    q_seq, seq = biases(100)
    q_str, streamed = biases(3)
    for a, b in zip(seq, streamed):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    float_last = keras.Model(model.inputs, model.get_layer("c5").output)(samples).numpy()
    for q in (q_seq, q_str):
        last = keras.Model(q.inputs, q.get_layer("c5").output)(samples).to_float().numpy()
        shift = np.abs((last - float_last).reshape(-1, 6).mean(0))
        assert np.all(shift < 0.05 * np.abs(float_last).mean())


def test_block_ends_of_nonnegative_values_get_unsigned_output_quantizers():
    """Averages, sums, products, maxima and concatenations of ReLU (or sigmoid) outputs are
    >= 0: their OutputQuantizers are unsigned (all their levels used); anything that can be
    negative stays signed. The model stays close to the float one at 4 bits."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = L.ReLU(name="relu_a")(L.Conv2D(8, 3, padding="same", name="conv_a")(inputs))
    b = L.ReLU(name="relu_b")(L.Conv2D(8, 3, padding="same", name="conv_b")(inputs))
    c = L.Conv2D(8, 3, padding="same", name="conv_c")(inputs)
    s = L.Activation("sigmoid", name="sig")(L.Conv2D(8, 1, name="conv_s")(a))
    added = L.Add(name="add_pos")([a, b])
    mixed = L.Add(name="add_mixed")([a, c])
    gated = L.Multiply(name="mul_pos")([added, s])
    larger = L.Maximum(name="max_pos")([mixed, b])
    pooled = L.AveragePooling2D(2, name="avg_pos")(gated)
    cat = L.Concatenate(name="cat_pos")([pooled, L.MaxPooling2D(2)(larger)])
    heads = [L.GlobalAveragePooling2D(name="gap_pos")(cat),
             L.GlobalAveragePooling2D(name="gap_mixed")(mixed)]
    model = keras.Model(inputs, L.Dense(4, name="out")(L.Concatenate(name="cat")(heads)))
    x = np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 3)).astype(np.float32)
    qparams = QuantizationParams(weight_bits=4, activation_bits=4, output_bits=4,
                                 input_weight_bits=8)
    qmodel = quantize(model, qparams=qparams, samples=x[:48])
    unsigned = {"sig", "add_pos", "mul_pos", "max_pos", "avg_pos", "gap_pos"}
    signed = {"add_mixed", "gap_mixed"}
    for name in unsigned | signed:
        quantizer = qmodel.get_layer(name).out_quantizer
        assert quantizer is not None and quantizer.signed == (name in signed), name
    y, yq = model(x[48:]).numpy(), qmodel(x[48:]).numpy()
    assert 10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2)) > 12
