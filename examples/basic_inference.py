"""One prompt, generated greedily and then sampled; prints the text and TTFT / TPOT.

    .venv/bin/python examples/basic_inference.py                   # newest milestone, folo-tiny
    .venv/bin/python examples/basic_inference.py --milestone m1 --prompt "A list comprehension"
    .venv/bin/python examples/basic_inference.py --temperature 0.7 --top-p 0.9 --top-k 40 --seed 1

Runs against any milestone >= m1: ``--milestone mK`` puts that milestone's directory first on
sys.path before ``import folovllm``. Without models/folo-tiny (it is trained by
tools/train_tiny_model.py) the script falls back to Qwen3-0.6B's shapes with random weights.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MILESTONES = sorted(p.name for p in ROOT.glob("m[0-9]_*") if p.is_dir())
FALLBACK_MODEL = "Qwen/Qwen3-0.6B"


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
        max_model_len = max_model_len or 512  # one short KV cache row is plenty here
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


def show(label: str, out) -> None:
    m = out.metrics
    tpot = f"{m.tpot * 1e3:.1f} ms" if m.tpot is not None else "n/a"
    body = repr(out.text) if out.text else f"token ids {out.token_ids}"
    print(f"[{label}] {body}")
    print(
        f"    {len(out.token_ids)} tokens, finish_reason={out.finish_reason}, "
        f"TTFT {m.ttft * 1e3:.1f} ms, TPOT {tpot}, E2E {m.e2e * 1e3:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default=MILESTONES[-1], help="mK or mK_name (default: newest)")
    ap.add_argument("--model", default="folo-tiny", help="local dir, hub id or a name in models/")
    ap.add_argument("--dummy-weights", action="store_true", help="random weights of the shapes")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--prompt", default="The for statement")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 40 (16 on dummy)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--repetition-penalty", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    folovllm = import_folovllm(args.milestone)
    from folovllm import SamplingParams

    llm, model = build_llm(args)
    no_tokenizer = llm.tokenizer is None  # config-only model: prompts are token ids, no text
    prompt = [785, 369, 5114, 374, 1483, 311] if no_tokenizer else args.prompt
    max_tokens = args.max_tokens or (16 if no_tokenizer else 40)
    print(f"FoloVLLM {folovllm.MILESTONE}, model {model}")
    print(f"prompt: {prompt!r}\n")

    greedy = SamplingParams(temperature=0, max_tokens=max_tokens)
    (out,) = llm.generate(prompt, greedy, use_tqdm=False)
    show("greedy", out)

    # A seeded request draws from its own torch.Generator: the same seed gives the same tokens,
    # whatever else the engine is running.
    sampled = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        max_tokens=max_tokens,
    )
    knobs = (
        f"temperature={args.temperature}, top_p={args.top_p}, top_k={args.top_k}, "
        f"repetition_penalty={args.repetition_penalty}, seed={args.seed}"
    )
    first, again = llm.generate([prompt, prompt], sampled, use_tqdm=False)
    show(f"sampled: {knobs}", first)
    same = "same tokens" if first.token_ids == again.token_ids else "DIFFERENT tokens (a bug)"
    print(f"\nthe same seed again gives the {same}")


if __name__ == "__main__":
    main()
