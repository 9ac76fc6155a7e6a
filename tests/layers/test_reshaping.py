"""Tests of quantizeml.layers.reshaping (QuantizedFlatten, QuantizedReshape,
QuantizedPermute)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.base import QUANTIZATION_TARGETS
from quantizeml.layers.quantizers import InputQuantizer
from quantizeml.layers.reshaping import QuantizedFlatten, QuantizedPermute, QuantizedReshape
from tests.layers.references import (INPUTS, fixed_point, float_gradient, frac, ints,
                                     output_quantizer, random_inputs, single_layer_model)
from tests.utils import check_config_roundtrip, check_save_load, check_signature_parity

SHAPE = (2, 3, 2, 4)
# (quantized layer, float twin, whether it keeps the last axis of a (2, 3, 2, 4) input)
CASES = {
    "flatten": (lambda: QuantizedFlatten(), lambda: keras.layers.Flatten(), False),
    "reshape-keep": (lambda: QuantizedReshape((6, 4)),
                     lambda: keras.layers.Reshape((6, 4)), True),
    "reshape-infer": (lambda: QuantizedReshape((-1, 4)),
                      lambda: keras.layers.Reshape((-1, 4)), True),
    "reshape-change": (lambda: QuantizedReshape((4, -1)),
                       lambda: keras.layers.Reshape((4, -1)), False),
    "permute-keep": (lambda: QuantizedPermute((2, 1, 3)),
                     lambda: keras.layers.Permute((2, 1, 3)), True),
    "permute-change": (lambda: QuantizedPermute((3, 1, 2)),
                       lambda: keras.layers.Permute((3, 1, 2)), False),
}
PER_AXIS = [k for k in INPUTS if k.endswith("per-axis")]


@pytest.mark.parametrize("kind", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_reshaping_exact(kind, case):
    layer_fn, float_fn, keeps_last_axis = CASES[case]
    x = INPUTS[kind](SHAPE)
    layer = layer_fn()
    if kind in PER_AXIS and not keeps_last_axis:
        with pytest.raises(ValueError, match=f"{layer.name} \\({type(layer).__name__}\\) "
                                             "expected a per-tensor input"):
            layer(x)
        return
    out = layer(x)
    # integer reference: the float twin moves the integer values the same way (exact)
    float_layer = float_fn()
    np.testing.assert_array_equal(ints(out), float_layer(ints(x).astype(np.float64)).numpy())
    np.testing.assert_array_equal(frac(out), frac(x))
    assert type(out) is type(x)
    # float: exactly the float layer's output
    np.testing.assert_array_equal(out.to_float().numpy(), float_layer(x.to_float()).numpy())


def test_flatten_channels_first_and_rank2():
    x = fixed_point(SHAPE)
    out = QuantizedFlatten(data_format="channels_first")(x)
    expected = keras.layers.Flatten(data_format="channels_first")(x.to_float()).numpy()
    np.testing.assert_array_equal(out.to_float().numpy(), expected)
    # a per-axis rank-2 input keeps its last axis
    x2 = fixed_point((2, 5), per_axis=True)
    out2 = QuantizedFlatten()(x2)
    np.testing.assert_array_equal(ints(out2), ints(x2))
    np.testing.assert_array_equal(frac(out2), frac(x2))


def test_dynamic_shapes():
    inputs = keras.Input((None, 4))
    q = InputQuantizer()(inputs)
    assert QuantizedFlatten()(q).shape.as_list() == [None, None]
    assert QuantizedReshape((-1, 2, 2))(q).shape.as_list() == [None, None, 2, 2]
    assert QuantizedPermute((2, 1))(q).shape.as_list() == [None, 4, None]


def test_output_quantizer():
    x = fixed_point(SHAPE)
    layer = QuantizedFlatten(quant_config={"output_quantizer": {"bitwidth": 4}})
    layer(x)
    layer.out_quantizer.range_max.assign(3.0)
    out = layer(x)
    ref, ref_frac = output_quantizer(ints(x).reshape(2, -1), frac(x), layer.out_quantizer)
    np.testing.assert_array_equal(ints(out), ref)
    assert int(frac(out)) == int(ref_frac)


def test_quantize_targets_and_signatures():
    for float_cls, cls in ((keras.layers.Flatten, QuantizedFlatten),
                           (keras.layers.Reshape, QuantizedReshape),
                           (keras.layers.Permute, QuantizedPermute)):
        assert QUANTIZATION_TARGETS[float_cls] is cls
        check_signature_parity(cls, float_cls)


@pytest.mark.parametrize("layer_fn", [
    lambda: QuantizedFlatten(data_format="channels_first"),
    lambda: QuantizedReshape((4, -1), quant_config={"output_quantizer": {"bitwidth": 8}}),
    lambda: QuantizedPermute((2, 1, 3))], ids=["flatten", "reshape", "permute"])
def test_config_roundtrip(layer_fn):
    layer = layer_fn()
    clone = check_config_roundtrip(layer)
    assert clone.quant_config == layer.quant_config


@pytest.mark.parametrize("layer_fn, per_axis", [
    (lambda: QuantizedFlatten(), False),
    (lambda: QuantizedPermute((2, 1, 3)), True)], ids=["flatten", "permute-per-axis"])
def test_save_load_and_gradients(layer_fn, per_axis):
    model = single_layer_model(layer_fn(), SHAPE[1:], per_axis=per_axis)
    x = random_inputs(SHAPE, scale=0.5)
    check_save_load(model, x)
    assert float(tf.reduce_sum(tf.abs(float_gradient(model, x)))) > 0


def test_bad_inputs():
    for layer in (QuantizedFlatten(name="flat_float"), QuantizedReshape((8,), name="flat_float"),
                  QuantizedPermute((1, 2), name="flat_float")):
        with pytest.raises(TypeError, match="flat_float.*expected FixedPoint or QFloat"):
            layer(tf.ones((2, 2, 4)))
    for bits in (0, 33):
        with pytest.raises(ValueError, match=f"flat_bits/output_quantizer: bitwidth .*{bits}"):
            QuantizedFlatten(name="flat_bits",
                             quant_config={"output_quantizer": {"bitwidth": bits}})
    with pytest.raises(ValueError, match="flat_key: quant_config expected keys"):
        QuantizedFlatten(name="flat_key", quant_config={"weight_quantizer": {}})
