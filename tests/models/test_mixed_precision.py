"""quantizeml.models.mixed_precision: weight bytes, per-layer sensitivity, bit allocation."""
import math

import numpy as np
import pytest
import tf_keras as keras

from quantizeml.demo import weight_sizes
from quantizeml.models import (QuantizationParams, dump_config, layer_sensitivity,
                               mixed_precision_config, quantize, weight_bytes)

QPARAMS = QuantizationParams(activation_bits=8, output_bits=8)


def _dense_model(fragile=False):
    """Dense(16) -> ReLU -> Dense(16) -> ReLU -> Dense(10); with ``fragile``, dense_2 has one
    huge weight per output channel on an input that is always zero: harmless in float, but at
    4 bits it rounds every other weight of dense_2 to 0."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), name="input")
    x = keras.layers.Dense(16, name="dense_1")(inputs)
    x = keras.layers.ReLU(name="relu_1")(x)
    x = keras.layers.Dense(16, name="dense_2")(x)
    x = keras.layers.ReLU(name="relu_2")(x)
    outputs = keras.layers.Dense(10, name="dense_3")(x)
    model = keras.Model(inputs, outputs)
    if fragile:
        # dense_1's channel 0 never fires (ReLU of a large negative bias)
        kernel, bias = model.get_layer("dense_1").get_weights()
        kernel[:, 0] = 0.0
        bias[0] = -1.0
        model.get_layer("dense_1").set_weights([kernel, bias])
        kernel, bias = model.get_layer("dense_2").get_weights()
        kernel[0, :] = 40.0 * np.abs(kernel).max()
        model.get_layer("dense_2").set_weights([kernel, bias])
    return model


def _samples(n=32):
    return np.random.RandomState(1).rand(n, 12).astype(np.float32)


def _conv_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2), name="input")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.SeparableConv2D(8, 3, name="sep")(x)
    x = keras.layers.ReLU(name="relu_2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, name="dense")(x)
    return keras.Model(inputs, outputs)


def test_weight_bytes_formula_and_demo_consistency():
    model = _conv_model()
    x = np.random.RandomState(0).rand(16, 6, 6, 2).astype(np.float32)
    for bits in (8, 4, 2):
        qparams = QuantizationParams(weight_bits=bits, input_weight_bits=bits)
        qmodel = quantize(model, qparams=qparams, samples=x, num_samples=len(x))
        sizes = weight_bytes(qmodel)
        # conv: 3*3*2*8 values, 8 scales; sep: dw (3,3,1,8) 8 scales + pw (1,1,8,8) 8 scales;
        # dense: 8*4 values, 4 scales
        expected = {"conv": math.ceil(144 * bits / 8) + 4 * 8,
                    "sep": math.ceil(72 * bits / 8) + 4 * 8 + math.ceil(64 * bits / 8) + 4 * 8,
                    "dense": math.ceil(32 * bits / 8) + 4 * 4}
        assert sizes == expected
        values = sum(sizes.values()) - 4 * (8 + 16 + 4)
        sizes_demo = weight_sizes(model)
        kernels = (sizes_demo["float32"] - sizes_demo["int8"]) // 3  # 4k + 4o - (k + 4o)
        others = sizes_demo["int8"] - kernels
        if bits == 8:
            assert values == kernels
        elif bits == 4:
            assert values == sizes_demo["int4_packed"] - others
    # a q_config prices other bitwidths on the same shapes
    config = dump_config(qmodel)
    config["conv"]["weight_quantizer"]["bitwidth"] = 8
    assert weight_bytes(qmodel, config)["conv"] == 144 + 32


def test_sensitivity_ranks_fragile_layer_first():
    model = _dense_model(fragile=True)
    x = _samples()
    table = layer_sensitivity(model, x, qparams=QPARAMS, low_bits=4)
    assert list(table)[0] == "dense_2", table
    assert set(table) == {"dense_1", "dense_2", "dense_3"}
    fragile = table["dense_2"]
    assert fragile["bits"] == 4 and fragile["score"] == fragile["sqnr_db"]
    assert fragile["sqnr_db"] < min(table[n]["sqnr_db"] for n in ("dense_1", "dense_3")) - 6
    assert fragile["drop_db"] > 0
    assert fragile["weight_bytes"] == 16 * 16 // 2 + 4 * 16
    assert fragile["saved_bytes"] == 16 * 16 // 2


def test_sensitivity_numpy_sqnr_and_custom_metric():
    """The reported SQNR is the one of quantize() with that q_config, in numpy; a custom
    metric (an accuracy here) gives the score."""
    model = _dense_model()
    x = _samples()
    f = model.predict(x, verbose=0).astype(np.float64)
    labels = np.argmax(f, -1)
    table = layer_sensitivity(model, x, qparams=QPARAMS, low_bits=2,
                              metric=lambda ref, out: np.mean(np.argmax(out, -1) == labels))
    config = dump_config(quantize(model, qparams=QPARAMS, samples=x, num_samples=len(x)))
    config["dense_1"]["weight_quantizer"]["bitwidth"] = 2
    qmodel = quantize(model, q_config=config, samples=x, num_samples=len(x))
    q = qmodel.predict(x, verbose=0).astype(np.float64)
    expected = 10 * np.log10(np.sum(f ** 2) / np.sum((f - q) ** 2))
    assert table["dense_1"]["sqnr_db"] == pytest.approx(expected, rel=1e-9)
    assert table["dense_1"]["score"] == np.mean(np.argmax(q, -1) == labels)
    scores = [row["score"] for row in table.values()]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores)


@pytest.fixture(scope="module")
def uniform_bytes():
    """Total weight bytes of _dense_model() quantized with every weight on 8 and on 4 bits."""
    model, x, sizes = _dense_model(), _samples(), {}
    for bits in (8, 4):
        qparams = QuantizationParams(weight_bits=bits, input_weight_bits=bits)
        qmodel = quantize(model, qparams=qparams, samples=x, num_samples=len(x))
        sizes[bits] = sum(weight_bytes(qmodel).values())
    return sizes


@pytest.mark.parametrize("position", [0.5, 0.0, 1.0], ids=["between", "lowest", "highest"])
def test_budget_is_respected_exactly(position, uniform_bytes):
    model = _dense_model()
    x = _samples()
    sizes = uniform_bytes
    budget = int(sizes[4] + position * (sizes[8] - sizes[4]))
    config = mixed_precision_config(model, x, budget, candidate_bits=(8, 4), qparams=QPARAMS)
    qmodel = quantize(model, q_config=config, samples=x, num_samples=len(x))
    used = weight_bytes(qmodel)
    assert sum(used.values()) <= budget
    bits = {layer.name: layer.weight_quantizer.bitwidth for layer in qmodel.layers
            if hasattr(layer, "weight_quantizer")}
    assert bits == {n: config[n]["weight_quantizer"]["bitwidth"] for n in bits}
    expected = {0.0: {4}, 0.5: {4, 8}, 1.0: {8}}[position]
    assert set(bits.values()) == expected, (bits, used, budget)
    # the activations follow qparams
    assert config["relu_1"]["output_quantizer"]["bitwidth"] == QPARAMS.activation_bits


def test_too_small_budget_raises():
    model = _dense_model()
    x = _samples(16)
    with pytest.raises(ValueError, match=r"expected budget_bytes >= \d+ .*Received: "
                                         r"budget_bytes=10"):
        mixed_precision_config(model, x, 10, qparams=QPARAMS)
    with pytest.raises(ValueError, match="candidate_bits"):
        mixed_precision_config(model, x, 10_000, candidate_bits=(8, 0))
    with pytest.raises(ValueError, match="metric"):
        layer_sensitivity(model, x, metric="accuracy")


def test_config_round_trips_through_quantize():
    """The returned q_config rebuilds the same model: dump_config(quantize(cfg)) == cfg."""
    model = _conv_model()
    x = np.random.RandomState(0).rand(16, 6, 6, 2).astype(np.float32)
    q4 = quantize(model, qparams=QuantizationParams(weight_bits=4, input_weight_bits=4),
                  samples=x, num_samples=len(x))
    budget = int(sum(weight_bytes(q4).values()) * 1.1)
    config = mixed_precision_config(model, x, budget, candidate_bits=(8, 2), qparams=QPARAMS)
    qmodel = quantize(model, q_config=config, samples=x, num_samples=len(x))
    assert dump_config(qmodel) == config
    assert sum(weight_bytes(qmodel).values()) <= budget
    sep = config["sep"]
    assert sep["dw_weight_quantizer"]["bitwidth"] == sep["pw_weight_quantizer"]["bitwidth"]
    assert np.all(np.isfinite(qmodel.predict(x, verbose=0)))
