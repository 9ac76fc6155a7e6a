"""Calibration samples: numpy arrays, dicts, tf.data Datasets or generators, validated and
batched.

The functions work on a neutral description of the model inputs, a list of :class:`InputSpec`
(built from a Keras model by :func:`input_specs`, from ONNX graph inputs by
``onnx_support.quantization.calibration.input_specs``), so that Keras and ONNX models take the
same samples.
"""
import collections
import itertools
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from ..layers.registry import twin_spec

DEFAULT_BATCH_SIZE = 32

InputSpec = collections.namedtuple("InputSpec", ["name", "shape", "raw_pixels", "batch"],
                                   defaults=(False, None))
InputSpec.__doc__ = """A model input, as the calibration samples see it.

Args:
    name (str): the input name (the key of dict samples).
    shape (tuple or None): the shape without the batch dimension, None for dynamic dimensions;
        None when the rank is unknown.
    raw_pixels (bool, optional): random samples are integers in [0, 255] (the input feeds a
        layer that takes raw pixels) instead of floats in [0, 1). Defaults to False.
    batch (int, optional): a fixed batch dimension: batches are cut to it and the last one is
        filled by repeating its samples. Defaults to None (any).
"""


def input_specs(model):
    """The InputSpecs of a Keras model: random samples of its first input are raw pixels when
    its first layer (``model.layers[1]``) takes them (e.g. Rescaling).

    Args:
        model (keras.Model): the model.

    Returns:
        list of InputSpec: one per model input.
    """
    first = model.layers[1:2]
    spec = twin_spec(first[0]) if first else None
    raw = spec is not None and spec.float_inputs
    return [InputSpec(name, tuple(t.shape[1:]), raw_pixels=raw and i == 0)
            for i, (name, t) in enumerate(zip(model.input_names, model.inputs))]


def _as_specs(inputs):
    return list(inputs) if isinstance(inputs, (list, tuple)) else input_specs(inputs)


def random_samples(inputs, num_samples, seed=0):
    """Random calibration samples, drawn input after input from one generator: uniform
    integers in [0, 255] for an input that takes raw pixels, else uniform floats in [0, 1).

    Args:
        inputs (list of InputSpec or keras.Model): the model inputs.
        num_samples (int): number of samples.
        seed (int, optional): the random seed. Defaults to 0.

    Returns:
        list: one float32 array of shape ``(num_samples,) + spec.shape`` per input.

    Raises:
        ValueError: an input has dynamic dimensions (samples must be given).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in _as_specs(inputs):
        if spec.shape is None or any(d is None for d in spec.shape):
            raise ValueError("Random calibration samples expected inputs without dynamic "
                             "dimensions (pass samples). Received: input "
                             f"{spec.name!r} of shape {spec.shape} (batch excluded)")
        size = (num_samples,) + spec.shape
        x = rng.integers(0, 256, size=size) if spec.raw_pixels else rng.uniform(0.0, 1.0, size)
        arrays.append(x.astype(np.float32))
    return arrays


def _fits(spec, shape):
    return spec.shape is not None and len(shape) == len(spec.shape) and all(
        d is None or d == s for d, s in zip(spec.shape, shape))


def _unbatched(spec, x):
    """x with a batch dimension added when it is one sample of the input."""
    return x[None] if _fits(spec, np.shape(x)) else x


def _validate(specs, arrays):
    """Checks a list of arrays (one per input) against the inputs: float32 arrays."""
    if len(arrays) != len(specs):
        raise ValueError(f"Calibration samples expected {len(specs)} input(s). "
                         f"Received: {len(arrays)}")
    checked = []
    for spec, x in zip(specs, arrays):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise ValueError(f"Calibration samples for input {spec.name!r} expected numeric "
                             f"values. Received: dtype={x.dtype}")
        if x.ndim < 1 or not _fits(spec, x.shape[1:]):
            shape = "(unknown rank)" if spec.shape is None else f"(batch,) + {spec.shape}"
            raise ValueError(f"Calibration samples for input {spec.name!r} expected shape "
                             f"{shape}. Received: shape={x.shape}")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"Calibration samples for input {spec.name!r} expected finite "
                             f"values. Received: samples with {int(np.sum(~np.isfinite(x)))} "
                             "NaN/Inf values")
        checked.append(x)
    return checked


def _by_name(specs, samples):
    missing = [spec.name for spec in specs if spec.name not in samples]
    if missing:
        raise ValueError(f"Calibration samples expected a value for inputs {missing}. "
                         f"Received: keys {sorted(samples)}")
    return [samples[spec.name] for spec in specs]


def _is_pair(specs, batch):
    """An (x, y) pair for a one-input model: x is kept."""
    return len(specs) == 1 and len(batch) == 2 and np.ndim(batch[0]) >= 1


def check_batch(inputs, batch):
    """Validates one batch: matching shapes, finite numeric values.

    Args:
        inputs (list of InputSpec or keras.Model): the model inputs.
        batch (np.ndarray, list, tuple or dict): an array (one input), a list or tuple of arrays
            (one per input), an (x, y) pair (one input) or a dict (input name -> array); an
            array that is one sample of its input gets a batch dimension.

    Returns:
        list: one float32 array per input.

    Raises:
        ValueError: missing inputs, NaN/Inf, shapes that do not match the inputs.
    """
    specs = _as_specs(inputs)
    if isinstance(batch, dict):
        batch = _by_name(specs, batch)
    elif isinstance(batch, (list, tuple)) and _is_pair(specs, batch):
        batch = [batch[0]]
    elif not isinstance(batch, (list, tuple)):
        batch = [batch]
    if len(batch) == len(specs):
        batch = [_unbatched(spec, np.asarray(x)) for spec, x in zip(specs, batch)]
    return _validate(specs, batch)


def _arrays(specs, samples):
    """The arrays (one per input) of array samples, None for an iterable of batches.

    Array samples: an array (one input), a dict (input name -> array), an (x, y) tuple of arrays
    (one input), a list or tuple of arrays, a list of one array-like per input.
    """
    if isinstance(samples, dict):
        return _by_name(specs, samples)
    if isinstance(samples, np.ndarray):
        return [samples]
    if not isinstance(samples, (list, tuple)):
        return None
    if all(isinstance(s, np.ndarray) for s in samples):
        if isinstance(samples, tuple) and _is_pair(specs, samples):
            return [samples[0]]
        if isinstance(samples, list) or len(samples) == len(specs):
            return list(samples)
        return None  # a tuple of batches
    if isinstance(samples, list) and len(samples) == len(specs) and \
            not any(isinstance(s, (dict, list, tuple)) for s in samples):
        return list(samples)
    return None


def _is_one_shot(specs, samples):
    """Samples that may be iterated once: iterables of batches but datasets, lists, tuples."""
    return samples is not None and not isinstance(samples, (tf.data.Dataset, list, tuple)) \
        and _arrays(specs, samples) is None


def _chunks(arrays, batch_size, fixed):
    """Batches of batch_size samples; a fixed batch is filled by repeating its samples."""
    for start in range(0, len(arrays[0]), batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        if fixed is not None and len(chunk[0]) < fixed:
            # Fill a fixed batch by repeating its samples (ranges are unchanged).
            chunk = [c[np.arange(fixed) % len(c)] for c in chunk]
        yield chunk


def iterate_batches(inputs, samples=None, num_samples=1024, batch_size=None, epochs=1,
                    split_batches=False):
    """Yields validated batches (lists of float32 arrays, one per model input).

    Args:
        inputs (list of InputSpec or keras.Model): the model inputs.
        samples (np.ndarray, list, dict, tf.data.Dataset or iterable, optional): an array (one
            input), a list or dict (input name -> array) of arrays, an (x, y) tuple, or an
            iterable of batches (a tf.data.Dataset, batched or not, a generator) each an array,
            a list, an (x, y) pair or a dict. Random samples (see :func:`random_samples`) when
            None. Defaults to None.
        num_samples (int, optional): number of samples to use (or to generate).
            Defaults to 1024.
        batch_size (int, optional): batch size of arrays and unbatched datasets. Defaults to
            None (32). A fixed batch dimension of the inputs replaces it.
        epochs (int, optional): passes over the samples (1 for a generator). Defaults to 1.
        split_batches (bool, optional): cut the batches of iterables larger than batch_size.
            Defaults to False (always with a fixed batch dimension).

    Raises:
        ValueError: empty samples, NaN/Inf, shapes that do not match the model inputs.
    """
    specs = _as_specs(inputs)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples expected a positive int. Received: num_samples="
                         f"{num_samples!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs expected a positive int. Received: epochs={epochs!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size expected a positive int or None. Received: "
                         f"batch_size={batch_size!r}")
    fixed = {spec.batch for spec in specs} - {None}
    if len(fixed) > 1:
        raise ValueError("Calibration samples expected model inputs with the same batch "
                         f"dimension. Received: batch dimensions {sorted(fixed)}")
    fixed = fixed.pop() if fixed else None
    batch_size = fixed or batch_size or DEFAULT_BATCH_SIZE
    split_batches = split_batches or fixed is not None
    if samples is None:
        samples = random_samples(specs, num_samples)
    arrays = _arrays(specs, samples)
    if arrays is not None:
        if len(arrays) != len(specs):
            raise ValueError(f"Calibration samples expected {len(specs)} input(s). "
                             f"Received: {len(arrays)}")
        arrays = [_unbatched(spec, np.asarray(a)) for spec, a in zip(specs, arrays)]
        arrays = [a[:num_samples] for a in arrays]
        if any(a.ndim == 0 or len(a) == 0 for a in arrays):
            raise ValueError("Calibration samples expected at least one sample. Received: "
                             "an empty array")
        _validate(specs, [a[:1] for a in arrays])
        count = min(len(a) for a in arrays)
        arrays = [a[:count] for a in arrays]
        for _ in range(epochs):
            for chunk in _chunks(arrays, batch_size, fixed):
                yield _validate(specs, chunk)
        return
    is_dataset = isinstance(samples, tf.data.Dataset)
    for epoch in range(epochs):
        if is_dataset:
            dataset = samples
            spec = dataset.element_spec
            first = spec.get(specs[0].name) if isinstance(spec, dict) else \
                spec[0] if isinstance(spec, tuple) else spec
            if specs[0].shape is not None and getattr(first, "shape", None) is not None and \
                    first.shape.rank == len(specs[0].shape):
                dataset = dataset.batch(batch_size)
            iterator = iter(dataset)
        else:
            if epoch > 0 and _is_one_shot(specs, samples):
                raise ValueError("epochs expected 1 with generator samples (a generator can "
                                 f"be consumed once). Received: epochs={epochs}")
            iterator = iter(samples)
        seen = 0
        for batch in itertools.islice(iterator, num_samples):
            batch = check_batch(specs, batch)
            take = min(num_samples - seen, min(len(a) for a in batch))
            batch = [a[:take] for a in batch]
            if split_batches:
                yield from _chunks(batch, batch_size, fixed)
            else:
                yield batch
            seen += take
            if seen >= num_samples:
                break
        if seen == 0:
            raise ValueError("Calibration samples expected at least one sample. Received: an "
                             "empty dataset or generator")


class Batches:
    """Re-iterable validated batches, streamed: memory does not grow with the sample count.

    Each ``iter()`` is a new pass over the samples: arrays and tf.data Datasets are iterated
    again; a generator (or any one-shot iterator), which can be consumed only once, is spilled
    to ``.npy`` files in a temporary directory during the first pass and read back from disk on
    the next ones (the directory is removed when this object is garbage collected or on
    ``close()``).

    Args: as :func:`iterate_batches`.
    """

    def __init__(self, inputs, samples=None, num_samples=1024, batch_size=None, epochs=1):
        specs = _as_specs(inputs)
        self._args = (specs, samples, num_samples, batch_size, epochs)
        self._one_shot = _is_one_shot(specs, samples)
        self._spill = None  # directory, once a one-shot source is fully spilled
        self._count = None

    def __iter__(self):
        if not self._one_shot:
            return iterate_batches(*self._args)
        if self._spill is not None:
            return self._replay()
        return self._record()

    def _record(self):
        if self._count is not None:
            raise ValueError("Calibration samples expected a complete first pass over the "
                             "generator before a second one. Received: a pass interrupted")
        self._count = 0
        spill = tempfile.mkdtemp(prefix="quantizeml_batches_")
        try:
            for batch in iterate_batches(*self._args):
                for i, a in enumerate(batch):
                    np.save(os.path.join(spill, f"{self._count}_{i}.npy"), a)
                self._count += 1
                yield batch
        except BaseException:  # the generator is partly consumed: no other pass is possible
            shutil.rmtree(spill, ignore_errors=True)
            raise
        self._spill = spill
        self._inputs = len(batch)

    def _replay(self):
        for n in range(self._count):
            yield [np.load(os.path.join(self._spill, f"{n}_{i}.npy"))
                   for i in range(self._inputs)]

    def close(self):
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __del__(self):
        self.close()


def take(iterable, n):
    return list(itertools.islice(iterable, n))
