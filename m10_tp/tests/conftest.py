"""Shared fixtures: tiny random Qwen2/Qwen3 checkpoints made with transformers (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter (numpy), which must be chosen before
# triton is imported. On the GPU machine the same tests run the compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (run on the GPU machine)")


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TINY = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

CORPUS = [
    "The for statement is used to iterate over the elements of a sequence.",
    "A list comprehension provides a concise way to create lists.",
    "The import system finds modules and loads them.",
    "Hello world! Numbers like 12345 and symbols like {} [] () are tokens too.",
]


def make_tokenizer(vocab_size: int):
    """A small byte-level BPE tokenizer with a real EOS token, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def make_checkpoint(
    path: Path, kind: str, seed: int = 0, max_shard_size: str | None = None, **overrides
) -> Path:
    """Save a random-weight Qwen2 or Qwen3 model plus tokenizer to ``path``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = make_tokenizer(TINY["vocab_size"])
    eos = tokenizer.eos_token_id
    cfg = dict(TINY, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **overrides)
    torch.manual_seed(seed)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    elif kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=32, **cfg))
    else:
        raise ValueError(kind)
    # HF's default init (std 0.02) makes near-uniform logits; larger weights give decisive tokens.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.2 if p.dim() > 1 else 0.05)
    model = model.to(torch.float32).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["qwen2", "qwen3"])
def tiny_model(request, tmp_path_factory) -> Path:
    """A tiny random checkpoint directory, once per architecture."""
    return make_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("qwen3"), "qwen3")
