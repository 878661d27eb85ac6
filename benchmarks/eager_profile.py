"""Where does an eager (not graph-replayed) step spend its host time? torch.profiler over one
prefill step of N new tokens: host ms vs GPU ms, kernel launches, and the ops that cost the most
host time. An eager step's host time is what a prefill or mixed step costs when the GPU is fast.

python benchmarks/eager_profile.py --milestone m6 --model Qwen/Qwen3-0.6B --dummy-weights --tokens 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_engine_args, device_info, engine_options, import_engine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m6")
    ap.add_argument("--model", default="folo-tiny")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 2048])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None)
    add_engine_args(ap)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    fv = import_engine(args.milestone)
    llm = fv.LLM(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        max_model_len=max(args.tokens) + 64,
        **engine_options(args),
    )
    engine = llm.engine
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    params = fv.SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    rows = []
    for n in args.tokens:

        def one_prefill(seed: int, n: int = n) -> float:
            engine.add_request([(seed * 31 + 7 * j) % 5000 + 10 for j in range(n)], params)
            sync()
            t0 = time.perf_counter()
            while engine.has_unfinished_requests():
                engine.step()
            sync()
            return time.perf_counter() - t0

        for s in range(3):
            one_prefill(s)  # warm-up: compile, autotune, allocator
        wall = sorted(one_prefill(10 + s) for s in range(5))[2]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            one_prefill(99)
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events)
        launches = sum(e.count for e in events if e.key.startswith(("cudaLaunch", "cuLaunch")))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
        print(
            f"== {n} new tokens: wall {wall * 1e3:.2f} ms (median of 5), GPU {gpu_us / 1e3:.2f} ms, "
            f"{launches} launches"
        )
        print(table)
        import cProfile
        import io
        import pstats

        cp = cProfile.Profile()
        cp.enable()
        one_prefill(98)
        cp.disable()
        buf = io.StringIO()
        pstats.Stats(cp, stream=buf).sort_stats("tottime").print_stats(args.top)
        print(buf.getvalue()[-6000:])
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
        rows.append({
            "tokens": n, "wall_s": wall, "gpu_s": gpu_us / 1e6, "launches": launches,
            "top_host_ops": [{"op": e.key, "count": e.count, "self_cpu_us": e.self_cpu_time_total}
                             for e in top],
        })  # fmt: skip
    write_json(args.out, {"device": device_info(), "milestone": args.milestone, "rows": rows})


if __name__ == "__main__":
    main()
