"""Small float ONNX conv nets built with onnx.helper, for the ONNX quantization tests."""
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as onnx_helper

OPSET = 17


class GraphMaker:
    """Builds a float NCHW graph node by node; weights are random (seeded)."""

    def __init__(self, input_shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0
        self.input = onnx_helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                        ["N"] + list(input_shape))
        self.shapes = {"input": tuple(input_shape)}

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def _init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def _init_int(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def node(self, op_type, inputs, shape, **attrs):
        name = self._name(op_type.lower())
        self.nodes.append(onnx_helper.make_node(op_type, inputs, [name], name=name, **attrs))
        self.shapes[name] = shape
        return name

    def conv(self, x, filters, kernel=3, stride=1, pad=1, bn=True, group=1):
        c, h, w = self.shapes[x]
        fan_in = c // group * kernel * kernel
        weights = self.rng.normal(0, np.sqrt(2 / fan_in), (filters, c // group, kernel, kernel))
        name = self._name("conv")
        ins = [x, self._init(f"{name}_W", weights)]
        if not bn:
            ins.append(self._init(f"{name}_B", self.rng.normal(0, 0.1, filters)))
        out_hw = ((h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1)
        y = self.node("Conv", ins, (filters,) + out_hw, kernel_shape=[kernel, kernel],
                      strides=[stride, stride], pads=[pad] * 4, group=group)
        if bn:
            params = [self.rng.uniform(0.5, 1.5, filters), self.rng.normal(0, 0.2, filters),
                      self.rng.normal(0, 0.2, filters), self.rng.uniform(0.5, 2.0, filters)]
            names = [self._init(f"{name}_bn{i}", p) for i, p in enumerate(params)]
            y = self.node("BatchNormalization", [y] + names, self.shapes[y], epsilon=1e-3)
        return y

    def relu(self, x):
        return self.node("Relu", [x], self.shapes[x])

    def maxpool(self, x, size=2):
        c, h, w = self.shapes[x]
        return self.node("MaxPool", [x], (c, h // size, w // size), kernel_shape=[size, size],
                         strides=[size, size])

    def gap(self, x):
        return self.node("GlobalAveragePool", [x], (self.shapes[x][0], 1, 1))

    def add(self, a, b):
        return self.node("Add", [a, b], self.shapes[a])

    def flatten(self, x):
        return self.node("Flatten", [x], (int(np.prod(self.shapes[x])),), axis=1)

    def gemm(self, x, units, trans_b=True):
        (features,) = self.shapes[x]
        name = self._name("gemm")
        weights = self.rng.normal(0, np.sqrt(1 / features), (features, units))
        weights = weights.T if trans_b else weights
        return self.node("Gemm", [x, self._init(f"{name}_W", weights),
                                  self._init(f"{name}_B", self.rng.normal(0, 0.1, units))],
                         (units,), transB=int(trans_b))

    def matmul(self, x, units):
        (features,) = self.shapes[x]
        name = self._name("matmul")
        weights = self.rng.normal(0, np.sqrt(1 / features), (features, units))
        y = self.node("MatMul", [x, self._init(f"{name}_W", weights)], (units,))
        return self.node("Add", [y, self._init(f"{name}_B", self.rng.normal(0, 0.1, units))],
                         (units,))

    def model(self, *outputs):
        outs = [onnx_helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                                   ["N"] + list(self.shapes[o]))
                for o in outputs]
        graph = onnx_helper.make_graph(self.nodes, "float_net", [self.input], outs,
                                       initializer=self.inits)
        model = onnx_helper.make_model(graph, opset_imports=[onnx_helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def conv_net(input_shape=(3, 16, 16), seed=0):
    """Conv/BN/Relu/MaxPool blocks, a residual Add, a depthwise conv, GAP and a Gemm head."""
    g = GraphMaker(input_shape, seed)
    x = g.maxpool(g.relu(g.conv("input", 8)))
    skip = x
    x = g.relu(g.conv(x, 8))
    x = g.conv(x, 8)
    x = g.relu(g.add(x, skip))
    x = g.relu(g.conv(x, 8, group=8))
    x = g.gap(g.relu(g.conv(x, 16, bn=False)))
    return g.model(g.gemm(g.flatten(x), 10))


def flatten_net(input_shape=(1, 12, 12), seed=1):
    """Conv + MaxPool + Relu (pool before relu), a strided conv, then Flatten + MatMul head."""
    g = GraphMaker(input_shape, seed)
    x = g.relu(g.maxpool(g.conv("input", 6)))
    x = g.relu(g.conv(x, 8, stride=2, bn=False))
    x = g.relu(g.gemm(g.flatten(x), 16, trans_b=False))
    return g.model(g.matmul(x, 5))


def run(model, x):
    """Runs a model with onnxruntime on input ``x``; returns the first output."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
