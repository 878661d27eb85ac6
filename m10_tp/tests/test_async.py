"""Async scheduling (step N+1 scheduled and launched before step N's tokens are back) gives
exactly the synchronous engine's tokens: greedy, seeded sampling, EOS, stop strings, the
repetition penalty, preemption and aborts; every KV block comes back. On the tiny Qwen3 only: the
scheduling does not depend on the architecture (both run through the same runner elsewhere)."""

from __future__ import annotations

import pytest
import torch

from folovllm import EngineConfig, SamplingParams
from folovllm.core.sched.async_scheduler import AsyncScheduler
from folovllm.core.sched.scheduler import Scheduler
from folovllm.engine.llm_engine import LLMEngine

PROMPTS = [[(7 * i + j) % 300 + 1 for j in range(4 + 9 * i)] for i in range(8)]


def make(model, async_scheduling: bool, **kw) -> LLMEngine:
    kw = dict(device="cpu", max_model_len=128, max_num_seqs=4) | kw
    return LLMEngine(EngineConfig(model=str(model), async_scheduling=async_scheduling, **kw))


def workload(eos: int, stop: str) -> list[SamplingParams]:
    """Every kind of request: by length, EOS, stop string, seeded (torch and top-k/top-p
    sampling paths), the penalty (the async engine waits for the step before those)."""
    kinds = [
        dict(temperature=0, max_tokens=40, ignore_eos=True),
        dict(temperature=0, max_tokens=40),  # stops at `eos`
        dict(temperature=0.8, seed=11, max_tokens=30, ignore_eos=True),
        dict(temperature=0.9, top_k=8, top_p=0.9, seed=12, max_tokens=25),
        dict(temperature=0, max_tokens=40, stop=stop),
        dict(temperature=0, max_tokens=20, repetition_penalty=1.3, ignore_eos=True),
        dict(temperature=0.7, seed=13, max_tokens=1),
        dict(temperature=0, max_tokens=33, ignore_eos=True),
    ]
    return [SamplingParams(**k) for k in kinds]


def run(engine: LLMEngine, params: list[SamplingParams], abort_after: int | None = None,
        prompts: list[list[int]] = PROMPTS):  # fmt: skip
    """Add one request per prompt, step to the end; aborts request 3 after ``abort_after``
    steps. Returns outputs in prompt order and the number of placeholder fills."""
    fills = []
    ib = engine.runner.input_batch
    fill = ib.fill_placeholders
    ib.fill_placeholders = lambda sampled: (fills.append(ib.num_placeholders), fill(sampled))
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    done, steps = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
        steps += 1
        if steps == abort_after:
            done[ids[3]] = engine.abort_request(ids[3])
    pool = engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks, "leaked KV blocks"
    assert not engine.requests and engine.in_flight is None and engine.num_penalized == 0
    return [done[i] for i in ids], sum(fills)


def summary(outputs) -> list[tuple]:
    return [(o.token_ids, o.finish_reason, o.text) for o in outputs]


@pytest.fixture(scope="module")
def params(tiny_qwen3) -> list[SamplingParams]:
    """EOS and the stop string are tokens the model really produces mid-way (greedy)."""
    engine = make(tiny_qwen3, False)
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    ids = [engine.add_request(PROMPTS[i], greedy) for i in (1, 4)]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in engine.step()})
    eos, stop_tok = done[ids[0]][6], done[ids[1]][8]
    return workload(eos, engine.tokenizer.decode([stop_tok])), eos


def _set_eos(engine: LLMEngine, eos: int) -> LLMEngine:
    engine.eos_token_ids = {eos}
    return engine


def test_async_gives_the_sync_tokens(tiny_qwen3, params):
    params, eos = params
    sync, _ = run(_set_eos(make(tiny_qwen3, False), eos), params)
    engine = _set_eos(make(tiny_qwen3, True), eos)
    async_, fills = run(engine, params)
    assert summary(async_) == summary(sync)
    assert fills > 0  # the next step's inputs really came from the step still running
    assert {o.finish_reason for o in sync} == {"length", "stop"}
    assert sync[1].finish_reason == "stop" and sync[4].finish_reason == "stop"


def test_a_stop_by_length_wastes_no_step(tiny_qwen3, params):
    """Known ahead: the request is not scheduled again once its last token is in flight. Only
    stops found on the host (EOS, stop string) cost their request one extra row."""
    params, eos = params
    rows = {}
    for mode in (False, True):
        engine = _set_eos(make(tiny_qwen3, mode), eos)
        outs, _ = run(engine, params)
        rows[mode] = sum(s.num_reqs for s in engine.stats.steps)
    host_stops = sum(o.finish_reason == "stop" for o in outs)
    assert rows[False] <= rows[True] <= rows[False] + host_stops


def test_async_with_preemption(tiny_qwen3, params):
    params, eos = params
    sync, _ = run(_set_eos(make(tiny_qwen3, False, num_gpu_blocks=8), eos), params)
    engine = _set_eos(make(tiny_qwen3, True, num_gpu_blocks=8), eos)
    async_, fills = run(engine, params)
    assert engine.scheduler.num_preemptions > 0 and fills > 0
    assert summary(async_) == summary(sync)


def test_abort_while_a_step_is_in_flight(tiny_qwen3, params):
    params, eos = params
    sync, _ = run(_set_eos(make(tiny_qwen3, False), eos), params, abort_after=6)
    async_, _ = run(_set_eos(make(tiny_qwen3, True), eos), params, abort_after=6)
    assert async_[3].finish_reason == sync[3].finish_reason == "abort"
    # The async engine's view lags one step: the aborted request has one token fewer at most.
    a, s = async_[3].token_ids, sync[3].token_ids
    assert a == s[: len(a)] and len(s) - len(a) <= 1
    assert summary(async_[:3] + async_[4:]) == summary(sync[:3] + sync[4:])


@pytest.mark.gpu
def test_async_with_cuda_graphs_float32(tiny_qwen3, params):
    """On the GPU: decode and mixed graphs read the in-flight token from the device buffer."""
    params, eos = params
    kw = dict(device="cuda", dtype="float32", kv_cache_memory_gb=0.05, attention_backend="triton")
    sync, _ = run(_set_eos(make(tiny_qwen3, False, **kw), eos), params)
    engine = _set_eos(make(tiny_qwen3, True, **kw), eos)
    async_, fills = run(engine, params)
    assert engine.runner.graph_runner.num_replays > 0 and fills > 0
    assert summary(async_) == summary(sync)
    torch.cuda.synchronize()


def test_async_with_chunked_prefill(tiny_qwen3, params):
    """m5: prompts run in chunks of a 16-token budget beside decodes; a chunk that does not end
    its prompt samples nothing, so it leaves no placeholder for the next step."""
    params, eos = params
    sync, _ = run(_set_eos(make(tiny_qwen3, False, max_num_batched_tokens=16), eos), params)
    engine = _set_eos(make(tiny_qwen3, True, max_num_batched_tokens=16), eos)
    async_, fills = run(engine, params)
    assert max(s.num_tokens for s in engine.stats.steps) <= 16 and fills > 0
    assert summary(async_) == summary(sync)


def test_async_with_prefix_caching(tiny_qwen3, params):
    """m6: blocks are cached when their slots are taken; a block whose last token is still in
    flight is cached one step later. Prompts sharing 40 tokens hit, tokens unchanged."""
    params, eos = params
    shared = [[(3 * j) % 200 + 5 for j in range(40)] + p for p in PROMPTS]
    kw = dict(enable_prefix_caching=True, max_num_batched_tokens=32, block_size=4)
    sync, _ = run(_set_eos(make(tiny_qwen3, False, **kw), eos), params, prompts=shared)
    engine = _set_eos(make(tiny_qwen3, True, **kw), eos)
    async_, fills = run(engine, params, prompts=shared)
    async_again, _ = run(engine, params, prompts=shared)  # decoded blocks cached too
    assert engine.kv_cache_manager.prefix_cache_hits > 0 and fills > 0
    assert summary(async_) == summary(sync) == summary(async_again)


def test_async_scheduling_option(tiny_qwen3):
    with pytest.raises(ValueError, match="async_scheduling must be a bool or None"):
        EngineConfig(async_scheduling="yes")
    assert make(tiny_qwen3, None).async_scheduling is False  # default: on only for CUDA


@pytest.mark.parametrize("async_scheduling", [None, False, True])
def test_the_engine_picks_its_scheduler(tiny_qwen3, async_scheduling):
    """AsyncScheduler with async scheduling on, the plain Scheduler otherwise (None on a CPU)."""
    engine = make(tiny_qwen3, async_scheduling)
    assert type(engine.scheduler) is (AsyncScheduler if async_scheduling else Scheduler)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_reused_batch_samples_as_a_fresh_build(tiny_qwen3, async_scheduling):
    """While a step runs the same requests as the one before, the runner reuses that step's
    sampling metadata and rows (vLLM's persistent batch). Here requests join and leave at
    different steps (4 seats, 8 requests of different lengths): every row's temperature, top-k,
    top-p and seeded generator must follow its request, as with metadata built every step."""
    kinds = [
        dict(temperature=0.8, seed=21, max_tokens=9),
        dict(temperature=0, max_tokens=14),
        dict(temperature=1.0, top_k=5, seed=22, max_tokens=6),
        dict(temperature=0.9, top_p=0.8, seed=23, max_tokens=17),
        dict(temperature=1.2, seed=24, max_tokens=3),
        dict(temperature=0, max_tokens=11),
        dict(temperature=0.7, top_k=3, top_p=0.9, seed=25, max_tokens=8),
        dict(temperature=1.5, seed=26, max_tokens=12),
    ]
    params = [SamplingParams(ignore_eos=True, **k) for k in kinds]
    reused, reused_mds = _run_recording_metadata(make(tiny_qwen3, async_scheduling), params, False)
    fresh, fresh_mds = _run_recording_metadata(make(tiny_qwen3, async_scheduling), params, True)
    assert reused == fresh
    assert len({id(md) for md in fresh_mds}) == len(fresh_mds)
    assert len({id(md) for md in reused_mds}) < len(reused_mds)  # the cache was really used


def _run_recording_metadata(engine: LLMEngine, params: list[SamplingParams], fresh: bool):
    """``run``, keeping every step's sampling metadata; ``fresh``: the runner forgets the last
    batch before every step, so each step builds its metadata anew."""
    runner, sampler, step = engine.runner, engine.runner.sampler, engine.step
    mds = []
    runner.sampler = lambda logits, md: (mds.append(md), sampler(logits, md))[1]
    if fresh:

        def fresh_step():
            runner.batch_reqs = []
            return step()

        engine.step = fresh_step
    return summary(run(engine, params)[0]), mds
