"""m5 benchmark: prefill/decode interference, m4 (whole-prompt prefill) vs m5 (chunked, one token
budget at 512 / 2048 / 8192), each milestone in its own process, then one merged JSON and a plot.

Scenario A: 64 requests with 128-token prompts decode; one 16k-token prompt (then four 8k prompts)
arrives. Background ITL p50 / p99 / max inside the injection window, and the long prompts' TTFT.
Scenario B: Poisson arrivals, 10% of the prompts 8k tokens: short-prompt TTFT, threshold off and on.

    python bench.py                                   # a CPU smoke test on the repo's tiny model
    python bench.py --out-dir /tmp/m5 --model Qwen/Qwen3-0.6B --dummy-weights      # on a GPU
Writes OUT_DIR/m5_interference_{m4,m5}.json, m5_interference.json (merged) and m5_interference.png.
Other arguments go to benchmarks/interference_test.py.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = str(ROOT / "benchmarks" / "interference_test.py")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "folovllm_m5_bench"))
    ap.add_argument("--preset", default=None, help="gpu | cpu (default: gpu when CUDA is there)")
    args, rest = ap.parse_known_args()
    if args.preset is None:
        import torch

        args.preset = "gpu" if torch.cuda.is_available() else "cpu"
    if not any(a == "--model" for a in rest):
        has_tiny = (ROOT / "models" / "folo-tiny" / "config.json").is_file()
        model = ["--model", "folo-tiny"] if has_tiny else ["--model", "Qwen/Qwen3-0.6B"]
        rest = model + ([] if has_tiny else ["--dummy-weights"]) + rest
    out = Path(args.out_dir)
    parts = []
    for m in ("m4", "m5"):
        path = out / f"m5_interference_{m}.json"
        cmd = [sys.executable, TEST, "--milestone", m, "--preset", args.preset, "--out", str(path)]
        if subprocess.call(cmd + rest) != 0:
            sys.exit(f"{m} run failed")
        parts.append(str(path))
    merged = [str(out / "m5_interference.json"), "--plot", str(out / "m5_interference.png")]
    sys.exit(subprocess.call([sys.executable, TEST, "--merge", *parts, "--out", *merged]))
