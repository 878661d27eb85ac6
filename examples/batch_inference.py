"""Several prompts, one SamplingParams each; outputs come back in input order, plus a throughput line.

    .venv/bin/python examples/batch_inference.py                   # newest milestone, folo-tiny
    .venv/bin/python examples/batch_inference.py --milestone m1    # one request at a time
    .venv/bin/python examples/batch_inference.py --milestone m2    # continuous batching (m2 on)

m1 serves the requests one after another (each waits for the previous to finish: look at the TTFT
column); from m2 on they share every step, so the same script prints a higher throughput.
Without models/folo-tiny the script falls back to Qwen3-0.6B's shapes with random weights.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MILESTONES = sorted(p.name for p in ROOT.glob("m[0-9]_*") if p.is_dir())
FALLBACK_MODEL = "Qwen/Qwen3-0.6B"

PROMPTS = [
    "The for statement",
    "A list comprehension",
    "The import system",
    "An exception is raised",
    "Return a new dictionary",
]
# The same prompts as arbitrary token ids, for a model without a tokenizer (dummy weights).
TOKEN_ID_PROMPTS = [
    [785, 369, 5114],
    [32, 1140, 61094],
    [785, 1159, 1849],
    [2082, 4683],
    [5598, 264],
]


def import_folovllm(milestone: str):
    """Import ``folovllm`` from one milestone directory ('m1' or 'm1_basic')."""
    matches = [m for m in MILESTONES if m.split("_")[0] == milestone.split("_")[0]]
    if not matches:
        sys.exit(f"no milestone directory for {milestone!r}; present: {', '.join(MILESTONES)}")
    if matches[0].startswith("m0_"):
        sys.exit("m0_init cannot generate text yet; use --milestone m1 or later")
    sys.path.insert(0, str(ROOT / matches[0]))
    return importlib.import_module("folovllm")


def build_llm(args):
    """The LLM for --model; folo-tiny falls back to dummy Qwen3-0.6B when it is not there yet."""
    from folovllm import LLM, EngineConfig

    model, max_model_len, dummy = args.model, args.max_model_len, args.dummy_weights
    if model == "folo-tiny" and not (ROOT / "models" / "folo-tiny" / "config.json").is_file():
        print(
            f"NOTICE: models/folo-tiny is not there yet (tools/train_tiny_model.py trains it).\n"
            f"        Using {FALLBACK_MODEL}'s shapes with RANDOM (dummy) weights: the tokens are\n"
            f"        noise and there is no tokenizer, so prompts are token ids.\n"
        )
        model, dummy = FALLBACK_MODEL, True
        max_model_len = max_model_len or 512  # short KV cache rows are plenty here
    options = {}
    if args.max_batch_size:  # m2 on; m1 refuses anything but 1 and says which milestone has it
        options["max_batch_size"] = args.max_batch_size
    try:
        config = EngineConfig(
            dtype=args.dtype,
            device=args.device,
            max_model_len=max_model_len,
            load_format="dummy" if dummy else "auto",
            **options,
        )
        return LLM(model=model, engine_config=config), model
    except (ValueError, FileNotFoundError) as e:  # the engine's message names what to change
        sys.exit(f"error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default=MILESTONES[-1], help="mK or mK_name (default: newest)")
    ap.add_argument("--model", default="folo-tiny", help="local dir, hub id or a name in models/")
    ap.add_argument("--dummy-weights", action="store_true", help="random weights of the shapes")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--max-batch-size", type=int, default=None, help="m2 and later")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 32 (8 on dummy)")
    args = ap.parse_args()

    folovllm = import_folovllm(args.milestone)
    from folovllm import SamplingParams

    llm, model = build_llm(args)
    no_tokenizer = llm.tokenizer is None  # config-only model: prompts are token ids, no text
    prompts = TOKEN_ID_PROMPTS if no_tokenizer else PROMPTS
    n = args.max_tokens or (8 if no_tokenizer else 32)
    # One SamplingParams per prompt: each request keeps its own settings inside a shared batch.
    params = [
        SamplingParams(temperature=0, max_tokens=n),
        SamplingParams(temperature=0.7, top_p=0.9, seed=1, max_tokens=n),
        SamplingParams(temperature=0, max_tokens=n // 2),
        SamplingParams(temperature=1.0, top_k=20, seed=2, max_tokens=n),
        SamplingParams(temperature=0, repetition_penalty=1.3, max_tokens=n),
    ]
    print(f"FoloVLLM {folovllm.MILESTONE}, model {model}, {len(prompts)} prompts\n")

    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start

    for i, out in enumerate(outputs):  # outputs[i] answers prompts[i]
        prompt = out.prompt if out.prompt is not None else out.prompt_token_ids
        body = repr(out.text) if out.text else f"token ids {out.token_ids}"
        m = out.metrics
        print(f"{i}. {prompt!r} -> {body}")
        print(
            f"   {len(out.token_ids)} tokens, finish_reason={out.finish_reason}, "
            f"TTFT {m.ttft * 1e3:.0f} ms, E2E {m.e2e * 1e3:.0f} ms"
        )
    total = sum(len(o.token_ids) for o in outputs)
    print(
        f"\nthroughput: {total} output tokens from {len(outputs)} requests in {wall:.2f} s "
        f"= {total / wall:.1f} tokens/s"
    )


if __name__ == "__main__":
    main()
