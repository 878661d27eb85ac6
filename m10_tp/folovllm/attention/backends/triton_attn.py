"""Our Triton FlashAttention over the paged cache (folovllm/attention/ops/).

The metadata is nothing but device tensors and a few integers fixed by the batch shape, so a
decode step's kernels can be captured in a CUDA graph and replayed with new values in the same
buffers. Decode-only batches with few sequences take the split-KV (flash-decoding) kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from folovllm.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadata,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)


@dataclass
class TritonAttentionMetadata(AttentionMetadata):
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32
    seq_lens: torch.Tensor  # [num_reqs] int32; 0 for padding requests (their rows come out 0)
    block_table: torch.Tensor  # [num_reqs, max_blocks] int32
    slot_mapping: torch.Tensor  # [num_tokens]; -1 for padding tokens
    num_reqs: int
    num_tokens: int  # rows of q, padding included
    max_query_len: int  # 1 = a decode-only batch (picks the 16-row tile)
    num_splits: int = 1  # > 1: decode through split-KV
    min_query_len: int | None = None  # the shortest query (None: unknown); picks prefill tiles


class TritonAttentionMetadataBuilder(AttentionMetadataBuilder):
    def __init__(self, num_kv_heads: int, num_sms: int, split_kv: bool = True) -> None:
        self.num_kv_heads, self.num_sms, self.split_kv = num_kv_heads, num_sms, split_kv

    def num_splits(self, num_reqs: int, max_query_len: int) -> int:
        """Split the keys only for decode-only batches too small to fill the GPU."""
        from folovllm.attention.ops.decode_attention import choose_num_splits

        if not self.split_kv or max_query_len != 1:
            return 1
        return choose_num_splits(num_reqs, self.num_kv_heads, self.num_sms)

    def build(self, common: CommonAttentionMetadata) -> TritonAttentionMetadata:
        return TritonAttentionMetadata(
            common.query_start_loc,
            common.seq_lens,
            common.block_table,
            common.slot_mapping,
            common.num_reqs,
            common.slot_mapping.shape[0],
            common.max_query_len,
            self.num_splits(common.num_reqs, common.max_query_len),
            min_query_len=_min_query_len(common.query_start_loc_cpu),
        )


def _min_query_len(query_start_loc: list[int]) -> int | None:
    lens = [b - a for a, b in zip(query_start_loc, query_start_loc[1:])]
    return min(lens) if lens else None


class TritonAttentionImpl(AttentionImpl):
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TritonAttentionMetadata,
    ) -> torch.Tensor:
        from folovllm.attention.ops.decode_attention import split_kv_decode
        from folovllm.attention.ops.kv_cache import store_kv
        from folovllm.attention.ops.paged_attention import paged_attention

        md = metadata
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        store_kv(k, v, k_cache, v_cache, md.slot_mapping)
        out = torch.empty_like(q)
        common = (md.query_start_loc, md.seq_lens, md.block_table, self.scale)
        if md.num_splits > 1:
            return split_kv_decode(
                q, k_cache, v_cache, out, *common, num_seqs=md.num_reqs, num_splits=md.num_splits
            )
        return paged_attention(
            q,
            k_cache,
            v_cache,
            out,
            *common,
            num_seqs=md.num_reqs,
            num_tokens=md.num_tokens,
            max_query_len=md.max_query_len,
            min_query_len=md.min_query_len,
        )


class TritonAttentionBackend(AttentionBackend):
    supports_cuda_graphs = True
    supports_full_cuda_graphs = True

    @staticmethod
    def get_name() -> str:
        return "triton"

    @staticmethod
    def get_impl_cls() -> type[TritonAttentionImpl]:
        return TritonAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TritonAttentionMetadataBuilder]:
        return TritonAttentionMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_dim)
