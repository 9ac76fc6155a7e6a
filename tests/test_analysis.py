"""quantizeml.analysis: per-layer SQNR, errors, saturation and the SQNR plot."""
import math
import sys

import numpy as np
import pytest
import tf_keras as keras

from quantizeml.analysis import compare, format_table, plot, sqnr
from quantizeml.models import QuantizationParams, dump_config, quantize


def _model():
    inputs = keras.Input((6, 6, 1), name="input")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, name="dense_1")(x)
    outputs = keras.layers.Dense(3, name="dense_2")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    model = _model()
    x = np.random.RandomState(0).rand(48, 6, 6, 1).astype(np.float32)
    qmodel = quantize(model, samples=x, num_samples=len(x))
    return model, qmodel, x


def test_sqnr_formula():
    ref = np.array([1.0, -2.0, 3.0])
    q = np.array([1.1, -2.0, 2.9])
    assert sqnr(ref, q) == pytest.approx(10 * np.log10(14.0 / 0.02))
    assert sqnr(ref, ref) == math.inf


def test_compare_rows_and_numpy_sqnr(setup):
    model, qmodel, x = setup
    table = compare(model, qmodel, x, batch_size=16)
    by_name = {r["layer"]: r for r in table}
    # the ReLU and dense_1 carry OutputQuantizers, conv has weights, dense_2 is the final layer
    assert list(by_name) == ["conv", "relu", "dense_1", "dense_2"]
    assert by_name["relu"]["saturation"] is not None
    assert by_name["dense_2"]["saturation"] is None
    assert by_name["relu"]["weight_error"] is None
    for name in ("conv", "dense_1", "dense_2"):
        assert 0 < by_name[name]["weight_error"] < 0.02   # 8-bit weights
    # the final row against the numpy SQNR of the model outputs
    f = model.predict(x, verbose=0).astype(np.float64)
    q = qmodel.predict(x, verbose=0).astype(np.float64)
    expected = 10 * np.log10(np.sum(f ** 2) / np.sum((f - q) ** 2))
    assert by_name["dense_2"]["sqnr_db"] == pytest.approx(expected, abs=1e-3)
    assert by_name["dense_2"]["max_abs_error"] == pytest.approx(np.max(np.abs(f - q)), rel=1e-4)
    assert all(r["sqnr_db"] > 20 for r in table)
    text = format_table(table)
    assert "dense_1" in text and "SQNR" in text


def test_fewer_bits_lower_sqnr(setup):
    model, qmodel, x = setup
    config = dump_config(qmodel)
    config["dense_1"]["output_quantizer"]["bitwidth"] = 3
    config["dense_1"]["weight_quantizer"]["bitwidth"] = 3
    q3 = quantize(model, q_config=config, samples=x, num_samples=len(x))
    base = {r["layer"]: r for r in compare(model, qmodel, x)}
    low = {r["layer"]: r for r in compare(model, q3, x)}
    assert low["dense_1"]["sqnr_db"] < base["dense_1"]["sqnr_db"] - 10
    assert low["dense_1"]["weight_error"] > base["dense_1"]["weight_error"]
    assert low["conv"]["sqnr_db"] == pytest.approx(base["conv"]["sqnr_db"], abs=0.5)


def test_saturation_is_reported():
    keras.utils.set_random_seed(0)
    model = _model()
    x = np.random.RandomState(1).rand(32, 6, 6, 1).astype(np.float32)
    qmodel = quantize(model, qparams=QuantizationParams(), samples=x, num_samples=len(x))
    conv = qmodel.get_layer("conv")
    conv.kernel.assign(conv.kernel * 10)   # relu outputs far beyond its calibrated range
    table = compare(model, qmodel, x)
    relu = next(r for r in table if r["layer"] == "relu")
    assert relu["saturation"] > 0.1


def test_compare_errors(setup):
    model, qmodel, x = setup
    with pytest.raises(ValueError, match="non-empty"):
        compare(model, qmodel, x[:0])
    other = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(name="other")])
    with pytest.raises(ValueError, match="no matching layer"):
        compare(other, qmodel, x)


def test_plot(setup, tmp_path):
    pytest.importorskip("matplotlib")
    model, qmodel, x = setup
    table = compare(model, qmodel, x[:8])
    path = tmp_path / "sqnr.png"
    fig = plot(table + [{**table[0], "layer": "exact", "sqnr_db": math.inf}], str(path))
    assert path.stat().st_size > 1000
    assert len(fig.axes[0].patches) == len(table) + 1


def test_plot_without_matplotlib(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="requires matplotlib"):
        plot([{"layer": "a", "sqnr_db": 1.0}])


def _clone(qmodel):
    clone = keras.Model.from_config(qmodel.get_config())
    clone.set_weights(qmodel.get_weights())
    return clone


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_changes_counts_moved_integers(bits):
    """Moving one float weight by exactly k steps of its channel changes one integer by k:
    the table gives 1/size changed, k/size mean change and a travel of k steps, computed here
    from the numpy quantization of the kernel (QFloat weights: ``w / scale``, rounded)."""
    from quantizeml.analysis import format_weight_changes, weight_changes
    keras.utils.set_random_seed(1)
    model = _model()
    x = np.random.RandomState(0).rand(32, 6, 6, 1).astype(np.float32)
    qparams = QuantizationParams(weight_bits=bits, input_weight_bits=bits, activation_bits=8)
    before = quantize(model, samples=x, num_samples=len(x), qparams=qparams)
    unchanged = weight_changes(before, _clone(before))
    assert set(unchanged) == {"conv/weight_quantizer", "dense_1/weight_quantizer",
                              "dense_2/weight_quantizer"}
    assert all(r["changed"] == 0 and r["travel_steps"] == 0 for r in unchanged.values())
    after = _clone(before)
    layer = after.get_layer("dense_1")
    kernel = layer.kernel.numpy()
    quantized = layer.weight_quantizer.quantize(kernel)
    ints = quantized.fp.values.numpy() if hasattr(quantized, "fp") else quantized.values.numpy()
    step = (quantized.scales.numpy() if hasattr(quantized, "scales") else
            np.ones(kernel.shape[-1])) * 2.0 ** -np.broadcast_to(
                (quantized.fp if hasattr(quantized, "fp") else quantized).frac_bits.numpy(),
                kernel.shape[-1:])
    # numpy oracle of the integers: w / step rounded half up on the channel's grid, clipped
    int_max = 2 ** (bits - 1) - 1
    np.testing.assert_array_equal(
        ints, np.clip(np.floor(kernel / step + 0.5), -int_max - 1, int_max))
    k = 1 if bits == 2 else 2
    # a weight of channel c below its channel's largest magnitude, with room for k more steps
    rows, cols = np.nonzero((ints + k <= int_max - 1) & (np.abs(kernel + k * step)
                                                         < np.max(np.abs(kernel), 0) - step))
    i, c = rows[0], cols[0]
    kernel[i, c] += k * step[c]
    layer.kernel.assign(kernel)
    table = weight_changes(before, after)
    row = table["dense_1/weight_quantizer"]
    assert row["changed"] == pytest.approx(1 / kernel.size)
    assert row["mean_abs_change"] == pytest.approx(k / kernel.size)
    assert row["travel_steps"] == pytest.approx(k, rel=1e-5)
    assert row["bitwidth"] == bits
    assert table["conv/weight_quantizer"]["changed"] == 0
    assert "dense_1/weight_quantizer" in format_weight_changes(table)


def test_weight_changes_mismatched_models(setup):
    from quantizeml.analysis import weight_changes
    _, qmodel, x = setup
    other = quantize(keras.Sequential([keras.Input((6, 6, 1)),
                                       keras.layers.Conv2D(4, 3, name="conv2")]),
                     samples=x, num_samples=len(x))
    with pytest.raises(ValueError, match="weight_changes expected the quantized layer 'conv'"):
        weight_changes(qmodel, other)
