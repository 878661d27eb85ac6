"""What an fp8 KV cache (kv_cache_dtype="fp8", float8 e4m3, scale 1.0) costs in accuracy: the same
prompts, greedy, with the cache in the model's dtype and in fp8, on a trained model (folo-tiny).

Reports the share of generated tokens that agree (up to the first divergence, per prompt) and the
error of the first token's logits (the prefill already reads K/V back from the cache).

    python benchmarks/kv_fp8_accuracy.py --milestone m8 --out /tmp/kv_fp8_accuracy.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, import_engine, write_json  # noqa: E402

PROMPTS = [
    "The for statement",
    "A list comprehension",
    "The import system",
    "Return a new dictionary",
    "Exceptions are raised",
    "The with statement",
    "Generators are functions",
    "A module is a file",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m8")
    ap.add_argument("--model", default="folo-tiny")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    import_engine(args.milestone)
    from folovllm import EngineConfig, SamplingParams
    from folovllm.engine.llm_engine import LLMEngine

    def run(kv_cache_dtype: str):
        engine = LLMEngine(
            EngineConfig(
                model=args.model,
                dtype=args.dtype,
                max_model_len=512,
                kv_cache_memory_gb=0.5,
                kv_cache_dtype=kv_cache_dtype,
            ),  # fmt: skip
            keep_logits=True,
        )
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
        tokens, first_logits = [], []
        for p in PROMPTS:  # one at a time: the first step's logits are this prompt's
            rid = engine.add_request(p, params)
            done = None
            first = None
            while engine.has_unfinished_requests():
                outs = engine.step()
                if first is None:
                    first = engine.last_runner_output.logits[0].float().cpu()
                done = next((o for o in outs if o.request_id == rid), done)
            tokens.append(done.token_ids)
            first_logits.append(first)
        return tokens, first_logits

    ref_tokens, ref_logits = run("auto")
    fp8_tokens, fp8_logits = run("fp8")
    agree = []
    for a, b in zip(ref_tokens, fp8_tokens):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        agree.append(same)
    err = [(a - b).abs() for a, b in zip(ref_logits, fp8_logits)]
    top1 = sum(int(a.argmax() == b.argmax()) for a, b in zip(ref_logits, fp8_logits))
    result = {
        "benchmark": "kv_fp8_accuracy",
        "device": device_info(),
        "model": args.model,
        "dtype": args.dtype,
        "tokens_per_prompt": args.max_tokens,
        "identical_prefix_tokens": agree,
        "identical_prefix_share": sum(agree) / (len(agree) * args.max_tokens),
        "prompts_fully_identical": sum(a == args.max_tokens for a in agree),
        "first_token_top1_agreement": top1 / len(PROMPTS),
        "first_logits_max_abs_err": max(float(e.max()) for e in err),
        "first_logits_mean_abs_err": sum(float(e.mean()) for e in err) / len(err),
        "first_logits_mean_abs": sum(float(a.abs().mean()) for a in ref_logits) / len(err),
    }
    print(
        f"fp8 KV vs {args.dtype} KV on {args.model}, {len(PROMPTS)} prompts x {args.max_tokens} "
        f"greedy tokens on {result['device'].get('gpu', 'cpu')}:\n"
        f"  tokens identical up to the first divergence: {result['identical_prefix_share']:.1%} "
        f"({result['prompts_fully_identical']}/{len(PROMPTS)} prompts entirely)\n"
        f"  first-token logits: top-1 agreement {result['first_token_top1_agreement']:.0%}, "
        f"mean |err| {result['first_logits_mean_abs_err']:.4f} (mean |logit| "
        f"{result['first_logits_mean_abs']:.3f}), max |err| {result['first_logits_max_abs_err']:.4f}"
    )
    _ = torch
    write_json(args.out, result)


if __name__ == "__main__":
    main()
