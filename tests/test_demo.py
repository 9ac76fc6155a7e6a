"""The main job: `quantizeml demo` end to end, through the real command."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_command(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "quantizeml.cli", "demo", "-o", str(out), "--epochs", "4",
         "--qat-epochs", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8/8 PTQ" in result.stdout and "4/4 QAT" in result.stdout
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
