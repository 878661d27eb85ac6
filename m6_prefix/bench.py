"""m6 benchmark: prefix caching, m5 (no cache) vs m6 (enable_prefix_caching=True), each milestone
in its own process, then one merged JSON (and a plot of TTFT against the shared prefix's length).

1. TTFT vs prefix length: a request of PREFIX + a 64-token suffix, cold (a prefix never seen) and
   warm (the same prefix again, another suffix), for each prefix length; median of the repetitions,
   and the prefix cache's hit rate over the warm requests.
2. No sharing at all: random prompts, so every lookup misses: what hashing and the lookups cost
   (throughput and mean TTFT, m6 vs m5).
3. A few-shot workload: the same 8 examples before many different questions, all submitted at
   once, end to end: output throughput, mean TTFT, hit rate.

    python bench.py                                   # a CPU smoke test on the repo's tiny model
    python bench.py --out-dir /tmp/m6 --model Qwen/Qwen3-0.6B --dummy-weights       # on a GPU
Writes OUT_DIR/m6_prefix_{m5,m6}.json, m6_prefix.json (merged) and m6_prefix.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_engine_args, device_info, engine_options, import_engine, write_json  # noqa: E402

PRESETS = {
    # the sizes: prefixes of 512 / 2048 / 8192 tokens, a 64-token suffix
    "gpu": dict(prefix_lens=[512, 2048, 8192], suffix_len=64, reps=5, nosharing_reqs=64,
                nosharing_len=1024, nosharing_output=16, fewshot_examples=8, example_len=128,
                question_len=64, fewshot_reqs=256, fewshot_output=64, kv_cache_memory_gb=None),
    # a smoke test on a CPU with the tiny model (folo-tiny: max_position_embeddings 2048)
    "cpu": dict(prefix_lens=[128, 512, 1536], suffix_len=64, reps=2, nosharing_reqs=8,
                nosharing_len=256, nosharing_output=4, fewshot_examples=8, example_len=32,
                question_len=32, fewshot_reqs=16, fewshot_output=8, kv_cache_memory_gb=0.25),
}  # fmt: skip


def tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


def hit_stats(engine) -> dict[str, float]:
    fn = getattr(engine, "prefix_cache_stats", None)
    return fn() if fn else {"queries": 0, "hits": 0, "hit_rate": 0.0}


def hits_since(engine, before: dict[str, float]) -> float:
    now = hit_stats(engine)
    q = now["queries"] - before["queries"]
    return (now["hits"] - before["hits"]) / q if q else 0.0


def ttft_one(engine, fv, prompt: list[int]) -> float:
    """Time from submitting one request until its first token is back (max_tokens=1)."""
    params = fv.SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    t0 = time.perf_counter()
    engine.add_request(prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
    return time.perf_counter() - t0


def run_batch(llm, fv, prompts: list[list[int]], max_tokens: int) -> dict[str, float]:
    params = fv.SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    before = hit_stats(llm.engine)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    n_out = sum(len(o.token_ids) for o in outs)
    return {
        "wall_s": wall,
        "output_tokens": n_out,
        "output_tok_s": n_out / wall,
        "ttft_mean_s": statistics.fmean(o.metrics.ttft for o in outs),
        "hit_rate": hits_since(llm.engine, before),
    }


def reset(llm) -> None:
    if hasattr(llm, "reset_prefix_cache"):
        assert llm.reset_prefix_cache()


def worker(args) -> None:
    fv = import_engine(args.milestone)
    from folovllm.milestone import MILESTONE, has_milestone

    caching = has_milestone("m6_prefix")
    longest = max(
        max(args.prefix_lens) + args.suffix_len + 1,
        args.nosharing_len + args.nosharing_output,
        args.fewshot_examples * args.example_len + args.question_len + args.fewshot_output,
    )
    max_model_len = longest + 16
    opts = dict(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        dtype=args.dtype,
        device=args.device,
        max_model_len=max_model_len,
        **engine_options(args),
    )
    if args.kv_cache_memory_gb:
        opts["kv_cache_memory_gb"] = args.kv_cache_memory_gb
    if caching:
        opts["enable_prefix_caching"] = True
    llm = fv.LLM(**opts)
    engine = llm.engine
    vocab = min(args.vocab_cap, engine.vocab_size)
    rng = random.Random(args.seed)
    # Warm-up: every shape class once (kernels compile on first use), then forget it all.
    for n in args.prefix_lens:
        ttft_one(engine, fv, tokens(rng, n + args.suffix_len, vocab))
    run_batch(llm, fv, [tokens(rng, args.question_len, vocab) for _ in range(4)], 4)
    reset(llm)

    result: dict[str, Any] = {"milestone": MILESTONE, "prefix_caching": caching, "ttft": []}
    rng = random.Random(args.seed + 1)  # the same prompts in both milestones
    for n in args.prefix_lens:
        cold, warm, rates = [], [], []
        for _ in range(args.reps):
            prefix = tokens(rng, n, vocab)
            cold.append(ttft_one(engine, fv, prefix + tokens(rng, args.suffix_len, vocab)))
            before = hit_stats(engine)
            warm.append(ttft_one(engine, fv, prefix + tokens(rng, args.suffix_len, vocab)))
            rates.append(hits_since(engine, before))  # of the warm request's tokens
        row = dict(prefix_len=n, suffix_len=args.suffix_len, cold_s=cold, warm_s=warm,
                   cold_median_s=statistics.median(cold), warm_median_s=statistics.median(warm),
                   hit_rate=statistics.fmean(rates))  # fmt: skip
        row["warm_speedup"] = row["cold_median_s"] / row["warm_median_s"]
        result["ttft"].append(row)
        print(f"{MILESTONE} prefix {n:5d}: TTFT cold {row['cold_median_s'] * 1e3:8.2f} ms, warm "
              f"{row['warm_median_s'] * 1e3:8.2f} ms ({row['warm_speedup']:.2f}x), "
              f"hit rate {row['hit_rate']:.3f}")  # fmt: skip
        reset(llm)

    rng = random.Random(args.seed + 2)
    runs = []
    for _ in range(3):  # fresh random prompts each time: nothing to hit
        prompts = [tokens(rng, args.nosharing_len, vocab) for _ in range(args.nosharing_reqs)]
        runs.append(run_batch(llm, fv, prompts, args.nosharing_output))
    best = max(runs, key=lambda r: r["output_tok_s"])
    result["no_sharing"] = dict(best, runs=runs, num_requests=args.nosharing_reqs,
                                prompt_len=args.nosharing_len)  # fmt: skip
    print(f"{MILESTONE} no sharing: {best['output_tok_s']:.1f} output tok/s (best of 3), "
          f"mean TTFT {best['ttft_mean_s'] * 1e3:.1f} ms, hit rate {best['hit_rate']:.3f}")  # fmt: skip
    if caching:  # hashing alone, on the host: a long prompt's full blocks, fresh each time
        from folovllm.core.kv_cache_utils import update_block_hashes
        from folovllm.request import Request

        block, n = engine.kv_cache_manager.block_size, max(args.prefix_lens)
        reqs = [Request(str(i), None, tokens(rng, n, vocab), fv.SamplingParams()) for i in range(5)]
        t0 = time.perf_counter()
        for r in reqs:
            update_block_hashes(r, block)
        per_block = (time.perf_counter() - t0) / (len(reqs) * (n // block))
        result["no_sharing"].update(hash_us_per_block=per_block * 1e6, block_size=block)
        print(f"{MILESTONE} hashing: {per_block * 1e6:.2f} us per {block}-token block")
    reset(llm)

    rng = random.Random(args.seed + 3)
    shots = [t for _ in range(args.fewshot_examples) for t in tokens(rng, args.example_len, vocab)]
    prompts = [shots + tokens(rng, args.question_len, vocab) for _ in range(args.fewshot_reqs)]
    # A dry run first: the mixed steps of this workload (decodes beside 64-token prefills over a
    # cached context) use kernel specializations no warm-up above compiled; then forget it.
    run_batch(llm, fv, prompts, args.fewshot_output)
    reset(llm)
    fs = run_batch(llm, fv, prompts, args.fewshot_output)
    result["few_shot"] = dict(fs, num_requests=args.fewshot_reqs, prefix_len=len(shots),
                              question_len=args.question_len)  # fmt: skip
    print(f"{MILESTONE} few-shot: {fs['output_tok_s']:.1f} output tok/s, mean TTFT "
          f"{fs['ttft_mean_s'] * 1e3:.1f} ms, hit rate {fs['hit_rate']:.3f}")  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "out_dir", "worker")}
    write_json(args.out, dict(result, settings=settings, device=device_info()))
    del llm, engine
    gc.collect()


def merge(paths: list[Path], out: Path, plot_path: Path | None, machine: str | None) -> None:
    res = {r["milestone"]: r for r in (json.loads(p.read_text()) for p in paths)}
    m5, m6 = res["m5_chunked"], res["m6_prefix"]
    ttft = []
    for a, b in zip(m5["ttft"], m6["ttft"]):
        ttft.append(dict(prefix_len=a["prefix_len"], m5_cold_s=a["cold_median_s"],
                         m5_warm_s=a["warm_median_s"], m6_cold_s=b["cold_median_s"],
                         m6_warm_s=b["warm_median_s"], m6_warm_speedup=b["warm_speedup"],
                         m6_warm_vs_m5=a["warm_median_s"] / b["warm_median_s"],
                         m6_hit_rate=b["hit_rate"]))  # fmt: skip
    ns5, ns6 = m5["no_sharing"], m6["no_sharing"]
    summary = {
        "ttft_vs_prefix": ttft,
        "no_sharing": {"m5_output_tok_s": ns5["output_tok_s"],
                       "m6_output_tok_s": ns6["output_tok_s"],
                       "m6_vs_m5_throughput": ns6["output_tok_s"] / ns5["output_tok_s"],
                       "m5_ttft_mean_s": ns5["ttft_mean_s"], "m6_ttft_mean_s": ns6["ttft_mean_s"],
                       "m6_hash_us_per_block": ns6.get("hash_us_per_block")},
        "few_shot": {"m5": {k: v for k, v in m5["few_shot"].items()},
                     "m6": {k: v for k, v in m6["few_shot"].items()}},
    }  # fmt: skip
    merged = {"machine": machine, "device": m6["device"], "settings": m6["settings"],
              "summary": summary, "inputs": [p.name for p in paths]}  # fmt: skip
    write_json(str(out), merged)
    if plot_path:
        plot(ttft, plot_path, m6["device"])


def plot(ttft: list[dict], path: Path, device: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["prefix_len"] for r in ttft]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("m5_warm_s", "m5 (no cache)", "o-"),
                              ("m6_cold_s", "m6 cold", "s--"),
                              ("m6_warm_s", "m6 warm (prefix cached)", "^-")):  # fmt: skip
        ax.plot(x, [r[key] * 1e3 for r in ttft], style, label=label)
    ax.set(xscale="log", yscale="log", xlabel="shared prefix (tokens), + 64-token suffix",
           ylabel="TTFT (ms, median)", title=f"TTFT vs prefix length ({device.get('gpu', 'CPU')})")  # fmt: skip
    ax.set_xticks(x, [str(v) for v in x])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "folovllm_m6_bench"))
    ap.add_argument("--worker", default=None, help="internal: run one milestone (m5 or m6)")
    ap.add_argument("--out", default=None, help="internal: the worker's JSON")
    ap.add_argument("--machine", default=None, help="words for the JSON: which machine this is")
    ap.add_argument("--preset", default=None, help="gpu | cpu (default: gpu when CUDA is there)")
    ap.add_argument("--model", default=None, help="default: folo-tiny if present")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prefix-lens", type=int, nargs="+", default=None)
    for name in ("suffix_len", "reps", "nosharing_reqs", "nosharing_len", "nosharing_output",
                 "fewshot_examples", "example_len", "question_len", "fewshot_reqs",
                 "fewshot_output"):  # fmt: skip
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    ap.add_argument("--kv-cache-memory-gb", type=float, default=None)
    ap.add_argument("--vocab-cap", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    add_engine_args(ap)
    args = ap.parse_args()
    if args.preset is None:
        import torch

        args.preset = "gpu" if torch.cuda.is_available() else "cpu"
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.model is None:
        has_tiny = (ROOT / "models" / "folo-tiny" / "config.json").is_file()
        args.model, args.dummy_weights = (
            ("folo-tiny", args.dummy_weights) if has_tiny else ("Qwen/Qwen3-0.6B", True)
        )
    if args.worker:
        args.milestone = args.worker
        return worker(args)
    out = Path(args.out_dir)
    parts = []
    passthrough = sys.argv[1:]
    for m in ("m5", "m6"):
        path = out / f"m6_prefix_{m}.json"
        cmd = [sys.executable, __file__, *passthrough, "--worker", m, "--out", str(path)]
        if args.model not in passthrough:
            cmd += ["--model", args.model] + (["--dummy-weights"] if args.dummy_weights else [])
        if subprocess.call(cmd) != 0:
            sys.exit(f"{m} run failed")
        parts.append(path)
    merge(parts, out / "m6_prefix.json", out / "m6_prefix.png", args.machine)


if __name__ == "__main__":
    main()
