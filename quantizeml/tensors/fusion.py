"""Fused elementwise kernels: chains of elementwise integer ops compiled by XLA in graphs.

A quantized layer applies several elementwise ops to each full activation tensor (a rounded
requantization is a multiplication, a rounding and a clip; a bias addition casts then adds).
Run one by one, each op reads and writes the whole tensor. In graphs (``predict``, ``fit``,
``tf.function``), :func:`fused` compiles such a chain with XLA into one loop over the tensor
(a nested ``tf.function(jit_compile=True)``: the rest of the graph, convolutions included,
keeps TensorFlow's kernels). The results are the same bit for bit: every op of a fused chain
is exact (integer-valued float products, sums and roundings proven exact in their carrier),
so no evaluation order or FMA contraction can change them.

Eager calls run the ops directly (compiling costs ~50 ms per chain and input shape), and so do
graphs traced for a SavedModel (the exported graph stays free of XLA-only functions). Under a
gradient tape (a ``fit`` train step) a compiled call is never differentiated (measured ~40%
slower than the plain ops): only the forward and gradient functions of custom gradients are
compiled there (``under_tape=True``: the requantizations and the bias additions, whose
gradients are one expression each). :func:`xla_fusion` turns fusion off (e.g. on a platform
without XLA).

A chain may also start in one layer and end in the next: a reducing layer leaves its float64
accumulator as float32 parts and a recipe (:class:`Deferred`), and the requantization that
follows combines the parts inside its own kernel; the float64 tensor is then pruned from the
graph.
"""
import contextlib
import functools
import threading
import weakref

import tensorflow as tf
from tensorflow.python.eager import record
from tensorflow.python.saved_model import save_context

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
    enabled, no gradient tape recording unless ``under_tape``, not saving a SavedModel)."""
    return fusion_enabled() and not tf.executing_eagerly() \
        and (under_tape or not taping()) and not save_context.in_save_context()


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
