"""Bad inputs: each gets a clear error naming what is wrong, and leaves its inputs untouched.

The table of every bad input and the error it gets is ``tests/reliability/README.md``.
"""
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from quantizeml.models import QuantizationParams, calibrate, load_model, quantize

# The q_config errors are raised by the quantized layer constructors; Keras' from_config
# wraps them in a TypeError that repeats the original message (see README.md).
CONFIG_ERRORS = (ValueError, TypeError)


def _model():
    inputs = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    return keras.Model(inputs, outputs, name="small")


def _samples(n=16):
    return np.random.default_rng(0).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


def _snapshot(model):
    return [w.copy() for w in model.get_weights()], [layer.name for layer in model.layers]


def _assert_untouched(model, snapshot):
    weights, names = snapshot
    assert [layer.name for layer in model.layers] == names
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def _hash(path):
    digest = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, files in os.walk(path) for f in files)
    for p in paths:
        digest.update(p.encode())
        with open(p, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A quantized model saved as .h5 and SavedModel (built once for the module)."""
    keras.backend.clear_session()
    root = tmp_path_factory.mktemp("models")
    qmodel = quantize(_model(), samples=_samples())
    h5 = str(root / "q.h5")
    qmodel.save(h5)
    saved = str(root / "q_savedmodel")
    qmodel.save(saved, save_format="tf")
    return h5, saved


# -- quantization parameters and q_config --------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"weight_bits": 0}, r"weight_bits expected an int in \[1, 32\]. Received: weight_bits=0"),
    ({"weight_bits": 33}, r"weight_bits expected an int in \[1, 32\]"),
    ({"activation_bits": 1}, r"activation_bits expected an int in \[2, 32\]"),
    ({"output_bits": 2.5}, r"output_bits expected an int"),
    ({"weight_bits": True}, r"weight_bits expected an int"),
    ({"buffer_bits": 8, "activation_bits": 16}, r"activation_bits expected <= buffer_bits"),
    ({"per_tensor_activations": "yes"}, r"per_tensor_activations expected a bool"),
])
def test_qparams_out_of_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizationParams(**kwargs)


@pytest.mark.parametrize("q_config, error, match", [
    ({"nope": {}}, ValueError, r"q_config keys naming layers.*unknown layer names \['nope'\]"),
    ({"conv": {"foo": 1}}, CONFIG_ERRORS,
     r"Layer conv: quant_config expected keys among .*unknown keys \['foo'\]"),
    ({"conv": {"weight_quantizer": {"bitwidth": 64}}}, CONFIG_ERRORS,
     r"Layer conv/weight_quantizer: bitwidth expected an int in \[1, 32\]. "
     r"Received: bitwidth=64"),
    ({"conv": {"weight_quantizer": {"bitwidth": 0}}}, CONFIG_ERRORS,
     r"Layer conv/weight_quantizer: bitwidth expected .*bitwidth=0"),
    ({"relu": {"output_quantizer": {"bitwidth": 40}}}, CONFIG_ERRORS,
     r"Layer relu/output_quantizer: bitwidth expected .*bitwidth=40"),
    ({"conv": {"weight_quantizer": {"bitwidth": 4, "bogus": 2}}}, CONFIG_ERRORS, r"bogus"),
    ({"input_quantizer": {"bitwidth": 99}}, ValueError,
     r"Layer input_quantizer: bitwidth expected .*bitwidth=99"),
    ({"input_quantizer": {"zzz": 1}}, CONFIG_ERRORS, r"zzz"),
    (["conv"], TypeError, r"q_config to be a dict"),
])
def test_bad_q_config(q_config, error, match):
    model = _model()
    snapshot = _snapshot(model)
    with pytest.raises(error, match=match):
        quantize(model, q_config=q_config, samples=_samples())
    _assert_untouched(model, snapshot)


def test_bad_qparams_type():
    with pytest.raises(TypeError, match="qparams to be a QuantizationParams"):
        quantize(_model(), qparams={"weight_bits": 4}, samples=_samples())


# -- unsupported layers -------------------------------------------------------------------

class UserLayer(keras.layers.Layer):
    """A user-defined layer: no quantized twin and not registered with Keras."""

    def call(self, x):
        return 2.0 * x


def _model_with(layer_fn):
    inputs = keras.Input((4,), name="input")
    x = keras.layers.Dense(6, name="d1")(inputs)
    x = layer_fn(x)
    outputs = keras.layers.Dense(2, name="d2")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("layer_fn, match", [
    (lambda x: UserLayer(name="mine")(x), r"unsupported layers mine \(UserLayer\)"),
    (lambda x: keras.layers.LSTM(2, name="lstm")(keras.layers.Reshape((6, 1))(x)),
     r"unsupported layers lstm \(LSTM\)"),
    (lambda x: keras.layers.Lambda(lambda t: t * t, name="square")(x),
     r"unsupported layers square \(Lambda\).*'float'"),
])
def test_unsupported_layers(layer_fn, match):
    model = _model_with(layer_fn)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        quantize(model, samples=np.random.default_rng(0).uniform(size=(8, 4)).astype("f4"))
    _assert_untouched(model, snapshot)


def test_unsupported_layers_all_listed():
    inputs = keras.Input((4,), name="input")
    x = keras.layers.Dense(6, name="d1")(inputs)
    x = UserLayer(name="mine_1")(x)
    x = keras.layers.Dense(6, name="d2")(x)
    x = UserLayer(name="mine_2")(x)
    outputs = keras.layers.Dense(2, name="d3")(x)
    with pytest.raises(ValueError, match=r"mine_1 \(UserLayer\), mine_2 \(UserLayer\)"):
        quantize(keras.Model(inputs, outputs), samples=np.ones((2, 4), np.float32))


# -- calibration samples -------------------------------------------------------------------

def _with(value):
    x = _samples()
    x[3, 2, 1, 0] = value
    return x


@pytest.mark.parametrize("make, match", [
    (lambda: _with(np.nan), r"expected finite values.*1 NaN/Inf"),
    (lambda: _with(np.inf), r"expected finite values.*1 NaN/Inf"),
    (lambda: _with(-np.inf), r"expected finite values"),
    (lambda: tf.data.Dataset.from_tensor_slices(_with(np.nan)), r"expected finite values"),
    (lambda: (b for b in [_samples(4), _with(np.nan)[:4]]), r"expected finite values"),
    (lambda: np.zeros((4, 8, 7, 1), np.float32),
     r"expected shape \(batch,\) \+ \(8, 8, 1\). Received: shape=\(1, 8, 7, 1\)"),
    (lambda: np.zeros((4, 8, 8), np.float32), r"expected shape .*Received: shape=\(1, 8, 8\)"),
    (lambda: tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 7, 1), np.float32)).batch(2),
     r"expected shape"),
    (lambda: [np.zeros((4, 8, 8, 1), np.float32)] * 2, r"expected 1 input\(s\). Received: 2"),
    (lambda: np.full((4, 8, 8, 1), "a"), r"expected numeric values. Received: dtype=<U1"),
    (lambda: np.zeros((4, 8, 8, 1), np.complex64), r"numeric values. Received: dtype=complex64"),
    (lambda: np.array([None] * 4, dtype=object), r"numeric values. Received: dtype=object"),
    (lambda: np.zeros((0, 8, 8, 1), np.float32), r"at least one sample. Received: an empty"),
    (lambda: tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 1), np.float32)),
     r"at least one sample. Received: an empty dataset"),
    (lambda: (b for b in []), r"at least one sample. Received: an empty dataset or generator"),
])
def test_bad_samples(make, match):
    model = _model()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        quantize(model, samples=make())
    _assert_untouched(model, snapshot)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 0}, r"num_samples expected a positive int"),
    ({"batch_size": -1}, r"batch_size expected a positive int or None"),
    ({"epochs": 0}, r"epochs expected a positive int"),
    ({"epochs": 2, "samples": (b for b in [np.zeros((2, 8, 8, 1), np.float32)])},
     r"epochs expected 1 with generator samples"),
])
def test_bad_sample_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(_model(), **kwargs)


def test_calibrate_bad_samples_leaves_ranges():
    """calibrate() of an already calibrated model with NaN samples: error, ranges unchanged."""
    model = _model()
    qmodel = quantize(model, samples=_samples())
    before = [w.copy() for w in qmodel.get_weights()]
    with pytest.raises(ValueError, match="expected finite values"):
        calibrate(model, qmodel, samples=_with(np.nan))
    for b, a in zip(before, qmodel.get_weights()):
        np.testing.assert_array_equal(b, a)


# -- corrupt files and unregistered layers -------------------------------------------------

def _corrupt_copies(src, tmp_path):
    data = open(src, "rb").read()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[:len(data) // 2])
    corrupt = bytearray(data)
    corrupt[100:400] = b"\0" * 300
    zeroed = tmp_path / "corrupt.h5"
    zeroed.write_bytes(bytes(corrupt))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    random = tmp_path / "random.h5"
    random.write_bytes(np.random.default_rng(0).bytes(len(data)))
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    return {"truncated": (str(truncated), r"truncated file"),
            "corrupt": (str(zeroed), r"Unable to .*open file"),
            "garbage": (str(garbage), r"file signature not found"),
            "random-bytes": (str(random), r"file signature not found"),
            "empty": (str(empty), r"file signature not found")}


def _check_names_file(info, path, cause=OSError):
    """The loader error names the file and keeps the original error as its cause."""
    assert repr(path) in str(info.value), str(info.value)
    assert info.value.path == path
    assert isinstance(info.value.__cause__, cause), repr(info.value.__cause__)


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "garbage", "random-bytes", "empty"])
def test_corrupt_h5(model_files, tmp_path, kind):
    path, match = _corrupt_copies(model_files[0], tmp_path)[kind]
    digest = _hash(path)
    with pytest.raises(OSError, match=match) as info:
        load_model(path)
    _check_names_file(info, path)
    assert _hash(path) == digest


def test_missing_file(tmp_path):
    path = str(tmp_path / "missing.h5")
    with pytest.raises(OSError, match="No file or directory found") as info:
        load_model(path)
    _check_names_file(info, path)


def test_pathlike_path_named(tmp_path):
    with pytest.raises(OSError) as info:
        load_model(tmp_path / "missing.h5")
    _check_names_file(info, str(tmp_path / "missing.h5"))


@pytest.mark.parametrize("files", [[], ["notes.txt"], ["variables/x.index"]],
                         ids=["empty", "text-file", "variables-only"])
def test_directory_not_a_savedmodel(tmp_path, files):
    path = tmp_path / "not_a_savedmodel"
    path.mkdir()
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("not a model")
    digest = _hash(str(path))
    with pytest.raises(OSError, match="SavedModel file does not exist") as info:
        load_model(str(path))
    _check_names_file(info, str(path))
    assert _hash(str(path)) == digest


def test_h5_without_model_config(tmp_path):
    import h5py
    path = str(tmp_path / "weights_only.h5")
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(ValueError, match="No model config found") as info:
        load_model(path)
    _check_names_file(info, path, cause=ValueError)


def test_truncated_savedmodel(model_files, tmp_path):
    import shutil
    path = str(tmp_path / "sm")
    shutil.copytree(model_files[1], path)
    pb = os.path.join(path, "saved_model.pb")
    data = open(pb, "rb").read()
    with open(pb, "wb") as f:
        f.write(data[:len(data) // 2])
    digest = _hash(path)
    with pytest.raises(OSError, match=r"saved_model.pb.*(corrupt|parse)") as info:
        load_model(path)
    _check_names_file(info, path, cause=Exception)
    assert _hash(path) == digest


def test_savedmodel_missing_variables(model_files, tmp_path):
    import shutil
    path = str(tmp_path / "sm")
    shutil.copytree(model_files[1], path)
    variables = os.path.join(path, "variables")
    for f in os.listdir(variables):
        if f.endswith(".index"):
            os.remove(os.path.join(variables, f))
    digest = _hash(path)
    with pytest.raises((OSError, ValueError)) as info:
        load_model(path)
    _check_names_file(info, path, cause=Exception)
    assert _hash(path) == digest


def test_good_files_untouched_by_load(model_files):
    h5, saved = model_files
    digests = _hash(h5), _hash(saved)
    load_model(h5)
    assert (_hash(h5), _hash(saved)) == digests


def test_unregistered_custom_layer_h5(tmp_path):
    """An .h5 model with a user layer class that is not registered: Keras names the class."""
    model = _model_with(lambda x: UserLayer(name="mine")(x))
    path = str(tmp_path / "user.h5")
    model.save(path)
    digest = _hash(path)
    with pytest.raises(ValueError, match=r"Unknown layer: 'UserLayer'") as info:
        load_model(path)
    _check_names_file(info, path, cause=ValueError)
    assert _hash(path) == digest
    # registering it through custom_layers loads it
    loaded = load_model(path, custom_layers={"UserLayer": UserLayer})
    np.testing.assert_allclose(loaded(np.ones((1, 4))), model(np.ones((1, 4))), rtol=1e-6)


def test_unregistered_custom_layer_savedmodel(tmp_path):
    """A SavedModel with an unregistered user layer loads as a revived layer (Keras restores
    its traced call); quantize() then reports that layer as unsupported, by name."""
    model = _model_with(lambda x: UserLayer(name="mine")(x))
    path = str(tmp_path / "user_sm")
    model.save(path, save_format="tf")
    digest = _hash(path)
    loaded = load_model(path)
    assert _hash(path) == digest
    with pytest.raises(ValueError, match=r"unsupported layers mine \("):
        quantize(loaded, samples=np.ones((2, 4), np.float32))


# -- ONNX ----------------------------------------------------------------------------------

def test_onnx_model_failing_checker():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph)
    serialized = model.SerializeToString()
    with pytest.raises(ValueError, match=r"valid ONNX model; onnx.checker reported: .*'z'"):
        quantize(model)
    assert model.SerializeToString() == serialized
    assert isinstance(model, onnx.ModelProto)


def test_onnx_q_config_rejected():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(ValueError, match="q_config=None for an ONNX model"):
        quantize(helper.make_model(graph), q_config={"x": {}})
