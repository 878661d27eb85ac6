"""Where does one engine step spend its time? A per-step timeline (wall ms, GPU ms of the model
forward, GPU idle share) and cProfile over a few decode steps of one milestone.

python benchmarks/step_profile.py --milestone m3 --model folo-tiny --batch 4 --steps 20
python benchmarks/step_profile.py --milestone m4 --model Qwen/Qwen3-0.6B --dummy-weights --batch 256
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_engine_args, engine_options, import_engine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m3")
    ap.add_argument("--model", default="folo-tiny")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--context", type=int, default=64, help="prompt tokens per request")
    ap.add_argument("--out", default=None)
    add_engine_args(ap)
    args = ap.parse_args()

    import torch

    fv = import_engine(args.milestone)
    from folovllm.milestone import has_milestone

    opts = {"max_batch_size": args.batch} if has_milestone("m2_batching") and args.batch > 1 else {}
    llm = fv.LLM(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        max_model_len=args.context + 4 * args.steps + args.batch * args.context // 2048 + 64,
        **opts,
        **engine_options(args),
    )
    engine = llm.engine
    # Long enough that every request is still decoding after the prefill steps and 3 x steps.
    prefill_steps = args.batch * args.context // 2048 + 5
    params = fv.SamplingParams(
        temperature=0, max_tokens=4 * args.steps + prefill_steps + 10, ignore_eos=True
    )
    for i in range(args.batch):
        engine.add_request([(7 * i + j) % 5000 + 10 for j in range(args.context)], params)
    # Prefill everyone (a step with only one-token rows means all are decoding), then warm up.
    while engine.scheduler.waiting or any(
        r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running
    ):
        engine.step()
    for _ in range(3):
        engine.step()

    def steps() -> None:
        for _ in range(args.steps):
            engine.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    timeline = gpu_timeline(engine, args.steps) if torch.cuda.is_available() else {}
    t0 = time.perf_counter()
    steps()
    per_step = (time.perf_counter() - t0) / args.steps
    prof = cProfile.Profile()
    prof.runcall(steps)
    print(
        f"{fv.MILESTONE}: {per_step * 1e3:.2f} ms per decode step at batch {engine.get_num_unfinished_requests()}"
    )
    if timeline:
        print(
            f"timeline: wall {timeline['wall_ms']:.2f} ms/step, model forward on the GPU "
            f"{timeline['gpu_forward_ms']:.2f} ms/step -> GPU idle {timeline['gpu_idle_share']:.0%} "
            f"of the step (CPU work the GPU waits for: schedule, inputs, sampling, detokenize)"
        )
        print("host ms per step:", {k: round(v, 2) for k, v in timeline["host_ms"].items()})
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    write_json(args.out, {"milestone": fv.MILESTONE, "batch": args.batch, "context": args.context,
                          "ms_per_step": per_step * 1e3, **timeline})  # fmt: skip


def gpu_timeline(engine, num_steps: int) -> dict:
    """Per step: wall ms, host ms in each phase (schedule, prepare inputs, update from output),
    and GPU ms of the model forward (CUDA events around the graph replay or the eager forward).
    The GPU is idle for ``1 - gpu / wall`` of the step: host work it waited for."""
    import torch

    runner = engine.runner
    host = {"schedule": 0.0, "prepare_inputs": 0.0, "update_from_output": 0.0}
    events = []
    patched = []

    def wrap_host(obj, name, bucket):
        original = getattr(obj, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                host[bucket] += time.perf_counter() - t0

        setattr(obj, name, timed)
        patched.append((obj, name, original))

    def wrap_gpu(obj, name):
        original = getattr(obj, name)

        def timed(*a, **kw):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = original(*a, **kw)
            end.record()
            events.append((start, end))
            return out

        setattr(obj, name, timed)
        patched.append((obj, name, original))

    wrap_host(engine.scheduler, "schedule", "schedule")
    wrap_host(engine.scheduler, "update_from_output", "update_from_output")
    if hasattr(runner, "input_batch"):  # m4+
        wrap_host(runner.input_batch, "prepare", "prepare_inputs")
    graph_runner = getattr(runner, "graph_runner", None)
    wrap_gpu(
        graph_runner if graph_runner is not None else runner.model,
        "replay" if graph_runner is not None else "forward",
    )
    walls = []
    try:
        for _ in range(num_steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            engine.step()
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
    finally:
        for obj, name, original in reversed(patched):
            setattr(obj, name, original)
    n = len(walls)
    gpu = sum(s.elapsed_time(e) for s, e in events) / n
    wall = sum(walls) / n * 1e3
    return {
        "wall_ms": wall,
        "gpu_forward_ms": gpu,
        "gpu_idle_share": max(0.0, 1 - gpu / wall),
        "host_ms": {k: v / n * 1e3 for k, v in host.items()},
    }


if __name__ == "__main__":
    main()
