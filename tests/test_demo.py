"""The main job: `quantizeml demo` end to end, through the real command, and what makes the
README's first command (``pip install -e . && quantizeml demo``) work on a fresh machine."""
import ast
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras

from quantizeml.demo import _FitProgress, format_table
from quantizeml.progress import ProgressBar
from tests.test_cli import BAR, ROOT, TF_LOG_LINE, _command, _user_env


@pytest.mark.slow
def test_demo_command(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [*_command(), "demo", "-o", str(out), "--epochs", "2", "--qat-epochs", "1"],
        capture_output=True, text=True, timeout=600, env=_user_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8/8 PTQ" in result.stdout and "4/4 QAT" in result.stdout
    # the table says what it shows
    assert "Results on the 540 test digits" in result.stdout
    assert "top-1 accuracy on the 540 test digits" in result.stdout
    assert "bytes of the weights" in result.stdout
    # progress on stderr: a line per stage and per epoch (a pipe: no bar), no TensorFlow log
    for line in ("[1/4] Training", "epoch 1/2:", "epoch 2/2:", "[2/4] Quantizing at 8/8",
                 "[3/4] Quantizing at 4/4", "[4/4] Quantization-aware training", "epoch 1/1:"):
        assert line in result.stderr, (line, result.stderr)
    assert not BAR.search(result.stderr + result.stdout)
    assert not TF_LOG_LINE.search(result.stderr), result.stderr
    rows = json.loads((out / "results.json").read_text())
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"float", "8/8 PTQ", "4/4 PTQ", "4/4 QAT"}
    assert by_model["8/8 PTQ"]["accuracy"] >= by_model["float"]["accuracy"] - 0.02
    assert by_model["4/4 PTQ"]["weights_bytes"] < by_model["8/8 PTQ"]["weights_bytes"] \
        < by_model["float"]["weights_bytes"]
    for name in ("float.h5", "q8.h5", "q4_qat.h5", "q8_q_config.json", "q4_qat_q_config.json"):
        assert os.path.exists(out / name), name
    config = json.loads((out / "q8_q_config.json").read_text())
    assert any("weight_quantizer" in c for c in config.values())


def test_cli_version(capsys):
    from quantizeml import __version__
    from quantizeml.cli import build_parser
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"quantizeml {__version__}"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_fit_progress(terminal):
    """Training progress: a bar per batch on a terminal; a line per epoch elsewhere."""
    stream = _Terminal() if terminal else io.StringIO()
    lines = []
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x, y = np.zeros((64, 3), np.float32), np.zeros(64, np.int64)
    with ProgressBar(2 * 2, "  training", stream=stream) as bar:
        model.fit(x, y, batch_size=32, epochs=2, verbose=0,
                  callbacks=[_FitProgress(bar, 2, lines.append)])
    if terminal:
        assert "4/4 epoch 2/2, loss" in stream.getvalue()
        assert not lines
    else:
        assert stream.getvalue() == ""
        assert [line.split(":")[0] for line in lines] == ["  epoch 1/2", "  epoch 2/2"]


def test_format_table_explains_rows_and_columns():
    rows = [{"model": "float", "accuracy": 0.97, "weights_bytes": 100, "storage": "float32"},
            {"model": "4/4 QAT", "accuracy": 0.96, "weights_bytes": 20,
             "storage": "int4_packed"}]
    text = format_table(rows, num_test=540, num_train=1257, qat_epochs=3)
    assert "Results on the 540 test digits" in text
    assert re.search(r"^4/4 QAT +0\.9600 +20 B +int4 kernels, 2 weights per byte$", text, re.M)
    for word in ("float:", "W/A PTQ", "4/4 QAT:", "3 epochs", "1257 training images",
                 "accuracy  top-1 accuracy on the 540 test digits", "weights   bytes"):
        assert word in text, word


def _requirement_names(setup_py, keyword):
    """The distribution names listed under ``keyword`` (install_requires) in setup.py."""
    tree = ast.parse(setup_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == keyword:
            specs = ast.literal_eval(node.value)
            return {_canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}
    raise AssertionError(f"setup.py has no {keyword}")


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _optional(node, parents):
    """Whether an import sits in a ``try`` that handles ImportError (an optional dependency)."""
    for parent in parents.get(node, ()):
        if isinstance(parent, ast.Try) and any(
                h.type is not None and any(name in ast.unparse(h.type) for name in
                                           ("ImportError", "ModuleNotFoundError"))
                for h in parent.handlers):
            return True
    return False


def _third_party_imports(module, seen=None, found=None):
    """Top-level names of the non-optional third-party imports that ``module`` can reach.

    Follows quantizeml's own imports (module level and inside functions: the demo calls them)
    and the parent packages that importing a module runs.
    """
    seen = set() if seen is None else seen
    found = set() if found is None else found
    parts = module.split(".")
    for i in range(1, len(parts) + 1):   # importing a.b.c runs a/__init__ and a/b/__init__
        name = ".".join(parts[:i])
        if name in seen:
            continue
        seen.add(name)
        path = ROOT.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents.setdefault(child, []).extend([node, *parents.get(node, [])])
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                    targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
                else:
                    targets = [node.module]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top == "quantizeml":
                    _third_party_imports(target, seen, found)
                elif top not in sys.stdlib_module_names and not _optional(node, parents):
                    found.add(top)
    return found


def _uncovered(required):
    """The modules the demo (and the command) can import that no ``required`` distribution
    provides, with the distributions that do."""
    modules = _third_party_imports("quantizeml.demo") | _third_party_imports("quantizeml.cli")
    assert "sklearn" in modules   # the digits data set
    providers = importlib.metadata.packages_distributions()
    return {m: providers.get(m, [m]) for m in modules
            if not {_canonical(d) for d in providers.get(m, [m])} & required}


def test_install_requires_cover_what_the_demo_imports():
    """`pip install -e . && quantizeml demo` needs no extra: every third-party module the demo
    can import (optional ones, imported in a try/except ImportError, aside) is installed by a
    distribution in install_requires."""
    missing = _uncovered(_requirement_names(_repo_file("setup.py"), "install_requires"))
    assert not missing, f"add to install_requires in setup.py: {missing}"


def test_install_requires_check_can_fail():
    required = _requirement_names(_repo_file("setup.py"), "install_requires")
    assert "sklearn" in _uncovered(required - {"scikit-learn"})


def _repo_file(*parts):
    """A file of the checkout, or a skip where the tests run without it (a Bazel sandbox)."""
    path = ROOT.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not in this test's files")
    return path


def _readme_first_command():
    text = _repo_file("README.md").read_text()
    block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M).group(1)
    return next(line for line in block.splitlines() if line.strip())


def test_readme_first_command_is_the_demo():
    command = _readme_first_command()
    assert command.split("#")[0].split() == ["pip", "install", "-e", ".", "&&", "quantizeml",
                                             "demo"]


def test_ci_runs_the_readme_first_command():
    """.ci/run runs the README's first command verbatim in a fresh venv, before the tests."""
    ci = _repo_file(".ci", "run")
    result = subprocess.run(["bash", str(ci), "--print-demo-command"], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == _readme_first_command()
    script = ci.read_text()
    venv = script.index('python3 -m venv "${demo_venv}/venv"')
    run = script.index('bash -eo pipefail -c "${demo_cmd}"')
    assert venv < run < script.index("python3 -m pytest -q -n 2")
    assert "-- demo venv:" in script
