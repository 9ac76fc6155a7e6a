"""Calibration samples and ranges."""
import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as onnx_helper

from quantizeml.onnx_support.quantization.calibration import calibrate, iterate_batches
from tests.onnx_support.models import GraphMaker


def _inputs(batch="N", shape=(2, 3)):
    return [onnx_helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *shape])]


def _count(batches):
    return sum(len(b[0]) for b in batches)


def test_arrays_are_batched_and_limited():
    x = np.zeros((10, 2, 3))
    batches = list(iterate_batches(_inputs(), x, num_samples=7, batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    assert batches[0][0].dtype == np.float32
    assert _count(iterate_batches(_inputs(), {"x": x}, num_samples=100)) == 10
    assert _count(iterate_batches(_inputs(), (x, np.zeros(10)), num_samples=100)) == 10


def test_random_samples_and_fixed_batch_dimension():
    batches = list(iterate_batches(_inputs(batch=4), None, num_samples=10))
    assert [len(b[0]) for b in batches] == [4, 4, 4]  # the last one filled by repetition
    values = np.concatenate([b[0] for b in batches])
    assert values.min() >= 0 and values.max() < 1
    np.testing.assert_array_equal(values[10:], values[8:10])


def test_generators_of_batches():
    def gen():
        for _ in range(5):
            yield np.ones((4, 2, 3)), np.zeros(4)
    assert _count(iterate_batches(_inputs(), gen(), num_samples=8)) == 8


@pytest.mark.parametrize("samples,match", [
    (np.full((2, 2, 3), np.nan), "finite"),
    (np.zeros((2, 3, 3)), "shape"),
    (np.zeros((0, 2, 3)), "at least one"),
    (np.array([["a"]]), "numeric"),
], ids=["nan", "shape", "empty", "strings"])
def test_bad_samples_are_rejected(samples, match):
    with pytest.raises(ValueError, match=match):
        list(iterate_batches(_inputs(), samples))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_samples"):
        list(iterate_batches(_inputs(), None, num_samples=0))
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(_inputs(), None, batch_size=-1))
    with pytest.raises(ValueError, match="dynamic"):
        list(iterate_batches(_inputs(shape=("H", 3)), None))


def test_calibrate_collects_per_channel_ranges():
    g = GraphMaker((2, 3, 3))
    model = g.model(g.relu("input"))
    x = np.stack([np.full((2, 3, 3), v) for v in (-1.0, 0.5)]).astype(np.float32)
    x[:, 1] *= 4
    ranges = calibrate(model, ["input", "relu1"], [[x]])
    np.testing.assert_allclose(ranges["input"].max_abs, [1.0, 4.0])
    assert ranges["input"].min == -4.0 and ranges["input"].shape == (2, 3, 3)
    np.testing.assert_allclose(ranges["relu1"].max_abs, [0.5, 2.0])
