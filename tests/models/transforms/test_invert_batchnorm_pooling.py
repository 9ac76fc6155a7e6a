"""invert_batchnorm_pooling: pooling -> BN becomes BN -> pooling."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import invert_batchnorm_pooling

L = keras.layers
BN = L.BatchNormalization
TOL = dict(rtol=1e-5, atol=1e-5)

POOLS = {
    "maxpool": lambda: L.MaxPooling2D(2),
    "maxpool_same": lambda: L.MaxPooling2D(3, strides=2, padding="same"),
    "avgpool": lambda: L.AveragePooling2D(2),
    "global_avg": lambda: L.GlobalAveragePooling2D(),
    "global_avg_keepdims": lambda: L.GlobalAveragePooling2D(keepdims=True),
    "global_max": lambda: L.GlobalMaxPooling2D(),
}


def _build(kind, pool):
    if kind == "sequential":
        return keras.Sequential([keras.Input((5, 5, 3)), L.Conv2D(4, 1), pool, BN(), L.ReLU()])
    inputs = keras.Input((5, 5, 3))
    x = BN()(pool(L.Conv2D(4, 1)(inputs)))
    return keras.Model(inputs, L.ReLU()(x))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_invert(checks, pool, kind):
    model = checks.randomize_batchnorms(_build(kind, POOLS[pool]()))
    before = checks.snapshot(model)
    new = invert_batchnorm_pooling(model)
    types = checks.types(new)
    assert types.index(BN) < types.index(type(model.get_layer(index=-3)))
    assert types.index(BN) == types.index(L.Conv2D) + 1
    checks.equivalent(model, new, **TOL)
    checks.unchanged(model, before, new)


def test_invert_multi_branch_keeps_order(checks):
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(3, 1, name="conv")(inputs)
    a = BN(name="bn_a")(L.MaxPooling2D(name="pool_a")(x))
    b = L.AveragePooling2D(name="pool_b")(x)  # consumed twice: stays
    c = L.Concatenate(name="concat")([L.ReLU()(b), a, BN(name="bn_b")(b)])
    model = checks.randomize_batchnorms(keras.Model(inputs, c))
    new = invert_batchnorm_pooling(model)
    assert new.get_layer("pool_a").input.node.layer.name == "bn_a"
    assert new.get_layer("bn_b").input.node.layer.name == "pool_b"
    assert [t.node.layer.name for t in new.get_layer("concat").input] == \
        ["re_lu", "pool_a", "bn_b"]
    checks.equivalent(model, new, **TOL)


@pytest.mark.parametrize("pool", ["maxpool", "global_avg"])
def test_non_positive_gamma_raises(checks, pool):
    model = _build("functional", POOLS[pool]())
    bn = model.layers[3]
    bn.gamma.assign(np.array([1.0, -0.5, 2.0, 1.0], np.float32))
    with pytest.raises(RuntimeError, match="strictly positive"):
        invert_batchnorm_pooling(model)
    bn.gamma.assign(np.array([1.0, 0.0, 2.0, 1.0], np.float32))
    with pytest.raises(RuntimeError, match="strictly positive"):
        invert_batchnorm_pooling(model)


def test_nothing_to_invert_returns_same_model():
    inputs = keras.Input((4, 4, 2))
    x = L.MaxPooling2D()(BN()(L.Conv2D(3, 1)(inputs)))  # already BN -> pool
    model = keras.Model(inputs, x)
    assert invert_batchnorm_pooling(model) is model
    model = keras.Sequential([keras.Input((4, 4, 2)), L.Flatten(), BN()])
    assert invert_batchnorm_pooling(model) is model
