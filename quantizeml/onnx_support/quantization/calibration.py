"""Calibration of a float ONNX model: samples fed to onnxruntime, per-channel ranges of the
tensors to quantize."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as onnx_helper

from ...models import samples as samples_lib
from ...models.samples import InputSpec
from ..layers import TensorRange


def input_specs(inputs):
    """The InputSpecs of ONNX graph inputs: shapes of ints or None (dynamic dimensions), the
    first dimension being the batch one (a fixed batch when an int).

    Args:
        inputs (list of ValueInfoProto): the model inputs.

    Returns:
        list of InputSpec: one per input (None shape when the rank is 0 or unknown).
    """
    specs = []
    for vi in inputs:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None
                     for d in vi.type.tensor_type.shape.dim)
        specs.append(InputSpec(vi.name, dims[1:] if dims else None,
                               batch=dims[0] if dims else None))
    return specs


def iterate_batches(inputs, samples=None, num_samples=1024, batch_size=None):
    """Yields validated batches: lists of float32 arrays, one per model input.

    ``samples.iterate_batches`` on the ONNX inputs; batches of iterables larger than
    batch_size are split, and a model with a fixed batch dimension always gets batches of that
    size (the last one filled by repeating its samples).

    Args:
        inputs (list of ValueInfoProto): the model inputs.
        samples (np.ndarray, list, dict or iterable, optional): see
            ``quantizeml.models.samples.iterate_batches``. Random samples in [0, 1) when None.
            Defaults to None.
        num_samples (int, optional): number of samples to use (or to generate).
            Defaults to 1024.
        batch_size (int, optional): batch size. Defaults to None (32).

    Raises:
        ValueError: empty samples, NaN/Inf, shapes that do not match the model inputs.
    """
    return samples_lib.iterate_batches(input_specs(inputs), samples, num_samples, batch_size,
                                       split_batches=True)


class _RangeAccumulator:
    def __init__(self):
        self.max_abs, self.min, self.shape = None, np.inf, None

    def update(self, x):
        x = np.asarray(x, np.float64)
        axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim >= 2 else None
        max_abs = np.max(np.abs(x), axis=axes) if x.size else np.zeros(())
        self.max_abs = max_abs if self.max_abs is None else np.maximum(self.max_abs, max_abs)
        self.min = min(self.min, float(np.min(x))) if x.size else self.min
        self.shape = tuple(x.shape[1:])

    def result(self):
        return TensorRange(self.max_abs, self.min if np.isfinite(self.min) else 0.0, self.shape)


def session(model):
    """An onnxruntime CPU InferenceSession of ``model`` (warnings silenced)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def calibrate(model, tensor_names, batches):
    """Runs the float model on the batches and collects the range of each tensor.

    Args:
        model (ModelProto): the float model.
        tensor_names (list of str): the float tensors to observe (graph inputs included).
        batches (iterable): lists of arrays, one per graph input (``iterate_batches``).

    Returns:
        dict: tensor name -> TensorRange.
    """
    init_names = {t.name for t in model.graph.initializer}
    input_names = [vi.name for vi in model.graph.input if vi.name not in init_names]
    fetched = [name for name in tensor_names if name not in input_names]
    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    outputs = {vi.name for vi in observed.graph.output}
    observed.graph.output.extend(onnx_helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                    None)
                                 for name in fetched if name not in outputs)
    sess = session(observed)
    accumulators = {name: _RangeAccumulator() for name in tensor_names}
    for arrays in batches:
        feeds = dict(zip(input_names, arrays))
        for name, value in zip(fetched, sess.run(fetched, feeds)):
            accumulators[name].update(value)
        for name, value in feeds.items():
            if name in accumulators:
                accumulators[name].update(value)
    return {name: acc.result() for name, acc in accumulators.items()}
