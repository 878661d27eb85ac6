"""Rotary position embedding (RoPE), the "rotate half" (GPT-NeoX) layout that Qwen uses.

Each pair of dimensions (i, i + d/2) of q and k is rotated by the angle ``position * theta^(-2i/d)``,
so the dot product q.k depends only on the distance between the two positions.
"""

from __future__ import annotations

import torch
from torch import nn

from folovllm.model_executor.layers import fused


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = 1.0 / (
            base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        )
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_position, head_dim / 2]
        # Not a parameter: rebuilt from the config, never loaded from the checkpoint.
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [tokens, num_heads, head_dim], k: [tokens, num_kv_heads, head_dim]."""
        if fused.use_fused(q):  # one kernel each, rotating in place (m8)
            fused.rotary_(positions, q, self.cos_cache, self.sin_cache)
            return q, fused.rotary_(positions, k, self.cos_cache, self.sin_cache)
        cos = self.cos_cache[positions].unsqueeze(1).to(q.dtype)
        sin = self.sin_cache[positions].unsqueeze(1).to(q.dtype)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)
