"""quantize(): a float ONNX model in, a calibrated quantized ONNX model out."""
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as onnx_helper

from ...models.quantization_params import QuantizationParams, get_quantization_params
from ..layers import Dequantizer, InputQuantizer
from ..layers.base_layer import make_model
from .calibration import calibrate, iterate_batches
from .graph import OnnxGraph, prepare
from .patterns import match_patterns

_EIGHT_BITS = ("activation_bits", "weight_bits", "output_bits", "input_weight_bits")


def check_qparams(qparams):
    """The QuantizationParams to use (those of the enclosing ``quantization`` context, else the
    defaults, when None); only 8-bit weights and activations with 32-bit buffers are supported
    for ONNX models.

    Raises:
        TypeError: qparams is not a QuantizationParams.
        ValueError: a bitwidth other than 8 (32 for buffer_bits).
    """
    if qparams is None:
        qparams = get_quantization_params()
    if not isinstance(qparams, QuantizationParams):
        raise TypeError("quantize expected a QuantizationParams for qparams. "
                        f"Received: qparams of type {type(qparams).__name__}")
    wrong = [f"{name}={getattr(qparams, name)}" for name in _EIGHT_BITS
             if getattr(qparams, name) != 8]
    if qparams.buffer_bits != 32:
        wrong.append(f"buffer_bits={qparams.buffer_bits}")
    if wrong:
        raise ValueError("quantize expected 8-bit weights and activations (and buffer_bits=32) "
                         f"for ONNX models. Received: {', '.join(wrong)}")
    return qparams


def _check_model(model_proto):
    if not isinstance(model_proto, onnx.ModelProto):
        raise TypeError("quantize expected an onnx.ModelProto. "
                        f"Received: model of type {type(model_proto).__name__}")
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as e:
        raise ValueError(f"quantize expected a valid ONNX model; onnx.checker reported: {e}") \
            from e
    graph = model_proto.graph
    init_names = {t.name for t in graph.initializer}
    not_float = [f"{vi.name} ({TensorProto.DataType.Name(vi.type.tensor_type.elem_type)})"
                 for vi in list(graph.input) + list(graph.output)
                 if vi.name not in init_names and
                 vi.type.tensor_type.elem_type != TensorProto.FLOAT]
    if not_float:
        raise ValueError("quantize expected float32 model inputs and outputs. "
                         f"Received: {', '.join(not_float)}")


_LAYOUT_OPS = ("Transpose", "Reshape")


def _input_layout_nodes(graph):
    """The Transpose/Reshape nodes that read a model input (and constants) only: they stay
    float, before the InputQuantizer placed on their output (e.g. the NHWC to NCHW transpose
    that tf2onnx puts after an image input)."""
    inputs = {vi.name for vi in graph.inputs}
    return [node for node in graph.nodes
            if node.op_type in _LAYOUT_OPS and node.domain in ("", "ai.onnx") and
            node.input[0] in inputs and len([o for o in node.output if o]) == 1 and
            not graph.is_output(node.output[0]) and
            all(graph.get_initializer(name) is not None for name in node.input[1:] if name)]


def _sorted_blocks(blocks, inputs):
    """Blocks in an order where each one comes after the producers of its inputs."""
    available, ordered, pending = set(inputs), [], list(blocks)
    while pending:
        ready = [b for b in pending if all(name in available for name in b.inputs)]
        if not ready:
            missing = sorted({name for b in pending for name in b.inputs} - available)
            raise ValueError("quantize expected every quantized op sequence to read quantized "
                             f"tensors. Received: tensors {missing} produced by no sequence")
        for block in ready:
            ordered.append(block)
            available.add(block.output)
            pending.remove(block)
    return ordered


def _unique(name, taken):
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


class _Builder:
    """Collects the nodes, initializers and functions of the quantized graph."""

    def __init__(self, taken):
        self.nodes, self.initializers, self.functions = [], [], {}
        self.taken = set(taken)

    def add(self, layer, inputs, params, output):
        layer.name = _unique(layer.name or layer.op_type, self.taken)
        names = []
        for formal, value in zip(layer.INPUT_NAMES[len(inputs):], params):
            name = _unique(f"{layer.name}/{formal}", self.taken)
            self.initializers.append(numpy_helper.from_array(value, name))
            names.append(name)
        self.nodes.append(layer.make_node(list(inputs) + names, [output]))
        function = layer.make_function()
        known = self.functions.setdefault(layer.op_type, function)
        if known.SerializeToString() != function.SerializeToString():
            raise ValueError(f"quantize expected one definition per op type. Received: two "
                             f"different definitions of {layer.op_type!r}")


def quantize(model_proto, qparams=None, samples=None, num_samples=1024, batch_size=None,
             epochs=1):
    """Quantizes a float ONNX model to a quantized ONNX model of ``com.quantizeml`` nodes.

    BatchNormalizations are folded into the Conv/Gemm before them, the op sequences are mapped
    to OnnxLayers by the patterns (the defaults and those of ``custom_pattern_scope``), the
    float model is calibrated with onnxruntime on the samples, then every layer quantizes its
    weights (8 bits, per output channel) and its output (8 bits, per channel unless
    ``qparams.per_tensor_activations``). Each model input gets an InputQuantizer (placed after
    the Transpose/Reshape that directly follows an input, which stays float: the NHWC to NCHW
    transpose of converted TF models) and each output a Dequantizer, so the quantized model
    keeps the float model's input and output names and types.

    Args:
        model_proto (ModelProto): the float model (Conv, Relu, MaxPool, GlobalAveragePool,
            Gemm/MatMul, Add, Flatten/Reshape, BatchNormalization after a Conv/Gemm).
        qparams (QuantizationParams, optional): global quantization parameters: only 8-bit
            weights and activations; ``per_tensor_activations`` is honoured. Defaults to None
            (those of the enclosing ``quantization`` context, else ``QuantizationParams()``).
        samples (np.ndarray, list, dict or iterable, optional): calibration samples (see
            ``calibration.iterate_batches``). Random samples in [0, 1) when None.
            Defaults to None.
        num_samples (int, optional): number of samples to use or to generate. Defaults to 1024.
        batch_size (int, optional): the batch size. Defaults to None.
        epochs (int, optional): the number of calibration epochs, must be 1. Defaults to 1.

    Returns:
        ModelProto: the quantized model.

    Raises:
        TypeError: model_proto is not a ModelProto, or qparams not a QuantizationParams.
        ValueError: the model fails ``onnx.checker`` (its message is given), qparams asks for
            other bitwidths than 8, epochs != 1, or some nodes are not supported (all of them
            listed, by name and op type, in one error).
    """
    _check_model(model_proto)
    qparams = check_qparams(qparams)
    if epochs != 1:
        raise ValueError(f"quantize expected epochs=1 for ONNX models. Received: epochs={epochs}")
    per_tensor = qparams.per_tensor_activations
    graph = OnnxGraph(prepare(model_proto))
    layout = _input_layout_nodes(graph)
    blocks, problems = match_patterns(graph, skip=layout)
    if problems:
        raise ValueError(f"quantize found {len(problems)} unsupported ONNX node(s) (register "
                         "a pattern with custom_pattern_scope to support them):\n  " +
                         "\n  ".join(problems))
    input_names = [vi.name for vi in graph.inputs]
    layout_outputs = [n.output[0] for n in layout]
    # Quantization entry points: the layout outputs and the inputs read by quantized blocks.
    layout_ids = {id(n) for n in layout}
    entries = [name for name in input_names
               if any(id(c) not in layout_ids for c in graph.consumers(name))]
    entries += layout_outputs
    blocks = _sorted_blocks(blocks, entries)
    unquantized = [vi.name for vi in graph.outputs
                   if vi.name not in {b.output for b in blocks}]
    if unquantized:
        raise ValueError("quantize expected model outputs produced by quantized op sequences. "
                         f"Received: outputs {unquantized}")

    batches = iterate_batches(graph.inputs, samples, num_samples, batch_size)
    ranges = calibrate(graph.model, entries + [b.output for b in blocks], batches)

    taken = {name for n in graph.nodes for name in list(n.input) + list(n.output)}
    taken |= set(graph.initializers) | set(input_names)
    builder = _Builder(taken)
    for node in layout:  # float layout ops on the inputs, before the InputQuantizers
        builder.nodes.append(node)
        builder.initializers.extend(numpy_helper.from_array(graph.initializers[name], name)
                                    for name in node.input[1:] if name)
    infos, qnames = {}, {}
    output_names = {vi.name for vi in graph.outputs}
    input_infos = {vi.name: vi for vi in graph.inputs}
    for name in entries:
        rng = ranges[name]
        vi = input_infos.get(name) or onnx_helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [None] + list(rng.shape))
        layer = InputQuantizer(vi, input_signed=bool(rng.min < 0), name=f"{name}/quantizer")
        params, infos[name] = layer.quantize([], rng, per_tensor)
        qnames[name] = _unique(f"{name}/quantized", builder.taken)
        builder.add(layer, [name], params, qnames[name])
    for block in blocks:
        params, infos[block.output] = block.layer.quantize(
            [infos[name] for name in block.inputs], ranges[block.output], per_tensor)
        qnames[block.output] = _unique(f"{block.output}/quantized", builder.taken) \
            if block.output in output_names else block.output
        builder.add(block.layer, [qnames[name] for name in block.inputs], params,
                    qnames[block.output])
    outputs = []
    for vi in graph.outputs:
        layer = Dequantizer(name=f"{vi.name}/dequantizer")
        params, _ = layer.quantize([infos[vi.name]], None, per_tensor)
        builder.add(layer, [qnames[vi.name]], params, vi.name)
        out = onnx.ValueInfoProto()
        out.CopyFrom(vi)
        if not out.type.tensor_type.HasField("shape"):
            batch_dim = graph.inputs[0].type.tensor_type.shape.dim[:1] if graph.inputs else []
            dims = [d.dim_param or d.dim_value or None for d in batch_dim] + \
                list(infos[vi.name].shape)
            out = onnx_helper.make_tensor_value_info(vi.name, TensorProto.FLOAT, dims)
        outputs.append(out)

    model = make_model(builder.nodes, builder.functions.values(), graph.inputs, outputs,
                       builder.initializers, name=f"{model_proto.graph.name or 'model'}_quantized")
    onnx.checker.check_model(model, full_check=True)
    return model
