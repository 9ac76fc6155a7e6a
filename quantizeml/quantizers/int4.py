"""Packing of int4 values, two per byte (``pack_int4``) and back (``unpack_int4``)."""
import numpy as np
import tensorflow as tf

#: allowed packing dtypes -> inclusive range of the int4 values they carry.
_NIBBLE_RANGES = {"int8": (-8, 7), "uint8": (0, 15)}


def _check_dtype(dtype):
    name = tf.as_dtype(dtype).name if isinstance(dtype, tf.DType) else dtype
    if name not in _NIBBLE_RANGES:
        raise ValueError(f"dtype expected one of {sorted(_NIBBLE_RANGES)}. "
                         f"Received: dtype={dtype!r}")
    return name


def _check_axis(axis, rank):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
            or not -rank <= axis < rank:
        raise ValueError(f"axis expected an int in [-{rank}, {rank}). Received: axis={axis!r}")
    return int(axis) % rank


def _permutations(axis, rank):
    """The permutation bringing ``axis`` to the front, and its inverse."""
    perm = [axis] + [i for i in range(rank) if i != axis]
    inverse = [perm.index(i) for i in range(rank)]
    return perm, inverse


def _check_values(arr, dtype):
    low, high = _NIBBLE_RANGES[dtype]
    static = tf.get_static_value(arr)
    if static is not None:
        if static.size and (static.min() < low or static.max() > high):
            raise ValueError(f"pack_int4 expected values in [{low}, {high}] for dtype={dtype!r}. "
                             f"Received: arr with min={static.min()}, max={static.max()}")
        return []
    message = f"pack_int4 expected values in [{low}, {high}] for dtype={dtype!r}"
    return [tf.debugging.assert_greater_equal(arr, tf.cast(low, arr.dtype), message=message),
            tf.debugging.assert_less_equal(arr, tf.cast(high, arr.dtype), message=message)]


def pack_int4(arr, axis=0, dtype="int8"):
    """Packs an int4 tensor into an int8 (or uint8) tensor with two nibbles per byte.

    Packing is performed along ``axis``. For every two consecutive rows, the **low nibble** of
    the output byte stores the value from the first row and the **high nibble** the value from
    the second row: ``packed = (first & 0x0F) | (second << 4)``, as a byte. An odd number of
    rows is padded with a zero row.

    Args:
        arr (tf.Tensor or np.ndarray): an ``int8`` tensor with values in ``[-8, 7]``, or a
            ``uint8`` tensor with values in ``[0, 15]``; its dtype must be ``dtype``.
        axis (int, optional): the axis along which to pack. Defaults to 0.
        dtype (str, optional): the dtype of the input and packed tensor, ``"int8"`` or
            ``"uint8"``. Defaults to ``"int8"``.

    Returns:
        tuple: ``(packed, packed_shape, orig_len)``: the packed tensor, its shape (a tuple) and
        the original length of ``axis`` before padding.

    Raises:
        ValueError: for a dtype other than int8/uint8, values out of range or a bad axis.
        TypeError: when arr's dtype is not ``dtype``.

    Example:
        ```python
        >>> original = np.array([[-3, 7], [2, -8], [1, 0]], dtype=np.int8)
        >>> packed, packed_shape, orig_len = pack_int4(original, axis=0)
        >>> packed.numpy()
        array([[  45, -121],
               [   1,    0]], dtype=int8)
        >>> unpack_int4(packed, orig_len, axis=0).numpy()
        array([[-3,  7],
               [ 2, -8],
               [ 1,  0]], dtype=int8)
        ```
    """
    dtype = _check_dtype(dtype)
    arr = tf.convert_to_tensor(arr)
    if arr.dtype.name != dtype:
        raise TypeError(f"pack_int4 expected an arr of dtype {dtype!r}. "
                        f"Received: arr.dtype={arr.dtype.name!r}")
    rank = arr.shape.rank
    if not rank:
        raise ValueError(f"pack_int4 expected an arr of rank >= 1. Received: arr.shape={arr.shape}")
    axis = _check_axis(axis, rank)
    perm, inverse = _permutations(axis, rank)
    with tf.control_dependencies(_check_values(arr, dtype)):
        rows = tf.transpose(tf.cast(arr, tf.int32), perm)
    orig_len = tf.shape(rows)[0]
    padding = [[0, orig_len % 2]] + [[0, 0]] * (rank - 1)
    rows = tf.pad(rows, padding)
    low, high = rows[0::2], rows[1::2]
    packed = tf.cast(tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(low, 0x0F),
                                           tf.bitwise.left_shift(
                                               tf.bitwise.bitwise_and(high, 0x0F), 4)),
                     tf.uint8)
    if dtype == "int8":
        packed = tf.bitcast(packed, tf.int8)
    packed = tf.transpose(packed, inverse)
    static_len = arr.shape[axis]
    packed_shape = tuple(packed.shape.as_list()) if packed.shape.is_fully_defined() \
        else tf.shape(packed)
    return packed, packed_shape, static_len if static_len is not None else orig_len


def unpack_int4(packed, orig_len, axis=0, dtype="int8"):
    """Unpacks a tensor packed by :func:`pack_int4` back to one int4 value per element.

    The low nibble of each byte is the first row and the high nibble the second; for
    ``dtype="int8"`` each nibble ``n`` becomes ``n - 16 if n >= 8 else n`` (range ``[-8, 7]``),
    for ``"uint8"`` it stays in ``[0, 15]``. The padding row is removed with ``orig_len``.

    Args:
        packed (tf.Tensor): an int8 or uint8 tensor of packed values along ``axis``.
        orig_len (int): the original (unpadded) length of ``axis``.
        axis (int, optional): the axis along which the tensor was packed. Defaults to 0.
        dtype (str, optional): the dtype of the unpacked tensor, ``"int8"`` or ``"uint8"``.
            Defaults to ``"int8"``.

    Returns:
        tf.Tensor: the unpacked tensor, of dtype ``dtype``.

    Raises:
        ValueError: for a dtype other than int8/uint8, a bad axis or orig_len.
        TypeError: when packed is neither int8 nor uint8.
    """
    dtype = _check_dtype(dtype)
    packed = tf.convert_to_tensor(packed)
    if packed.dtype.name not in _NIBBLE_RANGES:
        raise TypeError("unpack_int4 expected a packed tensor of dtype int8 or uint8. "
                        f"Received: packed.dtype={packed.dtype.name!r}")
    rank = packed.shape.rank
    if not rank:
        raise ValueError("unpack_int4 expected a packed tensor of rank >= 1. "
                         f"Received: packed.shape={packed.shape}")
    axis = _check_axis(axis, rank)
    rows = packed.shape[axis]
    static_len = tf.get_static_value(orig_len)
    if static_len is not None and (np.ndim(static_len) != 0 or not np.issubdtype(
            np.asarray(static_len).dtype, np.integer) or static_len < 0
            or (rows is not None and static_len > 2 * rows)):
        bound = 2 * rows if rows is not None else "inf"
        raise ValueError(f"unpack_int4 expected an int orig_len in [0, {bound}]. "
                         f"Received: orig_len={orig_len!r}")
    perm, inverse = _permutations(axis, rank)
    if packed.dtype == tf.int8:
        packed = tf.bitcast(packed, tf.uint8)
    values = tf.cast(tf.transpose(packed, perm), tf.int32)
    low = tf.bitwise.bitwise_and(values, 0x0F)
    high = tf.bitwise.right_shift(values, 4)
    if dtype == "int8":
        low = tf.where(low >= 8, low - 16, low)
        high = tf.where(high >= 8, high - 16, high)
    shape = tf.shape(values)
    interleaved = tf.reshape(tf.stack([low, high], axis=1),
                             tf.concat([[2 * shape[0]], shape[1:]], axis=0))
    unpacked = tf.cast(interleaved[:orig_len], dtype)
    return tf.transpose(unpacked, inverse)
