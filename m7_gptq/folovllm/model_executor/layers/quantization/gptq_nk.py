"""GPTQ 4-bit matmul over the repacked layout (``repack_nk``, diagram in utils/gptq_pack.py).

``qweight`` is int32 [N, Kp/8]: each output channel one contiguous run along K, each 16-byte chunk
of 4 words holding 32 input channels, nibble ``i`` of word ``l`` = channel ``32c + 4i + l``. A
[BLOCK_N, BLOCK_K/8] tile of words arrives in 16-byte vectors, and ``(words >> 4i) & 0xF`` is a
whole tile of weights whose activations are 4 adjacent values per chunk. ``qzeros``/``scales``
keep the format's layout; a column's zero is ``stored + zero_offset`` (1 "gptq", 0 "gptq_v2").

Decode reads each weight once and does 2 flops with it per row, so the instructions per weight
decide the speed. A K-tile never straddles two groups, so with the column's scale s and zero z::

    sum_k x_k s (q_k - z) = s * (sum_k x_k q_k  -  z * sum_k x_k)

and the loop body is "nibble -> float, multiply-add with x"; zero and scale cost one FMA per
column per group, after a reduction along K.

- ``_nk_gemv_kernel`` (M <= 4, or blocks of 4 rows with ``kernel="gemv"``): CUDA-core FMAs, the
  rows in one program (each word read once).
  Nibble -> float32 without a conversion (``deq``): "mantissa" shifts it into the top mantissa bits
  of 1.0 (the float 1 + q/16; ``sum x q = 16 (sum x (1 + q/16) - sum x)``); "exponent" ORs it,
  unshifted, into 2^23's mantissa (2^23 + q 16^e, exact) and one exact FMA (times 16^-e, minus
  2^23 16^-e) leaves q; "convert" is the plain conversion.
- ``_nk_dot_kernel`` (M <= 64): eight ``tl.dot`` per K-tile, one per nibble plane. With one group
  per tile a nibble becomes bf16/fp16 by an OR into the exponent bits (0x4300 | q = 128 + q,
  0x6400 | q = 1024 + q) and zero (+128 / +1024) and scale come after the dot; small groups
  dequantize each weight with its chunk's group.
- M > 64: ``_nk_dequantize_kernel`` writes ``W`` [N, K] once, then cuBLAS (``F.linear``).

Split-K, when the output has too few tiles to fill the GPU: programs write fp32 partial sums,
added in a fixed order (deterministic, unlike atomic adds) by a second kernel or, with
``reduce="serial"``, by the last program of each tile to arrive (an atomic count; no second
launch). Launches depend only on shapes (CUDA-graph capturable). ``default_config`` reads
``TUNED`` (``benchmarks/kernels/gptq_kernel_bench.py --sweep``), else a heuristic. Off CUDA
``gptq_nk_matmul`` runs a torch reference; the tests run the kernels in Triton's interpreter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from folovllm.model_executor.layers.quantization.gptq_triton import split_k_for
from folovllm.model_executor.layers.quantization.utils import gptq_pack

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install runs the torch reference
    triton = tl = None

MIN_DOT = 16  # tl.dot on the GPU needs every tile dimension >= 16
GEMV_MAX_M = 4  # rows served by the FMA kernel
FUSED_MAX_M = 64  # rows served by the fused kernels; more: dequantize + cuBLAS
_DEQ = {"mantissa": 0, "exponent": 1, "convert": 2}
_EXPONENT = {"mantissa": 0x3F800000, "exponent": 0x4B000000, "convert": 0}  # 1.0, 2^23
_MAGIC = {torch.bfloat16: 128, torch.float16: 1024}  # 0x4300 / 0x6400 as bf16 / fp16


@dataclass(frozen=True)
class NKConfig:
    """Tiles and launch settings (``block_k``: input channels per step, a multiple of 32)."""

    block_m: int = 16  # dot kernel only
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    deq: str = "mantissa"  # GEMV: nibble -> float32 (see the module docstring)
    prefetch: bool = False  # GEMV: load the next tile's words before using this one's
    reduce: str = "kernel"  # who adds split-K's partial sums: "kernel" or "serial" (docstring)
    kernel: str = "auto"  # "gemv" also above GEMV_MAX_M rows (blocks of 4 rows), else "auto"


if triton is not None:
    # The dot kernel's nibble -> operand conversion and its dot are the format kernels' own.
    from folovllm.model_executor.layers.quantization.gptq_triton import (
        _dot,
        _to_dot_operand,
    )

    @triton.jit
    def _plane(words, i: tl.constexpr, DEQ: tl.constexpr, exponent):
        """Nibble plane i of a tile of words as float32: DEQ 0 -> 1 + q/16, 1 and 2 -> q.
        ``exponent`` (the bits of 1.0 or of 2^23) comes in as an argument: in a register, AND
        and OR fuse into one 3-input logic op (LOP3)."""
        if DEQ == 0:
            if i <= 4:
                b = (words << (19 - 4 * i)) & 0x00780000
            else:
                b = (words >> (4 * i - 19)) & 0x00780000
            return (b | exponent).to(tl.float32, bitcast=True)
        elif DEQ == 1:  # 2^23 + q 16^e, times 16^-e, minus 2^23 16^-e: one exact FMA
            if i <= 4:
                f = (words & (0xF << (4 * i)) | exponent).to(tl.float32, bitcast=True)
                return tl.fma(f, 1.0 / (1 << (4 * i)), -8388608.0 / (1 << (4 * i)))
            else:
                f = ((words >> 12) & (0xF << (4 * i - 12)) | exponent).to(tl.float32, bitcast=True)
                return tl.fma(f, 1.0 / (1 << (4 * i - 12)), -8388608.0 / (1 << (4 * i - 12)))
        else:
            return ((words >> (4 * i)) & 0xF).to(tl.float32)

    @triton.jit
    def _load_words(qw_rows, n_mask, w, t, t_end, KW, BLOCK_K: tl.constexpr):
        wd = t * (BLOCK_K // 8) + w
        mask = n_mask[:, None] & ((wd < KW) & (t < t_end))[None, :]
        return tl.load(qw_rows + wd[None, :], mask=mask, other=0, eviction_policy="evict_first")

    @triton.jit
    def _gemv_row(x_row, ch, cm, q, p, xs, PLANE: tl.constexpr):
        """One row's products with nibble plane PLANE, and its x sum."""
        xv = tl.load(x_row + ch, mask=cm, other=0.0).to(tl.float32)
        if PLANE == 0:  # start the sums in the layout of x's slice (no cross-warp reductions)
            return q * xv[None, :], xv
        return p + q * xv[None, :], xs + xv

    @triton.jit
    def _gemv_group(acc, p, xs, z, s, DEQ: tl.constexpr):
        """acc + s (sum x q - z sum x) for one group of one row."""
        dot = tl.sum(p, axis=1)
        x_sum = tl.sum(xs, axis=0)
        if DEQ == 0:
            dot = 16.0 * (dot - x_sum)  # p held sum x (1 + q/16)
        return acc + (dot - z * x_sum) * s

    @triton.jit
    def _write(acc, out, part, mask, part_stride, pid_k, REDUCE: tl.constexpr):
        """A program's result: the output (REDUCE 0), or its fp32 partial sum of split pid_k."""
        if REDUCE == 0:
            tl.store(out, acc.to(out.dtype.element_ty), mask=mask)
        else:
            tl.store(part + pid_k * part_stride, acc, mask=mask)

    @triton.jit
    def _arrive(cnt_ptr, tile, split):
        """Count this split of a tile; True in the last program to arrive. The barrier orders
        every thread's partial sums before the count; release/acquire shows them to the last."""
        tl.debug_barrier()
        return tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") == split - 1

    @triton.jit
    def _sum_splits(out, part, mask, part_stride, split):
        """out = the splits' partial sums added in order (bit-equal to _split_k_sum_kernel)."""
        total = tl.load(part, mask=mask, other=0.0, cache_modifier=".cg")
        for j in range(1, split):
            total += tl.load(part + j * part_stride, mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(out, total.to(out.dtype.element_ty), mask=mask)

    # Runtime scalars whose values vary between calls: no value specialization (fewer compiles).
    _VARYING = ["M", "group_size", "zero_offset", "tiles_per_split", "exponent"]

    @triton.jit(do_not_specialize=_VARYING)
    def _nk_gemv_kernel(
        x_ptr,  # [M, K], activation dtype
        qw_ptr,  # [N, KW] int32, repack_nk's layout
        qz_ptr,  # [G, N // 8] int32
        s_ptr,  # [G, N]
        out_ptr,  # [M, N]
        part_ptr,  # [split_k, M, N] float32 partial sums (REDUCE > 0)
        cnt_ptr,  # int32 arrival counters, one per output tile, left at 0 (REDUCE 2)
        M,
        N,
        K,
        KW,
        x_stride,
        qw_stride,
        qz_stride,
        s_stride,
        part_stride,
        out_stride_m,
        group_size,
        zero_offset,
        tiles_per_split,
        exponent,  # 0x3F800000 (DEQ 0) or 0x4B000000 (DEQ 1), see _plane
        ROWS: tl.constexpr,  # rows per program (1..4): each word read once for all of them
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,  # the host keeps each K-tile inside one group
        DEQ: tl.constexpr,
        PREFETCH: tl.constexpr,
        REDUCE: tl.constexpr,  # 0: no split; 1: partial sums, a second kernel adds; 2: the last
    ):  # program of a tile adds them (no second launch)
        pid_r = tl.program_id(0)  # M > ROWS: blocks of rows next to each other (the repeat reads
        pid_n = tl.program_id(1)  # of a tile's words hit L2)
        pid_k = tl.program_id(2)
        row0 = pid_r * ROWS
        x_ptr += row0.to(tl.int64) * x_stride
        out_ptr += row0.to(tl.int64) * out_stride_m
        part_ptr += row0.to(tl.int64) * N
        ok1, ok2, ok3 = row0 + 1 < M, row0 + 2 < M, row0 + 3 < M
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        z_shift = (offs_n % 8) * 4
        w = tl.arange(0, BLOCK_K // 8)
        ch0 = (w // 4) * 32 + (w % 4)  # channel of nibble 0 of word w (nibble i: + 4i)
        qw_rows = qw_ptr + offs_n[:, None].to(tl.int64) * qw_stride
        acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_N], dtype=tl.float32)
        t_start = pid_k * tiles_per_split
        t_end = tl.minimum(t_start + tiles_per_split, tl.cdiv(K, BLOCK_K))
        if PREFETCH:
            nxt = _load_words(qw_rows, n_mask, w, t_start, t_end, KW, BLOCK_K)
        else:
            nxt = tl.zeros([BLOCK_N, BLOCK_K // 8], dtype=tl.int32)
        for t in range(t_start, t_end):
            if PREFETCH:  # this tile's words arrived during the previous tile's arithmetic
                words = nxt
                nxt = _load_words(qw_rows, n_mask, w, t + 1, t_end, KW, BLOCK_K)
            else:
                words = _load_words(qw_rows, n_mask, w, t, t_end, KW, BLOCK_K)
            k0 = t * BLOCK_K
            g = k0 // group_size
            zw = tl.load(qz_ptr + g * qz_stride + offs_n // 8, mask=n_mask, other=0)
            z = (((zw >> z_shift) & 0xF) + zero_offset).to(tl.float32)
            s = tl.load(s_ptr + g * s_stride + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            p0, p1, p2, p3 = 0.0, 0.0, 0.0, 0.0  # products and x sums: set by plane 0
            xs0, xs1, xs2, xs3 = 0.0, 0.0, 0.0, 0.0
            for i in tl.static_range(8):
                q = _plane(words, i, DEQ, exponent)
                ch = k0 + ch0 + 4 * i
                cm = ch < K
                p0, xs0 = _gemv_row(x_ptr, ch, cm, q, p0, xs0, i)
                if ROWS > 1:
                    p1, xs1 = _gemv_row(x_ptr + x_stride, ch, cm & ok1, q, p1, xs1, i)
                if ROWS > 2:
                    p2, xs2 = _gemv_row(x_ptr + 2 * x_stride, ch, cm & ok2, q, p2, xs2, i)
                if ROWS > 3:
                    p3, xs3 = _gemv_row(x_ptr + 3 * x_stride, ch, cm & ok3, q, p3, xs3, i)
            acc0 = _gemv_group(acc0, p0, xs0, z, s, DEQ)
            if ROWS > 1:
                acc1 = _gemv_group(acc1, p1, xs1, z, s, DEQ)
            if ROWS > 2:
                acc2 = _gemv_group(acc2, p2, xs2, z, s, DEQ)
            if ROWS > 3:
                acc3 = _gemv_group(acc3, p3, xs3, z, s, DEQ)
        out = out_ptr + offs_n
        part = part_ptr + offs_n  # row r: + r * N
        m1, m2, m3 = n_mask & ok1, n_mask & ok2, n_mask & ok3
        _write(acc0, out, part, n_mask, part_stride, pid_k, REDUCE)
        if ROWS > 1:
            _write(acc1, out + out_stride_m, part + N, m1, part_stride, pid_k, REDUCE)
        if ROWS > 2:
            _write(acc2, out + 2 * out_stride_m, part + 2 * N, m2, part_stride, pid_k, REDUCE)
        if ROWS > 3:
            _write(acc3, out + 3 * out_stride_m, part + 3 * N, m3, part_stride, pid_k, REDUCE)
        if REDUCE == 2:
            tile = pid_r * tl.num_programs(1) + pid_n
            split = tl.num_programs(2)
            if _arrive(cnt_ptr, tile, split):
                _sum_splits(out, part, n_mask, part_stride, split)
                if ROWS > 1:
                    _sum_splits(out + out_stride_m, part + N, m1, part_stride, split)
                if ROWS > 2:
                    _sum_splits(out + 2 * out_stride_m, part + 2 * N, m2, part_stride, split)
                if ROWS > 3:
                    _sum_splits(out + 3 * out_stride_m, part + 3 * N, m3, part_stride, split)
                tl.store(cnt_ptr + tile, 0)  # ready for the next launch

    @triton.jit(do_not_specialize=_VARYING[:4])
    def _nk_dot_kernel(
        x_ptr,  # [M, K]
        qw_ptr,  # [N, KW] int32
        qz_ptr,
        s_ptr,
        out_ptr,  # [M, N]
        part_ptr,  # [split_k, M, N] float32 (REDUCE > 0)
        cnt_ptr,  # (REDUCE 2)
        M,
        N,
        K,
        KW,
        x_stride,
        qw_stride,
        qz_stride,
        s_stride,
        part_stride,
        out_stride_m,
        group_size,
        zero_offset,
        tiles_per_split,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        ONE_GROUP: tl.constexpr,  # every K-tile inside one group: zero and scale after the dot
        MAGIC: tl.constexpr,  # 0, or 128 (bf16) / 1024 (fp16), with ONE_GROUP only
        IEEE: tl.constexpr,  # float32 activations: exact dots (no TF32)
        REDUCE: tl.constexpr,  # as in _nk_gemv_kernel
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        n_mask = offs_n < N
        z_shift = (offs_n % 8) * 4
        w = tl.arange(0, BLOCK_K // 8)
        ch0 = (w // 4) * 32 + (w % 4)
        qw_rows = qw_ptr + offs_n[:, None].to(tl.int64) * qw_stride
        x_rows = x_ptr + offs_m[:, None].to(tl.int64) * x_stride
        dt = x_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        t_start = pid_k * tiles_per_split
        t_end = tl.minimum(t_start + tiles_per_split, tl.cdiv(K, BLOCK_K))
        for t in range(t_start, t_end):
            k0 = t * BLOCK_K
            words = _load_words(qw_rows, n_mask, w, t, t_end, KW, BLOCK_K)
            if ONE_GROUP:
                g = k0 // group_size
                zw = tl.load(qz_ptr + g * qz_stride + offs_n // 8, mask=n_mask, other=0)
                z = ((zw >> z_shift) & 0xF) + (zero_offset + MAGIC)
                s = tl.load(s_ptr + g * s_stride + offs_n, mask=n_mask, other=0.0)
                xq = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                kk = k0 + tl.arange(0, BLOCK_K)  # the tile's x, summed once (one reduction)
                xt = tl.load(
                    x_rows + kk[None, :], mask=m_mask[:, None] & (kk < K)[None, :], other=0.0
                )
                x_sum = tl.sum(xt.to(tl.float32), axis=1)
                for i in tl.static_range(8):
                    ch = k0 + ch0 + 4 * i
                    a = tl.load(x_rows + ch[None, :], mask=m_mask[:, None] & (ch < K)[None, :],
                                other=0.0)  # fmt: skip
                    b = _to_dot_operand((words >> (4 * i)) & 0xF, dt, MAGIC)
                    xq = _dot(a, tl.trans(b), xq, IEEE)
                xz = x_sum[:, None] * z.to(tl.float32)[None, :]
                acc += (xq - xz) * s.to(tl.float32)[None, :]
            else:
                # Groups change inside the tile: each 32-channel chunk (4 words) has one group.
                g = (k0 + (w // 4) * 32) // group_size
                kn = n_mask[:, None] & (k0 // 8 + w < KW)[None, :]
                zw = tl.load(qz_ptr + g[None, :] * qz_stride + (offs_n // 8)[:, None], mask=kn,
                             other=0)  # fmt: skip
                z = ((zw >> z_shift[:, None]) & 0xF) + zero_offset
                s = tl.load(s_ptr + g[None, :] * s_stride + offs_n[:, None], mask=kn, other=0.0)
                for i in tl.static_range(8):
                    ch = k0 + ch0 + 4 * i
                    a = tl.load(x_rows + ch[None, :], mask=m_mask[:, None] & (ch < K)[None, :],
                                other=0.0)  # fmt: skip
                    b = ((((words >> (4 * i)) & 0xF) - z).to(tl.float32) * s.to(tl.float32)).to(dt)
                    acc = _dot(a, tl.trans(b), acc, IEEE)
        out = out_ptr + offs_m[:, None].to(tl.int64) * out_stride_m + offs_n[None, :]
        part = part_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
        _write(acc, out, part, mask, part_stride, pid_k, REDUCE)
        if REDUCE == 2:
            tile = pid_m * tl.num_programs(1) + pid_n
            split = tl.num_programs(2)
            if _arrive(cnt_ptr, tile, split):
                _sum_splits(out, part, mask, part_stride, split)
                tl.store(cnt_ptr + tile, 0)

    @triton.jit
    def _nk_dequantize_kernel(
        qw_ptr,
        qz_ptr,
        s_ptr,
        w_ptr,  # [N, K] output (F.linear's weight layout)
        N,
        K,
        KW,
        qw_stride,
        qz_stride,
        s_stride,
        w_stride,
        group_size,
        zero_offset,
        exponent,  # 2^23's bits: nibbles to floats as in _plane (no int -> float conversion)
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        t = tl.program_id(1)
        k0 = t * BLOCK_K
        n_mask = offs_n < N
        w = tl.arange(0, BLOCK_K // 8)
        ch0 = (w // 4) * 32 + (w % 4)
        qw_rows = qw_ptr + offs_n[:, None].to(tl.int64) * qw_stride
        words = _load_words(qw_rows, n_mask, w, t, t + 1, KW, BLOCK_K)
        g = (k0 + (w // 4) * 32) // group_size
        kn = n_mask[:, None] & (k0 // 8 + w < KW)[None, :]
        zw = tl.load(qz_ptr + g[None, :] * qz_stride + (offs_n // 8)[:, None], mask=kn, other=0)
        z = (((zw >> ((offs_n % 8) * 4)[:, None]) & 0xF) + zero_offset).to(tl.float32)
        s = tl.load(s_ptr + g[None, :] * s_stride + offs_n[:, None], mask=kn, other=0.0)
        w_rows = w_ptr + offs_n[:, None].to(tl.int64) * w_stride
        for i in tl.static_range(8):
            ch = k0 + ch0 + 4 * i
            v = (_plane(words, i, 1, exponent) - z) * s.to(tl.float32)  # (q - z) s, exact q - z
            tl.store(w_rows + ch[None, :], v.to(w_ptr.dtype.element_ty),
                     mask=n_mask[:, None] & (ch < K)[None, :])  # fmt: skip


def _check(x_k, qweight, qzeros, scales, k: int, group_size: int) -> tuple[int, int]:
    """(N, effective group size) after checking the shapes agree; raises ValueError."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError("qweight and qzeros must be int32")
    n, kw = qweight.shape
    if kw != -(-k // gptq_pack.CHUNK) * (gptq_pack.CHUNK // gptq_pack.PACK):
        raise ValueError(f"qweight {tuple(qweight.shape)} is not repack_nk's layout of K={k}")
    if x_k is not None and x_k != k:
        raise ValueError(f"x has {x_k} input features, the layer has {k}")
    if n % gptq_pack.PACK or qzeros.shape[1] * gptq_pack.PACK != n:
        raise ValueError(f"output features ({n}) must be a multiple of 8 and match qzeros")
    gs = k if group_size == -1 else group_size
    if gs <= 0 or (gs < k and gs % gptq_pack.CHUNK):
        raise ValueError(f"group_size must be -1, >= K or a multiple of 32, got {group_size}")
    groups = -(-k // gs)
    if scales.shape != (groups, n) or qzeros.shape[0] != groups:
        raise ValueError(
            f"scales {tuple(scales.shape)} / qzeros {tuple(qzeros.shape)} do not match "
            f"{groups} groups of {gs} over K={k}, N={n}"
        )
    if qweight.stride(1) != 1 or qzeros.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("qweight, qzeros and scales need contiguous rows")
    return n, gs


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


MAX_TILES = 1 << 14  # "serial" split-K: an arrival counter per output tile, 0 between launches


@functools.cache
def _counters(device: torch.device) -> torch.Tensor:
    return torch.zeros(MAX_TILES, dtype=torch.int32, device=device)


# (M, N, K) -> NKConfig fields, measured by ``gptq_kernel_bench.py --sweep`` (bf16, group 128); M
# rows use the smallest tuned M >= M of their (N, K). An M > FUSED_MAX_M (kept where the fused
# kernel beat dequantize + cuBLAS) extends the fused path to it.
TUNED: dict[tuple[int, int, int], dict] = {}
PROGRAMS_PER_SM = 4  # heuristic: split K until the grid has this many programs per SM


def default_config(m: int, n: int, k: int, num_sms: int = 132) -> NKConfig:
    """The configuration ``gptq_nk_gemm`` uses when none is given."""
    tuned = [key for key in TUNED if key[1:] == (n, k) and key[0] >= m]
    if tuned:
        return NKConfig(**TUNED[min(tuned)])
    if m <= GEMV_MAX_M:
        cfg = NKConfig(block_n=128, block_k=128, num_stages=1)  # no tl.dot: nothing to pipeline
        rows = m
    else:
        block_m = 16 if m <= 16 else 32 if m <= 32 else 64
        cfg = NKConfig(block_m=block_m, block_n=64 if m <= 16 else 128, block_k=128, num_stages=4)
        rows = cfg.block_m
    tiles = -(-m // rows) * -(-n // cfg.block_n)
    k_tiles = -(-k // cfg.block_k)
    return replace(cfg, split_k=split_k_for(tiles, k_tiles, PROGRAMS_PER_SM * num_sms))


def _fit_block_k(block_k: int, k: int, gs: int, min_k: int) -> tuple[int, bool]:
    """(BLOCK_K, one group per tile): the largest BLOCK_K >= min_k, <= block_k, that divides the
    group (any block_k when one group spans K); else block_k with a group per 32-channel chunk."""
    if gs >= k:
        return block_k, True
    bk = block_k
    while bk > min_k and gs % bk:
        bk //= 2
    return (bk, True) if gs % bk == 0 else (block_k, False)


def gptq_nk_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    k: int,
    group_size: int,
    zero_offset: int,
    config: NKConfig | None = None,
) -> torch.Tensor:
    """Fused ``x [M, K] @ W`` from ``repack_nk``'s layout; [M, N] in x's dtype. The FMA kernel for
    M <= ``GEMV_MAX_M``, the ``tl.dot`` kernel above; ``config`` overrides the tiles."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    n, gs = _check(x.shape[1], qweight, qzeros, scales, k, group_size)
    m = x.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if config is None:
        config = default_config(m, n, k, _num_sms(x.device.index or 0) if x.is_cuda else 8)
    gemv = m <= GEMV_MAX_M or config.kernel == "gemv"
    block_k, one_group = _fit_block_k(config.block_k, k, gs, 32 if gemv else 8 * MIN_DOT)
    if gemv and not one_group:
        raise ValueError(f"block_k={config.block_k} cannot fit group {gs}")
    if block_k % gptq_pack.CHUNK or (not gemv and min(config.block_m, config.block_n,
                                                      block_k // 8) < MIN_DOT):  # fmt: skip
        raise ValueError(f"tiles must be >= {MIN_DOT} (block_k: a multiple of 32): {config}")
    k_tiles = triton.cdiv(k, block_k)
    per_split = triton.cdiv(k_tiles, max(1, min(config.split_k, k_tiles)))
    split = triton.cdiv(k_tiles, per_split)  # no empty splits
    rows = min(m, GEMV_MAX_M) if gemv else config.block_m
    tiles = triton.cdiv(m, rows) * triton.cdiv(n, config.block_n)
    reduce = 0 if split == 1 else 2 if config.reduce == "serial" and tiles <= MAX_TILES else 1
    part = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else out
    cnt = _counters(x.device) if reduce == 2 else out
    args = (x, qweight, qzeros, scales, out, part, cnt, n, k, qweight.shape[1], x.stride(0),
            qweight.stride(0), qzeros.stride(0), scales.stride(0), m * n, out.stride(0), gs,
            zero_offset, per_split)  # fmt: skip
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if gemv:
        _nk_gemv_kernel[(triton.cdiv(m, rows), triton.cdiv(n, config.block_n), split)](
            *args[:7], m, *args[7:], _EXPONENT[config.deq], ROWS=rows, BLOCK_N=config.block_n, BLOCK_K=block_k,
            DEQ=_DEQ[config.deq], PREFETCH=config.prefetch, REDUCE=reduce, **launch,
        )  # fmt: skip
    else:
        grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
        _nk_dot_kernel[grid](
            *args[:7], m, *args[7:], BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_K=block_k, ONE_GROUP=one_group,
            MAGIC=_MAGIC.get(x.dtype, 0) if one_group else 0,
            IEEE=x.dtype == torch.float32, REDUCE=reduce, **launch,
        )  # fmt: skip
    if reduce == 1:
        from folovllm.model_executor.layers.quantization.gptq_triton import _split_k_sum_kernel

        block = 1024
        _split_k_sum_kernel[(triton.cdiv(m * n, block),)](
            part, out, m * n, SPLIT=split, BLOCK=block
        )
    return out


def gptq_nk_dequantize(qweight, qzeros, scales, k: int, group_size: int, zero_offset: int,
                       dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """``W`` as [N, K] (``F.linear``'s weight) in ``dtype``, equal to ``gptq_pack.dequantize``."""
    n, gs = _check(None, qweight, qzeros, scales, k, group_size)
    w = torch.empty((n, k), dtype=dtype or scales.dtype, device=qweight.device)
    block_n, block_k = 64, 128
    if k and n:
        _nk_dequantize_kernel[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
            qweight, qzeros, scales, w, n, k, qweight.shape[1], qweight.stride(0),
            qzeros.stride(0), scales.stride(0), w.stride(0), gs, zero_offset, _EXPONENT["exponent"],
            BLOCK_N=block_n, BLOCK_K=block_k,
        )  # fmt: skip
    return w


def dequantize_nk_reference(qweight, qzeros, scales, k: int, group_size: int, zero_offset: int,
                            dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """``W`` [K, N] in pure torch: unpack the layout, then the format's formula."""
    _, gs = _check(None, qweight, qzeros, scales, k, group_size)
    g_idx = gptq_pack.default_g_idx(k, gs, device=qweight.device)
    q = gptq_pack.unpack_nk(qweight, k)
    z = gptq_pack.unpack_cols(qzeros) + zero_offset
    g = g_idx.long()
    return (scales[g].float() * (q - z[g]).float()).to(dtype or scales.dtype)


def gptq_nk_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    k: int,
    group_size: int,
    zero_offset: int,
    *,
    fused_max_m: int = FUSED_MAX_M,
) -> torch.Tensor:
    """``x [..., K] @ W`` -> [..., N]: the fused kernels for up to ``fused_max_m`` rows (or up to
    the largest M that ``TUNED`` holds for this shape), dequantize + cuBLAS above; the torch
    reference off CUDA (or without triton)."""
    if not x.is_cuda or triton is None:
        return x @ dequantize_nk_reference(qweight, qzeros, scales, k, group_size, zero_offset,
                                           x.dtype)  # fmt: skip
    x2 = x.reshape(-1, x.shape[-1])
    m, n = x2.shape[0], qweight.shape[0]
    if m <= fused_max_m or any(key[1:] == (n, k) and key[0] >= m for key in TUNED):
        y = gptq_nk_gemm(x2, qweight, qzeros, scales, k, group_size, zero_offset)
    else:
        w = gptq_nk_dequantize(qweight, qzeros, scales, k, group_size, zero_offset, x.dtype)
        y = F.linear(x2, w)
    return y.view(*x.shape[:-1], y.shape[-1])
