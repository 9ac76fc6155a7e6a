"""Low-bit quantizers with straight-through pseudo-gradients (the Larq family).

Each scheme is a plain function (``ste_sign``, ``approx_sign``, ...) and a thin serializable
class on top (``SteSign``, ``ApproxSign``, ...), a Keras layer as in Larq, usable as
``input_quantizer`` or ``kernel_quantizer`` of the low-bit layers, by object or by name
(``"ste_sign"``). The function names are also Keras activations
(``keras.layers.Activation("ste_sign")``, ``Dense(..., activation="ste_sign")``).
The forward pass quantizes; the backward pass uses the documented pseudo-gradient.
"""
import abc
import json
import numbers

import tensorflow as tf
import tf_keras as keras

from ..tensors.gradients import custom_gradient
from .registry import ConfigEquality, register_quantizer

#: the metric names a quantizer accepts in ``metrics``.
SUPPORTED_METRICS = ("flip_ratio",)

#: DoReFa modes.
DOREFA_MODES = ("activations", "weights")


#: string id -> functional quantizer usable as a Keras activation (``Activation("ste_sign")``).
_ACTIVATIONS = {}


@keras.saving.register_keras_serializable(package="quantizeml")
class QuantizerActivation:
    """A functional quantizer used as a Keras activation by its string id.

    ``keras.activations.get("ste_sign")`` (so ``Activation("ste_sign")`` and
    ``Dense(..., activation="ste_sign")``) returns this callable: ``ste_sign(x)`` with its
    pseudo-gradient. It exists because tf_keras writes a custom activation *function* to h5 in
    a form that its own h5 loader cannot read back; this object serializes as
    ``{"class_name": "QuantizerActivation", "config": {"identifier": "ste_sign"}}``, which
    h5, SavedModel and .keras files all reload.

    Args:
        identifier (str): the name of a functional quantizer (``"ste_sign"``, ``"ste_tern"``,
            ...).
    """

    def __init__(self, identifier):
        if identifier not in _ACTIVATIONS:
            raise ValueError(f"QuantizerActivation identifier expected one of "
                             f"{sorted(_ACTIVATIONS)}. Received: identifier={identifier!r}")
        self.identifier = identifier
        self.__name__ = identifier
        self.precision = _ACTIVATIONS[identifier].precision

    def __call__(self, inputs):
        return _ACTIVATIONS[self.identifier](inputs)

    def get_config(self):
        return {"identifier": self.identifier}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.identifier == other.identifier

    def __hash__(self):
        return hash((type(self), self.identifier))

    def __repr__(self):
        return f"QuantizerActivation({self.identifier!r})"


def _register_keras_name(name, obj):
    """Adds ``obj`` to Keras' custom objects under the plain ``name`` (what tf_keras'
    activation lookup and its legacy h5 loader search); a name taken by another object
    raises."""
    custom_objects = keras.utils.get_custom_objects()
    other = custom_objects.get(name)
    if other is not None and other != obj:
        raise ValueError(f"Keras custom object name expected to be free. Received: "
                         f"name={name!r}, already registered to {other!r}")
    custom_objects[name] = obj


_register_keras_name("QuantizerActivation", QuantizerActivation)


def _register_function(precision):
    """Registers a functional quantizer with Keras serialization, tags its precision and makes
    its name a Keras activation (:class:`QuantizerActivation`)."""
    def wrap(fn):
        fn.precision = precision
        keras.saving.register_keras_serializable(package="quantizeml")(fn)
        _ACTIVATIONS[fn.__name__] = fn
        _register_keras_name(fn.__name__, QuantizerActivation(fn.__name__))
        return fn
    return wrap


def _check_real(value, name, allow_none=False, minimum=0.0, strict=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} expected a real number {bound}{none}. "
                         f"Received: {name}={value!r}")
    return float(value)


def _check_int(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not low <= value <= high:
        raise ValueError(f"{name} expected an int in [{low}, {high}]. Received: {name}={value!r}")
    return int(value)


def _sign(x):
    """A sign that is never zero: ``-1 if x < 0 else 1``."""
    return tf.sign(tf.sign(x) + 0.1)


def _heaviside(x):
    """``1 if x > 0 else 0``."""
    return tf.sign(tf.nn.relu(x))


def _clipped_gradient(x, dy, clip_value):
    """``dy where |x| <= clip_value else 0`` (``dy`` when clip_value is None)."""
    if clip_value is None:
        return dy
    return tf.where(tf.abs(x) <= clip_value, dy, tf.zeros_like(dy))


@_register_function(precision=1)
def ste_sign(x, clip_value=1.0):
    """Binarizes with the sign function and a clipped straight-through gradient.

    Forward: ``q(x) = -1 if x < 0 else 1``.
    Pseudo-gradient: ``dq/dx = 1 if |x| <= clip_value else 0`` (always 1 when clip_value is
    None).

    Args:
        x (tf.Tensor): float inputs.
        clip_value (float, optional): threshold for clipping gradients. Defaults to 1.0.

    Returns:
        tf.Tensor: the binarized inputs, in {-1, 1}.
    """
    x = tf.convert_to_tensor(x)

    @custom_gradient
    def _call(x):
        def grad(dy):
            return _clipped_gradient(x, dy, clip_value)
        return _sign(x), grad

    return _call(x)


@_register_function(precision=1)
def approx_sign(x):
    """Binarizes with the sign function and the ApproxSign pseudo-gradient (Bi-Real Net).

    Forward: ``q(x) = -1 if x < 0 else 1``.
    Pseudo-gradient: ``dq/dx = 2 - 2|x| if |x| <= 1 else 0``.

    Args:
        x (tf.Tensor): float inputs.

    Returns:
        tf.Tensor: the binarized inputs, in {-1, 1}.
    """
    x = tf.convert_to_tensor(x)

    @custom_gradient
    def _call(x):
        def grad(dy):
            abs_x = tf.abs(x)
            return tf.where(abs_x <= 1.0, (1 - abs_x) * 2 * dy, tf.zeros_like(dy))
        return _sign(x), grad

    return _call(x)


@_register_function(precision=1)
def ste_heaviside(x, clip_value=1.0):
    """Binarizes to {0, 1} with a clipped straight-through gradient.

    Forward: ``q(x) = 1 if x > 0 else 0``.
    Pseudo-gradient: ``dq/dx = 1 if |x| <= clip_value else 0`` (always 1 when clip_value is
    None).

    Args:
        x (tf.Tensor): float inputs.
        clip_value (float, optional): threshold for clipping gradients. Defaults to 1.0.

    Returns:
        tf.Tensor: the binarized inputs, in {0, 1}.
    """
    x = tf.convert_to_tensor(x)

    @custom_gradient
    def _call(x):
        def grad(dy):
            return _clipped_gradient(x, dy, clip_value)
        return _heaviside(x), grad

    return _call(x)


@_register_function(precision=1)
def swish_sign(x, beta=5.0):
    """Binarizes with the sign function and the SignSwish pseudo-gradient.

    Forward: ``q(x) = -1 if x < 0 else 1``.
    Pseudo-gradient: ``dq/dx = beta * (2 - beta * x * tanh(beta * x / 2)) / (1 + cosh(beta * x))``.

    Args:
        x (tf.Tensor): float inputs.
        beta (float, optional): larger values give a closer approximation of the derivative of
            the sign. Defaults to 5.0.

    Returns:
        tf.Tensor: the binarized inputs, in {-1, 1}.
    """
    x = tf.convert_to_tensor(x)

    @custom_gradient
    def _call(x):
        def grad(dy):
            b_x = beta * x
            return dy * beta * (2 - b_x * tf.tanh(b_x * 0.5)) / (1 + tf.cosh(b_x))
        return _sign(x), grad

    return _call(x)


@_register_function(precision=1)
def magnitude_aware_sign(x, clip_value=1.0):
    """Scaled sign of Bi-Real Net (Liu et al., section 3.3).

    Forward: ``q(x) = a * sign(x)`` with ``a = mean(|x|)`` over every axis but the last
    (one scale per output channel; for a 1-D input ``a = |x|``).
    Pseudo-gradient: ``dq/dx = a if |x| <= clip_value else 0`` (``a`` is a constant for the
    gradient).

    Args:
        x (tf.Tensor): float inputs (usually a kernel).
        clip_value (float, optional): threshold for clipping gradients. Defaults to 1.0.

    Returns:
        tf.Tensor: the scaled binarized inputs.
    """
    x = tf.convert_to_tensor(x)
    scale = tf.stop_gradient(tf.reduce_mean(tf.abs(x), axis=list(range(x.shape.rank - 1))))
    return scale * ste_sign(x, clip_value=clip_value)


@_register_function(precision=2)
def ste_tern(x, threshold_value=0.05, ternary_weight_networks=False, clip_value=1.0):
    """Ternarizes with a clipped straight-through gradient.

    Forward: ``q(x) = 1 if x >= D, -1 if x <= -D, 0 if |x| < D``, with the threshold
    ``D = threshold_value``, or ``D = 0.7 * mean(|x|)`` when ``ternary_weight_networks``
    (computed as ``sign(sign(x + D) + sign(x - D))``, so ``q(0) = 0`` when ``D = 0``).
    Pseudo-gradient: ``dq/dx = 1 if |x| <= clip_value else 0`` (always 1 when clip_value is
    None).

    Args:
        x (tf.Tensor): float inputs.
        threshold_value (float, optional): the threshold D. Defaults to 0.05.
        ternary_weight_networks (bool, optional): compute D as in Ternary Weight Networks.
            Defaults to False.
        clip_value (float, optional): threshold for clipping gradients. Defaults to 1.0.

    Returns:
        tf.Tensor: the ternarized inputs, in {-1, 0, 1}.
    """
    x = tf.convert_to_tensor(x)

    @custom_gradient
    def _call(x):
        if ternary_weight_networks:
            threshold = 0.7 * tf.reduce_sum(tf.abs(x)) / tf.cast(tf.size(x), x.dtype)
        else:
            threshold = threshold_value

        def grad(dy):
            return _clipped_gradient(x, dy, clip_value)
        return tf.sign(tf.sign(x + threshold) + tf.sign(x - threshold)), grad

    return _call(x)


def _round_with_identity_gradient(x, levels):
    """``round(x * levels) / levels`` (half to even) with an identity gradient."""
    @custom_gradient
    def _call(x):
        return tf.round(x * levels) / levels, lambda dy: dy
    return _call(x)


@_register_function(precision=None)
def dorefa(x, k_bit=2, mode="activations"):
    """k-bit DoReFa quantization (Zhou et al.), for activations or weights.

    With ``n = 2^k_bit - 1`` and ``quantize_k(v) = round(v * n) / n`` (half to even):

    - activations: ``q(x) = quantize_k(clip(x, 0, 1))``;
      pseudo-gradient ``dq/dx = 1 if 0 <= x <= 1 else 0``.
    - weights: ``q(w) = 2 * quantize_k(tanh(w) / (2 * max|tanh(w)|) + 1/2) - 1``;
      pseudo-gradient ``dq/dw = (1 - tanh(w)^2) / max|tanh(w)|`` (the max is a constant for
      the gradient; an all-zero tensor is not normed).

    Args:
        x (tf.Tensor): float inputs.
        k_bit (int, optional): number of bits, in [1, 32]. Defaults to 2.
        mode (str, optional): "activations" or "weights". Defaults to "activations".

    Returns:
        tf.Tensor: the quantized inputs, in [0, 1] (activations) or [-1, 1] (weights).

    Raises:
        ValueError: for a bad mode or k_bit.
    """
    k_bit = _check_int(k_bit, "k_bit", 1, 32)
    if mode not in DOREFA_MODES:
        raise ValueError(f"mode expected one of {list(DOREFA_MODES)}. Received: mode={mode!r}")
    x = tf.convert_to_tensor(x)
    levels = 2.0 ** k_bit - 1
    if mode == "activations":
        return _round_with_identity_gradient(tf.clip_by_value(x, 0.0, 1.0), levels)
    limited = tf.tanh(x)
    dividend = tf.stop_gradient(tf.reduce_max(tf.abs(limited)))
    normed = tf.math.divide_no_nan(limited, 2.0 * dividend) + 0.5
    return 2.0 * _round_with_identity_gradient(normed, levels) - 1.0


#: Keras layer arguments, left out of quantizer equality (an automatic ``name`` differs between
#: two otherwise identical quantizers).
_LAYER_ONLY_KEYS = ("name",)


class BaseQuantizer(ConfigEquality, keras.layers.Layer):
    """Base class of the low-bit quantizers (Larq's ``Quantizer``): a Keras layer.

    A quantizer is a layer ``q(inputs) -> outputs`` with a ``precision`` attribute (the number
    of bits of its outputs, None when not fixed) and a Keras-serializable config. As Larq's,
    it takes the Keras layer arguments (``name``, ``dtype``, ``trainable``, ...), so it can be
    used as a layer of a model too. Two quantizers are equal when they have the same class and
    the same config, their names aside.

    Args:
        metrics (list of str, optional): training metrics the layer using this quantizer as
            kernel quantizer records; only "flip_ratio" is available. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = None

    def __init__(self, metrics=None, **kwargs):
        if metrics is not None:
            if isinstance(metrics, str) or not all(m in SUPPORTED_METRICS for m in metrics):
                raise ValueError(f"metrics expected None or a list of {list(SUPPORTED_METRICS)}. "
                                 f"Received: metrics={metrics!r}")
            metrics = list(metrics)
        super().__init__(**kwargs)
        # ``metrics`` is a property of Keras layers (their metric objects): kept apart
        self._custom_metrics = metrics

    @property
    def custom_metrics(self):
        """list of str or None: the metric names given as ``metrics``."""
        return self._custom_metrics

    @abc.abstractmethod
    def call(self, inputs):
        """Quantizes ``inputs``."""

    def get_config(self):
        return {**super().get_config(), "metrics": self._custom_metrics}

    def _equality_config(self):
        config = self.get_config()
        for key in _LAYER_ONLY_KEYS:
            config.pop(key, None)
        return config

    def __eq__(self, other):
        return type(self) is type(other) and self._equality_config() == other._equality_config()

    def __hash__(self):
        return hash((type(self), json.dumps(self._equality_config(), sort_keys=True,
                                            default=repr)))


@register_quantizer("noop", "no_op")
class NoOp(BaseQuantizer):
    """A no-op quantizer that only tags a precision: ``q(x) = x``, ``dq/dx = 1``.

    Args:
        precision (int): the precision to report for the variable, in [1, 32].
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    def __init__(self, precision, metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.precision = _check_int(precision, "precision", 1, 32)

    def call(self, inputs):
        return tf.identity(inputs)

    def get_config(self):
        return {**super().get_config(), "precision": self.precision}


@register_quantizer("ste_sign")
class SteSign(BaseQuantizer):
    """Binary quantizer: :func:`ste_sign` (``-1 if x < 0 else 1``, gradient
    ``1 if |x| <= clip_value else 0``).

    Args:
        clip_value (float, optional): threshold for clipping gradients; None does not clip.
            Defaults to 1.0.
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = 1

    def __init__(self, clip_value=1.0, metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.clip_value = _check_real(clip_value, "clip_value", allow_none=True)

    def call(self, inputs):
        return ste_sign(inputs, clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


@register_quantizer("approx_sign")
class ApproxSign(BaseQuantizer):
    """Binary quantizer: :func:`approx_sign` (``-1 if x < 0 else 1``, gradient
    ``2 - 2|x| if |x| <= 1 else 0``).

    Args:
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = 1

    def call(self, inputs):
        return approx_sign(inputs)


@register_quantizer("ste_heaviside")
class SteHeaviside(BaseQuantizer):
    """Binary quantizer to {0, 1}: :func:`ste_heaviside` (``1 if x > 0 else 0``, gradient
    ``1 if |x| <= clip_value else 0``).

    Args:
        clip_value (float, optional): threshold for clipping gradients; None does not clip.
            Defaults to 1.0.
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = 1

    def __init__(self, clip_value=1.0, metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.clip_value = _check_real(clip_value, "clip_value", allow_none=True)

    def call(self, inputs):
        return ste_heaviside(inputs, clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


@register_quantizer("swish_sign")
class SwishSign(BaseQuantizer):
    """Binary quantizer: :func:`swish_sign` (``-1 if x < 0 else 1``, gradient
    ``beta * (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))``).

    Args:
        beta (float, optional): sharpness of the pseudo-gradient, > 0. Defaults to 5.0.
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = 1

    def __init__(self, beta=5.0, metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.beta = _check_real(beta, "beta", strict=True)

    def call(self, inputs):
        return swish_sign(inputs, beta=self.beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@register_quantizer("magnitude_aware_sign")
class MagnitudeAwareSign(BaseQuantizer):
    """Scaled binary quantizer of Bi-Real Net: :func:`magnitude_aware_sign`
    (``mean(|x|) * sign(x)`` per last-axis channel, gradient
    ``mean(|x|) if |x| <= clip_value else 0``).

    Args:
        clip_value (float, optional): threshold for clipping gradients; None does not clip.
            Defaults to 1.0.
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = 1

    def __init__(self, clip_value=1.0, metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.clip_value = _check_real(clip_value, "clip_value", allow_none=True)

    def call(self, inputs):
        return magnitude_aware_sign(inputs, clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


@register_quantizer("ste_tern")
class SteTern(BaseQuantizer):
    """Ternary quantizer: :func:`ste_tern` (``sign(x) if |x| >= D else 0``, gradient
    ``1 if |x| <= clip_value else 0``).

    Args:
        threshold_value (float, optional): the threshold D, >= 0. Defaults to 0.05.
        ternary_weight_networks (bool, optional): use ``D = 0.7 * mean(|x|)`` instead.
            Defaults to False.
        clip_value (float, optional): threshold for clipping gradients; None does not clip.
            Defaults to 1.0.
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).
    """

    precision = 2

    def __init__(self, threshold_value=0.05, ternary_weight_networks=False, clip_value=1.0,
                 metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.threshold_value = _check_real(threshold_value, "threshold_value")
        if not isinstance(ternary_weight_networks, bool):
            raise TypeError("ternary_weight_networks expected a bool. "
                            f"Received: ternary_weight_networks={ternary_weight_networks!r}")
        self.ternary_weight_networks = ternary_weight_networks
        self.clip_value = _check_real(clip_value, "clip_value", allow_none=True)

    def call(self, inputs):
        return ste_tern(inputs, threshold_value=self.threshold_value,
                        ternary_weight_networks=self.ternary_weight_networks,
                        clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "threshold_value": self.threshold_value,
                "ternary_weight_networks": self.ternary_weight_networks,
                "clip_value": self.clip_value}


@register_quantizer("DoReFaQuantizer", "dorefa_quantizer", "dorefa")
class DoReFa(BaseQuantizer):
    """k-bit quantizer of DoReFa-Net: :func:`dorefa`.

    Activations: ``quantize_k(clip(x, 0, 1))``, gradient ``1 if 0 <= x <= 1 else 0``.
    Weights: ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``, gradient
    ``(1 - tanh(w)^2) / max|tanh(w)|``. The weights mode expects weights in [-1, 1] (the
    default ``WeightClip`` constraint).

    Args:
        k_bit (int, optional): number of bits, in [1, 32]. Defaults to 2.
        mode (str, optional): "activations" or "weights". Defaults to "activations".
        metrics (list of str, optional): see :class:`BaseQuantizer`. Defaults to None.
        **kwargs: the arguments of ``keras.layers.Layer`` (name, dtype, trainable, ...).

    Raises:
        ValueError: for a bad value of mode.
    """

    def __init__(self, k_bit=2, mode="activations", metrics=None, **kwargs):
        super().__init__(metrics=metrics, **kwargs)
        self.precision = _check_int(k_bit, "k_bit", 1, 32)
        if mode not in DOREFA_MODES:
            raise ValueError(f"mode expected one of {list(DOREFA_MODES)}. Received: mode={mode!r}")
        self.mode = mode

    @property
    def k_bit(self):
        return self.precision

    def call(self, inputs):
        return dorefa(inputs, k_bit=self.precision, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "k_bit": self.precision, "mode": self.mode}


#: Larq's alias of :class:`DoReFa`.
DoReFaQuantizer = DoReFa
