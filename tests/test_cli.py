"""The ``quantizeml`` command line: quantize, check, config, analyze, export-onnx and errors.

The end-to-end tests run the real command in subprocesses (each pays the TensorFlow import),
started as the console script starts it (``quantizeml_launcher``), with the environment of a
user who did not set ``TF_CPP_MIN_LOG_LEVEL``; argument and error handling is also checked
in-process through ``main(argv)``.
"""
import ast
import importlib.util
import io
import json
import os
import pathlib
import re
import select
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
import tf_keras as keras

import quantizeml_launcher
from quantizeml.cli import main
from quantizeml.progress import ProgressBar

SUBCOMMANDS = ["demo", "quantize", "check", "config", "analyze", "export-onnx"]
ROOT = pathlib.Path(__file__).resolve().parents[1]

# TensorFlow's C++ log lines: absl format (TF >= 2.16), the classic format, and the start-up
# notices that come before either.
TF_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|absl::InitializeLog|cpu_feature_guard|oneDNN custom operations|cuda_platform|cudart_stub",
    re.MULTILINE)
# What a progress bar leaves in a stream: our bar, Keras's bar, or a carriage return.
BAR = re.compile(r"\[[#.]{10,}\]|\[=+[>.]*\]|\r")


def _command():
    """The console script's command line: quantizeml_launcher, run as the script runs it."""
    return [sys.executable, "-m", "quantizeml_launcher"]


def _user_env(**extra):
    """The environment of a user who did not ask for TensorFlow's logs, and no GPU."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    if (ROOT / "quantizeml_launcher.py").exists():   # this checkout, installed or not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _run(*args, timeout=300, env=None):
    return subprocess.run([*_command(), *args], capture_output=True, text=True,
                          timeout=timeout, env=env or _user_env(), stdin=subprocess.DEVNULL)


def _run_on_terminal(*args, timeout=300):
    """Runs the command with stderr on a pseudo-terminal; returns (exit code, stdout, stderr)."""
    master, slave = os.openpty()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([*_command(), *args], stdout=out, stderr=slave,
                                stdin=subprocess.DEVNULL, env=_user_env())
        os.close(slave)
        chunks, deadline = [], time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1.0)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:   # EIO: the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        out.seek(0)
        stdout = out.read().decode()
    return code, stdout, b"".join(chunks).decode(errors="replace")


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


def test_analyze_sensitivity_in_process(capsys, files, tmp_path):
    """analyze --sensitivity prints one row per layer with weights, as layer_sensitivity
    returns it on the QMODEL's q_config, and plots it."""
    qpath = tmp_path / "q.h5"
    assert main(["quantize", str(files / "float.h5"), "-o", str(qpath), "--samples",
                 str(files / "data.npz"), "-q"]) == 0
    png = tmp_path / "sensitivity.png"
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    plot = ["--sensitivity-plot", str(png)] if has_matplotlib else []
    assert main(["analyze", str(files / "float.h5"), str(qpath), "--samples",
                 str(files / "data.npz"), "--sensitivity", "2", *plot, "-q"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Sensitivity"):].splitlines()
    rows = {line.split()[0]: line.split() for line in section[3:] if line.strip()}
    assert set(rows) == {"conv", "logits"}
    from quantizeml.models import dump_config, layer_sensitivity, load_model
    x = np.load(files / "data.npz")["x"]
    table = layer_sensitivity(keras.models.load_model(files / "float.h5", compile=False), x,
                              low_bits=2, q_config=dump_config(load_model(str(qpath))))
    for name, row in table.items():
        assert rows[name][1] == "2" and float(rows[name][2]) == round(row["sqnr_db"], 2)
    if has_matplotlib:
        assert png.stat().st_size > 1000


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
    # in a pipe: stage lines on stderr, but no progress bar anywhere, nothing on stdout
    assert "Quantizing (weights 4 bits, activations 6 bits)" in result.stderr
    assert not BAR.search(result.stderr) and not result.stdout
    assert not TF_LOG_LINE.search(result.stderr), result.stderr

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
    assert not BAR.search(result.stdout + result.stderr)
    assert not TF_LOG_LINE.search(result.stderr), result.stderr
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
        assert not BAR.search(result.stdout + result.stderr)
        assert not TF_LOG_LINE.search(result.stderr), result.stderr


def test_no_tensorflow_logs_on_stderr(files):
    """A user who did not ask for TensorFlow's logs sees the command's one line, nothing else."""
    result = _run("check", str(files / "missing.h5"))
    assert result.returncode == 1
    assert result.stderr == f"quantizeml check: error: MODEL {str(files / 'missing.h5')!r}: " \
                            "no such file or directory\n"


def test_debug_shows_tensorflow_logs(files):
    """--debug keeps TensorFlow's start-up lines (and the traceback); so does a user's level."""
    result = _run("--debug", "check", str(files / "missing.h5"))
    assert result.returncode != 0
    assert TF_LOG_LINE.search(result.stderr), result.stderr
    assert "Traceback" in result.stderr


@pytest.mark.parametrize("argv, environ, expected", [
    ([], {}, False),
    (["check", "q.h5"], {}, False),
    (["--debug", "check", "q.h5"], {}, True),
    (["check", "--debug"], {}, False),                     # not an option of the commands
    (["check", "q.h5"], {"TF_CPP_MIN_LOG_LEVEL": "0"}, True),
    (["check", "q.h5"], {"TF_CPP_MIN_LOG_LEVEL": "2"}, True),
    (["check", "q.h5"], {"TF_CPP_MIN_LOG_LEVEL": "3"}, False),
], ids=["nothing", "command", "debug", "debug-after-command", "level-0", "level-2", "level-3"])
def test_wants_tensorflow_logs(argv, environ, expected):
    assert quantizeml_launcher.wants_tensorflow_logs(argv, environ) is expected


def test_debug_flag_is_not_abbreviated(capsys):
    """The launcher reads --debug before parsing: argparse must not take --deb for it."""
    with pytest.raises(SystemExit) as e:
        main(["--deb", "config", "q.h5"])
    assert e.value.code == 2


def test_stderr_silenced_covers_file_descriptor_2():
    """What C++ writes to fd 2 is gone while silenced, and fd 2 works again afterwards."""
    code = ("import os, quantizeml_launcher as l\n"
            "with l.stderr_silenced():\n"
            "    os.write(2, b'hidden\\n')\n"
            "os.write(2, b'shown\\n')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_user_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "shown\n"


def test_cli_imports_no_tensorflow_at_module_level():
    """cli.py and the launcher import TensorFlow only inside functions."""
    for path in (ROOT / "quantizeml" / "cli.py", pathlib.Path(quantizeml_launcher.__file__)):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] in ("tensorflow", "tf_keras", "quantizeml")
                           and not n.endswith("version") for n in names), (path, names)


def test_imports_leave_environment_alone():
    """``import quantizeml`` (and the launcher, before main) change no environment variable."""
    code = ("import os, sys\n"
            "before = dict(os.environ)\n"
            "import quantizeml_launcher\n"
            "assert 'tensorflow' not in sys.modules\n"
            "import quantizeml, quantizeml.cli, quantizeml.progress\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_user_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_a_terminal_only():
    term = _Terminal()
    with ProgressBar(4, "work", stream=term) as bar:
        bar.update(1, "step one")
        bar.write("a line")
        bar.update(3, "done")
    text = term.getvalue()
    assert "\rwork [" + "#" * 7 + "." * 23 + "] 1/4 step one" in text
    assert "a line\n" in text and "4/4 done" in text
    assert text.endswith("\r\x1b[K")   # erased on close
    pipe = io.StringIO()
    with ProgressBar(4, "work", stream=pipe, tick=0.01) as bar:
        bar.update(2)
        bar.write("a line")
        time.sleep(0.05)
    assert pipe.getvalue() == "a line\n"


def test_progress_bar_on_terminal_not_in_pipe(files, tmp_path):
    """On a terminal quantize draws its bar on stderr; stdout gets nothing."""
    code, stdout, stderr = _run_on_terminal(
        "quantize", str(files / "float.h5"), "-o", str(tmp_path / "q.h5"), "--num-samples", "16")
    assert code == 0, stderr
    assert re.search(r"\rquantize \[[#.]+\] \d/3", stderr), stderr
    assert "Quantized model saved" in stderr
    assert not stdout
    assert not TF_LOG_LINE.search(stderr), stderr


def test_quantize_float_fallback_in_process(capsys, tmp_path):
    """A layer without a quantized twin mid-model: ``quantize`` stops in one line naming it
    and the switch; with ``--float-fallback`` it is kept float (a float island)."""
    inputs = keras.Input((6, 6, 1), name="input")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.UnitNormalization(name="unit")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 1)(x))
    path = tmp_path / "float.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.Model(inputs, keras.layers.Dense(3, name="logits")(x)).save(path)
    np.savez(tmp_path / "data.npz", x=np.random.RandomState(0).rand(16, 6, 6, 1).astype("f4"))
    argv = ["quantize", str(path), "-o", str(tmp_path / "q.h5"), "--samples",
            str(tmp_path / "data.npz"), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unit (UnitNormalization)" in err and "float_fallback" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv + ["--float-fallback"]) == 0
    from quantizeml.models import float_islands, load_model
    assert float_islands(load_model(str(tmp_path / "q.h5"))) == ["unit"]
