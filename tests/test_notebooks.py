"""The notebooks of ``notebooks/``: stripped of outputs in git, and each runs end to end.

Each notebook is executed with nbclient in a temporary folder (the files it writes land there)
and must show at least one figure.
"""
import os
import pathlib
import time

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
#: Wall-clock budget of one notebook (they take well under a minute on 2 idle cores).
TIMEOUT_S = 600


def test_notebooks_are_listed():
    assert NAMES == ["01_getting_started.ipynb", "02_qat_4bit.ipynb",
                     "03_custom_quantization.ipynb", "04_transformers.ipynb", "05_onnx.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_stripped(name):
    nbformat = pytest.importorskip("nbformat")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name
    sources = "\n".join(c.source for c in book.cells)
    assert 'matplotlib.use("Agg")' in sources
    assert "import tf_keras as keras" in sources


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(book, timeout=TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        start = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - start
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{name} shows no figure"
    print(f"{name}: {elapsed:.1f} s")
