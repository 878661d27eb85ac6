"""A few-shot prompt: Python keyword -> description pairs in the style of Python's docs, cut by a stop string.

    .venv/bin/python examples/few_shot.py                          # newest milestone, folo-tiny
    .venv/bin/python examples/few_shot.py --milestone m1 --keyword with --keyword return

The examples in the prompt teach the format (a "Keyword:" line, a "Description:" paragraph, a blank
line); the stop string "\\n\\n" ends each answer where the next pair would begin. The stop string is
not part of the returned text. Stop strings are matched on text, so they need a tokenizer: on the
dummy fallback (no models/folo-tiny yet) the script shows the mechanics with token ids only.
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

# Descriptions quoted from the Python language reference (also in pydoc's help topics).
SHOTS = [
    (
        "for",
        'The "for" statement is used to iterate over the elements of a sequence\n'
        "(such as a string, tuple or list) or other iterable object.",
    ),
    (
        "while",
        'The "while" statement is used for repeated execution as long as an\nexpression is true.',
    ),
    ("if", 'The "if" statement is used for conditional execution.'),
    (
        "try",
        'The "try" statement specifies exception handlers and/or cleanup code\n'
        "for a group of statements.",
    ),
]
STOP = ["\n\n", "\nKeyword:"]


def few_shot_prompt(keyword: str) -> str:
    shots = "".join(f"Keyword: {k}\nDescription: {d}\n\n" for k, d in SHOTS)
    # End inside the answer's first words: a tiny model follows a primed pattern far more reliably.
    return f"Python keywords and what they do.\n\n{shots}Keyword: {keyword}\nDescription: The"


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
            f"        noise and there is no tokenizer, so prompts are token ids and the stop\n"
            f"        string cannot apply (only max_tokens ends the requests).\n"
        )
        model, dummy = FALLBACK_MODEL, True
        max_model_len = max_model_len or 512  # short KV cache rows are plenty here
    try:
        config = EngineConfig(
            dtype=args.dtype,
            device=args.device,
            max_model_len=max_model_len,
            load_format="dummy" if dummy else "auto",
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
    ap.add_argument("--keyword", action="append", help="repeat for several (default: with, return)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 64 (8 on dummy)")
    ap.add_argument("--show-prompt", action="store_true", help="print the whole few-shot prompt")
    args = ap.parse_args()
    keywords = args.keyword or ["with", "return"]

    folovllm = import_folovllm(args.milestone)
    from folovllm import SamplingParams

    llm, model = build_llm(args)
    print(f"FoloVLLM {folovllm.MILESTONE}, model {model}\n")
    if llm.tokenizer is None:
        # No tokenizer: the prompt cannot be encoded and stop strings cannot be matched.
        prompts = [[7, 8, 9, 10, 11, 12] for _ in keywords]
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens or 8)
    else:
        prompts = [few_shot_prompt(k) for k in keywords]
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens or 64, stop=STOP)
        n_prompt = len(llm.tokenizer(prompts[0])["input_ids"])
        print(f"few-shot prompt: {len(SHOTS)} examples, {n_prompt} tokens, stop={STOP!r}")
        if args.show_prompt:
            print("-" * 72 + f"\n{prompts[0]}\n" + "-" * 72)

    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    for keyword, out in zip(keywords, outputs):
        if llm.tokenizer is not None:
            print(f"\nKeyword: {keyword}\nDescription: The{out.text}")
        else:
            print(f"\nKeyword: {keyword}\ntoken ids {out.token_ids}")
        print(
            f"  [{len(out.token_ids)} tokens, finish_reason={out.finish_reason} "
            f"({'stop string or EOS' if out.finish_reason == 'stop' else 'max_tokens or max_model_len'}), "
            f"TTFT {out.metrics.ttft * 1e3:.0f} ms]"
        )
    print(f"\n{len(outputs)} requests in {wall:.2f} s")


if __name__ == "__main__":
    main()
