"""benchmarks/run.py --quick, through the real command, so that the benchmark cannot rot."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "run.py")


@pytest.mark.slow
def test_quick_benchmark(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, SCRIPT, "--quick", "--output", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["config"]["quick"] is True
    (work,) = results["workloads"]
    assert work["workload"] == "digits_cnn" and "error" not in work

    q = work["quantize"]
    for key in ("quantize_s", "first_quantize_s", "calibration_samples_per_s",
                "ratio_vs_float_predict", "peak_rss_mb"):
        assert q[key] is not None and q[key] > 0, key
    inference = work["inference"]
    for mode in ("eager", "predict"):
        for key in ("float_s", "quantized_s", "ratio", "float_samples_per_s",
                    "quantized_samples_per_s", "peak_rss_mb"):
            assert inference[mode][key] > 0, (mode, key)
    xla = inference["xla"]
    assert xla["supported"] is None and "skipped" in xla  # --quick skips the XLA compile
    recording = inference["recording"]
    for key in ("eager_speedup", "eager_ratio_after", "predict_speedup", "peak_rss_mb"):
        assert recording[key] > 0, key
    assert work["train_step"]["ratio"] > 0 and work["train_step"]["peak_rss_mb"] > 0

    rows = {r["model"].split(" (")[0]: r for r in work["accuracy"]}
    assert set(rows) == {"float", "8/8 PTQ", "4/4 PTQ", "4/4 QAT", "binary"}
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["peak_rss_mb"] > 0
    assert rows["binary"]["weights_bytes"] < rows["4/4 PTQ"]["weights_bytes"] \
        < rows["8/8 PTQ"]["weights_bytes"] < rows["float"]["weights_bytes"]

    assert {t["measure"] for t in results["targets"]} >= {
        "eager quantized/float", "predict quantized/float", "QAT step quantized/float",
        "quantize+calibrate (s)"}
    # the table is printed
    for text in ("quantize+calib", "eager call", "predict", "train step", "8/8 PTQ",
                 "4/4 QAT", "binary", "targets (issue #8)"):
        assert text in result.stdout, text
