"""The extension API of TF Model Optimization: ``Quantizer`` and ``QuantizeConfig``.

A :class:`Quantizer` creates its state on the layer it quantizes for (``build``) and
fake-quantizes a tensor with it (``__call__(inputs, training, weights)``). A
:class:`QuantizeConfig` says which weights and activations of a layer are quantized, and how.
The concrete quantizers keep a [min, max] range per tensor (or per last-axis channel) and
fake-quantize with :func:`~quantizeml.quantizers.fake_quant_with_min_max_vars`.
"""
import abc

import tensorflow as tf
import tf_keras as keras

from .fake_quant import check_num_bits, fake_quant_with_min_max_vars
from .registry import ConfigEquality, register_quantizer


class Quantizer(ConfigEquality, metaclass=abc.ABCMeta):
    """ABC interface which encapsulates the logic of how to quantize tensors.

    A Quantizer applies the mathematical transformations which actually quantize a tensor.
    Used with a :class:`QuantizeConfig` it controls how a layer is quantized.

    Example:
        ```python
        class FixedRangeQuantizer(Quantizer):
            # Example quantizer which clips tensors in a fixed range.

            def build(self, tensor_shape, name, layer):
                range_var = layer.add_weight(
                    name + '_range',
                    initializer=keras.initializers.Constant(6.0),
                    trainable=False)
                return {'range_var': range_var}

            def __call__(self, inputs, training, weights, **kwargs):
                return keras.backend.clip(inputs, 0.0, weights['range_var'])

            def get_config(self):
                return {}
        ```
    """

    @abc.abstractmethod
    def build(self, tensor_shape, name, layer):
        """Constructs the weights required by the quantizer.

        Invoked during the build stage of the layer the quantizer is used for: the variables
        are created on, owned and serialized by that layer.

        Args:
            tensor_shape (tf.TensorShape): shape of the tensor to quantize.
            name (str): name of the tensor.
            layer (keras.layers.Layer): the layer quantizing the tensor.

        Returns:
            dict: the constructed weights, passed to ``__call__`` as ``weights``.
        """

    @abc.abstractmethod
    def __call__(self, inputs, training, weights, **kwargs):
        """Applies quantization to the input tensor.

        Args:
            inputs (tf.Tensor): the tensor to quantize.
            training (bool or tf.Tensor): whether the graph is currently training.
            weights (dict): the weights created by ``build``.
            **kwargs: additional variables which may be passed to the quantizer.

        Returns:
            tf.Tensor: the quantized tensor.
        """

    @abc.abstractmethod
    def get_config(self):
        """Returns the config used to serialize the Quantizer."""

    @classmethod
    def from_config(cls, config):
        """Instantiates a Quantizer from its config (the output of ``get_config()``)."""
        return cls(**config)


class QuantizeConfig(metaclass=abc.ABCMeta):
    """ABC interface for Keras layers to express how they should be quantized.

    Example:
        ```python
        class MyDenseQuantizeConfig(QuantizeConfig):

            def get_weights_and_quantizers(self, layer):
                return [(layer.kernel, LastValueQuantizer())]

            def get_activations_and_quantizers(self, layer):
                return [(layer.activation, MovingAverageQuantizer())]

            def set_quantize_weights(self, layer, quantize_weights):
                layer.kernel = quantize_weights[0]

            def set_quantize_activations(self, layer, quantize_activations):
                layer.activation = quantize_activations[0]

            def get_output_quantizers(self, layer):
                return []

            def get_config(self):
                return {}
        ```
    """

    @abc.abstractmethod
    def get_weights_and_quantizers(self, layer):
        """Returns the weights to quantize with their quantizers: a list of
        ``(weight, Quantizer)`` pairs."""

    @abc.abstractmethod
    def get_activations_and_quantizers(self, layer):
        """Returns the activations to quantize with their quantizers: a list of
        ``(activation, Quantizer)`` pairs."""

    @abc.abstractmethod
    def set_quantize_weights(self, layer, quantize_weights):
        """Replaces the weights of the layer with the quantized weights (a list, in the order
        of ``get_weights_and_quantizers``)."""

    @abc.abstractmethod
    def set_quantize_activations(self, layer, quantize_activations):
        """Replaces the activations of the layer with the quantized activations (a list, in
        the order of ``get_activations_and_quantizers``)."""

    @abc.abstractmethod
    def get_output_quantizers(self, layer):
        """Returns the quantizers of the layer outputs (an empty list for none)."""

    @abc.abstractmethod
    def get_config(self):
        """Returns the config used to serialize the QuantizeConfig."""

    @classmethod
    def from_config(cls, config):
        """Instantiates a QuantizeConfig from its config."""
        return cls(**config)


def _check_bool(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} expected a bool. Received: {name}={value!r}")
    return value


def batch_range(inputs, per_axis=False, symmetric=False, num_bits=8, narrow_range=False):
    """The [min, max] range of a batch, widened to contain 0 (as TF-MOT computes it).

    ``batch_min, batch_max`` are the min and max of the inputs (per last-axis channel when
    ``per_axis``). Asymmetric: ``[min(batch_min, 0), max(batch_max, 0)]``. Symmetric, with
    ``r = -1`` if narrow_range else ``-(2^num_bits - 2) / 2^num_bits``:
    ``[min(batch_min, batch_max / r), max(batch_max, batch_min * r)]``.

    Returns:
        tuple: ``(range_min, range_max)`` tensors (scalars, or vectors when per_axis).
    """
    rank = inputs.shape.rank
    if per_axis and rank == 1:
        batch_min = batch_max = inputs
    else:
        axis = list(range(rank - 1)) if per_axis else None
        batch_min = tf.reduce_min(inputs, axis=axis)
        batch_max = tf.reduce_max(inputs, axis=axis)
    if symmetric:
        ratio = -1.0 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
        return (tf.minimum(batch_min, batch_max / ratio),
                tf.maximum(batch_max, batch_min * ratio))
    return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)


def _smart_cond(training, true_fn, false_fn):
    """``true_fn()`` when training, ``false_fn()`` otherwise; a tf.cond for a symbolic flag."""
    if training is None:
        return false_fn()
    static = tf.get_static_value(training) if isinstance(training, (tf.Tensor, tf.Variable)) \
        else training
    if static is None:
        return tf.cond(tf.cast(training, tf.bool), true_fn, false_fn)
    return true_fn() if bool(static) else false_fn()


class _RangeQuantizer(Quantizer):
    """A quantizer keeping [min, max] range variables; subclasses say how a batch updates them.

    Args:
        num_bits (int): number of bits for quantization, in [2, 16].
        per_axis (bool): whether to keep one range per channel of the last axis.
        symmetric (bool): whether the range is symmetric around 0 (see :func:`batch_range`).
        narrow_range (bool): whether the integer range starts at 1 (e.g. [-127, 127] for 8 bits).
    """

    #: initial values of the range variables.
    initial_range = (-6.0, 6.0)

    def __init__(self, num_bits, per_axis, symmetric, narrow_range):
        self.num_bits = check_num_bits(num_bits)
        self.per_axis = _check_bool(per_axis, "per_axis")
        self.symmetric = _check_bool(symmetric, "symmetric")
        self.narrow_range = _check_bool(narrow_range, "narrow_range")

    def build(self, tensor_shape, name, layer):
        """Creates the non-trainable ``<name>_min`` and ``<name>_max`` weights on ``layer``.

        Returns:
            dict: ``{"min_var": ..., "max_var": ...}``.
        """
        shape = ()
        if self.per_axis:
            tensor_shape = tf.TensorShape(tensor_shape)
            if tensor_shape.rank is None or tensor_shape[-1] is None:
                raise ValueError(f"{type(self).__name__} with per_axis=True expected a tensor "
                                 f"shape with a known last dimension. "
                                 f"Received: tensor_shape={tensor_shape}")
            shape = (tensor_shape[-1],)
        initial_min, initial_max = self.initial_range
        min_var = layer.add_weight(name + "_min", shape=shape, trainable=False,
                                   initializer=keras.initializers.Constant(initial_min))
        max_var = layer.add_weight(name + "_max", shape=shape, trainable=False,
                                   initializer=keras.initializers.Constant(initial_max))
        return {"min_var": min_var, "max_var": max_var}

    @abc.abstractmethod
    def _update(self, min_var, max_var, range_min, range_max):
        """The new range from the variables and the batch range (assigned by the caller)."""

    def __call__(self, inputs, training, weights, **kwargs):
        """Fake-quantizes ``inputs``; when training, first updates the range from the batch.

        Forward: ``fake_quant_with_min_max_vars(inputs, min_var, max_var, num_bits,
        narrow_range, axis=-1 if per_axis else None)``. Gradient: 1 inside the nudged range,
        0 outside (the range is not differentiated through).

        Args:
            inputs (tf.Tensor): the tensor to quantize.
            training (bool, tf.Tensor or None): update the range when True (None is False).
            weights (dict): the weights created by :meth:`build`.

        Returns:
            tf.Tensor: the fake-quantized tensor.
        """
        inputs = tf.convert_to_tensor(inputs)
        min_var, max_var = weights["min_var"], weights["max_var"]

        def update():
            range_min, range_max = batch_range(
                tf.cast(inputs, min_var.dtype), self.per_axis, self.symmetric, self.num_bits,
                self.narrow_range)
            new_min, new_max = self._update(min_var, max_var, range_min, range_max)
            min_var.assign(new_min)
            max_var.assign(new_max)
            return tf.stop_gradient(new_min), tf.stop_gradient(new_max)

        def keep():
            return tf.convert_to_tensor(min_var), tf.convert_to_tensor(max_var)

        range_min, range_max = _smart_cond(training, update, keep)
        return fake_quant_with_min_max_vars(inputs, range_min, range_max, self.num_bits,
                                            self.narrow_range, axis=-1 if self.per_axis else None)

    def get_config(self):
        return {"num_bits": self.num_bits, "per_axis": self.per_axis,
                "symmetric": self.symmetric, "narrow_range": self.narrow_range}


@register_quantizer("last_value_quantizer")
class LastValueQuantizer(_RangeQuantizer):
    """Quantizes a tensor with the range of its last batch (TF-MOT's weight quantizer).

    Training: ``[min, max] <- batch_range(x)`` (see :func:`batch_range`). Initial range
    [-6, 6]. Defaults are TF-MOT's 8-bit weight settings.

    Args:
        num_bits (int, optional): number of bits, in [2, 16]. Defaults to 8.
        per_axis (bool, optional): one range per last-axis channel. Defaults to False.
        symmetric (bool, optional): symmetric range. Defaults to True.
        narrow_range (bool, optional): integer range starts at 1. Defaults to True.
    """

    def __init__(self, num_bits=8, per_axis=False, symmetric=True, narrow_range=True):
        super().__init__(num_bits, per_axis, symmetric, narrow_range)

    def _update(self, min_var, max_var, range_min, range_max):
        return range_min, range_max


@register_quantizer("moving_average_quantizer")
class MovingAverageQuantizer(_RangeQuantizer):
    """Quantizes a tensor with an exponential moving average of its batch ranges (TF-MOT's
    activation quantizer).

    Training: ``min <- min - (min - batch_min) * (1 - 0.999)`` (same for max), with
    ``[batch_min, batch_max] = batch_range(x)``. Initial range [-6, 6]. Defaults are TF-MOT's
    8-bit activation settings.

    Args:
        num_bits (int, optional): number of bits, in [2, 16]. Defaults to 8.
        per_axis (bool, optional): one range per last-axis channel. Defaults to False.
        symmetric (bool, optional): symmetric range. Defaults to False.
        narrow_range (bool, optional): integer range starts at 1. Defaults to False.
    """

    #: the EMA decay of the range.
    ema_decay = 0.999

    def __init__(self, num_bits=8, per_axis=False, symmetric=False, narrow_range=False):
        super().__init__(num_bits, per_axis, symmetric, narrow_range)

    def _update(self, min_var, max_var, range_min, range_max):
        min_value, max_value = tf.convert_to_tensor(min_var), tf.convert_to_tensor(max_var)
        return (min_value - (min_value - range_min) * (1 - self.ema_decay),
                max_value - (max_value - range_max) * (1 - self.ema_decay))


@register_quantizer("all_values_quantizer")
class AllValuesQuantizer(_RangeQuantizer):
    """Quantizes a tensor with the range of all the values seen so far.

    Training: ``min <- min(min, batch_min, 0)``, ``max <- max(max, batch_max, 0)`` with
    ``[batch_min, batch_max] = batch_range(x)``. Initial range [0, 0]. Unlike TF-MOT, which
    ignores it, ``per_axis`` is honoured.

    Args:
        num_bits (int, optional): number of bits, in [2, 16]. Defaults to 8.
        per_axis (bool, optional): one range per last-axis channel. Defaults to False.
        symmetric (bool, optional): symmetric range. Defaults to False.
        narrow_range (bool, optional): integer range starts at 1. Defaults to False.
    """

    initial_range = (0.0, 0.0)

    def __init__(self, num_bits=8, per_axis=False, symmetric=False, narrow_range=False):
        super().__init__(num_bits, per_axis, symmetric, narrow_range)

    def _update(self, min_var, max_var, range_min, range_max):
        return (tf.minimum(tf.minimum(tf.convert_to_tensor(min_var), range_min), 0.0),
                tf.maximum(tf.maximum(tf.convert_to_tensor(max_var), range_max), 0.0))
