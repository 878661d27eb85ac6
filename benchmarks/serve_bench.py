"""Serving benchmark: the OpenAI-compatible server under load, with the offline engine beside it.

In the spirit of vLLM's serving benchmark. One run measures, on the same workload (nano-vllm's
lengths, token-id prompts, ``ignore_eos``):

1. the offline engine's throughput (``throughput_test.py`` in a child process);
2. ``python -m folovllm serve`` in a child process, then streaming /v1/completions requests:
   - Poisson arrivals at each ``--request-rates`` (requests/s; ``inf`` = all at once),
   - a concurrency sweep: ``--concurrency`` clients, each sending its next request when the
     last one ends.

Per point: TTFT (request sent -> first streamed chunk), ITL (gaps between chunks; a chunk is one
engine step's new tokens for that request), E2E, their p50 / p99, output tokens/s and requests/s.

    # GPU: Qwen3-0.6B shapes, dummy weights, the full workload
    python benchmarks/serve_bench.py --model Qwen/Qwen3-0.6B --dummy-weights \\
        --request-rates 4,16,64,inf --concurrency 1,16,64,256 --out benchmarks/results/m9/serve_h100.json
    # CPU smoke run: folo-tiny, a few short requests
    python benchmarks/serve_bench.py --model folo-tiny --num-seqs 8 --max-input-len 32 \\
        --min-input-len 8 --max-output-len 16 --min-output-len 4 --vocab-cap 1000 \\
        --request-rates inf --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, milestone_dir, write_json  # noqa: E402
from throughput_test import add_workload_args, make_workload  # noqa: E402

BENCH = Path(__file__).resolve().parent


# -- the client -----------------------------------------------------------------------------------
async def one_request(http, prompt: list[int], max_tokens: int, args) -> dict:
    """Stream one completion; the client-side timestamps of its chunks."""
    body = {"model": args.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "temperature": args.temperature, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start, chunks, tokens = time.perf_counter(), [], 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("choices"):
                chunks.append(time.perf_counter())
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    return {"start": start, "chunks": chunks, "end": time.perf_counter(), "tokens": tokens}


async def poisson(http, workload, rate: float, args) -> list[dict]:
    """Requests sent at exponential gaps (a Poisson process of ``rate``/s)."""
    rng, tasks = random.Random(args.seed), []
    for prompt, max_tokens in zip(*workload):
        tasks.append(asyncio.create_task(one_request(http, prompt, max_tokens, args)))
        if math.isfinite(rate):
            await asyncio.sleep(rng.expovariate(rate))
    return await asyncio.gather(*tasks)


async def closed_loop(http, workload, concurrency: int, args) -> list[dict]:
    """``concurrency`` clients, each sending its next request when the previous one ends."""
    queue = list(zip(*workload))[::-1]
    results = []

    async def client():
        while queue:
            prompt, max_tokens = queue.pop()
            results.append(await one_request(http, prompt, max_tokens, args))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def summarize(results: list[dict]) -> dict:
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r and r["chunks"]]
    ttft = sorted(r["chunks"][0] - r["start"] for r in ok)
    itl = sorted(b - a for r in ok for a, b in zip(r["chunks"], r["chunks"][1:]))
    e2e = sorted(r["end"] - r["start"] for r in ok)
    span = max(r["end"] for r in ok) - min(r["start"] for r in ok) if ok else float("nan")
    tokens = sum(r["tokens"] for r in ok)
    out = {"num_requests": len(ok), "errors": errors[:5], "num_errors": len(errors),
           "output_tokens": tokens, "duration_s": span,
           "output_tokens_per_s": tokens / span, "requests_per_s": len(ok) / span}  # fmt: skip
    for name, values in (("ttft", ttft), ("itl", itl), ("e2e", e2e)):
        out |= {f"{name}_p50_s": pct(values, 50), f"{name}_p99_s": pct(values, 99)}
    return out


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not values:
        return float("nan")
    return values[max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))]


async def sweep(url: str, workload, args) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    points = {}
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as http:
        await one_request(http, [1, 2, 3, 4], 4, args)  # warm-up
        for rate in args.request_rates:
            key = f"rate_{rate:g}".replace(".", "p")  # rate_4, rate_0p5: addressable in notes
            points[key] = summarize(await poisson(http, workload, rate, args))
            report(f"rate {rate:g}/s", points[key])
        for c in args.concurrency:
            points[f"concurrency_{c}"] = summarize(await closed_loop(http, workload, c, args))
            report(f"concurrency {c}", points[f"concurrency_{c}"])
    return points


def report(name: str, p: dict) -> None:
    print(f"{name:>16}: {p['output_tokens_per_s']:10,.1f} tok/s  TTFT p50/p99 "
          f"{p['ttft_p50_s'] * 1e3:8.1f}/{p['ttft_p99_s'] * 1e3:8.1f} ms  ITL p50/p99 "
          f"{p['itl_p50_s'] * 1e3:6.1f}/{p['itl_p99_s'] * 1e3:6.1f} ms  E2E p99 "
          f"{p['e2e_p99_s']:6.2f} s  errors {p['num_errors']}")  # fmt: skip


# -- the two engines --------------------------------------------------------------------------------
def engine_flags(args, max_model_len: int) -> list[str]:
    flags = ["--model", args.model, "--max-model-len", str(max_model_len)]
    flags += ["--dtype", args.dtype] + (["--dummy-weights"] if args.dummy_weights else [])
    for name in ("kv_cache_memory_gb", "max_num_batched_tokens", "block_size"):
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags + ([] if args.batch_size is None else ["--batch-size", str(args.batch_size)])


def offline(args, workload_flags: list[str], max_model_len: int) -> dict:
    """The offline engine on the same workload, in its own process (all of the GPU to itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "offline.json"
        cmd = [sys.executable, str(BENCH / "throughput_test.py"), "--milestone", args.milestone,
               *engine_flags(args, max_model_len), *workload_flags,
               "--temperature", str(args.temperature), "--out", str(out)]  # fmt: skip
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def start_server(args, max_model_len: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = engine_flags(args, max_model_len)
    flags = [("--max-num-seqs" if f == "--batch-size" else f) for f in flags]
    cmd = [sys.executable, "-m", "folovllm", "serve", *flags, "--port", str(port),
           "--max-queue-len", "1000000", "--log-level", "warning"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(milestone_dir(args.milestone))}
    proc = subprocess.Popen(cmd, cwd=milestone_dir(args.milestone), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url)
    return proc, url


def wait_healthy(proc: subprocess.Popen, url: str) -> None:
    import httpx

    while proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server exited with status {proc.returncode}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m9")
    ap.add_argument("--model", default="Qwen/Qwen3-0.6B")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--dtype", default="auto")
    add_workload_args(ap)
    ap.add_argument("--batch-size", type=int, default=None, help="max_num_seqs")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--kv-cache-memory-gb", type=float, default=None)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--request-rates", default="4,16,64,inf", help="Poisson rates, requests/s")
    ap.add_argument("--concurrency", default="1,16,64,256", help="closed-loop client counts")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None, help="PNG: latency and throughput against the rate")
    args = ap.parse_args(argv)
    args.rates_text = args.request_rates  # JSON has no inf
    args.request_rates = [float(r) for r in args.request_rates.split(",") if r]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    return args


def workload_flags(args) -> list[str]:
    names = ("num_seqs", "min_input_len", "max_input_len", "min_output_len", "max_output_len",
             "vocab_cap", "seed")  # fmt: skip
    return [x for n in names for x in (f"--{n.replace('_', '-')}", str(getattr(args, n)))]


def main(argv=None) -> dict:
    args = parse_args(argv)
    workload = make_workload(args)
    max_model_len = max(len(p) + m for p, m in zip(*workload))
    result = {"benchmark": "serve", "milestone": args.milestone, "device": device_info(),
              "config": vars(args) | {"request_rates": args.rates_text, "max_model_len": max_model_len},
              "num_requests": len(workload[0]), "output_tokens": sum(workload[1])}  # fmt: skip
    if not args.skip_offline:
        off = offline(args, workload_flags(args), max_model_len)
        result["offline"] = {
            k: off[k] for k in ("output_tokens_per_s", "requests_per_s", "elapsed_s")
        }
        print(f"{'offline':>16}: {off['output_tokens_per_s']:10,.1f} tok/s")
    proc, url = start_server(args, max_model_len)
    try:
        result["server"] = asyncio.run(sweep(url, workload, args))
    finally:
        stop_server(proc)
    write_json(args.out, result)
    if args.plot:
        plot_rates(result, args.plot)
    return result


def plot_rates(result: dict, path: str) -> None:
    """TTFT and ITL (p50, p99) and throughput at each Poisson rate, "all" = every request at once;
    the offline engine's throughput (same run) as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r for r in result["config"]["request_rates"].split(",") if r]
    points = [result["server"][f"rate_{float(r):g}".replace(".", "p")] for r in rates]
    labels = ["all" if math.isinf(float(r)) else f"{float(r):g}" for r in rates]
    dev = result["device"]
    card = dev.get("gpu") or f"CPU ({dev['cpu']}, {dev['cpu_threads']} thread)"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    xs = range(len(rates))
    for key, name, color in (("ttft", "TTFT", "tab:red"), ("itl", "ITL", "tab:blue")):
        for q, style in (("p50", "-o"), ("p99", "--o")):
            ys = [pt[f"{key}_{q}_s"] * 1e3 for pt in points]
            a1.plot(xs, ys, style, color=color, label=f"{name} {q}")
    a1.set_yscale("log")
    a1.set_ylabel("ms (client side)")
    a2.plot(xs, [pt["output_tokens_per_s"] for pt in points], "-o", color="tab:green",
            label="server")  # fmt: skip
    if "offline" in result:
        a2.axhline(result["offline"]["output_tokens_per_s"], color="k", ls="--", lw=1,
                   label="offline engine, same run")  # fmt: skip
    a2.set_ylabel("output tokens / s")
    for ax in (a1, a2):
        ax.set_xticks(list(xs), labels)
        ax.set_xlabel("request rate (Poisson, requests/s)")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{result['milestone']} server, {result['num_requests']} requests, {card}", fontsize=10
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
