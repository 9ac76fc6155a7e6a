"""Empirical bias correction of low-bit quantized weights (Nagel et al., 2019).

Rounding weights to few bits shifts the mean of a layer's outputs: ``E[(W_q - W) x] != 0``.
For each layer with weights and a bias, in topological order, the mean difference between
its quantized outputs (dequantized) and the float model's outputs is measured on the
calibration samples, per output channel, and subtracted from the layer's (float, trainable)
bias; the next layers are measured with the corrected ones. The layers producing the model
outputs are left alone (their bias carries the class priors; a per-class mean shift measured on
a few hundred samples is mostly noise).
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import QTensor
from .graph import output_layers

#: Weight bitwidth up to which quantize() corrects the biases.
MAX_CORRECTED_BITS = 4


def _weight_bits(layer):
    bits = [q.bitwidth for name, q in vars(layer).items()
            if name.endswith("weight_quantizer") and hasattr(q, "bitwidth")]
    return min(bits) if bits else None


def _mean_shift(quant_part, float_part, batches, channels):
    """Per-channel mean of ``quant_part - float_part`` outputs over the batches, both models
    run in one compiled pass per batch."""
    @tf.function(reduce_retracing=True)
    def sums(x):
        q = quant_part(x, training=False)
        q = q.to_float() if isinstance(q, QTensor) else q
        diff = tf.reshape(tf.cast(q, tf.float64) - tf.cast(float_part(x, training=False),
                                                           tf.float64), (-1, channels))
        return tf.reduce_sum(diff, axis=0), tf.shape(diff)[0]

    total, count = np.zeros(channels, np.float64), 0
    for batch in batches:
        s, n = sums(batch if len(batch) > 1 else batch[0])
        total += s.numpy()
        count += int(n)
    return total / max(count, 1)


def correct_biases(model, qmodel, batches, max_bits=MAX_CORRECTED_BITS):
    """Corrects, in place, the biases of the quantized layers whose weights have at most
    ``max_bits`` bits.

    Args:
        model (keras.Model): the float reference model (same layer names).
        qmodel (keras.Model): the calibrated quantized model.
        batches (iterable): calibration batches (lists of arrays, one per input); iterated
            once per corrected layer.
        max_bits (int, optional): largest weight bitwidth corrected. Defaults to 4.

    Returns:
        list(str): the names of the corrected layers.
    """
    finals = output_layers(qmodel) | output_layers(model)
    names = {layer.name for layer in model.layers}
    corrected = []
    for layer in qmodel.layers:
        bits = _weight_bits(layer)
        bias = getattr(layer, "bias", None)
        if bits is None or bits > max_bits or bias is None or layer.name not in names \
                or layer.name in finals:
            continue
        channels = int(bias.shape[-1])
        float_part = keras.Model(model.inputs, model.get_layer(layer.name).output)
        quant_part = keras.Model(qmodel.inputs, layer.output)
        shift = _mean_shift(quant_part, float_part, batches, channels)
        bias.assign(bias.numpy() - shift.astype(bias.dtype.as_numpy_dtype))
        corrected.append(layer.name)
    return corrected
