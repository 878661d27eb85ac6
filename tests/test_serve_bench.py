"""benchmarks/serve_bench.py runs end to end on a CPU: folo-tiny, a few short requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "folo-tiny", "--num-seqs", "6", "--min-input-len", "8", "--max-input-len", "24",
         "--min-output-len", "4", "--max-output-len", "10", "--vocab-cap", "1000"]  # fmt: skip


def test_serve_bench_smoke(tmp_path):
    out = tmp_path / "serve.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), *SMALL,
           "--request-rates", "8,inf", "--concurrency", "2", "--out", str(out),
           "--plot", str(tmp_path / "rates.png")]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
    assert (tmp_path / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    assert result["offline"]["output_tokens_per_s"] > 0
    assert set(result["server"]) == {"rate_8", "rate_inf", "concurrency_2"}
    for point in result["server"].values():
        assert point["num_errors"] == 0 and point["num_requests"] == 6
        assert point["output_tokens"] == result["output_tokens"]  # ignore_eos: every token came
        assert 0 < point["ttft_p50_s"] <= point["ttft_p99_s"] <= point["e2e_p99_s"]
