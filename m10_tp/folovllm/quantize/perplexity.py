"""Perplexity and bits per byte on the evaluation half of folo-tiny's held-out text.

    python -m folovllm.quantize.perplexity DIR [DIR ...] [--json OUT]

The procedure of tools/train_tiny_model.py: the token stream is cut into non-overlapping windows
of ``seqlen`` tokens (a last window of >= 2 tokens is kept), each scored from its first token;
perplexity = exp(mean NLL over the predicted tokens), in float32. A GPTQ checkpoint is evaluated
through its exact float reference (reference.py); any other directory is loaded by transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from folovllm.model_executor.model_loader import resolve_model_path
from folovllm.quantize.calibration import evaluation_text, tokenize

EVAL_SEQLEN = 256


def load_model(model_dir: str | Path, device: str = "cpu"):
    """(model in float32, tokenizer, label) for a plain or a GPTQ checkpoint directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model_dir)
    config = json.loads((path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    qc = config.get("quantization_config")
    if qc:
        from folovllm.quantize.reference import hf_model_from_gptq_checkpoint

        model = hf_model_from_gptq_checkpoint(path, torch.float32, device)
        method = (qc.get("meta") or {}).get("method", "gptq")
        label = f"{method} g{qc['group_size']}" + (" act" if qc.get("desc_act") else "")
        label += "" if qc.get("sym", True) else " asym"
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=False, local_files_only=True
        )
        model = model.to(device).eval()
        label = str(config.get("dtype") or config.get("torch_dtype") or "float")
    return model, tokenizer, label


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes behind each token id of a byte-level BPE (one character per byte; specials 0)."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    special = set(tokenizer.all_special_ids)
    lengths = torch.zeros(max(vocab.values()) + 1, dtype=torch.long)
    for piece, i in vocab.items():
        lengths[i] = 0 if i in special else len(piece)
    return lengths


@torch.no_grad()
def perplexity(
    model, ids: torch.Tensor, seqlen: int = EVAL_SEQLEN, token_bytes: torch.Tensor | None = None
) -> dict:
    """exp(mean NLL) of ``model`` over non-overlapping windows of the 1-D stream ``ids``."""
    device = next(model.parameters()).device
    windows = [w for w in ids.split(seqlen) if len(w) >= 2]
    nll, tokens, nbytes = 0.0, 0, 0
    for w in windows:
        x = w.unsqueeze(0).to(device)
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll += float(F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum"))
        tokens += len(w) - 1
        if token_bytes is not None:
            nbytes += int(token_bytes[w[1:]].sum())
    res = {"perplexity": math.exp(nll / tokens), "tokens": tokens, "windows": len(windows)}
    if nbytes:
        res["bits_per_byte"] = nll / math.log(2) / nbytes
    return res


def evaluate(model_dir: str | Path, device: str = "cpu", seqlen: int = EVAL_SEQLEN) -> dict:
    """Perplexity of one model directory on the held-out evaluation text."""
    model, tokenizer, label = load_model(model_dir, device)
    ids = tokenize(tokenizer, evaluation_text())
    try:
        nbytes = token_byte_lengths(tokenizer)
    except AttributeError:  # not a fast tokenizer: perplexity only
        nbytes = None
    return {"model": str(model_dir), "label": label, **perplexity(model, ids, seqlen, nbytes)}


def format_table(rows: list[dict]) -> str:
    lines = ["| model | weights | perplexity | bits/byte | tokens |", "|---|---|---|---|---|"]
    for r in rows:
        bpb = f"{r['bits_per_byte']:.4f}" if "bits_per_byte" in r else "-"
        lines.append(
            f"| {r['model']} | {r['label']} | {r['perplexity']:.3f} | {bpb} | {r['tokens']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", nargs="+", help="model directories (or names such as folo-tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seqlen", type=int, default=EVAL_SEQLEN)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = [evaluate(m, args.device, args.seqlen) for m in args.models]
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
