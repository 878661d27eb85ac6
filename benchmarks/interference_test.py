"""Prefill/decode interference: what one long prompt does to requests that are already decoding.

Milestone-agnostic (m2+; one milestone per process). Token times are taken here, after each
``engine.step()`` (which ends in the step's one device->host sync), so every milestone is measured
the same way.

Scenario A (``--scenario A``): ``--num-background`` requests with ``--background-len``-token prompts
decode steadily; after ``--steady-steps`` steps, ``--num-long`` prompts of ``--long-len`` tokens arrive
at once. The injection window runs from their arrival until the last of them has its first token.
Reported: the background requests' inter-token latency (ITL) p50 / p99 / max inside the window, its
median before the injection (steady state), and the long prompts' TTFT.

Scenario B (``--scenario B``): Poisson arrivals at ``--rate`` requests/s, ``--long-fraction`` of the
prompts ``--long-len`` tokens and the rest ``--short-len``; reported: short-prompt TTFT p50 / p99 and
ITL p50 / p99 of everyone.

``--budgets`` (m5+): the runs use one engine built with the largest budget; each run sets the
scheduler's token budget (and ``--thresholds``, long_prefill_token_threshold) before it starts, so
weights, CUDA graphs and the KV cache are the same for every budget. m4 and earlier run once, with
their own whole-prompt scheduling.

    python benchmarks/interference_test.py --milestone m5 --model folo-tiny --preset cpu
    python benchmarks/interference_test.py --milestone m4 --model Qwen/Qwen3-0.6B --dummy-weights \
        --out m4.json
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_engine_args, device_info, engine_options, import_engine, write_json  # noqa: E402

PRESETS = {
    # the sizes: 64 x 128-token prompts decoding, one 16k prompt or four 8k prompts
    "gpu": dict(num_background=64, background_len=128, long_len=16384, steady_steps=48,
                post_steps=24, budgets=[512, 2048, 8192], short_len=256, b_requests=120,
                rate=20.0, b_output=64, b_budget=2048, b_threshold=512),
    # a smoke test on a CPU with the tiny model (minutes, not hours)
    "cpu": dict(num_background=8, background_len=32, long_len=1024, steady_steps=8,
                post_steps=4, budgets=[64, 256, 1024], short_len=32, b_requests=16,
                rate=4.0, b_output=8, b_budget=256, b_threshold=64),
}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


class Driver:
    """Steps one engine and timestamps every token as it comes back."""

    def __init__(self, engine, fv) -> None:
        self.engine, self.fv = engine, fv
        self.times: dict[str, list[float]] = {}  # request id -> time of each output token
        self.reqs: dict[str, Any] = {}
        self.step_log: list[tuple[float, int]] = []  # (end time, tokens computed in the step)

    def add(self, prompt: list[int], max_tokens: int) -> str:
        params = self.fv.SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        rid = self.engine.add_request(prompt, params)
        self.reqs[rid] = self.engine.requests[rid]
        self.times[rid] = []
        return rid

    def step(self) -> None:
        self.engine.step()
        now = time.perf_counter()
        so_tokens = self.engine.stats.steps[-1].num_tokens if self.engine.stats.steps else 0
        self.step_log.append((now, so_tokens))
        for rid, req in self.reqs.items():
            t = self.times[rid]
            while len(t) < req.num_output_tokens:
                t.append(now)

    def finish_all(self) -> None:
        for rid in list(self.reqs):
            if rid in self.engine.requests:
                self.engine.abort_request(rid)
        while self.engine.has_unfinished_requests():
            self.engine.step()


def prompts_of(rng: random.Random, n: int, length: int, vocab: int) -> list[list[int]]:
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


def scenario_a(engine, fv, args, num_long: int, long_len: int, rng) -> dict[str, Any]:
    d = Driver(engine, fv)
    vocab = min(args.vocab_cap, engine.vocab_size)
    bg = [
        d.add(p, args.max_model_len - args.background_len)
        for p in prompts_of(rng, args.num_background, args.background_len, vocab)
    ]
    while any(not d.times[r] for r in bg):  # every background prompt prefilled
        d.step()
    t_steady = time.perf_counter()
    for _ in range(args.steady_steps):
        d.step()
    t_inject = time.perf_counter()
    longs = [d.add(p, 1) for p in prompts_of(rng, num_long, long_len, vocab)]
    steps_before = len(d.step_log)
    while any(not d.times[r] for r in longs):
        d.step()
    t_end = max(d.times[r][0] for r in longs)
    window_steps = len(d.step_log) - steps_before
    for _ in range(args.post_steps):
        d.step()
    gaps_steady, gaps_window, timeline = [], [], []
    for r in bg:
        t = d.times[r]
        for a, b in zip(t, t[1:]):
            if a >= t_steady and b <= t_inject:
                gaps_steady.append(b - a)
            elif b <= t_end:
                gaps_window.append(b - a)
    # One point per step that gave the background a token: (time since injection, gap).
    seen = sorted({x for r in bg for x in d.times[r]})
    timeline = [(b - t_inject, b - a) for a, b in zip(seen, seen[1:])]
    d.finish_all()
    steady = percentile(gaps_steady, 50)
    p99 = percentile(gaps_window, 99)
    return {
        "num_long": num_long,
        "long_len": long_len,
        "long_ttft_s": [d.times[r][0] - t_inject for r in longs],
        "window_s": t_end - t_inject,
        "window_steps": window_steps,
        "steady_itl_p50_s": steady,
        "window_itl_p50_s": percentile(gaps_window, 50),
        "window_itl_p99_s": p99,
        "window_itl_max_s": max(gaps_window, default=float("nan")),
        "p99_over_steady_p50": p99 / steady if steady else float("nan"),
        "timeline": [[round(x, 6), round(y, 6)] for x, y in timeline],
    }


def scenario_b(engine, fv, args, rng) -> dict[str, Any]:
    d = Driver(engine, fv)
    vocab = min(args.vocab_cap, engine.vocab_size)
    arrivals, t = [], 0.0
    for i in range(args.b_requests):
        t += rng.expovariate(args.rate)
        long = int((i + 1) * args.long_fraction) > int(i * args.long_fraction)  # evenly spread
        n = args.long_len // 2 if long else args.short_len  # 8k of the 16k preset
        arrivals.append((t, long, prompts_of(rng, 1, n, vocab)[0]))
    start = time.perf_counter()
    added: list[tuple[str, float, bool]] = []
    i = 0
    while i < len(arrivals) or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, long, prompt = arrivals[i]
            added.append((d.add(prompt, args.b_output), start + at, long))
            i += 1
        if engine.has_unfinished_requests():
            d.step()
        elif i < len(arrivals):
            time.sleep(max(0.0, arrivals[i][0] - (time.perf_counter() - start)))
    short_ttft = [d.times[r][0] - at for r, at, long in added if not long]
    long_ttft = [d.times[r][0] - at for r, at, long in added if long]
    itl = [b - a for r, _, _ in added for a, b in zip(d.times[r], d.times[r][1:])]
    return {
        "num_requests": len(added),
        "num_long": sum(1 for _, _, long in added if long),
        "wall_s": time.perf_counter() - start,
        "short_ttft_p50_s": percentile(short_ttft, 50),
        "short_ttft_p99_s": percentile(short_ttft, 99),
        "long_ttft_p50_s": percentile(long_ttft, 50),
        "itl_p50_s": percentile(itl, 50),
        "itl_p99_s": percentile(itl, 99),
    }


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Background ITL over time around the injection, one panel per scenario-A shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for res in results for r in res["runs"] if r["scenario"] == "A"]
    shapes = sorted({(r["num_long"], r["long_len"]) for r in runs})
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.2), squeeze=False)
    for ax, (n, length) in zip(axes[0], shapes):
        for r in runs:
            if (r["num_long"], r["long_len"]) != (n, length) or not r["timeline"]:
                continue
            x, y = zip(*r["timeline"])
            ax.step([v * 1e3 for v in x], [v * 1e3 for v in y], where="pre", label=r["label"], lw=1)
        ax.axvline(0, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("time since the long prompt(s) arrived (ms)")
        ax.set_ylabel("background inter-token latency (ms)")
        ax.set_title(f"{n} x {length}-token prompt(s) join decoding requests")
        ax.legend(fontsize=8)
    dev = results[0].get("device", {})
    fig.suptitle(f"Prefill/decode interference ({dev.get('gpu', dev.get('cpu', ''))})", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def merge(paths: list[str], out: str | None, plot_path: str | None) -> None:
    import json

    results = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for res in results for r in res["runs"]]
    summary = [{k: v for k, v in r.items() if k != "timeline"} for r in rows]
    write_json(out, {"device": results[0].get("device"), "settings": results[0].get("settings"),
                     "summary": summary, "inputs": [Path(p).name for p in paths]})  # fmt: skip
    if plot_path:
        plot(results, plot_path)


def set_budget(engine, budget: int | None, threshold: int | None) -> None:
    """m5+: the scheduler's one token budget and per-request chunk cap for the next run."""
    s = engine.scheduler
    s.max_num_batched_tokens = budget
    s.threshold = threshold or None


def warm_up(engine, fv, args) -> None:
    """Every shape class once (kernels compile on first use): a long prompt and decodes."""
    d = Driver(engine, fv)
    rng = random.Random(args.seed)
    vocab = min(args.vocab_cap, engine.vocab_size)
    for p in prompts_of(rng, 2, args.background_len, vocab) + prompts_of(
        rng, 1, args.long_len, vocab
    ):
        d.add(p, 4)
    while engine.has_unfinished_requests():
        d.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--milestone", default="m5")
    ap.add_argument("--model", default="Qwen/Qwen3-0.6B")
    ap.add_argument("--dummy-weights", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--scenario", nargs="+", default=["A", "B"], choices=["A", "B"])
    for name in ("num_background", "background_len", "long_len", "steady_steps", "post_steps",
                 "short_len", "b_requests", "b_output", "b_budget", "b_threshold"):  # fmt: skip
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    ap.add_argument("--rate", type=float, default=None, help="scenario B: requests per second")
    ap.add_argument("--long-fraction", type=float, default=0.1)
    ap.add_argument("--budgets", type=int, nargs="+", default=None, help="m5+: token budgets")
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--kv-cache-memory-gb", type=float, default=None)
    ap.add_argument("--vocab-cap", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, help="JSON files of earlier runs: merge")
    ap.add_argument("--plot", default=None, help="with --merge: the PNG to write")
    add_engine_args(ap)
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out, args.plot)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.max_model_len = args.long_len + 64

    fv = import_engine(args.milestone)
    from folovllm.milestone import MILESTONE, has_milestone

    chunked = has_milestone("m5_chunked")
    opts = dict(
        model=args.model,
        load_format="dummy" if args.dummy_weights else "auto",
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        **engine_options(args),
    )
    if args.kv_cache_memory_gb:
        opts["kv_cache_memory_gb"] = args.kv_cache_memory_gb
    if chunked:
        opts["max_num_batched_tokens"] = max(args.budgets)
    llm = fv.LLM(**opts)
    engine = llm.engine
    warm_up(engine, fv, args)

    runs: list[dict[str, Any]] = []
    configs: list[tuple[str, int | None, int | None]] = (
        [(f"{MILESTONE} budget {b}", b, None) for b in args.budgets]
        if chunked
        else [(MILESTONE, None, None)]
    )
    for label, budget, _ in configs:
        if budget is not None:
            set_budget(engine, budget, None)
            warm_up(engine, fv, args)  # shapes of this budget compile before the timed runs
        if "A" in args.scenario:
            for num_long, long_len in ((1, args.long_len), (4, args.long_len // 2)):
                r = scenario_a(engine, fv, args, num_long, long_len, random.Random(args.seed))
                r.update(label=label, milestone=MILESTONE, budget=budget, scenario="A")
                runs.append(r)
                print(
                    f"A {label:24s} {num_long} x {long_len:6d}: ITL steady p50 "
                    f"{r['steady_itl_p50_s'] * 1e3:7.2f} ms | window p50 {r['window_itl_p50_s'] * 1e3:7.2f} "
                    f"p99 {r['window_itl_p99_s'] * 1e3:7.2f} max {r['window_itl_max_s'] * 1e3:7.2f} ms | "
                    f"long TTFT {max(r['long_ttft_s']) * 1e3:8.1f} ms"
                )
    if "B" in args.scenario:
        b = args.b_budget
        b_configs = (
            [(f"{MILESTONE} budget {b} threshold off", b, None),
             (f"{MILESTONE} budget {b} threshold {args.b_threshold}", b, args.b_threshold)]
            if chunked
            else [(MILESTONE, None, None)]
        )  # fmt: skip
        for label, budget, threshold in b_configs:
            if budget is not None:
                set_budget(engine, budget, threshold)
            r = scenario_b(engine, fv, args, random.Random(args.seed + 1))
            r.update(label=label, milestone=MILESTONE, budget=budget, threshold=threshold,
                     scenario="B")  # fmt: skip
            runs.append(r)
            print(
                f"B {label:40s}: short TTFT p50 {r['short_ttft_p50_s'] * 1e3:8.1f} p99 "
                f"{r['short_ttft_p99_s'] * 1e3:8.1f} ms | ITL p50 {r['itl_p50_s'] * 1e3:6.2f} "
                f"p99 {r['itl_p99_s'] * 1e3:6.2f} ms ({r['num_requests']} requests, {r['num_long']} long)"
            )
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    write_json(args.out, {"milestone": MILESTONE, "settings": settings, "device": device_info(),
                          "runs": runs})  # fmt: skip
    del llm, engine
    gc.collect()


if __name__ == "__main__":
    main()
