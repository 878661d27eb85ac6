"""m8: a weight-streaming GEMV for linear layers at decode batch sizes (one to four rows).

At decode a linear layer multiplies a few rows by the whole weight: the step is bound by reading
the weight once. cuBLAS picks small-tile GEMM kernels for M = 1 that read narrow weights (o_proj,
down_proj) at 8-20% of the copy bandwidth; here each program reads BLOCK_N whole weight rows with
wide contiguous loads and accumulates in float32 (rounded once, as ``F.linear`` does).

Used on CUDA where the fused kernels are (``fused.use_fused``); ``Linear.forward`` asks
``use_gemv`` which of the two it takes.
"""

from __future__ import annotations

import torch

from folovllm.model_executor.layers import fused
from folovllm.triton_utils import pdl_args

try:
    import triton
    import triton.language as tl

    from folovllm.triton_utils import pdl_wait
except ImportError:  # the CPU-only engine never calls the kernel
    triton = tl = None

GEMV_MAX_ROWS = 4


if triton is not None:

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, x_stride, w_stride, y_stride,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.arange(0, BLOCK_M)
        kk = tl.arange(0, BLOCK_K)
        w_rows = w_ptr + n[:, None].to(tl.int64) * w_stride
        # The first weight tile is loaded before the wait: weights are never written by an earlier
        # kernel, so with PDL this DRAM round trip overlaps the previous kernel's tail.
        w = tl.load(w_rows + kk[None, :], mask=(n[:, None] < N) & (kk[None, :] < K))
        pdl_wait(PDL)
        # Products are summed elementwise across tiles and reduced across lanes once at the end.
        acc3 = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            x = tl.load(
                x_ptr + m[:, None] * x_stride + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K)
            )
            acc3 += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
            k = k0 + BLOCK_K + kk  # the next tile (masked out past K)
            w = tl.load(w_rows + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K))
        acc = tl.sum(acc3, axis=2)
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=n < N).to(tl.float32)[None, :]
        y_mask = (m[:, None] < M) & (n[None, :] < N)
        tl.store(
            y_ptr + m[:, None] * y_stride + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_mask
        )


def use_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """gemv() instead of cuBLAS for ``x`` [rows, k] @ ``weight`` [n, k]^T? At one row always; at 2-4
    rows only when n <= k (o_proj, down_proj): there cuBLAS's small-M kernels read the weight at a
    fraction of the bandwidth, while on wide outputs (qkv, gate_up) it is faster from 2 rows up
    (benchmarks/kernels/gemv_bench.py --sweep, one H200, weights not in L2)."""
    rows = x.shape[0]
    narrow = rows <= GEMV_MAX_ROWS and weight.shape[0] <= weight.shape[1]
    return fused.use_fused(x) and (rows == 1 or narrow)


def gemv_config(n: int, k: int, m: int = 1) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps), from benchmarks/kernels/gemv_bench.py --sweep on an H100
    (weights not in L2, PDL on). One row: wide outputs (qkv, gate_up) take four rows per one-warp
    program; narrow ones (o, down) read 2,048 columns per load. 2-4 rows: two rows of 1,024
    columns per two-warp program (an H200 sweep)."""
    if m > 1:
        return 2, 1024, 2
    if n > k:  # qkv 4096 x 1024, gate_up 6144 x 1024
        return 4, (1024 if n <= 4096 else 512), 1
    return (4, 2048, 2) if k <= 2048 else (1, 2048, 4)  # o 1024 x 2048, down 1024 x 3072


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """``F.linear`` for a few rows (decode at batch <= 4), reading the weight once; ``config``:
    (BLOCK_N, BLOCK_K, num_warps), by default ``gemv_config``'s."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    (m, k), n = x2.shape, weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_n, block_k, warps = config or gemv_config(n, k, m)
    if m:
        _gemv_kernel[(triton.cdiv(n, block_n),)](
            x2, weight, bias if bias is not None else weight, y, m, n, k,
            x2.stride(0), weight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=triton.next_power_of_2(max(m, 1)),
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **pdl_args(x),
        )  # fmt: skip
    return y.view(*x.shape[:-1], n)
