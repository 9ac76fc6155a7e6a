"""The declarative registry of quantized twins.

Each ``Quantized*`` layer registers, next to its class, what the rest of quantizeml needs to
know about it: the float classes it replaces, the quant_config keys of its weight quantizers,
whether it ends a block with an OutputQuantizer, whether it passes its inputs through, whether
its inputs must be per-tensor, and which ONNX emitter exports it. ``quantize()``, the analysis
and the exporter read this table; none of them keeps a list of class names.

Example:
    ```python
    @register_keras
    @register_twin(keras.layers.Dense, weights=("weight_quantizer",), output=BLOCK_END,
                   export="dense")
    class QuantizedDense(QuantizedReduction, keras.layers.Dense):
        ...
    ```
"""
import dataclasses

#: ``TwinSpec.output``: the twin gets a signed OutputQuantizer (``output_bits``) when it ends a
#: block, i.e. unless all its consumers (looking through pass-through layers) are activations
#: that requantize themselves, or it produces a model output.
BLOCK_END = "block_end"
#: ``TwinSpec.output``: the twin always requantizes its output, unsigned, on
#: ``activation_bits`` (ReLU).
ACTIVATION = "activation"
_OUTPUTS = (None, BLOCK_END, ACTIVATION)

#: float Keras layer class -> its quantized twin (kept for the public ``QUANTIZATION_TARGETS``).
QUANTIZATION_TARGETS = {}
#: quantized twin class -> its TwinSpec.
_SPECS = {}


@dataclasses.dataclass(frozen=True)
class TwinSpec:
    """What quantize(), the analysis and the exporter know about a quantized twin.

    Attributes:
        twin (type): the quantized layer class.
        float_classes (tuple): the float Keras layer classes it replaces (exact classes).
        weights (tuple of str): the quant_config keys of its weight quantizers, in the order
            quantize() configures them (empty for a layer without quantized weights).
        output (str, None or callable): ``BLOCK_END``, ``ACTIVATION`` or None (no
            OutputQuantizer from quantize()); a callable ``output(float_layer)`` returns one of
            them per layer (e.g. a bilinear upsampling ends a block, a nearest one does not).
        pass_through (bool or callable): a shape-only layer, or one that keeps its input's
            grid (the token layers): quantize() looks through it to find the real consumers of
            a tensor (e.g. a normalization that needs per-tensor inputs); a callable
            ``pass_through(float_layer)`` says it per layer.
        per_tensor_inputs (bool or callable): its inputs must have one fractional bit for all
            channels; a callable ``per_tensor_inputs(float_layer) -> bool`` says it per layer
            (e.g. a Reshape that keeps the last axis takes per-axis inputs).
        float_inputs (bool): it takes the model's float inputs itself (no InputQuantizer before
            it), e.g. a Rescaling of raw pixels.
        export (str or None): the name of the ONNX emitter that exports it
            (``quantizeml.onnx_support.export.EMITTERS``); None when it cannot be exported.
        refuses (callable or None): ``refuses(float_layer) -> str or None``: why the twin
            cannot stand for that float layer (e.g. a configuration it does not support), or
            None when it can. quantize() reports a refused layer as unsupported (or keeps it in
            the float tail), with the reason.
        float_at_end (bool): quantize() keeps the float layer when no quantized layer follows
            it (in the float tail), e.g. a final softmax whose float probabilities are the
            model's output; it quantizes it between quantized layers.
    """
    twin: type
    float_classes: tuple
    weights: tuple = ()
    output: str = None
    pass_through: bool = False
    per_tensor_inputs: bool = False
    float_inputs: bool = False
    export: str = None
    refuses: object = None
    float_at_end: bool = False

    def output_for(self, layer):
        """str or None: the OutputQuantizer kind quantize() gives the twin of ``layer``."""
        return self.output(layer) if callable(self.output) else self.output

    def passes_through(self, layer):
        """bool: whether the twin of ``layer`` only moves values (quantize() looks through
        it)."""
        if callable(self.pass_through):
            return bool(self.pass_through(layer))
        return bool(self.pass_through)

    def needs_per_tensor_inputs(self, layer):
        """bool: whether the twin of the float ``layer`` needs per-tensor inputs."""
        if callable(self.per_tensor_inputs):
            return bool(self.per_tensor_inputs(layer))
        return bool(self.per_tensor_inputs)

    def refusal(self, layer):
        """str or None: why the twin cannot quantize the float ``layer`` (None: it can)."""
        return None if self.refuses is None else self.refuses(layer)

    @property
    def has_weights(self):
        """bool: whether the twin quantizes weights."""
        return bool(self.weights)


def register_twin(*float_classes, weights=(), output=None, pass_through=False,
                  per_tensor_inputs=False, float_inputs=False, export=None, refuses=None,
                  float_at_end=False):
    """Class decorator registering a quantized twin of ``float_classes`` and its TwinSpec.

    Args:
        *float_classes (type): the float Keras layer classes the twin replaces.
        weights (tuple of str, optional): quant_config keys of its weight quantizers.
            Defaults to ().
        output (str or callable, optional): ``BLOCK_END``, ``ACTIVATION`` or None (a
            callable: ``output(float_layer)`` returns one of them). Defaults to None.
        pass_through (bool or callable, optional): a shape-only layer (a callable:
            ``pass_through(float_layer) -> bool``). Defaults to False.
        per_tensor_inputs (bool or callable, optional): needs per-tensor inputs (a callable:
            ``per_tensor_inputs(float_layer) -> bool``). Defaults to False.
        float_inputs (bool, optional): takes the model's float inputs. Defaults to False.
        export (str, optional): name of its ONNX emitter. Defaults to None (not exportable).
        refuses (callable, optional): ``refuses(float_layer) -> str or None``, the float
            configurations the twin does not support. Defaults to None (it supports all).
        float_at_end (bool, optional): the float layer stays float when no quantized layer
            follows it. Defaults to False.

    Raises:
        ValueError: when a float class is already mapped to another twin, or an argument is
            out of its range.
    """
    if not callable(output) and output not in _OUTPUTS:
        raise ValueError(f"register_twin expected output among {_OUTPUTS}. "
                         f"Received: output={output!r}")
    if isinstance(weights, str) or not all(isinstance(k, str) for k in weights):
        raise ValueError(f"register_twin expected weights to be a tuple of quant_config keys. "
                         f"Received: weights={weights!r}")

    def wrap(cls):
        for float_cls in float_classes:
            other = QUANTIZATION_TARGETS.get(float_cls)
            if other is not None and other is not cls:
                raise ValueError(f"register_twin expected one twin per float layer. "
                                 f"Received: {float_cls.__name__} already mapped to "
                                 f"{other.__name__}, new twin {cls.__name__}")
        for float_cls in float_classes:
            QUANTIZATION_TARGETS[float_cls] = cls
        previous = _SPECS.get(cls)
        classes = tuple(previous.float_classes) if previous is not None else ()
        _SPECS[cls] = TwinSpec(
            twin=cls, float_classes=classes + tuple(c for c in float_classes if c not in classes),
            weights=tuple(weights), output=output, pass_through=pass_through,
            per_tensor_inputs=per_tensor_inputs, float_inputs=float_inputs, export=export,
            refuses=refuses, float_at_end=float_at_end)
        return cls
    return wrap


def twin_spec(layer_or_class):
    """The TwinSpec of a float layer with a twin or of a quantized twin.

    Float classes match exactly (a subclass of ``Conv2D`` is not a ``Conv2D``: its call may
    differ); quantized classes match through their bases (a subclass of a twin is that twin).

    Args:
        layer_or_class (keras.layers.Layer or type): a layer or a layer class.

    Returns:
        TwinSpec or None: None when the class is neither registered nor a registered twin.
    """
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    twin = QUANTIZATION_TARGETS.get(cls)
    if twin is not None:
        return _SPECS[twin]
    for base in cls.__mro__:
        if base in _SPECS:
            return _SPECS[base]
    return None


def twin_specs():
    """list of TwinSpec: every registered twin, in registration order."""
    return list(_SPECS.values())
