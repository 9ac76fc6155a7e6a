"""Quantization-aware training: the model class quantize() returns, whose ``fit`` moves each
low-bit kernel by steps matched to its quantization grid (and, on request, learns the weight
ranges).

Why. Adam (and RMSprop, Adagrad...) normalize each gradient by its running magnitude: a weight
moves by about the learning rate per step whatever its gradient's scale. With the plain QAT
recipe (``Adam(1e-4)``, a few epochs) an 8-bit weight, whose rounding step is about
``max|w| / 127``, crosses many rounding thresholds, but a 2- or 4-bit weight, on a grid 18 to
127 times coarser, moves a few hundredths of a step in the whole fine-tune: most low-bit
integers cannot change, and the QAT mostly retunes the biases (measured on the digits CNN:
0-3.3 % of the 4-bit and 0-2.3 % of the 2-bit integers changed, largest moves 0.03-0.14
step). Scaling the gradients does not help: the optimizer normalizes them away.

What. :class:`QuantizedModel`'s ``train_step`` runs the usual step (``fit``, any optimizer),
then multiplies the update just applied to each coarse-grid kernel by its *update gain*
(:func:`update_gain`): ``w <- w_before + gain * (w_after - w_before)``, with
``gain = sqrt(127 / int_max)`` for a weight quantizer whose largest integer ``int_max`` is 3
or less (signed weights of 2 or 3 bits: gains 11.27 and 6.51; unsigned ones of 2 bits), and 1
(no change) for finer grids, for biases and for every other variable. A 2-bit weight then
moves, in its own quantization steps, sqrt(127) times less than an 8-bit one instead of 127
times less: the geometric middle between the plain update (too small to cross thresholds) and
an update of the same size in steps (measured to oscillate across them). Measured on the digits
CNN with 2-bit weights and 4-bit activations, plain QAT 5 epochs, seeds 1-5 (mean drop in
accuracy points against float): plain updates 2.33, gain 127 / int_max 3.26, the square root
0.96. On 4-bit grids the square root (4.26) gave nothing (digits CNN 4/4 worst seed 0.56 ->
0.74 points; tiny ViT 4/4, seeds 0-2, mean 1.24 -> 1.98), so they keep the plain update. See
``benchmarks/README.md``. The kernels stay float variables holding the float weights (what the
weight quantizers round), so saving, learned rounding, the integer weights and the exporters
are unchanged.

Learned weight ranges. With ``learn_ranges=True`` (``qmodel.learn_ranges = True`` before
``fit``) the step also trains the clipping ratios of the 2-4-bit weight ranges
(``WeightQuantizer.range_ratios``, per output channel, chosen by quantize()'s MSE search) with
the LSQ step-size gradient (Esser et al. 2020; :class:`~quantizeml.layers.WeightQuantizer`),
by the same optimizer, kept at or above :data:`MIN_RANGE_RATIO`. The scales stay per-channel
QFloat scales (``ratio * max|w| / int_max``), so the model stays integer-exact. It is off by
default: measured with the plain recipe (Adam 1e-4, ``benchmarks/quality.py
--learn-ranges``), it moved nothing beyond the noise of a few test digits (digits CNN 4/4,
seeds 1-10, mean drop -0.18 -> -0.24 points, worst 1.11 both; W2A4 5 epochs 1.57 -> 1.80;
tiny ViT 4/4 seeds 0-2 1.24 -> 1.42): Adam moves a ratio by about the learning rate per step,
0.4-1 % of the range over the fine-tune.

The gain applies in ``fit`` (``train_step``) only. A custom training loop gets the same with
:func:`update_gains` (the ``(variable, gain)`` pairs) and :func:`apply_update_gains` after
its ``apply_gradients`` (and :func:`range_variables`, watched and given to the optimizer,
then :func:`clip_range_variables`, to learn the ranges); a model
rebuilt from the quantized layers as a plain ``keras.Model`` trains without it.
``QuantizedModel(..., scaled_updates=False)`` (or setting ``qmodel.scaled_updates = False``
before ``compile``) turns it off. It is in the model config, so h5 and SavedModel reloads keep
it.
"""
import math

import tensorflow as tf
import tf_keras as keras

from ..layers.base import register_keras
from ..layers.quantizers import WeightQuantizer
from ..layers.reduction import QuantizedReduction

#: The largest integer of an 8-bit signed weight grid: the reference of the update gains.
REFERENCE_INT_MAX = 127
#: Grids whose largest integer is at most this get a gain (signed 2-3 bits, unsigned 2 bits).
SCALED_INT_MAX = 3
#: The smallest clipping ratio of ``max|w|`` a learned weight range keeps.
MIN_RANGE_RATIO = 0.05


def update_gain(quantizer):
    """The update gain of the kernel a weight quantizer rounds (module docstring).

    Args:
        quantizer (WeightQuantizer): the weight quantizer.

    Returns:
        float: ``sqrt(127 / int_max)`` when the quantizer's largest integer ``int_max`` is at
        most 3, else 1.
    """
    bits = int(quantizer.bitwidth)
    int_max = 2 ** (bits - 1) - 1 if quantizer.signed else 2 ** bits - 1
    if int_max > SCALED_INT_MAX:
        return 1.0
    return math.sqrt(REFERENCE_INT_MAX / max(int_max, 1))


def update_gains(model):
    """The trainable low-bit kernels of a quantized model and their update gains.

    Args:
        model (keras.Model): a quantized model (nested models are searched).

    Returns:
        list: ``(variable, gain)`` pairs, one per trainable kernel of a quantized
        Conv2D / Conv2DTranspose / Dense / DepthwiseConv2D / SeparableConv2D (both kernels)
        whose gain is not 1, in layer order.
    """
    pairs = []
    for layer in model.submodules:  # each module once
        if not isinstance(layer, QuantizedReduction) or not layer.trainable:
            continue
        for key, attribute in zip(layer.weight_keys, layer.weight_variables):
            variable = getattr(layer, attribute, None)
            if variable is None or not variable.trainable:
                continue
            gain = update_gain(getattr(layer, key))
            if gain != 1.0:
                pairs.append((variable, gain))
    return pairs


def range_variables(model):
    """The clipping ratios of the weight ranges a QAT step learns (``learn_ranges``).

    Args:
        model (keras.Model): a quantized model (nested models are searched).

    Returns:
        list: the ``range_ratios`` variables of the trainable weight quantizers of 2 to 4
        bits (:attr:`WeightQuantizer.searches_ranges`), in layer order.
    """
    variables = []
    for layer in model.submodules:  # each module once
        if isinstance(layer, WeightQuantizer) and layer.trainable and layer.searches_ranges \
                and getattr(layer, "range_ratios", None) is not None:
            variables.append(layer.range_ratios)
    return variables


def _clip_ratio(variable):
    return variable.assign(tf.maximum(variable, MIN_RANGE_RATIO))


def clip_range_variables(variables):
    """Keeps learned clipping ratios at or above :data:`MIN_RANGE_RATIO` (a range cannot
    shrink to zero).

    Args:
        variables (list): the ratio variables (:func:`range_variables`).
    """
    _update(_clip_ratio, variables, [() for _ in variables])


def _scale_update(variable, before, gain):
    return variable.assign(before + gain * (variable - before))


def apply_update_gains(pairs, before):
    """Multiplies the update each variable just received by its gain.

    Args:
        pairs (list): ``(variable, gain)`` pairs (:func:`update_gains`).
        before (list(tf.Tensor)): the values of the variables before the update.
    """
    _update(_scale_update, [variable for variable, _ in pairs],
            [(value, gain) for (_, gain), value in zip(pairs, before)])


def _update(function, variables, args):
    """``function(variable, *arguments)`` for each variable and its ``arguments`` (of ``args``);
    in a replica context a mirrored variable is updated by the strategy (as the optimizer
    updates it), with each replica's arguments."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        for variable, arguments in zip(variables, args):
            function(variable, *arguments)
        return

    def merge(strategy, args):
        for variable, arguments in zip(variables, args):
            strategy.extended.update(variable, function, args=tuple(arguments), group=False)

    tf.distribute.get_replica_context().merge_call(merge, args=(args,))


@register_keras
class QuantizedModel(keras.Model):
    """A functional model of quantized layers whose ``fit`` scales the updates of its kernels
    of 2-3 bits (module docstring). ``quantize()`` returns one.

    Args: as a functional ``keras.Model`` (``inputs``, ``outputs``, ``name``), plus:
        scaled_updates (bool, optional): multiply each low-bit kernel's update by its gain in
            ``train_step``. Defaults to True.
        learn_ranges (bool, optional): train the clipping ratios of the 2-4-bit weight
            ranges too (:func:`range_variables`). Defaults to False.
    """

    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
        # the functional signature (so that Keras' get_config / from_config see a functional
        # model), with scaled_updates and learn_ranges among the keyword arguments
        scaled_updates = kwargs.pop("scaled_updates", True)
        learn_ranges = kwargs.pop("learn_ranges", False)
        super().__init__(inputs, outputs, name=name, trainable=trainable, **kwargs)
        for key, value in (("scaled_updates", scaled_updates), ("learn_ranges", learn_ranges)):
            if not isinstance(value, bool):
                raise TypeError(f"QuantizedModel {self.name} expected {key} to be a bool. "
                                f"Received: {key}={value!r}")
        self.scaled_updates = scaled_updates
        self.learn_ranges = learn_ranges

    def train_step(self, data):
        pairs = update_gains(self) if self.scaled_updates else []
        ranges = range_variables(self) if self.learn_ranges else []
        if not pairs and not ranges:
            return super().train_step(data)
        before = [tf.identity(variable) for variable, _ in pairs]
        # keras.Model.train_step, with the range ratios (non-trainable variables: not in the
        # model's trainable_variables nor watched by default) watched and updated too
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            tape.watch(ranges)
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        self._validate_target_and_loss(y, loss)
        self.optimizer.minimize(loss, self.trainable_variables + ranges, tape=tape)
        clip_range_variables(ranges)
        apply_update_gains(pairs, before)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self):
        return {**super().get_config(), "scaled_updates": self.scaled_updates,
                "learn_ranges": self.learn_ranges}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        scaled_updates = config.pop("scaled_updates", True)
        learn_ranges = config.pop("learn_ranges", False)
        model = super().from_config(config, custom_objects)
        model.scaled_updates = scaled_updates
        model.learn_ranges = learn_ranges
        return model


# h5 files name a model by its class name alone (``model.__class__.__name__``): registered under
# that name too, keras.models.load_model finds it without custom objects
keras.utils.get_custom_objects()[QuantizedModel.__name__] = QuantizedModel


def as_quantized_model(model):
    """A :class:`QuantizedModel` on the inputs, outputs and layers of a functional model (the
    layers are shared, not copied); ``model`` itself when it is one."""
    if isinstance(model, QuantizedModel):
        return model
    return QuantizedModel(model.inputs, model.outputs if len(model.outputs) > 1
                          else model.outputs[0], name=model.name)
