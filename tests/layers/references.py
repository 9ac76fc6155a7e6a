"""Integer references, QTensor inputs and one-layer models for the layer tests.

The numpy references take the integer values and fractional bits of tensors and the parameters
of the quantizer layers (bitwidth, calibrated frac_bits), and redo the integer maths in int64.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from quantizeml.layers.quantizers import Dequantizer, InputQuantizer
from quantizeml.tensors import FixedPoint, QFloat


def ints(t):
    """The integer values of a QTensor (or a tensor of integers) as an int64 array."""
    values = t.values if hasattr(t, "values") else t
    values = np.asarray(values, np.float64)
    np.testing.assert_array_equal(values, np.round(values), err_msg="non-integer values")
    return values.astype(np.int64)


def frac(t):
    """The fractional bits of a QTensor as an int64 array."""
    return ints(t.frac_bits)


def rounded_shift(values, shift):
    """``values * 2^shift`` in int64: left shifts exact, right shifts rounded half up."""
    values, shift = np.broadcast_arrays(np.asarray(values, np.int64), np.asarray(shift, np.int64))
    left = values << np.maximum(shift, 0)
    right_bits = np.maximum(-shift, 0)
    half = np.where(right_bits > 0, np.int64(1) << np.maximum(right_bits - 1, 0), 0)
    right = (values + half) >> right_bits
    return np.where(shift >= 0, left, right)


def quantize_scales(scales, scale_bits):
    """QFloat.quantize_scales in numpy: ``(s_int, s_frac)`` per scale, ``s_frac = scale_bits -
    ceil(log2(s))``, ``s_int = min(round(s * 2^s_frac), 2^scale_bits - 1)``."""
    scales = np.asarray(scales, np.float64)
    s_frac = scale_bits - np.ceil(np.log2(scales))
    # clipped: a power-of-two scale gives 2^scale_bits, one above the largest integer
    s_int = np.minimum(np.floor(scales * 2.0**s_frac + 0.5), 2.0**scale_bits - 1)
    return s_int.astype(np.int64), s_frac.astype(np.int64)


def qfloat_to_fixed(values, frac_bits, scales, scale_bits=8):
    """QFloat.to_fixed_point in numpy: ``(values * s_int, frac_bits + s_frac)``."""
    s_int, s_frac = quantize_scales(scales, scale_bits)
    return np.asarray(values, np.int64) * s_int, np.asarray(frac_bits, np.int64) + s_frac


def output_quantizer(values, frac_bits, oq, scales=None):
    """An OutputQuantizer in numpy, on integer values with frac_bits (and QFloat scales).

    Its target fractional bits are the calibrated ``oq.frac_bits``.
    """
    if scales is not None:
        values, frac_bits = qfloat_to_fixed(values, frac_bits, scales, oq.scale_bits)
    target = frac(oq)
    out = rounded_shift(values, target - np.asarray(frac_bits, np.int64))
    int_max = 2**oq.value_bits - 1
    out = np.clip(out, 0 if not oq.signed else -int_max - 1, int_max)
    return out, target


def fixed_point(shape, per_axis=False, value_bits=7, seed=0):
    """A random FixedPoint input: per-tensor frac_bits 4, or per-axis frac_bits in [1, 6]."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-2**value_bits, 2**value_bits, size=shape).astype(np.float32)
    frac_bits = rng.integers(1, 7, size=shape[-1]).astype(np.float32) if per_axis else 4.0
    return FixedPoint(tf.constant(values), value_bits, tf.constant(frac_bits))


def qfloat(shape, per_axis=False, value_bits=7, seed=0):
    """A random QFloat input: a FixedPoint times positive per-tensor or per-axis scales."""
    rng = np.random.default_rng(seed + 1)
    fp = fixed_point(shape, per_axis, value_bits, seed)
    scales = rng.uniform(0.05, 0.5, size=shape[-1] if per_axis else ()).astype(np.float32)
    return QFloat(fp, tf.constant(scales))


INPUTS = {
    "fp-per-tensor": lambda shape: fixed_point(shape),
    "fp-per-axis": lambda shape: fixed_point(shape, per_axis=True),
    "qfloat-per-tensor": lambda shape: qfloat(shape),
    "qfloat-per-axis": lambda shape: qfloat(shape, per_axis=True),
}


def to_int_fixed(x, scale_bits=8):
    """Integer values and frac_bits of a QTensor input as the layers see it after a QFloat is
    converted to a FixedPoint (scales quantized on scale_bits)."""
    if isinstance(x, QFloat):
        return qfloat_to_fixed(ints(x), frac(x), np.asarray(x.scales), scale_bits)
    return ints(x), frac(x)


def float_gradient(model, inputs):
    """d sum(out^2) / d inputs through a quantized model (straight-through estimators); a list
    of gradients for a list of inputs."""
    many = isinstance(inputs, (list, tuple))
    inputs = [tf.convert_to_tensor(x) for x in (inputs if many else [inputs])]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = model(inputs if many else inputs[0], training=True)
        loss = tf.reduce_sum(tf.square(out))
    grads = tape.gradient(loss, inputs)
    return grads if many else grads[0]


def single_layer_model(layer, input_shape, n_inputs=1, per_axis=False, out_range=3.0):
    """InputQuantizer(s) -> layer -> Dequantizer, with calibrated quantizer ranges.

    Input ranges are 4 (per-tensor) or [1, 2, 4, ...] per channel (per-axis), so inputs get
    different fractional bits; the layer's output quantizer (if any) gets ``out_range``.
    """
    inputs = [keras.Input(input_shape) for _ in range(n_inputs)]
    quantizers = [InputQuantizer(bitwidth=8, axis="per-axis" if per_axis else "per-tensor")
                  for _ in inputs]
    qtensors = [iq(i) for iq, i in zip(quantizers, inputs)]
    for k, iq in enumerate(quantizers):
        if per_axis:
            channels = input_shape[-1]
            iq.range_max.assign([2.0**((c + k) % 4) for c in range(channels)])
        else:
            iq.range_max.assign(4.0 / (k + 1))
    outputs = layer(qtensors if n_inputs > 1 else qtensors[0])
    model = keras.Model(inputs if n_inputs > 1 else inputs[0], Dequantizer()(outputs))
    if getattr(layer, "out_quantizer", None) is not None:
        layer.out_quantizer.range_max.assign(
            tf.fill(layer.out_quantizer.range_max.shape, out_range))
    return model


def random_inputs(shape, n_inputs=1, scale=3.0, seed=0):
    """Float inputs of a single_layer_model (a list for several)."""
    rng = np.random.default_rng(seed)
    xs = [(scale * rng.standard_normal(shape)).astype(np.float32) for _ in range(n_inputs)]
    return xs if n_inputs > 1 else xs[0]
