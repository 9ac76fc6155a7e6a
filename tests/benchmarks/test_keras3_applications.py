"""benchmarks/keras3_applications.py: a Keras 3 application quantizes (the model itself given to
quantize()) into an all-integer model that exports bit-exactly, and a failure is tabulated."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # it imports architectures.py
    spec = importlib.util.spec_from_file_location(
        "keras3_applications", os.path.join(ROOT, "benchmarks", "keras3_applications.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


k3_apps = _module()


def test_keras3_mobilenet_measured():
    row = k3_apps.measure("MobileNet", calibration=32, held_out=16)
    assert "error" not in row, row
    assert row["integer"] and row["float_islands"] == [], row
    assert row["onnx_bit_exact"], row
    # random weights at 32x32 (2.5 dB here): the logits still follow the float ones
    assert row["sqnr_db"] > 0 and row["correlation"] > 0.5, row
    assert row["keras"].startswith("3."), row


def test_table_rows():
    rows = [{"name": "VGG16", "input_size": 32, "error": "ValueError: no"},
            {"name": "MobileNet", "input_size": 32, "quantize_s": 1.0, "integer": True,
             "sqnr_db": 3.25, "argmax_agreement": 0.5, "onnx_bit_exact": True,
             "onnx_nodes": 7}]
    lines = k3_apps.markdown(rows).splitlines()
    assert lines[2] == "| VGG16 (32) | fails: ValueError: no | | | | |"
    assert lines[3] == "| MobileNet (32) | 1.0 | yes | 3.2 | 0.50 | yes (7) |"
