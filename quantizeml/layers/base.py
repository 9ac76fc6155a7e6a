"""Shared plumbing of quantizeml layers: registration, quant_config checks, saturation."""
import inspect

import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, QTensor

#: float Keras layer class -> its quantized twin. Filled by :func:`register_quantize_target`.
QUANTIZATION_TARGETS = {}


class StaticCallMixin:
    """Marks the ``call`` of each subclass with ``tf.autograph.experimental.do_not_convert``.

    quantizeml layers branch only on static Python values (bitwidths, configuration, shapes),
    so AutoGraph has nothing to convert in them; Keras would otherwise transpile every call of
    every layer while building a functional model (most of the time quantize() took).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("call")
        if call is not None and not hasattr(call, "__signature__"):
            wrapped = tf.autograph.experimental.do_not_convert(call)
            # Keras reads the call signature (``training``, ``mask``) with getfullargspec,
            # which honours __signature__ but not __wrapped__
            wrapped.__signature__ = inspect.signature(call)
            cls.call = wrapped


def register_keras(cls):
    """Registers a class with Keras serialization under the ``quantizeml`` package."""
    return keras.saving.register_keras_serializable(package="quantizeml")(cls)


def register_quantize_target(*float_classes):
    """Class decorator mapping float Keras layer classes to a quantized twin.

    Raises:
        ValueError: when a float class is already mapped to another twin.
    """
    def wrap(cls):
        for float_cls in float_classes:
            other = QUANTIZATION_TARGETS.get(float_cls)
            if other is not None and other is not cls:
                raise ValueError(f"register_quantize_target expected one twin per float layer. "
                                 f"Received: {float_cls.__name__} already mapped to "
                                 f"{other.__name__}, new twin {cls.__name__}")
            QUANTIZATION_TARGETS[float_cls] = cls
        return cls
    return wrap


def check_quant_config(layer_name, quant_config, allowed):
    """Validates a quant_config dict: a dict whose keys are in ``allowed``.

    Returns:
        dict: a copy of the config (an empty dict for None).
    """
    if quant_config is None:
        return {}
    if not isinstance(quant_config, dict):
        raise TypeError(f"Layer {layer_name}: quant_config expected a dict. "
                        f"Received: quant_config={quant_config!r}")
    unknown = sorted(set(quant_config) - set(allowed))
    if unknown:
        raise ValueError(f"Layer {layer_name}: quant_config expected keys among "
                         f"{sorted(allowed)}. Received: unknown keys {unknown}")
    return dict(quant_config)


def check_qtensor(layer, inputs, types=(FixedPoint,), per_tensor=False):
    """Raises a TypeError/ValueError naming the layer when inputs are not of ``types``."""
    if not isinstance(inputs, types):
        allowed = " or ".join(t.__name__ for t in types)
        raise TypeError(f"Layer {layer.name} ({type(layer).__name__}) expected {allowed} "
                        f"inputs. Received: inputs of type {type(inputs).__name__}")
    if per_tensor and not inputs.per_tensor:
        raise ValueError(f"Layer {layer.name} ({type(layer).__name__}) expected per-tensor "
                         f"inputs. Received: per-axis inputs of shape {inputs.shape}")
    return inputs


def record_saturation(layer, key, values, value_bits, tolerance=0):
    """Stores, in eager mode, the ratio of ``values`` outside ``[-2^vb, 2^vb - 1]`` by more
    than ``tolerance`` quantization steps.

    check_quantization reads ``layer.saturation`` after running samples eagerly.
    """
    if not tf.executing_eagerly():
        return
    int_max = 2.0**value_bits - 1 + tolerance
    values = tf.cast(values, tf.float64)
    outside = tf.logical_or(values > int_max, values < -int_max - 1)
    ratio = float(tf.reduce_mean(tf.cast(outside, tf.float32))) if tf.size(values) > 0 else 0.0
    store = layer.__dict__.setdefault("_saturation", {})
    store[key] = max(store.get(key, 0.0), ratio)


def saturation(layer):
    """The saturation ratios recorded on a layer, by key ({} when none)."""
    return dict(layer.__dict__.get("_saturation", {}))


def clip_to_buffer(layer, fp, buffer_bits):
    """Clips a FixedPoint to the layer's integer buffer, recording saturation."""
    value_bits = buffer_bits - 1
    if fp.value_bits <= value_bits:
        return fp
    record_saturation(layer, "buffer", fp.values, value_bits)
    return FixedPoint(fp.values, value_bits, fp.frac_bits)


def buffer_add(layer, x, y, buffer_bits):
    """Exact sum of two QTensors on the same grid (FixedPoints with equal frac_bits, or QFloats
    with equal scales and frac_bits), clipped to the layer buffer with saturation recorded."""
    fx = x.fp if isinstance(x, QFloat) else x
    fy = y.fp if isinstance(y, QFloat) else y
    value_bits = max(fx.value_bits, fy.value_bits) + 1
    dtype = tf.float64 if value_bits > 23 else tf.float32
    total = FixedPoint(tf.cast(fx.values, dtype) + tf.cast(fy.values, dtype),
                       min(value_bits, 52), fx.frac_bits)
    total = clip_to_buffer(layer, total, buffer_bits)
    return QFloat(total, x.scales) if isinstance(x, QFloat) else total


def is_qtensor(x):
    return isinstance(x, QTensor)
