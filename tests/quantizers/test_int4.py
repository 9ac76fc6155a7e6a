"""pack_int4 / unpack_int4: the documented examples, a nibble oracle, round trips, errors."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantizeml.quantizers import pack_int4, unpack_int4


def test_documented_example_axis0():
    original = np.array([[-3, 7], [2, -8], [1, 0]], dtype=np.int8)
    packed, packed_shape, orig_len = pack_int4(original, axis=0)
    np.testing.assert_array_equal(packed.numpy(), [[45, -121], [1, 0]])
    assert packed.dtype == tf.int8 and packed_shape == (2, 2) and orig_len == 3
    unpacked = unpack_int4(packed, orig_len, axis=0)
    np.testing.assert_array_equal(unpacked.numpy(), [[-3, 7], [2, -8], [1, 0]])
    assert np.allclose(original, unpacked)


def test_documented_example_axis1():
    original = np.array([[-3, 7, 2], [-8, 1, 0]], dtype=np.int8)
    packed, packed_shape, orig_len = pack_int4(original, axis=1)
    np.testing.assert_array_equal(packed.numpy(), [[125, 2], [24, 0]])
    assert packed_shape == (2, 2) and orig_len == 3
    unpacked = unpack_int4(packed, orig_len, axis=1)
    np.testing.assert_array_equal(unpacked.numpy(), [[-3, 7, 2], [-8, 1, 0]])


def nibble_oracle(arr, axis):
    """Byte i along axis = low nibble of row 2i | high nibble of row 2i+1 (zero padded)."""
    moved = np.moveaxis(arr.astype(np.int64), axis, 0)
    if moved.shape[0] % 2:
        moved = np.concatenate([moved, np.zeros((1,) + moved.shape[1:], np.int64)])
    packed = (moved[0::2] & 0x0F) | ((moved[1::2] & 0x0F) << 4)
    return np.moveaxis(packed.astype(np.uint8), 0, axis).view(arr.dtype)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["int8", "uint8"]), hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
       st.data())
def test_pack_matches_oracle_and_round_trips(dtype, shape, data):
    low, high = (-8, 7) if dtype == "int8" else (0, 15)
    arr = data.draw(hnp.arrays(dtype, shape, elements=st.integers(low, high)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    packed, packed_shape, orig_len = pack_int4(arr, axis=axis, dtype=dtype)
    np.testing.assert_array_equal(packed.numpy(), nibble_oracle(arr, axis))
    assert packed.dtype.name == dtype and orig_len == shape[axis]
    assert packed_shape == tuple(packed.shape)
    unpacked = unpack_int4(packed, orig_len, axis=axis, dtype=dtype)
    assert unpacked.dtype.name == dtype
    np.testing.assert_array_equal(unpacked.numpy(), arr)


def test_graph_mode_round_trip():
    arr = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)[:3]
    fn = tf.function(lambda a: unpack_int4(pack_int4(a, axis=0)[0], 3, axis=0))
    np.testing.assert_array_equal(fn(tf.constant(arr)).numpy(), arr)


@pytest.mark.parametrize("arr, kwargs, error, match", [
    (np.array([8], np.int8), {}, ValueError, r"values in \[-8, 7\]"),
    (np.array([-9], np.int8), {}, ValueError, r"values in \[-8, 7\]"),
    (np.array([16], np.uint8), {"dtype": "uint8"}, ValueError, r"values in \[0, 15\]"),
    (np.array([1], np.int32), {}, TypeError, "dtype 'int8'"),
    (np.array([1], np.int8), {"dtype": "uint8"}, TypeError, "dtype 'uint8'"),
    (np.array([1], np.int8), {"dtype": "int16"}, ValueError, "dtype expected one of"),
    (np.array([1], np.int8), {"axis": 1}, ValueError, "axis expected"),
], ids=["int8_above", "int8_below", "uint8_above", "int32", "dtype_mismatch", "int16",
        "bad_axis"])
def test_pack_errors(arr, kwargs, error, match):
    with pytest.raises(error, match=match):
        pack_int4(arr, **kwargs)


def test_unpack_errors():
    with pytest.raises(TypeError, match="int8 or uint8"):
        unpack_int4(np.zeros((2,), np.int32), 3)
    with pytest.raises(ValueError, match="dtype expected one of"):
        unpack_int4(np.zeros((2,), np.int8), 3, dtype="int4")
    with pytest.raises(ValueError, match="orig_len"):
        unpack_int4(np.zeros((2,), np.int8), 5)
