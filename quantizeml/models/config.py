"""dump_config: the q_config of a quantized model, as JSON-serializable data."""
import json

from ..layers import InputQuantizer, QuantizeWrapper
from ..layers.quantize_wrapper import serialize_quantize_config
from ..layers.registry import twin_spec
from .check import float_islands

_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "input_shape"}


def dump_config(model):
    """Dump the quantization configuration of a quantized model, exporting the configuration
    for each quantized layer.

    ``quantize(float_model, q_config=dump_config(qmodel))`` rebuilds the same quantized model.
    The quantized layers are the registered twins (:func:`quantizeml.layers.registry.twin_spec`)
    and the InputQuantizers; a layer fake-quantized by a QuantizeConfig is dumped as the Keras
    serialization of its QuantizeConfig (its class must be registered with Keras
    serialization); a float island is dumped as ``"float"``.

    Args:
        model (keras.Model): a quantized model.

    Returns:
        dict: layer name -> quant_config (JSON-serializable).
    """
    config = {}
    islands = set(float_islands(model))
    for layer in model.layers:
        spec = twin_spec(layer)
        if isinstance(layer, InputQuantizer):
            config[layer.name] = {k: v for k, v in layer.get_config().items()
                                  if k not in _BASE_KEYS}
        elif isinstance(layer, QuantizeWrapper):
            config[layer.name] = serialize_quantize_config(layer.quantize_config)
        elif spec is not None and isinstance(layer, spec.twin):
            if layer.quant_config is not None:
                config[layer.name] = layer.quant_config
        elif layer.name in islands:
            config[layer.name] = "float"
    return json.loads(json.dumps(config))
