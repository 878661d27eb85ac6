"""m8: fused Triton kernels for the small per-token layers: (residual add +) RMSNorm, RoPE,
SiLU-mul, and q/k per-head RMSNorm (Qwen3) + RoPE straight from the qkv projection's output.

In eager PyTorch each of these is 3-10 elementwise kernels (cast, square, mean, rsqrt, multiply,
cast back, ...), each reading and writing the whole hidden state: a Qwen3-0.6B decode step
launches ~60 kernels per layer, and at batch 1 the step is launch-bound, not bandwidth-bound.
One kernel per layer op reads its inputs once and writes its outputs once; attention's q/k norm and
RoPE (two copies, two norms, two rotations in torch-op terms) are one kernel too. (The linear
layers' decode kernel is ``ops/gemv.py``.)

Each kernel rounds where the torch reference rounds (the residual sum, the normalised value
before the weight multiply, cos/sin and each product in RoPE, silu before the multiply), so in
float32 the results are the reference's up to summation order, and in bf16 they differ from it
only where a reduction order flips a rounding (near-ties, as any other kernel change).

Used on CUDA when triton is importable; ``FOLOVLLM_FUSED_KERNELS=0`` turns them off (the layers
then run their torch code, as on a CPU).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from folovllm.triton_utils import pdl_args

try:
    import triton
    import triton.language as tl

    from folovllm.triton_utils import pdl_wait
except ImportError:  # the CPU-only engine never calls the kernels
    triton = tl = None


@functools.cache
def _enabled() -> bool:
    off = os.environ.get("FOLOVLLM_FUSED_KERNELS", "1") == "0"
    return not off and importlib.util.find_spec("triton") is not None


def use_fused(x: torch.Tensor) -> bool:
    """Fused kernels for this tensor? (CUDA tensors only; tests call the kernels directly.)"""
    return x.is_cuda and _enabled()


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr,  # res: residual in / new residual out (HAS_RESIDUAL)
        x_stride, res_stride, out_stride, n_cols, eps,
        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)  # a weight: no earlier kernel writes it
        pdl_wait(PDL)
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
            x = (x + r).to(x_ptr.dtype.element_ty)  # the sum is rounded, as in torch
            tl.store(res_ptr + row * res_stride + cols, x, mask=mask)
        xf = x.to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n_cols + eps)
        normed = (xf * inv).to(x_ptr.dtype.element_ty)  # cast back before the weight multiply
        y = normed.to(tl.float32) * w.to(tl.float32)
        tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _norm_rope_heads(src, dst, head_stride, n_heads, pos, cos_ptr, sin_ptr, w_ptr, eps,
                         HAS_NORM: tl.constexpr, HALF: tl.constexpr, HEADS_PAD: tl.constexpr):  # fmt: skip
        """``n_heads`` heads at ``src`` (may be ``dst``): RMSNorm each if HAS_NORM, then RoPE."""
        dt = src.dtype.element_ty
        d = tl.arange(0, HALF)[None, :]
        h = tl.arange(0, HEADS_PAD)[:, None]
        x1 = tl.load(src + h * head_stride + d, mask=h < n_heads, other=0.0).to(tl.float32)
        x2 = tl.load(src + h * head_stride + HALF + d, mask=h < n_heads, other=0.0).to(tl.float32)
        if HAS_NORM:  # as RMSNorm._norm: float32 statistics, cast back, times the weight, rounded
            ss = tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)
            inv = (1.0 / tl.sqrt(ss / (2 * HALF) + eps))[:, None]
            w1 = tl.load(w_ptr + d).to(tl.float32)
            w2 = tl.load(w_ptr + HALF + d).to(tl.float32)
            x1 = ((x1 * inv).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
            x2 = ((x2 * inv).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
        pos = pos.to(tl.int64)
        cos = tl.load(cos_ptr + pos * HALF + d).to(dt).to(tl.float32)  # cast first, as torch does
        sin = tl.load(sin_ptr + pos * HALF + d).to(dt).to(tl.float32)
        # (x1 cos - x2 sin, x2 cos + x1 sin), each product rounded as torch rounds it
        a = (x1 * cos).to(dt).to(tl.float32) - (x2 * sin).to(dt).to(tl.float32)
        b = (x2 * cos).to(dt).to(tl.float32) + (x1 * sin).to(dt).to(tl.float32)
        tl.store(dst + h * head_stride + d, a.to(dt), mask=h < n_heads)
        tl.store(dst + h * head_stride + HALF + d, b.to(dt), mask=h < n_heads)

    @triton.jit
    def _rope_kernel(
        x_ptr, pos_ptr, cos_ptr, sin_ptr,  # x: [tokens, heads, head_dim] rotated in place;
        x_stride_t, x_stride_h, num_heads,  # cos / sin: [max_position, head_dim / 2] float32
        HALF: tl.constexpr, HEADS_PAD: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        pdl_wait(PDL)
        t = tl.program_id(0).to(tl.int64)
        x, pos = x_ptr + t * x_stride_t, tl.load(pos_ptr + t)  # rotated in place, no norm
        _norm_rope_heads(x, x, x_stride_h, num_heads, pos, cos_ptr, sin_ptr, x_ptr, 0.0,
                         False, HALF, HEADS_PAD)  # fmt: skip

    @triton.jit
    def _qk_norm_rope_kernel(
        qkv_ptr,  # [tokens, (H + 2 KV) * head_dim], any row stride: q heads, k heads, v heads
        pos_ptr,
        cos_ptr,
        sin_ptr,
        qw_ptr,  # q_norm / k_norm weights [head_dim] (read when HAS_NORM: Qwen3)
        kw_ptr,
        q_ptr,  # out: [tokens, H, head_dim], contiguous
        k_ptr,  # out: [tokens, KV, head_dim], contiguous
        qkv_stride, H, KV, eps,
        HAS_NORM: tl.constexpr, HALF: tl.constexpr, Q_PAD: tl.constexpr, KV_PAD: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        pdl_wait(PDL)
        t = tl.program_id(0).to(tl.int64)  # one program per token: all its q heads, then k heads
        src, pos, D = qkv_ptr + t * qkv_stride, tl.load(pos_ptr + t), 2 * HALF
        _norm_rope_heads(src, q_ptr + t * H * D, D, H, pos, cos_ptr, sin_ptr, qw_ptr, eps,
                         HAS_NORM, HALF, Q_PAD)  # fmt: skip
        _norm_rope_heads(src + H * D, k_ptr + t * KV * D, D, KV, pos, cos_ptr, sin_ptr, kw_ptr, eps,
                         HAS_NORM, HALF, KV_PAD)  # fmt: skip

    @triton.jit
    def _silu_and_mul_kernel(
        x_ptr, out_ptr, x_stride, out_stride, d, BLOCK: tl.constexpr, PDL: tl.constexpr
    ):  # fmt: skip
        pdl_wait(PDL)
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < d
        gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * x_stride + d + cols, mask=mask, other=0.0).to(tl.float32)
        dt = out_ptr.dtype.element_ty
        silu = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        tl.store(out_ptr + row * out_stride + cols, (silu * up).to(dt), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``norm(x)`` over the last dim; with ``residual``: ``norm(x + residual)``, and ``residual``
    is overwritten with ``x + residual`` (the caller hands over its residual buffer)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    res = residual.view(-1, shape[-1]) if residual is not None else x2
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, res, weight, out, x2.stride(0), res.stride(0), out.stride(0), shape[-1], eps,
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(shape[-1]),
            **pdl_args(x),
        )  # fmt: skip
    return out.view(shape)


def rotary_(
    positions: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Rotate ``x`` [tokens, heads, head_dim] in place ("rotate half" layout); returns ``x``."""
    tokens, heads, head_dim = x.shape
    assert x.stride(2) == 1
    if tokens:
        _rope_kernel[(tokens,)](
            x, positions, cos, sin, x.stride(0), x.stride(1), heads, HALF=head_dim // 2,
            HEADS_PAD=triton.next_power_of_2(heads), **pdl_args(x),
        )  # fmt: skip
    return x


def qk_norm_rope(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k from the qkv output [tokens, (H + 2 KV) * head_dim] in one kernel: each head
    RMS-normed (given the weights: Qwen3), then rotated. Returns new contiguous q [tokens, H,
    head_dim] and k [tokens, KV, head_dim]; v stays a view of ``qkv``."""
    assert qkv.stride(-1) == 1
    tokens = qkv.shape[0]
    q = qkv.new_empty(tokens, num_heads, head_dim)
    k = qkv.new_empty(tokens, num_kv_heads, head_dim)
    if tokens:
        w = (qkv, qkv) if q_weight is None else (q_weight, k_weight)  # unread without the norm
        _qk_norm_rope_kernel[(tokens,)](
            qkv, positions, cos_cache, sin_cache, *w, q, k, qkv.stride(0), num_heads, num_kv_heads,
            eps, HAS_NORM=q_weight is not None, HALF=head_dim // 2,
            Q_PAD=triton.next_power_of_2(num_heads), KV_PAD=triton.next_power_of_2(num_kv_heads),
            **pdl_args(qkv),
        )  # fmt: skip
    return q, k


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` [..., 2d]."""
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    out = torch.empty((x2.shape[0], d), dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(d))
    if x2.shape[0]:
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(d, block))](
            x2, out, x2.stride(0), out.stride(0), d, BLOCK=block, **pdl_args(x)
        )
    return out.view(*x.shape[:-1], d)
