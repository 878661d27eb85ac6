"""Which attention backend the engine uses (one at this milestone: the torch reference)."""

from __future__ import annotations

from folovllm.attention.backends.abstract import AttentionBackend


def get_attn_backend(name: str | None = None) -> type[AttentionBackend]:
    from folovllm.attention.backends.torch_attn import TorchAttentionBackend

    if name not in (None, "torch"):
        raise ValueError(f"attention_backend={name!r}: this milestone has only 'torch'")
    return TorchAttentionBackend
