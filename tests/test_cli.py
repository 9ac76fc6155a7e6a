"""The ``quantizeml`` command line: quantize, check, config, analyze, export-onnx and errors.

The end-to-end tests run the real command in subprocesses (each pays the TensorFlow import);
argument and error handling is also checked in-process through ``main(argv)``.
"""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tf_keras as keras

from quantizeml.cli import main

SUBCOMMANDS = ["demo", "quantize", "check", "config", "analyze", "export-onnx"]


def _run(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "quantizeml.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _tiny_model():
    inputs = keras.Input((6, 6, 1), name="input")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy-h5 notice
        _tiny_model().save(tmp / "float.h5")
    np.savez(tmp / "data.npz", x=np.random.RandomState(0).rand(32, 6, 6, 1).astype(np.float32))
    (tmp / "not_a_model.h5").write_text("hello")
    return tmp


def _last_line_error(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines, "expected an error message"
    assert "Traceback" not in text
    return lines[-1]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: quantizeml {command}")


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "quantize" in capsys.readouterr().out


def test_bad_flag_is_one_line(capsys, files):
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(files / "float.h5"), "-o", "x.h5", "--weight-bitz", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unrecognized arguments: --weight-bitz" in err
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(files / "float.h5")])   # -o is required
    assert e.value.code == 2
    assert "-o/--output" in capsys.readouterr().err


def test_errors_in_process(capsys, files):
    assert main(["check", str(files / "missing.h5")]) == 1
    err = capsys.readouterr().err
    assert err == f"quantizeml check: error: MODEL {str(files / 'missing.h5')!r}: no such " \
                  "file or directory\n"
    assert main(["config", str(files / "not_a_model.h5")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a Keras model" in err
    assert main(["config", str(files / "float.h5")]) == 1
    assert "is not a quantized model" in capsys.readouterr().err
    assert main(["quantize", str(files / "float.h5"), "-o", str(files / "q.h5"),
                 "--weight-bits", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weight_bits" in err
    assert main(["quantize", str(files / "float.h5"), "-o", str(files / "q.h5"),
                 "--samples", str(files / "none.npz")]) == 1
    assert "--samples" in capsys.readouterr().err
    assert main(["analyze", str(files / "float.h5"), str(files / "float.h5"),
                 "--samples", str(files / "data.npz")]) == 1
    assert "QMODEL" in capsys.readouterr().err
    with pytest.raises(Exception):
        main(["--debug", "check", str(files / "missing.h5")])


def test_quantize_and_export_in_process(capsys, files, tmp_path):
    """quantize then export-onnx through main(); the export matches the Keras model (or, in an
    installation without the exporter, export-onnx reports it in one line)."""
    qpath = tmp_path / "q.h5"
    assert main(["quantize", str(files / "float.h5"), "-o", str(qpath), "--samples",
                 str(files / "data.npz"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    out = tmp_path / "m.onnx"
    try:
        import quantizeml.onnx_support.export  # noqa: F401
    except ImportError:
        assert main(["export-onnx", str(qpath), "-o", str(out)]) == 1
        assert "ONNX export is not available" in capsys.readouterr().err
        return
    assert main(["export-onnx", str(qpath), "-o", str(out)]) == 0
    ort = pytest.importorskip("onnxruntime")
    from quantizeml.models import load_model
    x = np.load(files / "data.npz")["x"][:8]
    expected = load_model(str(qpath)).predict(x, verbose=0)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_missing_file_subprocess(files):
    """The real command: one line on stderr, no traceback, a non-zero exit."""
    result = _run("check", str(files / "missing.h5"))
    assert result.returncode == 1
    assert _last_line_error(result.stderr).startswith("quantizeml check: error: MODEL")
    assert result.stderr.count("quantizeml") == 1


@pytest.mark.slow
def test_end_to_end(files):
    qpath = files / "q.h5"
    result = _run("quantize", str(files / "float.h5"), "-o", str(qpath), "--weight-bits", "4",
                  "--activation-bits", "6", "--samples", str(files / "data.npz"))
    assert result.returncode == 0, result.stderr
    assert qpath.exists()
    assert "Quantized model saved" in result.stderr
    assert "/batch" in result.stdout   # the calibration progress bar (Keras Progbar)

    result = _run("config", str(qpath))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["conv"]["weight_quantizer"]["bitwidth"] == 4
    assert config["relu"]["output_quantizer"]["bitwidth"] == 6

    # re-quantize from the dumped q_config, with random samples, at 8/8 otherwise
    (files / "q.json").write_text(result.stdout)
    result = _run("quantize", str(files / "float.h5"), "-o", str(files / "q2.h5"), "--config",
                  str(files / "q.json"), "--num-samples", "16", "-q")
    assert result.returncode == 0, result.stderr
    assert not result.stdout

    result = _run("check", str(qpath), "--samples", str(files / "data.npz"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()   # issues, one per line, or 'no issue found'

    png = files / "sqnr.png"
    result = _run("analyze", str(files / "float.h5"), str(qpath), "--samples",
                  str(files / "data.npz"), "--plot", str(png), "--json",
                  str(files / "table.json"))
    assert result.returncode == 0, result.stderr
    assert "SQNR" in result.stdout and "relu" in result.stdout
    assert png.stat().st_size > 1000
    table = json.loads((files / "table.json").read_text())
    assert [r["layer"] for r in table] == ["conv", "relu", "pool", "logits"]

    result = _run("export-onnx", str(qpath), "-o", str(files / "q.onnx"))
    try:
        import quantizeml.onnx_support.export  # noqa: F401
    except ImportError:
        assert result.returncode == 1
        assert "ONNX export is not available" in _last_line_error(result.stderr)
    else:
        assert result.returncode == 0, result.stderr
        assert (files / "q.onnx").stat().st_size > 0
