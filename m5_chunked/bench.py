"""m3 benchmark: m2 (contiguous rows) vs m3 (paged blocks) under the same KV memory, same run.

Reports KV utilization (used / reserved token slots), how many requests ran at once, preemptions
and throughput.

    python bench.py                      # the repo's tiny model on this machine
    python bench.py --model Qwen/Qwen3-0.6B --dummy-weights --kv-cache-memory-gb 8
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
    # 24 requests, lengths 16-64, and KV memory for about 8 full-length rows.
    small = ["--num-seqs", "24", "--min-input-len", "16", "--max-input-len", "64"]
    small += ["--min-output-len", "16", "--max-output-len", "64", "--vocab-cap", "1000"]
    kv_gb = 0.004 if has_tiny else 0.8
    args = sys.argv[1:] or model + small + ["--kv-cache-memory-gb", str(kv_gb)]
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "compare.py"),
        "--milestones",
        "m2",
        "m3",
        "--",
        *args,
    ]
    sys.exit(subprocess.call(cmd))
