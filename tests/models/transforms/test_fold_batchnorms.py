"""fold_batchnorms: BN folded into the layer before it, outputs unchanged."""
import pytest
import tf_keras as keras

from quantizeml.models.transforms import fold_batchnorms

L = keras.layers
BN = L.BatchNormalization
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding of the folded weights

FOLDABLE = {
    "conv2d": (lambda bias: L.Conv2D(4, 3, padding="same", use_bias=bias), (6, 6, 3)),
    "conv2d_strided": (lambda bias: L.Conv2D(4, 3, strides=2, use_bias=bias), (7, 7, 3)),
    "depthwise": (lambda bias: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=bias),
                  (6, 6, 3)),
    "separable": (lambda bias: L.SeparableConv2D(5, 3, depth_multiplier=2, use_bias=bias),
                  (6, 6, 3)),
    "dense": (lambda bias: L.Dense(5, use_bias=bias), (7,)),
    "dense_rank3": (lambda bias: L.Dense(5, use_bias=bias), (4, 7)),
    "conv2d_transpose": (lambda bias: L.Conv2DTranspose(4, 3, strides=2, use_bias=bias),
                         (4, 4, 3)),
    "conv1d_causal": (lambda bias: L.Conv1D(4, 3, padding="causal", use_bias=bias), (9, 3)),
    "depthwise1d": (lambda bias: L.DepthwiseConv1D(3, depth_multiplier=2, use_bias=bias),
                    (9, 3)),
    "separable1d": (lambda bias: L.SeparableConv1D(5, 3, depth_multiplier=2, use_bias=bias),
                    (9, 3)),
}


def _build(kind, layer, shape, bn):
    if kind == "sequential":
        return keras.Sequential([keras.Input(shape), layer, bn, L.ReLU()])
    inputs = keras.Input(shape)
    x = bn(layer(inputs))
    return keras.Model(inputs, L.ReLU()(x))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(FOLDABLE))
def test_fold_each_layer(checks, name, bias, kind):
    factory, shape = FOLDABLE[name]
    model = checks.randomize_batchnorms(_build(kind, factory(bias), shape, BN()))
    before = checks.snapshot(model)
    folded = fold_batchnorms(model)
    assert checks.count(folded, BN) == 0
    target = folded.layers[1]
    assert type(target) is type(model.layers[0 if kind == "sequential" else 1])
    assert target.use_bias  # a bias is created where there was none
    checks.equivalent(model, folded, **TOL)
    checks.unchanged(model, before, folded)


@pytest.mark.parametrize("scale,center", [(False, True), (True, False), (False, False)],
                         ids=["no_gamma", "no_beta", "no_gamma_no_beta"])
def test_fold_bn_without_gamma_or_beta(checks, scale, center):
    model = checks.randomize_batchnorms(_build(
        "functional", L.Conv2D(4, 3), (5, 5, 2), BN(scale=scale, center=center)))
    folded = fold_batchnorms(model)
    assert checks.count(folded, BN) == 0
    checks.equivalent(model, folded, **TOL)


def _multi_branch():
    """Two inputs, two outputs, Add and Concatenate, a shared Dense: some BN fold, some stay."""
    a, b = keras.Input((6, 6, 2), name="a"), keras.Input((6, 6, 2), name="b")
    x = BN(name="bn_x")(L.Conv2D(4, 3, padding="same", name="conv_x")(a))
    y = BN(name="bn_y")(L.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                          name="dw_y")(b))
    s = L.Add(name="add")([L.ReLU()(x), y])
    c = L.Concatenate(name="concat")([y, s])  # y: BN output consumed twice, fine
    shared = L.Dense(3, name="shared")
    p = L.GlobalAveragePooling2D()(c)
    out1 = BN(name="bn_after_shared")(shared(p))  # shared Dense: stays
    out2 = shared(L.Dense(8, name="d8")(p))
    after_input = BN(name="bn_input")(a)  # no preceding layer: stays
    out3 = L.Flatten()(after_input)
    return keras.Model([a, b], [out1, out2, out3])


def test_fold_multi_branch(checks):
    model = checks.randomize_batchnorms(_multi_branch())
    before = checks.snapshot(model)
    folded = fold_batchnorms(model)
    bns = sorted(layer.name for layer in folded.layers if type(layer) is BN)
    assert bns == ["bn_after_shared", "bn_input"]
    assert [t.name for t in folded.inputs] == [t.name for t in model.inputs]
    assert folded.get_layer("concat").input[0].node.layer.name == "dw_y"  # input order kept
    checks.equivalent(model, folded, **TOL)
    checks.unchanged(model, before, folded)


def test_bn_whose_input_is_consumed_twice_stays(checks):
    inputs = keras.Input((5, 5, 2))
    x = L.Conv2D(3, 3)(inputs)
    y = L.Add()([BN()(x), L.ReLU()(x)])
    model = keras.Model(inputs, y)
    assert fold_batchnorms(model) is model


def test_bn_after_activation_or_layer_output_stays(checks):
    inputs = keras.Input((5, 5, 2))
    x = L.Conv2D(3, 3, activation="relu")(inputs)
    model = keras.Model(inputs, BN()(x))
    assert fold_batchnorms(model) is model
    conv = L.Conv2D(3, 3)(inputs)
    model = keras.Model(inputs, [conv, BN()(conv)])  # the conv output is a model output
    assert fold_batchnorms(model) is model


def test_nothing_to_fold_returns_same_model():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.ReLU()])
    assert fold_batchnorms(model) is model


def test_fold_in_nested_model(checks):
    inner = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3), BN()], name="inner")
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, L.GlobalAveragePooling2D()(inner(inputs)))
    checks.randomize_batchnorms(model)
    folded = fold_batchnorms(model)
    assert not any(isinstance(layer, (keras.Model, BN)) for layer in folded.layers)
    checks.equivalent(model, folded, **TOL)


def test_subclassed_model_raises():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        fold_batchnorms(Sub())
