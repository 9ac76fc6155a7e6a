"""OnnxLayer: a node of the quantizeml custom domain whose definition is an ONNX function.

A custom-domain node is a call to a model-local ``FunctionProto`` made of standard ONNX
operators, so that ``onnx.checker`` validates it and a plain ``onnxruntime.InferenceSession``
runs it (by inlining the function) with no custom-operator library.
"""
import dataclasses

import numpy as np
import onnx
from onnx import AttributeProto
from onnx import helper as onnx_helper

DOMAIN = "com.quantizeml"
"""str: the custom domain of every quantizeml node."""
DOMAIN_VERSION = 1
"""int: the version of the custom domain."""
ONNX_OPSET = 17
"""int: the standard ('' domain) opset the function bodies use."""
IR_VERSION = 8
"""int: the ONNX IR version of the models built here (model-local functions need >= 8)."""


def default_opset_imports():
    """The opset imports of a quantizeml function: the standard opset and the custom domain.

    Returns:
        list: a list of ``OperatorSetIdProto``.
    """
    return [onnx_helper.make_opsetid("", ONNX_OPSET),
            onnx_helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]


@dataclasses.dataclass(frozen=True)
class QuantInfo:
    """How an integer tensor of the quantized graph maps to real values:
    ``real = integer * scale`` (symmetric, zero point 0).

    Args:
        scale (np.ndarray): float64 scale, shape ``()`` (per-tensor) or ``(C,)`` (per-channel,
            axis 1 of the batched tensor).
        signed (bool): whether the integers are int8 (True) or uint8 (False).
        shape (tuple): the tensor shape without its batch dimension.
    """
    scale: np.ndarray
    signed: bool
    shape: tuple

    def channel_scale(self, channels):
        """The scale broadcast to ``channels`` values (float64)."""
        return np.broadcast_to(np.asarray(self.scale, np.float64), (channels,)).copy()


@dataclasses.dataclass(frozen=True)
class TensorRange:
    """Calibrated range of a float tensor (over every sample and position).

    Args:
        max_abs (np.ndarray): largest absolute value per channel (axis 1), shape ``(C,)``, or
            shape ``()`` for tensors of rank < 2.
        min (float): smallest value seen.
        shape (tuple): the tensor shape without its batch dimension.
    """
    max_abs: np.ndarray
    min: float
    shape: tuple


def activation_scale(tensor_range, signed, per_tensor, bits=8):
    """The scale of an 8-bit activation from its calibrated range: ``max_abs / (2^(bits-1) - 1)``
    when signed, ``max_abs / (2^bits - 1)`` when unsigned. Channels that never saw a non-zero
    value get the largest scale of the tensor (1 when the whole tensor is zero).

    Args:
        tensor_range (TensorRange): the calibrated range.
        signed (bool): whether the integers are signed.
        per_tensor (bool): one scale for the tensor instead of one per channel.
        bits (int, optional): the bitwidth. Defaults to 8.

    Returns:
        np.ndarray: float64 scale of shape ``()`` or ``(C,)``.
    """
    max_abs = np.asarray(tensor_range.max_abs, np.float64)
    if per_tensor:
        max_abs = np.asarray(max_abs.max())
    largest = float(max_abs.max()) if max_abs.size else 0.0
    fallback = largest if largest > 0 else 1.0
    max_abs = np.where(max_abs > 0, max_abs, fallback)
    qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    # Stored in float32 by the quantizers: keep the exact float32 value here too.
    return (max_abs / qmax).astype(np.float32).astype(np.float64)


def check_str(value, what, name):
    """Raises a TypeError unless ``value`` is a str."""
    if not isinstance(value, str):
        raise TypeError(f"{what} expected a str for {name}. Received: {name}={value!r}")
    return value


def check_ints(value, length, what, name, minimum=0):
    """A tuple of ``length`` ints >= ``minimum`` (TypeError/ValueError otherwise)."""
    try:
        values = tuple(value)
    except TypeError:
        raise TypeError(f"{what} expected a sequence of {length} ints for {name}. "
                        f"Received: {name}={value!r}") from None
    if len(values) != length or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                    or v < minimum for v in values):
        raise ValueError(f"{what} expected {length} ints >= {minimum} for {name}. "
                         f"Received: {name}={value!r}")
    return tuple(int(v) for v in values)


def constant(name, value):
    """A ``Constant`` node producing the numpy value ``value`` as ``name``."""
    return onnx_helper.make_node("Constant", [], [name],
                                 value=onnx.numpy_helper.from_array(np.asarray(value), name))


def attribute_ref(name, attr_type=AttributeProto.INTS, ref_attr_name=None):
    """An attribute of a function-body node that refers to the calling node's attribute."""
    return onnx_helper.make_attribute_ref(name, attr_type, ref_attr_name=ref_attr_name or name)


class OnnxLayer:
    """Abstract class that represents an ONNX subgraph in the quantizeml custom domain.

    A child defines its attributes in ``__init__`` and returns the node list of its subgraph
    (the body of its ONNX function) from ``build_subgraph(op_type)``; ``make_node()`` then
    creates the custom node, and ``make_function()`` its definition. Function bodies refer to
    the node attributes by name (``ref_attr_name``), so one function serves every node of an
    ``op_type``. The class attributes ``INPUT_NAMES``/``OUTPUT_NAMES`` are the function's
    formal inputs/outputs, activations first (``NUM_ACTIVATIONS`` of them), then the
    quantized parameters that ``quantize()`` returns, in order.

    Args:
        base_name (str): the operation type base name.
        opset_imports (list of OperatorSetIdProto, optional): the opsets of the function
            body. Defaults to None (the standard opset 17 and the custom domain).
        name (str, optional): the node name. Defaults to ''.
        **kwargs (dict, optional): the custom attributes. Each attribute type will be inferred
            by ``onnx.helper.make_attribute()``. Defaults to {}.
    """
    INPUT_NAMES = ("X",)
    OUTPUT_NAMES = ("Y",)
    NUM_ACTIVATIONS = 1
    WEIGHT_NAMES = ()

    def __init__(self, base_name, opset_imports=None, name="", **kwargs):
        self.base_name = check_str(base_name, type(self).__name__, "base_name")
        if not base_name:
            raise ValueError(f"{type(self).__name__} expected a non-empty base_name. "
                             f"Received: base_name={base_name!r}")
        self.name = check_str(name, type(self).__name__, "name")
        self.opset_imports = list(default_opset_imports() if opset_imports is None
                                  else opset_imports)
        self._attributes = {}
        for key, value in kwargs.items():
            self.set_attribute(key, value)
        self.weights = {}

    def set_attribute(self, key, value):
        """Sets (or replaces) a node attribute, its type inferred by
        ``onnx.helper.make_attribute``."""
        try:
            self._attributes[key] = onnx_helper.make_attribute(key, value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{type(self).__name__} expected attribute values that "
                            f"onnx.helper.make_attribute accepts ({e}). "
                            f"Received: {key}={value!r}") from None

    @property
    def attributes(self):
        """list: the node attributes (AttributeProto), sorted by name."""
        return [self._attributes[k] for k in sorted(self._attributes)]

    def attribute(self, key):
        """The python value of attribute ``key``."""
        return onnx_helper.get_attribute_value(self._attributes[key])

    @property
    def op_type(self):
        """str: the custom operation type: the base name, plus what changes the subgraph."""
        return self.base_name

    def set_weight(self, key, value):
        """Sets a float weight (as a float64 numpy array) that ``quantize()`` will use."""
        if key not in self.WEIGHT_NAMES:
            raise ValueError(f"{type(self).__name__} expected a weight in {self.WEIGHT_NAMES}. "
                             f"Received: key={key!r}")
        self.weights[key] = np.asarray(value, np.float64)

    def build_subgraph(self, op_type):
        """Returns the nodes of the function body (standard operators only).

        Args:
            op_type (str): the operation type being defined (``self.op_type``).

        Returns:
            list: a list of NodeProto.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_subgraph().")

    def quantize(self, inputs, output_range, per_tensor):
        """Computes the quantized parameters of the node.

        Args:
            inputs (list of QuantInfo): how the activation inputs are quantized.
            output_range (TensorRange): calibrated range of the float output (None when the
                layer does not quantize its output).
            per_tensor (bool): whether the output is quantized per-tensor.

        Returns:
            tuple: (list of np.ndarray, the parameters in ``INPUT_NAMES`` order after the
            activations; QuantInfo of the output, or None for a float output).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement quantize().")

    def make_function(self):
        """Returns the FunctionProto that defines ``self.op_type`` in the custom domain."""
        nodes = self.build_subgraph(self.op_type)
        return onnx_helper.make_function(DOMAIN, self.op_type, list(self.INPUT_NAMES),
                                         list(self.OUTPUT_NAMES), nodes, self.opset_imports,
                                         attributes=sorted(self._attributes))

    def make_node(self, inputs, outputs):
        """Creates the custom-domain node (its definition is ``make_function()``).

        Args:
            inputs (list of str): the node inputs, in ``INPUT_NAMES`` order.
            outputs (list of str): the node outputs, in ``OUTPUT_NAMES`` order.

        Returns:
            NodeProto: the node.
        """
        if len(inputs) != len(self.INPUT_NAMES) or len(outputs) != len(self.OUTPUT_NAMES):
            raise ValueError(f"{type(self).__name__} expected {len(self.INPUT_NAMES)} inputs "
                             f"{self.INPUT_NAMES} and {len(self.OUTPUT_NAMES)} outputs. "
                             f"Received: inputs={list(inputs)}, outputs={list(outputs)}")
        node = onnx_helper.make_node(self.op_type, list(inputs), list(outputs), name=self.name,
                                     domain=DOMAIN)
        node.attribute.extend(self.attributes)
        return node

    def __repr__(self):
        attrs = ", ".join(f"{k}={self.attribute(k)!r}" for k in sorted(self._attributes))
        return f"{type(self).__name__}(op_type={self.op_type!r}, name={self.name!r}, {attrs})"


def make_model(nodes, functions, inputs, outputs, initializers=(), name="quantized"):
    """Builds a ModelProto from custom-domain nodes and their functions.

    Args:
        nodes (list of NodeProto): the graph nodes, topologically sorted.
        functions (list of FunctionProto): the definitions of the custom operation types.
        inputs (list of ValueInfoProto): the graph inputs.
        outputs (list of ValueInfoProto): the graph outputs.
        initializers (list of TensorProto, optional): the graph initializers. Defaults to ().
        name (str, optional): the graph name. Defaults to "quantized".

    Returns:
        ModelProto: the model (standard opset 17 and the custom domain imported).
    """
    graph = onnx_helper.make_graph(list(nodes), name, list(inputs), list(outputs),
                                   initializer=list(initializers))
    model = onnx_helper.make_model(graph, opset_imports=default_opset_imports(),
                                   functions=list(functions), producer_name="quantizeml")
    model.ir_version = IR_VERSION
    return model
