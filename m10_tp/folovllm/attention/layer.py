"""The Attention layer: writes this step's K/V into the cache, then lets the backend attend.

The layer owns nothing but its shape and a handle to its slice of the KV cache (bound by the
runner); the metadata saying which tokens belong to which request comes from the forward context.
"""

from __future__ import annotations

import torch
from torch import nn

from folovllm.attention.backends import get_attn_backend
from folovllm.forward_context import get_forward_context


class Attention(nn.Module):
    def __init__(
        self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int, layer_idx: int
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.layer_idx = layer_idx
        self.impl = get_attn_backend().get_impl_cls()(num_heads, head_dim, scale, num_kv_heads)
        self.kv_cache: torch.Tensor | None = None  # [2, ...backend's shape], bound by the runner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [tokens, heads, dim]; k, v: [tokens, kv_heads, dim] -> [tokens, heads, dim]."""
        if self.kv_cache is None:
            raise RuntimeError(f"layer {self.layer_idx}: no KV cache bound (the runner binds it)")
        return self.impl.forward(q, k, v, self.kv_cache, get_forward_context().attn_metadata)
