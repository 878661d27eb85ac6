"""The host's share of an engine step: one step at batch N with the model forward, the logits and
the sampler replaced by stubs, so what is timed is the Python that schedules, prepares inputs,
builds sampling metadata and applies tokens (async scheduling on: the path the GPU uses).

No GPU needed: on the GPU machine the same Python also launches kernels and copies through pinned
memory, which this leaves out; compare the two to split host time into "our Python" and
"CUDA-side calls". Best of 5 runs of 40 steps.

    python benchmarks/host_step_bench.py --milestone m8 --batch 256 --out /tmp/host_step_cpu.json
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, device_info, import_engine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m8")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    fv = import_engine(args.milestone)
    llm = fv.LLM(model=str(ROOT / "models" / "folo-tiny"), device="cpu", max_model_len=2048,
                 max_num_seqs=args.batch, max_num_batched_tokens=max(8192, 64 * args.batch),
                 async_scheduling=True)  # fmt: skip
    engine, runner = llm.engine, llm.engine.runner
    hidden = runner.model_config.arch.hidden_size

    def stub_forward(so):  # prepare the inputs as a step does; no model
        ib = runner.input_batch
        ib.prepare(so, None, None, runner.prev_rows)
        if ib.num_placeholders:
            ib.fill_placeholders(runner.prev_sampled)
        return torch.zeros(len(so.scheduled), hidden)

    runner._forward = stub_forward
    runner.model.compute_logits = lambda h: torch.zeros(h.shape[0], 8)
    runner.sampler = lambda logits, md: torch.full((logits.shape[0],), 5, dtype=torch.long)
    params = fv.SamplingParams(
        temperature=0.6, max_tokens=min(30 * args.steps, 1900), ignore_eos=True
    )
    for i in range(args.batch):
        engine.add_request([(7 * i + j) % 4000 + 10 for j in range(64)], params)
    for _ in range(5):  # admission and warm-up
        engine.step()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        best = min(best, (time.perf_counter() - t0) / args.steps)
    print(f"{fv.MILESTONE}: host Python {best * 1e3:.3f} ms per step at batch {args.batch} "
          f"(forward, logits and sampler stubbed; async scheduling)")  # fmt: skip
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [engine.step() for _ in range(args.steps)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    write_json(args.out, {"benchmark": "host_step", "milestone": fv.MILESTONE,
                          "device": device_info(), "batch": args.batch, "steps": args.steps,
                          "host_ms_per_step": best * 1e3})  # fmt: skip


if __name__ == "__main__":
    main()
