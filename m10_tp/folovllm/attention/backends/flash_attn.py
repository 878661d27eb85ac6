"""The flash-attn package's kernels when installed: flash-attn 4 (``flash_attn.cute``, CuTe-DSL,
``pip install flash-attn-4``) if it imports, else flash-attn 2's API.

Both read K/V from our paged cache (``[num_blocks, block_size, kv_heads, head_dim]``) through the
block table, for prefill, decode and mixed batches alike (queries packed by ``cu_seqlens_q``); the
K/V write is our Triton kernel. flash-attn 4 takes each request's key count (``seqused_k``) and
pages of any multiple of 16; flash-attn 2 needs 256-token blocks. The selection checks these.

CUDA graphs: flash-attn 4 compiles a kernel per shape on its first call (JIT) and is unchecked
inside a captured graph, so ``flash`` runs eagerly. ``auto`` with flash-attn 4 picks
``flash+triton``: pure decode steps go to our split-KV Triton kernel (it wins small batches) and
keep their graphs; prefill and mixed steps run flash-attn 4, eagerly.
"""

from __future__ import annotations

import torch

from folovllm.attention.backends.abstract import AttentionImpl
from folovllm.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadata,
)

FLASH_BLOCK_MULTIPLE = 256  # flash-attn 2's paged KV
FA4_BLOCK_MULTIPLE = 16  # flash-attn 4 takes any page size; 16 is the size checked on an H100
FA4_DTYPES = (torch.float16, torch.bfloat16)
FA4_HEAD_DIMS = range(8, 257, 8)  # Hopper: 8..256, a multiple of 8 for 16-bit inputs


def flash_attn_version() -> int | None:
    """4 when flash-attn 4 (``flash_attn.cute``) imports, 2 for flash-attn 2's API, else None.
    (Imported, not just found: flash-attn 2 packages may carry a ``cute`` folder that cannot run.)"""
    try:
        from flash_attn.cute import flash_attn_varlen_func  # noqa: F401

        return 4
    except Exception:  # not installed, or installed but cannot load here
        pass
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401, F811

        return 2
    except Exception:
        return None


def fa4_constraint_error(block_size: int, head_dim: int | None, dtype) -> str | None:
    """The first flash-attn 4 constraint the engine breaks, naming the field; None if it fits."""
    if block_size % FA4_BLOCK_MULTIPLE:
        return f"block_size must be a multiple of {FA4_BLOCK_MULTIPLE}, got {block_size}"
    if head_dim is not None and head_dim not in FA4_HEAD_DIMS:
        return f"head_dim must be a multiple of 8 in 8..256, got {head_dim}"
    if dtype is not None and dtype not in FA4_DTYPES:
        return f"dtype must be float16 or bfloat16, got {dtype}"
    return None


def fa4_attention(q, k_cache, v_cache, md: TritonAttentionMetadata, scale: float) -> torch.Tensor:
    from flash_attn.cute import flash_attn_varlen_func

    out = flash_attn_varlen_func(
        q,
        k_cache,
        v_cache,
        cu_seqlens_q=md.query_start_loc,  # int32 [num_reqs + 1]
        max_seqlen_q=md.max_query_len,
        seqused_k=md.seq_lens,  # int32 [num_reqs]: each request's keys, cached + new
        page_table=md.block_table,  # int32 [num_reqs, max_blocks]
        softmax_scale=scale,
        causal=True,  # aligned to the bottom right: a query sees its own and earlier keys
    )
    return out[0] if isinstance(out, tuple) else out  # (out, lse); lse is None unless asked


class FlashAttentionImpl(AttentionImpl):
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TritonAttentionMetadata,
    ) -> torch.Tensor:
        from folovllm.attention.ops.kv_cache import store_kv

        md = metadata
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        store_kv(k, v, k_cache, v_cache, md.slot_mapping)
        if not hasattr(self, "flash_version"):
            self.flash_version = flash_attn_version()  # once per layer, on its first step
        if self.flash_version == 4:
            return fa4_attention(q, k_cache, v_cache, md, self.scale)
        from flash_attn import flash_attn_varlen_func

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
    """Same metadata as the Triton backend; flash-attn's kernel, eager (see the module doc)."""

    supports_cuda_graphs = False
    supports_full_cuda_graphs = False

    @staticmethod
    def get_name() -> str:
        return "flash"

    @staticmethod
    def get_impl_cls() -> type[FlashAttentionImpl]:
        return FlashAttentionImpl


class FlashTritonImpl(FlashAttentionImpl):
    def forward(self, q, k, v, kv_cache, metadata: TritonAttentionMetadata) -> torch.Tensor:
        # The one place a step's kernel is chosen: pure decode -> our Triton (split-KV) kernels.
        if metadata.max_query_len == 1:
            return TritonAttentionImpl.forward(self, q, k, v, kv_cache, metadata)
        return super().forward(q, k, v, kv_cache, metadata)


class FlashTritonBackend(FlashAttentionBackend):
    """auto with flash-attn 4: prefill/mixed steps on flash-attn 4, decode on Triton (graphs)."""

    supports_cuda_graphs = True  # decode graphs replay only Triton kernels
    supports_full_cuda_graphs = False  # mixed steps run flash-attn 4, eager

    @staticmethod
    def get_name() -> str:
        return "flash+triton"

    @staticmethod
    def get_impl_cls() -> type[FlashTritonImpl]:
        return FlashTritonImpl
