"""benchmarks/deployment.py in its quick form (the untrained digits CNN, one variant), in
process, so that the benchmark cannot rot."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module():
    spec = importlib.util.spec_from_file_location(
        "deployment", os.path.join(ROOT, "benchmarks", "deployment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_deployment_row():
    deployment = _module()
    (row,) = deployment.run_architecture("digits_cnn", ["per-tensor"], quick=True, repeats=1,
                                         exact_repeats=1)
    assert "error" not in row, row.get("error")
    assert row["exact_bit_exact"] is True
    assert row["qdq_fallbacks"] == [] and row["qdq_nodes"] < row["exact_nodes"]
    # onnxruntime runs the QDQ convolutions and the Dense as int8 kernels
    assert row["ort_ops"].get("QLinearConv") == 4 and "QGemm" in row["ort_ops"]
    assert row["qdq_match_last_8bit"]["within_one_step"] >= 0.999
    assert row["qdq_match"]["argmax_agreement"] == 1.0
    for key in ("float_tf_s", "exact_onnx_s", "qdq_onnx_s", "exact_onnx_ratio",
                "qdq_onnx_ratio"):
        assert row[key] > 0, key
    table = deployment.format_table([row])
    assert "| digits_cnn | per-tensor |" in table and "yes" in table
