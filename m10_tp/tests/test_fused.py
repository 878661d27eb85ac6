"""Fused RMSNorm / RoPE / SiLU-mul kernels against the layers' torch code (interpreter on a CPU;
fp32 and fp16 here, bf16 in the GPU set). fp32: within 1e-5 (summation order); fp16: 2e-3."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from folovllm.model_executor.layers import fused  # noqa: E402
from folovllm.model_executor.layers.activation import SiluAndMul  # noqa: E402
from folovllm.model_executor.layers.ops import gemv  # noqa: E402
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


def _qk_inputs(dtype, tokens, heads, kv_heads, head_dim, seed=3):
    """A strided qkv (the projection output inside a wider buffer), random positions, RMSNorms."""
    g = torch.Generator().manual_seed(seed)
    width = (heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(tokens, width + 16, generator=g).to(DEVICE, dtype)[:, :width]
    positions = torch.randint(0, 64, (tokens,), generator=g).to(DEVICE)
    norms = [RMSNorm(head_dim, 1e-6).to(DEVICE, dtype) for _ in range(2)]
    with torch.no_grad():
        for n in norms:
            n.weight.copy_(torch.randn(head_dim, generator=g))
    return qkv, positions, RotaryEmbedding(head_dim, 64, 10000.0).to(DEVICE), norms


def _torch_qk(qkv, positions, rope, heads, kv_heads, head_dim, norms):
    """What Qwen2Attention does without the fused kernel: split, (Qwen3: norm), rotate."""
    q = qkv[:, : heads * head_dim].view(-1, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(-1, kv_heads, head_dim)
    if norms:
        q, k = norms[0](q), norms[1](k)
    return _reference(lambda: rope(positions, q.clone(), k.clone()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 32), (2, 2, 64)])
@pytest.mark.parametrize("qk_norm", [True, False], ids=["qwen3", "qwen2"])
def test_qk_norm_rope_matches_torch_path(dtype, heads, kv_heads, head_dim, qk_norm):
    qkv, positions, rope, norms = _qk_inputs(dtype, 7, heads, kv_heads, head_dim)
    qkv_before = qkv.clone()
    ref_q, ref_k = _reference(
        lambda: _torch_qk(qkv, positions, rope, heads, kv_heads, head_dim, norms if qk_norm else [])
    )
    w = (norms[0].weight, norms[1].weight, 1e-6) if qk_norm else ()
    args = (rope.cos_cache, rope.sin_cache, heads, kv_heads, head_dim, *w)
    q, k = fused.qk_norm_rope(qkv, positions, *args)
    assert q.is_contiguous() and k.is_contiguous()
    torch.testing.assert_close(q, ref_q, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(k, ref_k, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(qkv, qkv_before)  # read only: v (a view of qkv) is untouched
    q0, k0 = fused.qk_norm_rope(qkv[:0], positions[:0], *args)  # an empty batch launches nothing
    assert q0.shape == (0, heads, head_dim) and k0.shape == (0, kv_heads, head_dim)


def test_qk_norm_rope_rounds_as_the_two_step_kernels():
    """One kernel = fused.rms_norm per head, then fused.rotary_ (float32: up to summation order)."""
    qkv, positions, rope, (qn, kn) = _qk_inputs(torch.float32, 5, 4, 2, 32, seed=4)
    q = fused.rms_norm(qkv[:, :128].view(5, 4, 32), qn.weight, 1e-6)
    k = fused.rms_norm(qkv[:, 128:192].view(5, 2, 32), kn.weight, 1e-6)
    fused.rotary_(positions, q, rope.cos_cache, rope.sin_cache)
    fused.rotary_(positions, k, rope.cos_cache, rope.sin_cache)
    args = (rope.cos_cache, rope.sin_cache, 4, 2, 32, qn.weight, kn.weight, 1e-6)
    q1, k1 = fused.qk_norm_rope(qkv, positions, *args)
    torch.testing.assert_close(q1, q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k1, k, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("qk_norm", [True, False], ids=["qwen3", "qwen2"])
def test_attention_layer_fused_path_matches_torch_path(monkeypatch, qk_norm):
    """Qwen2Attention through the fused kernel = through its torch code (attention stubbed out)."""
    from folovllm.config import ModelArchConfig
    from folovllm.model_executor.models.qwen2 import Qwen2Attention

    shape = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    cfg = ModelArchConfig(
        "Qwen3ForCausalLM", "qwen3", **shape, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=64,
        tie_word_embeddings=False, attention_bias=not qk_norm, qk_norm=qk_norm,
    )  # fmt: skip
    torch.manual_seed(5)
    layer = Qwen2Attention(cfg, 0, RotaryEmbedding(32, 64, 1e4)).to(DEVICE)
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    seen = []
    layer.attn.forward = lambda q, k, v: seen.append((q, k, v)) or q  # the heads attention gets
    hidden, positions = torch.randn(6, 64, device=DEVICE), torch.tensor([0, 3, 9, 1, 63, 2])
    with torch.no_grad():
        ref = _reference(lambda: layer(positions.to(DEVICE), hidden))
        monkeypatch.setattr(fused, "use_fused", lambda x: True)
        out = layer(positions.to(DEVICE), hidden)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(seen[1], seen[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 300])
def test_qk_norm_rope_bf16_qwen3_shape(tokens):
    """Qwen3-0.6B's attention (16 q heads, 8 kv heads, head_dim 128) in bf16, compiled."""
    qkv, positions, rope, norms = _qk_inputs(torch.bfloat16, tokens, 16, 8, 128)
    ref_q, ref_k = _reference(lambda: _torch_qk(qkv, positions, rope, 16, 8, 128, norms))
    args = (rope.cos_cache, rope.sin_cache, 16, 8, 128, norms[0].weight, norms[1].weight, 1e-6)
    q, k = fused.qk_norm_rope(qkv, positions, *args)
    torch.testing.assert_close(q, ref_q, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(k, ref_k, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_f_linear(dtype, rows, bias):
    """The decode-size linear kernel equals F.linear (fp32: summation order only); output
    sizes that are not a multiple of the row block and K not a multiple of the tile are masked."""
    g = torch.Generator().manual_seed(rows)
    n, k = 70, 300
    w = torch.randn(n, k, generator=g).to(DEVICE, dtype)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if bias else None
    x = torch.randn(rows, k, generator=g).to(DEVICE, dtype)
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(gemv.gemv(x, w, b).float(), ref, atol=tol, rtol=tol)
    # 128-column tiles: the loop runs three times, prefetching the next tile (the last masked)
    small = gemv.gemv(x, w, b, config=(2, 128, 2)).float()
    torch.testing.assert_close(small, ref, atol=tol, rtol=tol)


def test_linear_layer_uses_gemv_for_few_rows(monkeypatch):
    """One row: always; 2-4 rows: only for weights no wider than deep (n <= k)."""
    from folovllm.model_executor.layers.linear import Linear

    narrow, wide = Linear(300, 70).to(DEVICE), Linear(70, 300).to(DEVICE)
    calls = []
    monkeypatch.setattr(fused, "use_fused", lambda x: True)
    monkeypatch.setattr(gemv, "gemv", lambda x, w, b: calls.append((x.shape[0], w.shape[0])))
    for layer, rows in [(narrow, 1), (narrow, 4), (narrow, 5), (wide, 1), (wide, 2)]:
        layer(torch.zeros(rows, layer.input_size, device=DEVICE))
    assert calls == [(1, 70), (4, 70), (1, 300)]  # 5 rows and wide at 2 rows: F.linear


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_gemv_bf16_real_shapes(rows):
    """Qwen3-0.6B's decode linears (qkv, o, gate_up, down) in bf16 on the GPU."""
    for n, k in [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)]:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        ref = torch.nn.functional.linear(x.float(), w.float())
        torch.testing.assert_close(gemv.gemv(x, w).float(), ref, atol=2e-2, rtol=2e-2)


def test_pdl_is_off_on_a_cpu_and_by_environment(monkeypatch):
    """Programmatic dependent launch only for CUDA tensors (never in the interpreter); the kernels'
    ``PDL`` constexpr is False and no ``launch_pdl`` option is passed otherwise."""
    from folovllm import triton_utils

    x = torch.zeros(1)
    assert not triton_utils.use_pdl(x)
    assert triton_utils.pdl_args(x) == {"PDL": False}
    monkeypatch.setenv("FOLOVLLM_PDL", "0")
    triton_utils._pdl_device.cache_clear()
    try:
        if torch.cuda.is_available():
            assert triton_utils.pdl_args(torch.zeros(1, device="cuda")) == {"PDL": False}
    finally:
        monkeypatch.delenv("FOLOVLLM_PDL")
        triton_utils._pdl_device.cache_clear()
