"""Correctness on the GPU: greedy tokens of one milestone vs transformers, same weights and dtype.

    python benchmarks/gpu_check.py --milestone m3 --model folo-tiny --dtype float32
Prints, per prompt, how many of the new tokens agree and where they first differ (with the top-2
logit gap of transformers there, to tell a near-tie from a bug). Exits 1 on a real mismatch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_engine_args, engine_options, import_engine  # noqa: E402

PROMPTS = [
    "The for statement",
    "A list comprehension",
    "The import system",
    "Return a new dictionary",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m3")
    ap.add_argument("--model", default="folo-tiny")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--tie", type=float, default=None, help="logit gap counted as a tie (default by dtype)"
    )
    add_engine_args(ap)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    fv = import_engine(args.milestone)
    from folovllm.model_executor.model_loader import resolve_model_path

    tie = args.tie if args.tie is not None else (1e-3 if args.dtype == "float32" else 0.125)
    llm = fv.LLM(model=args.model, dtype=args.dtype, max_model_len=512, **engine_options(args))
    device = llm.engine.model_config.device
    dtype = getattr(torch, args.dtype)
    hf = (
        AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=dtype)
        .to(device)
        .eval()
    )
    hf.generation_config.eos_token_id = None
    params = fv.SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    bad = 0
    for out in outs:
        ids = torch.tensor([out.prompt_token_ids], device=device)
        with torch.no_grad():
            ref = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=args.max_tokens,
                pad_token_id=0,
            )[0, ids.shape[1] :].tolist()
        same = next((i for i, (a, b) in enumerate(zip(out.token_ids, ref)) if a != b), len(ref))
        verdict = "identical"
        if same < len(ref):
            ctx = torch.tensor([out.prompt_token_ids + ref[:same]], device=device)
            with torch.no_grad():
                top2 = hf(ctx).logits[0, -1].float().topk(2).values
            gap = float(top2[0] - top2[1])
            verdict = f"first differs at token {same}, transformers' top-2 gap {gap:.4f} -> " + (
                "near-tie" if gap < tie else "MISMATCH"
            )
            bad += gap >= tie
        print(
            f"{fv.MILESTONE} {args.dtype} {device} {engine_options(args)}: {out.prompt!r}: "
            f"{same}/{len(ref)} agree; {verdict}"
        )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
