"""remove_stochastic_depth: ConvNeXt's drop path layers, the identity at inference, removed."""
import numpy as np
import tf_keras as keras
from tf_keras.src.applications.convnext import StochasticDepth

from quantizeml.models import quantize
from quantizeml.models.transforms import remove_stochastic_depth, sanitize
from quantizeml.models.transforms.remove_stochastic_depth import is_stochastic_depth

L = keras.layers


def _residual_model(drop_path=True):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 3), name="inp")
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    branch = L.Conv2D(4, 1, name="branch")(x)
    if drop_path:
        branch = StochasticDepth(0.3, name="drop_path")(branch)
    y = L.Add(name="add")([x, branch])
    return keras.Model(inputs, L.Dense(3, name="dense")(L.GlobalAveragePooling2D()(y)))


def test_removed_outputs_unchanged():
    model = _residual_model()
    x = np.random.default_rng(0).uniform(-1, 1, (8, 6, 6, 3)).astype(np.float32)
    new = remove_stochastic_depth(model)
    assert is_stochastic_depth(model.get_layer("drop_path"))
    assert not any(is_stochastic_depth(layer) for layer in new.layers)
    assert "drop_path" in [layer.name for layer in model.layers]  # input model untouched
    np.testing.assert_array_equal(new(x).numpy(), model(x).numpy())
    # in training the layer drops branches: it was not the identity there
    keras.utils.set_random_seed(0)
    assert not np.array_equal(model(x, training=True).numpy(), model(x).numpy())
    assert remove_stochastic_depth(new) is new


def test_sanitize_and_quantize():
    model = _residual_model()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 6, 6, 3)).astype(np.float32)
    assert not any(is_stochastic_depth(layer) for layer in sanitize(model).layers)
    qmodel = quantize(model, samples=x)
    # the same quantized model as that of the model built without the layer
    plain = _residual_model(drop_path=False)
    plain.set_weights(model.get_weights())
    np.testing.assert_array_equal(qmodel(x).numpy(), quantize(plain, samples=x)(x).numpy())


def test_convnext_with_drop_path_quantizes():
    """A small ConvNeXt of the tf_keras builder, trained with drop path (drop_path_rate > 0)."""
    from tf_keras.src.applications.convnext import ConvNeXt
    model = ConvNeXt(depths=[1, 1, 2, 1], projection_dims=[8, 16, 16, 32], drop_path_rate=0.1,
                     model_name="small_convnext", weights=None, input_shape=(32, 32, 3),
                     classes=10)
    assert any(is_stochastic_depth(layer) for layer in model.layers)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    qmodel = quantize(model, samples=x, batch_size=4)
    assert not any(type(layer).__name__ == "StochasticDepth" for layer in qmodel.layers)
