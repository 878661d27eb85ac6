"""GPTQ 4-bit matmul in Triton: ``y = x @ W`` with ``W`` kept packed (8 values per int32).

``W[k, n] = scales[g, n] * (q[k, n] - z[g, n])`` with ``g = k // group_size`` (contiguous groups:
an act-order checkpoint was permuted once at load time, so no ``g_idx`` here) and
``z = stored zero + zero_offset`` (1 for format "gptq", 0 for "gptq_v2"); the layout is the one
in ``utils/gptq_pack.py``.

Decode (few rows) is a weight-reading problem: a 4096 x 4096 layer is 8 MiB packed against 32 MiB
in bf16, and a token's row does 2 flops per weight. ``gptq_gemm`` reads each int32 word once and
unpacks its eight values in registers; the bf16 weight never exists in memory. Two kernels:

- M = 1: ``_gptq_gemv_kernel``, CUDA-core FMAs. A nibble goes into the top mantissa bits of 1.0
  (the float 1 + q/16: a shift and an AND-OR, no int -> float conversion), x . (1 + q/16) is
  accumulated per word row, and the zero and scale are applied per word row at the end of a tile.
- M > 1: ``_gptq_gemm_kernel``, ``tl.dot`` on 16+ row tiles. When a K-tile lies inside one group,
  zero and scale come after the dot, per column: ``x . (q - z) s = (x . q - z sum(x)) s``, and q
  reaches bf16/fp16 by an OR into the exponent bits (128 + q, 1024 + q); the eight nibbles of a
  word feed eight dots with x's matching strided columns, so no reshape is needed.

Both split K over ``split_k`` programs when the output has too few tiles to fill the GPU; the
splits write fp32 partial sums and a second kernel adds them in a fixed order (deterministic,
unlike atomics). What this buys (one H200, bf16, group 128, CUDA graph of launches over weights
that do not fit in L2; benchmarks/kernels/gptq_kernel_bench.py): at M = 1, 1.17-1.55x faster than
bf16 ``F.linear`` on Qwen3-8B's layers (gate_up 37 us = 1.4 TB/s of packed weight), on par at
Qwen3-0.6B's (~6 us, launch-bound); at M = 8-64 the tl.dot kernel is 0.6-1.0x of bf16.

Prefill (many rows): ``gptq_dequantize`` writes ``W`` once in the activation dtype and cuBLAS
multiplies. ``gptq_matmul`` picks between the two on CUDA and runs a plain torch reference on the
CPU (the engine never runs the interpreted kernels; tests call them under ``TRITON_INTERPRET=1``).
Every launch depends only on shapes, never on data, so all of it can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from folovllm.model_executor.layers.quantization.utils import gptq_pack

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install runs the torch reference
    triton = tl = None

MIN_DOT = 16  # tl.dot on the GPU needs every tile dimension >= 16
_UNPACK = {"reshape": 0, "gather": 1, "split": 2}
_MAGIC = {torch.bfloat16: 128, torch.float16: 1024}  # 0x4300 / 0x6400 as bf16 / fp16


@dataclass(frozen=True)
class GemmConfig:
    """Tiles and launch settings of ``gptq_gemm`` (``block_k`` may be lowered to fit a group)."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    # How a tile of words becomes 4-bit values: "split" = eight dots, nibble i of every word with
    # x's columns 8j + i (needs block_k >= 128 and scale_after_dot, else "reshape"); "reshape" =
    # expand [BLOCK_K/8, BLOCK_N] words to [BLOCK_K, BLOCK_N]; "gather" = each word loaded by its
    # 8 rows.
    unpack: str = "split"
    scale_after_dot: bool = True  # when a K-tile is inside one group; else dequantize per weight
    magic: bool = True  # fp16/bf16: nibbles to floats with an OR on the exponent bits
    gemv: bool = False  # one row per program with FMAs, no tl.dot (for M = 1; block_m unused)


if triton is not None:

    @triton.jit
    def _unpack(
        qw_ptr,
        k0,
        offs_n,
        n_mask,
        K,
        qw_stride,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        UNPACK: tl.constexpr,
    ):
        """The 4-bit values q[k0 : k0 + BLOCK_K, offs_n] as int32 (rows >= K read as 0)."""
        if UNPACK != 1:
            # Each word once: [BLOCK_K/8, BLOCK_N] words -> [BLOCK_K/8, 8, BLOCK_N] -> rows 8j + i.
            rows = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            mask = (rows < K // 8)[:, None] & n_mask[None, :]
            words = tl.load(
                qw_ptr + rows[:, None] * qw_stride + offs_n[None, :], mask=mask, other=0
            )
            shifts = tl.arange(0, 8) * 4
            q = (words[:, None, :] >> shifts[None, :, None]) & 0xF
            return tl.reshape(q, (BLOCK_K, BLOCK_N))
        else:
            # Each word loaded by its 8 rows (the repeats hit L1), shifted by row.
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = (offs_k < K)[:, None] & n_mask[None, :]
            ptrs = qw_ptr + (offs_k // 8)[:, None] * qw_stride + offs_n[None, :]
            words = tl.load(ptrs, mask=mask, other=0)
            return (words >> ((offs_k % 8) * 4)[:, None]) & 0xF

    @triton.jit
    def _to_dot_operand(q, dt: tl.constexpr, MAGIC: tl.constexpr):
        """Nibbles (int32 in [0, 15]) -> the dot's dtype. MAGIC puts q in the mantissa of
        MAGIC + q (bf16 0x4300 = 128, fp16 0x6400 = 1024): one OR instead of a slow int->float
        conversion; the caller subtracts MAGIC with the zero."""
        if MAGIC == 128:
            return (q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        elif MAGIC == 1024:
            return (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        else:
            return q.to(dt)

    @triton.jit
    def _dot(a, b, acc, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc)

    @triton.jit
    def _gptq_gemm_kernel(
        x_ptr,  # [M, K], activation dtype
        qw_ptr,  # [K // 8, N] int32
        qz_ptr,  # [G, N // 8] int32
        s_ptr,  # [G, N], activation dtype
        out_ptr,  # [M, N] (SPLIT == 1) or [split_k, M, N] float32 partial sums
        M,
        N,
        K,
        x_stride,
        qw_stride,
        qz_stride,
        s_stride,
        out_stride_split,
        out_stride_m,
        group_size,
        zero_offset,
        tiles_per_split,  # K-tiles per program along grid axis 2
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SCALE_AFTER_DOT: tl.constexpr,  # the host checked: every K-tile is inside one group
        UNPACK: tl.constexpr,  # 0 reshape, 1 gather, 2 eight strided dots (see GemmConfig)
        MAGIC: tl.constexpr,  # 0, or 128 (bf16) / 1024 (fp16): unpack through the exponent bits
        IEEE: tl.constexpr,  # float32 activations: exact dots (no TF32)
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        n_mask = offs_n < N
        z_shift = (offs_n % 8) * 4  # column n's zero sits in bits 4(n % 8).. of word n // 8
        dt = x_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        t_start = pid_k * tiles_per_split
        t_end = tl.minimum(t_start + tiles_per_split, tl.cdiv(K, BLOCK_K))
        for t in range(t_start, t_end):
            k0 = t * BLOCK_K
            if SCALE_AFTER_DOT:
                # One group for the whole tile: zero and scale are per column, applied after the dot.
                g = k0 // group_size
                zw = tl.load(qz_ptr + g * qz_stride + offs_n // 8, mask=n_mask, other=0)
                z = ((zw >> z_shift) & 0xF) + (zero_offset + MAGIC)
                s = tl.load(s_ptr + g * s_stride + offs_n, mask=n_mask, other=0.0)
                xq = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                x_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
                if UNPACK == 2:
                    # Row 8j + i of the tile is nibble i of word j: eight dots, one per nibble,
                    # each with the matching strided columns of x (the sum's order is free).
                    rows = k0 // 8 + tl.arange(0, BLOCK_K // 8)
                    words = tl.load(
                        qw_ptr + rows[:, None] * qw_stride + offs_n[None, :],
                        mask=(rows < K // 8)[:, None] & n_mask[None, :],
                        other=0,
                    )
                    for i in tl.static_range(8):
                        cols = k0 + 8 * tl.arange(0, BLOCK_K // 8) + i
                        xi = tl.load(
                            x_ptr + offs_m[:, None].to(tl.int64) * x_stride + cols[None, :],
                            mask=m_mask[:, None] & (cols < K)[None, :],
                            other=0.0,
                        )
                        qi = _to_dot_operand((words >> (4 * i)) & 0xF, dt, MAGIC)
                        xq = _dot(xi, qi, xq, IEEE)
                        x_sum += tl.sum(xi.to(tl.float32), axis=1)
                else:
                    offs_k = k0 + tl.arange(0, BLOCK_K)
                    x = tl.load(
                        x_ptr + offs_m[:, None].to(tl.int64) * x_stride + offs_k[None, :],
                        mask=m_mask[:, None] & (offs_k < K)[None, :],
                        other=0.0,
                    )
                    q = _unpack(qw_ptr, k0, offs_n, n_mask, K, qw_stride, BLOCK_K, BLOCK_N, UNPACK)
                    xq = _dot(x, _to_dot_operand(q, dt, MAGIC), xq, IEEE)
                    x_sum += tl.sum(x.to(tl.float32), axis=1)
                acc += (xq - x_sum[:, None] * z.to(tl.float32)[None, :]) * s.to(tl.float32)[None, :]
            else:
                # Groups change inside the tile: dequantize every weight (as gptq_pack rounds it).
                offs_k = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(
                    x_ptr + offs_m[:, None].to(tl.int64) * x_stride + offs_k[None, :],
                    mask=m_mask[:, None] & (offs_k < K)[None, :],
                    other=0.0,
                )
                q = _unpack(qw_ptr, k0, offs_n, n_mask, K, qw_stride, BLOCK_K, BLOCK_N, UNPACK)
                g = offs_k // group_size
                kn_mask = (offs_k < K)[:, None] & n_mask[None, :]
                zw = tl.load(
                    qz_ptr + g[:, None] * qz_stride + (offs_n // 8)[None, :], mask=kn_mask, other=0
                )
                z = ((zw >> z_shift[None, :]) & 0xF) + zero_offset
                s = tl.load(
                    s_ptr + g[:, None] * s_stride + offs_n[None, :], mask=kn_mask, other=0.0
                )
                w = ((q - z).to(tl.float32) * s.to(tl.float32)).to(dt)
                acc = _dot(x, w, acc, IEEE)
        out_ptrs = (
            out_ptr
            + pid_k * out_stride_split
            + offs_m[:, None].to(tl.int64) * out_stride_m
            + offs_n[None, :]
        )
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])

    @triton.jit
    def _gptq_gemv_kernel(
        x_ptr,
        qw_ptr,
        qz_ptr,
        s_ptr,
        out_ptr,
        N,
        K,
        x_stride,
        qw_stride,
        qz_stride,
        s_stride,
        out_stride_split,
        out_stride_m,
        group_size,
        zero_offset,
        tiles_per_split,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        ONE_GROUP: tl.constexpr,  # every K-tile inside one group (else a group per word row)
    ):
        """One row of x per program, CUDA-core FMAs instead of tl.dot (a 16-row dot tile wastes
        15/16 of its work on one row, and its operands take a trip through shared memory).

        Word row j of a tile holds input channels 8j..8j+7, all in one group (group_size is a
        multiple of 8), so the zero and scale are applied per word row, and a tile may span
        several groups: large tiles keep more bytes in flight.
        """
        row = tl.program_id(0).to(tl.int64)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        z_shift = (offs_n % 8) * 4
        j = tl.arange(0, BLOCK_K // 8)
        acc = tl.zeros([BLOCK_K // 8, BLOCK_N], dtype=tl.float32)  # reduced over rows at the end
        t_start = pid_k * tiles_per_split
        t_end = tl.minimum(t_start + tiles_per_split, tl.cdiv(K, BLOCK_K))
        for t in range(t_start, t_end):
            k0 = t * BLOCK_K
            rows = k0 // 8 + j
            row_mask = rows < K // 8
            words = tl.load(
                qw_ptr + rows[:, None] * qw_stride + offs_n[None, :],
                mask=row_mask[:, None] & n_mask[None, :],
                other=0,
            )
            part = tl.zeros([BLOCK_K // 8, BLOCK_N], dtype=tl.float32)
            x_sum = tl.zeros([BLOCK_K // 8], dtype=tl.float32)
            for i in tl.static_range(8):
                cols = k0 + 8 * j + i  # nibble i of word j is input channel 8j + i
                xi = tl.load(x_ptr + row * x_stride + cols, mask=cols < K, other=0.0)
                xi = xi.to(tl.float32)
                # q into the top mantissa bits of 1.0: the float 1 + q/16, with one shift and one
                # AND-OR instead of an int -> float conversion; sum x (1 + q/16) - sum x = sum xq/16
                if i <= 4:
                    qi = (words << (19 - 4 * i)) & 0x00780000
                else:
                    qi = (words >> (4 * i - 19)) & 0x00780000
                qi = (qi | 0x3F800000).to(tl.float32, bitcast=True)
                part += xi[:, None] * qi
                x_sum += xi
            if ONE_GROUP:
                g = k0 // group_size
                zw = tl.load(qz_ptr + g * qz_stride + offs_n // 8, mask=n_mask, other=0)[None, :]
                s = tl.load(s_ptr + g * s_stride + offs_n, mask=n_mask, other=0.0)[None, :]
            else:
                g = (rows * 8) // group_size
                rn_mask = row_mask[:, None] & n_mask[None, :]
                zw = tl.load(
                    qz_ptr + g[:, None] * qz_stride + (offs_n // 8)[None, :], mask=rn_mask, other=0
                )
                s = tl.load(
                    s_ptr + g[:, None] * s_stride + offs_n[None, :], mask=rn_mask, other=0.0
                )
            z = (((zw >> z_shift[None, :]) & 0xF) + zero_offset).to(tl.float32)
            # sum_i x (q - z) = 16 (part - x_sum) - z x_sum, per word row
            xs = x_sum[:, None]
            acc += (16.0 * (part - xs) - z * xs) * s.to(tl.float32)
        tl.store(
            out_ptr + pid_k * out_stride_split + row * out_stride_m + offs_n,
            tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty),
            mask=n_mask,
        )

    @triton.jit
    def _split_k_sum_kernel(part_ptr, out_ptr, numel, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        """out = sum over the split axis of part [SPLIT, numel], in a fixed order."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(SPLIT):
            acc += tl.load(part_ptr + i * numel + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gptq_dequantize_kernel(
        qw_ptr,
        qz_ptr,
        s_ptr,
        w_ptr,  # [K, N] output
        N,
        K,
        qw_stride,
        qz_stride,
        s_stride,
        w_stride,
        group_size,
        zero_offset,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        k0 = tl.program_id(0) * BLOCK_K
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        n_mask = offs_n < N
        kn_mask = (offs_k < K)[:, None] & n_mask[None, :]
        q = _unpack(qw_ptr, k0, offs_n, n_mask, K, qw_stride, BLOCK_K, BLOCK_N, 0)
        g = offs_k // group_size
        zw = tl.load(
            qz_ptr + g[:, None] * qz_stride + (offs_n // 8)[None, :], mask=kn_mask, other=0
        )
        z = ((zw >> ((offs_n % 8) * 4)[None, :]) & 0xF) + zero_offset
        s = tl.load(s_ptr + g[:, None] * s_stride + offs_n[None, :], mask=kn_mask, other=0.0)
        w = (q - z).to(tl.float32) * s.to(tl.float32)  # as gptq_pack.dequantize: fp32, one rounding
        ptrs = w_ptr + offs_k[:, None].to(tl.int64) * w_stride + offs_n[None, :]
        tl.store(ptrs, w.to(w_ptr.dtype.element_ty), mask=kn_mask)


def _check(x_k: int | None, qweight, qzeros, scales, group_size: int) -> tuple[int, int, int]:
    """(K, N, effective group size) after checking the shapes agree; raises ValueError."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError("qweight and qzeros must be int32")
    k, n = qweight.shape[0] * gptq_pack.PACK, qweight.shape[1]
    if x_k is not None and x_k != k:
        raise ValueError(f"x has {x_k} input features, qweight packs {k}")
    if n % gptq_pack.PACK or qzeros.shape[1] * gptq_pack.PACK != n:
        raise ValueError(f"output features ({n}) must be a multiple of 8 and match qzeros")
    gs = k if group_size == -1 else group_size
    if gs <= 0:
        raise ValueError(f"group_size must be -1 or positive, got {group_size}")
    groups = -(-k // gs)
    if scales.shape != (groups, n) or qzeros.shape[0] != groups:
        raise ValueError(
            f"scales {tuple(scales.shape)} / qzeros {tuple(qzeros.shape)} do not match "
            f"{groups} groups of {gs} over K={k}, N={n}"
        )
    if qweight.stride(1) != 1 or qzeros.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("qweight, qzeros and scales need contiguous rows")
    return k, n, gs


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Defaults per shape class, from benchmarks/kernels/gptq_kernel_bench.py --tune (bf16, group 128).
GEMV_MAX_M = 1  # rows served by the FMA kernel; more rows take the tl.dot kernel
_BLOCK_M_FOR_ROWS = ((16, 16), (32, 32))  # (max M, BLOCK_M); more rows: 64
PROGRAMS_PER_SM = {16: 8, None: 2}  # split K until the grid has this many programs per SM
MIN_TILES_PER_SPLIT = 2  # ... but keep at least this many K-tiles in each split
MAX_SPLIT_K = 16


def default_config(m: int, n: int, k: int, num_sms: int = 132) -> GemmConfig:
    """The configuration ``gptq_gemm`` uses when none is given."""
    if m <= GEMV_MAX_M:
        cfg = GemmConfig(block_n=64, block_k=128, gemv=True)
    elif m <= 16:
        cfg = GemmConfig(block_m=16, block_n=128, block_k=128, unpack="split", num_stages=4)
    else:
        block_m = next((bm for top, bm in _BLOCK_M_FOR_ROWS if m <= top), 64)
        cfg = GemmConfig(block_m=block_m, block_n=128, block_k=128, unpack="reshape", num_stages=4)
    rows = 1 if cfg.gemv else cfg.block_m
    tiles = -(-m // rows) * -(-n // cfg.block_n)
    k_tiles = -(-k // cfg.block_k)
    want = (PROGRAMS_PER_SM[16] if m <= 16 else PROGRAMS_PER_SM[None]) * num_sms
    return replace(cfg, split_k=split_k_for(tiles, k_tiles, want))


def split_k_for(tiles: int, k_tiles: int, want: int) -> int:
    """Split K in two, again and again, while the grid (``tiles`` output tiles x the splits) has
    fewer than ``want`` programs, each split keeps ``MIN_TILES_PER_SPLIT`` of the ``k_tiles``
    K-tiles and the split stays <= ``MAX_SPLIT_K``."""
    split = 1
    while (
        split * 2 <= MAX_SPLIT_K
        and tiles * split < want
        and k_tiles // (split * 2) >= MIN_TILES_PER_SPLIT
    ):
        split *= 2
    return split


def _fit_block_k(block_k: int, k: int, gs: int, scale_after_dot: bool) -> tuple[int, bool]:
    """A power-of-two BLOCK_K >= 16 that keeps each K-tile inside one group, if asked and possible;
    otherwise the configured one with per-weight dequantization."""
    if not scale_after_dot:
        return block_k, False
    if gs >= k:
        return block_k, True  # one group for the whole of K
    bk = block_k
    while bk >= MIN_DOT and gs % bk:
        bk //= 2
    return (bk, True) if bk >= MIN_DOT else (block_k, False)


def gptq_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zero_offset: int,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Fused ``x [M, K] @ W [K, N]`` with ``W`` unpacked in registers; returns [M, N] in x's dtype.

    K and N must be multiples of 8; any M >= 0. ``config`` overrides the tiles (tests, tuning).
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    k, n, gs = _check(x.shape[1], qweight, qzeros, scales, group_size)
    m = x.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if config is None:
        sms = _num_sms(x.device.index or 0) if x.is_cuda else 8
        config = default_config(m, n, k, sms)
    gemv = config.gemv and gs % 8 == 0  # the FMA kernel: any group of whole words
    if gemv:
        block_k = config.block_k
        one_group = gs >= k or gs % block_k == 0
    else:
        block_k, after = _fit_block_k(config.block_k, k, gs, config.scale_after_dot)
    if min(config.block_n, block_k) < MIN_DOT or (config.block_m < MIN_DOT and not gemv):
        raise ValueError(f"every tile dimension must be >= {MIN_DOT}: {config}")
    k_tiles = triton.cdiv(k, block_k)
    per_split = triton.cdiv(k_tiles, max(1, min(config.split_k, k_tiles)))
    split = triton.cdiv(k_tiles, per_split)  # no empty splits
    # split > 1: each split writes fp32 partial sums, a second kernel adds them in a fixed order
    dest = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else out
    stride_split = dest.stride(0) if split > 1 else 0
    args = (x, qweight, qzeros, scales, dest)
    strides = (x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), stride_split)
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if gemv:
        grid = (m, triton.cdiv(n, config.block_n), split)
        _gptq_gemv_kernel[grid](
            *args, n, k, *strides, dest.stride(-2), gs, zero_offset, per_split,
            BLOCK_N=config.block_n, BLOCK_K=block_k, ONE_GROUP=one_group, **launch,
        )  # fmt: skip
    else:
        unpack = _UNPACK[config.unpack]
        if unpack == 2 and not (after and block_k >= 8 * MIN_DOT):
            unpack = 0  # the eight dots need 16 rows each and one group per tile
        grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
        _gptq_gemm_kernel[grid](
            *args, m, n, k, *strides, dest.stride(-2), gs, zero_offset, per_split,
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=block_k,
            SCALE_AFTER_DOT=after, UNPACK=unpack,
            MAGIC=_MAGIC.get(x.dtype, 0) if config.magic and after else 0,
            IEEE=x.dtype == torch.float32, **launch,
        )  # fmt: skip
    if split > 1:
        block = 1024
        _split_k_sum_kernel[(triton.cdiv(m * n, block),)](
            dest, out, m * n, SPLIT=split, BLOCK=block
        )
    return out


def gptq_dequantize(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zero_offset: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``W [K, N]`` in ``dtype`` (default: the scales' dtype), equal to ``gptq_pack.dequantize``."""
    k, n, gs = _check(None, qweight, qzeros, scales, group_size)
    w = torch.empty((k, n), dtype=dtype or scales.dtype, device=qweight.device)
    block_k, block_n = 64, 128
    if k and n:
        _gptq_dequantize_kernel[(triton.cdiv(k, block_k), triton.cdiv(n, block_n))](
            qweight,
            qzeros,
            scales,
            w,
            n,
            k,
            qweight.stride(0),
            qzeros.stride(0),
            scales.stride(0),
            w.stride(0),
            gs,
            zero_offset,
            BLOCK_K=block_k,
            BLOCK_N=block_n,
        )
    return w


def dequantize_reference(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zero_offset: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``W [K, N]`` in pure torch (contiguous groups)."""
    k, _, gs = _check(None, qweight, qzeros, scales, group_size)
    g_idx = gptq_pack.default_g_idx(k, gs, device=qweight.device)
    return gptq_pack.dequantize(qweight, qzeros, scales, g_idx, zero_offset, dtype)


def gptq_matmul_reference(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zero_offset: int,
) -> torch.Tensor:
    """``x [..., K] @ W`` in pure torch: dequantize to x's dtype, then matmul."""
    w = dequantize_reference(qweight, qzeros, scales, group_size, zero_offset, x.dtype)
    return x @ w


def gptq_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    zero_offset: int,
    *,
    fused_max_m: int = 64,
) -> torch.Tensor:
    """``x [..., K] @ W [K, N]`` -> [..., N]: the fused kernel for up to ``fused_max_m`` rows,
    dequantize + cuBLAS above that; the torch reference off CUDA (or without triton)."""
    if not x.is_cuda or triton is None:
        return gptq_matmul_reference(x, qweight, qzeros, scales, group_size, zero_offset)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] <= fused_max_m:
        y = gptq_gemm(x2, qweight, qzeros, scales, group_size, zero_offset)
    else:
        w = gptq_dequantize(qweight, qzeros, scales, group_size, zero_offset, x.dtype)
        y = x2 @ w
    return y.view(*lead, y.shape[-1])
