"""m8 benchmark: m7 (the engine without the fast path) vs m8 on the same workload, same run.

    python bench.py             # CPU: the repo's tiny model, a small workload, synchronous (the
                                # host work per step is what differs on a CPU)
    python bench.py --gpu       # GPU: Qwen3-0.6B shape with dummy weights, nano-vllm's workload
                                # for both, then batch-1 latency of both (the floor's two ends)
Extra arguments go to benchmarks/throughput_test.py (through benchmarks/compare.py).
``python benchmarks/suite.py m8`` runs the GPU checks first and writes the canonical files.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script: str, *args: str) -> int:
    return subprocess.call([sys.executable, str(BENCH / script), *args])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--gpu"]:
        model = ["--model", "Qwen/Qwen3-0.6B", "--dummy-weights"]
        rc = run("compare.py", "--milestones", "m7", "m8", "--", *model, *args[1:])
        for m in ("m7", "m8"):
            rc |= run("latency_test.py", "--milestone", m, *model, "--input-len", "128",
                      "--output-len", "256")  # fmt: skip
        sys.exit(rc)
    has_tiny = (ROOT / "models" / "folo-tiny" / "config.json").is_file()
    model = (
        ["--model", "folo-tiny"] if has_tiny else ["--model", "Qwen/Qwen3-0.6B", "--dummy-weights"]
    )
    small = ["--num-seqs", "24", "--min-input-len", "16", "--max-input-len", "64"]
    small += ["--min-output-len", "16", "--max-output-len", "64", "--vocab-cap", "1000"]
    sys.exit(run("compare.py", "--milestones", "m7", "m8", "--", *(args or model + small)))
