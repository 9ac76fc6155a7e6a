"""Walking and rebuilding functional tf_keras models node by node (public Keras API only)."""
import tensorflow as tf
import tf_keras as keras


def check_functional(model, what="model"):
    """Raises a clear error for models quantizeml cannot walk (subclassed models)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} expected a tf_keras Model. Received: {type(model).__name__}")
    if not getattr(model, "_is_graph_network", False) and \
            not isinstance(model, keras.Sequential):
        raise ValueError(f"{what} expected a functional or Sequential tf_keras model. Received: "
                         f"a subclassed model ({type(model).__name__}); rebuild it with the "
                         "functional API")
    if not model.inputs:
        raise ValueError(f"{what} expected a built model with defined inputs. Received: an "
                         "unbuilt model (call it on an Input first)")


def is_qtensor(tensor):
    """Whether a KerasTensor stands for a QTensor (FixedPoint, QFloat)."""
    from ..tensors import QTensor
    value_type = getattr(getattr(tensor, "type_spec", None), "value_type", None)
    return isinstance(value_type, type) and issubclass(value_type, QTensor)


def producer(tensor):
    """The layer that produced a KerasTensor."""
    return tensor._keras_history.layer


def model_nodes(model):
    """The ``(layer, node)`` calls of ``model``'s own graph (sub-models not expanded), in
    topological order: a post-order depth-first walk from the outputs (so every call of a
    shared layer comes after the calls it depends on)."""
    inputs = {id(t) for t in model.inputs}

    def parents(node):
        return [(layer, layer.inbound_nodes[index])
                for layer, index, _, tensor in node.iterate_inbound()
                if id(tensor) not in inputs]

    order, done = [], set()
    stack = []
    for t in reversed(model.outputs):
        if id(t) not in inputs:
            layer, index, _ = t._keras_history
            stack.append((layer, layer.inbound_nodes[index], False))
    while stack:
        layer, node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append((layer, node))
            continue
        stack.append((layer, node, True))
        for parent in reversed(parents(node)):
            if id(parent[1]) not in done:
                stack.append((*parent, False))
    return order


def consumers(model):
    """Maps each layer name to the list of layers consuming its outputs in the model."""
    out = {layer.name: [] for layer in model.layers}
    for layer, node in model_nodes(model):
        for t in tf.nest.flatten(node.input_tensors):
            out[producer(t).name].append(layer)
    return out


def output_layers(model):
    """Names of the layers whose outputs are model outputs."""
    return {producer(t).name for t in model.outputs}


def rebuild(model, convert, after=None, before=None, name=None):
    """Rebuilds a functional model, replacing its layers.

    Args:
        model (keras.Model): a functional or Sequential model.
        convert (callable): ``convert(layer) -> new layer`` (called once per layer; shared
            layers stay shared).
        after (callable, optional): ``after(layer, outputs) -> outputs`` called on the new
            outputs of each node (and of each input layer), to insert layers after it.
        before (callable, optional): ``before(layer, args) -> args`` called on the new inputs
            of each node, to insert layers before it.
        name (str, optional): the new model name.

    Returns:
        keras.Model: the new model.
    """
    check_functional(model)
    tensors = {}
    new_inputs = []
    for t in model.inputs:
        layer = producer(t)
        new = keras.Input(shape=t.shape[1:], batch_size=None, dtype=t.dtype, name=layer.name)
        new_inputs.append(new)
        tensors[id(t)] = after(layer, new) if after else new
    new_layers = {}

    def mapped(structure):
        return tf.nest.map_structure(
            lambda t: tensors[id(t)] if id(t) in tensors else t, structure)

    for layer, node in model_nodes(model):
        if layer.name not in new_layers:
            new_layers[layer.name] = convert(layer)
        new_layer = new_layers[layer.name]
        args = mapped(node.call_args)
        if before:
            args = before(layer, args)
        kwargs = mapped(node.call_kwargs)
        outputs = new_layer(*args, **kwargs)
        if after:
            outputs = after(layer, outputs)
        for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
            tensors[id(old)] = new
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(new_inputs, outputs if len(outputs) > 1 else outputs[0],
                       name=name or model.name), new_layers
