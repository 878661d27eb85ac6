"""Write this step's K and V into the paged cache, one program per token.

``slot_mapping[t]`` is the flat slot ``block_id * block_size + offset`` of token ``t``; a negative
slot marks a padding token (CUDA-graph batches are padded up to a bucket size) and is skipped.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from folovllm.triton_utils import pdl_args, pdl_wait


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    k_stride,  # elements between two tokens of k (and v)
    v_stride,
    ROW: tl.constexpr,  # num_kv_heads * head_dim: one token's K (or V), contiguous in the cache
    ROW_PAD: tl.constexpr,
    FP8: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_wait(PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    offs = tl.arange(0, ROW_PAD)
    mask = offs < ROW
    k = tl.load(k_ptr + token * k_stride + offs, mask=mask)
    v = tl.load(v_ptr + token * v_stride + offs, mask=mask)
    dt = k_cache_ptr.dtype.element_ty
    if FP8:  # float8 e4m3 holds +-448: clamp instead of overflowing to NaN
        k = tl.clamp(k.to(tl.float32), -448.0, 448.0)
        v = tl.clamp(v.to(tl.float32), -448.0, 448.0)
    tl.store(k_cache_ptr + slot * ROW + offs, k.to(dt), mask=mask)
    tl.store(v_cache_ptr + slot * ROW + offs, v.to(dt), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """k, v: [tokens, kv_heads, head_dim] (each token's heads contiguous); caches:
    [num_blocks, block_size, kv_heads, head_dim]; slot_mapping: [tokens] int32/int64, -1 = skip."""
    num_tokens = slot_mapping.shape[0]
    if num_tokens == 0:
        return
    fp8 = k_cache.dtype == torch.float8_e4m3fn and k.dtype != k_cache.dtype
    if fp8 and os.environ.get("TRITON_INTERPRET") == "1":
        # triton 3.6's interpreter rounds float -> float8 wrongly (1.96 -> 1.0); on a CPU the
        # cast is done by torch and the kernel only copies. The GPU set tests the kernel's cast.
        k = k.clamp(-448, 448).to(k_cache.dtype)
        v = v.clamp(-448, 448).to(v_cache.dtype)
        fp8 = False
    row = k.shape[1] * k.shape[2]
    assert k.stride(2) == 1 and k.stride(1) == k.shape[2], "each token's K heads must be contiguous"
    assert v.stride(2) == 1 and v.stride(1) == v.shape[2], "each token's V heads must be contiguous"
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    _store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        v.stride(0),
        ROW=row,
        ROW_PAD=triton.next_power_of_2(row),
        FP8=fp8,
        **pdl_args(k),
    )
