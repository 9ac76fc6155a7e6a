"""The tiny digits ViT: architecture, and (slow) training, 8-bit quantization, save/load."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.layers.attention import Attention
from quantizeml.layers.layer_norm import LayerMadNormalization
from quantizeml.layers.tokens import AddPositionEmbs, ClassToken, ExtractToken
from quantizeml.models.zoo import load_digits_data
from quantizeml.models.zoo_vit import digits_vit, train_digits_vit
from tests.utils import check_save_load

L = keras.layers


@pytest.mark.parametrize("softmax", ["softmax", "shiftmax"])
def test_digits_vit_architecture(softmax):
    model = digits_vit(softmax=softmax)
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 10)
    block = [LayerMadNormalization, L.Dense, L.Dense, L.Dense, Attention, L.Dense, L.Add,
             LayerMadNormalization, L.Dense, L.ReLU, L.Dense, L.Add]
    assert [type(layer) for layer in model.layers] == [
        L.InputLayer, L.Conv2D, L.Reshape, ClassToken, AddPositionEmbs, *block, *block,
        ExtractToken, L.Dense]
    patch = model.get_layer("patch_embedding")
    assert (patch.filters, patch.kernel_size, patch.strides) == (32, (2, 2), (2, 2))
    assert model.get_layer("position_embedding").pe.shape == (1, 17, 32)
    assert model.get_layer("block_1/attention").softmax == softmax
    logits = model(load_digits_data()[2][:2])
    assert logits.shape == (2, 10)


def vit_q_config(model, bits=8):
    """quant_config overrides for the transformer layers (the rest comes from qparams):
    per-tensor outputs for query/key/value (QuantizedAttention requires them), and output
    quantizers on the normalizations and attentions."""
    def output_quantizer(axis):
        return {"bitwidth": bits, "signed": True, "axis": axis, "buffer_bitwidth": 32}
    config = {}
    for layer in model.layers:
        if isinstance(layer, LayerMadNormalization):
            config[layer.name] = {"output_quantizer": output_quantizer("per-axis")}
        elif isinstance(layer, Attention):
            config[layer.name] = {"output_quantizer": output_quantizer("per-tensor")}
        elif layer.name.split("/")[-1] in ("query", "key", "value"):
            config[layer.name] = {"weight_quantizer": {"bitwidth": bits},
                                  "output_quantizer": output_quantizer("per-tensor"),
                                  "buffer_bitwidth": 32}
    return config


@pytest.mark.slow
def test_train_quantize_save_digits_vit():
    from quantizeml.models import quantize
    model, accuracy = train_digits_vit(softmax="shiftmax", epochs=20)
    assert accuracy >= 0.85  # about 0.93 with the defaults
    x_train, _, x_test, y_test = load_digits_data()
    qmodel = quantize(model, q_config=vit_q_config(model), samples=x_train[:512])
    logits = qmodel.predict(x_test, batch_size=256, verbose=0)
    q_accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    assert q_accuracy >= accuracy - 0.03, (q_accuracy, accuracy)
    check_save_load(qmodel, x_test[:8])
