"""Integer weights of a quantized model, for deployment: int8, or int4 packed two per byte.

``save_integer_weights(qmodel, path)`` writes one ``.npz`` file holding, for every weight
quantizer of the model, the integer weights as the layer computes with them
(``<layer>/<quantizer>/values``), their scales (``.../scales``, float32) and fractional bits
(``.../frac_bits``). Weights of at most 4 bits are stored packed two per byte with
:func:`quantizeml.quantizers.pack_int4` along their first axis (``.../packed``, plus
``.../orig_len``), so a 4-bit model's integer weights take half the bytes of int8 storage;
wider weights are stored as int8 (up to 8 bits) or int32.
"""
import numpy as np
import tensorflow as tf

from ..layers import WeightQuantizer
from ..quantizers import pack_int4, unpack_int4
from ..tensors import QFloat

def kernel_for_quantizer(layer):
    """The float kernel in the layout its weight quantizer sees (output channels last)."""
    if hasattr(layer, "quantizer_kernel"):  # transposed convolutions
        return layer.quantizer_kernel()
    if getattr(layer, "depthwise_kernel", None) is not None and \
            getattr(layer, "pointwise_kernel", None) is None:
        kh, kw, channels, multiplier = layer.depthwise_kernel.shape
        return tf.reshape(layer.depthwise_kernel, (kh, kw, 1, channels * multiplier))
    return getattr(layer, "kernel", None)


def _quantized_weights(layer):
    """Yields ``(key, WeightQuantizer, quantized)`` for the kernel of a quantized layer.

    Raises:
        ValueError: for a layer whose weights this module cannot export (never skipped
            silently).
    """
    quantizers = {attr: q for attr, q in vars(layer).items() if isinstance(q, WeightQuantizer)}
    if not quantizers:
        return
    kernel = kernel_for_quantizer(layer) if set(quantizers) == {"weight_quantizer"} else None
    if kernel is None:
        raise ValueError(f"save_integer_weights expected layers with one kernel quantized by "
                         f"'weight_quantizer' (Conv2D, Conv2DTranspose, DepthwiseConv2D, "
                         f"Dense). Received: layer {layer.name} ({type(layer).__name__}) with "
                         f"quantizers {sorted(quantizers)}")
    quantizer = quantizers["weight_quantizer"]
    yield f"{layer.name}/weight_quantizer", quantizer, quantizer.quantize(kernel)


def integer_weights(qmodel):
    """The integer weights of a quantized model.

    Returns:
        dict: ``<layer>/<quantizer>`` -> dict with ``values`` (int64 array), ``scales``,
        ``frac_bits`` and ``bitwidth``.
    """
    out = {}
    for layer in qmodel.layers:
        for key, quantizer, q in _quantized_weights(layer):
            fp = q.fp if isinstance(q, QFloat) else q
            out[key] = {"values": fp.values.numpy().astype(np.int64),
                        "scales": (q.scales.numpy() if isinstance(q, QFloat)
                                   else np.ones((), np.float32)),
                        "frac_bits": fp.frac_bits.numpy(),
                        "bitwidth": quantizer.bitwidth}
    return out


def save_integer_weights(qmodel, path):
    """Saves the integer weights of a quantized model to an ``.npz`` file (module docstring).

    Args:
        qmodel (keras.Model): a quantized model.
        path (str): the file to write.

    Returns:
        int: the number of bytes of integer weight storage (packed or int8/int32 arrays).
    """
    arrays, nbytes = {}, 0
    for key, entry in integer_weights(qmodel).items():
        values, bits = entry["values"], entry["bitwidth"]
        if bits <= 4:
            packed, _, orig_len = pack_int4(values.astype(np.int8), axis=0)
            stored = np.asarray(packed)
            arrays[f"{key}/packed"] = stored
            arrays[f"{key}/orig_len"] = np.asarray(orig_len)
        else:
            stored = values.astype(np.int8 if bits <= 8 else np.int32)
            arrays[f"{key}/values"] = stored
        nbytes += stored.nbytes
        arrays[f"{key}/scales"] = entry["scales"].astype(np.float32)
        arrays[f"{key}/frac_bits"] = np.asarray(entry["frac_bits"], np.float32)
        arrays[f"{key}/bitwidth"] = np.asarray(bits)
    np.savez(path, **arrays)
    return nbytes


def load_integer_weights(path):
    """Reads a file written by :func:`save_integer_weights` (unpacking int4 weights).

    Returns:
        dict: as :func:`integer_weights`.
    """
    data = np.load(path)
    keys = sorted({name.rsplit("/", 1)[0] for name in data.files})
    out = {}
    for key in keys:
        if f"{key}/packed" in data.files:
            values = np.asarray(unpack_int4(data[f"{key}/packed"],
                                            int(data[f"{key}/orig_len"]), axis=0))
        else:
            values = data[f"{key}/values"]
        out[key] = {"values": values.astype(np.int64), "scales": data[f"{key}/scales"],
                    "frac_bits": data[f"{key}/frac_bits"],
                    "bitwidth": int(data[f"{key}/bitwidth"])}
    return out
