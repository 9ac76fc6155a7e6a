"""benchmarks/constructs.py: the hand-written constructs quantize to all-integer models that
export bit-exactly, and a construct without a twin records its error."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module():
    spec = importlib.util.spec_from_file_location(
        "constructs", os.path.join(ROOT, "benchmarks", "constructs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


constructs = _module()


@pytest.mark.parametrize("name", ["cbam", "keras_attention"])
def test_construct_measured(name):
    row = constructs.measure(name, "w8a8")
    assert "error" not in row, row
    assert row["integer"] and row["onnx_bit_exact"] and row["sqnr_db"] > 25, row


def test_failing_construct_recorded_and_table():
    row = constructs.measure("additive_attention", "w8a8")
    assert "unsupported layers" in row["error"]
    table = constructs.markdown([row], ["w8a8"])
    assert table.splitlines()[-1] == "| additive_attention | fails |"
