"""m10 benchmark: tensor parallelism, tp=1 against tp=N in the same run (JSON).

    python bench.py                 # a CPU (gloo): folo-tiny in float32, a few short requests
    python bench.py --gpu           # two GPUs (NCCL): Qwen3-8B shape, dummy weights, bf16
    python bench.py --gpu --model Qwen/Qwen3-0.6B --out results.json

One run measures, for tp=1 and tp=N: batch-1 TPOT (and whether the greedy tokens agree), the
all-reduce's latency and bus bandwidth over message sizes (nccl-tests' busbw: 2 (N-1)/N x bytes /
time), the share of a tp=N decode step the all-reduces take (2 per layer, 1 for the embedding,
plus the logits' gather, timed at the step's message size), and nano-vllm's throughput workload.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_engine_args, device_info, engine_options, import_engine, write_json  # noqa: E402
from throughput_test import add_workload_args, make_workload  # noqa: E402

GPU = dict(model="Qwen/Qwen3-8B", dummy_weights=True, dtype="bfloat16", input_len=512,
           output_len=128, max_model_len=2048, allreduce_sizes="8192,65536,1048576,16777216,268435456")  # fmt: skip
CPU = dict(model="folo-tiny", dummy_weights=False, dtype="float32", input_len=32, output_len=32,
           max_model_len=256, allreduce_sizes="1024,65536,1048576,16777216", num_seqs=16,
           min_input_len=16, max_input_len=64, min_output_len=16, max_output_len=64, vocab_cap=1000)  # fmt: skip


def _allreduce_rank(rank: int, world: int, port: int, sizes: list[int], iters: int, queue) -> None:
    """One rank of the all-reduce sweep (its own process group, not an engine's)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)  # fmt: skip
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    for size in sizes:
        x = torch.ones(size // dtype.itemsize, dtype=dtype, device=device)
        for _ in range(5):
            dist.all_reduce(x)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        sync()
        t = (time.perf_counter() - t0) / iters
        row = {
            "bytes": size,
            "latency_us": t * 1e6,
            "busbw_GBps": 2 * (world - 1) / world * size / t / 1e9,
        }
        if cuda and size <= 1 << 20:  # inside a CUDA graph, as a captured decode step runs it
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(10):
                    dist.all_reduce(x)
            graph.replay()
            sync()
            t0 = time.perf_counter()
            for _ in range(iters // 10 or 1):
                graph.replay()
            sync()
            row["graph_latency_us"] = (time.perf_counter() - t0) / ((iters // 10 or 1) * 10) * 1e6
        rows.append(row)
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def allreduce_sweep(world: int, sizes: list[int], iters: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_rank, args=(r, world, port, sizes, iters, queue))
             for r in range(world)]  # fmt: skip
    for p in procs:
        p.start()
    rows = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return rows


def make_llm(fv, args, tp: int, **kw):
    return fv.LLM(
        model=args.model, load_format="dummy" if args.dummy_weights else "auto", dtype=args.dtype,
        device=args.device, max_model_len=args.max_model_len, tensor_parallel_size=tp,
        kv_cache_memory_gb=args.kv_cache_memory_gb, **engine_options(args), **kw,
    )  # fmt: skip


def release(llm) -> None:
    import torch

    llm.shutdown()
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def latency(fv, args, tp: int, prompt: list[int]) -> dict:
    """Batch-1 TTFT / TPOT (median of --num-iters) and the greedy tokens."""
    llm = make_llm(fv, args, tp)
    params = fv.SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate([prompt], fv.SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    runs = []
    for _ in range(args.num_iters):
        (out,) = llm.generate([prompt], params, use_tqdm=False)
        runs.append({"ttft_s": out.metrics.ttft, "tpot_s": out.metrics.tpot})
    arch = llm.engine.model_config.arch
    release(llm)
    result = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {**result, "runs": runs, "tokens": out.token_ids, "layers": arch.num_hidden_layers,
            "hidden_size": arch.hidden_size}  # fmt: skip


def throughput(fv, args, tp: int) -> dict:
    """nano-vllm's workload (or --num-seqs ... scaled down): output tokens per second."""
    prompts, max_tokens = make_workload(args)
    llm = make_llm(fv, args, tp, max_num_seqs=args.max_num_seqs)
    params = [fv.SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m) for m in max_tokens]
    llm.generate([[1, 2, 3, 4]], fv.SamplingParams(max_tokens=4), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    release(llm)
    tokens = sum(len(o.token_ids) for o in outs)
    return {"elapsed_s": elapsed, "output_tokens": tokens, "output_tokens_per_s": tokens / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU presets (two GPUs, Qwen3-8B shape)")
    ap.add_argument("--milestone", default="m10")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tp", type=int, default=2, help="compared with tp=1")
    ap.add_argument("--input-len", type=int, default=None)
    ap.add_argument("--output-len", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--num-iters", type=int, default=3)
    ap.add_argument("--kv-cache-memory-gb", type=float, default=None)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--allreduce-sizes", default=None, help="bytes, comma-separated")
    ap.add_argument("--allreduce-iters", type=int, default=100)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU: rank 0's torch threads")
    ap.add_argument("--out", default=None)
    add_workload_args(ap)
    add_engine_args(ap)
    ap.set_defaults(**(GPU if "--gpu" in sys.argv[1:] else CPU))  # a flag given still wins
    args = ap.parse_args()

    fv = import_engine(args.milestone)
    import torch

    if not torch.cuda.is_available():  # one share of the cores per rank, as the workers take
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.tp))

    vocab = 10_000 if args.dummy_weights else 256
    prompt = torch.randint(0, vocab, (args.input_len,), generator=torch.Generator().manual_seed(0))
    report = {"benchmark": "tensor_parallel", "milestone": fv.MILESTONE, "tp": args.tp,
              "config": {k: v for k, v in vars(args).items() if k != "out"}, "device": device_info()}  # fmt: skip
    lat = {tp: latency(fv, args, tp, prompt.tolist()) for tp in (1, args.tp)}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elem = fv.EngineConfig(dtype=args.dtype).resolve_dtype(device).itemsize
    step_bytes = lat[1]["hidden_size"] * elem  # one decoding token's hidden state
    sizes = sorted({step_bytes, *map(int, args.allreduce_sizes.split(","))})
    sweep = allreduce_sweep(args.tp, sizes, args.allreduce_iters)
    at_step = next(r for r in sweep if r["bytes"] == step_bytes)
    per_step = 2 * lat[1]["layers"] + 2  # o_proj + down_proj per layer, the embedding, the logits
    t_ar = at_step.get("graph_latency_us", at_step["latency_us"]) * 1e-6
    report["latency"] = {
        f"tp{tp}": {k: v for k, v in r.items() if k != "tokens"} for tp, r in lat.items()
    }
    report["greedy_tokens_equal"] = lat[1]["tokens"] == lat[args.tp]["tokens"]
    report["greedy_tokens_agree"] = sum(
        a == b for a, b in zip(lat[1]["tokens"], lat[args.tp]["tokens"])
    )
    report["tpot_speedup"] = lat[1]["tpot_s"] / lat[args.tp]["tpot_s"]
    report["allreduce"] = sweep
    report["allreduce_per_step"] = {"count": per_step, "bytes": step_bytes, "latency_us": t_ar * 1e6,
                                    "share_of_tp_step": per_step * t_ar / lat[args.tp]["tpot_s"]}  # fmt: skip
    if not args.skip_throughput:
        thr = {tp: throughput(fv, args, tp) for tp in (1, args.tp)}
        report["throughput"] = {f"tp{tp}": r for tp, r in thr.items()}
        report["throughput_speedup"] = (
            thr[args.tp]["output_tokens_per_s"] / thr[1]["output_tokens_per_s"]
        )
    on = report["device"].get("gpu", report["device"]["cpu"])
    print(f"\n{fv.MILESTONE} on {on}: {args.model}, tp=1 vs tp={args.tp}")
    for tp, r in lat.items():
        print(
            f"  tp={tp}: batch-1 TPOT {r['tpot_s'] * 1e3:.2f} ms, TTFT {r['ttft_s'] * 1e3:.2f} ms"
        )
    print(
        f"  greedy tokens equal: {report['greedy_tokens_equal']} ({report['greedy_tokens_agree']}/{len(lat[1]['tokens'])})"
    )
    a = report["allreduce_per_step"]
    print(f"  all-reduce: {a['count']} per step x {a['latency_us']:.1f} us ({a['bytes']} B) = "
          f"{a['share_of_tp_step']:.0%} of a tp={args.tp} step")  # fmt: skip
    for r in sweep:
        print(
            f"    {r['bytes']:>10d} B  {r['latency_us']:9.1f} us  busbw {r['busbw_GBps']:8.2f} GB/s"
        )
    if "throughput" in report:
        for name, r in report["throughput"].items():
            print(
                f"  throughput {name}: {r['output_tokens_per_s']:.0f} output tok/s ({r['elapsed_s']:.1f} s)"
            )
    write_json(args.out, report)


if __name__ == "__main__":
    main()
