"""Exact export of the transformer layers (QuantizedShiftmax, QuantizedAttention, the layer
normalizations, the token layers) and of a tiny ViT: onnxruntime's integer outputs equal the
Keras quantized model's ``.values`` bit for bit, the float outputs exactly.

Each layer under test is a model output (no output quantizer: its whole integer buffer is
compared); the layers share one model, quantized and exported once (test time)."""
import tf_keras as keras

from quantizeml.layers.attention import Attention
from quantizeml.layers.layer_norm import LayerMadNormalization
from quantizeml.layers.shiftmax import Shiftmax
from quantizeml.layers.tokens import AddPositionEmbs, ClassToken, ExtractToken
from quantizeml.models.zoo_vit import digits_vit

from .test_export_coverage import _check, _check_outputs, _quantize, _samples

L = keras.layers


def test_export_transformer_layers():
    """Dense -> Shiftmax, LayerMadNormalization, LayerNormalization (with and without gamma),
    ClassToken -> AddPositionEmbs -> ExtractToken; each a model output."""
    inputs = keras.Input((6, 8), name="inp")
    y = L.Dense(8, bias_initializer="random_normal", name="a")(inputs)
    random = "random_normal"
    outputs = [
        Shiftmax(name="shiftmax")(L.Dense(8, name="b")(y)),
        LayerMadNormalization(name="mad", beta_initializer=random, gamma_initializer=random)(y),
        L.LayerNormalization(name="std", beta_initializer=random, gamma_initializer=random)(y),
        L.LayerNormalization(name="std_no_gamma", scale=False)(y),
        ExtractToken(1, name="extract")(AddPositionEmbs(name="pe")(
            ClassToken(name="cls", initializer=random)(y))),
    ]
    x = _samples((6, 8), n=8, seed=1, low=-2, high=2)
    x[0, 0] = 0.0  # a row of zeros (layer normalizations: the zero-deviation branch)
    qmodel = _quantize(keras.Model(inputs, outputs), x)
    names = {type(layer).__name__ for layer in qmodel.layers}
    assert {"QuantizedShiftmax", "QuantizedLayerNormalization", "QuantizedLayerStdNormalization",
            "QuantizedClassToken", "QuantizedAddPositionEmbs", "QuantizedExtractToken"} <= names
    _check_outputs(qmodel, x)


def test_export_attentions():
    """Attention with shiftmax, 2 heads of 4 channels (the rescale by 1/2 is a shift), and
    with the rounded softmax, 1 head of 8 (a QFloat scale 1/sqrt(8)); model outputs."""
    inputs = keras.Input((5, 8), name="inp")
    q, k, v = (L.Dense(8, bias_initializer="random_normal", name=n)(inputs) for n in "qkv")
    outputs = [Attention(2, softmax="shiftmax", name="shift")([q, k, v]),
               Attention(1, softmax="softmax", name="soft")([q, k, v])]
    x = _samples((5, 8), n=8, seed=2, low=-3, high=3)
    qmodel = _quantize(keras.Model(inputs, outputs), x)
    assert type(qmodel.get_layer("shift")).__name__ == "QuantizedAttention"
    ops = _check_outputs(qmodel, x)
    assert "MatMul" in ops


def test_export_tiny_vit():
    """A one-block digits ViT (ClassToken, AddPositionEmbs, LayerMadNormalization, shiftmax
    Attention, ExtractToken) exported end to end, bit-exact."""
    model = digits_vit(softmax="shiftmax", hidden_size=16, num_heads=1, mlp_dim=16,
                       num_blocks=1)
    x = _samples((8, 8, 1), n=8, seed=3, low=0, high=1)
    qmodel = _quantize(model, x)
    ops = _check(qmodel, x)
    assert "MatMul" in ops and "Gather" in ops
