"""m2 benchmark: m1 (one request at a time) vs m2 (continuous batching), same workload, same run.

    python bench.py                      # the repo's tiny model on this machine
    python bench.py --model Qwen/Qwen3-0.6B --dummy-weights --num-seqs 32 --max-input-len 256 --max-output-len 256
Extra arguments go to benchmarks/throughput_test.py (through benchmarks/compare.py).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    has_tiny = (ROOT / "models" / "folo-tiny" / "config.json").is_file()
    model = (
        ["--model", "folo-tiny"] if has_tiny else ["--model", "Qwen/Qwen3-0.6B", "--dummy-weights"]
    )
    small = [
        "--num-seqs",
        "16",
        "--min-input-len",
        "16",
        "--max-input-len",
        "64",
        "--min-output-len",
        "16",
        "--max-output-len",
        "64",
    ]
    if not has_tiny:
        small += ["--vocab-cap", "1000"]
    args = sys.argv[1:] or model + small + (["--vocab-cap", "1000"] if has_tiny else [])
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "compare.py"),
        "--milestones",
        "m1",
        "m2",
        "--",
        *args,
    ]
    sys.exit(subprocess.call(cmd))
