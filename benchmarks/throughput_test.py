"""Offline throughput of one milestone's engine on nano-vllm's workload (table + JSON).

The workload (nano-vllm's bench.py): ``random.seed(0)``; for each of 256 requests a prompt of
``randint(100, 1024)`` tokens drawn from ``randint(0, 10000)``, then for each request
``max_tokens = randint(100, 1024)``, ``temperature=0.6``, ``ignore_eos=True`` -> 133,966 output tokens.

    python benchmarks/throughput_test.py --milestone m2 --model Qwen/Qwen3-0.6B --dummy-weights \
        --out benchmarks/results/m2/throughput_h100.json
    python benchmarks/throughput_test.py --milestone m1 --num-seqs 32 --max-input-len 256 --max-output-len 256
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    add_engine_args,
    add_floor_args,
    device_info,
    engine_options,
    import_engine,
    peak_memory_bytes,
    write_json,
)  # noqa: E402


def make_workload(args) -> tuple[list[list[int]], list[int]]:
    """Exactly nano-vllm's draw order, so the default sizes reproduce its token counts."""
    random.seed(args.seed)
    prompts = [
        [
            random.randint(0, args.vocab_cap)
            for _ in range(random.randint(args.min_input_len, args.max_input_len))
        ]
        for _ in range(args.num_seqs)
    ]
    max_tokens = [
        random.randint(args.min_output_len, args.max_output_len) for _ in range(args.num_seqs)
    ]
    return prompts, max_tokens


def add_workload_args(ap) -> None:
    """The workload's shape (nano-vllm's defaults); --num-seqs and the lengths scale it down."""
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--min-input-len", type=int, default=100)
    ap.add_argument("--max-input-len", type=int, default=1024)
    ap.add_argument("--min-output-len", type=int, default=100)
    ap.add_argument("--max-output-len", type=int, default=1024)
    ap.add_argument(
        "--vocab-cap", type=int, default=10_000, help="prompt token ids drawn from [0, cap]"
    )
    ap.add_argument("--seed", type=int, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m2")
    ap.add_argument("--model", default="Qwen/Qwen3-0.6B")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    add_workload_args(ap)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="max_batch_size (max_num_seqs); m2+"
    )
    ap.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens per step; m2+ (default: the engine's)",
    )
    ap.add_argument(
        "--max-model-len", type=int, default=None, help="default: longest prompt + output"
    )
    ap.add_argument("--kv-cache-memory-gb", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--out", default=None)
    add_engine_args(ap)
    add_floor_args(ap)
    args = ap.parse_args()

    import torch

    fv = import_engine(args.milestone)
    from folovllm.milestone import has_milestone

    prompts, max_tokens = make_workload(args)
    max_model_len = args.max_model_len or max(len(p) + m for p, m in zip(prompts, max_tokens))
    options = dict(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        dtype=args.dtype,
        device=args.device,
        max_model_len=max_model_len,
        **engine_options(args),
    )
    if has_milestone("m2_batching"):
        options.update(max_batch_size=args.batch_size, kv_cache_memory_gb=args.kv_cache_memory_gb,
                       max_num_batched_tokens=args.max_num_batched_tokens)  # fmt: skip
    elif args.batch_size not in (None, 1):
        raise SystemExit(f"{fv.MILESTONE} runs one request at a time: drop --batch-size")
    llm = fv.LLM(**options)
    params = [
        fv.SamplingParams(temperature=args.temperature, ignore_eos=True, max_tokens=m)
        for m in max_tokens
    ]

    llm.generate([[1, 2, 3, 4]], fv.SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    llm.engine.stats.steps.clear()
    llm.engine.stats.finished.clear()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0

    out_tokens = sum(len(o.token_ids) for o in outs)
    # The floor: each step reads the weights once; producing output token t of a request reads
    # the K/V of its prompt and its first t - 1 outputs (prefill reads the prompt once).
    mc = llm.engine.model_config
    kv_token_reads = sum(len(p) * m + m * (m - 1) // 2 for p, m in zip(prompts, max_tokens))
    num_steps = len(llm.engine.stats.steps)
    weight_bytes = mc.arch.num_parameters() * mc.dtype.itemsize
    # the cache's bytes per token (m4's kv_cache_dtype="fp8" halves them), else the model dtype's
    kv_bytes = getattr(llm.engine.runner, "kv_bytes_per_token", mc.kv_bytes_per_token)
    floor_bytes = num_steps * weight_bytes + kv_token_reads * kv_bytes
    floor_s = floor_bytes / args.bandwidth
    assert out_tokens == sum(max_tokens), "ignore_eos: every request must produce max_tokens"
    stats = llm.engine.stats.summary()
    stats["num_preemptions"] = (
        getattr(llm.engine.scheduler, "num_preemptions", 0)
        if hasattr(llm.engine, "scheduler")
        else 0
    )
    result = {
        "benchmark": "throughput",
        "milestone": fv.MILESTONE,
        "config": {k: v for k, v in vars(args).items() if k != "out"}
        | {"max_model_len": max_model_len},
        "device": device_info(),
        "num_requests": len(outs),
        "prompt_tokens": sum(len(p) for p in prompts),
        "output_tokens": out_tokens,
        "elapsed_s": elapsed,
        "output_tokens_per_s": out_tokens / elapsed,
        "requests_per_s": len(outs) / elapsed,
        "peak_memory_bytes": peak_memory_bytes(),
        "floor": {
            "bytes": floor_bytes,
            "kv_token_reads": kv_token_reads,
            "bandwidth_bytes_per_s": args.bandwidth,
            "seconds": floor_s,
            "output_tokens_per_s": out_tokens / floor_s,
            "share": floor_s / elapsed,
        },
        "engine_stats": stats,
    }
    where = result["device"].get("gpu", result["device"]["cpu"])
    print(f"\n{fv.MILESTONE} on {where}: {args.model}{' (dummy)' if args.dummy_weights else ''}")
    print(
        f"requests {len(outs)}, prompt tokens {result['prompt_tokens']:,}, output tokens {out_tokens:,}"
    )
    print(
        f"time {elapsed:.2f} s -> {result['output_tokens_per_s']:,.1f} output tok/s, {result['requests_per_s']:.2f} req/s"
    )
    if "mean_batch_size" in stats:
        print(f"mean batch {stats['mean_batch_size']:.1f} over {stats['num_steps']} steps", end="")
        if "kv_utilization" in stats:
            print(f", KV utilization (used/reserved) {stats['kv_utilization']:.1%}", end="")
        print()
    print(
        f"hardware floor ({floor_bytes / 1e12:.2f} TB moved at {args.bandwidth / 1e12:.2f} TB/s): "
        f"{floor_s:.2f} s = {out_tokens / floor_s:,.0f} tok/s -> this run at {floor_s / elapsed:.0%} of the floor"
    )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
