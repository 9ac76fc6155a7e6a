"""``tf.custom_gradient`` without its memory cost while tf_keras builds a functional model.

In graph mode, ``tf.custom_gradient`` registers each gradient function in TensorFlow's global
gradient registry, which is never emptied. The function closes over the tensors of the graph
it was traced in, so that graph is never freed.

tf_keras builds a functional model by calling each layer once in a throw-away "scratch"
graph (``Layer._infer_output_signature``, ``Layer.compute_output_shape``) to learn its output
signature. Every quantized layer calls custom gradients (straight-through rounding, clips), so
each such call left its whole scratch graph alive: about 0.6 MB per quantized layer, ~1 GB
on ResNetRS420. No gradient is ever taken in a scratch graph, so :func:`custom_gradient` runs
the forward function alone there, and ``tf.custom_gradient`` everywhere else (eager calls,
``tf.function`` traces, SavedModel).
"""

import functools
import sys

import tensorflow as tf

#: tf_keras names the graphs in which it infers a layer's output signature
#: ``<layer name>_scratch_graph`` and creates them in these methods of its base Layer.
SCRATCH_SUFFIX = "_scratch_graph"
SCRATCH_METHODS = ("_infer_output_signature", "compute_output_shape")

#: How many frames above a custom gradient call :func:`in_scratch_graph` looks for the
#: scratch graph's creator (the recipes of a quantized layer run up to about 30 frames below it).
MAX_FRAMES = 256


def in_scratch_graph():
    """Whether the current graph is one of tf_keras' scratch graphs (output signature
    inference, where no gradient is ever taken).

    The graph's name ends with ``_scratch_graph`` and a tf_keras method that creates such a
    graph is on the call stack: a ``tf.function`` that happens to have a name ending that way
    keeps its gradients.
    """
    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    if not isinstance(graph, tf.__internal__.FuncGraph) or not graph.name.endswith(SCRATCH_SUFFIX):
        return False
    frame = sys._getframe(1)
    for _ in range(MAX_FRAMES):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name in SCRATCH_METHODS and "tf_keras" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def custom_gradient(f):
    """``tf.custom_gradient(f)``, except in a tf_keras scratch graph, where ``f``'s forward
    result is returned without registering its gradient (module docstring).

    Args:
        f (callable): ``f(*args) -> (result, grad_fn)``, as for ``tf.custom_gradient``.

    Returns:
        callable: the decorated function.
    """
    with_gradient = tf.custom_gradient(f)

    @functools.wraps(f)
    def decorated(*args):
        if in_scratch_graph():
            return f(*args)[0]
        return with_gradient(*args)
    return decorated
