"""One FlashAttention-2 style kernel for every step: prefill, decode, mixed, cached context.

The batch is a flat list of query tokens; sequence ``s`` owns query tokens
``[query_start_loc[s], query_start_loc[s + 1])`` and has ``seq_lens[s]`` tokens in the cache after
this step's K/V were written, so its queries sit at positions ``seq_lens[s] - q_len .. seq_lens[s] - 1``
and query ``i`` sees keys ``0 .. seq_lens[s] - q_len + i`` (causal, aligned to the bottom right:
an already-cached context of earlier chunks or a prefix hit is simply "more keys").

Grid: (query blocks, KV heads). A program takes ``BLOCK_Q`` query tokens of one sequence times the
``GROUP`` query heads that share one KV head (GQA packing), i.e. ``BLOCK_M = BLOCK_Q * GROUP_PAD``
rows, so even a decode step (one token per sequence) multiplies a >= 16-row tile with ``tl.dot``
and reads each K/V tile once for the whole group. It walks the sequence's keys tile by tile
through the block table, keeps a running max ``m`` and sum ``l`` per row (the online softmax) and
never materialises the score matrix. Tiles entirely above the causal diagonal are never visited.

Which sequence a program serves is found on the device by binary search, so the grid size depends
only on (num_tokens, num_seqs): no host sync, and a decode graph can be captured once per bucket.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.triton_utils import pdl_args, pdl_wait

LOG2E = 1.4426950408889634
MIN_DOT_ROWS = 16  # tl.dot on the GPU needs tiles of at least 16 rows


@triton.jit
def find_seq_idx(query_start_loc_ptr, num_seqs, q_block, BLOCK_Q: tl.constexpr):
    """The sequence whose query blocks include ``q_block``.

    Sequence ``s``'s blocks start at ``query_start_loc[s] // BLOCK_Q + s`` (strictly increasing in
    ``s``), so the answer is the last ``s`` whose start is <= ``q_block``.
    """
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if start <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def attend_kv_tile(
    q, m_i, l_i, acc, start_n, kv_end, q_pos, k_cache_ptr, v_cache_ptr, block_table_row_ptr,
    c_offset, c_stride_block, c_stride_token, scale_log2, dims, dim_valid,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """One step of the online softmax: keys ``[start_n, start_n + BLOCK_N)`` (those below
    ``kv_end`` and at most each row's ``q_pos``) read from the paged cache and folded into the
    running max ``m_i``, sum ``l_i`` and output ``acc``. Shared by the varlen and split-KV kernels."""
    n = start_n + tl.arange(0, BLOCK_N)
    n_valid = n < kv_end
    block = tl.load(block_table_row_ptr + n // BLOCK_SIZE, mask=n_valid, other=0)
    offs = block.to(tl.int64) * c_stride_block + (n % BLOCK_SIZE) * c_stride_token + c_offset
    kv_mask = n_valid[:, None] & dim_valid[None, :]
    k = tl.load(k_cache_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    k, v = k.to(q.dtype), v.to(q.dtype)  # an fp8 cache is widened in registers (half the bytes)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where((n[None, :] <= q_pos[:, None]) & n_valid[None, :], s * scale_log2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)  # rescale what was summed under the old max
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    query_start_loc_ptr,  # [num_seqs + 1] int32
    seq_lens_ptr,  # [num_seqs] int32
    block_table_ptr,  # [num_seqs, max_blocks] int32
    num_seqs,
    scale_log2,  # softmax scale * log2(e): scores go through exp2
    q_stride_t,
    q_stride_h,
    o_stride_t,
    o_stride_h,
    bt_stride,
    c_stride_block,
    c_stride_token,
    c_stride_head,
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # query tokens per program
    BLOCK_M: tl.constexpr,  # BLOCK_Q * GROUP_PAD rows
    BLOCK_N: tl.constexpr,  # keys per tile
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV-cache block
    IEEE: tl.constexpr,  # float32 inputs: exact dots (no TF32)
    PDL: tl.constexpr,
):
    pdl_wait(PDL)
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = find_seq_idx(query_start_loc_ptr, num_seqs, q_block, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    local = q_block - (q_start // BLOCK_Q + seq)
    if local * BLOCK_Q >= q_len:
        return  # the grid is an upper bound on the number of query blocks
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # keys cached before this step's queries

    rows = tl.arange(0, BLOCK_M)
    q_idx = local * BLOCK_Q + rows // GROUP_PAD  # query index within this sequence's chunk
    head_in_group = rows % GROUP_PAD
    head = kv_head * GROUP + head_in_group
    row_valid = (q_idx < q_len) & (head_in_group < GROUP)
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM
    token = (q_start + q_idx).to(tl.int64)
    q = tl.load(
        q_ptr + token[:, None] * q_stride_t + head[:, None] * q_stride_h + dims[None, :],
        mask=row_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )
    q_pos = context_len + q_idx  # absolute position of each row's query

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: fully masked rows stay 0
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    # The causal skip: the last query of this tile sees keys up to here, nothing beyond is read.
    kv_end = context_len + tl.minimum((local + 1) * BLOCK_Q, q_len)
    for start_n in range(0, kv_end, BLOCK_N):
        m_i, l_i, acc = attend_kv_tile(
            q, m_i, l_i, acc, start_n, kv_end, q_pos, k_cache_ptr, v_cache_ptr,
            block_table_ptr + seq * bt_stride, kv_head * c_stride_head, c_stride_block,
            c_stride_token, scale_log2, dims, dim_valid, BLOCK_N, BLOCK_SIZE, IEEE,
        )  # fmt: skip
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # padding rows (seq_len 0) come out as zeros
    acc = acc / l_i[:, None]
    tl.store(
        out_ptr + token[:, None] * o_stride_t + head[:, None] * o_stride_h + dims[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None] & dim_valid[None, :],
    )


# Tile configurations picked with benchmarks/kernels/attention_tune.py on an H100 (Qwen3-0.6B):
# long prefills gain 3-11% from 128x128 tiles with 8 warps and 3 stages; short or mixed batches
# keep 64-row tiles so that one-token rows of a mixed step waste less of each tile.
LONG_PREFILL = dict(block_m=128, block_n=128, num_warps=8, num_stages=3)
LONG_PREFILL_MIN_QUERY_LEN = 512  # the longest query of the batch
LONG_PREFILL_MIN_SHORTEST = 64  # and the shortest: a decode row in a 128-row tile wastes 127 rows


def tuned_tiles(max_query_len: int, min_query_len: int | None, on_gpu: bool) -> dict:
    """The tuned long-prefill tiles when every query of the batch is long, else {} (defaults)."""
    shortest = max_query_len if min_query_len is None else min_query_len
    long = max_query_len >= LONG_PREFILL_MIN_QUERY_LEN and shortest >= LONG_PREFILL_MIN_SHORTEST
    return dict(LONG_PREFILL) if on_gpu and long else {}


def tile_rows(group: int, max_query_len: int, block_m: int | None = None) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_M): 16 rows for decode-only batches, 64 rows when queries are longer."""
    group_pad = triton.next_power_of_2(group)
    rows = block_m or (MIN_DOT_ROWS if max_query_len == 1 else 64)
    block_m = max(rows, group_pad)
    return block_m // group_pad, block_m


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    num_seqs: int,
    num_tokens: int,
    max_query_len: int,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    block_m: int | None = None,
    min_query_len: int | None = None,
) -> torch.Tensor:
    """Causal attention of every query token over its sequence's paged K/V.

    q, out: [tokens, heads, head_dim]; caches: [num_blocks, block_size, kv_heads, head_dim];
    query_start_loc [num_seqs + 1], seq_lens [num_seqs], block_table [num_seqs, max_blocks] (int32).
    ``max_query_len`` only picks the tile shape (1 = decode-only); it is not a bound on the data.
    ``min_query_len`` (None: assume every query is long) keeps mixed batches on 64-row tiles.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    tuned = tuned_tiles(max_query_len, min_query_len, q.is_cuda)
    block_m, block_n = block_m or tuned.get("block_m"), block_n or tuned.get("block_n")
    num_warps = num_warps or tuned.get("num_warps")
    num_stages = num_stages or tuned.get("num_stages")
    block_n = block_n or 64
    block_q, block_m = tile_rows(group, max_query_len, block_m)
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    extra = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v}
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, num_seqs,
        scale * LOG2E, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        block_table.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), BLOCK_Q=block_q, BLOCK_M=block_m,
        BLOCK_N=block_n, HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, IEEE=q.dtype == torch.float32, **extra, **pdl_args(q),
    )  # fmt: skip
    return out
