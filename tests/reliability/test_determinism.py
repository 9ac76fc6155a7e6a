"""Determinism: the same model, samples and seed give bit-identical quantized models and
outputs, across runs in a process and across processes."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
import determinism_script  # noqa: E402


def test_same_digest_across_runs():
    assert determinism_script.digest() == determinism_script.digest()


def _subprocess_digest():
    script = os.path.join(HERE, "determinism_script.py")
    out = subprocess.run([sys.executable, script], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("DIGEST")][0]


@pytest.mark.slow
def test_same_digest_across_processes():
    first, second = _subprocess_digest(), _subprocess_digest()
    assert first == second
    assert determinism_script.digest() == first
