"""Reference attention in plain PyTorch over a contiguous KV cache.

Each request owns one row of the cache, ``max_model_len`` tokens long: the K/V of its token at
position p live at ``[row, p]``. New K/V are written through ``slot_mapping`` (flat index
``row * max_model_len + p``), then every request attends over ``[row, :seq_len]`` of its own row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from folovllm.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadata,
    AttentionMetadataBuilder,
)


@dataclass
class TorchAttentionMetadata(AttentionMetadata):
    num_actual_tokens: int
    # request i's query tokens are [query_start_loc[i], query_start_loc[i + 1])
    query_start_loc: list[int]
    seq_lens: list[int]  # tokens in the cache for request i after this step (context + new)
    kv_rows: list[int]  # the cache row each request owns
    slot_mapping: torch.Tensor  # [num_tokens] flat cache index of each new token's K/V


class TorchAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(
        self,
        query_start_loc: list[int],
        seq_lens: list[int],
        kv_rows: list[int],
        slot_mapping: torch.Tensor,
    ) -> TorchAttentionMetadata:
        return TorchAttentionMetadata(
            query_start_loc[-1], query_start_loc, seq_lens, kv_rows, slot_mapping
        )


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor | None:
    """Query i (at position kv_len - q_len + i) may see keys 0..kv_len - q_len + i."""
    if q_len == 1:
        return None  # decode: the one new token sees everything before it
    offset = kv_len - q_len
    rows = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(kv_len, device=device)[None, :] <= rows


class TorchAttentionImpl(AttentionImpl):
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TorchAttentionMetadata,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache[0], kv_cache[1]  # [rows, max_model_len, kv_heads, head_dim]
        n = metadata.num_actual_tokens
        k_cache.view(-1, self.num_kv_heads, self.head_dim)[metadata.slot_mapping] = k[:n]
        v_cache.view(-1, self.num_kv_heads, self.head_dim)[metadata.slot_mapping] = v[:n]
        out = torch.empty_like(q)
        qsl = metadata.query_start_loc
        for i, (row, seq_len) in enumerate(zip(metadata.kv_rows, metadata.seq_lens)):
            start, end = qsl[i], qsl[i + 1]
            qi = q[start:end].transpose(0, 1)  # [heads, q_len, dim]
            ki = k_cache[row, :seq_len].transpose(0, 1)  # [kv_heads, seq_len, dim]
            vi = v_cache[row, :seq_len].transpose(0, 1)
            mask = causal_mask(end - start, seq_len, q.device)
            oi = F.scaled_dot_product_attention(
                qi,
                ki,
                vi,
                attn_mask=mask,
                scale=self.scale,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            out[start:end] = oi.transpose(0, 1)
        return out


class TorchAttentionBackend(AttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "torch"

    @staticmethod
    def get_impl_cls() -> type[TorchAttentionImpl]:
        return TorchAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TorchAttentionMetadataBuilder]:
        return TorchAttentionMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(
        num_rows: int, max_model_len: int, num_kv_heads: int, head_dim: int
    ) -> tuple[int, ...]:
        return (2, num_rows, max_model_len, num_kv_heads, head_dim)
