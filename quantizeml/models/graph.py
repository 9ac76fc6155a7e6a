"""The one graph of quantizeml: walking and rebuilding functional tf_keras models.

quantize(), the transforms, the exporter and the analysis all read models through this module
(public Keras API only, plus ``KerasTensor._keras_history`` to find the layer and node that
produced a tensor):

- helpers on a model's own graph: :func:`check_functional`, :func:`model_nodes` (topological
  layer calls), :func:`producer`, :func:`is_qtensor`, :func:`call_tensors`, :func:`consumers`,
  :func:`output_layers`;
- :class:`Graph` lists the layer calls (nodes) of a functional or Sequential model in
  topological order. Nested functional/Sequential sub-models are expanded in place, so the
  graph is always flat: the layers of a sub-model appear as nodes of the graph and the tensors
  that cross the sub-model boundary are the same :class:`TensorRef` on both sides;
- :func:`rebuild` builds a new functional model from a graph, node after node, calling a
  ``rewrite`` function on each node. By default a node is rebuilt with a clone of its layer
  (``from_config`` + ``set_weights``, once per layer, so shared layers stay shared) called on
  the rebuilt inputs in the same order, so the new model never shares a layer or a variable with
  the source model;
- :func:`replace_layers` rebuilds a model with one new layer per source layer (quantize()).
"""
import contextlib

import tensorflow as tf
import tf_keras as keras

from ..tensors import QTensor

__all__ = ["check_functional", "is_qtensor", "producer", "model_nodes", "call_tensors",
           "consumers", "output_layers", "TensorRef", "Node", "Graph", "Rebuilder", "rebuild",
           "replace_layers", "bypass_layers", "substitute_layers", "channels_last",
           "last_axis_only"]

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


def call_tensors(node):
    """The KerasTensors a Keras node was called on: every tensor of its positional and keyword
    call arguments (``node.input_tensors`` holds only the first argument, e.g. the query of a
    MultiHeadAttention), each once, in call order."""
    seen, out = set(), []
    for t in node.keras_inputs:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def consumers(model):
    """Maps each layer name to the list of layers consuming its outputs in the model (every
    tensor a call reads, positional or keyword, counts once per call). The input layers are
    keys too (a Sequential model does not list its InputLayer in ``model.layers``)."""
    out = {layer.name: [] for layer in model.layers}
    for t in model.inputs:
        out.setdefault(producer(t).name, [])
    for layer, node in model_nodes(model):
        for t in call_tensors(node):
            out.setdefault(producer(t).name, []).append(layer)
    return out


def output_layers(model):
    """Names of the layers whose outputs are model outputs."""
    return {producer(t).name for t in model.outputs}



class TensorRef:
    """A tensor of the flat graph.

    Args:
        key (int): the unique key of the tensor in its graph.
        tensor (KerasTensor): the source KerasTensor (for its shape and dtype).
    """
    __slots__ = ("key", "tensor")

    def __init__(self, key, tensor):
        self.key = key
        self.tensor = tensor

    @property
    def shape(self):
        """tf.TensorShape: the static shape of the tensor."""
        return self.tensor.shape

    def __repr__(self):
        return f"TensorRef({self.key}, shape={self.shape})"


class Node:
    """A call of a layer in the flat graph.

    Args:
        index (int): the topological index of the node.
        layer (keras.layers.Layer): the called layer (of the source model).
        args (tuple): the positional call arguments, with TensorRef in place of tensors.
        kwargs (dict): the keyword call arguments, with TensorRef in place of tensors.
        outputs (list): the TensorRef of the flattened outputs.
    """
    __slots__ = ("index", "layer", "args", "kwargs", "inputs", "outputs")

    def __init__(self, index, layer, args, kwargs, outputs):
        self.index = index
        self.layer = layer
        self.args = args
        self.kwargs = kwargs
        self.inputs = [t for t in tf.nest.flatten((args, kwargs)) if isinstance(t, TensorRef)]
        self.outputs = outputs

    def __repr__(self):
        return f"Node({self.index}, {self.layer.name})"


class Graph:
    """The flat graph of a functional or Sequential model.

    Args:
        model (keras.Model): a functional or Sequential model with defined inputs.

    Raises:
        ValueError: if the model, or one of its nested models, is subclassed or not built.

    Attributes:
        model (keras.Model): the source model.
        input_layers (list): its InputLayer objects, in input order.
        inputs (list): the TensorRef of its inputs.
        outputs (list): the TensorRef of its (flattened) outputs.
        nodes (list): the Node objects, in topological order.
        nested (bool): whether a nested model was expanded.
        names (dict): ``id(layer) -> name`` of the layer in a flat model (unique).
    """

    def __init__(self, model):
        check_functional(model)
        self.model = model
        self.nodes = []
        self.nested = False
        self._count = 0
        self.input_layers = [t._keras_history.layer for t in model.inputs]
        self.inputs = [self._new_ref(t) for t in model.inputs]
        self.outputs = self._expand(model, self.inputs)
        self._producers = {ref.key: None for ref in self.inputs}
        self._consumers = {ref.key: [] for ref in self.inputs}
        self._calls = {}
        for node in self.nodes:
            self._calls.setdefault(id(node.layer), []).append(node)
            for ref in node.outputs:
                self._producers[ref.key] = node
                self._consumers[ref.key] = []
            for ref in node.inputs:
                self._consumers[ref.key].append(node)
        self._output_keys = {ref.key for ref in self.outputs}
        self.names = self._assign_names()

    def _assign_names(self):
        """Unique layer names for the flat model: the layers and inputs of the model keep their
        names, layers of nested models get a ``_<n>`` suffix when their name is taken."""
        names = {id(layer): layer.name for layer in self.input_layers}
        top = {id(layer) for layer in self.model.layers}
        for node in self.nodes:
            if id(node.layer) in top:
                names[id(node.layer)] = node.layer.name
        used = set(names.values())
        for node in self.nodes:
            if id(node.layer) not in names:
                name, i = node.layer.name, 0
                while name in used:
                    i += 1
                    name = f"{node.layer.name}_{i}"
                names[id(node.layer)] = name
                used.add(name)
        return names

    def _new_ref(self, tensor):
        self._count += 1
        return TensorRef(self._count, tensor)

    def _expand(self, model, input_refs):
        """Appends the nodes of ``model`` called on ``input_refs``; returns its output refs."""
        if len(input_refs) != len(model.inputs):
            raise ValueError(f"Model {model.name} expected {len(model.inputs)} inputs. "
                             f"Received: {len(input_refs)} inputs")
        env = {id(t): ref for t, ref in zip(model.inputs, input_refs)}

        def mapped(structure):
            return tf.nest.map_structure(lambda x: env.get(id(x), x), structure)

        for layer, node in model_nodes(model):
            args, kwargs = mapped(tuple(node.call_args)), mapped(dict(node.call_kwargs))
            if isinstance(layer, keras.Model):
                check_functional(layer, what=f"Nested model {layer.name}")
                self.nested = True
                sub_inputs = args[0] if args else kwargs["inputs"]
                out_refs = self._expand(layer, tf.nest.flatten(sub_inputs))
            else:
                out_refs = [self._new_ref(t) for t in tf.nest.flatten(node.outputs)]
                self.nodes.append(Node(len(self.nodes), layer, args, kwargs, out_refs))
            for t, ref in zip(tf.nest.flatten(node.outputs), out_refs):
                env[id(t)] = ref
        return [env[id(t)] for t in model.outputs]

    def producer(self, ref):
        """The node that produces ``ref``, or None for a model input."""
        return self._producers[ref.key]

    def consumers(self, ref):
        """The nodes that take ``ref`` as an input (a node is listed once per use)."""
        return list(self._consumers[ref.key])

    def is_output(self, ref):
        """Whether ``ref`` is a model output."""
        return ref.key in self._output_keys

    def calls(self, layer):
        """The nodes that call ``layer``."""
        return list(self._calls.get(id(layer), []))

    def single_call(self, node):
        """Whether ``node`` is the only call of its layer in the graph."""
        return len(self._calls[id(node.layer)]) == 1

    def parent(self, node):
        """The producer of the only tensor input of ``node``, or None (model input, or several
        inputs)."""
        if len(node.inputs) != 1:
            return None
        return self.producer(node.inputs[0])

    def sole_consumer(self, node):
        """The node that alone consumes the only output of ``node``, or None (several outputs or
        consumers, or a model output)."""
        if len(node.outputs) != 1 or self.is_output(node.outputs[0]):
            return None
        consumers = self._consumers[node.outputs[0].key]
        return consumers[0] if len(consumers) == 1 else None

    def chain(self, node, first_types, types=None):
        """Matches the pattern ``first -> node`` where ``first`` is the only producer of the only
        input of ``node`` and ``node`` its only consumer, both called once.

        Args:
            node (Node): the second node of the pattern.
            first_types (tuple): the exact classes accepted for the first layer.
            types (tuple, optional): the exact classes accepted for ``node``'s layer.
                Defaults to None (any).

        Returns:
            Node: the first node, or None if the pattern does not match.
        """
        if types is not None and type(node.layer) not in types:
            return None
        first = self.parent(node)
        if first is None or type(first.layer) not in first_types:
            return None
        if not (self.single_call(node) and self.single_call(first)):
            return None
        return first if self.sole_consumer(first) is node else None

    def layer_names(self):
        """The names of the input layers and of the layers of the nodes."""
        names = [layer.name for layer in self.input_layers]
        for node in self.nodes:
            if node.layer.name not in names:
                names.append(node.layer.name)
        return names


def channels_last(layer):
    """Whether a layer with an optional ``data_format`` works on channels-last data."""
    return layer.get_config().get("data_format", "channels_last") in ("channels_last", None)


def last_axis_only(layer, rank):
    """Whether a normalization layer's ``axis`` is the last axis of a ``rank`` input alone."""
    axis = layer.get_config()["axis"]
    axes = {a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])}
    return axes == {rank - 1}


class Rebuilder:
    """The state of a :func:`rebuild`, handed to its ``rewrite`` functions.

    It maps the source TensorRef to the new tensors, clones layers (shared clones for the
    default path) and keeps the new layer names unique.

    Args:
        graph (Graph): the source graph.
    """

    def __init__(self, graph):
        self._tensors = {}
        self._clones = {}
        self._names = graph.names
        self._reserved = set(graph.names.values())
        self._taken = set()

    def map(self, structure):
        """Replaces the TensorRef of ``structure`` by the rebuilt tensors."""
        return tf.nest.map_structure(
            lambda x: self._tensors[x.key] if isinstance(x, TensorRef) else x, structure)

    def unique(self, name):
        """A new layer name: ``name``, suffixed with a number if it is the name of a layer of
        the graph or already given."""
        candidate, i = name, 0
        while candidate in self._taken or candidate in self._reserved:
            i += 1
            candidate = f"{name}_{i}"
        self._taken.add(candidate)
        return candidate

    def name_for(self, layer):
        """The name of ``layer`` in the new model (for its clone or its replacement): its
        graph name the first time, a suffixed one after."""
        name = self._names.get(id(layer), layer.name)
        if name in self._taken:
            return self.unique(name)
        self._taken.add(name)
        return name

    def clone(self, layer, **config):
        """A new, unbuilt layer of the class of ``layer``, from its config updated with
        ``config``, named by :meth:`name_for`."""
        new_config = {**layer.get_config(), **config}
        new_config["name"] = self.name_for(layer)
        if type(layer) is keras.layers.Lambda and "function" not in config:
            # keep the function object itself (a bytecode round trip would make a new one)
            new_config.update(function=layer.function, function_type="raw")
        return type(layer).from_config(new_config)

    def apply(self, node, layer=None, args=None, kwargs=None, weights=None):
        """Calls a layer on the rebuilt inputs.

        Args:
            node (Node): the source node.
            layer (keras.layers.Layer, optional): the new layer to call. Defaults to None: a
                clone of ``node.layer`` (one per source layer, so shared layers stay shared)
                with its weights.
            args (tuple, optional): the positional arguments, with TensorRef or new tensors.
                Defaults to None (``node.args``).
            kwargs (dict, optional): the keyword arguments. Defaults to None (``node.kwargs``).
            weights (list, optional): weights set on ``layer`` after its first call.
                Defaults to None.

        Returns:
            the outputs of the call.
        """
        like = None  # a clone starts from its source's weights (shared buffers)
        if layer is None:
            layer = self._clones.get(id(node.layer))
            if layer is None:
                layer = self._clones[id(node.layer)] = self.clone(node.layer)
                weights, like = node.layer.weights, node.layer
            else:
                weights = None
        first = not layer.built
        args = self.map(node.args if args is None else tuple(args))
        kwargs = self.map(node.kwargs if kwargs is None else dict(kwargs))
        with _build_initializers(layer, like) if first and weights else contextlib.nullcontext():
            outputs = layer(*args, **kwargs)
        if first and weights:
            _set_weights(layer, weights)
        return outputs

    def _set(self, refs, tensors):
        tensors = tf.nest.flatten(tensors)
        if len(tensors) != len(refs):
            raise ValueError(f"A rewrite expected {len(refs)} outputs. "
                             f"Received: {len(tensors)} outputs")
        for ref, tensor in zip(refs, tensors):
            self._tensors[ref.key] = tensor


@contextlib.contextmanager
def _build_initializers(layer, like=None):
    """While ``layer`` builds, its ``*_initializer`` attributes draw no random numbers: for a
    layer whose weights are all set right after its first call, the random draws (about 1 s
    per 100 M weights) are wasted. The attributes are restored afterwards, so its config is
    unchanged.

    With ``like`` (the source layer whose weights are set in afterwards), only the
    initializers that ``like`` has too are replaced (a twin's own extra weights keep theirs),
    and each starts from ``like``'s matching weight (:class:`_SharedInitial`): the new variable
    shares its buffer, so no zeros are allocated only to be dropped (TensorFlow keeps freed
    CPU buffers for reuse: each drop added to the process' peak memory)."""
    saved = {key: value for key, value in vars(layer).items()
             if key.endswith("_initializer") and isinstance(value, keras.initializers.Initializer)
             and (like is None or isinstance(getattr(like, key, None),
                                             keras.initializers.Initializer))}
    for key in saved:
        setattr(layer, key, _ZEROS if like is None else _SharedInitial(like, key))
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(layer, key, value)


_ZEROS = keras.initializers.Zeros()


class _SharedInitial(keras.initializers.Initializer):
    """The current value of the weight of ``source`` that its ``<name>_initializer`` made
    (attribute ``<name>``, else ``<name>_kernel``: ``depthwise_initializer`` makes
    ``depthwise_kernel``) when its shape and dtype match, else zeros. The new variable shares
    the buffer of that weight until either side writes it (copy on write). Only a starting
    point: the weights are set right after, so a mismatch costs memory, never values."""

    def __init__(self, source, key):
        name = key[:-len("_initializer")]
        candidates = (getattr(source, name, None), getattr(source, name + "_kernel", None))
        self.variable = next((v for v in candidates if isinstance(v, tf.Variable)), None)

    def __call__(self, shape, dtype=None, **kwargs):
        v = self.variable
        dtype = tf.as_dtype(dtype or tf.float32)
        if v is not None and v.dtype == dtype and tuple(v.shape) == tuple(shape):
            return v.value()
        return tf.zeros(shape, dtype)


def _set_weights(layer, weights):
    """``layer.set_weights(weights)``, where ``weights`` may also hold variables: those are
    assigned variable to variable (no numpy copy in between)."""
    if not any(isinstance(w, tf.Variable) for w in weights):
        layer.set_weights(weights)
        return
    if len(layer.weights) != len(weights):
        raise ValueError(f"Layer {layer.name}: expected {len(layer.weights)} weights. "
                         f"Received: {len(weights)} weights")
    for target, value in zip(layer.weights, weights):
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"Layer {layer.name}: weight {target.name} expected shape "
                             f"{tuple(target.shape)}. Received: {tuple(value.shape)}")
        target.assign(value)


def rebuild(graph, rewrite=None, rewrite_input=None, name=None, dynamic_batch=False):
    """Builds a new functional model from a graph, rewriting its nodes.

    Nodes are rebuilt in topological order; the inputs of each call keep their order and
    structure. New inputs are clones of the source InputLayers (same name, shape and dtype).

    Args:
        graph (Graph): the graph of the source model.
        rewrite (callable, optional): ``rewrite(node, rebuilder)`` returns the new outputs of
            ``node`` (a tensor or a structure that flattens like ``node.outputs``), or None to
            rebuild the node with a clone of its layer. Defaults to None.
        rewrite_input (callable, optional): ``rewrite_input(input_layer, tensor, rebuilder)``
            returns the tensor that stands for the model input ``tensor`` in the rest of the
            graph. Defaults to None.
        name (str, optional): the new model name. Defaults to None (the source model name).
        dynamic_batch (bool, optional): new inputs with a dynamic batch size, whatever the
            source inputs have. Defaults to False (as the source InputLayers).

    Returns:
        keras.Model: a new functional model.
    """
    rb = Rebuilder(graph)
    new_inputs = []
    for layer, ref in zip(graph.input_layers, graph.inputs):
        if dynamic_batch:
            tensor = keras.Input(shape=ref.shape[1:], batch_size=None, dtype=ref.tensor.dtype,
                                 name=rb.name_for(layer))
        else:
            config = {**layer.get_config(), "name": rb.name_for(layer)}
            tensor = keras.layers.InputLayer.from_config(config).output
        new_inputs.append(tensor)
        if rewrite_input is not None:
            tensor = rewrite_input(layer, tensor, rb)
        rb._set([ref], tensor)
    for node in graph.nodes:
        outputs = rewrite(node, rb) if rewrite is not None else None
        if outputs is None:
            outputs = rb.apply(node)
        rb._set(node.outputs, outputs)
    outputs = rb.map(graph.outputs)
    return keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                       outputs if len(outputs) > 1 else outputs[0],
                       name=name or graph.model.name)


def bypass_layers(model, removed):
    """The model without the single-input layers for which ``removed(layer)`` is true: their
    consumers read their input (for layers that are the identity at inference).

    Args:
        model (keras.Model): a functional or Sequential model.
        removed (callable): ``removed(layer) -> bool``.

    Returns:
        keras.Model: the original model (nothing removed) or a new model.
    """
    graph = Graph(model)
    bypassed = {node.index for node in graph.nodes
                if removed(node.layer) and len(node.inputs) == 1}
    if not bypassed:
        return model

    def rewrite(node, rb):
        return rb.map(node.inputs[0]) if node.index in bypassed else None

    return rebuild(graph, rewrite)


def substitute_layers(model, substitute):
    """The model with some layers replaced by new ones computing the same.

    Args:
        model (keras.Model): a functional or Sequential model.
        substitute (callable): ``substitute(node) -> make or None``, where
            ``make(name) -> layer`` builds the replacement of ``node.layer`` (called once per
            source layer, so shared layers stay shared; the new layer takes the source
            layer's weights, if any, after its first call).

    Returns:
        keras.Model: the original model (nothing replaced) or a new model.
    """
    graph = Graph(model)
    found = {node.index: substitute(node) for node in graph.nodes}
    found = {index: make for index, make in found.items() if make is not None}
    if not found:
        return model
    replacements = {}

    def rewrite(node, rb):
        if node.index not in found:
            return None
        layer = replacements.get(id(node.layer))
        weights = None
        if layer is None:
            layer = replacements[id(node.layer)] = found[node.index](rb.name_for(node.layer))
            weights = node.layer.get_weights() or None
        return rb.apply(node, layer=layer, weights=weights)

    return rebuild(graph, rewrite)


def replace_layers(model, convert, after=None, before=None, name=None, weights_copied=False):
    """Rebuilds a functional model with one new layer per source layer (quantize()).

    The new inputs have a dynamic batch size and the names of the source InputLayers.

    Args:
        model (keras.Model): a functional or Sequential model.
        convert (callable): ``convert(layer) -> new layer`` (called once per layer; shared
            layers stay shared).
        after (callable, optional): ``after(layer, outputs) -> outputs`` called on the new
            outputs of each node (and of each input layer), to insert layers after it.
        before (callable, optional): ``before(layer, args, kwargs) -> (args, kwargs)`` called
            on the new positional and keyword call arguments of each node, to insert layers
            before it (the returned ones are those the new layer is called on).
        name (str, optional): the new model name.
        weights_copied (bool, optional): the caller sets every weight of each source layer on
            its new layer afterwards (quantize()), so each new weight starts from its source's
            (a shared buffer: no random draws, no buffer allocated only to be dropped), where
            the source has the same initializer. Defaults to False.

    Returns:
        tuple: the new keras.Model and the dict ``source layer name -> new layer``.
    """
    new_layers = {}

    def rewrite_input(layer, tensor, rb):
        return after(layer, tensor) if after else tensor

    def rewrite(node, rb):
        layer = node.layer
        if layer.name not in new_layers:
            new_layers[layer.name] = convert(layer)
        args, kwargs = rb.map(tuple(node.args)), rb.map(dict(node.kwargs))
        if before:
            args, kwargs = before(layer, args, kwargs)
        new = new_layers[layer.name]
        shared = weights_copied and not new.built and new is not layer and layer.weights
        with _build_initializers(new, like=layer) if shared else contextlib.nullcontext():
            outputs = new(*args, **kwargs)
        return after(layer, outputs) if after else outputs

    new = rebuild(Graph(model), rewrite, rewrite_input, name=name, dynamic_batch=True)
    return new, new_layers
