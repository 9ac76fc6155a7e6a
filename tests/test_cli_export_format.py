"""``quantizeml export-onnx --format {exact,qdq} [--samples FILE]``: the node count, the full
ONNX check and the max difference against the Keras model (in-process, through ``main``)."""
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tf_keras as keras

from quantizeml.cli import main
from quantizeml.models import quantize


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_export_format")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2), name="inp")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, name="logits")(x)
    x = keras.layers.ReLU(name="out")(x)
    samples = np.random.default_rng(0).uniform(-1, 1, (16, 6, 6, 2)).astype(np.float32)
    qmodel = quantize(keras.Model(inputs, x), samples=samples, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy-h5 notice
        qmodel.save(tmp / "q.h5")
    np.savez(tmp / "data.npz", x=samples)
    np.save(tmp / "data.npy", samples[:4])
    return tmp, qmodel


def _printed(out, key):
    match = re.search(rf"^{re.escape(key)}: (.*)$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def _check(out, path, qmodel, x, fmt):
    """The printed lines against the saved file, onnxruntime and the Keras model."""
    proto = onnx.load(path)
    assert _printed(out, "format") == fmt
    assert int(_printed(out, "nodes")) == len(proto.graph.node)
    assert _printed(out, "check_model(full_check=True)") == "passed"
    assert ("QuantizeLinear" in {n.op_type for n in proto.graph.node}) == (fmt == "qdq")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(got.astype(np.float64) - qmodel(x).numpy())))
    printed = float(_printed(out, f"max |ONNX - Keras| on {len(x)} samples"))
    assert printed == pytest.approx(diff, rel=1e-5, abs=1e-12)
    return printed


def test_export_onnx_qdq_prints_nodes_check_and_difference(files, capsys):
    tmp, qmodel = files
    path = tmp / "qdq.onnx"
    assert main(["export-onnx", str(tmp / "q.h5"), "-o", str(path), "--format", "qdq",
                 "--samples", str(tmp / "data.npz")]) == 0
    printed = _check(capsys.readouterr().out, path, qmodel, np.load(tmp / "data.npz")["x"],
                     "qdq")
    # within one output step (the last ReLU's 8-bit grid, per channel)
    frac = np.asarray(qmodel.get_layer("out").out_quantizer.frac_bits)
    assert printed <= 2.0 ** -float(frac.min()) + 1e-7


def test_export_onnx_exact_is_the_default_and_exact(files, capsys):
    tmp, qmodel = files
    path = tmp / "exact.onnx"
    assert main(["export-onnx", str(tmp / "q.h5"), "-o", str(path), "--samples",
                 str(tmp / "data.npy")]) == 0
    assert _check(capsys.readouterr().out, path, qmodel, np.load(tmp / "data.npy"),
                  "exact") == 0


def test_export_onnx_format_errors(files, capsys):
    tmp, _ = files
    with pytest.raises(SystemExit) as e:
        main(["export-onnx", str(tmp / "q.h5"), "-o", str(tmp / "b.onnx"), "--format", "int8"])
    assert e.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err
    assert main(["export-onnx", str(tmp / "q.h5"), "-o", str(tmp / "m.onnx"), "--samples",
                 str(tmp / "missing.npz")]) == 1
    assert "no such file" in capsys.readouterr().err
