"""Run one benchmark for several milestones (each in its own process) and compare them.

    python benchmarks/compare.py --milestones m1 m2 -- --num-seqs 32 --max-input-len 256
Everything after ``--`` goes to throughput_test.py. Writes a combined JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write_json  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestones", nargs="+", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.milestones:
            path = Path(tmp) / f"{m}.json"
            cmd = [
                sys.executable,
                str(HERE / "throughput_test.py"),
                "--milestone",
                m,
                "--out",
                str(path),
                *extra,
            ]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            results[m] = json.loads(path.read_text())
    base = results[args.milestones[0]]["output_tokens_per_s"]
    print(
        f"\n{'milestone':14s} {'output tok/s':>13s} {'req/s':>8s} {'speedup':>8s} {'mean batch':>11s} {'KV used/reserved':>17s} {'max batch':>10s} {'preempt':>8s}"
    )
    for r in results.values():
        st = r["engine_stats"]
        kv = st.get("kv_utilization")
        print(
            f"{r['milestone']:14s} {r['output_tokens_per_s']:13,.1f} {r['requests_per_s']:8.2f} "
            f"{r['output_tokens_per_s'] / base:7.2f}x {st.get('mean_batch_size', float('nan')):11.1f} "
            f"{'' if kv is None else f'{kv:.1%}':>17s} {st.get('max_batch_size', 1):>10} "
            f"{st.get('num_preemptions', 0):>8}"
        )
    write_json(
        args.out,
        {"benchmark": "compare", "milestones": args.milestones, "args": extra, "results": results},
    )


if __name__ == "__main__":
    main()
