"""Splits the fused activation of processing layers into a layer of its own."""
import tf_keras as keras

from ..graph import Graph, rebuild

__all__ = ["split_activations"]

_LINEAR = (None, "linear")

_L = keras.layers
#: The layers whose ``activation`` is applied to their output (a recurrent layer's
#: ``activation`` acts inside its cell: it is not split).
_OUTPUT_ACTIVATION = tuple(getattr(_L, name) for name in (
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D", "Dense",
    "EinsumDense", "LocallyConnected1D", "LocallyConnected2D") if hasattr(_L, name))


def _activation_name(layer):
    activation = layer.get_config().get("activation", None)
    if isinstance(activation, dict):  # a serialized activation
        config = activation.get("config")
        # a registered function serializes its registered name ('quantizeml>hard_swish')
        activation = config if isinstance(config, str) else \
            (config or {}).get("name", activation.get("class_name"))
    return activation


def split_activations(model):
    """Moves the ``activation`` of Conv/Dense-like layers into a separate layer.

    The layers split are the convolutions (1-D to 3-D, transposed, depthwise, separable),
    Dense, EinsumDense and LocallyConnected layers, and their subclasses: their activation is
    applied to their output. Other layers keep theirs (an LSTM's ``activation`` acts inside
    its cell).

    ``Dense(10, activation='softmax')`` becomes ``Dense(10)`` followed by
    ``Activation('softmax')`` (``ReLU()`` for 'relu', ``ReLU(6.)`` for 'relu6'), named
    ``<layer>_activation``. Quantized twins compute linear layers only; the split activation
    is then quantized on its own (ReLU) or stays in the float tail (softmax). Outputs are
    unchanged.

    Args:
        model (keras.Model): the model to update.

    Returns:
        keras.Model: the original model or a new model with the activations split.
    """
    graph = Graph(model)
    found = {node.index for node in graph.nodes
             if isinstance(node.layer, _OUTPUT_ACTIVATION)
             and _activation_name(node.layer) not in _LINEAR}
    if not found:
        return model

    def rewrite(node, rb):
        if node.index not in found:
            return None
        name = _activation_name(node.layer)
        linear = rb._clones.get(id(node.layer))
        weights = None
        if linear is None:
            linear = rb._clones[id(node.layer)] = rb.clone(node.layer, activation="linear")
            weights = node.layer.get_weights()
        outputs = rb.apply(node, layer=linear, weights=weights)
        act_name = rb.unique(f"{node.layer.name}_activation")
        if name == "relu":
            act = keras.layers.ReLU(name=act_name)
        elif name == "relu6":
            act = keras.layers.ReLU(6.0, name=act_name)
        else:
            act = keras.layers.Activation(name, name=act_name)
        return act(outputs)

    return rebuild(graph, rewrite)
