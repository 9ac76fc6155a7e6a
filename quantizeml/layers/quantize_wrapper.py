"""QuantizeWrapper: fake-quantizes any Keras layer as a TF-MOT-style QuantizeConfig says.

This is how a layer without a Quantized* twin (or one the user wants quantized differently)
joins a quantized model: ``quantize(model, q_config={name: MyQuantizeConfig()})`` or
``quantize_annotate_layer(layer, MyQuantizeConfig())`` before ``quantize``. The wrapped layer
computes in float on fake-quantized weights, activations and outputs (straight-through
gradients, so it trains under QAT); quantize() dequantizes its inputs and re-quantizes its
outputs (a calibrated InputQuantizer) when quantized layers follow it.
"""
import tf_keras as keras

from ..quantizers.tfmot import QuantizeConfig
from .base import register_keras

_ANNOTATION = "_quantizeml_quantize_config"


def quantize_annotate_layer(layer, quantize_config):
    """Marks a layer so that quantize() fake-quantizes it with ``quantize_config``.

    Args:
        layer (keras.layers.Layer): a layer of the model to quantize.
        quantize_config (QuantizeConfig): how to quantize it.

    Returns:
        keras.layers.Layer: the same layer, annotated.
    """
    if not isinstance(quantize_config, QuantizeConfig):
        raise TypeError("quantize_annotate_layer expected a QuantizeConfig. Received: "
                        f"quantize_config={type(quantize_config).__name__}")
    setattr(layer, _ANNOTATION, quantize_config)
    return layer


def annotated_config(layer):
    """The QuantizeConfig a layer was annotated with, or None."""
    return getattr(layer, _ANNOTATION, None)


def serialize_quantize_config(config):
    """The JSON-serializable form of a QuantizeConfig (its registered class name and config)."""
    return {"class_name": keras.saving.get_registered_name(type(config)),
            "config": config.get_config()}


def as_quantize_config(entry):
    """A QuantizeConfig from a q_config entry (an instance, or its serialized form), or None
    when the entry is a plain quant_config dict.

    Raises:
        ValueError: when the serialized class is not registered with Keras serialization.
    """
    if isinstance(entry, QuantizeConfig):
        return entry
    if not (isinstance(entry, dict) and "class_name" in entry and "config" in entry):
        return None
    name = entry.get("registered_name") or entry["class_name"]
    cls = keras.saving.get_registered_object(name)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, QuantizeConfig)):
        raise ValueError(f"A QuantizeConfig expected a class registered with "
                         f"@keras.saving.register_keras_serializable(). Received: "
                         f"class_name={name!r}")
    return cls.from_config(entry["config"])


class QuantizeAwareActivation:
    """``quantizer(activation(x))``, named like ``activation`` so that the wrapped layer's
    config still serializes the original activation (not this object and its variables)."""

    def __init__(self, activation, quantizer, weights, training=None):
        self.activation = activation
        self.quantizer = quantizer
        self.weights = weights
        self.training = training
        self.__name__ = getattr(activation, "__name__", "linear")

    def __call__(self, x):
        return self.quantizer(self.activation(x), self.training, self.weights)


def _original_activations(config):
    """A layer config where the serialized QuantizeAwareActivations are back to the names of
    the activations they wrap."""
    if isinstance(config, dict):
        if config.get("class_name") == "QuantizeAwareActivation":
            return config["config"]
        return {k: _original_activations(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_original_activations(v) for v in config]
    return config


@register_keras
class QuantizeWrapper(keras.layers.Wrapper):
    """Quantizes the weights, activations and outputs of a layer with a QuantizeConfig.

    Forward: ``w_q = quantizer(w)`` for each (weight, quantizer) of the config, set on the layer
    with ``set_quantize_weights``; activations wrapped so that ``a_q = quantizer(act(x))``
    (``set_quantize_activations``); the layer runs in float; each output quantizer is applied to
    the output. Gradients are those of the quantizers (straight-through for TF-MOT's).

    Args:
        layer (keras.layers.Layer): the layer to wrap.
        quantize_config (QuantizeConfig): how to quantize it (a registered Keras serializable
            class, so that the model saves and reloads).
    """

    def __init__(self, layer, quantize_config, **kwargs):
        if isinstance(quantize_config, dict):
            quantize_config = as_quantize_config(quantize_config)
        if not isinstance(quantize_config, QuantizeConfig):
            raise TypeError("QuantizeWrapper expected a QuantizeConfig. Received: "
                            f"quantize_config={type(quantize_config).__name__}")
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.quantize_config = quantize_config

    def build(self, input_shape):
        super().build(input_shape)
        #: the wrapped layer's variables, in order, before set_quantize_weights replaces its
        #: attributes with quantized tensors (which untracks them from the wrapped layer)
        self.layer_weights = list(self.layer.weights)
        self._weight_quantizers = []
        for weight, quantizer in self.quantize_config.get_weights_and_quantizers(self.layer):
            name = weight.name.split("/")[-1].split(":")[0]
            self._weight_quantizers.append(
                (weight, quantizer, quantizer.build(weight.shape, name, self)))
            # the wrapper keeps tracking (training, saving) the float weight it quantizes
            if weight.trainable:
                self._trainable_weights.append(weight)
            else:
                self._non_trainable_weights.append(weight)
        self._activation_quantizers = []
        for activation, quantizer in \
                self.quantize_config.get_activations_and_quantizers(self.layer):
            name = getattr(activation, "__name__", "activation")
            self._activation_quantizers.append(
                (activation, quantizer, quantizer.build(None, name, self)))
        output_shape = self.layer.compute_output_shape(input_shape)
        self._output_quantizers = [
            (quantizer, quantizer.build(output_shape, f"output_{i}", self))
            for i, quantizer in enumerate(self.quantize_config.get_output_quantizers(self.layer))]

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        if self._weight_quantizers:
            self.quantize_config.set_quantize_weights(self.layer, [
                quantizer(weight, training, weights)
                for weight, quantizer, weights in self._weight_quantizers])
        if self._activation_quantizers:
            self.quantize_config.set_quantize_activations(self.layer, [
                QuantizeAwareActivation(*entry, training=training)
                for entry in self._activation_quantizers])
        outputs = self.layer.call(inputs)
        for quantizer, weights in self._output_quantizers:
            outputs = quantizer(outputs, training, weights)
        return outputs

    def get_config(self):
        config = super().get_config()
        config["layer"] = _original_activations(config["layer"])
        return {**config, "quantize_config": serialize_quantize_config(self.quantize_config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = keras.layers.deserialize(config.pop("layer"))
        quantize_config = as_quantize_config(config.pop("quantize_config"))
        return cls(layer, quantize_config, **config)


