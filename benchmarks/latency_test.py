"""Latency of one milestone's engine: TTFT, TPOT, E2E, tokens/s, peak memory (table + JSON).

    python benchmarks/latency_test.py --milestone m1 --model folo-tiny
    python benchmarks/latency_test.py --milestone m1 --model Qwen/Qwen3-0.6B --dummy-weights \
        --input-len 128 --output-len 256 --hf --out benchmarks/results/m1/latency_h100.json

``--batch-size N`` submits N prompts at once (m1 serves them one after another; m2+ batches them).
``--hf`` also times transformers' ``generate`` on the same weights and settings in the same run.
"""

from __future__ import annotations

import argparse
import statistics
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


def run_ours(fv, args, prompts) -> dict:
    import torch

    llm = fv.LLM(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        **({"max_batch_size": args.batch_size} if args.batch_size > 1 else {}),
        **engine_options(args),
    )
    params = fv.SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(
        prompts[:1], fv.SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False
    )
    runs = []
    for _ in range(args.num_iters):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        n_out = sum(len(o.token_ids) for o in outs)
        runs.append(
            {
                "wall_s": wall,
                "output_tokens": n_out,
                "tokens_per_s": n_out / wall,
                "ttft_s": statistics.fmean(o.metrics.ttft for o in outs),
                "tpot_s": statistics.fmean(o.metrics.tpot for o in outs),
                "e2e_s": statistics.fmean(o.metrics.e2e for o in outs),
            }
        )
    mc = llm.engine.model_config
    result = _summarise(runs, mc.arch.num_parameters() * mc.dtype.itemsize)
    # The floor: every decode step reads the weights once and the K/V of every context token.
    mean_context = args.input_len + args.output_len / 2
    kv_bytes = getattr(llm.engine.runner, "kv_bytes_per_token", mc.kv_bytes_per_token)  # fp8: half
    step_bytes = result["weight_bytes"] + args.batch_size * mean_context * kv_bytes
    result["floor_tpot_s"] = step_bytes / args.bandwidth
    result["share_of_floor"] = result["floor_tpot_s"] / result["tpot_s"]
    return result


def run_hf(args, prompts) -> dict:
    """transformers' generate, greedy, same prompts (as one padded-free batch of equal lengths)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fv_loader = sys.modules["folovllm.model_executor.model_loader"]
    path = fv_loader.resolve_model_path(args.model)
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = {
        "auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }[args.dtype]
    if args.dummy_weights:
        cfg = AutoConfig.from_pretrained(path)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    model.generation_config.eos_token_id = None
    ids = torch.tensor(prompts, device=device)

    def gen(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - t0

    gen(8)
    runs = []
    for _ in range(args.num_iters):
        ttft = gen(1)
        e2e = gen(args.output_len)
        n_out = len(prompts) * args.output_len
        runs.append(
            {
                "wall_s": e2e,
                "output_tokens": n_out,
                "tokens_per_s": n_out / e2e,
                "ttft_s": ttft,
                "tpot_s": (e2e - ttft) / (args.output_len - 1),
                "e2e_s": e2e,
            }
        )
    n_params = sum(p.numel() for p in model.parameters())
    return _summarise(runs, n_params * dtype.itemsize)


def _summarise(runs: list[dict], weight_bytes: int) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    # Batch-1 decode reads every weight once per token: weight bytes / TPOT is the achieved bandwidth.
    med["weight_bytes"] = weight_bytes
    med["decode_weight_GBps"] = weight_bytes / med["tpot_s"] / 1e9
    med["peak_memory_bytes"] = peak_memory_bytes()
    med["runs"] = runs
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m1")
    ap.add_argument("--model", default="folo-tiny")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--num-iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf", action="store_true", help="also time transformers' generate")
    ap.add_argument("--out", default=None)
    add_engine_args(ap)
    add_floor_args(ap)
    args = ap.parse_args()

    import torch

    fv = import_engine(args.milestone)
    g = torch.Generator().manual_seed(args.seed)
    vocab_cap = 10_000 if args.dummy_weights else 256
    prompts = torch.randint(0, vocab_cap, (args.batch_size, args.input_len), generator=g).tolist()
    results = {"folovllm": run_ours(fv, args, prompts)}
    if args.hf:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        results["transformers"] = run_hf(args, prompts)
    report = {
        "benchmark": "latency",
        "milestone": fv.MILESTONE,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "device": device_info(),
        "results": results,
    }
    print(
        f"\n{fv.MILESTONE}: {args.model}{' (dummy weights)' if args.dummy_weights else ''}, "
        f"batch {args.batch_size}, prompt {args.input_len}, output {args.output_len}, "
        f"median of {args.num_iters} on {report['device'].get('gpu', report['device']['cpu'])}"
    )
    print(
        f"{'engine':14s} {'TTFT ms':>9s} {'TPOT ms':>9s} {'E2E s':>8s} {'tok/s':>9s} {'weight GB/s':>12s} {'peak MiB':>9s}"
    )
    for name, r in results.items():
        print(
            f"{name:14s} {r['ttft_s'] * 1e3:9.2f} {r['tpot_s'] * 1e3:9.2f} {r['e2e_s']:8.3f} "
            f"{r['tokens_per_s']:9.1f} {r['decode_weight_GBps']:12.1f} {r['peak_memory_bytes'] / 2**20:9.0f}"
        )
    ours = results["folovllm"]
    print(
        f"hardware floor for TPOT (weights + KV once per step at {args.bandwidth / 1e12:.2f} TB/s): "
        f"{ours['floor_tpot_s'] * 1e3:.3f} ms -> FoloVLLM at {ours['share_of_floor']:.0%} of the floor"
    )
    write_json(args.out, report)


if __name__ == "__main__":
    main()
