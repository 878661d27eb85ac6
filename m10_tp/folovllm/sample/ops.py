"""m8: the one-pass sampling kernel: the logits are read once, no softmax, no probability tensor.

Greedy rows (temperature 0) take the argmax; random rows take ``argmax(logits / T + G)`` with
Gumbel noise ``G = -log(-log U)``, U uniform from Philox: the torch path's exponential race
``argmax(p / E)``, ``E = -log U``, in log space. Program (row, part) reduces 4 * BLOCK columns of
one row to their best (value, column); a [B, parts] argmax finishes (ties: the smallest column).
"""

from __future__ import annotations

import torch

from folovllm.triton_utils import pdl_args

try:
    import triton
    import triton.language as tl

    from folovllm.triton_utils import pdl_wait
except ImportError:  # the CPU-only engine never calls the kernel
    triton = tl = None

if triton is not None:

    @triton.jit
    def _take(best, best_col, row_ptr, cols, n, temp, u):
        x = tl.load(row_ptr + cols, mask=cols < n, other=float("-inf")).to(tl.float32)
        if temp > 0:
            u = tl.minimum(tl.maximum(u, 1e-10), 0.99999994)  # U in (0, 1): both logs finite
            x = x / temp - tl.log(-tl.log(u))
        take = x > best  # strict: on a tie a lane keeps its earlier (smaller) column
        return tl.where(take, x, best), tl.where(take, cols, best_col)

    @triton.jit
    def _sample_kernel(
        logits_ptr, temp_ptr, val_ptr, col_ptr, stride, n, seed, BLOCK: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        pdl_wait(PDL)
        row, part, parts = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(1)
        row_ptr = logits_ptr + row * stride
        temp = tl.load(temp_ptr + row)
        cols = part * 4 * BLOCK + tl.arange(0, BLOCK)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        zero = tl.zeros([BLOCK], tl.float32)
        u0, u1, u2, u3, best_col = zero, zero, zero, zero, cols
        if temp > 0:  # one Philox call per lane, counter (row, column), gives 4 uniforms
            u0, u1, u2, u3 = tl.rand4x(seed, (row << 32) + cols)
        best, best_col = _take(best, best_col, row_ptr, cols, n, temp, u0)
        best, best_col = _take(best, best_col, row_ptr, cols + BLOCK, n, temp, u1)
        best, best_col = _take(best, best_col, row_ptr, cols + 2 * BLOCK, n, temp, u2)
        best, best_col = _take(best, best_col, row_ptr, cols + 3 * BLOCK, n, temp, u3)
        top = tl.max(best, 0)  # all -inf: every lane ties, the smallest column wins
        tl.store(val_ptr + row * parts + part, top)
        tl.store(col_ptr + row * parts + part, tl.min(tl.where(best == top, best_col, n), 0))


def sample(logits: torch.Tensor, temperature: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Token ids [B] (int64) for ``logits`` [B, V] (any float dtype) and ``temperature`` [B]
    (float32, 0 = greedy). The seed is drawn on the host from torch's default generator: no sync."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    rows, parts = logits.shape[0], triton.cdiv(logits.shape[1], 4 * block)
    vals = torch.empty(rows, parts, dtype=torch.float32, device=logits.device)
    cols = torch.empty(rows, parts, dtype=torch.int64, device=logits.device)
    seed = int(torch.randint(2**31 - 1, ()))
    if rows:
        _sample_kernel[(rows, parts)](
            logits, temperature, vals, cols, logits.stride(0), logits.shape[1], seed, BLOCK=block,
            **pdl_args(logits),
        )  # fmt: skip
    return cols.gather(1, vals.argmax(1, keepdim=True)).squeeze(1)
