"""Compiled eager calls: repeated eager calls of quantized layers run as per-layer tf.functions,
with the same integer results, saturation reports and recording semantics as op-by-op calls."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers import QuantizedConv2D, QuantizedReLU
from quantizeml.layers import base
from quantizeml.layers.base import eager_layer_calls, saturation
from quantizeml.models import quantize, record_quantization_variables


@pytest.fixture()
def small():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    model = keras.Model(inp, x)
    samples = np.random.RandomState(0).uniform(-1, 1, (64, 8, 8, 3)).astype(np.float32)
    qmodel = quantize(model, samples=samples, num_samples=64)
    base._COMPILED.clear()  # count the calls of the tests only
    return qmodel, samples[:16]


def compiled_functions(qmodel):
    return [fn for layer in qmodel.layers for _, fn, _ in base._COMPILED.get(layer, {}).values()
            if fn is not None]


def op_by_op(qmodel, x, **kwargs):
    with eager_layer_calls():
        return qmodel(x, **kwargs).numpy()


def test_compiled_calls_are_bit_identical(small):
    qmodel, x = small
    expected = op_by_op(qmodel, x)
    assert not compiled_functions(qmodel)
    for _ in range(base.COMPILE_AFTER_CALLS + 2):
        np.testing.assert_array_equal(qmodel(x).numpy(), expected)
    functions = compiled_functions(qmodel)
    conv = [layer for layer in qmodel.layers if isinstance(layer, QuantizedConv2D)][0]
    assert conv in base._COMPILED and len(functions) >= 5
    # one trace per layer: the later calls reuse it
    assert all(fn.experimental_get_tracing_count() == 1 for fn in functions)
    # another batch size reuses or generalizes the trace, with the same results
    np.testing.assert_array_equal(qmodel(x[:5]).numpy(), op_by_op(qmodel, x[:5]))


def test_no_compilation_when_disabled(small, monkeypatch):
    qmodel, x = small
    monkeypatch.setattr(base, "COMPILE_AFTER_CALLS", None)
    for _ in range(4):
        qmodel(x)
    assert not compiled_functions(qmodel)


def test_training_calls_run_op_by_op(small):
    qmodel, x = small
    for _ in range(4):
        qmodel(x, training=True)
    # layers with weights take the training argument (their records are dropped op by op)
    weighted = [layer for layer in qmodel.layers if layer.weights and "training" in
                getattr(layer, "_call_spec").arg_names]
    assert len(weighted) >= 3
    assert not [layer for layer in weighted if layer in base._COMPILED]


def test_saturation_recorded_in_compiled_calls(small, monkeypatch):
    qmodel, x = small
    relu = [layer for layer in qmodel.layers if isinstance(layer, QuantizedReLU)][0]
    relu.out_quantizer.range_max.assign(relu.out_quantizer.range_max / 16)
    op_by_op(qmodel, x)
    expected = saturation(relu.out_quantizer)["output"]
    assert expected > 0
    relu.out_quantizer.__dict__.pop("_saturation")
    monkeypatch.setattr(base, "COMPILE_AFTER_CALLS", 0)
    qmodel(x)
    assert compiled_functions(qmodel)
    assert saturation(relu.out_quantizer)["output"] == pytest.approx(expected, abs=1e-7)


def test_records_and_weight_changes_are_followed(small, monkeypatch):
    qmodel, x = small
    monkeypatch.setattr(base, "COMPILE_AFTER_CALLS", 0)
    before = qmodel(x).numpy()
    record_quantization_variables(qmodel)
    np.testing.assert_array_equal(qmodel(x).numpy(), before)
    conv = [layer for layer in qmodel.layers if isinstance(layer, QuantizedConv2D)][0]
    conv.kernel.assign(-conv.kernel)
    # the records are used until a training call drops them (as op by op)
    np.testing.assert_array_equal(qmodel(x).numpy(), before)
    qmodel(x[:1], training=True)
    assert conv.weight_quantizer.qweights.value is None
    after = qmodel(x).numpy()
    np.testing.assert_array_equal(after, op_by_op(qmodel, x))
    assert not np.array_equal(after, before)
