"""The GPU set (``pytest -m gpu``; skipped without CUDA): compiled kernels in bf16 at real
shapes against a float32 torch reference, and the engine with CUDA graphs on and off.

Run on the GPU machine: ``cd m4_flash && PYTHONPATH=. python -m pytest tests -m gpu``.
"""

from __future__ import annotations

import pytest
import torch

from folovllm import EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine

pytestmark = pytest.mark.gpu

# Qwen3-0.6B's attention: 16 query heads, 8 KV heads, head_dim 128.
H, KVH, D = 16, 8, 128


def _batch(q_lens, ctx_lens, block_size=16, dtype=torch.bfloat16, seed=0):
    from tests.test_kernels import make_batch

    return make_batch(q_lens, ctx_lens, H, KVH, D, block_size, dtype, seed=seed)


def _ref(b):
    from tests.test_kernels import reference

    return reference(b, D**-0.5).float()


@pytest.mark.parametrize(
    "q_lens,ctx_lens",
    [
        ([1024], [0]),  # long prefill
        ([300, 1, 1, 77], [0, 2000, 17, 500]),  # mixed prefill + decode + cached context
        ([1] * 64, list(range(100, 100 + 64 * 30, 30))),  # a decode batch
        ([5], [16]),  # fewer queries than a tile
    ],
)
@pytest.mark.parametrize("block_size", [16, 256])
def test_paged_attention_bf16(q_lens, ctx_lens, block_size):
    from folovllm.attention.ops.paged_attention import paged_attention

    b = _batch(q_lens, ctx_lens, block_size)
    out = torch.full_like(b["q"], float("nan"))
    paged_attention(
        b["q"], b["k_cache"], b["v_cache"], out, b["query_start_loc"], b["seq_lens"],
        b["block_table"], D**-0.5, num_seqs=len(q_lens), num_tokens=sum(q_lens),
        max_query_len=max(q_lens),
    )  # fmt: skip
    torch.testing.assert_close(out.float().cpu(), _ref(b), atol=2e-2, rtol=0)


@pytest.mark.parametrize("num_seqs,ctx", [(1, 4095), (4, 1000), (16, 257)])
def test_split_kv_decode_bf16(num_seqs, ctx):
    from folovllm.attention.ops.decode_attention import choose_num_splits, split_kv_decode

    b = _batch([1] * num_seqs, [ctx - i for i in range(num_seqs)])
    out = torch.full_like(b["q"], float("nan"))
    splits = choose_num_splits(
        num_seqs, KVH, torch.cuda.get_device_properties(0).multi_processor_count
    )
    split_kv_decode(
        b["q"], b["k_cache"], b["v_cache"], out, b["query_start_loc"], b["seq_lens"],
        b["block_table"], D**-0.5, num_seqs=num_seqs, num_splits=splits,
    )  # fmt: skip
    torch.testing.assert_close(out.float().cpu(), _ref(b), atol=2e-2, rtol=0)


def _tokens(model, dtype, **kw):
    engine = LLMEngine(
        # An explicit KV budget: several engines live in this process, and a profiled one would
        # count the earlier engines' memory as taken.
        EngineConfig(
            model=str(model),
            device="cuda",
            dtype=dtype,
            max_model_len=256,
            kv_cache_memory_gb=0.05,
            **kw,
        )  # fmt: skip
    )
    prompts = [[(7 * i + j) % 300 + 1 for j in range(5 + 9 * i)] for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    assert engine.kv_cache_manager.block_pool.num_free_blocks == engine.runner.num_blocks
    return [done[i] for i in ids], engine


def test_graphs_and_backends_agree_float32(tiny_model):
    """float32: CUDA graphs on/off and every backend give the same greedy tokens."""
    ref, _ = _tokens(tiny_model, "float32", attention_backend="torch")
    eager, _ = _tokens(tiny_model, "float32", attention_backend="triton", enforce_eager=True)
    graphs, engine = _tokens(tiny_model, "float32", attention_backend="triton")
    assert engine.runner.graph_runner is not None and engine.runner.graph_runner.graphs
    assert eager == ref and graphs == ref


def test_mixed_step_graphs_float32(tiny_model):
    """cudagraph_mode="full": prefill and mixed steps replay token-count graphs (requests join
    while others decode), and the tokens equal the decode-only graphs' and the torch backend's."""

    def run(**kw):
        engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cuda", dtype="float32",
                                        max_model_len=256, kv_cache_memory_gb=0.05,
                                        max_num_seqs=8, **kw))  # fmt: skip
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        ids, done = [], {}
        for i in range(6):  # one new prompt every third step: mixed steps
            ids.append(
                engine.add_request([(5 * i + j) % 300 + 1 for j in range(3 + 11 * i)], params)
            )
            for _ in range(3):
                for out in engine.step():
                    done[out.request_id] = out.token_ids
        while engine.has_unfinished_requests():
            for out in engine.step():
                done[out.request_id] = out.token_ids
        assert engine.kv_cache_manager.block_pool.num_free_blocks == engine.runner.num_blocks
        return [done[i] for i in ids], engine.runner

    ref, _ = run(attention_backend="torch")
    decode_only, runner = run(attention_backend="triton", cudagraph_mode="decode")
    assert runner.mixed_graph_runner is None
    full, runner = run(attention_backend="triton")
    assert runner.mixed_graph_runner.num_replays >= 6 and runner.graph_runner.num_replays > 0
    assert full == decode_only == ref


def test_graphs_bf16_match_eager(tiny_model):
    """bf16: graph replay runs the same kernels with the same split counts as eager steps of
    the same bucket; tokens may differ only where eager used another split count."""
    eager, _ = _tokens(tiny_model, "bfloat16", attention_backend="triton", enforce_eager=True)
    graphs, _ = _tokens(tiny_model, "bfloat16", attention_backend="triton")
    agree = sum(a == b for x, y in zip(eager, graphs) for a, b in zip(x, y))
    total = sum(len(x) for x in eager)
    print(f"bf16 graphs vs eager: {agree}/{total} tokens agree")
    assert agree / total >= 0.9


def test_pdl_same_tokens_bf16(tiny_model, monkeypatch):
    """Programmatic dependent launch changes when kernels start, never what they compute: bf16
    tokens with CUDA graphs are identical with PDL on and off (a kernel that read before its
    ``pdl_wait`` would race with its predecessor and differ)."""
    from folovllm import triton_utils

    x = torch.empty(1, device="cuda")
    assert triton_utils.use_pdl(x) == (torch.cuda.get_device_capability()[0] >= 9)
    on, _ = _tokens(tiny_model, "bfloat16", attention_backend="triton")
    monkeypatch.setenv("FOLOVLLM_PDL", "0")
    triton_utils._pdl_device.cache_clear()
    try:
        assert not triton_utils.use_pdl(x)
        off, _ = _tokens(tiny_model, "bfloat16", attention_backend="triton")
    finally:
        monkeypatch.delenv("FOLOVLLM_PDL")
        triton_utils._pdl_device.cache_clear()
    assert on == off


@pytest.mark.parametrize(
    "q_lens,ctx_lens",
    [
        ([1024], [0]),  # prefill
        ([1] * 64, list(range(100, 100 + 64 * 30, 30))),  # decode
        ([300, 1, 1, 77], [0, 2000, 17, 500]),  # mixed
        ([40, 200], [512, 1000]),  # prompts after a cached prefix
    ],
)
def test_flash_attn_4_bf16(q_lens, ctx_lens):
    """flash-attn 4 (if installed) over our paged cache as the flash backend calls it."""
    pytest.importorskip("flash_attn.cute")
    from folovllm.attention.backends.flash_attn import fa4_attention
    from folovllm.attention.backends.triton_attn import TritonAttentionMetadata

    b = _batch(q_lens, ctx_lens)
    md = TritonAttentionMetadata(b["query_start_loc"], b["seq_lens"], b["block_table"], None,
                                 len(q_lens), sum(q_lens), max(q_lens))  # fmt: skip
    out = fa4_attention(b["q"], b["k_cache"], b["v_cache"], md, D**-0.5)
    torch.testing.assert_close(out.float().cpu(), _ref(b), atol=2e-2, rtol=0)


@pytest.mark.parametrize("backend", ["flash", "auto"])
def test_flash_attn_4_engine_bf16(tiny_model, backend):
    """The engine on flash-attn 4 (``flash``: every step; ``auto``: prefill/mixed, decode on
    Triton) against the Triton backend in bf16: tokens may differ only after a near-tie."""
    pytest.importorskip("flash_attn.cute")
    ref, _ = _tokens(tiny_model, "bfloat16", attention_backend="triton")
    got, engine = _tokens(tiny_model, "bfloat16", attention_backend=backend)
    want = {"flash": "flash", "auto": "flash+triton"}[backend]
    assert engine.runner.attn_backend.get_name() == want
    agree = sum(a == b for x, y in zip(ref, got) for a, b in zip(x, y))
    total = sum(len(x) for x in ref)
    print(f"bf16 {backend} (flash-attn 4) vs triton: {agree}/{total} tokens agree")
    assert agree / total >= 0.9
