"""dump_config: the q_config of a quantized model, as JSON-serializable data."""
import json

from ..layers import InputQuantizer, QuantizeWrapper
from ..layers.quantize_wrapper import serialize_quantize_config

_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "input_shape"}


def dump_config(model):
    """Dump the quantization configuration of a quantized model, exporting the configuration
    for each quantized layer.

    ``quantize(float_model, q_config=dump_config(qmodel))`` rebuilds the same quantized model.
    A layer fake-quantized by a QuantizeConfig is dumped as the Keras serialization of its
    QuantizeConfig (its class must be registered with Keras serialization).

    Args:
        model (keras.Model): a quantized model.

    Returns:
        dict: layer name -> quant_config (JSON-serializable).
    """
    config = {}
    for layer in model.layers:
        if isinstance(layer, InputQuantizer):
            config[layer.name] = {k: v for k, v in layer.get_config().items()
                                  if k not in _BASE_KEYS}
        elif isinstance(layer, QuantizeWrapper):
            config[layer.name] = serialize_quantize_config(layer.quantize_config)
        elif getattr(layer, "quant_config", None) is not None:
            config[layer.name] = layer.quant_config
    return json.loads(json.dumps(config))
