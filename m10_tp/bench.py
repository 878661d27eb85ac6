"""m9 benchmark: the server against the offline engine on the same workload, same run.

    python bench.py             # CPU: the repo's tiny model, a few short requests
    python bench.py --gpu       # GPU: Qwen3-0.6B shape with dummy weights, nano-vllm's workload:
                                # Poisson arrivals at several rates and a concurrency sweep
Extra arguments go to benchmarks/serve_bench.py.
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
        sys.exit(run("serve_bench.py", *model, *args[1:]))
    has_tiny = (ROOT / "models" / "folo-tiny" / "config.json").is_file()
    model = (
        ["--model", "folo-tiny"] if has_tiny else ["--model", "Qwen/Qwen3-0.6B", "--dummy-weights"]
    )
    small = ["--num-seqs", "24", "--min-input-len", "16", "--max-input-len", "64"]
    small += ["--min-output-len", "16", "--max-output-len", "64", "--vocab-cap", "1000"]
    small += ["--request-rates", "4,inf", "--concurrency", "1,8"]
    sys.exit(run("serve_bench.py", *(args or model + small)))
