"""The Triton kernels against a float64 reference, on the CPU under TRITON_INTERPRET=1.

Small shapes only (2-4 heads, <= 100 tokens): the interpreter runs each program in numpy. fp32 and
fp16 here; bf16 ``tl.dot`` is wrong in triton 3.6's interpreter, so bf16 runs in the GPU set
(``-m gpu``, tests/test_gpu.py). Tolerances vs the float64 reference: fp32 1e-5, fp16 2e-3.
"""

from __future__ import annotations

import random

import pytest
import torch

triton = pytest.importorskip("triton")

from folovllm.attention.ops.decode_attention import choose_num_splits, split_kv_decode  # noqa: E402
from folovllm.attention.ops.kv_cache import store_kv  # noqa: E402
from folovllm.attention.ops.paged_attention import find_seq_idx, paged_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_batch(
    q_lens: list[int],
    ctx_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
    extra_blocks: int = 3,
):
    """A filled paged cache with permuted block tables, plus each step's queries."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens)]
    need = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(need) + extra_blocks
    perm = torch.randperm(num_blocks, generator=g).tolist()  # tables point all over the pool
    tables, i = [], 0
    for n in need:
        tables.append(perm[i : i + n])
        i += n
    width = max(need)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=g).to(dtype)
    qsl = [0]
    for n in q_lens:
        qsl.append(qsl[-1] + n)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    as_i32 = dict(dtype=torch.int32, device=DEVICE)
    return dict(
        q=q.to(DEVICE),
        k_cache=k_cache.to(DEVICE),
        v_cache=v_cache.to(DEVICE),
        query_start_loc=torch.tensor(qsl, **as_i32),
        seq_lens=torch.tensor(seq_lens, **as_i32),
        block_table=bt.to(DEVICE),
        tables=tables,
        q_lens=q_lens,
        seq_lens_list=seq_lens,
    )


def reference(b, scale: float) -> torch.Tensor:
    """Dense causal attention per sequence in float64, bottom-right aligned."""
    q, kc, vc = b["q"].double().cpu(), b["k_cache"].double().cpu(), b["v_cache"].double().cpu()
    num_heads, num_kv_heads = q.shape[1], kc.shape[2]
    out = torch.zeros_like(q)
    start = 0
    for table, q_len, seq_len in zip(b["tables"], b["q_lens"], b["seq_lens_list"]):
        k = kc[table].flatten(0, 1)[:seq_len].repeat_interleave(num_heads // num_kv_heads, dim=1)
        v = vc[table].flatten(0, 1)[:seq_len].repeat_interleave(num_heads // num_kv_heads, dim=1)
        qi = q[start : start + q_len]
        s = torch.einsum("qhd,khd->hqk", qi, k) * scale
        pos = torch.arange(seq_len - q_len, seq_len)[:, None]
        s = s.masked_fill(torch.arange(seq_len)[None, :] > pos, float("-inf"))
        out[start : start + q_len] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v)
        start += q_len
    return out


def run_paged(b, scale, block_n=16):
    out = torch.full_like(b["q"], float("nan"))  # poison: every row must be written
    paged_attention(
        b["q"],
        b["k_cache"],
        b["v_cache"],
        out,
        b["query_start_loc"],
        b["seq_lens"],
        b["block_table"],
        scale,
        num_seqs=len(b["q_lens"]),
        num_tokens=b["q"].shape[0],
        max_query_len=max(b["q_lens"]),
        block_n=block_n,
    )
    return out


CASES = {
    # name: (q_lens, ctx_lens)
    "prefill_one": ([37], [0]),
    "decode_one": ([1], [40]),
    "length_1_prompt": ([1], [0]),
    "block_edges": ([15, 16, 17], [0, 0, 0]),
    "mixed": ([20, 1, 1, 9], [0, 33, 16, 0]),
    "cached_context": ([7, 12], [25, 16]),  # m5 chunks / m6 prefix hits: queries over cached keys
    "decodes": ([1, 1, 1, 1, 1], [0, 15, 16, 17, 60]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paged_attention_cases(case, dtype):
    q_lens, ctx = CASES[case]
    b = make_batch(q_lens, ctx, 4, 2, 32, 16, dtype)
    out = run_paged(b, 32**-0.5)
    torch.testing.assert_close(out.double().cpu(), reference(b, 32**-0.5), atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,block_size",
    [(2, 2, 64, 16), (4, 2, 32, 16), (4, 1, 32, 16), (8, 2, 128, 16), (4, 2, 64, 256)],
)
def test_paged_attention_shapes(num_heads, num_kv_heads, head_dim, block_size):
    """GQA ratios 1, 2, 4; head dims 32, 64, 128; block sizes 16 and 256."""
    b = make_batch(
        [9, 1, 3], [0, 20, 5], num_heads, num_kv_heads, head_dim, block_size, torch.float32
    )
    scale = head_dim**-0.5
    torch.testing.assert_close(
        run_paged(b, scale).double().cpu(), reference(b, scale), atol=1e-5, rtol=0
    )


def test_paged_attention_random_batches():
    rng = random.Random(1)
    for seed in range(3):
        n = rng.randint(1, 4)
        q_lens = [rng.choice([1, rng.randint(1, 20)]) for _ in range(n)]
        ctx = [rng.randint(0, 30) for _ in range(n)]
        b = make_batch(q_lens, ctx, 4, 2, 32, 16, torch.float32, seed=seed)
        torch.testing.assert_close(
            run_paged(b, 0.2).double().cpu(), reference(b, 0.2), atol=1e-5, rtol=0
        )


def test_padding_rows_are_zero():
    """A CUDA-graph batch pads with sequences of length 0: their rows come out as zeros."""
    b = make_batch([1, 1], [10, 3], 4, 2, 32, 16, torch.float32)
    b["seq_lens"][1] = 0
    out = run_paged(b, 0.2)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()
    b["seq_lens_list"], b["q_lens"], b["tables"] = b["seq_lens_list"][:1], [1], b["tables"][:1]
    torch.testing.assert_close(out[:1].double().cpu(), reference(b, 0.2)[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_splits", [1, 2, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_kv_decode(num_splits, dtype):
    ctx = [0, 15, 16, 17, 70]  # split lengths round up to block_n: some splits stay empty
    b = make_batch([1] * len(ctx), ctx, 4, 2, 32, 16, dtype)
    out = torch.full_like(b["q"], float("nan"))
    split_kv_decode(
        b["q"],
        b["k_cache"],
        b["v_cache"],
        out,
        b["query_start_loc"],
        b["seq_lens"],
        b["block_table"],
        32**-0.5,
        num_seqs=len(ctx),
        num_splits=num_splits,
        block_n=16,
    )
    torch.testing.assert_close(out.double().cpu(), reference(b, 32**-0.5), atol=ATOL[dtype], rtol=0)


def test_split_kv_padding_sequence():
    b = make_batch([1, 1], [30, 4], 4, 2, 32, 16, torch.float32)
    b["seq_lens"][1] = 0
    out = torch.full_like(b["q"], float("nan"))
    split_kv_decode(
        b["q"], b["k_cache"], b["v_cache"], out, b["query_start_loc"], b["seq_lens"],
        b["block_table"], 0.2, num_seqs=2, num_splits=4, block_n=16,
    )  # fmt: skip
    assert (out[1] == 0).all()


def test_choose_num_splits():
    assert choose_num_splits(1, 8, 132) == 64  # 528 programs / 8 heads -> 66 -> 64
    assert choose_num_splits(16, 8, 132) == 4  # 528 / 128 -> 4
    assert choose_num_splits(256, 8, 132) == 1
    assert choose_num_splits(1, 1, 132, max_splits=16) == 16


def test_store_kv_skips_negative_slots():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(5, 2, 32, generator=g).to(DEVICE)
    v = torch.randn(5, 2, 32, generator=g).to(DEVICE)
    k_cache = torch.zeros(4, 16, 2, 32, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 17, -1, 63, 0], dtype=torch.int32, device=DEVICE)
    store_kv(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, 2, 32), v_cache.view(-1, 2, 32)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], k[t]) and torch.equal(flat_v[s], v[t])
    written = {s for s in slots.tolist() if s >= 0}
    untouched = [i for i in range(64) if i not in written]
    assert (flat_k[untouched] == 0).all() and (flat_v[untouched] == 0).all()


def test_store_kv_strided_input():
    """k and v come out of the fused qkv projection as strided views."""
    qkv = torch.randn(3, 3 * 2 * 16, device=DEVICE)
    k = qkv[:, 32:64].view(3, 2, 16)
    v = qkv[:, 64:].view(3, 2, 16)
    k_cache = torch.zeros(2, 16, 2, 16, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    store_kv(k, v, k_cache, v_cache, torch.tensor([0, 5, 20], device=DEVICE))
    assert torch.equal(k_cache.view(-1, 2, 16)[20], k[2])
    assert torch.equal(v_cache.view(-1, 2, 16)[5], v[1])


def test_find_seq_idx():
    """The device binary search agrees with a host search for every query block."""
    import triton.language as tl

    @triton.jit
    def probe(qsl_ptr, out_ptr, num_seqs, BLOCK_Q: tl.constexpr):
        pid = tl.program_id(0)
        tl.store(out_ptr + pid, find_seq_idx(qsl_ptr, num_seqs, pid, BLOCK_Q))

    q_lens, block_q = [5, 1, 16, 3], 4
    qsl = [0]
    for n in q_lens:
        qsl.append(qsl[-1] + n)
    grid = qsl[-1] // block_q + len(q_lens)
    out = torch.full((grid,), -7, dtype=torch.int32, device=DEVICE)
    probe[(grid,)](torch.tensor(qsl, dtype=torch.int32, device=DEVICE), out, len(q_lens), block_q)
    starts = [qsl[s] // block_q + s for s in range(len(q_lens))]
    want = [max(s for s in range(len(q_lens)) if starts[s] <= pid) for pid in range(grid)]
    assert out.tolist() == want


def test_fp8_cache_write_and_attention():
    """kv_cache_dtype="fp8": the write rounds to float8 e4m3 (clamped to +-448) and attention
    over the fp8 cache equals attention over its values widened back (fp32 queries: exact)."""
    fp8 = torch.float8_e4m3fn
    g = torch.Generator().manual_seed(3)
    k = (torch.randn(6, 2, 32, generator=g) * 4).to(DEVICE)
    k[0, 0, 0] = 1000.0  # beyond e4m3's range: stored as 448
    v = torch.randn(6, 2, 32, generator=g).to(DEVICE)
    k_cache = torch.zeros(4, 16, 2, 32, device=DEVICE, dtype=fp8)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([0, 1, 2, 3, 17, 40], device=DEVICE)
    store_kv(k, v, k_cache, v_cache, slots)
    got = k_cache.view(-1, 2, 32)[slots].float()
    want = k.clamp(-448, 448).to(fp8).float()
    # torch rounds to nearest even; the GPU's cvt too (on a CPU, store_kv casts with torch)
    assert torch.equal(got, want)
    assert got[0, 0, 0] == 448.0

    b = make_batch([5, 1], [0, 30], 4, 2, 32, 16, torch.float32)
    b["k_cache"], b["v_cache"] = b["k_cache"].to(fp8), b["v_cache"].to(fp8)
    out = run_paged(b, 0.2)
    widened = dict(b, k_cache=b["k_cache"].float(), v_cache=b["v_cache"].float())
    torch.testing.assert_close(out.double().cpu(), reference(widened, 0.2), atol=1e-5, rtol=0)


def test_torch_reference_clamps_fp8_like_the_kernel():
    """Outliers beyond e4m3's +-448 are clamped by both backends (torch's cast alone gives NaN)."""
    from folovllm.attention.backends.torch_attn import TorchAttentionImpl, TorchAttentionMetadata

    cache = torch.zeros(2, 2, 4, 1, 16, dtype=torch.float8_e4m3fn)
    k = torch.full((1, 1, 16), 1000.0)
    md = TorchAttentionMetadata(0, [0, 0], [0], torch.zeros(1, 1, dtype=torch.int32),
                                torch.tensor([5]), prefill_ids=[])  # fmt: skip
    md.num_actual_tokens = 1
    TorchAttentionImpl(1, 16, 0.25, 1).forward(torch.zeros(1, 1, 16), k, -k, cache, md)
    assert cache[0].view(-1, 1, 16)[5].float().eq(448).all()
    assert cache[1].view(-1, 1, 16)[5].float().eq(-448).all()


def test_long_prefill_tiles_only_when_every_query_is_long():
    from folovllm.attention.ops import paged_attention as pa

    assert pa.tile_rows(2, 1) == (8, 16)  # decode: 16-row tiles
    assert pa.tile_rows(2, 600) == (32, 64)
    assert pa.tuned_tiles(1024, None, on_gpu=True) == pa.LONG_PREFILL  # a long prefill
    assert pa.tuned_tiles(1024, 1, on_gpu=True) == {}  # mixed with decodes: default tiles
    assert pa.tuned_tiles(100, 100, on_gpu=True) == {}  # short prompts
    assert pa.tuned_tiles(1024, 1024, on_gpu=False) == {}  # the interpreter keeps defaults
