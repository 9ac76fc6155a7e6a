"""Exact export of the transposed and separable convolutions: onnxruntime's integer outputs
equal the Keras quantized model's ``.values`` bit for bit, the float outputs exactly.

Each variant is a model output (no output quantizer: its whole integer buffer is compared);
the variants share one model, quantized and exported once (test time)."""
import tf_keras as keras

from quantizeml.layers import DepthwiseConv2DTranspose

from .test_export_coverage import _check_outputs, _quantize, _samples

L = keras.layers

#: name -> layer factory: 'same' and 'valid', strides 1 to 3, output padding, dilation,
#: even and odd kernels, on uneven (5, 4) inputs.
TRANSPOSED = {
    "valid_s2": lambda: L.Conv2DTranspose(4, 3, strides=2, bias_initializer="random_normal"),
    "same_s3_k2_outpad": lambda: L.Conv2DTranspose(3, 2, strides=3, padding="same",
                                                   output_padding=1),
    "valid_s1_dilated": lambda: L.Conv2DTranspose(3, 3, dilation_rate=2),
    "same_s1_dilated": lambda: L.Conv2DTranspose(2, 3, padding="same", dilation_rate=2),
    "valid_s2_outpad": lambda: L.Conv2DTranspose(2, 3, strides=2, output_padding=1),
    "same_s2_k5_no_bias": lambda: L.Conv2DTranspose(2, 5, strides=2, padding="same",
                                                    use_bias=False),
    "depthwise_valid_s2": lambda: DepthwiseConv2DTranspose(3, strides=2,
                                                           bias_initializer="random_normal"),
    "depthwise_same_s2": lambda: DepthwiseConv2DTranspose(3, strides=2, padding="same"),
    "depthwise_same_s3_outpad": lambda: DepthwiseConv2DTranspose(2, strides=3, padding="same",
                                                                 output_padding=2),
}


def test_export_conv_transposes():
    """Conv2D (per-axis outputs) -> each transposed convolution, a model output."""
    inputs = keras.Input((5, 4, 3), name="inp")
    y = L.Conv2D(3, 1, bias_initializer="random_normal", name="a")(inputs)
    outputs = [make_layer()(y) for make_layer in TRANSPOSED.values()]
    x = _samples((5, 4, 3), n=8)
    qmodel = _quantize(keras.Model(inputs, outputs), x)
    names = {type(layer).__name__ for layer in qmodel.layers}
    assert {"QuantizedConv2DTranspose", "QuantizedDepthwiseConv2DTranspose"} <= names
    ops = _check_outputs(qmodel, x)
    assert "ConvInteger" in ops


def test_export_separable_convs():
    """Conv2D (per-axis outputs) -> SeparableConv2D ('same', stride 1; 'valid', stride 2,
    depth multiplier 2; depthwise scales folded into the pointwise kernel), model outputs, and
    one followed by a Conv2D (its output quantizer)."""
    inputs = keras.Input((6, 5, 3), name="inp")
    y = L.Conv2D(4, 1, bias_initializer="random_normal", name="a")(inputs)
    same = L.SeparableConv2D(5, 3, padding="same", bias_initializer="random_normal")(y)
    valid = L.SeparableConv2D(3, 3, strides=2, depth_multiplier=2)(y)
    chained = L.SeparableConv2D(4, 2, bias_initializer="random_normal")(y)
    chained = L.Conv2D(2, 1)(chained)
    x = _samples((6, 5, 3), n=8)
    qmodel = _quantize(keras.Model(inputs, [same, valid, chained]), x)
    seps = [layer for layer in qmodel.layers
            if type(layer).__name__ == "QuantizedSeparableConv2D"]
    assert len(seps) == 3
    _check_outputs(qmodel, x)
