"""Fixed-point multipliers and the rounded-shift rescaling (numpy and ONNX subgraph)."""
import fractions

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as onnx_helper

from quantizeml.onnx_support.layers import fixed_point_multiplier, make_model, requantize
from quantizeml.onnx_support.layers.base_layer import default_opset_imports
from quantizeml.onnx_support.layers.requantization import MULTIPLIER_BITS, requantize_nodes


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e4, allow_nan=False))
def test_fixed_point_multiplier_relative_error(multiplier):
    m, n = fixed_point_multiplier(np.array([multiplier]))
    assert 2 ** (MULTIPLIER_BITS - 1) <= m[0] <= 2 ** MULTIPLIER_BITS
    assert abs(m[0] * 2.0 ** -n[0] - multiplier) <= multiplier * 2.0 ** -MULTIPLIER_BITS


@settings(max_examples=300, deadline=None)
@given(st.integers(-2 ** 40, 2 ** 40), st.integers(0, 2 ** 15), st.integers(0, 40))
def test_requantize_is_round_half_up_of_the_exact_product(acc, m, n):
    exact = fractions.Fraction(acc * m, 2 ** n)
    expected = int(np.floor(exact + fractions.Fraction(1, 2)))
    assert int(requantize(np.array(acc), np.array(m), np.array(n))) == expected


def test_fixed_point_multiplier_rejects_bad_values():
    for bad in ([0.0], [-1.0], [np.inf]):
        with pytest.raises(ValueError, match="Received"):
            fixed_point_multiplier(np.array(bad))


def test_fixed_point_multiplier_clamps_to_results_that_saturate_anyway():
    m, n = fixed_point_multiplier(np.array([1e9, 1e-30]))
    np.testing.assert_array_equal(m, [2 ** MULTIPLIER_BITS, 0])
    np.testing.assert_array_equal(n, [0, 62])
    # |acc| >= 1 times 2^15 is beyond the int8/uint8 range, as with the true multiplier.
    assert abs(int(requantize(np.array(-1), m[:1], n[:1])[0])) > 255


def test_onnx_subgraph_matches_numpy_on_extremes():
    """The Mod-based floor division in int64 agrees with the numpy reference, including
    negative accumulators, exact halves, shift 0 and the largest accumulators."""
    import onnxruntime as ort
    acc = np.array([0, 1, -1, 2 ** 46, -2 ** 46, 12345678, -12345678, 3, -3, 5, -5],
                   np.int64)
    m = np.array([2 ** 15, 1, 1, 2 ** 15, 2 ** 15, 23456, 23456, 1, 1, 1, 1], np.int64)
    n = np.array([62, 0, 1, 40, 40, 20, 20, 1, 1, 0, 2], np.int64)
    nodes = requantize_nodes("acc", "m", "n", "out")
    graph_inputs = [onnx_helper.make_tensor_value_info(k, TensorProto.INT64, [11])
                    for k in ("acc", "m", "n")]
    model = make_model(nodes, [], graph_inputs,
                       [onnx_helper.make_tensor_value_info("out", TensorProto.INT64, [11])])
    assert model.opset_import[0] == default_opset_imports()[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"acc": acc, "m": m, "n": n})[0]
    np.testing.assert_array_equal(out, requantize(acc, m, n))
    np.testing.assert_array_equal(out[7:], [2, -1, 5, -1])  # halves round up
