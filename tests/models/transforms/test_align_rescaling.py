"""align_rescaling: Rescaling offsets and per-channel scales go into the next layer."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.models.transforms import align_rescaling

L = keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)

NEXT = {
    "conv2d": (lambda: L.Conv2D(4, 3), (6, 6, 3)),
    "conv2d_no_bias": (lambda: L.Conv2D(4, 3, strides=2, use_bias=False), (7, 7, 3)),
    "depthwise": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
    "dense": (lambda: L.Dense(5), (3,)),
    "dense_rank3": (lambda: L.Dense(5, use_bias=False), (4, 3)),
}
RESCALINGS = {
    "offset": (1 / 127.5, -1.0),
    "per_channel_scale": ([0.5, 0.25, 1.0], 0.0),
    "per_channel_both": ([0.5, -0.25, 1.0], [0.1, 0.2, -0.3]),
}


def _build(kind, scale, offset, layer, shape):
    if kind == "sequential":
        return keras.Sequential([keras.Input(shape), L.Rescaling(scale, offset), layer,
                                 L.ReLU()])
    inputs = keras.Input(shape)
    return keras.Model(inputs, L.ReLU()(layer(L.Rescaling(scale, offset)(inputs))))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("rescaling", list(RESCALINGS))
@pytest.mark.parametrize("nxt", list(NEXT))
def test_align(checks, nxt, rescaling, kind):
    factory, shape = NEXT[nxt]
    model = _build(kind, *RESCALINGS[rescaling], factory(), shape)
    before = checks.snapshot(model)
    new = align_rescaling(model)
    rescaling_layer = new.layers[1]
    assert type(rescaling_layer) is L.Rescaling
    assert np.ndim(rescaling_layer.scale) == 0 and rescaling_layer.offset == 0
    assert new.layers[2].use_bias
    x = [v * 100 for v in checks.inputs(model)]
    checks.equivalent(model, new, x=x, **TOL)
    checks.unchanged(model, before, new)


def test_align_in_multi_branch(checks):
    a, b = keras.Input((5, 5, 2), name="a"), keras.Input((5, 5, 2), name="b")
    x = L.Conv2D(3, 3, name="conv_a")(L.Rescaling(0.5, -1.0, name="rescale_a")(a))
    y = L.Conv2D(3, 3, name="conv_b")(L.Rescaling(2.0, name="rescale_b")(b))  # aligned
    model = keras.Model([a, b], L.Concatenate(name="concat")([y, x]))
    new = align_rescaling(model)
    assert new.get_layer("rescale_a").offset == 0
    assert [t.node.layer.name for t in new.get_layer("concat").input] == ["conv_b", "conv_a"]
    checks.equivalent(model, new, **TOL)


@pytest.mark.parametrize("case", ["aligned", "no_rescaling", "same_padding_offset",
                                  "two_consumers", "pooling_next"])
def test_nothing_to_align_returns_same_model(case):
    inputs = keras.Input((5, 5, 3))
    if case == "aligned":
        outputs = L.Conv2D(2, 3, padding="same")(L.Rescaling(1 / 255)(inputs))
    elif case == "no_rescaling":
        outputs = L.Conv2D(2, 3)(inputs)
    elif case == "same_padding_offset":
        outputs = L.Conv2D(2, 3, padding="same")(L.Rescaling(1 / 127.5, -1)(inputs))
    elif case == "two_consumers":
        x = L.Rescaling(1 / 127.5, -1)(inputs)
        outputs = L.Add()([L.Conv2D(3, 1)(x), x])
    else:
        outputs = L.MaxPooling2D()(L.Rescaling(1 / 127.5, -1)(inputs))
    model = keras.Model(inputs, outputs)
    assert align_rescaling(model) is model
