"""remove_zeropadding2d: ZeroPadding2D + 'valid' conv becomes a 'same' conv."""
import pytest
import tf_keras as keras

from quantizeml.models.transforms import remove_zeropadding2d

L = keras.layers
TOL = dict(rtol=1e-6, atol=1e-6)

CONVS = {
    "conv2d": lambda **kw: L.Conv2D(4, 3, **kw),
    "depthwise": lambda **kw: L.DepthwiseConv2D(3, **kw),
    "separable": lambda **kw: L.SeparableConv2D(4, 3, **kw),
}
# (input size, padding, strides, dilation) for which the padding is the 'same' padding
SAME = {
    "s1": (6, 1, 1, 1),
    "s2_even_mobilenet": (8, ((0, 1), (0, 1)), 2, 1),
    "s2_odd": (7, 1, 2, 1),
    "dilated": (7, 2, 1, 2),
}
NOT_SAME = {
    "s2_even_symmetric": (8, 1, 2, 1),
    "too_small": (6, ((0, 1), (0, 1)), 1, 1),
    "too_large": (6, 2, 1, 1),
}


def _build(kind, size, padding, conv):
    if kind == "sequential":
        return keras.Sequential([keras.Input((size, size, 2)), L.ZeroPadding2D(padding), conv])
    inputs = keras.Input((size, size, 2))
    return keras.Model(inputs, conv(L.ZeroPadding2D(padding)(inputs)))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("case", list(SAME))
@pytest.mark.parametrize("conv", list(CONVS))
def test_remove(checks, conv, case, kind):
    size, padding, strides, dilation = SAME[case]
    model = _build(kind, size, padding, CONVS[conv](strides=strides, dilation_rate=dilation))
    before = checks.snapshot(model)
    new = remove_zeropadding2d(model)
    assert checks.count(new, L.ZeroPadding2D) == 0
    assert new.layers[-1].padding == "same"
    checks.equivalent(model, new, **TOL)
    checks.unchanged(model, before, new)


@pytest.mark.parametrize("case", list(NOT_SAME))
def test_other_padding_stays(case):
    size, padding, strides, dilation = NOT_SAME[case]
    model = _build("functional", size, padding, L.Conv2D(4, 3, strides=strides))
    assert remove_zeropadding2d(model) is model


def test_not_removed_cases():
    inputs = keras.Input((6, 6, 2))
    zp = L.ZeroPadding2D(1)(inputs)
    # 'same' conv, pooling, two consumers, unknown spatial size
    model = keras.Model(inputs, L.Conv2D(2, 3, padding="same")(zp))
    assert remove_zeropadding2d(model) is model
    model = keras.Model(inputs, L.MaxPooling2D(3, 1)(zp))
    assert remove_zeropadding2d(model) is model
    model = keras.Model(inputs, [L.Conv2D(2, 3)(zp), L.Conv2D(2, 3)(zp)])
    assert remove_zeropadding2d(model) is model
    dynamic = keras.Input((None, None, 2))
    model = keras.Model(dynamic, L.Conv2D(2, 3)(L.ZeroPadding2D(1)(dynamic)))
    assert remove_zeropadding2d(model) is model


def test_remove_in_multi_branch(checks):
    inputs = keras.Input((8, 8, 2))
    a = L.Conv2D(3, 3, strides=2, name="conv_a")(L.ZeroPadding2D(((0, 1), (0, 1)))(inputs))
    b = L.Conv2D(3, 3, strides=2, padding="same", name="conv_b")(inputs)
    shared = L.Conv2D(3, 1, name="shared")
    out = L.Concatenate(name="concat")([shared(a), shared(b)])
    model = keras.Model(inputs, out)
    new = remove_zeropadding2d(model)
    assert checks.count(new, L.ZeroPadding2D) == 0
    assert len(new.get_layer("shared").inbound_nodes) == 2  # still shared
    checks.equivalent(model, new, **TOL)
