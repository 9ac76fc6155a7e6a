"""Every fast path of the integer recipes, and the one place that chooses between them and the
op-by-op reference bodies (see :mod:`quantizeml.recipes`).

The recipes (:mod:`~quantizeml.recipes.reduction`, :mod:`~quantizeml.recipes.bias`,
:mod:`~quantizeml.recipes.buffer`, :mod:`~quantizeml.recipes.requantize`,
:mod:`~quantizeml.recipes.alignment`) each have a reference body, a plain chain of TensorFlow
ops. What makes them fast lives here, and only here (the only quantizeml module importing
``tensorflow.python``):

* **fused kernels** (:func:`fused`): chains of elementwise integer ops compiled by XLA in
  graphs. A quantized layer applies several elementwise ops to each full activation tensor (a
  rounded requantization is a multiplication, a rounding and a clip; a bias addition casts
  then adds). Run one by one, each op reads and writes the whole tensor. In graphs
  (``predict``, ``fit``, ``tf.function``), :func:`fused` compiles such a chain with XLA into one
  loop over the tensor (a nested ``tf.function(jit_compile=True)``: the rest of the graph,
  convolutions included, keeps TensorFlow's kernels). The results are the same bit for bit:
  every op of a fused chain is exact (integer-valued float products, sums and roundings proven
  exact in their carrier), so no evaluation order or FMA contraction can change them. Eager
  calls run the ops directly (compiling costs ~50 ms per chain and input shape), and so do
  graphs traced for a SavedModel (the exported graph stays free of XLA-only functions). Under
  a gradient tape (a ``fit`` train step) a compiled call is never differentiated (measured
  ~40% slower than the plain ops): only the forward and gradient functions of custom gradients
  are compiled there (``under_tape=True``). :func:`xla_fusion` turns fusion off (e.g. on a
  platform without XLA);
* **custom gradients** of train steps: :func:`add_to_float32` (the bias added in the kernel
  casting a reduction's result), :func:`float32_gradient_reduction` (exact forward, float32
  gradients), :func:`ste_requantized` (a requantization and its clip differentiated in one
  expression);
* **deferred accumulators** (:class:`Deferred`): a chain may start in one layer and end in the
  next: a reducing layer leaves its float64 accumulator as float32 parts and a recipe, and the
  requantization that follows combines the parts inside its own kernel; the float64 tensor is
  then pruned from the graph (:func:`deferred_bias_sum`). The hand-off goes through a
  per-graph weak dictionary (``_DEFERRED``), confined to this module;
* **compiled eager calls** (:func:`layer_call`): repeated eager calls of a layer run as a
  per-layer ``tf.function`` (same integers, saturation still recorded);
* **the choice** (:func:`reduction_path`, :func:`bias_path`, :func:`requantize_path`,
  :func:`layer_call`): the reference body runs where saturation is observed
  (:func:`saturation_observed`: eager calls and compiled eager calls) and where nothing would
  be fused; the fast paths run in graphs.
"""

import contextlib
import functools
import threading
import weakref

import tensorflow as tf
from tensorflow.python.eager import record
from tensorflow.python.saved_model import save_context

from ..tensors.carrier import MAX_VALUE_BITS, SPLIT_VALUE_BITS
from ..tensors.gradients import custom_gradient, in_scratch_graph

_STATE = threading.local()


@contextlib.contextmanager
def xla_fusion(enabled):
    """Context manager turning fused kernels on or off in the graphs traced inside it.

    Graphs already traced keep their kernels (``predict`` and ``fit`` trace on their first
    call): enter it before running them.

    Example:
        ```python
        with xla_fusion(False):
            y = qmodel.predict(x)   # plain TensorFlow ops, no XLA compilation
        ```
    Args:
        enabled (bool): whether to fuse.
    """
    previous = fusion_enabled()
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = previous


def unfused(fn):
    """Decorator: runs ``fn`` with fusion off (e.g. quantize() and calibrate(), whose graphs
    run a few batches or are never executed, where compiling would cost more than it saves)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with xla_fusion(False):
            return fn(*args, **kwargs)
    return wrapper


def fusion_enabled():
    """bool: whether :func:`fused` compiles its chains (True unless turned off)."""
    return getattr(_STATE, "enabled", True)


def taping():
    """bool: whether a gradient tape may record the ops built here (a train step)."""
    return record.could_possibly_record()


def fuses(under_tape=False):
    """bool: whether a chain passed to :func:`fused` here would be compiled (graph mode, fusion
    enabled, no gradient tape recording unless ``under_tape``, not saving a SavedModel, not
    inferring a layer's output signature)."""
    return fusion_enabled() and not tf.executing_eagerly() \
        and (under_tape or not taping()) and not save_context.in_save_context() \
        and not inferring_signature()


def fused(fn, *args, under_tape=False):
    """``fn(*args)``, compiled with XLA as one kernel when :func:`fuses`.

    Args:
        fn (callable): exact elementwise ops (and reductions to scalars) on tensors; every
            tensor it uses must be passed in ``args`` (gradients flow through ``args``).
        *args (tf.Tensor): its inputs.
        under_tape (bool, optional): compile under a gradient tape too: for the forward and
            backward functions of a custom gradient, which the tape never differentiates
            (differentiating through the compiled call itself is slower than the plain ops).
            Defaults to False.

    Returns:
        the outputs of ``fn``.
    """
    if not fuses(under_tape):
        return fn(*args)
    return tf.function(fn, jit_compile=True, autograph=False)(*args)


def sum_parts(*parts):
    """The float64 sum of tensors (broadcast), with the shape of the first."""
    total = tf.cast(parts[0], tf.float64)
    for part in parts[1:]:
        total += tf.cast(part, tf.float64)
    return tf.reshape(total, tf.shape(parts[0]))


#: graph -> {tensor ref: Deferred} (the entries go with their graph)
_DEFERRED = weakref.WeakKeyDictionary()


class Deferred:
    """How a graph tensor ``values`` was built: ``combine(*parts)`` (exact elementwise ops),
    cast to ``dtype``, so that its consumer can run its elementwise kernel on the parts instead
    (``combine`` inside its kernel: ``values`` itself is then never computed, unless something
    else reads it).

    A reducing layer builds its accumulator plus bias this way in inference graphs, from the
    float32 parts of its exact sum; the requantization that follows it (a ReLU, an output
    quantizer) reads the float32 parts in its fused kernel instead of a float64 tensor written
    by one kernel and read by the next (see :meth:`apply`).

    Args:
        parts (tuple of tf.Tensor): the inputs of ``combine``.
        combine (callable): exact elementwise ops (broadcasting) on the parts.
        dtype (tf.DType, optional): the dtype of ``values`` (it must hold the results of
            ``combine`` exactly). Defaults to tf.float64.
    """

    def __init__(self, parts, combine, dtype=tf.float64):
        self.parts, self.combine, self.dtype = tuple(parts), combine, dtype

    def values(self):
        """``values``, one fused kernel, registered with this recipe for its consumers."""
        values = fused(self._values, *self.parts)
        _DEFERRED.setdefault(values.graph, {})[values.ref()] = self
        return values

    def _values(self, *parts):
        return tf.cast(self.combine(*parts), self.dtype)

    @staticmethod
    def of(values):
        """The Deferred registered for ``values``, or None (always None where a chain would not
        be fused: see :func:`fuses`)."""
        if not fuses() or not isinstance(values, tf.Tensor):
            return None
        return _DEFERRED.get(values.graph, {}).get(values.ref())

    def apply(self, fn, *args):
        """``fn(values, *args)`` (exact elementwise ops) as one fused kernel on the parts."""
        count = len(self.parts)

        def kernel(*tensors):
            return fn(self._values(*tensors[:count]), *tensors[count:])
        return fused(kernel, *self.parts, *args)


# ---- the choice: reference body or fast path ----------------------------------------------
#: The op-by-op reference body of a recipe (eager and compiled eager calls, which record the
#: saturation of their clips, and graphs that fuse nothing).
REFERENCE = "reference"
#: The reduction, then :func:`~quantizeml.recipes.bias.add_bias` on the accumulator (which picks
#: its own path).
SEPARATE = "separate"
#: Graphs: the reference maths in fused kernels, the buffer clips skipped when a bound proves
#: them useless (a conditional).
CHECKED = "checked"
#: Train steps: the bias added in the kernel that casts the reduction's result (a custom
#: gradient), the buffer clips skipped when a bound proves them useless.
FUSED = "fused"
#: Inference graphs: the accumulator deferred, as float32 parts, to the requantization that
#: follows (:class:`Deferred`).
DEFERRED = "deferred"
#: Train steps: a requantization and its clip differentiated in one expression
#: (:func:`ste_requantized`).
STE = "ste"


def inferring_signature():
    """bool: whether the ops built now only infer a layer's output signature.

    While building a functional model, Keras calls each layer in a scratch graph (named
    ``<layer>_scratch_graph``) whose values are never computed, only the specs of its outputs.
    There the recipes build their reference bodies: the same output types as the fast paths,
    without the conditionals and kernels those build (several times fewer ops: quantize()
    rebuilds whole models layer by layer).
    """
    return in_scratch_graph()


def reduction_path(observed, has_bias, value_bits):
    """How an exact reduction plus bias runs (:func:`~quantizeml.recipes.bias.reduce_and_add_bias`).

    Args:
        observed (bool): whether the layer call records saturation (eager, compiled eager).
        has_bias (bool): whether a bias is added.
        value_bits (int): the static bound (bits) of the reduction's sums.

    Returns:
        str: :data:`SEPARATE` (accumulate, then :func:`~quantizeml.recipes.bias.add_bias`,
        which picks its own path), :data:`DEFERRED` (inference graphs, sums of at most
        ``SPLIT_VALUE_BITS``) or :data:`FUSED` (train steps, and wider sums).
    """
    if (not has_bias or not fuses(under_tape=True) or observed or value_bits > MAX_VALUE_BITS
            or inferring_signature()):
        # (eager and compiled eager calls record the saturation of the buffer clips)
        return SEPARATE
    if not taping() and value_bits <= SPLIT_VALUE_BITS:
        return DEFERRED
    return FUSED


def bias_path(observed):
    """How :func:`~quantizeml.recipes.bias.add_bias` runs: :data:`REFERENCE` where the
    saturation of both clips is recorded (and when only inferring a signature), else
    :data:`CHECKED`."""
    return REFERENCE if observed or inferring_signature() else CHECKED


def requantize_path(values, observed, has_slope):
    """How :func:`~quantizeml.recipes.requantize.requantize` runs on ``values``.

    Returns:
        str: :data:`REFERENCE` where saturation is recorded, :data:`STE` in train-step graphs
        (given the derivative of the rounding), :data:`DEFERRED` when ``values`` is a deferred
        accumulator, else :data:`FUSED` (one fused kernel, plain ops where nothing fuses).
    """
    if observed or inferring_signature():
        return REFERENCE
    if has_slope and taping():
        return STE
    if Deferred.of(values) is not None:
        return DEFERRED
    return FUSED


# ---- fast paths of the exact reduction ----------------------------------------------------
def _cast_add(values, addend):
    return tf.cast(values, tf.float64) + addend


@custom_gradient
def add_to_float32(values, addend):
    """``cast(values, float64) + addend`` (float32 integers plus a broadcast float64 addend)
    as one fused kernel in graphs, train steps included: its gradient (the gradient cast back
    to float32, and summed to the addend's shape) is one kernel too."""
    total = fused(_cast_add, values, addend, under_tape=True)

    def grad(dy):
        return fused(lambda dy, b: (tf.cast(dy, values.dtype), sum_to_shape(dy, b)), dy, addend,
                     under_tape=True)
    return total, grad


def cast_add(values, addend):
    """``cast(values, float64)``, plus ``addend`` (None: nothing) in the same fused kernel
    (under a tape too: the custom gradient of :func:`float32_gradient_reduction`
    differentiates it)."""
    if addend is None:
        return tf.cast(values, tf.float64)
    return fused(_cast_add, values, addend, under_tape=True)


def float32_gradient_reduction(fn, forward, x, w, addends):
    """``forward(x, w)`` (an exact reduction ``fn(x, w)``, plus ``addends``, and its bound),
    with the gradients of ``fn`` computed in float32 whichever carrier ran the forward
    reduction (quantization-aware training needs no exact gradients, and float64 convolution
    gradients are several times slower)."""
    @custom_gradient
    def reduction(x, w, *addends):
        values, bound = forward(x, w)

        def grad(dy, _):
            # gradients in float32, whichever carrier ran the (exact) forward reduction
            return (*float32_gradients(fn, x, w, dy),
                    *[sum_to_shape(dy, a) for a in addends])
        return (values, bound), grad

    return reduction(x, w, *addends)


def sum_to_shape(dy, target):
    """The gradient of a tensor ``target`` broadcast to the shape of ``dy``: ``dy`` summed over
    the broadcast axes, in the dtype of ``target``."""
    rank, shape = dy.shape.rank, target.shape.as_list()
    padded = [1] * (rank - len(shape)) + shape
    axes = [i for i, dim in enumerate(padded) if dim == 1 and dy.shape[i] != 1]
    summed = tf.reduce_sum(dy, axis=axes, keepdims=True) if axes else dy
    return tf.cast(tf.reshape(summed, tf.shape(target)), target.dtype)


def float32_gradients(fn, x, w, dy):
    """The gradients of ``fn(x, w)`` for ``dy``, computed in float32, in the dtypes of x, w."""
    x32, w32 = tf.cast(x, tf.float32), tf.cast(w, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x32, w32])
        y = fn(x32, w32)
    gx, gw = tape.gradient(y, [x32, w32], output_gradients=tf.cast(dy, tf.float32))
    return tf.cast(gx, x.dtype), tf.cast(gw, w.dtype)


# ---- fast paths of the bias on the accumulator grid -----------------------------------------
def checked_bias_sum(fits, exact_sum, clipped_sum, dtype):
    """:data:`CHECKED`: ``exact_sum()`` (``acc + b`` alone, one fused kernel) where ``fits``
    proves that no buffer clip changes a value, else ``clipped_sum()`` (the reference body)
    cast to ``dtype``."""
    return tf.cond(fits, exact_sum, lambda: tf.cast(clipped_sum(), dtype))


def fused_bias_sum(total, fits, clipped_sum):
    """:data:`FUSED`: ``total`` (the reduction plus bias of :func:`add_to_float32`, float64)
    where ``fits`` proves that no buffer clip changes a value, else ``clipped_sum()`` (the
    reference body, in float64)."""
    return tf.cond(fits, lambda: total, lambda: tf.cast(clipped_sum(), tf.float64))


def deferred_bias_sum(parts, bias_values, buffer_bits, dtype):
    """:data:`DEFERRED`: the accumulator plus bias, ``clip(clip(sum(parts)) + b)`` on the
    ``buffer_bits`` buffer in ``dtype``, deferred (see :class:`Deferred`) as the float32 parts
    of the reduction and the bias: a requantization that follows adds them in its own kernel,
    and no float64 tensor is written. The buffer clips run in that kernel too (two comparisons
    per value, a no-op where the sums fit): no bound to check, no conditional op."""
    low, high = -2.0**(buffer_bits - 1), 2.0**(buffer_bits - 1) - 1

    def clipped_sum(*parts):
        acc = tf.minimum(tf.maximum(sum_parts(*parts[:-1]), low), high)
        return tf.minimum(tf.maximum(acc + parts[-1], low), high)

    return Deferred((*parts, bias_values), clipped_sum, dtype).values()


# ---- fast paths of the requantization -------------------------------------------------------
def ste_requantized(rounded, args, low, high, slope, multiplier_slope=None):
    """:data:`STE`: ``clip(rounded(*args), low, high)`` in the dtype of ``low``, differentiated
    in one expression: ``dy * slope`` where nothing was clipped, 0 elsewhere, for ``args[0]``.

    It is the gradient that the op-by-op chain (straight-through rounding, then the clip of
    :func:`~quantizeml.recipes.requantize.clip_in_carrier`) gets, with ``slope`` the derivative
    of ``rounded`` in ``args[0]`` (a per-channel float32 multiplier, e.g. the requantization
    scale: exact in float32, an 8-bit integer times a power of two). With ``multiplier_slope``
    (``multiplier_slope(args[0])``, the derivative of ``rounded`` in ``args[1]``, a multiplier
    broadcast on the values), ``args[1]`` gets the chain's gradient too, summed to its shape:
    ``sum(dy * multiplier_slope)`` where nothing was clipped (the requantization scale of
    learned weight ranges, :class:`~quantizeml.models.QuantizedModel`); a graph that does not
    use it prunes it. The other args, ``slope`` and the bounds are constants of the step (no
    gradient). In graphs the forward (clipped values and the mask of the values kept) and the
    gradient run as one fused kernel each, instead of five to seven passes over the tensor
    each.
    """
    def forward(low, high, *args):
        cast = tf.cast(rounded(*args), low.dtype)
        clipped = tf.minimum(tf.maximum(cast, low), high)
        return clipped, tf.equal(clipped, cast)

    def backward(dy, kept, slope):
        kept_dy = tf.where(kept, dy * tf.cast(slope, dy.dtype), tf.zeros_like(dy))
        return tf.cast(kept_dy, args[0].dtype)

    if multiplier_slope is None:
        @custom_gradient
        def requantized(values):
            clipped, kept = fused(forward, low, high, values, *args[1:], under_tape=True)

            def grad(dy):
                return fused(backward, dy, kept, slope, under_tape=True)
            return clipped, grad
        return requantized(args[0])

    @custom_gradient
    def requantized_by(values, multiplier):
        clipped, kept = fused(forward, low, high, values, multiplier, *args[2:],
                              under_tape=True)

        def grad(dy):
            kept_dy = tf.where(kept, tf.cast(dy, tf.float64), tf.zeros_like(dy, tf.float64))
            products = kept_dy * tf.cast(multiplier_slope(values), tf.float64)
            # summed over the axes the multiplier was broadcast on
            _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(products),
                                                       s1=tf.shape(multiplier))
            dmultiplier = tf.reshape(tf.reduce_sum(products, axes), tf.shape(multiplier))
            return (fused(backward, dy, kept, slope, under_tape=True),
                    tf.cast(dmultiplier, multiplier.dtype))
        return clipped, grad
    return requantized_by(args[0], args[1])


def fused_requantized(kernel, args, low, high):
    """:data:`FUSED` and :data:`DEFERRED`: ``kernel(values, low, high, *args[1:])`` as one
    fused kernel; on a deferred accumulator, its float32 parts summed in that kernel."""
    deferred = Deferred.of(args[0])
    if deferred is None:
        return fused(kernel, args[0], low, high, *args[1:])
    # a reducing layer's accumulator: its float32 parts summed in this kernel
    return deferred.apply(kernel, low, high, *args[1:])


# ---- compiled eager calls of the layers ---------------------------------------------------
#: Per-thread state of the layer calls: nesting depth, the saturation collector of a compiled
#: call being traced, and whether compiled eager calls are disabled.
_CALLS = threading.local()
#: layer -> {raw call: [number of eager calls, compiled tf.function or None, saturation
#: sources (owner layer, key) indexed by the compiled function's outputs]}
COMPILED = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def eager_layer_calls():
    """Runs eager calls of quantizeml layers op by op (no compiled calls), e.g. to debug them.

    Example:
        ```python
        with eager_layer_calls():
            y = qmodel(x)   # every layer runs its TensorFlow ops one at a time
        ```
    """
    previous = getattr(_CALLS, "disabled", False)
    _CALLS.disabled = True
    try:
        yield
    finally:
        _CALLS.disabled = previous


def _depth():
    return getattr(_CALLS, "depth", 0)


@contextlib.contextmanager
def _nested(collector=None):
    """Marks a layer call in progress (sub-layer calls run inline) and, when tracing a
    compiled call, collects the saturation ratios its layers compute."""
    previous = getattr(_CALLS, "collector", None)
    _CALLS.depth = _depth() + 1
    if collector is not None:
        _CALLS.collector = collector
    try:
        yield
    finally:
        _CALLS.depth -= 1
        _CALLS.collector = previous


def saturation_collector():
    """The saturation collector of the compiled call being traced (``{"graph", "ratios":
    {(owner, key): ratio tensor}}``), or None."""
    return getattr(_CALLS, "collector", None)


def saturation_observed(values):
    """bool: whether saturation is recorded where ``values`` is computed: eager calls, and the
    graph of a compiled eager call being traced (whose ratios it returns as outputs)."""
    if tf.executing_eagerly():
        return True
    collector = saturation_collector()
    return collector is not None and values.graph is collector["graph"]


def _compiled_body(layer_ref, raw, sources, args, kwargs, generation):
    """The traced body of a compiled eager call: ``raw(layer, ...)`` and the saturation ratios
    its layers record, as ``(outputs, {index: ratio})`` (indices into ``sources``).
    ``generation`` is a cache key only: records are captured as constants, a new generation
    retraces."""
    del generation
    collector = {"graph": tf.compat.v1.get_default_graph(), "ratios": {}}
    with _nested(collector):
        outputs = raw(layer_ref(), *args, **kwargs)
    indexed = {}
    for (owner, key), ratio in collector["ratios"].items():
        if (owner, key) not in sources:
            sources.append((owner, key))
        indexed[str(sources.index((owner, key)))] = ratio
    return outputs, indexed


def _compiled_call(layer, raw, entry, args, kwargs, generation, store):
    """Runs ``raw`` as a per-layer tf.function (kept in ``entry``), stores the saturation it
    measured with ``store(owner, key, ratio)``."""
    if entry[1] is None:
        # a partial (no __code__): TensorFlow's retracing statistics are then per layer, not
        # shared by every layer's first trace
        body = functools.partial(_compiled_body, weakref.ref(layer), raw, entry[2])
        entry[1] = tf.function(body, reduce_retracing=True, autograph=False)
    outputs, ratios = entry[1](args, kwargs, generation=generation)
    for index, ratio in ratios.items():
        owner, key = entry[2][int(index)]
        store(owner, key, float(ratio))
    return outputs


@tf.autograph.experimental.do_not_convert
def layer_call(layer, raw, args, kwargs, compile_after, compilable, generation, store):
    """``raw(layer, *args, **kwargs)``, op by op or as a compiled eager call.

    Eager inference calls of a layer (``training`` falsy, outside distribution strategies and
    :func:`eager_layer_calls`, ``compilable``) run op by op the first ``compile_after`` times,
    then as a per-layer ``tf.function``: the same integer results without the per-op Python
    overhead. Calls nested in another layer's call run inline.

    Args:
        layer (keras.layers.Layer): the layer called.
        raw (callable): its unwrapped ``call``.
        args (tuple), kwargs (dict): the call's arguments.
        compile_after (int): op-by-op calls before compiling (None: never compile).
        compilable (bool): whether this call may be compiled (False while recording).
        generation (callable): returns the records' generation (a new one retraces).
        store (callable): ``store(owner, key, ratio)`` for the saturation ratios measured.
    """
    training = kwargs.get("training")
    if (_depth() or getattr(_CALLS, "disabled", False) or compile_after is None
            or not compilable or not tf.executing_eagerly()
            or isinstance(training, tf.Tensor) or training or tf.distribute.has_strategy()):
        with _nested():
            return raw(layer, *args, **kwargs)
    entry = COMPILED.setdefault(layer, {}).setdefault(raw, [0, None, []])
    entry[0] += 1
    if entry[0] <= compile_after:
        with _nested():
            return raw(layer, *args, **kwargs)
    return _compiled_call(layer, raw, entry, args, kwargs, generation(), store)
