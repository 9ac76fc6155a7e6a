"""FixedPoint and QFloat through tf_keras models, tf.function, tf.data and SavedModel."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.tensors import FixedPoint, QFloat

from . import reference as ref

WEIGHTS = np.float32([0.5, -1.25, 1.75, 0.75])  # on the 3-bit grid with 2 fractional bits
SCALES = np.float32([0.5, 3.0, 0.1, 1.0])
FEATURES = WEIGHTS.size


@keras.saving.register_keras_serializable(package="quantizeml_tests")
class QuantizeInputs(keras.layers.Layer):
    """float -> FixedPoint."""

    def __init__(self, value_bits=7, frac_bits=4, **kwargs):
        super().__init__(**kwargs)
        self.value_bits = value_bits
        self.frac_bits = frac_bits

    def call(self, inputs):
        return FixedPoint.quantize(inputs, self.value_bits, self.frac_bits)

    def get_config(self):
        return {**super().get_config(), "value_bits": self.value_bits,
                "frac_bits": self.frac_bits}


@keras.saving.register_keras_serializable(package="quantizeml_tests")
class AddMultiply(keras.layers.Layer):
    """FixedPoint -> (x + 3x) * w, a FixedPoint, or a QFloat when with_scales."""

    def __init__(self, with_scales=False, **kwargs):
        super().__init__(**kwargs)
        self.with_scales = with_scales

    def call(self, inputs):
        weights = FixedPoint.quantize(WEIGHTS, 3, 2)
        outputs = (inputs + inputs * 3) * weights
        if self.with_scales:
            outputs = outputs * tf.constant(SCALES)  # FixedPoint * float -> QFloat
        return outputs

    def get_config(self):
        return {**super().get_config(), "with_scales": self.with_scales}


@keras.saving.register_keras_serializable(package="quantizeml_tests")
class Dequantize(keras.layers.Layer):
    """QTensor -> float."""

    def call(self, inputs):
        return inputs.to_float()


def build_model(with_scales, dequantize=True):
    inputs = keras.Input((FEATURES,))
    x = QuantizeInputs(7, 4)(inputs)
    x = AddMultiply(with_scales)(x)
    outputs = Dequantize()(x) if dequantize else x
    return keras.Model(inputs, outputs)


def expected_integers(x):
    """int64 values and fractional bits of AddMultiply(QuantizeInputs(x))."""
    weights = ref.quantize(WEIGHTS, 3, 2)
    np.testing.assert_array_equal(weights, WEIGHTS * 4)  # no rounding of the weights
    return 4 * ref.quantize(x, 7, 4) * weights, 4 + 2


def expected_outputs(x, with_scales):
    values, frac_bits = expected_integers(x)
    out = ref.to_float(values, frac_bits).astype(np.float32)
    return out * SCALES if with_scales else out


def inputs(n=7):
    return np.random.default_rng(0).normal(0, 2, (n, FEATURES)).astype(np.float32)


MODES = {"fixed_point": False, "qfloat": True}


@pytest.mark.parametrize("with_scales", MODES.values(), ids=MODES.keys())
def test_model_eager_and_predict(with_scales):
    model = build_model(with_scales)
    x = inputs()
    expected = expected_outputs(x, with_scales)
    np.testing.assert_array_equal(model(x).numpy(), expected)
    np.testing.assert_array_equal(model.predict(x, batch_size=3, verbose=0), expected)
    np.testing.assert_array_equal(model.predict_on_batch(x), expected)


@pytest.mark.parametrize("with_scales", MODES.values(), ids=MODES.keys())
def test_model_with_qtensor_output(with_scales):
    model = build_model(with_scales, dequantize=False)
    assert model.output.type_spec.value_type is (QFloat if with_scales else FixedPoint)
    x = inputs()
    out = model(x)
    fp = out.fp if with_scales else out
    values, frac_bits = expected_integers(x)
    # 3x: bit_length(3 * 2^7) = 9 bits; x + 3x: 10 bits; times 3-bit weights: 10 + 3 + 1
    assert fp.value_bits == 14
    np.testing.assert_array_equal(fp.values.numpy(), values)
    assert fp.frac_bits.numpy() == frac_bits


@pytest.mark.parametrize("with_scales", MODES.values(), ids=MODES.keys())
def test_model_in_tf_function(with_scales):
    model = build_model(with_scales)
    x = inputs()

    @tf.function(input_signature=[tf.TensorSpec((None, FEATURES), tf.float32)])
    def serve(batch):
        return model(batch)

    @tf.function
    def quantized(batch):
        return build_model(with_scales, dequantize=False)(batch)

    np.testing.assert_array_equal(serve(x).numpy(), expected_outputs(x, with_scales))
    np.testing.assert_array_equal(serve(x[:2]).numpy(), expected_outputs(x[:2], with_scales))
    out = quantized(x)
    assert isinstance(out, QFloat if with_scales else FixedPoint)
    np.testing.assert_array_equal(out.to_float().numpy(), expected_outputs(x, with_scales))


def test_tf_data_map_produces_qtensors():
    x = inputs(10)
    batches = [x[i:i + 4] for i in range(0, 10, 4)]
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)

    fixed = dataset.map(lambda b: FixedPoint.quantize(b, 7, 4))
    assert isinstance(fixed.element_spec, FixedPoint.Spec)
    dynamic = dataset.map(lambda b: FixedPoint.quantize(b, 7))  # frac bits from each batch
    qfloats = dataset.map(lambda b: QFloat.quantize(b, 7, QFloat.optimal_scales(
        tf.reduce_max(tf.abs(b), axis=0), 7)))
    summed = fixed.map(lambda fp: fp + fp * 3)

    for batch, fp, dyn, qf, total in zip(batches, fixed, dynamic, qfloats, summed):
        np.testing.assert_array_equal(fp.values.numpy(), ref.quantize(batch, 7, 4))
        frac_bits = ref.max_frac_bits(7, np.max(np.abs(batch)))
        assert dyn.frac_bits.numpy() == frac_bits
        np.testing.assert_array_equal(dyn.values.numpy(), ref.quantize(batch, 7, frac_bits))
        assert isinstance(qf, QFloat)
        np.testing.assert_array_equal(qf.values.numpy(), ref.quantize(batch / qf.scales, 7, 0))
        assert total.value_bits == 10
        np.testing.assert_array_equal(total.values.numpy(), 4 * ref.quantize(batch, 7, 4))


def test_tf_data_feeds_a_model():
    x = inputs(10)
    model = build_model(with_scales=False)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
    np.testing.assert_array_equal(model.predict(dataset, verbose=0), expected_outputs(x, False))


class QuantizedModule(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec((None, FEATURES), tf.float32)])
    def __call__(self, x):
        fp = FixedPoint.quantize(x, 7, np.float32([1, 2, 3, 4]))
        dyn = FixedPoint.quantize(x, 12)
        qf = QFloat.quantize(x, 7, SCALES)
        return {"fp": fp + dyn, "qf": qf, "product": fp * qf}


def check_same_qtensor(got, expected):
    assert type(got) is type(expected)
    if isinstance(expected, QFloat):
        np.testing.assert_array_equal(got.scales.numpy(), expected.scales.numpy())
        got, expected = got.fp, expected.fp
    assert got.value_bits == expected.value_bits
    assert got.values.dtype == expected.values.dtype
    np.testing.assert_array_equal(got.values.numpy(), expected.values.numpy())
    np.testing.assert_array_equal(got.frac_bits.numpy(), expected.frac_bits.numpy())


def test_saved_model_module_roundtrip(tmp_path):
    module = QuantizedModule()
    x = inputs()
    expected = module(x)
    # the module itself is right: check it against numpy before comparing the reload
    np.testing.assert_array_equal(expected["qf"].values.numpy(), ref.quantize(x / SCALES, 7, 0))
    dyn_frac = ref.max_frac_bits(12, np.max(np.abs(x)))
    target = np.maximum([1, 2, 3, 4], dyn_frac)
    np.testing.assert_array_equal(
        expected["fp"].values.numpy(),
        (ref.quantize(x, 7, [1, 2, 3, 4]) << (target - [1, 2, 3, 4]))
        + (ref.quantize(x, 12, dyn_frac) << (target - dyn_frac)))

    path = str(tmp_path / "module")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    got = loaded(x)
    assert set(got) == set(expected)
    for key in expected:
        check_same_qtensor(got[key], expected[key])


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("with_scales", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("save_format", ["tf", "h5"])
def test_keras_model_save_load(tmp_path, with_scales, save_format):
    model = build_model(with_scales)
    x = inputs()
    expected = model(x).numpy()
    np.testing.assert_array_equal(expected, expected_outputs(x, with_scales))
    path = os.path.join(tmp_path, "model.h5" if save_format == "h5" else "model")
    model.save(path, save_format=save_format)
    loaded = keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(loaded(x).numpy(), expected)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_keras_model_with_qtensor_output_save_load(tmp_path):
    model = build_model(with_scales=True, dequantize=False)
    x = inputs()
    path = str(tmp_path / "model")
    model.save(path)
    loaded = keras.models.load_model(path)
    check_same_qtensor(loaded(x), model(x))
