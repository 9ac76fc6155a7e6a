"""Calibration samples: numpy arrays, tf.data Datasets or generators, validated and batched."""
import itertools
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf


def _input_shapes(model):
    return [tuple(t.shape[1:]) for t in model.inputs]


def random_samples(model, num_samples, seed=0):
    """Random calibration samples for a model with one input: uniform integers in [0, 255]
    when the model starts with a Rescaling layer (it expects raw pixels), else uniform floats
    in [0, 1)."""
    shapes = _input_shapes(model)
    if len(shapes) != 1 or any(d is None for d in shapes[0]):
        raise ValueError("quantize/calibrate expected samples for a model with several inputs "
                         f"or dynamic input shapes. Received: input shapes {shapes}")
    rng = np.random.default_rng(seed)
    first = [layer for layer in model.layers[1:2]]
    if first and type(first[0]).__name__ in ("Rescaling", "QuantizedRescaling"):
        return rng.integers(0, 256, size=(num_samples,) + shapes[0]).astype(np.float32)
    return rng.uniform(0.0, 1.0, size=(num_samples,) + shapes[0]).astype(np.float32)


def _check_batch(model, batch):
    """Validates one batch: matching shapes, finite float values. Returns a list of arrays."""
    inputs = batch if isinstance(batch, (list, tuple)) else [batch]
    if isinstance(batch, tuple) and len(batch) == 2 and len(model.inputs) == 1:
        inputs = [batch[0]]  # (x, y) pairs: keep x
    shapes = _input_shapes(model)
    if len(inputs) != len(shapes):
        raise ValueError(f"Calibration samples expected {len(shapes)} input(s). "
                         f"Received: {len(inputs)}")
    arrays = []
    for x, shape in zip(inputs, shapes):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise ValueError("Calibration samples expected numeric values. "
                             f"Received: dtype={x.dtype}")
        if x.shape[1:] != tuple(d if d is not None else s
                                for d, s in zip(shape, x.shape[1:])) or x.ndim != len(shape) + 1:
            raise ValueError(f"Calibration samples expected shape (batch,) + {shape}. "
                             f"Received: shape={x.shape}")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("Calibration samples expected finite values. Received: samples "
                             f"with {int(np.sum(~np.isfinite(x)))} NaN/Inf values")
        arrays.append(x)
    return arrays


def iterate_batches(model, samples=None, num_samples=1024, batch_size=None, epochs=1):
    """Yields validated batches (lists of float32 arrays, one per model input).

    Args:
        model (keras.Model): the model whose inputs the samples feed.
        samples (np.ndarray, tf.data.Dataset or generator, optional): the samples; random ones
            when None.
        num_samples (int, optional): number of samples to use (or to generate).
        batch_size (int, optional): batch size for arrays and unbatched datasets (default 32).
        epochs (int, optional): passes over the samples.

    Raises:
        ValueError: empty samples, NaN/Inf, shapes that do not match the model inputs.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples expected a positive int. Received: num_samples="
                         f"{num_samples!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs expected a positive int. Received: epochs={epochs!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size expected a positive int or None. Received: "
                         f"batch_size={batch_size!r}")
    batch_size = batch_size or 32
    if samples is None:
        samples = random_samples(model, num_samples)
    if isinstance(samples, (np.ndarray, list)) and not isinstance(samples, tf.data.Dataset):
        arrays = samples if isinstance(samples, list) else [samples]
        arrays = [np.asarray(a)[:num_samples] for a in arrays]
        if any(len(a) == 0 for a in arrays):
            raise ValueError("Calibration samples expected at least one sample. Received: "
                             "an empty array")
        _check_batch(model, arrays if len(arrays) > 1 else arrays[0][:1])
        for _ in range(epochs):
            for start in range(0, len(arrays[0]), batch_size):
                batch = [a[start:start + batch_size] for a in arrays]
                yield _check_batch(model, batch if len(batch) > 1 else batch[0])
        return
    is_dataset = isinstance(samples, tf.data.Dataset)
    for epoch in range(epochs):
        if is_dataset:
            dataset = samples
            spec = dataset.element_spec
            first = spec[0] if isinstance(spec, tuple) else spec
            rank = len(model.inputs[0].shape)
            if getattr(first, "shape", None) is not None and first.shape.rank == rank - 1:
                dataset = dataset.batch(batch_size)
            iterator = iter(dataset)
        else:
            if epoch > 0:
                raise ValueError("epochs expected 1 with generator samples (a generator can "
                                 f"be consumed once). Received: epochs={epochs}")
            iterator = iter(samples)
        seen = 0
        for batch in iterator:
            if isinstance(batch, tuple) and len(batch) == 2 and len(model.inputs) == 1:
                batch = batch[0]
            batch = tf.nest.map_structure(lambda t: np.asarray(t), batch)
            arrays = _check_batch(model, batch)
            take = min(len(arrays[0]), num_samples - seen)
            yield [a[:take] for a in arrays]
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

    def __init__(self, model, samples=None, num_samples=1024, batch_size=None, epochs=1):
        self._args = (model, samples, num_samples, batch_size, epochs)
        self._one_shot = samples is not None and not isinstance(
            samples, (np.ndarray, list, tf.data.Dataset))
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
