"""Checks shared by the transform tests (available through the ``checks`` fixture)."""
import numpy as np
import pytest
import tf_keras as keras


class TransformChecks:
    """Output equivalence, no mutation and no sharing between a source and a new model."""

    @staticmethod
    def inputs(model, batch=3, seed=1):
        rng = np.random.default_rng(seed)
        return [rng.normal(size=(batch, *t.shape[1:])).astype(np.float32)
                for t in model.inputs]

    @staticmethod
    def outputs(model, x):
        y = model(x if len(x) > 1 else x[0], training=False)
        return [np.asarray(v) for v in (y if isinstance(y, (list, tuple)) else [y])]

    def equivalent(self, original, new, rtol=1e-5, atol=1e-5, x=None):
        """Same outputs, with the same input and output layout.

        The tolerance is ``rtol`` relative to each value plus ``atol`` relative to the output
        range (``atol * max(1, max|y|)``), so that float32 cancellations in large outputs pass.
        """
        assert len(new.inputs) == len(original.inputs)
        assert [t.shape.as_list() for t in new.outputs] == \
            [t.shape.as_list() for t in original.outputs]
        x = self.inputs(original) if x is None else x
        for a, b in zip(self.outputs(original, x), self.outputs(new, x)):
            np.testing.assert_allclose(b, a, rtol=rtol,
                                       atol=atol * max(1.0, float(np.max(np.abs(a), initial=0))))

    @staticmethod
    def snapshot(model):
        return [w.copy() for w in model.get_weights()]

    def unchanged(self, model, snapshot, new=None):
        """The source model's weights are untouched and no layer is shared with ``new``."""
        after = model.get_weights()
        assert len(after) == len(snapshot)
        for a, b in zip(after, snapshot):
            np.testing.assert_array_equal(a, b)
        if new is not None and new is not model:
            assert not {id(layer) for layer in new.layers} & {id(layer) for layer in model.layers}

    @staticmethod
    def types(model):
        return [type(layer) for layer in model.layers]

    @staticmethod
    def count(model, cls):
        return sum(type(layer) is cls for layer in model.layers)

    @staticmethod
    def randomize_batchnorms(model, seed=0, positive=True):
        """Random BN statistics, so that folding is exercised."""
        rng = np.random.default_rng(seed)
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                TransformChecks.randomize_batchnorms(layer, seed + 1, positive)
            if isinstance(layer, keras.layers.BatchNormalization):
                weights = []
                for w in layer.weights:
                    name = w.name.split("/")[-1]
                    if name.startswith("gamma"):
                        v = rng.uniform(0.5, 1.5, w.shape)
                        v = v if positive else v * rng.choice([-1, 1], w.shape)
                    elif name.startswith("moving_variance"):
                        v = rng.uniform(0.5, 1.5, w.shape)
                    else:
                        v = rng.normal(0, 0.3, w.shape)
                    weights.append(v.astype(np.float32))
                layer.set_weights(weights)
        return model


@pytest.fixture
def checks():
    return TransformChecks()
