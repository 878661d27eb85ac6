"""The GPTQ Triton kernels against the torch reference on the same packed weight.

CPU: the kernels run under TRITON_INTERPRET=1 at small shapes, fp32 and fp16 (bf16 ``tl.dot`` is
wrong in triton 3.6's interpreter). GPU (``-m gpu``): bf16 at Qwen3-8B / 0.6B shapes, and inside a
CUDA graph. Error measure: max |out - ref| / max |ref|, ref = x @ W in float64. Tolerances:
fp32 1e-5 (IEEE dots), fp16 2e-3, bf16 1e-2. ``gptq_dequantize`` equals ``gptq_pack.dequantize``
bit for bit (on the CPU bf16 within one ulp: the interpreter truncates when it rounds).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

triton = pytest.importorskip("triton")

from folovllm.model_executor.layers.quantization import gptq_triton as gt  # noqa: E402
from folovllm.model_executor.layers.quantization.utils import gptq_pack  # noqa: E402

# the interpreter's runtime-bounded loops warn on every iteration under numpy >= 1.25
pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim:DeprecationWarning"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_layer(k: int, n: int, gs: int, dtype, zeros: str = "random", seed: int = 0):
    """Random packed (qweight, qzeros, scales) on DEVICE; ``zeros="sym"``: every zero is 8."""
    g = torch.Generator().manual_seed(seed)
    groups = 1 if gs == -1 else k // gs
    q = torch.randint(0, 16, (k, n), generator=g)
    z = (
        torch.full((groups, n), 8)
        if zeros == "sym"
        else torch.randint(0, 16, (groups, n), generator=g)
    )
    s = torch.rand((groups, n), generator=g) * 0.02 + 0.002
    return (
        gptq_pack.pack_rows(q).to(DEVICE),
        gptq_pack.pack_cols(z).to(DEVICE),
        s.to(dtype).to(DEVICE),
    )


def reference(x, layer, gs: int, zero_offset: int) -> torch.Tensor:
    w = gt.dequantize_reference(*layer, gs, zero_offset, torch.float64)
    return x.double() @ w


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128, -1])
def test_gemm_matches_reference(dtype, gs):
    k, n = 256, 72  # N not a multiple of BLOCK_N
    for zeros in ("sym", "random"):
        layer = make_layer(k, n, gs, dtype, zeros)
        for zero_offset in (0, 1):
            for m in (1, 3, 16, 17):
                x = torch.randn(m, k).to(dtype).to(DEVICE)
                out = gt.gptq_gemm(x, *layer, gs, zero_offset)
                assert out.shape == (m, n) and out.dtype == dtype
                err = rel_err(out, reference(x, layer, gs, zero_offset))
                assert err <= TOL[dtype], (zeros, zero_offset, m, err)


@pytest.mark.parametrize(
    "config",
    [
        gt.GemmConfig(block_n=32, split_k=2),
        gt.GemmConfig(block_n=32, block_k=64, split_k=3),  # uneven split of 4 K-tiles
        gt.GemmConfig(block_n=64, block_k=32, split_k=64),  # more splits than tiles: clamped
        gt.GemmConfig(block_n=32, unpack="reshape", magic=False),
        gt.GemmConfig(block_m=32, block_n=16, unpack="gather"),
        gt.GemmConfig(block_n=32, scale_after_dot=False),  # per-weight dequantization
        gt.GemmConfig(block_n=32, scale_after_dot=False, unpack="gather", num_stages=2),
        gt.GemmConfig(block_n=32, gemv=True),  # FMA kernel, one row per program
        gt.GemmConfig(block_n=16, block_k=64, gemv=True, split_k=3),
        gt.GemmConfig(block_n=32, block_k=256, gemv=True),  # tiles span groups: per word row
    ],
)
def test_gemm_configs(config):
    k, n, gs = 256, 72, 64
    for dtype in (torch.float32, torch.float16):
        layer = make_layer(k, n, gs, dtype, seed=1)
        for m in (1, 3) if config.gemv else (1, 17):
            x = torch.randn(m, k).to(dtype).to(DEVICE)
            out = gt.gptq_gemm(x, *layer, gs, 1, config)
            assert rel_err(out, reference(x, layer, gs, 1)) <= TOL[dtype], (dtype, m)


def test_gemm_odd_group_and_strided_x():
    # group 24: no power-of-two K-tile fits inside a group -> per-weight dequantization in the
    # dot kernel (M = 5), a group per word row in the FMA kernel (M = 1)
    k, n, gs = 144, 40, 24
    layer = make_layer(k, n, gs, torch.float32, seed=2)
    big = torch.randn(5, k + 16).to(DEVICE)
    x = big[:, 3 : 3 + k]  # rows with a stride > K
    assert gt.gptq_gemm(x, *layer, gs, 1).shape == (5, n)
    assert rel_err(gt.gptq_gemm(x, *layer, gs, 1), reference(x, layer, gs, 1)) <= 1e-5
    xt = torch.randn(k, 5).to(DEVICE).t()  # column-major: copied to contiguous rows
    assert rel_err(gt.gptq_gemm(xt, *layer, gs, 1), reference(xt, layer, gs, 1)) <= 1e-5
    assert rel_err(gt.gptq_gemm(x[:1], *layer, gs, 1), reference(x[:1], layer, gs, 1)) <= 1e-5
    assert gt.gptq_gemm(x[:0], *layer, gs, 1).shape == (0, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gs", [32, 128, -1])
def test_dequantize_is_exact(dtype, gs):
    k, n = 256, 72
    for zero_offset in (0, 1):
        layer = make_layer(k, n, gs, dtype, seed=3)
        w = gt.gptq_dequantize(*layer, gs, zero_offset)
        assert w.dtype == dtype and w.shape == (k, n)
        ref = gt.dequantize_reference(*layer, gs, zero_offset)
        if dtype == torch.bfloat16 and DEVICE == "cpu":
            # triton 3.6's interpreter truncates fp32 -> bf16 (the GPU rounds to nearest even)
            torch.testing.assert_close(w, ref, rtol=2**-7, atol=0)
        else:
            assert torch.equal(w, ref)
    w32 = gt.gptq_dequantize(*layer, gs, 1, dtype=torch.float32)
    assert torch.equal(w32, gt.dequantize_reference(*layer, gs, 1, torch.float32))


def test_reference_is_the_format():
    """The reference path is gptq_pack.dequantize with contiguous groups, then x @ W."""
    k, n, gs = 128, 16, 32
    layer = make_layer(k, n, gs, torch.float32, seed=4)
    x = torch.randn(2, 3, k).to(DEVICE)
    g_idx = gptq_pack.default_g_idx(k, gs, DEVICE)
    w = gptq_pack.dequantize(*layer, g_idx, zero_offset=0)
    ref = gt.gptq_matmul_reference(x, *layer, gs, 0)
    assert torch.equal(ref, x @ w)
    if DEVICE == "cpu":  # the engine's CPU path: the reference, any leading dims
        assert torch.equal(gt.gptq_matmul(x, *layer, gs, 0), ref)


def test_shape_errors():
    k, n, gs = 128, 16, 32
    qw, qz, s = make_layer(k, n, gs, torch.float32)
    x = torch.randn(1, k).to(DEVICE)
    with pytest.raises(ValueError, match="input features"):
        gt.gptq_gemm(torch.randn(1, k + 8).to(DEVICE), qw, qz, s, gs, 1)
    with pytest.raises(ValueError, match="groups"):
        gt.gptq_gemm(x, qw, qz, s, 64, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        gt.gptq_gemm(x, qw[:, :12].contiguous(), qz, s[:, :12].contiguous(), gs, 1)
    with pytest.raises(ValueError, match=">= 16"):
        gt.gptq_gemm(x, qw, qz, s, gs, 1, gt.GemmConfig(block_m=8))


def test_default_config():
    assert gt.default_config(1, 4096, 4096).gemv
    for m, block_m in ((2, 16), (16, 16), (17, 32), (64, 64), (65, 64)):
        cfg = gt.default_config(m, 4096, 4096)
        assert not cfg.gemv and cfg.block_m == block_m
    for m, n, k in ((1, 1024, 3072), (1, 24576, 4096), (8, 4096, 4096), (64, 6144, 4096)):
        cfg = gt.default_config(m, n, k)
        assert cfg.split_k & (cfg.split_k - 1) == 0 and cfg.split_k <= gt.MAX_SPLIT_K
        assert k // cfg.block_k // cfg.split_k >= gt.MIN_TILES_PER_SPLIT
    # few output tiles -> split K
    assert gt.default_config(1, 1024, 3072).split_k > 1


# ---- GPU: compiled kernels, bf16, real shapes (skipped without CUDA) ----

SHAPES = [  # (K, N): Qwen3-8B qkv, o, gate_up, down; Qwen3-0.6B qkv, o, gate_up, down
    (4096, 6144),
    (4096, 4096),
    (4096, 24576),
    (12288, 4096),
    (1024, 4096),
    (2048, 1024),
    (1024, 6144),
    (3072, 1024),
]


@pytest.mark.gpu
@pytest.mark.parametrize("k,n", SHAPES)
def test_gpu_bf16_real_shapes(k, n):
    layer = make_layer(k, n, 128, torch.bfloat16, seed=k + n)
    for m in (1, 8, 64, 65, 256):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        ref = reference(x, layer, 128, 1)
        assert rel_err(gt.gptq_matmul(x, *layer, 128, 1), ref) <= TOL[torch.bfloat16], m
        if m <= 64:
            assert rel_err(gt.gptq_gemm(x, *layer, 128, 1), ref) <= TOL[torch.bfloat16], m


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_other_dtypes(dtype):
    k, n = 2048, 1024
    for gs in (32, -1):
        layer = make_layer(k, n, gs, dtype, seed=5)
        for m in (1, 17, 64):
            x = torch.randn(m, k, device=DEVICE, dtype=dtype)
            assert rel_err(gt.gptq_gemm(x, *layer, gs, 0), reference(x, layer, gs, 0)) <= TOL[dtype]


@pytest.mark.gpu
def test_gpu_cuda_graph_equals_eager():
    k, n = 2048, 1024
    layer = make_layer(k, n, 128, torch.bfloat16, seed=6)
    for m in (1, 64, 65):  # split-K gemm, one-pass gemm, dequantize + matmul
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            gt.gptq_matmul(x, *layer, 128, 1)  # compile outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = gt.gptq_matmul(x, *layer, 128, 1)
        for _ in range(2):
            x.copy_(torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, gt.gptq_matmul(x, *layer, 128, 1)), m


# ---- gptq_nk: the engine's kernels over repack_nk's layout ----

from folovllm.model_executor.layers.quantization import gptq_nk as nk  # noqa: E402


def make_nk_layer(k: int, n: int, gs: int, dtype, zeros: str = "random", seed: int = 0):
    """Random (qweight repacked, qzeros, scales) on DEVICE, any K (padded to whole chunks)."""
    g = torch.Generator().manual_seed(seed)
    groups = 1 if gs == -1 else -(-k // gs)
    q = torch.randint(0, 16, (k, n), generator=g)
    z = (
        torch.full((groups, n), 8)
        if zeros == "sym"
        else torch.randint(0, 16, (groups, n), generator=g)
    )
    s = torch.rand((groups, n), generator=g) * 0.02 + 0.002
    qz, s = gptq_pack.pack_cols(z).to(DEVICE), s.to(dtype).to(DEVICE)
    return gptq_pack.repack_nk(q).to(DEVICE), qz, s


def nk_reference(x, layer, k: int, gs: int, zero_offset: int) -> torch.Tensor:
    return x.double() @ nk.dequantize_nk_reference(*layer, k, gs, zero_offset, torch.float64)


@pytest.mark.parametrize("k,n", [(32, 8), (72, 16), (256, 24), (8, 8)])
def test_repack_nk_round_trip(k, n):
    q = torch.randint(0, 16, (k, n), generator=torch.Generator().manual_seed(k))
    words = gptq_pack.repack_nk(q)
    assert words.dtype == torch.int32 and words.shape == (n, -(-k // 32) * 4)
    assert torch.equal(gptq_pack.unpack_nk(words, k), q.int())
    # the documented order: channel 32c + 4i + l is nibble i of word 4c + l; padding holds 0
    c, i, lane = (k - 1) // 32, ((k - 1) % 32) // 4, (k - 1) % 4
    assert (int(words[1, 4 * c + lane]) >> (4 * i)) & 0xF == q[k - 1, 1]
    padded = gptq_pack.unpack_nk(words, words.shape[1] * 8)
    assert not padded[k:].any()
    # the format's own packing round-trips through it too (what the loader does)
    assert torch.equal(gptq_pack.unpack_nk(gptq_pack.repack_nk(
        gptq_pack.unpack_rows(gptq_pack.pack_rows(q)) if k % 8 == 0 else q), k), q.int())  # fmt: skip


NK_CASES = [  # (K, N, group size, M, config): the GEMV (M <= 4) and tl.dot kernels
    (256, 40, 64, 1, nk.NKConfig(block_n=16, block_k=64, split_k=3)),
    (72, 24, -1, 3, nk.NKConfig(block_n=16, block_k=64, deq="exponent", prefetch=True)),
    (128, 16, 32, 4, nk.NKConfig(block_n=16, block_k=128, deq="convert", split_k=2)),
    (256, 72, 128, 2, nk.NKConfig(block_n=64, deq="exponent", split_k=2, reduce="serial")),
    (256, 40, 64, 7, nk.NKConfig(block_n=16, split_k=2, reduce="serial", kernel="gemv")),
    (256, 40, 128, 17, nk.NKConfig(block_m=16, block_n=16, split_k=2, reduce="serial")),
    (256, 24, 128, 16, nk.NKConfig(block_m=16, block_n=16, split_k=2)),
    (256, 40, 64, 5, nk.NKConfig(block_m=16, block_n=32, block_k=128)),  # a group per chunk
    (160, 24, -1, 16, nk.NKConfig(block_m=16, block_n=16, block_k=128)),  # K-tail inside a tile
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k,n,gs,m,config", NK_CASES)
def test_nk_gemm_matches_reference(dtype, k, n, gs, m, config):
    zeros, zero_offset = ("sym", 1) if m % 2 else ("random", 0)
    layer = make_nk_layer(k, n, gs, dtype, zeros, seed=k + m)
    x = torch.randn(m, k).to(dtype).to(DEVICE)
    out = nk.gptq_nk_gemm(x, *layer, k, gs, zero_offset, config)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, nk_reference(x, layer, k, gs, zero_offset)) <= TOL[dtype]


@pytest.mark.parametrize("k,n,gs", [(256, 72, 64), (72, 24, -1)])
def test_nk_dequantize_is_exact(k, n, gs):
    for dtype in (torch.float32, torch.float16):
        layer = make_nk_layer(k, n, gs, dtype, seed=3)
        w = nk.gptq_nk_dequantize(*layer, k, gs, 1)
        assert w.dtype == dtype and w.shape == (n, k)
        assert torch.equal(w, nk.dequantize_nk_reference(*layer, k, gs, 1).t())


def test_nk_reference_is_the_format():
    """The repacked layout's reference equals the format's formula on the original tensors."""
    k, n, gs = 128, 16, 32
    qw, qz, s = make_layer(k, n, gs, torch.float32, seed=4)
    repacked = gptq_pack.repack_nk(gptq_pack.unpack_rows(qw))
    w = gptq_pack.dequantize(qw, qz, s, gptq_pack.default_g_idx(k, gs, DEVICE), zero_offset=1)
    assert torch.equal(nk.dequantize_nk_reference(repacked, qz, s, k, gs, 1), w)
    x = torch.randn(2, 3, k).to(DEVICE)
    if DEVICE == "cpu":  # the engine's CPU path: the reference, any leading dims
        assert torch.equal(nk.gptq_nk_matmul(x, repacked, qz, s, k, gs, 1), x @ w)


def test_nk_shape_errors_and_default_config():
    k, n, gs = 128, 16, 32
    layer = make_nk_layer(k, n, gs, torch.float32)
    x = torch.randn(1, k).to(DEVICE)
    with pytest.raises(ValueError, match="input features"):
        nk.gptq_nk_gemm(torch.randn(1, k + 8).to(DEVICE), *layer, k, gs, 1)
    with pytest.raises(ValueError, match="layout"):
        nk.gptq_nk_gemm(x, *layer, k + 64, gs, 1)
    with pytest.raises(ValueError, match="groups"):
        nk.gptq_nk_gemm(x, *layer, k, 64, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        nk.gptq_nk_gemm(x, *layer, k, 24, 1)
    with pytest.raises(ValueError, match=">= 16"):
        nk.gptq_nk_gemm(x.repeat(8, 1), *layer, k, gs, 1, nk.NKConfig(block_m=8))
    for m, n, k in ((1, 4096, 4096), (3, 24576, 4096), (8, 4096, 12288), (64, 6144, 4096)):
        cfg = nk.default_config(m, n, k)
        assert cfg.split_k & (cfg.split_k - 1) == 0 and cfg.split_k <= gt.MAX_SPLIT_K
        assert cfg.block_k % 32 == 0 and (m <= nk.GEMV_MAX_M or cfg.block_m >= 16)


# ---- GPU: gptq_nk compiled, bf16 at Qwen3-8B / 0.6B shapes (skipped without CUDA) ----


@pytest.mark.gpu
@pytest.mark.parametrize("k,n", SHAPES)
def test_gpu_nk_bf16_real_shapes(k, n):
    layer = make_nk_layer(k, n, 128, torch.bfloat16, seed=k + n)
    for m in (1, 2, 3, 4, 5, 8, 16, 17, 33, 64, 65, 256):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        ref = nk_reference(x, layer, k, 128, 1)
        assert rel_err(nk.gptq_nk_matmul(x, *layer, k, 128, 1), ref) <= TOL[torch.bfloat16], m


@pytest.mark.gpu
def test_gpu_nk_every_variant():
    """Every tuned entry, nibble conversion and prefetch at an 8B shape (bf16, group 128); the
    default configurations with other groups and dtypes (a group per chunk, fp16's 1024 + q)."""
    k, n = 4096, 6144
    cases = [(m, nk.NKConfig(**cfg)) for (m, nn, kk), cfg in nk.TUNED.items() if (nn, kk) == (n, k)]
    cases += [
        (m, nk.NKConfig(block_n=bn, deq=d, prefetch=p, split_k=4, num_stages=1))
        for m in (1, 4)
        for bn in (64, 256)
        for d in nk._DEQ
        for p in (False, True)
    ]
    cases += [(m, nk.NKConfig(block_n=128, split_k=4, reduce="serial", kernel="gemv", num_stages=1))
              for m in (5, 8, 16)]  # fmt: skip
    cases += [(m, nk.NKConfig(block_m=bm, block_n=128, split_k=2, num_warps=w))
              for m, bm, w in ((16, 16, 4), (64, 64, 8), (256, 128, 8))]  # fmt: skip
    layer = make_nk_layer(k, n, 128, torch.bfloat16, seed=7)
    for m, cfg in cases:
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        out = nk.gptq_nk_gemm(x, *layer, k, 128, 1, cfg)
        assert rel_err(out, nk_reference(x, layer, k, 128, 1)) <= TOL[torch.bfloat16], (m, cfg)
    for gs, dtype in ((32, torch.bfloat16), (-1, torch.float16), (64, torch.float32)):
        layer = make_nk_layer(k, n, gs, dtype, seed=8)
        for m in (1, 4, 16, 64):
            x = torch.randn(m, k, device=DEVICE, dtype=dtype)
            out = nk.gptq_nk_gemm(x, *layer, k, gs, 1)
            assert rel_err(out, nk_reference(x, layer, k, gs, 1)) <= TOL[dtype], (gs, dtype, m)


@pytest.mark.gpu
def test_gpu_nk_serial_split_k_is_deterministic():
    """The last-arriving program adds the partial sums: the same bits as the second kernel,
    every time, and the arrival counters are left at zero."""
    k, n = 12288, 4096
    layer = make_nk_layer(k, n, 128, torch.bfloat16, seed=9)
    for m, cfg in ((1, nk.NKConfig(block_n=64, split_k=16)), (3, nk.NKConfig(block_n=32, split_k=8)),
                   (16, nk.NKConfig(block_m=16, block_n=64, split_k=8))):  # fmt: skip
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        want = nk.gptq_nk_gemm(x, *layer, k, 128, 1, cfg)
        serial = replace(cfg, reduce="serial")
        for _ in range(20):
            assert torch.equal(nk.gptq_nk_gemm(x, *layer, k, 128, 1, serial), want), m
        assert not nk._counters(x.device).any()


@pytest.mark.gpu
def test_gpu_nk_cuda_graph_equals_eager(monkeypatch):
    k, n = 2048, 1024
    layer = make_nk_layer(k, n, 128, torch.bfloat16, seed=6)
    monkeypatch.setitem(nk.TUNED, (4, n, k), dict(block_n=64, split_k=4, reduce="serial"))
    for m in (1, 4, 64, 65):  # GEMV, GEMV with a serial split-K, tl.dot, dequantize + cuBLAS
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            nk.gptq_nk_matmul(x, *layer, k, 128, 1)  # compile outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = nk.gptq_nk_matmul(x, *layer, k, 128, 1)
        for _ in range(2):
            x.copy_(torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, nk.gptq_nk_matmul(x, *layer, k, 128, 1)), m
