"""Batched execution gives the same greedy tokens as one-at-a-time, under any admission pattern."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from folovllm import EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine
from folovllm.worker.model_runner import lazy_zeros

PROMPTS = [
    "The for statement",
    "A list comprehension provides a concise way",
    "Hi",
    "The import system finds modules and loads them, then",
    "Numbers like 12345",
    "x",
]
MAX_TOKENS = [12, 3, 20, 7, 1, 15]  # different lengths: requests leave mid-flight


def run(engine: LLMEngine, prompts=PROMPTS, max_tokens=MAX_TOKENS) -> list[list[int]]:
    ids = [
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        for p, n in zip(prompts, max_tokens)
    ]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    return [done[i] for i in ids]


def make(model, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), device="cpu", max_model_len=128, **kw))


@pytest.fixture(scope="module")
def sequential(tiny_model):
    return run(make(tiny_model, max_batch_size=1))


@pytest.mark.parametrize(
    "options",
    [
        {},  # everyone at once
        {"max_batch_size": 2},  # joins and leaves mid-flight
        {"max_batch_size": 3, "max_num_batched_tokens": 128},  # the token budget defers prompts
        {"kv_cache_memory_gb": 3 * 128 * 2 * 2 * 2 * 32 * 4 / 2**30},  # KV rows for 3 requests only
    ],
)
def test_batched_equals_sequential(tiny_model, sequential, options):
    engine = make(tiny_model, **options)
    assert run(engine) == sequential
    steps = engine.stats.steps
    assert max(s.num_reqs for s in steps) > 1
    cfg = engine.scheduler_config
    assert all(s.num_reqs <= cfg.max_num_seqs for s in steps)
    assert all(s.num_tokens <= cfg.max_num_batched_tokens for s in steps)
    pool = engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks and not engine.kv_cache_manager.req_to_blocks


def test_blocks_follow_the_kv_budget(tiny_qwen3):
    # tiny Qwen3: 2 layers x 2 kv heads x 32 dim x 2 (K,V) x 4 bytes = 1024 bytes/token
    engine = make(tiny_qwen3, kv_cache_memory_gb=3.5 * 128 * 1024 / 2**30)
    assert engine.runner.num_blocks == 28  # 3.5 x 128 tokens / 16 tokens per block
    assert make(tiny_qwen3, num_gpu_blocks=9).runner.num_blocks == 9
    with pytest.raises(ValueError, match="cannot hold one sequence of max_model_len=128"):
        make(tiny_qwen3, kv_cache_memory_gb=100 * 1024 / 2**30)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cpu_cache_is_zero_and_takes_ram_only_where_written(dtype):
    """lazy_zeros: zeros of the asked shape and dtype; 256 MiB of it add no resident pages until written."""

    def resident() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    shape = (2, 2**28 // (2 * dtype.itemsize * 64), 64)
    cache = lazy_zeros(shape, dtype, torch.device("cpu"))
    assert cache.shape == shape and cache.dtype == dtype
    assert resident() - before < 32 * 2**20
    cache[1, :16] = 1.0  # written: these pages become real; the rest reads as zeros
    assert cache[1, :16].eq(1).all()
    assert cache[0].count_nonzero() == 0 and cache[1, 16:].count_nonzero() == 0


@pytest.mark.parametrize("paged", [True, False])
def test_kv_reservation_waste_is_measured(tiny_qwen3, paged):
    engine = make(tiny_qwen3, enable_paged_kv=paged)
    run(engine, [list(range(1, 59))] * 4, [5] * 4)  # 58-token prompts, 5 new tokens
    util = engine.stats.kv_utilization()
    step = engine.stats.steps[-1]
    assert step.kv_used_tokens == 4 * (58 + 4)
    if paged:  # each request holds only the blocks its tokens need: 4 x 16 for 62 tokens
        assert step.kv_reserved_tokens == 4 * 64
        assert util > 0.9
    else:  # one max_model_len row per request, as in m2
        assert step.kv_reserved_tokens == 4 * 128
        assert 0.4 < util < 0.5


def test_abort_in_a_batch_leaves_the_others_alone(
    tiny_qwen3,
):
    engine = make(tiny_qwen3, max_batch_size=4)
    ref = run(make(tiny_qwen3, max_batch_size=1), PROMPTS[:3], [10, 10, 10])
    ids = [
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
        for p in PROMPTS[:3]
    ]
    engine.step()
    engine.step()
    aborted = engine.abort_request(ids[1])
    assert aborted.finish_reason == "abort" and len(aborted.token_ids) == 2
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    assert done == {ids[0]: ref[0], ids[2]: ref[2]}
    assert not engine.kv_cache_manager.req_to_blocks and not engine.requests


def test_bad_request_in_the_middle_of_a_batch(tiny_qwen3):
    engine = make(tiny_qwen3)
    good = engine.add_request(
        "The for", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    )
    engine.step()
    with pytest.raises(ValueError, match="max_model_len=128"):
        engine.add_request(list(range(1, 200)), SamplingParams())
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.request_id for o in outs] == [good] and len(outs[0].token_ids) == 6


def test_budget_smaller_than_max_model_len_is_rejected(tiny_qwen3):
    # Only without chunked prefill (m5 chunks by default): then a whole prompt must fit one step.
    with pytest.raises(
        ValueError, match="max_num_batched_tokens=64 is smaller than max_model_len=128"
    ):
        make(tiny_qwen3, max_num_batched_tokens=64, enable_chunked_prefill=False)
    assert make(tiny_qwen3, max_num_batched_tokens=64).scheduler_config.max_num_batched_tokens == 64


def test_budget_smaller_than_max_num_seqs_is_rejected(tiny_qwen3):
    """Without chunking every running request decodes each step: max_num_seqs tokens at most.
    (m5's one-budget scheduler defers decodes beyond the budget instead, so it accepts this.)"""
    from folovllm.milestone import has_milestone

    if has_milestone("m5_chunked"):
        make(tiny_qwen3, max_num_batched_tokens=128, max_batch_size=200)
        return
    with pytest.raises(
        ValueError, match="max_num_batched_tokens=128 is smaller than max_num_seqs=200"
    ):
        make(tiny_qwen3, max_num_batched_tokens=128, max_batch_size=200)


@pytest.mark.parametrize(
    "field,value",
    [("max_batch_size", 0), ("max_num_batched_tokens", -1), ("kv_cache_memory_gb", 0)],
)
def test_new_options_are_validated(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        EngineConfig(**{field: value})
