"""Fused RMSNorm / RoPE / SiLU-mul kernels against the layers' torch code (interpreter on a CPU;
fp32 and fp16 here, bf16 in the GPU set). fp32: within 1e-5 (summation order); fp16: 2e-3."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from folovllm.model_executor.layers import fused  # noqa: E402
from folovllm.model_executor.layers.activation import SiluAndMul  # noqa: E402
from folovllm.model_executor.layers.rms_norm import RMSNorm  # noqa: E402
from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _reference(fn):
    """Run a layer's torch path even on CUDA."""
    saved = fused.use_fused
    fused.use_fused = lambda x: False
    try:
        return fn()
    finally:
        fused.use_fused = saved


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [32, 100])
def test_rms_norm_with_and_without_residual(dtype, hidden):
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(hidden, 1e-6).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden, generator=g))
    x = torch.randn(5, hidden, generator=g).to(DEVICE, dtype)
    r = torch.randn(5, hidden, generator=g).to(DEVICE, dtype)
    ref_out, ref_res = _reference(lambda: norm(x, r.clone()))
    res = r.clone()
    out = fused.rms_norm(x, norm.weight, 1e-6, res)
    torch.testing.assert_close(out, ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(res, ref_res)  # the sum is rounded exactly as torch rounds it
    torch.testing.assert_close(
        fused.rms_norm(x, norm.weight, 1e-6),
        _reference(lambda: norm(x)),
        atol=TOL[dtype],
        rtol=TOL[dtype],
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_in_place_on_strided_views(dtype):
    """q and k arrive as views of the fused qkv output (Qwen2) or as fresh tensors (Qwen3)."""
    g = torch.Generator().manual_seed(1)
    rope = RotaryEmbedding(32, 64, 10000.0).to(DEVICE)
    qkv = torch.randn(7, (4 + 2 + 2) * 32, generator=g).to(DEVICE, dtype)
    q, k = qkv[:, :128].view(7, 4, 32), qkv[:, 128:192].view(7, 2, 32)
    positions = torch.tensor([0, 1, 5, 63, 2, 2, 40], device=DEVICE)
    ref_q, ref_k = _reference(lambda: rope(positions, q.clone(), k.clone()))
    v_before = qkv[:, 192:].clone()
    fused.rotary_(positions.to(torch.int32), q, rope.cos_cache, rope.sin_cache)
    fused.rotary_(positions, k, rope.cos_cache, rope.sin_cache)
    torch.testing.assert_close(q, ref_q, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(k, ref_k, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(qkv[:, 192:], v_before)  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2 * 70, generator=g).to(DEVICE, dtype)
    ref = _reference(lambda: SiluAndMul()(x))
    torch.testing.assert_close(fused.silu_and_mul(x), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_fused_kernels_can_be_turned_off(monkeypatch):
    fused._enabled.cache_clear()
    monkeypatch.setenv("FOLOVLLM_FUSED_KERNELS", "0")
    try:
        assert not fused._enabled()
    finally:
        fused._enabled.cache_clear()
