"""``python -m folovllm`` as its own process: the entry point runs, and a bad model is one clear
line with exit status 2, not a traceback (the commands themselves are tested in-process)."""

import subprocess
import sys


def test_python_m_folovllm_reports_a_missing_model_in_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "folovllm", "info", "--model", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "error: model" in res.stderr and "Traceback" not in res.stderr
