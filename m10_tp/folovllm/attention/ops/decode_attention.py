"""Flash-decoding: split each sequence's keys into ``num_splits`` parts, attend to each part in
its own program, then merge the partial results with their log-sum-exp.

At batch 1 a decode step has one query token: the one-pass kernel runs ``num_kv_heads`` programs
(8 for Qwen3-0.6B) on a GPU with 132 SMs, and each walks the whole context alone. Splitting the
keys gives ``num_seqs * num_kv_heads * num_splits`` programs that read the cache in parallel.

Stage 1 grid: (num_seqs, num_kv_heads, num_splits). Split ``j`` of a sequence of length ``L``
covers keys ``[j * c, min((j + 1) * c, L))`` with ``c = ceil(ceil(L / num_splits) / BLOCK_N) *
BLOCK_N``, computed on the device from ``seq_lens``, so the grid never depends on the data. Each
split writes its normalised output ``o_j`` and ``lse_j = m_j + log2(l_j)`` (base 2); an empty
split writes ``lse_j = -inf``.

Stage 2 grid: (num_seqs, num_heads): ``o = sum_j 2^(lse_j - M) o_j / sum_j 2^(lse_j - M)`` with
``M = max_j lse_j``, which is exactly the softmax over all keys.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.attention.ops.paged_attention import LOG2E, MIN_DOT_ROWS, attend_kv_tile
from folovllm.triton_utils import pdl_args, pdl_wait


@triton.jit
def _split_kv_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    part_out_ptr,  # [num_seqs, num_heads, NUM_SPLITS, HEAD_DIM_PAD] float32
    part_lse_ptr,  # [num_seqs, num_heads, NUM_SPLITS] float32
    query_start_loc_ptr,
    seq_lens_ptr,
    block_table_ptr,
    scale_log2,
    q_stride_t,
    q_stride_h,
    bt_stride,
    c_stride_block,
    c_stride_token,
    c_stride_head,
    num_heads,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,  # >= GROUP and >= 16 (tl.dot), padded rows masked
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_wait(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    token = tl.load(query_start_loc_ptr + seq).to(tl.int64)  # one query token per sequence
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    rows = tl.arange(0, BLOCK_M)
    row_valid = rows < GROUP
    head = kv_head * GROUP + rows
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token * q_stride_t + head[:, None] * q_stride_h + dims[None, :],
        mask=row_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    q_pos = tl.full([BLOCK_M], seq_len - 1, dtype=tl.int32)  # the query is the last token
    for start_n in range(start, end, BLOCK_N):
        m_i, l_i, acc = attend_kv_tile(
            q, m_i, l_i, acc, start_n, end, q_pos, k_cache_ptr, v_cache_ptr,
            block_table_ptr + seq * bt_stride, kv_head * c_stride_head, c_stride_block,
            c_stride_token, scale_log2, dims, dim_valid, BLOCK_N, BLOCK_SIZE, IEEE,
        )  # fmt: skip
    empty = start >= end
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    base = (seq * num_heads + head).to(tl.int64) * NUM_SPLITS + split
    tl.store(part_lse_ptr + base, lse, mask=row_valid)
    tl.store(
        part_out_ptr + base[:, None] * HEAD_DIM_PAD + dims[None, :],
        acc,
        mask=row_valid[:, None],
    )


@triton.jit
def _merge_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    query_start_loc_ptr,
    o_stride_t,
    o_stride_h,
    num_heads,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_wait(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    token = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM_PAD)
    base = (seq * num_heads + head).to(tl.int64) * NUM_SPLITS
    lse = tl.load(part_lse_ptr + base + splits)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # no key at all (padding): output zeros
    w = tl.exp2(lse - m)
    parts = tl.load(part_out_ptr + (base + splits)[:, None] * HEAD_DIM_PAD + dims[None, :])
    total = tl.sum(w, 0)
    o = tl.sum(w[:, None] * parts, 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        out_ptr + token * o_stride_t + head * o_stride_h + dims,
        o.to(out_ptr.dtype.element_ty),
        mask=dims < HEAD_DIM,
    )


def choose_num_splits(num_seqs: int, num_kv_heads: int, num_sms: int, max_splits: int = 64) -> int:
    """Splits so that stage 1 has up to four programs per SM: the largest power of two that fits
    (benchmarks/kernels/attention_tune.py on an H100: batch 16 -> 4 splits, batch 1 -> 64 were
    fastest)."""
    want = max(1, (4 * num_sms) // max(1, num_seqs * num_kv_heads))
    return min(max_splits, 1 << (want.bit_length() - 1))


def split_kv_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    num_seqs: int,
    num_splits: int,
    block_n: int = 64,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Decode attention (one query token per sequence) with the keys split ``num_splits`` ways.

    Same tensors as ``paged_attention``; ``num_splits`` must be a power of two.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    head_dim_pad = triton.next_power_of_2(head_dim)
    assert num_splits >= 1 and num_splits & (num_splits - 1) == 0, "num_splits: a power of two"
    part_out = torch.empty(
        (num_seqs, num_heads, num_splits, head_dim_pad), dtype=torch.float32, device=q.device
    )
    part_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device)
    extra = {} if num_warps is None else {"num_warps": num_warps}
    _split_kv_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, part_out, part_lse, query_start_loc, seq_lens, block_table,
        scale * LOG2E, q.stride(0), q.stride(1), block_table.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), num_heads,
        GROUP=group, BLOCK_M=max(MIN_DOT_ROWS, triton.next_power_of_2(group)), BLOCK_N=block_n,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, BLOCK_SIZE=block_size,
        NUM_SPLITS=num_splits, IEEE=q.dtype == torch.float32, **extra, **pdl_args(q),
    )  # fmt: skip
    _merge_kernel[(num_seqs, num_heads)](
        part_out, part_lse, out, query_start_loc, out.stride(0), out.stride(1), num_heads,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, NUM_SPLITS=num_splits, **pdl_args(q),
    )  # fmt: skip
    return out
