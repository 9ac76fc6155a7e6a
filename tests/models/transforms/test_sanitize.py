"""sanitize: the transforms chained; outputs, node order and input order kept."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models.transforms import sanitize

L = keras.layers
BN = L.BatchNormalization
TOL = dict(rtol=1e-4, atol=1e-5)

UNWANTED = (BN, L.ZeroPadding2D, L.Lambda)


def _unwanted(model):
    return [layer.name for layer in model.layers
            if type(layer) in UNWANTED or type(layer).__name__ == "TFOpLambda"
            or (type(layer) is L.Activation and layer.get_config()["activation"] in
                ("relu", "relu6"))
            or isinstance(layer, keras.Model)]


def _everything():
    """A nested, multi-input, multi-output model with one pattern of each transform."""
    inner_in = keras.Input((8, 8, 3))
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(inner_in)
    x = L.Conv2D(8, 3, strides=2, use_bias=False, name="conv")(x)
    x = BN(name="bn")(x)
    x = L.Activation("relu6", name="act")(x)
    inner = keras.Model(inner_in, x, name="backbone")
    a = keras.Input((8, 8, 3), name="image")
    b = keras.Input((8,), name="extra")
    f = inner(a)
    f = L.Conv2D(8, 1, name="pw")(f)
    f = L.ReLU(name="relu")(f)
    f = L.MaxPooling2D(name="maxpool")(f)
    g = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(4, 1, name="pw2")(f))
    g = BN(name="bn_after_gap")(g)
    g = L.Lambda(tf.nn.relu, name="lambda_relu")(g)
    e = L.Dense(5, name="dense_extra")(L.Rescaling(1 / 127.5, -1.0, name="rescale")(b))
    c = L.Concatenate(name="concat")([e, g, tf.reshape(f, (-1, 32))])
    return keras.Model([a, b], [L.Dense(4, name="logits")(c), L.Activation("relu")(b)])


def test_sanitize_everything(checks):
    model = checks.randomize_batchnorms(_everything())
    before = checks.snapshot(model)
    new = sanitize(model)
    assert _unwanted(model) and not _unwanted(new)
    names = [layer.name for layer in new.layers]
    assert names.index("maxpool") < names.index("relu")  # invert_relu_maxpool
    assert new.get_layer("rescale").offset == 0  # align_rescaling
    assert new.get_layer("conv").padding == "same"  # remove_zeropadding2d
    assert new.get_layer("act").max_value == 6.0
    assert [t.node.layer.name for t in new.get_layer("concat").input] == \
        ["dense_extra", "lambda_relu", "tf.reshape"]
    assert [t.name for t in new.inputs] == ["image", "extra"]
    x = checks.inputs(model)
    x[1] = np.abs(x[1]) * 100
    checks.equivalent(model, new, x=x, **TOL)
    checks.unchanged(model, before, new)
    assert sanitize(new) is new  # idempotent: nothing left to do


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_sanitize_simple(checks, kind):
    layers = [L.Conv2D(4, 3), BN(), L.Activation("relu"), L.MaxPooling2D(), L.Flatten(),
              L.Dense(3)]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((6, 6, 2))] + layers)
    else:
        inputs = x = keras.Input((6, 6, 2))
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    checks.randomize_batchnorms(model)
    new = sanitize(model)
    assert checks.types(new)[1:] == [L.Conv2D, L.MaxPooling2D, L.ReLU, L.Flatten, L.Dense]
    checks.equivalent(model, new, **TOL)


def test_negative_gamma_after_maxpool_stays(checks):
    inputs = keras.Input((4, 4, 2))
    x = BN(name="bn")(L.MaxPooling2D()(L.Conv2D(2, 1)(inputs)))
    model = keras.Model(inputs, x)
    model.get_layer("bn").gamma.assign([1.0, -1.0])
    new = sanitize(model)  # does not raise, unlike invert_batchnorm_pooling
    assert checks.count(new, BN) == 1
    checks.equivalent(model, new, **TOL)


def test_sane_model_returns_same_model():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.ReLU(6.0)])
    assert sanitize(model) is model


def test_subclassed_raises():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        sanitize(Sub())


@pytest.mark.slow
@pytest.mark.parametrize("application,alpha", [
    (keras.applications.MobileNet, 0.25),
    (keras.applications.MobileNetV2, 0.35),
], ids=["mobilenet", "mobilenet_v2"])
def test_sanitize_mobilenet(checks, application, alpha):
    model = application(alpha=alpha, input_shape=(96, 96, 3), weights=None,
                        classifier_activation=None)
    checks.randomize_batchnorms(model)
    before = checks.snapshot(model)
    new = sanitize(model)
    assert _unwanted(model) and not _unwanted(new)
    assert [type(layer) for layer in new.layers if type(layer) is L.Add] == \
        [type(layer) for layer in model.layers if type(layer) is L.Add]
    x = [np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)]
    checks.equivalent(model, new, x=x, rtol=1e-3, atol=1e-4)
    checks.unchanged(model, before)


def test_intermediate_models_collected(checks):
    """Each rebuilt intermediate model is freed before the next rebuild (with Python's
    automatic collector off, only sanitize's own collections free its layers, which are
    reference cycles): no layer but those of the input and of the result is left alive, so
    the weights' memory does not add up over the rebuilds."""
    import gc
    model = checks.randomize_batchnorms(_everything())
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, keras.layers.Layer)}
    gc.disable()
    try:
        new = sanitize(model)
        kept = {id(layer) for layer in new.layers} | {id(new)}
        alive = [o.name for o in gc.get_objects() if isinstance(o, keras.layers.Layer)
                 and id(o) not in before and id(o) not in kept]
    finally:
        gc.enable()
    assert alive == []


def test_training_the_result_leaves_the_input_untouched(checks):
    """Unchanged layers are rebuilt with their weights assigned variable to variable (no numpy
    copy): the result starts equal to the input, and training it (in-place optimizer updates,
    assign_add) never writes into the input model's weights."""
    model = checks.randomize_batchnorms(_everything())
    new = sanitize(model)
    before = [w.copy() for w in model.get_weights()]
    dense = new.get_layer("dense_extra")
    source = model.get_layer("dense_extra")
    np.testing.assert_array_equal(dense.kernel.numpy(), source.kernel.numpy())
    x = checks.inputs(model)
    new.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    new.fit(x, [np.ones((len(x[0]), 4)), np.ones((len(x[0]), 8))], epochs=1, verbose=0)
    dense.bias.assign_add(tf.ones_like(dense.bias))
    assert not np.array_equal(dense.kernel.numpy(), source.kernel.numpy())
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
