"""Calibration of a float ONNX model: samples fed to onnxruntime, per-channel ranges of the
tensors to quantize."""
import itertools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as onnx_helper

from ..layers import TensorRange

DEFAULT_BATCH_SIZE = 32


def _dims(value_info):
    """Shape of a graph input: ints, or None for dynamic dimensions."""
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)


def random_samples(inputs, num_samples, seed=0):
    """Uniform random floats in [0, 1) for each input (static dimensions but the batch).

    Args:
        inputs (list of ValueInfoProto): the model inputs.
        num_samples (int): number of samples.
        seed (int, optional): the random seed. Defaults to 0.

    Returns:
        list: one float32 array of shape ``(num_samples, ...)`` per input.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for vi in inputs:
        dims = _dims(vi)
        if not dims or any(d is None for d in dims[1:]):
            raise ValueError("quantize expected samples for a model input with dynamic "
                             f"dimensions. Received: input {vi.name!r} of shape {dims}")
        arrays.append(rng.uniform(0.0, 1.0, size=(num_samples,) + dims[1:]).astype(np.float32))
    return arrays


def _check_batch(inputs, batch):
    """A list of float32 arrays, one per input, checked against the input shapes."""
    if isinstance(batch, dict):
        missing = [vi.name for vi in inputs if vi.name not in batch]
        if missing:
            raise ValueError(f"Calibration samples expected a value for inputs {missing}. "
                             f"Received: keys {sorted(batch)}")
        batch = [batch[vi.name] for vi in inputs]
    elif isinstance(batch, (list, tuple)) and len(inputs) == 1 and len(batch) == 2 and \
            np.ndim(batch[0]) >= 1:
        batch = [batch[0]]  # (x, y) pairs: keep x
    elif not isinstance(batch, (list, tuple)):
        batch = [batch]
    if len(batch) != len(inputs):
        raise ValueError(f"Calibration samples expected {len(inputs)} input(s). "
                         f"Received: {len(batch)}")
    arrays = []
    for vi, x in zip(inputs, batch):
        x = np.asarray(x)
        dims = _dims(vi)
        if x.dtype.kind not in "fiub":
            raise ValueError("Calibration samples expected numeric values. "
                             f"Received: dtype={x.dtype} for input {vi.name!r}")
        if x.ndim == len(dims) - 1:
            x = x[None]
        if x.ndim != len(dims) or any(d is not None and d != s
                                      for d, s in zip(dims[1:], x.shape[1:])):
            raise ValueError(f"Calibration samples expected the shape {dims} of input "
                             f"{vi.name!r} (None: any). Received: shape={x.shape}")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("Calibration samples expected finite values. Received: "
                             f"{int(np.sum(~np.isfinite(x)))} NaN/Inf values")
        arrays.append(x)
    return arrays


def iterate_batches(inputs, samples=None, num_samples=1024, batch_size=None):
    """Yields validated batches: lists of float32 arrays, one per model input.

    Args:
        inputs (list of ValueInfoProto): the model inputs.
        samples (np.ndarray, list, dict or iterable, optional): an array (one input), a list or
            dict (input name -> array) of arrays of samples, or an iterable of batches (a
            generator, a tf.data.Dataset) each an array, a list, an (x, y) pair or a dict.
            Random samples in [0, 1) when None. Defaults to None.
        num_samples (int, optional): number of samples to use (or to generate).
            Defaults to 1024.
        batch_size (int, optional): batch size (batches of iterables larger than it are
            split). Defaults to 32. A model with a fixed batch dimension always gets batches of
            that size (the last one filled by repeating its samples).

    Raises:
        ValueError: empty samples, NaN/Inf, shapes that do not match the model inputs.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError("quantize expected a positive int for num_samples. "
                         f"Received: num_samples={num_samples!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError("quantize expected a positive int or None for batch_size. "
                         f"Received: batch_size={batch_size!r}")
    fixed = {_dims(vi)[0] for vi in inputs if _dims(vi)} - {None}
    if len(fixed) > 1:
        raise ValueError("quantize expected model inputs with the same batch dimension. "
                         f"Received: batch dimensions {sorted(fixed)}")
    fixed = fixed.pop() if fixed else None
    if fixed is not None:
        batch_size = fixed
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if samples is None:
        samples = random_samples(inputs, num_samples)
    if isinstance(samples, dict) or isinstance(samples, np.ndarray) or \
            isinstance(samples, (list, tuple)) and all(isinstance(s, np.ndarray)
                                                       for s in samples):
        batches = [_check_batch(inputs, samples)]
    else:
        batches = (_check_batch(inputs, batch)
                   for batch in itertools.islice(iter(samples), num_samples))
    seen = 0
    for arrays in batches:
        count = min(num_samples - seen, min(len(a) for a in arrays))
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            chunk = [a[start:stop] for a in arrays]
            if fixed is not None and stop - start < fixed:
                # Fill a fixed batch by repeating its samples (ranges are unchanged).
                chunk = [c[np.arange(fixed) % len(c)] for c in chunk]
            yield chunk
        seen += count
        if seen >= num_samples:
            break
    if seen == 0:
        raise ValueError("Calibration samples expected at least one sample. Received: 0")


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
