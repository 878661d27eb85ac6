"""Paged KV: any block size and any amount of preemption give the same greedy tokens."""

from __future__ import annotations

import pytest
import torch

from folovllm import EngineConfig, SamplingParams
from folovllm.attention.backends import get_backend_cls
from folovllm.attention.backends.abstract import CommonAttentionMetadata
from folovllm.engine.llm_engine import LLMEngine

PROMPTS = [list(range(3 + i, 3 + i + n)) for i, n in enumerate([30, 22, 41, 9, 35, 17])]
MAX_TOKENS = [40, 55, 30, 60, 25, 50]


def make(model, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), device="cpu", max_model_len=128, **kw))


def run(engine: LLMEngine) -> list[list[int]]:
    ids = [
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        for p, n in zip(PROMPTS, MAX_TOKENS)
    ]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    pool = engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks, "leaked KV blocks"
    assert all(b.ref_count == 0 for b in pool.blocks)
    return [done[i] for i in ids]


@pytest.fixture(scope="module")
def unconstrained(tiny_model):
    return run(make(tiny_model))


def test_preemption_keeps_outputs_identical(tiny_model, unconstrained):
    engine = make(tiny_model, num_gpu_blocks=8)  # 8 x 16 = one max_model_len sequence
    assert run(engine) == unconstrained
    assert engine.scheduler.num_preemptions > 0
    assert max(s.num_reqs for s in engine.stats.steps) > 1  # still batched


@pytest.mark.parametrize("block_size", [1, 4, 32, 128])
def test_every_block_size_gives_the_same_tokens(tiny_model, unconstrained, block_size):
    assert run(make(tiny_model, block_size=block_size)) == unconstrained


def test_unpaged_mode_reserves_whole_rows(tiny_model, unconstrained):
    engine = make(tiny_model, enable_paged_kv=False, kv_cache_memory_gb=3 * 128 * 2048 / 2**30)
    assert engine.runner.block_size == 128
    assert run(engine) == unconstrained


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_paged_backend_matches_dense_attention(backend_name):
    """Scatter K/V into random blocks, then compare with attention over the dense sequences
    (the Triton backend runs in Triton's interpreter on a CPU)."""
    if backend_name == "triton":
        pytest.importorskip("triton")
    torch.manual_seed(0)
    heads, kv_heads, dim, bs, num_blocks = 4, 2, 16, 4, 40
    cache = torch.zeros(2, num_blocks, bs, kv_heads, dim)
    # request 0: 7 cached tokens + 3 new (chunk); request 1: 10 cached + 1 new (decode);
    # request 2: 5-token prompt (prefill)
    ctx, new = [7, 10, 0], [3, 1, 5]
    perm = torch.randperm(num_blocks).tolist()
    tables, k_full, v_full = [], [], []
    for c, n in zip(ctx, new):
        need = -(-(c + n) // bs)
        tables.append([perm.pop() for _ in range(need)])
        k_full.append(torch.randn(c + n, kv_heads, dim))
        v_full.append(torch.randn(c + n, kv_heads, dim))
    for t, c, k, v in zip(tables, ctx, k_full, v_full):  # pre-fill the cached part
        for p in range(c):
            cache[0, t[p // bs], p % bs], cache[1, t[p // bs], p % bs] = k[p], v[p]
    slots, qsl = [], [0]
    for t, c, n in zip(tables, ctx, new):
        slots += [t[p // bs] * bs + p % bs for p in range(c, c + n)]
        qsl.append(qsl[-1] + n)
    q = torch.randn(qsl[-1], heads, dim)
    k_new = torch.cat([k[c:] for k, c in zip(k_full, ctx)])
    v_new = torch.cat([v[c:] for v, c in zip(v_full, ctx)])
    width = max(len(t) for t in tables)
    seq_lens = [c + n for c, n in zip(ctx, new)]
    common = CommonAttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int32),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
        num_reqs=len(ctx),
        num_actual_tokens=qsl[-1],
        max_query_len=max(new),
        max_seq_len=max(seq_lens),
    )
    backend = get_backend_cls(backend_name)
    impl = backend.get_impl_cls()(heads, dim, dim**-0.5, kv_heads)
    builder = backend.get_builder_cls()
    md = (builder() if backend_name == "torch" else builder(kv_heads, num_sms=1)).build(common)
    out = impl.forward(q, k_new, v_new, cache, md)
    for i, (c, n) in enumerate(zip(ctx, new)):
        qi = q[qsl[i] : qsl[i + 1]]
        k = k_full[i].repeat_interleave(heads // kv_heads, dim=1)
        v = v_full[i].repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qi, k) * dim**-0.5
        allowed = torch.arange(c + n)[None, :] <= (c + torch.arange(n))[:, None]
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        ref = torch.einsum("hqk,khd->qhd", probs, v)
        torch.testing.assert_close(out[qsl[i] : qsl[i + 1]], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("block_size", 0, r"block_size must be an integer in \[1, 1024\]"),
        ("num_gpu_blocks", 0, "num_gpu_blocks must be an integer >= 1"),
        ("gpu_memory_utilization", 1.5, r"gpu_memory_utilization must be in \(0, 1\]"),
        ("enable_paged_kv", "yes", "enable_paged_kv must be a bool"),
    ],
)
def test_paged_options_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**{field: value})


def test_the_cpu_default_cache_holds_max_num_seqs_sequences_of_max_model_len(tiny_qwen3):
    """Without num_gpu_blocks or kv_cache_memory_gb the CPU cache is what the scheduler can fill:
    max_num_seqs sequences of max_model_len (capped at 2 GiB)."""
    runner = make(tiny_qwen3, max_num_seqs=3).runner
    assert runner.num_blocks == 3 * 128 // 16
    assert runner.kv_caches[0].shape[1] == runner.num_blocks
    given = make(tiny_qwen3, max_num_seqs=3, kv_cache_memory_gb=0.001).runner
    assert given.num_blocks == int(0.001 * 2**30) // (16 * 1024)  # a budget given is used as is


def test_profile_run_executes_the_largest_step_and_rebinds_the_cache(tiny_qwen3):
    """The GPU budget comes from this run; on the CPU we check it runs and leaves the real cache bound."""
    engine = make(tiny_qwen3, max_num_batched_tokens=300)  # 128 + 128 + 44 prompt tokens
    runner = engine.runner
    # The caches are bound to the Attention layers by module name.
    assert list(runner.attn_layers)[0] == "model.layers.0.self_attn.attn"
    real = [layer.self_attn.attn.kv_cache for layer in runner.model.model.layers]
    scratch_bytes = runner._profile_run(300)
    blocks = max(sum(-(-n // 16) for n in (128, 128, 44)), runner.max_num_seqs)
    assert scratch_bytes == blocks * 16 * 1024  # blocks x 16 x bytes/token
    assert all(layer.self_attn.attn.kv_cache is None for layer in runner.model.model.layers)
    runner.kv_caches = runner._allocate_kv_cache(
        runner.num_blocks
    )  # what __init__ does after profiling
    assert all(
        layer.self_attn.attn.kv_cache is c
        for layer, c in zip(runner.model.model.layers, runner.kv_caches)
    )
    assert [c.shape for c in runner.kv_caches] == [c.shape for c in real]
    (out,) = run_one(engine)
    assert len(out) == 5


def run_one(engine: LLMEngine) -> list[list[int]]:
    rid = engine.add_request(
        [5, 6, 7], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    )
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    return [done[rid]]


GiB = 2**30


def test_kv_cache_budget_is_utilization_of_total_minus_what_is_used():
    from folovllm.worker.memory_profile import kv_cache_budget

    # 80 GiB card at 0.9: 72 GiB ours, 2 GiB already in use, 1 GiB peak activations -> 69 GiB.
    assert kv_cache_budget(80 * GiB, 78 * GiB, 1 * GiB, 0.9) == 69 * GiB
    with pytest.raises(ValueError, match=r"gpu_memory_utilization >= 0\.05"):
        kv_cache_budget(80 * GiB, 78 * GiB, 1 * GiB, 0.03, min_bytes=1 * GiB)


def test_profile_measures_the_sampler_and_frees_the_scratch_cache(tiny_qwen3, monkeypatch):
    """A fake 80 GiB device: the budget follows gpu_memory_utilization, the sampler runs on
    max_num_seqs rows with top-k/top-p, and the scratch cache is unbound before empty_cache()."""
    from folovllm.worker.memory_profile import profile_free_memory

    engine = make(tiny_qwen3, max_num_batched_tokens=300, max_num_seqs=8)
    runner = engine.runner
    layers = runner.model.model.layers
    rows, events, scratch = [], [], {}
    sample = runner.sampler.forward

    def spy_sampler(logits, md):
        rows.append((logits.shape[0], md.top_k is not None and md.top_p is not None))
        return sample(logits, md)

    profile_run = runner._profile_run

    def spy_profile_run(n):
        scratch["bytes"] = profile_run(n)
        return scratch["bytes"]

    def empty_cache():
        events.append([layer.self_attn.attn.kv_cache for layer in layers])

    monkeypatch.setattr(runner.sampler, "forward", spy_sampler)
    monkeypatch.setattr(runner, "_profile_run", spy_profile_run)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (78 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GiB)
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda device=None: 3 * GiB + scratch["bytes"]
    )
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    assert profile_free_memory(runner.device, lambda: runner._profile_run(300), 0.9) == 69 * GiB
    assert (8, True) in rows  # max_num_seqs rows, with top-k and top-p
    assert events == [[None] * len(layers)]  # nothing holds the scratch cache any more
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        profile_free_memory(runner.device, lambda: runner._profile_run(300), 0.03, min_bytes=GiB)
