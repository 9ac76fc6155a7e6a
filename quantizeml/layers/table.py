"""Lookup-table activations: QuantizedActivation, QuantizedLeakyReLU, QuantizedELU, QuantizedPReLU.

After a requantization an activation's input holds few distinct integers (8 bits: 256), so
any elementwise function of it is an exact table of output integers: ``y = T[x - x_min]``.
The table is computed from the function in float64 on the input grid (the integers times
``2^-frac_bits``, times the QFloat scales quantized on ``scale_bits``) and rounded onto the
output grid: the OutputQuantizer's (its calibrated fractional bits and bitwidth) or, without
one (the layer produces a model output), ``DEFAULT_OUTPUT_VALUE_BITS`` value bits with the
fractional bits that hold the largest ``|f|`` over the input interval. It is a deterministic
function of the configuration, the input's fractional bits and the calibrated output range:
the same ops build it in eager, ``tf.function`` and a reloaded SavedModel, and the ONNX
exporter writes it as an int64 initializer read by ``Gather``.

Per-axis inputs (or output quantizers, QFloat scales, PReLU slopes) get one table per
channel: the tables are stored side by side, ``T[row, channel]``, and looked up at the flat
index ``(x + 2^value_bits) * channels + channel``.

Plain functions first (``build_table``, ``lookup``), then the layers.
"""
import warnings

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..tensors import FixedPoint, QFloat, carrier_dtype, round_half_up
from ..recipes.fast_paths import taping
from .base import check_qtensor, register_keras
from .quant_config import OUTPUT_KEYS, QuantConfigMixin
from .registry import BLOCK_END, register_twin

#: Largest number of input value bits (sign excluded) a table takes: 2^13 entries per channel.
MAX_TABLE_VALUE_BITS = 12
#: Value bits (sign excluded) of the output grid when no OutputQuantizer is configured.
DEFAULT_OUTPUT_VALUE_BITS = 15
#: Largest number of entries of all the tables of a layer together.
MAX_TABLE_ENTRIES = 2**22


# ---- the functions ----------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="quantizeml", name="hard_swish")
def hard_swish(x):
    """Hard swish (MobileNetV3): ``x * relu6(x + 3) / 6``.

    tf_keras has no hard_swish: use ``keras.layers.Activation(hard_swish)`` in a float model
    (it serializes as ``quantizeml>hard_swish``).
    """
    return x * tf.nn.relu6(x + 3.0) / 6.0


@keras.saving.register_keras_serializable(package="quantizeml", name="abs")
def absolute(x):
    """The absolute value ``|x|`` as a Keras activation: ``keras.layers.Activation(absolute)``
    (it serializes as ``quantizeml>abs``; ``tf.abs`` inside a model becomes one, e.g. the L1
    distance of a Siamese network).
    """
    return tf.math.abs(x)


@keras.saving.register_keras_serializable(package="quantizeml", name="gelu_approximate")
def gelu_approximate(x):
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    ``keras.layers.Activation('gelu')`` is the exact GELU (``approximate=False``): use
    ``keras.layers.Activation(gelu_approximate)`` for this one.
    """
    return tf.nn.gelu(x, approximate=True)


def _hard_sigmoid(x):
    # keras.activations.hard_sigmoid (tf_keras 2.x): clip(0.2 x + 0.5, 0, 1)
    return tf.clip_by_value(0.2 * x + 0.5, 0.0, 1.0)


#: Elementwise activations with a table: the ``keras.activations.serialize`` name (the
#: ``quantizeml>`` prefix of registered functions removed) -> a function of float32 or float64
#: tensors.
ACTIVATIONS = {
    "sigmoid": tf.math.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "swish": lambda x: x * tf.math.sigmoid(x),  # 'silu' serializes as 'swish'
    "hard_swish": hard_swish,
    # MobileNetV3's hard sigmoid (quantizeml.models.transforms.fuse_hard_swish registers it)
    "hard_sigmoid_relu6": lambda x: tf.nn.relu6(x + 3.0) / 6.0,
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "gelu_approximate": gelu_approximate,
    "tanh": tf.math.tanh,
    "elu": tf.nn.elu,
    "selu": tf.nn.selu,
    "softplus": tf.math.softplus,
    "softsign": tf.math.softsign,
    "exponential": tf.math.exp,
    "linear": tf.identity,
    "relu": tf.nn.relu,
    "relu6": tf.nn.relu6,
    "mish": lambda x: x * tf.math.tanh(tf.math.softplus(x)),
    "abs": tf.math.abs,
}
_PREFIX = "quantizeml>"
_LIBRARIES = ("tensorflow", "tf_keras", "keras", "quantizeml")


def _serialized(activation):
    """``keras.activations.serialize(activation)``, None when it cannot be serialized (its
    warning about lambdas silenced: the layer refuses them with its own error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return keras.activations.serialize(activation)
        except (ValueError, TypeError, OSError, AttributeError):
            return None  # lambdas and unregistered closures


def activation_name(activation):
    """The ACTIVATIONS name of a Keras activation function, or None when it has no table.

    Args:
        activation (callable or str): the activation (``keras.layers.Activation.activation``).

    Returns:
        str or None: the name (``'swish'`` for silu), None for softmax, lambdas, user functions.
    """
    if isinstance(activation, str):
        activation = keras.activations.get(activation)
    name = _serialized(activation)
    if isinstance(name, dict):
        name = name.get("config")
    if not isinstance(name, str):
        return None
    if name.startswith(_PREFIX):
        name = name[len(_PREFIX):]
    module = getattr(activation, "__module__", None) or ""
    if name not in ACTIVATIONS or not module.startswith(_LIBRARIES):
        return None  # a user function that happens to share a name
    return name


def build_table(function, value_bits, frac_bits, out_frac_bits=None,
                out_value_bits=DEFAULT_OUTPUT_VALUE_BITS, signed=True, scales=None,
                table_shape=()):
    """The integer table of an elementwise function on a FixedPoint (or QFloat) grid.

    Integer maths: ``T[i, c] = clip(floor(f((i - 2^vb) * 2^-frac_c * s_c) * 2^out_frac_c + 1/2),
    low, 2^out_vb - 1)`` for ``i`` in ``[0, 2^(vb+1))``, in float64 (the inputs are exact in
    float64, the scaling by ``2^out_frac`` too: only ``f`` rounds, to the nearest float64);
    ``low`` is ``-2^out_vb`` (signed) or 0. Without ``out_frac_bits``, they are
    ``out_vb - ceil(log2(max_i |f|))`` per output channel (``FixedPoint.max_frac_bits``).

    Args:
        function (callable): the elementwise function, on float64 tensors (its parameters, as
            a PReLU slope, broadcast on ``table_shape``).
        value_bits (int): the input value bits (sign excluded).
        frac_bits (tf.Tensor): the input fractional bits, scalar or per channel.
        out_frac_bits (tf.Tensor, optional): the output fractional bits, scalar or per
            channel. Defaults to None (from the range of ``f``).
        out_value_bits (int, optional): the output value bits (sign excluded). Defaults to
            ``DEFAULT_OUTPUT_VALUE_BITS``.
        signed (bool, optional): whether the output grid is signed. Defaults to True.
        scales (tf.Tensor, optional): the input QFloat scales, already quantized (exact
            float32 values), scalar or per channel. Defaults to None.
        table_shape (tuple, optional): the static shape of the tables, broadcast on the last
            input axes (``()``: one table; ``(C,)``: one per channel). Defaults to ().

    Returns:
        tuple: the table (carrier of ``out_value_bits``, shape ``(2^(vb+1),) + table_shape``)
        and the output fractional bits (scalar or per channel).
    """
    table_shape = tuple(table_shape)
    rows = 2**(value_bits + 1)
    ints = tf.range(-2.0**value_bits, 2.0**value_bits, dtype=tf.float64)
    grid = tf.reshape(ints, [rows] + [1] * len(table_shape))
    two = tf.constant(2.0, tf.float64)
    step = tf.pow(two, -tf.cast(frac_bits, tf.float64))
    if scales is not None:
        step = step * tf.cast(scales, tf.float64)
    y = tf.broadcast_to(function(grid * step), (rows,) + table_shape)
    if out_frac_bits is None:
        peak = tf.reduce_max(tf.abs(y), axis=0)
        if len(table_shape) > 1:
            peak = tf.reduce_max(peak, axis=list(range(len(table_shape) - 1)))
        out_frac_bits = FixedPoint.max_frac_bits(out_value_bits, peak, clamp=False)
    out_frac_bits = tf.cast(out_frac_bits, tf.float32)
    scaled = y * tf.pow(two, tf.cast(out_frac_bits, tf.float64))
    low = -2.0**out_value_bits if signed else 0.0
    table = tf.clip_by_value(round_half_up(scaled), low, 2.0**out_value_bits - 1)
    return tf.cast(table, carrier_dtype(out_value_bits)), out_frac_bits


def lookup(table, values, value_bits):
    """Applies a table to integer values: ``y[..., c] = T[x + 2^vb, c]``.

    Args:
        table (tf.Tensor): the table from :func:`build_table`, shape ``(2^(vb+1),) + S``
            where ``S`` matches the last axes of ``values``.
        values (tf.Tensor): the integer values, in ``[-2^vb, 2^vb - 1]``.
        value_bits (int): their value bits.

    Returns:
        tf.Tensor: the table entries, shape of ``values`` (no gradient to ``values``).
    """
    per_row = int(np.prod(table.shape[1:], dtype=np.int64))
    rows = tf.cast(values, tf.int32) + 2**value_bits
    flat = tf.reshape(table, [-1])
    if per_row == 1:
        return tf.gather(flat, rows)
    offsets = tf.reshape(tf.range(per_row, dtype=tf.int32), table.shape[1:])
    return tf.gather(flat, rows * per_row + offsets)


# ---- the layers -------------------------------------------------------------------------------
class TableActivation(QuantConfigMixin):
    """Base of the lookup-table twins: ``call`` looks the input integers up in the table of
    ``self._function`` (see :func:`build_table`).

    Inference (eager, graph, SavedModel, ONNX): ``y = T[x + 2^vb]``, on the output quantizer's
    grid (or the default one), no further requantization. QAT (a gradient tape records):
    the forward values are the table's, the gradient is the float function's at the
    dequantized input (straight-through through the table, zero where the table clips), so
    the producer's weights and the function's own parameters (PReLU slopes) train:
    ``dy/dx_int = f'(x) * 2^(out_frac - frac)`` (times the QFloat scales).
    """

    def _function(self):
        """The elementwise function (float32 and float64 tensors)."""
        raise NotImplementedError

    def _parameter_shape(self):
        """The static shape of the function's parameters (broadcast on the last input axes)."""
        return ()

    def _check_value_bits(self, value_bits):
        if value_bits > MAX_TABLE_VALUE_BITS:
            raise ValueError(
                f"Layer {self.name} ({type(self).__name__}) expected inputs of at most "
                f"{MAX_TABLE_VALUE_BITS} value bits (its table has 2^(value_bits + 1) entries "
                "per channel): requantize the producer of its input (an OutputQuantizer, e.g. "
                "quant_config['output_quantizer'] = {'bitwidth': 8} on the previous layer). "
                f"Received: value_bits={value_bits}")

    def _grid(self, input_shape):
        """(out_frac_bits or None, out_value_bits, signed) of the output grid."""
        oq = self.out_quantizer
        if oq is None:
            return None, DEFAULT_OUTPUT_VALUE_BITS, True
        if not oq.built:
            oq.build(input_shape)
        return oq.frac_bits, oq.value_bits, oq.signed

    def table(self, value_bits, frac_bits, scales=None, input_shape=None):
        """The layer's table for inputs of ``value_bits`` and ``frac_bits`` (and quantized
        QFloat ``scales``): what ``call`` looks up and the ONNX exporter writes.

        Returns:
            tuple: ``(table, out_frac_bits, out_value_bits, signed)``.
        """
        self._check_value_bits(value_bits)
        out_frac, out_bits, signed = self._grid(input_shape)
        shapes = [tf.TensorShape(getattr(frac_bits, "shape", np.shape(frac_bits))),
                  tf.TensorShape(self._parameter_shape())]
        for t in (scales, out_frac):
            if t is not None:
                shapes.append(tf.TensorShape(t.shape))
        shape = tf.TensorShape(())
        for s in shapes:
            shape = tf.broadcast_static_shape(shape, s)
        entries = 2**(value_bits + 1) * shape.num_elements()
        if entries > MAX_TABLE_ENTRIES:
            raise ValueError(f"Layer {self.name} ({type(self).__name__}) expected tables of at "
                             f"most {MAX_TABLE_ENTRIES} entries (share the parameters along "
                             f"the spatial axes, e.g. PReLU(shared_axes=[1, 2])). Received: "
                             f"{entries} entries for tables of shape {tuple(shape)}")
        table, out_frac = build_table(self._function(), value_bits, frac_bits, out_frac,
                                      out_bits, signed, scales, tuple(shape))
        return tf.stop_gradient(table), out_frac, out_bits, signed

    def call(self, inputs):
        x = check_qtensor(self, inputs, (FixedPoint, QFloat))
        fp, scales = x, None
        if isinstance(x, QFloat):
            fp = x.fp
            scales = QFloat.quantize_scales(x.scales, self.scale_bits).to_float()
        table, out_frac, out_bits, signed = self.table(fp.value_bits, fp.frac_bits, scales,
                                                       fp.shape)
        values = lookup(table, fp.values, fp.value_bits)
        if taping():
            values = values + self._straight_through(fp, scales, out_frac, out_bits, signed)
        return FixedPoint(values, out_bits, out_frac, clip=False)

    def _straight_through(self, fp, scales, out_frac, out_bits, signed):
        """``g - stop_gradient(g)`` (exactly 0) with ``g = f(x) * 2^out_frac`` in float32:
        the gradient of the float function, zero where the table clips."""
        x = fp.to_float()
        if scales is not None:
            x = x * scales
        g = self._function()(x) * tf.pow(2.0, out_frac)
        low = -2.0**out_bits if signed else 0.0
        inside = (g >= low - 0.5) & (g < 2.0**out_bits - 0.5)
        g = tf.where(inside, g, tf.zeros_like(g))
        return tf.cast(g - tf.stop_gradient(g), carrier_dtype(out_bits))


def _describe(activation):
    """A readable name of an activation function."""
    name = _serialized(activation)
    if name is None:
        return getattr(activation, "__name__", repr(activation))
    return name.get("config", name) if isinstance(name, dict) else name


def _refuses_activation(layer):
    """Why QuantizedActivation cannot stand for a float Activation layer (None: it can)."""
    if activation_name(layer.activation) is not None:
        return None
    return (f"activation {_describe(layer.activation)!r} has no integer table (supported: "
            f"{', '.join(sorted(ACTIVATIONS))})")


@register_keras
@register_twin(keras.layers.Activation, output=BLOCK_END, export="table",
               refuses=_refuses_activation)
class QuantizedActivation(TableActivation, keras.layers.Activation):
    """An elementwise activation of quantized inputs, as an exact integer table.

    The activations of ``ACTIVATIONS``: sigmoid, hard_sigmoid, swish/silu, hard_swish
    (``quantizeml.layers.table.hard_swish``), hard_sigmoid_relu6 (MobileNetV3's, from
    ``fuse_hard_swish``), gelu (exact, tf_keras' default) and
    gelu_approximate (``quantizeml.layers.table.gelu_approximate``), tanh, elu, selu,
    softplus, softsign, exponential, linear, relu, relu6, mish, abs (``absolute``).

    Integer maths: ``y = T[x + 2^vb]`` with ``T`` from :func:`build_table` (f in float64 on the
    input grid, rounded half up onto the output quantizer's grid, clipped to its range; 16-bit
    signed default grid without one). Gradient (QAT): ``f'(x)`` straight through the table.

    Args:
        activation (str or callable): a Keras activation of ``ACTIVATIONS``.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: for an activation without a table (softmax, a lambda, a user function).
    """

    def __init__(self, activation, quant_config=None, **kwargs):
        super().__init__(activation=activation, **kwargs)
        self.activation_name = activation_name(self.activation)
        if self.activation_name is None:
            raise ValueError(f"Layer {self.name} (QuantizedActivation) expected an "
                             f"elementwise activation with an integer table, among "
                             f"{sorted(ACTIVATIONS)}. Received: "
                             f"activation={_describe(self.activation)!r}")
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def _function(self):
        return ACTIVATIONS[self.activation_name]


@register_keras
@register_twin(keras.layers.LeakyReLU, output=BLOCK_END, export="table")
class QuantizedLeakyReLU(TableActivation, keras.layers.LeakyReLU):
    """A leaky ReLU of quantized inputs, as an exact integer table.

    Integer maths: ``y = T[x + 2^vb]``, ``T`` the table of ``f(x) = x if x >= 0 else alpha x``
    (:func:`build_table`). Gradient (QAT): 1 or ``alpha``, straight through the table.

    Args:
        alpha (float, optional): the negative slope. Defaults to 0.3.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, alpha=0.3, quant_config=None, **kwargs):
        super().__init__(alpha=alpha, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def _function(self):
        alpha = float(self.alpha)

        def leaky_relu(x):
            return tf.where(x >= 0, x, tf.cast(alpha, x.dtype) * x)
        return leaky_relu

    def get_config(self):
        return {**super().get_config(), "alpha": float(self.alpha)}


@register_keras
@register_twin(keras.layers.ELU, output=BLOCK_END, export="table")
class QuantizedELU(TableActivation, keras.layers.ELU):
    """An ELU of quantized inputs (any ``alpha``), as an exact integer table.

    Integer maths: ``y = T[x + 2^vb]``, ``T`` the table of ``f(x) = x if x > 0 else
    alpha (exp(x) - 1)`` (:func:`build_table`, tf_keras' ``ELU`` layer). Gradient (QAT):
    ``f'(x)`` (1 or ``alpha exp(x)``), straight through the table.

    Args:
        alpha (float, optional): the scale of the negative part. Defaults to 1.0.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, alpha=1.0, quant_config=None, **kwargs):
        super().__init__(alpha=alpha, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def _function(self):
        alpha = float(self.alpha)

        def elu(x):
            return tf.where(x > 0, x, tf.cast(alpha, x.dtype) * tf.math.expm1(tf.minimum(x, 0)))
        return elu

    def get_config(self):
        return {**super().get_config(), "alpha": float(self.alpha)}


@register_keras
@register_twin(keras.layers.PReLU, output=BLOCK_END, export="table")
class QuantizedPReLU(TableActivation, keras.layers.PReLU):
    """A parametric ReLU of quantized inputs, as exact integer tables (one per slope).

    Its float ``alpha`` variable stays the trainable state: inference looks the input up in
    the tables of ``f(x) = relu(x) - alpha relu(-x)`` (one table per distinct slope, so share
    the slopes on the spatial axes: ``shared_axes=[1, 2]``); under a gradient tape the float
    function of the dequantized input carries the gradients (straight through the tables), so
    QAT moves both ``alpha`` and the producer's weights.

    Integer maths: ``y[..., c] = T[x + 2^vb, c]`` (:func:`build_table`). Gradient (QAT):
    ``dy/dx = 1 or alpha``, ``dy/dalpha = -relu(-x)`` (times ``2^out_frac``).

    Args:
        alpha_initializer (str, optional): as keras.layers.PReLU. Defaults to "zeros".
        alpha_regularizer (optional): as keras.layers.PReLU. Defaults to None.
        alpha_constraint (optional): as keras.layers.PReLU. Defaults to None.
        shared_axes (list, optional): as keras.layers.PReLU. Defaults to None.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.

    Raises:
        ValueError: when the tables would exceed ``MAX_TABLE_ENTRIES`` entries.
    """

    def __init__(self, alpha_initializer="zeros", alpha_regularizer=None, alpha_constraint=None,
                 shared_axes=None, quant_config=None, **kwargs):
        super().__init__(alpha_initializer=alpha_initializer,
                         alpha_regularizer=alpha_regularizer,
                         alpha_constraint=alpha_constraint, shared_axes=shared_axes, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def _parameter_shape(self):
        return tuple(self.alpha.shape)

    def _function(self):
        alpha = self.alpha

        def prelu(x):
            slope = tf.cast(alpha, x.dtype)
            return tf.nn.relu(x) - slope * tf.nn.relu(-x)
        return prelu


def general_relu(negative_slope, max_value, threshold):
    """``tf_keras.backend.relu(x, negative_slope, max_value, threshold)``, in the dtype of
    ``x`` (float64 for the tables): ``x`` above the threshold (clipped at ``max_value``),
    ``negative_slope * (x - threshold)`` below it, computed in the same steps as tf_keras."""
    slope = float(negative_slope or 0.0)
    threshold = float(threshold or 0.0)

    def relu(x):
        clip_max = max_value is not None
        if threshold != 0:
            y = x * tf.cast(x > threshold, x.dtype)
        elif max_value is not None and float(max_value) == 6:
            y, clip_max = tf.nn.relu6(x), False
        else:
            y = tf.nn.relu(x)
        if clip_max:
            y = tf.clip_by_value(y, tf.cast(0, x.dtype), tf.cast(max_value, x.dtype))
        if slope != 0:
            y = y - tf.cast(slope, x.dtype) * tf.nn.relu(tf.cast(threshold, x.dtype) - x)
        return y
    return relu


@register_keras
class TableReLU(keras.layers.ReLU):
    """keras.layers.ReLU itself (same config, same outputs), under the name of the ReLUs that
    QuantizedReLU does not take: a threshold, or a negative slope with a maximum
    (``replace_leaky_relu`` renames them; their twin is the table QuantizedTableReLU)."""

    def get_config(self):
        config = super().get_config()
        for key in ("max_value", "negative_slope", "threshold"):
            if config.get(key) is not None:  # numpy scalars in keras' ReLU config
                config[key] = float(np.asarray(config[key]))
        return config


@register_keras
@register_twin(TableReLU, output=BLOCK_END, export="table")
class QuantizedTableReLU(TableActivation, TableReLU):
    """A ReLU with a threshold, or a negative slope and a maximum, as an exact integer table.

    Integer maths: ``y = T[x + 2^vb]``, ``T`` the table of :func:`general_relu` (tf_keras'
    ``backend.relu``) by :func:`build_table`. Gradient (QAT): the float function's, straight
    through the table.

    Args:
        max_value (float, optional): as keras.layers.ReLU. Defaults to None.
        negative_slope (float, optional): as keras.layers.ReLU. Defaults to 0.
        threshold (float, optional): as keras.layers.ReLU. Defaults to 0.
        quant_config (dict, optional): the serialized quantization configuration, keys
            "output_quantizer" and "buffer_bitwidth". Defaults to None.
    """

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, quant_config=None,
                 **kwargs):
        super().__init__(max_value=max_value, negative_slope=negative_slope,
                         threshold=threshold, **kwargs)
        self._init_quant_config(quant_config, OUTPUT_KEYS)

    def _function(self):
        return general_relu(self.negative_slope, self.max_value, self.threshold)
