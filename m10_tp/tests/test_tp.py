"""m10 end to end on a CPU: tensor parallelism over gloo, two processes per engine.

tp=2 gives tp=1's greedy tokens (float32) for tiny Qwen2 (2 KV heads) and Qwen3 (4 KV heads)
models with chunked prefill, prefix caching and forced preemption, and for a GPTQ checkpoint; a
split the model does not allow is refused before any process starts; a worker that dies stops
the engine with an error that names it, without hanging. Each engine is spawned once and checked
several ways (a spawn costs ~2 s).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import make_checkpoint

from folovllm import LLM, EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine
from folovllm.executor.multiproc_executor import MultiprocExecutor, TensorParallelWorkerError
from folovllm.worker.model_runner import ModelRunner

GPTQ = Path(__file__).parent / "fixtures" / "gptqmodel"
PREFIX = list(range(3, 35))  # two full blocks shared by every prompt: prefix-cache hits
PROMPTS = [PREFIX + list(range(40 + 9 * i, 40 + 9 * i + n)) for i, n in enumerate([5, 20, 11, 3])]
PROMPTS += [[7, 8, 9], list(range(100, 141))]
MAX_TOKENS = [12, 9, 16, 14, 10, 12]
# Chunks of 32 tokens, prefix caching, and 8 blocks of 16 = one max_model_len: preemptions.
ENGINE = dict(
    device="cpu", dtype="float32", attention_backend="torch", max_model_len=128,
    block_size=16, max_num_batched_tokens=32, enable_prefix_caching=True, num_gpu_blocks=8,
)  # fmt: skip


def run(engine: LLMEngine) -> list[list[int]]:
    """Greedy tokens of every prompt (added at once), checking the cache is clean after."""
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
    return [done[i] for i in ids]


def compare(model: Path, **kw) -> tuple[LLMEngine, list[list[int]]]:
    """tp=1's tokens, then a tp=2 engine's (returned running, for more checks)."""
    one = LLMEngine(EngineConfig(model=str(model), **ENGINE, **kw))
    expected = run(one)
    assert one.scheduler.num_preemptions > 0 and one.prefix_cache_stats()["hits"] > 0
    two = LLMEngine(EngineConfig(model=str(model), tensor_parallel_size=2, **ENGINE, **kw))
    assert isinstance(two.runner, MultiprocExecutor)
    assert two.runner.num_blocks == one.runner.num_blocks == 8
    assert run(two) == expected
    assert two.scheduler.num_preemptions == one.scheduler.num_preemptions
    assert two.prefix_cache_stats() == one.prefix_cache_stats()
    return two, expected


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:  # 4 heads, 2 KV heads: one KV head per rank
    return make_checkpoint(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory) -> Path:  # 8 heads, 4 KV heads: two per rank
    return make_checkpoint(
        tmp_path_factory.mktemp("qwen3"), "qwen3", num_attention_heads=8, num_key_value_heads=4
    )


def test_qwen2_tp2_equals_tp1_and_shards_the_cache(qwen2):
    engine, expected = compare(qwen2)
    try:
        runner = engine.runner.runner  # rank 0's
        kv_one_rank = runner.kv_caches[0].shape
        assert runner.num_kv_heads == 1 and 1 in kv_one_rank  # 1 of 2 KV heads per rank
        attn = runner.model.model.layers[0].self_attn
        assert (attn.num_heads, attn.qkv_proj.weight.shape[0]) == (2, (2 + 1 + 1) * 16)
        assert runner.model.model.embed_tokens.weight.shape[0] == 192  # 384 words / 2
        assert run(engine) == expected  # again, through the same workers (prefix cache warm)
    finally:
        engine.shutdown()
    assert not multiprocessing.active_children()


def test_qwen3_tp2_equals_tp1_with_async_scheduling(qwen3):
    # Async scheduling: the next step's inputs include ids broadcast from rank 0 to rank 1.
    engine, _ = compare(qwen3, async_scheduling=True)
    engine.shutdown()
    engine.shutdown()  # idempotent
    assert not multiprocessing.active_children()


def test_llm_context_manager_one_engine_per_process_and_tp1_spawns_nothing(qwen2):
    prompts, params = PROMPTS[:2], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    one = LLM(str(qwen2), **ENGINE)
    assert isinstance(one.engine.runner, ModelRunner) and not multiprocessing.active_children()
    expected = [o.token_ids for o in one.generate(prompts, params, use_tqdm=False)]
    with LLM(str(qwen2), tensor_parallel_size=2, **ENGINE) as llm:
        assert len(multiprocessing.active_children()) == 1
        with pytest.raises(RuntimeError, match="already runs in this process"):
            LLM(str(qwen2), tensor_parallel_size=2, **ENGINE)  # one group per process
        assert len(multiprocessing.active_children()) == 1  # nothing spawned, nothing torn down
        assert [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == expected
    assert not multiprocessing.active_children()  # joined on leaving the block


@pytest.mark.parametrize(
    "model,tp,message",
    [
        (
            "qwen3",
            3,
            r"tensor_parallel_size=3 does not divide num_attention_heads=8; .*\[1, 2, 4\]",
        ),
        ("qwen2", 4, r"larger than num_key_value_heads=2: .*\[1, 2\]"),
        ("w4_g128_sym_v1", 2, "whole groups of 128"),
        ("w4_g32_sym_descact_v1", 2, "act-order"),
    ],
)
def test_bad_splits_are_refused_before_any_process_starts(request, model, tp, message):
    path = request.getfixturevalue(model) if model.startswith("qwen") else GPTQ / model
    with pytest.raises(ValueError, match=message):
        LLM(str(path), tensor_parallel_size=tp, **ENGINE)
    assert not multiprocessing.active_children()


def test_gptq_tp2_equals_tp1_then_a_killed_worker_stops_the_engine():
    engine, expected = compare(GPTQ / "w4_g64_asym_v1")
    executor = engine.runner
    assert executor.runner.model.model.layers[0].mlp.down_proj.g_idx.shape == (256 // 2,)
    worker = executor.procs[0]
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=10)
    t0 = time.perf_counter()
    with pytest.raises(
        TensorParallelWorkerError, match=r"rank 1 \(pid \d+\) died with exit code -9"
    ):
        run(engine)
    assert time.perf_counter() - t0 < 10
    engine.shutdown()
    assert not multiprocessing.active_children()


def test_a_worker_dying_during_a_step_is_reported_not_waited_for(qwen2):
    engine = LLMEngine(EngineConfig(model=str(qwen2), tensor_parallel_size=2, **ENGINE))
    try:
        executor = engine.runner
        executor._check_workers = lambda: None  # as if it died after rank 0 looked
        os.kill(executor.procs[0].pid, signal.SIGKILL)
        t0 = time.perf_counter()
        with pytest.raises(TensorParallelWorkerError, match="rank 1 .*died"):
            run(engine)  # the pipe or the first all-reduce finds the dead peer
        assert time.perf_counter() - t0 < 10
    finally:
        engine.shutdown()
    assert not multiprocessing.active_children()
