"""abs_max_quantize and AbsMaxQuantizer against the numpy formula."""
import json

import numpy as np
import pytest
import tensorflow as tf

from quantizeml import quantizers as q


def oracle(x, axis, value_range=(-127, 127), epsilon=1e-7):
    scale = np.float32(value_range[1]) / (np.max(np.abs(x), axis=axis, keepdims=True)
                                          + np.float32(epsilon))
    return np.clip(np.round(x * scale), *value_range), scale


@pytest.mark.parametrize("axis", [-1, 0, (0, 1), None], ids=["last", "first", "pair", "all"])
@pytest.mark.parametrize("to_numpy", [False, True], ids=["tf", "numpy"])
def test_abs_max_quantize(axis, to_numpy):
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    values, scale = q.abs_max_quantize(x, axis, to_numpy=to_numpy)
    expected_values, expected_scale = oracle(x, axis)
    assert values.dtype == tf.int8 and scale.dtype == tf.float32
    np.testing.assert_allclose(scale.numpy(), expected_scale, rtol=1e-6)
    np.testing.assert_array_equal(values.numpy(), expected_values)


def test_value_range_and_dtype():
    x = np.array([[-1.0, 0.5, 0.25]], np.float32)
    values, scale = q.abs_max_quantize(x, -1, value_range=(-8, 7), dtype="int32")
    assert values.dtype == tf.int32
    np.testing.assert_array_equal(values.numpy(), np.clip(np.round(x * (7 / (1 + 1e-7))), -8, 7))


def test_abs_max_quantizer_class():
    quantizer = q.get("abs_max_quantizer", axis=-1)
    assert isinstance(quantizer, q.AbsMaxQuantizer)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    values, scale = quantizer(x)
    np.testing.assert_array_equal(values.numpy(), oracle(x, -1)[0])
    config = quantizer.get_config()
    assert json.loads(json.dumps(config)) == config
    assert q.AbsMaxQuantizer.from_config(config) == quantizer
    assert q.deserialize(q.serialize(quantizer)) == quantizer


@pytest.mark.parametrize("value_range", [(127, -127), (0, 0), (-1,), "x"],
                         ids=["reversed", "empty", "single", "str"])
def test_bad_value_range(value_range):
    with pytest.raises(ValueError, match="value_range expected"):
        q.abs_max_quantize(np.ones(3, np.float32), -1, value_range=value_range)
