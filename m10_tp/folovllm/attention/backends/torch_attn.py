"""Reference attention in plain PyTorch over a paged KV cache, for a batch of requests.

The cache is a pool of fixed-size blocks ``[num_blocks, block_size, kv_heads, head_dim]``. A
request's K/V for position p live in block ``block_table[p // block_size]`` at offset
``p % block_size``. New K/V are written through ``slot_mapping`` (flat index
``block * block_size + offset``); each request then gathers its blocks in table order and attends.
This backend is the readable reference that m4's kernels are tested against.
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
    CommonAttentionMetadata,
)


@dataclass
class TorchAttentionMetadata(AttentionMetadata):
    num_actual_tokens: int
    # request i's query tokens are [query_start_loc[i], query_start_loc[i + 1])
    query_start_loc: list[int]
    seq_lens: list[int]  # tokens in the cache for request i after this step (context + new)
    block_tables: torch.Tensor  # [num_reqs, max_blocks] the blocks of each request, in order
    slot_mapping: torch.Tensor  # [num_tokens] flat cache index of each new token's K/V
    # Requests with one query token (decodes) are attended together in one padded batch.
    prefill_ids: list[int]  # indices of requests with more than one query token
    decode_token_idx: torch.Tensor | None = None  # [D] where each decode's token sits in the batch
    decode_block_tables: torch.Tensor | None = None  # [D, max blocks] (padded)
    decode_seq_lens: torch.Tensor | None = None  # [D]
    max_decode_seq_len: int = 0


class TorchAttentionMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> TorchAttentionMetadata:
        query_start_loc, seq_lens = common.query_start_loc_cpu, common.seq_lens_cpu
        q_lens = [b - a for a, b in zip(query_start_loc, query_start_loc[1:])]
        decodes = [i for i, n in enumerate(q_lens) if n == 1]
        md = TorchAttentionMetadata(
            common.num_actual_tokens,
            query_start_loc,
            seq_lens,
            common.block_table,
            common.slot_mapping[: common.num_actual_tokens].long(),
            prefill_ids=[i for i, n in enumerate(q_lens) if n > 1],
        )
        if decodes:
            as_long = dict(dtype=torch.long, device=common.slot_mapping.device)
            md.decode_token_idx = torch.tensor([query_start_loc[i] for i in decodes], **as_long)
            md.decode_block_tables = common.block_table[md.decode_token_idx.new_tensor(decodes)]
            md.decode_seq_lens = torch.tensor([seq_lens[i] for i in decodes], **as_long)
            md.max_decode_seq_len = max(seq_lens[i] for i in decodes)
        return md


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
        k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kv_heads, head_dim]
        n = metadata.num_actual_tokens
        # An fp8 cache (kv_cache_dtype="fp8") stores K/V rounded to float8 e4m3, clamped to its
        # range as the Triton kernel does (torch's cast turns values beyond +-448 into NaN).
        if k_cache.dtype == torch.float8_e4m3fn:
            k, v = k.clamp(-448, 448), v.clamp(-448, 448)
        k, v = k[:n].to(k_cache.dtype), v[:n].to(v_cache.dtype)
        k_cache.view(-1, self.num_kv_heads, self.head_dim)[metadata.slot_mapping] = k
        v_cache.view(-1, self.num_kv_heads, self.head_dim)[metadata.slot_mapping] = v
        out = torch.empty_like(q)
        if metadata.decode_token_idx is not None:
            self._decode_batch(q, k_cache, v_cache, metadata, out)
        qsl = metadata.query_start_loc
        for i in metadata.prefill_ids:
            seq_len, start, end = metadata.seq_lens[i], qsl[i], qsl[i + 1]
            blocks = metadata.block_tables[i, : -(-seq_len // k_cache.shape[1])].long()
            qi = q[start:end].transpose(0, 1)  # [heads, q_len, dim]
            ki = k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1).to(q.dtype)
            vi = v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1).to(q.dtype)
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

    def _decode_batch(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        md: TorchAttentionMetadata,
        out: torch.Tensor,
    ) -> None:
        """All one-token queries at once: gather their blocks up to the longest, mask the padding.

        Written out as two batched matmuls with the query heads grouped under their KV head (GQA):
        scaled_dot_product_attention with a padding mask and enable_gqa took ~12 ms a call on an
        H100 (a slow fallback path), 50x the plain matmuls.
        """
        length = md.max_decode_seq_len
        num_decodes, group = md.decode_token_idx.shape[0], self.num_heads // self.num_kv_heads
        table = md.decode_block_tables[:, : -(-length // k_cache.shape[1])].long()
        qd = q[md.decode_token_idx].view(num_decodes, self.num_kv_heads, group, self.head_dim)
        kd = k_cache[table].flatten(1, 2)[:, :length].transpose(1, 2).to(q.dtype)  # [D, kvh, L, d]
        vd = v_cache[table].flatten(1, 2)[:, :length].transpose(1, 2).to(q.dtype)
        scores = (
            torch.matmul(qd, kd.transpose(2, 3)).float() * self.scale
        )  # [D, kv_heads, group, L]
        valid = torch.arange(length, device=q.device)[None, :] < md.decode_seq_lens[:, None]
        scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
        od = torch.matmul(scores.softmax(dim=-1).to(vd.dtype), vd)  # [D, kv_heads, group, dim]
        out[md.decode_token_idx] = od.reshape(num_decodes, self.num_heads, self.head_dim)


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
        num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_dim)
