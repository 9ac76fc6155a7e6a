"""TensorFlow op dispatch for QTensors.

Importing this package registers overloads so that layers can write natural code on
FixedPoint and QFloat: ``tf.math.add``/``subtract``/``multiply`` (and the ``+ - *``
operators), ``tf.reshape``, ``tf.transpose``, ``tf.concat``,
``tf.math.reduce_sum``, ``tf.math.reduce_max``, ``tf.math.abs``, ``tf.expand_dims`` and
``tf.squeeze``. Each returns the exact result with the value bits that hold it, or raises a
TypeError/ValueError (incompatible types or shapes, a result beyond the 32-bit buffer).

``tf.linalg.matmul`` (``@``) is an exact reduction: its overloads are the matmul recipe
(:mod:`quantizeml.recipes.matmul`, registered by ``import quantizeml``).
"""
from . import arithmetic, reduce, shape  # noqa: F401
