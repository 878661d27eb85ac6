"""The scheduler alone (no model): budgets, admission, retirement, blocks, preemption."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from folovllm import SamplingParams
from folovllm.config import SchedulerConfig
from folovllm.core.kv_cache_manager import KVCacheManager
from folovllm.core.sched.scheduler import Scheduler
from folovllm.request import Request, RequestStatus


def req(i: int, prompt_len: int, max_tokens: int) -> Request:
    return Request(
        str(i),
        None,
        list(range(1, prompt_len + 1)),
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


def make(
    max_seqs: int, budget: int, num_blocks: int, block_size: int = 4, max_len: int = 50
) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    return Scheduler(cfg, KVCacheManager(num_blocks, block_size), max_len)


def fake_step(s: Scheduler):
    so = s.schedule()
    ids = [r.request_id for r in so.scheduled]
    return so, s.update_from_output(so, ids, [7] * len(ids))


def test_continuous_batching_refills_the_batch_at_once():
    s = make(max_seqs=2, budget=100, num_blocks=20)
    a, b, c = req(0, 4, 1), req(1, 4, 3), req(2, 4, 2)
    for r in (a, b, c):
        s.add_request(r)
    so, done = fake_step(s)  # a and b prefill; a finishes at once (max_tokens=1)
    assert [r.request_id for r in so.scheduled] == ["0", "1"] and done == [a]
    so, done = fake_step(s)  # b decodes, c joins in the very next step
    assert [(r.request_id, so.num_scheduled_tokens[r.request_id]) for r in so.scheduled] == [
        ("1", 1),
        ("2", 4),
    ]
    # b grew into a second block; a's block went to the back of the free queue (FIFO)
    assert so.block_tables["1"] == [1, 2] and so.block_tables["2"] == [3]
    while s.has_unfinished_requests():
        fake_step(s)
    assert s.kv_cache_manager.block_pool.num_free_blocks == 20


def test_blocks_are_taken_only_when_tokens_need_them():
    s = make(max_seqs=4, budget=100, num_blocks=20, block_size=4)
    r = req(0, 5, 10)
    s.add_request(r)
    so, _ = fake_step(s)
    assert len(so.block_tables["0"]) == 2  # 5 prompt tokens -> 2 blocks of 4
    for _ in range(3):  # tokens 6..8 fit in the second block
        so, _ = fake_step(s)
        assert len(so.block_tables["0"]) == 2
    so, _ = fake_step(s)  # the 9th token opens a third block
    assert len(so.block_tables["0"]) == 3


def test_preemption_by_recompute_when_blocks_run_out():
    # 6 blocks of 4 tokens: two requests of 8 prompt tokens fit, but not as they grow.
    s = make(max_seqs=4, budget=100, num_blocks=6, block_size=4)
    a, b = req(0, 8, 10), req(1, 8, 10)
    s.add_request(a)
    s.add_request(b)
    fake_step(s)  # both prefill: 2 + 2 blocks, 2 free
    for _ in range(20):
        if b.status is RequestStatus.PREEMPTED or not s.has_unfinished_requests():
            break
        fake_step(s)
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert s.waiting[0] is b and b.num_output_tokens > 0  # its tokens are kept for recompute
    recomputed = False
    while s.has_unfinished_requests():
        so = s.schedule()
        if b in so.scheduled and so.num_scheduled_tokens["1"] > 1:  # recompute: prompt + outputs
            assert so.num_scheduled_tokens["1"] == b.num_tokens and b.num_computed_tokens == 0
            recomputed = True
        ids = [r.request_id for r in so.scheduled]
        s.update_from_output(so, ids, [7] * len(ids))
    assert recomputed
    assert a.num_output_tokens == b.num_output_tokens == 10
    assert s.num_preemptions >= 1 and s.kv_cache_manager.block_pool.num_free_blocks == 6


def test_requests_wait_for_blocks_and_none_are_dropped():
    s = make(max_seqs=8, budget=100, num_blocks=2, block_size=4)
    reqs = [req(i, 3, 2) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    so, _ = fake_step(s)
    assert len(so.scheduled) == 2 and len(s.waiting) == 1
    while s.has_unfinished_requests():
        fake_step(s)
    assert all(r.num_output_tokens == 2 for r in reqs)


def test_token_budget_defers_a_prompt_that_does_not_fit():
    s = make(max_seqs=8, budget=10, num_blocks=20, max_len=10)
    s.add_request(req(0, 6, 3))
    s.add_request(req(1, 6, 3))
    so, _ = fake_step(s)
    assert so.total_num_scheduled_tokens == 6 and len(so.scheduled) == 1
    so, _ = fake_step(s)
    assert so.total_num_scheduled_tokens == 7  # 1 decode + the second prompt


def test_abort_waiting_and_running_frees_blocks():
    s = make(max_seqs=1, budget=100, num_blocks=4)
    a, b = req(0, 3, 5), req(1, 3, 5)
    s.add_request(a)
    s.add_request(b)
    fake_step(s)
    s.finish_requests([b], RequestStatus.FINISHED_ABORTED)  # waiting
    s.finish_requests([a], RequestStatus.FINISHED_ABORTED)  # running
    assert not s.has_unfinished_requests() and s.kv_cache_manager.block_pool.num_free_blocks == 4
    assert s.schedule().finished_req_ids == {"0", "1"}


@settings(max_examples=80, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 8)), min_size=1, max_size=12),
    max_seqs=st.integers(1, 5),
    extra_blocks=st.integers(0, 8),
    block_size=st.sampled_from([1, 2, 4, 8]),
    budget=st.integers(20, 40),
    abort_at=st.integers(0, 30),
)
def test_invariants_hold_on_random_workloads(
    lens, max_seqs, extra_blocks, block_size, budget, abort_at
):
    max_len = 20
    num_blocks = -(-max_len // block_size) + extra_blocks  # at least one full sequence fits
    s = make(max_seqs, budget, num_blocks, block_size, max_len)
    pool, kvm = s.kv_cache_manager.block_pool, s.kv_cache_manager
    reqs = [req(i, p, m) for i, (p, m) in enumerate(lens)]
    for r in reqs:
        s.add_request(r)
    for step in range(2000):
        if not s.has_unfinished_requests():
            break
        if step == abort_at and not reqs[-1].is_finished:
            s.finish_requests([reqs[-1]], RequestStatus.FINISHED_ABORTED)
        so, _ = fake_step(s)
        assert len(so.scheduled) <= max_seqs and so.total_num_scheduled_tokens <= budget
        held = [b.block_id for blocks in kvm.req_to_blocks.values() for b in blocks]
        assert len(held) == len(set(held)), "a block is in two tables"
        assert all(pool.blocks[i].ref_count == 1 for i in held)
        assert len(held) + pool.num_free_blocks == num_blocks
        assert set(kvm.req_to_blocks) == {r.request_id for r in s.running}
        for r in s.running:
            assert len(kvm.req_to_blocks[r.request_id]) == -(-r.num_computed_tokens // block_size)
    assert not s.has_unfinished_requests()
    assert pool.num_free_blocks == num_blocks and not kvm.req_to_blocks
    for r in reqs:
        assert r.is_finished
        if r.status is RequestStatus.FINISHED_LENGTH:
            assert r.num_output_tokens == min(
                r.sampling_params.max_tokens, max_len - r.num_prompt_tokens
            )
