"""Learned rounding of quantized weights (AdaRound, Nagel et al., 2020).

A quantized layer quantizes its float weights on the fly: ``scales = ratio * max|w| / int_max``
per output channel (``ratio`` the weight quantizer's ``range_ratios``, 1 at 8 bits, searched
once by quantize() at 4 bits or less) and ``w_int = round(w / scales)``. Rounding to the
nearest integer is not the best choice for the layer's output: :func:`learn_rounding` learns,
layer by layer, whether each weight rounds down or up, so that the layer reconstructs the float
layer's output on the calibration samples, and moves each float weight onto the grid point it
should round to:

``w' = scales * (floor(w / scales) + h)`` with ``h`` in {0, 1}

(clipped to the channel's ``max|w|``). The weight of largest magnitude of each channel keeps its
nearest rounding and its exact value, so the scales (unless ``output_ranges`` changes the
clipping ratios, below), and every other part of the quantized model, are unchanged; the
quantized model stays integer-exact (it is an ordinary quantized model whose float weights
happen to lie on their grid), saves, reloads, trains and exports as
before.

For each layer with quantized weights (``TwinSpec.weights`` of the twin registry) whose
operation is known here (``Conv2D`` and ``PaddedConv2D``, ``DepthwiseConv2D``, ``Dense``), in
topological order:

* inputs: ``x_q``, the (dequantized) inputs of the layer in the quantized model, whose earlier
  layers already have their learned rounding; the target is the layer's float weights on the
  same inputs, ``W x_q`` (the reconstruction of Nagel et al.). With ``asymmetric=True`` the
  target is ``W x_f``, ``x_f`` the inputs of the layer of the same name in the float model (the
  rounding then also tries to compensate the quantization errors of the layers before): on the
  digits CNN it is as good at 4 bits and much worse at 2-bit weights (it overfits errors the
  weights cannot undo), hence the default;
* soft rounding: ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (zeta = 1.1,
  gamma = -0.1), V initialised so that ``h`` is the fractional part of ``w / scales``;
* loss: ``mean_(batch, positions) sum_channels (W x - W~ x_q)^2 + reg * sum(1 - |2h - 1|^b)``
  with ``W~ = scales * (floor(w / scales) + h(V))``, on float32 tensors of the layer's
  operation without bias (``tf.nn`` convolutions, a matrix product); the regularizer is off
  for the first 20% of the iterations, then ``b`` decreases linearly from ``beta[0]`` to
  ``beta[1]``; Adam on V;
* hard rounding: ``h = (h(V) >= 0.5)``;
* ranges for the output (``output_ranges=True``, weights of 2 and 3 bits, whose clipping ratios
  ``range_ratios`` quantize() chose for the weights' own squared error): each output channel
  then takes the ratio whose nearest-rounded kernel reconstructs ``W x_q`` best (the channels
  are independent), the rounding is learned again on that grid, and the pair is kept only when
  it reconstructs better than the rounding learned on quantize()'s ranges. At 2-bit weights
  the two choices interact strongly (digits CNN, W2A4, seeds 1 and 2: 7.6 -> 5.4 and 9.8 -> 4.4
  accuracy points lost; 5 seeds: mean 7.4 -> 4.0), and at 3 bits (3.1 -> 2.4); at 4 bits
  (``OUTPUT_RANGES_MAX_BITS``) quantize()'s ranges are kept. Where the pair is kept the scales
  change, the ratios being saved with the model.

The biases are then corrected again for the mean output shift of the new rounding
(``bias_correction.correct_biases``, weights of 4 bits or less, as quantize() does): the
correction quantize() applied was measured for the nearest rounding. The OutputQuantizers are
not recalibrated: their ranges come from the float model's activations, which do not change.

Weights quantized as FixedPoint (``fp_quantizer``), 1-bit (binary) weights and layers whose
operation is not known here (transposed and separable convolutions, normalizations) keep their
nearest rounding; ``report`` says why.
"""
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..layers import QuantizedConv2D, QuantizedDense, QuantizedDepthwiseConv2D
from ..layers.convolution import pad_same
from ..layers.quantizers.quantizers import RANGE_RATIOS
from ..layers.registry import twin_spec
from ..tensors import QTensor
from .bias_correction import correct_biases
from .graph import check_functional
from .samples import Batches
from .transforms.sanitize import sanitize

__all__ = ["learn_rounding", "layer_reconstruction_error"]

#: Stretch of the rectified sigmoid (Nagel et al., 2020).
ZETA, GAMMA = 1.1, -0.1
#: Weight bitwidths up to which ``output_ranges`` re-chooses the clipping ratios. At 4 bits
#: the weight-MSE ranges already serve the output (digits CNN, 4 seeds: the same mean accuracy
#: either way, a worse worst seed); at 2 and 3 bits the output's choice wins clearly.
OUTPUT_RANGES_MAX_BITS = 3
#: Fraction of the iterations without the rounding regularizer.
WARMUP = 0.2


# ---- the layers' float operations --------------------------------------------------------------
class _LinearOp:
    """The float operation of a quantized layer as a function of its kernel.

    Attributes:
        variable (tf.Variable): the float kernel the weight quantizer reads.
        quantizer (WeightQuantizer): the weight quantizer.
    """

    def __init__(self, layer):
        self.layer = layer
        self.quantizer = getattr(layer, "weight_quantizer", None)
        self.variable = self._variable()

    def to_view(self, kernel):
        """The kernel as the weight quantizer sees it (output channels last)."""
        return kernel

    def from_view(self, view):
        """The inverse of :meth:`to_view`."""
        return view

    def __call__(self, x, view):
        """The layer's output without bias for float inputs ``x`` and a kernel view."""
        raise NotImplementedError


class _Conv(_LinearOp):
    def _variable(self):
        return self.layer.kernel

    def __call__(self, x, view):
        layer, padding = self.layer, self.layer.padding.upper()
        if getattr(layer, "padding_value", None) is not None:
            x = pad_same(x, layer.kernel_size, layer.strides, layer.dilation_rate,
                         tf.constant(layer.padding_value, x.dtype))
            padding = "VALID"
        return tf.nn.convolution(x, view, strides=list(layer.strides), padding=padding,
                                 dilations=list(layer.dilation_rate))


class _Depthwise(_LinearOp):
    def _variable(self):
        return self.layer.depthwise_kernel

    def to_view(self, kernel):
        kh, kw, channels, multiplier = kernel.shape
        return tf.reshape(kernel, (kh, kw, 1, channels * multiplier))

    def from_view(self, view):
        return tf.reshape(view, self.variable.shape)

    def __call__(self, x, view):
        layer = self.layer
        return tf.nn.depthwise_conv2d(x, self.from_view(view), strides=(1, *layer.strides, 1),
                                      padding=layer.padding.upper(),
                                      dilations=layer.dilation_rate)


class _Dense(_LinearOp):
    def _variable(self):
        return self.layer.kernel

    def __call__(self, x, view):
        return tf.tensordot(x, view, [[-1], [0]])


def _operations():
    return {QuantizedConv2D: _Conv, QuantizedDepthwiseConv2D: _Depthwise, QuantizedDense: _Dense}


def _operation(layer):
    """The layer's :class:`_LinearOp`, or the reason why its rounding cannot be learned."""
    spec = twin_spec(layer)
    if spec is None or not spec.has_weights or spec.twin is not type(layer):
        return None
    op_class = _operations().get(type(layer))
    if op_class is None:
        return f"no float operation known for {type(layer).__name__}"
    quantizer = getattr(layer, "weight_quantizer", None)
    if quantizer is None or quantizer.fp_quantizer:
        return "FixedPoint weights (fp_quantizer): power-of-two scales, not supported"
    if quantizer.bitwidth == 1 and quantizer.signed:
        return "binary (1-bit) weights: no rounding to learn"
    return op_class(layer)


# ---- the rounding grid -------------------------------------------------------------------------
class _Grid:
    """The rounding choices of a kernel: ``floor(w / scales)`` and ``+ 1``.

    Attributes:
        scales (np.ndarray): the weight quantizer's scales (broadcast on the view).
        floor (np.ndarray): ``floor(w / scales)``.
        fraction (np.ndarray): ``w / scales - floor``.
        nearest (np.ndarray): the quantizer's rounding ``- floor`` (0 or 1).
        fixed (np.ndarray): True where the rounding is not learned (each channel's weights of
            largest magnitude, which set the scales, and the weights that saturate either way).
    """

    def __init__(self, op):
        self.op = op
        view = op.to_view(tf.convert_to_tensor(op.variable))
        q = op.quantizer.quantize(view)
        self.view = view.numpy()
        self.scales = np.broadcast_to(q.scales.numpy(), self.view.shape).astype(np.float32)
        ratio = (view / q.scales).numpy()
        self.floor = np.floor(ratio)
        self.fraction = ratio - self.floor
        self.nearest = q.fp.values.numpy() - self.floor
        axes = tuple(range(self.view.ndim - 1)) if op.quantizer.axis is not None else None
        self.max_abs = np.max(np.abs(self.view), axis=axes, keepdims=True)
        self.int_max = 2.0**op.quantizer.value_bits - 1
        # not learned: the weights of largest magnitude, and those beyond the (clipped) range
        # whose two choices clip to the same integer (searched ranges: range_ratios < 1)
        self.fixed = (np.abs(self.view) == self.max_abs) | (self.floor >= self.int_max) \
            | (self.floor + 1 <= -self.int_max - 1)
        # a choice whose grid point lies beyond max|w| cannot be reached by moving the float
        # weight (that would change max|w|, hence the scales): e.g. -2 at 2 bits when the
        # clipping ratio exceeds 1/2, -2 * scales < -max|w|
        self.fixed |= (self.scales * self.floor < -self.max_abs) \
            | (self.scales * (self.floor + 1) > self.max_abs)

    def weights(self, h):
        """The float kernel view whose nearest rounding is ``floor + h``."""
        ints = np.clip(self.floor + np.where(self.fixed, self.nearest, h), -self.int_max - 1,
                       self.int_max)
        w = np.clip(self.scales * ints, -self.max_abs, self.max_abs).astype(np.float32)
        return np.where(self.fixed, self.view, w), ints


# ---- layer inputs ------------------------------------------------------------------------------
def _as_float(x):
    return x.to_float() if isinstance(x, QTensor) else tf.cast(x, tf.float32)


def _collect(model, tensor, arrays, batch_size=256):
    """The values of ``tensor`` (a KerasTensor of ``model``) on the samples, as float32."""
    probe = keras.Model(model.inputs, tensor)

    def run(x):
        return _as_float(probe(x, training=False))

    single = len(model.inputs) == 1
    parts = []
    for start in range(0, len(arrays[0]), batch_size):
        batch = [a[start:start + batch_size] for a in arrays]
        parts.append(run(batch[0] if single else batch).numpy())
    return np.concatenate(parts)


def _layer_inputs(fmodel, qmodel, name, arrays, asymmetric):
    """(x, x_q): the inputs of layer ``name`` in the float model (``asymmetric``, else in the
    quantized model) and in the quantized model."""
    x_q = _collect(qmodel, qmodel.get_layer(name).input, arrays)
    if not asymmetric:
        return x_q, x_q
    try:
        float_layer = fmodel.get_layer(name)
    except ValueError:
        float_layer = None
    if float_layer is None or tuple(float_layer.input.shape[1:]) != x_q.shape[1:]:
        return x_q, x_q
    return _collect(fmodel, float_layer.input, arrays), x_q


# ---- optimisation ------------------------------------------------------------------------------
def _rectified_sigmoid(v):
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _inverse_rectified_sigmoid(h):
    h = np.clip(h, 1e-4, 1 - 1e-4)
    return -np.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def _squared_error(target, out):
    """``mean_(batch, positions) sum_channels (target - out)^2``."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(target - out), axis=-1))


def _learn(op, grid, target, x_q, iterations, batch_size, reg, beta, learning_rate, seed):
    """Learns ``h`` (0/1 per weight of the kernel view) by AdaRound; returns it (numpy)."""
    v = tf.Variable(_inverse_rectified_sigmoid(grid.fraction).astype(np.float32))
    floor = tf.constant(grid.floor, tf.float32)
    scales = tf.constant(grid.scales, tf.float32)
    free = tf.constant(~grid.fixed, tf.float32)
    nearest = tf.constant(grid.nearest, tf.float32)
    target = tf.constant(target)
    x_q = tf.constant(x_q)
    count = int(x_q.shape[0])
    optimizer = keras.optimizers.Adam(learning_rate)
    warmup = int(WARMUP * iterations)
    generator = tf.random.Generator.from_seed(seed)

    def soft(h):
        return scales * (floor + free * h + (1.0 - free) * nearest)

    beta_start, beta_end = (tf.constant(b, tf.float32) for b in beta)
    ramp = float(max(iterations - warmup - 1, 1))

    @tf.function
    def optimise():
        for i in tf.range(iterations):
            # no regularizer during the warm-up, then beta anneals linearly
            progress = tf.cast(i - warmup, tf.float32) / ramp
            b = beta_start + (beta_end - beta_start) * tf.maximum(progress, 0.0)
            weight = tf.where(i < warmup, 0.0, tf.constant(reg, tf.float32))
            index = generator.uniform((min(batch_size, count),), 0, count, tf.int32)
            with tf.GradientTape() as tape:
                h = _rectified_sigmoid(v)
                out = op(tf.gather(x_q, index), soft(h))
                loss = _squared_error(tf.gather(target, index), out)
                regularizer = tf.reduce_sum(free * (1.0 - tf.pow(tf.abs(2.0 * h - 1.0), b)))
                total = loss + weight * regularizer
            optimizer.apply_gradients([(tape.gradient(total, v), v)])

    if iterations > 0:
        optimise()
    return (v.numpy() >= 0).astype(np.float32)


def _channel_errors(op, view, target, x_q, batch_size=256):
    """Per output channel (the view's last axis): the squared reconstruction error summed over
    the samples and positions."""
    view = tf.constant(view, tf.float32)
    total = 0.0
    for start in range(0, len(x_q), batch_size):
        out = op(tf.constant(x_q[start:start + batch_size]), view)
        diff = tf.cast(target[start:start + batch_size], tf.float64) - tf.cast(out, tf.float64)
        total = total + tf.reduce_sum(tf.square(diff), axis=list(range(len(out.shape) - 1)))
    return np.asarray(total)


def _search_output_ranges(op, target, x_q):
    """Re-chooses the clipping ratios of a low-bit weight quantizer (``range_ratios``, searched
    by quantize() on the weights alone) for the layer's output: per output channel, the ratio
    of :data:`RANGE_RATIOS` (or the current one) whose nearest-rounded kernel reconstructs
    ``target`` best on ``x_q``. Each output channel depends on its own kernel slice only, so
    the channels are chosen independently, and the result is never worse than the current
    ratios on the samples. Returns whether a ratio changed."""
    quantizer = op.quantizer
    ratios = getattr(quantizer, "range_ratios", None)
    view = op.to_view(tf.convert_to_tensor(op.variable))
    if not quantizer.searches_ranges or ratios is None or quantizer.axis is None \
            or tuple(ratios.shape) != (view.shape[-1],):
        return False
    current = ratios.numpy()
    best = current.copy()
    best_errors = _channel_errors(op, quantizer.quantize(view).to_float(), target, x_q)
    try:
        for ratio in RANGE_RATIOS:
            ratios.assign(np.full_like(current, ratio))
            errors = _channel_errors(op, quantizer.quantize(view).to_float(), target, x_q)
            better = errors < best_errors
            best = np.where(better, np.float32(ratio), best)
            best_errors = np.where(better, errors, best_errors)
    finally:
        ratios.assign(best)
    return bool(np.any(best != current))


def _round_layer(op, target, x_q, iterations, batch_size, reg, beta, learning_rate, seed):
    """AdaRound on the quantizer's current grid: ``(grid, view, ints, error of the nearest
    rounding, error of the result)``; the result is the nearest rounding when the learned one
    reconstructs worse on the samples."""
    grid = _Grid(op)
    # errors of the quantized kernels (scales * integers: clipped weights clipped)
    before = _error(op, grid.scales * grid.weights(grid.nearest)[1], target, x_q)
    h = _learn(op, grid, target, x_q, iterations, batch_size, reg, beta, learning_rate, seed)
    view, ints = grid.weights(h)
    after = _error(op, grid.scales * ints, target, x_q)
    if after > before:  # never worse than the nearest rounding on the samples
        view, ints = grid.weights(grid.nearest)
        after = before
    return grid, view, ints, before, after


def _error(op, view, target, x_q, batch_size=256):
    """The reconstruction error of a kernel view over all the samples."""
    view = tf.constant(view, tf.float32)
    total = 0.0
    for start in range(0, len(x_q), batch_size):
        out = op(tf.constant(x_q[start:start + batch_size]), view)
        part = target[start:start + batch_size]
        total += float(_squared_error(part, out)) * len(part)
    return total / len(x_q)


def _targets(op, x, batch_size=256):
    """``W x``: the layer's float output (no bias) on inputs x."""
    view = op.to_view(tf.convert_to_tensor(op.variable))
    return np.concatenate([op(tf.constant(x[s:s + batch_size]), view).numpy()
                           for s in range(0, len(x), batch_size)])


# ---- public API --------------------------------------------------------------------------------
def _check_args(iterations, batch_size, reg, beta, learning_rate):
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"learn_rounding expected iterations to be an int >= 0. "
                         f"Received: iterations={iterations!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"learn_rounding expected batch_size to be an int >= 1. "
                         f"Received: batch_size={batch_size!r}")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg >= 0:
        raise ValueError(f"learn_rounding expected reg to be a float >= 0. "
                         f"Received: reg={reg!r}")
    if not isinstance(beta, (tuple, list)) or len(beta) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in beta):
        raise ValueError(f"learn_rounding expected beta to be a pair of positive floats "
                         f"(start, end). Received: beta={beta!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or \
            not learning_rate > 0:
        raise ValueError(f"learn_rounding expected learning_rate to be a float > 0. "
                         f"Received: learning_rate={learning_rate!r}")


def _check_models(model, qmodel):
    for arg, m in (("model", model), ("qmodel", qmodel)):
        if not isinstance(m, keras.Model):
            raise TypeError(f"learn_rounding expected {arg} to be a tf_keras Model. "
                            f"Received: {arg} of type {type(m).__name__}")
        check_functional(m)
    if not any(twin_spec(layer) is not None and twin_spec(layer).twin is type(layer)
               for layer in qmodel.layers):
        raise ValueError("learn_rounding expected qmodel to be a quantized model (the result "
                         f"of quantize()). Received: qmodel={qmodel.name!r} without quantized "
                         "layers")


def _copy(qmodel):
    clone = type(qmodel).from_config(qmodel.get_config())
    clone.set_weights(qmodel.get_weights())
    return clone


def _samples(fmodel, samples, num_samples):
    """The samples as batches (for the bias correction) and as one array per input."""
    if samples is None:
        raise ValueError("learn_rounding expected calibration samples (the rounding "
                         "reconstructs the float outputs on them). Received: samples=None")
    batches = samples if isinstance(samples, Batches) else Batches(fmodel, samples,
                                                                     num_samples)
    batches = [list(batch) for batch in batches]
    arrays = [np.concatenate(parts) for parts in zip(*batches)]
    return batches, arrays


def learn_rounding(model, qmodel, samples, iterations=500, batch_size=32, reg=0.01,
                   beta=(20, 2), learning_rate=1e-2, num_samples=1024, asymmetric=False,
                   verbose=False, report=None, seed=0, output_ranges=True):
    """Learns the rounding of the quantized weights (AdaRound) on calibration samples.

    Layer by layer, in topological order, each weight rounds down or up
    (``w_int = floor(w / scales) + h``, ``h`` in {0, 1}) to minimise
    ``||W x - W~ x_q||^2 + reg * sum(1 - |2h - 1|^beta)`` (see the module docstring); the
    float weights of the returned model lie on the learned grid points
    (``w' = scales * w_int``), each channel's weight of largest magnitude unchanged, so that its
    weight quantizers give exactly ``w_int`` with the same scales. The biases are then corrected
    for the new mean output shift (weights of 4 bits or less, as quantize() does).

    Cost: ``iterations`` steps of one batch through one layer, per layer; ``report`` holds the
    seconds per layer.

    Args:
        model (keras.Model): the float model that ``qmodel`` quantizes (before or after
            ``sanitize``; the layers of the same name give the float inputs).
        qmodel (keras.Model): the quantized model (``quantize()``); it is not modified.
        samples (np.ndarray, list, dict, tf.data.Dataset or iterable): calibration samples, as
            for quantize().
        iterations (int, optional): optimisation steps per layer. Defaults to 500.
        batch_size (int, optional): samples per step. Defaults to 32.
        reg (float, optional): weight of the rounding regularizer. Defaults to 0.01.
        beta (tuple, optional): the regularizer's exponent, annealed from ``beta[0]`` to
            ``beta[1]``. Defaults to (20, 2).
        learning_rate (float, optional): Adam's learning rate. Defaults to 1e-2 (V starts
            within about 2.4 of the decision point 0: 1e-3 needs thousands of steps to move
            it, 1e-2 a few hundred).
        num_samples (int, optional): samples used at most. Defaults to 1024.
        asymmetric (bool, optional): reconstruct the float model's layer outputs ``W x_f``
            instead of ``W x_q`` (module docstring). Defaults to False.
        verbose (bool, optional): print one line per layer. Defaults to False.
        report (list, optional): receives one dict per layer with quantized weights: ``name``,
            ``bits``, ``error_nearest`` and ``error_learned`` (reconstruction errors on all
            the samples), ``flipped`` (weights rounded away from the nearest), ``seconds``; or
            ``name`` and ``skipped`` (the reason). Defaults to None.
        seed (int, optional): seed of the batch sampling. Defaults to 0.
        output_ranges (bool, optional): also re-choose the clipping ratios of 2- and 3-bit
            weights for the layer's output (module docstring); the report's
            ``output_ranges`` says where they were kept. Defaults to True.

    Returns:
        keras.Model: a new quantized model with the learned rounding.

    Raises:
        TypeError: for models that are not tf_keras Models.
        ValueError: for a qmodel without quantized layers, missing samples or arguments out of
            their range.

    Example:
        ```python
        qmodel = quantize(model, qparams=QuantizationParams(weight_bits=4), samples=x)
        qmodel = learn_rounding(model, qmodel, x)
        ```
    """
    _check_args(iterations, batch_size, reg, beta, learning_rate)
    _check_models(model, qmodel)
    fmodel = sanitize(model)
    batches, arrays = _samples(fmodel, samples, num_samples)
    qmodel = _copy(qmodel)
    for layer in qmodel.layers:
        op = _operation(layer)
        if op is None:
            continue
        if isinstance(op, str):
            if report is not None:
                report.append({"name": layer.name, "skipped": op})
            if verbose:
                print(f"learn_rounding: {layer.name} skipped ({op})")
            continue
        start = time.perf_counter()
        x, x_q = _layer_inputs(fmodel, qmodel, layer.name, arrays, asymmetric)
        target = _targets(_float_op(fmodel, layer.name, op), x)
        args = (op, target, x_q, iterations, batch_size, reg, tuple(beta), learning_rate, seed)
        grid, view, ints, before, after = _round_layer(*args)
        ratios = getattr(op.quantizer, "range_ratios", None)
        weight_ranges = None if ratios is None else ratios.numpy()
        kept_output_ranges = False
        if output_ranges and op.quantizer.bitwidth <= OUTPUT_RANGES_MAX_BITS \
                and _search_output_ranges(op, target, x_q):
            # the ranges chosen for the output, then the rounding learned on them: kept only
            # when the pair reconstructs better (the grid and the rounding interact)
            other = _round_layer(*args)
            if other[4] < after:
                grid, view, ints, _, after = other
                kept_output_ranges = True
            else:
                ratios.assign(weight_ranges)
        op.variable.assign(op.from_view(tf.constant(view)).numpy())
        check = op.quantizer.quantize(op.to_view(tf.convert_to_tensor(op.variable)))
        if not np.array_equal(check.fp.values.numpy(), ints) or \
                not np.array_equal(np.broadcast_to(check.scales.numpy(), view.shape),
                                   grid.scales):
            raise RuntimeError(f"learn_rounding expected the weights of {layer.name} to "
                               "quantize onto the learned integers. Received: other integers "
                               "or scales (please report this)")
        entry = {"name": layer.name, "bits": op.quantizer.bitwidth,
                 "error_nearest": before, "error_learned": after,
                 "flipped": int(np.sum(ints != grid.floor + grid.nearest)),
                 "output_ranges": kept_output_ranges,
                 "seconds": time.perf_counter() - start}
        if report is not None:
            report.append(entry)
        if verbose:
            print(f"learn_rounding: {layer.name} ({entry['bits']} bits) error "
                  f"{before:.4g} -> {after:.4g}, {entry['flipped']} weights flipped, "
                  f"{entry['seconds']:.1f} s")
    correct_biases(fmodel, qmodel, batches)
    return qmodel


def layer_reconstruction_error(model, qmodel, name, samples, num_samples=1024,
                               asymmetric=False):
    """The reconstruction error of one quantized layer: ``mean_(batch, positions)
    sum_channels (W x - Q(W) x_q)^2``, with ``Q(W)`` its quantized weights (dequantized),
    ``x_q`` its inputs in the quantized model and ``x = x_q`` (``x_f``, its inputs in the float
    model, when ``asymmetric``).

    Args:
        model (keras.Model): the float model.
        qmodel (keras.Model): the quantized model.
        name (str): the layer name (a Conv2D, DepthwiseConv2D or Dense twin).
        samples: calibration samples, as for :func:`learn_rounding`.
        num_samples (int, optional): samples used at most. Defaults to 1024.
        asymmetric (bool, optional): see :func:`learn_rounding`. Defaults to False.

    Returns:
        float: the error, with ``W`` the float weights of the layer of the same name in
        ``model`` (sanitized).

    Raises:
        ValueError: a layer whose operation is not known here.
    """
    fmodel = sanitize(model)
    op = _operation(qmodel.get_layer(name))
    if op is None or isinstance(op, str):
        raise ValueError(f"layer_reconstruction_error expected a Conv2D, DepthwiseConv2D or "
                         f"Dense twin with QFloat weights. Received: name={name!r} ({op})")
    x, x_q = _layer_inputs(fmodel, qmodel, name, _samples(fmodel, samples, num_samples)[1],
                             asymmetric)
    target = _targets(_float_op(fmodel, name, op), x)
    q = op.quantizer.quantize(op.to_view(tf.convert_to_tensor(op.variable)))
    return _error(op, q.to_float().numpy(), target, x_q)


def _float_op(fmodel, name, op):
    """The operation of the float layer ``name`` (its float kernel), else ``op``."""
    try:
        float_op = type(op)(fmodel.get_layer(name))
    except (ValueError, AttributeError):
        return op
    if tuple(float_op.variable.shape) != tuple(op.variable.shape):
        return op
    return float_op
