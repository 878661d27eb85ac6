"""The flash-attn package's kernels (``pip install flash-attn``), when it is installed.

``flash_attn_varlen_func`` with a ``block_table`` reads K/V straight from our paged cache (the same
``[num_blocks, block_size, kv_heads, head_dim]`` layout), for prefill, decode and mixed batches
alike; the K/V write is our Triton kernel. flash-attn's paged path needs ``block_size`` to be a
multiple of 256, which the backend selection checks (folovllm/attention/backends/__init__.py).
"""

from __future__ import annotations

import torch

from folovllm.attention.backends.abstract import AttentionImpl
from folovllm.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionMetadata,
)

FLASH_BLOCK_MULTIPLE = 256


class FlashAttentionImpl(AttentionImpl):
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TritonAttentionMetadata,
    ) -> torch.Tensor:
        from flash_attn import flash_attn_varlen_func

        from folovllm.attention.ops.kv_cache import store_kv

        md = metadata
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        store_kv(k, v, k_cache, v_cache, md.slot_mapping)
        cu_seqlens_k = torch.zeros_like(md.query_start_loc)
        torch.cumsum(md.seq_lens, 0, out=cu_seqlens_k[1:])
        return flash_attn_varlen_func(
            q,
            k_cache,
            v_cache,
            cu_seqlens_q=md.query_start_loc,
            cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=md.max_query_len,
            max_seqlen_k=md.block_table.shape[1] * k_cache.shape[1],  # an upper bound, no sync
            softmax_scale=self.scale,
            causal=True,  # flash-attn aligns the causal mask to the bottom right
            block_table=md.block_table,
        )


class FlashAttentionBackend(TritonAttentionBackend):
    """Same metadata (and decode CUDA graphs) as the Triton backend; flash-attn's kernel."""

    # Mixed-step graphs pad with a request of length 0 that owns queries; flash-attn's varlen
    # kernel has not been checked on that (it is not installed on our GPU machine).
    supports_full_cuda_graphs = False

    @staticmethod
    def get_name() -> str:
        return "flash"

    @staticmethod
    def get_impl_cls() -> type[FlashAttentionImpl]:
        return FlashAttentionImpl
