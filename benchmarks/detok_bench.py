"""Detokenization on the host, with a real byte-level BPE tokenizer (folo-tiny's): what it would
cost per engine step at batch 256 if every request were detokenized every step, against m8's
rule (only requests with stop strings every step; the others once, when they finish).

The engine's ``IncrementalDetokenizer`` is driven exactly as ``LLMEngine._apply`` drives it, on
random output tokens; no model runs. Host-only: run it on the machine whose host you care about.

    python benchmarks/detok_bench.py --milestone m8 --out /tmp/detok_cpu.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, device_info, import_engine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m8")
    ap.add_argument("--tokenizer", default=str(ROOT / "models" / "folo-tiny"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import_engine(args.milestone)
    from transformers import AutoTokenizer

    from folovllm.engine.detokenizer import IncrementalDetokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    rng = random.Random(0)
    vocab = len(tok)
    prompts = [[rng.randrange(vocab) for _ in range(64)] for _ in range(args.batch)]
    outputs = [[rng.randrange(vocab) for _ in range(args.steps)] for _ in range(args.batch)]

    # Every request, every step (what streaming or a stop string on every request costs).
    detoks = [IncrementalDetokenizer(tok, p, ["\x00never"]) for p in prompts]
    t0 = time.perf_counter()
    for step in range(args.steps):
        for d, out in zip(detoks, outputs):
            d.update(out[step])
    per_step = (time.perf_counter() - t0) / args.steps
    # m8's rule: no stop strings -> nothing per step; each request decoded once when it ends.
    detoks = [IncrementalDetokenizer(tok, p, []) for p in prompts]
    t0 = time.perf_counter()
    for d, out in zip(detoks, outputs):
        d.catch_up(out)
        d.flush()
    at_finish = time.perf_counter() - t0
    result = {
        "benchmark": "detokenize",
        "device": device_info(),
        "tokenizer": Path(args.tokenizer).name,
        "vocab": vocab,
        "batch": args.batch,
        "steps": args.steps,
        "every_step_ms_per_step": per_step * 1e3,
        "at_finish_total_ms": at_finish * 1e3,
        "at_finish_ms_per_step_amortized": at_finish * 1e3 / args.steps,
        "us_per_token": per_step * 1e6 / args.batch,
    }
    print(
        f"{args.batch} requests x {args.steps} tokens, {result['tokenizer']} (vocab {vocab}): "
        f"every request every step {result['every_step_ms_per_step']:.2f} ms/step "
        f"({result['us_per_token']:.1f} us/token); m8 (at finish) {at_finish * 1e3:.0f} ms once = "
        f"{result['at_finish_ms_per_step_amortized']:.2f} ms/step amortized, off the step path"
    )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
