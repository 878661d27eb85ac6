"""Preemption by recompute, in float32 and in bfloat16, on the repository's trained tiny model.

A preempted request loses its K/V and later runs its prompt plus the tokens it already generated
through one prefill. The original tokens were produced by decode steps, one at a time. Both paths
compute the same math in a different order (other matmul shapes, other reduction orders), so:

- float32: the rounding differences stay far below the gap between the top two logits of a trained
  model, and greedy outputs with preemption are identical to those without. This file pins that.
- bfloat16 (8 bits of mantissa): a near-tie between the two best tokens can flip, and from the
  flipped token on the request continues differently. Nothing is lost or corrupted: every request
  still finishes with all its tokens and every block comes back. Measured on the CPU (torch 2.13)
  with the workload below: 6 preemptions, 5 of 6 requests identical, 250 of 260 tokens agree,
  the sixth request diverges at its 9th token. The exact count depends on the kernels of the
  device, so the test prints it and asserts only what holds everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from folovllm import EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine

FOLO_TINY = Path(__file__).resolve().parents[2] / "models" / "folo-tiny"
PROMPTS = [list(range(3 + 7 * i, 3 + 7 * i + n)) for i, n in enumerate([30, 22, 41, 9, 35, 17])]
MAX_TOKENS = [40, 55, 30, 60, 25, 50]


def run(dtype: str, **kw) -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(
        EngineConfig(model=str(FOLO_TINY), device="cpu", dtype=dtype, max_model_len=128, **kw)
    )
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
    return [done[i] for i in ids], engine


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, int, int]:
    """(identical requests, agreeing tokens, total tokens) position by position."""
    same = sum(x == y for x, y in zip(a, b))
    agree = sum(sum(i == j for i, j in zip(x, y)) for x, y in zip(a, b))
    return same, agree, sum(len(x) for x in a)


def test_float32_outputs_with_preemption_are_identical():
    free, _ = run("float32")
    tight, engine = run("float32", num_gpu_blocks=8)  # 8 x 16 slots = one max_model_len request
    assert engine.scheduler.num_preemptions > 0
    assert tight == free


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_bfloat16_preemption_finishes_everything_and_reports_agreement(dtype, capsys):
    free, _ = run(dtype)
    tight, engine = run(dtype, num_gpu_blocks=8)
    assert engine.scheduler.num_preemptions > 0
    assert [len(t) for t in tight] == MAX_TOKENS  # every request ran to its max_tokens
    same, agree, total = agreement(free, tight)
    with capsys.disabled():
        print(
            f"\n[{dtype}] {engine.scheduler.num_preemptions} preemptions: {same}/{len(free)} "
            f"requests identical, {agree}/{total} tokens agree"
        )
