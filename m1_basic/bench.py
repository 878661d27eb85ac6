"""m1 benchmark: single-request latency of our engine vs transformers' generate, same run.

    python bench.py            # the repo's tiny model on this machine
    python bench.py --dummy-weights --model Qwen/Qwen3-0.6B --input-len 128 --output-len 256
Extra arguments go to benchmarks/latency_test.py.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    has_tiny = (ROOT / "models" / "folo-tiny" / "config.json").is_file()
    defaults = (
        ["--model", "folo-tiny"] if has_tiny else ["--model", "Qwen/Qwen3-0.6B", "--dummy-weights"]
    )
    args = sys.argv[1:] or defaults + ["--input-len", "32", "--output-len", "32", "--hf"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latency_test.py"), "--milestone", "m1", *args]
    sys.exit(subprocess.call(cmd))
