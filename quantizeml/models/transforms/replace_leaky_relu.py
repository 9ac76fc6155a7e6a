"""Replaces a ReLU with a negative slope (and no threshold nor maximum) by a LeakyReLU, and
the other ReLUs QuantizedReLU does not take by a TableReLU."""
import tf_keras as keras

from ...layers.table import TableReLU
from ..graph import substitute_layers

__all__ = ["replace_leaky_relu"]


def _leaky(layer):
    config = layer.get_config()
    slope = float(config.get("negative_slope") or 0.0)
    return slope != 0.0 and not float(config.get("threshold") or 0.0) \
        and config.get("max_value") is None


def replace_leaky_relu(model):
    """Replaces ``ReLU(negative_slope=a)`` layers by ``LeakyReLU(alpha=a)``.

    The two compute the same function (``x`` for ``x >= 0``, ``a * x`` below); the
    LeakyReLU has a quantized twin (an exact integer table), the sloped ReLU has none. A ReLU
    with a threshold, or with a maximum besides its slope, becomes a
    ``quantizeml.layers.TableReLU`` (keras' ReLU under another name, same config and outputs),
    whose twin is an exact integer table too.

    Args:
        model (keras.Model): a model.

    Returns:
        keras.Model: the original model (nothing to replace) or the updated model.

    Example:
        ```python
        model = replace_leaky_relu(model)  # ReLU(negative_slope=0.1) -> LeakyReLU(alpha=0.1)
        ```
    """
    def substitute(node):
        if type(node.layer) is not keras.layers.ReLU:
            return None
        config = node.layer.get_config()
        if _leaky(node.layer):
            slope = float(config["negative_slope"])
            return lambda name: keras.layers.LeakyReLU(alpha=slope, name=name)
        if float(config.get("threshold") or 0.0) or float(config.get("negative_slope") or 0.0):
            return lambda name: TableReLU.from_config({**config, "name": name})
        return None

    return substitute_layers(model, substitute)
