"""Where does one engine step spend its time? cProfile over a few decode steps of one milestone.

python benchmarks/step_profile.py --milestone m3 --model folo-tiny --batch 4 --steps 20
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import import_engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m3")
    ap.add_argument("--model", default="folo-tiny")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    import torch

    fv = import_engine(args.milestone)
    from folovllm.milestone import has_milestone

    opts = {"max_batch_size": args.batch} if has_milestone("m2_batching") and args.batch > 1 else {}
    llm = fv.LLM(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        max_model_len=1024,
        **opts,
    )
    engine = llm.engine
    params = fv.SamplingParams(temperature=0, max_tokens=2 * args.steps + 10, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(list(range(10 + i, 74 + i)), params)
    for _ in range(5):  # prefill and warm-up
        engine.step()

    def steps() -> None:
        for _ in range(args.steps):
            engine.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    steps()
    per_step = (time.perf_counter() - t0) / args.steps
    prof = cProfile.Profile()
    prof.runcall(steps)
    print(
        f"{fv.MILESTONE}: {per_step * 1e3:.2f} ms per decode step at batch {engine.get_num_unfinished_requests()}"
    )
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
