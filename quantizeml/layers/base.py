"""Shared plumbing of quantizeml layers: registration, quant_config checks, saturation."""
import functools
import inspect

import tensorflow as tf
import tf_keras as keras

from ..recipes import buffer, fast_paths
from ..recipes.fast_paths import eager_layer_calls  # noqa: F401  (documented here)
from ..tensors import FixedPoint, QTensor
from .recording import generation, is_recording

from .registry import QUANTIZATION_TARGETS, register_twin

#: The former name of :func:`quantizeml.layers.registry.register_twin`.
register_quantize_target = register_twin


@tf.autograph.experimental.do_not_convert
def _dispatch(layer, raw, args, kwargs):
    """Runs a layer call op by op or as a compiled eager call (the choice is
    :func:`quantizeml.recipes.fast_paths.layer_call`'s), recording the saturation it measured."""
    return fast_paths.layer_call(
        layer, raw, args, kwargs, compile_after=COMPILE_AFTER_CALLS,
        compilable=layer.compile_eager_calls and not is_recording(), generation=generation,
        store=_store_saturation)


#: Eager calls of a quantizeml layer run op by op this many times, then as a compiled
#: tf.function (None: never compile). Integer results are identical either way.
COMPILE_AFTER_CALLS = 2
#: layer -> its compiled eager calls (see :func:`quantizeml.recipes.fast_paths.layer_call`)
_COMPILED = fast_paths.COMPILED


class StaticCallMixin:
    """Marks the ``call`` of each subclass with ``tf.autograph.experimental.do_not_convert``
    and compiles repeated eager calls.

    quantizeml layers branch only on static Python values (bitwidths, configuration, shapes),
    so AutoGraph has nothing to convert in them; Keras would otherwise transpile every call of
    every layer while building a functional model (most of the time quantize() took).

    An eager inference call (``training`` falsy, outside recording mode and distribution
    strategies) runs op by op the first ``COMPILE_AFTER_CALLS`` times, then through a per-layer
    ``tf.function``: a quantized layer runs ~100-200 small TensorFlow ops, whose Python
    dispatch dominated eager inference. Saturation ratios measured inside compiled calls are
    recorded as in eager ones; ``eager_layer_calls()`` turns compilation off. Sub-layers (the
    quantizers of a layer) run inside their caller's call.
    """

    #: False for layers that must always run op by op.
    compile_eager_calls = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("call")
        if call is not None and not hasattr(call, "__signature__"):
            raw = tf.autograph.experimental.do_not_convert(call)

            @functools.wraps(call)
            def dispatched(self, *args, **kwargs):
                return _dispatch(self, raw, args, kwargs)

            # Keras reads the call signature (``training``, ``mask``) with getfullargspec,
            # which honours __signature__ but not __wrapped__
            dispatched.__signature__ = inspect.signature(call)
            cls.call = dispatched


def register_keras(cls):
    """Registers a class with Keras serialization under the ``quantizeml`` package."""
    return keras.saving.register_keras_serializable(package="quantizeml")(cls)


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
    """Stores the ratio of ``values`` outside ``[-2^vb, 2^vb - 1]`` by more than
    ``tolerance`` quantization steps, in eager calls (compiled eager calls included).

    check_quantization reads ``layer.saturation`` after running samples eagerly. Graph calls
    (predict, fit) record nothing.
    """
    if not saturation_observed(values):
        return
    collector = fast_paths.saturation_collector()
    eager = tf.executing_eagerly()
    int_max = 2.0**value_bits - 1 + tolerance
    outside = tf.logical_or(values > tf.constant(int_max, values.dtype),
                            values < tf.constant(-int_max - 1, values.dtype))
    ratio = tf.math.divide_no_nan(tf.reduce_sum(tf.cast(outside, tf.float32)),
                                  tf.cast(tf.size(values), tf.float32))
    if eager:
        _store_saturation(layer, key, float(ratio))
        return
    ratios = collector["ratios"]
    previous = ratios.get((layer, key))
    ratios[(layer, key)] = ratio if previous is None else tf.maximum(previous, ratio)


def saturation_observed(values):
    """bool: whether :func:`record_saturation` records ``values`` (eager and compiled eager
    calls), so that callers compute what it measures only then."""
    return fast_paths.saturation_observed(values)


def _store_saturation(layer, key, ratio):
    store = layer.__dict__.setdefault("_saturation", {})
    store[key] = max(store.get(key, 0.0), ratio)


def saturation(layer):
    """The saturation ratios recorded on a layer, by key ({} when none)."""
    return dict(layer.__dict__.get("_saturation", {}))


def clip_to_buffer(layer, fp, buffer_bits):
    """Clips a FixedPoint to the layer's integer buffer, recording saturation (see
    :func:`quantizeml.recipes.buffer.clip_to_buffer`)."""
    return buffer.clip_to_buffer(fp, buffer_bits, functools.partial(record_saturation, layer,
                                                                    "buffer"))


def buffer_add(layer, x, y, buffer_bits):
    """Exact sum of two QTensors on the same grid (FixedPoints with equal frac_bits, or QFloats
    with equal scales and frac_bits), clipped to the layer buffer with saturation recorded (see
    :func:`quantizeml.recipes.buffer.buffer_add`)."""
    return buffer.buffer_add(x, y, buffer_bits, functools.partial(record_saturation, layer,
                                                                  "buffer"))


def is_qtensor(x):
    return isinstance(x, QTensor)
