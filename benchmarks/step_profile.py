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
    ap.add_argument(
        "--kernels", action="store_true", help="CUDA: GPU time per kernel (torch.profiler)"
    )
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
    if args.kernels and torch.cuda.is_available():
        timeline["kernels"] = kernel_profile(engine, args.steps, args.top)
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
            f"{timeline['gpu_forward_ms']:.2f} ms/step, GPU idle {timeline['gpu_idle_share']:.0%} "
            f"(gaps between steps: host work the GPU waited for), host busy "
            f"{timeline['host_busy_ms']:.2f} ms/step (outside the wait for the GPU)"
        )
        print("host ms per step:", {k: round(v, 2) for k, v in timeline["host_ms"].items()})
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    write_json(args.out, {"milestone": fv.MILESTONE, "batch": args.batch, "context": args.context,
                          "ms_per_step": per_step * 1e3, **timeline})  # fmt: skip


def kernel_profile(engine, num_steps: int, top: int) -> dict:
    """GPU kernels of ``num_steps`` decode steps (torch.profiler / CUPTI sees the kernels a CUDA
    graph replays): kernels per step, their summed device time per step, and the ``top`` kernels
    by time. Shows whether a step is bound by bytes (few long kernels) or by count (many short)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(num_steps):
            engine.step()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower():
            k = kernels.setdefault(e.name, [0, 0.0])
            k[0] += 1
            k[1] += e.time_range.elapsed_us()
    rows = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    total_us = sum(t for _, t in kernels.values())
    result = {
        "kernels_per_step": sum(c for c, _ in kernels.values()) / num_steps,
        "kernel_ms_per_step": total_us / num_steps / 1e3,
        "top": [
            {
                "name": name[:120],
                "per_step": c / num_steps,
                "us_per_step": t / num_steps,
                "us_each": t / c,
            }
            for name, (c, t) in rows[:top]
        ],  # fmt: skip
    }
    print(
        f"kernels: {result['kernels_per_step']:.0f} per step, "
        f"{result['kernel_ms_per_step']:.3f} ms of kernel time per step"
    )
    for r in result["top"]:
        print(
            f"  {r['us_per_step']:8.1f} us/step {r['per_step']:6.1f} x {r['us_each']:6.2f} us  {r['name'][:90]}"
        )
    return result


def gpu_timeline(engine, num_steps: int) -> dict:
    """Per step: wall ms, host ms in each phase (schedule, prepare inputs, update from output),
    host ms outside the wait for the GPU, and GPU ms of the model forward (CUDA events around the
    graph replay or the eager forward). Nothing syncs between steps, so async scheduling keeps
    its overlap; the GPU's idle time is the gaps between one step's last queued work and the
    next step's first (events recorded where each step's work starts and ends)."""
    import torch

    runner = engine.runner
    host = {"schedule": 0.0, "prepare_inputs": 0.0, "update_from_output": 0.0, "wait": 0.0}
    forward_events, step_events = [], []
    patched = []

    def wrap(obj, name, before=None, after=None):
        original = getattr(obj, name)

        def wrapped(*a, **kw):
            state = before() if before else None
            try:
                return original(*a, **kw)
            finally:
                if after:
                    after(state)

        setattr(obj, name, wrapped)
        patched.append((obj, name, original))

    def host_timer(bucket):
        def after(t0):
            host[bucket] += time.perf_counter() - t0

        return dict(before=time.perf_counter, after=after)

    def gpu_events(sink):
        def before():
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            return start

        def after(start):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            sink.append((start, end))

        return dict(before=before, after=after)

    wrap(engine.scheduler, "schedule", **host_timer("schedule"))
    wrap(engine.scheduler, "update_from_output", **host_timer("update_from_output"))
    if hasattr(runner, "input_batch"):  # m4+
        wrap(runner.input_batch, "prepare", **host_timer("prepare_inputs"))
    graph_runner = getattr(runner, "graph_runner", None)
    wrap(
        graph_runner if graph_runner is not None else runner.model,
        "replay" if graph_runner is not None else "forward",
        **gpu_events(forward_events),
    )
    launch = "execute_model_async" if hasattr(runner, "execute_model_async") else "execute_model"
    wrap(runner, launch, **gpu_events(step_events))
    if launch == "execute_model_async":  # the host waits for the GPU in .get()
        from folovllm.worker.async_output import AsyncModelRunnerOutput

        wrap(AsyncModelRunnerOutput, "get", **host_timer("wait"))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        for _ in range(num_steps):
            engine.step()
        torch.cuda.synchronize()
    finally:
        for obj, name, original in reversed(patched):
            setattr(obj, name, original)
    wall = (time.perf_counter() - t0) * 1e3
    n = num_steps
    gaps = sum(e.elapsed_time(s) for (_, e), (s, _) in zip(step_events, step_events[1:]))
    span = step_events[0][0].elapsed_time(step_events[-1][1])
    return {
        "wall_ms": wall / n,
        "gpu_forward_ms": sum(s.elapsed_time(e) for s, e in forward_events) / n,
        "gpu_idle_share": max(0.0, gaps / span),
        "host_ms": {k: v / n * 1e3 for k, v in host.items()},
        "host_busy_ms": (wall - host["wait"] * 1e3) / n,
        "note": "gpu_idle_share = gaps between steps' queued work / first-to-last span; "
        "host_busy_ms = wall minus the wait for the GPU (m3: the wait is inside execute_model)",
    }


if __name__ == "__main__":
    main()
