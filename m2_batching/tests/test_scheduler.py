"""The scheduler alone (no model): budgets, admission, retirement, rows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from folovllm import SamplingParams
from folovllm.config import SchedulerConfig
from folovllm.core.sched.scheduler import Scheduler
from folovllm.request import Request, RequestStatus


def req(i: int, prompt_len: int, max_tokens: int) -> Request:
    return Request(
        str(i),
        None,
        list(range(1, prompt_len + 1)),
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


def fake_step(s: Scheduler) -> tuple[object, list[Request]]:
    so = s.schedule()
    ids = [r.request_id for r in so.scheduled]
    return so, s.update_from_output(so, ids, [7] * len(ids))


def test_continuous_batching_refills_the_batch_at_once():
    s = Scheduler(
        SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=100), num_kv_rows=2, max_model_len=50
    )
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
    assert so.kv_rows == {"1": 1, "2": 0}  # c reuses a's row
    while s.has_unfinished_requests():
        fake_step(s)
    assert sorted(s.free_rows) == [0, 1] and not s.kv_rows
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in (a, b, c))


def test_requests_wait_when_rows_run_out_and_none_are_dropped():
    s = Scheduler(
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100), num_kv_rows=1, max_model_len=50
    )
    reqs = [req(i, 3, 2) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    so, _ = fake_step(s)
    assert [r.request_id for r in so.scheduled] == ["0"] and len(s.waiting) == 2
    while s.has_unfinished_requests():
        fake_step(s)
    assert all(r.num_output_tokens == 2 for r in reqs)


def test_token_budget_defers_a_prompt_that_does_not_fit():
    s = Scheduler(
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=10), num_kv_rows=8, max_model_len=10
    )
    s.add_request(req(0, 6, 3))
    s.add_request(req(1, 6, 3))
    so, _ = fake_step(s)
    assert so.total_num_scheduled_tokens == 6 and len(so.scheduled) == 1
    so, _ = fake_step(s)
    assert so.total_num_scheduled_tokens == 7  # 1 decode + the second prompt


def test_abort_waiting_and_running_frees_rows():
    s = Scheduler(
        SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=100), num_kv_rows=1, max_model_len=50
    )
    a, b = req(0, 3, 5), req(1, 3, 5)
    s.add_request(a)
    s.add_request(b)
    fake_step(s)
    s.finish_requests([b], RequestStatus.FINISHED_ABORTED)  # waiting
    s.finish_requests([a], RequestStatus.FINISHED_ABORTED)  # running
    assert not s.has_unfinished_requests() and s.free_rows == [0]
    assert s.schedule().finished_req_ids == {"0", "1"}


@settings(max_examples=60, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=1, max_size=12),
    max_seqs=st.integers(1, 4),
    rows=st.integers(1, 4),
    budget=st.integers(12, 30),
    abort_at=st.integers(0, 20),
)
def test_invariants_hold_on_random_workloads(lens, max_seqs, rows, budget, abort_at):
    s = Scheduler(
        SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget),
        num_kv_rows=rows,
        max_model_len=20,
    )
    reqs = [req(i, p, m) for i, (p, m) in enumerate(lens)]
    for r in reqs:
        s.add_request(r)
    for step in range(500):
        if not s.has_unfinished_requests():
            break
        if step == abort_at and not reqs[-1].is_finished:
            s.finish_requests([reqs[-1]], RequestStatus.FINISHED_ABORTED)
        so, _ = fake_step(s)
        assert len(so.scheduled) <= max_seqs and so.total_num_scheduled_tokens <= budget
        assert len(set(s.kv_rows.values())) == len(s.kv_rows) == len(s.running) <= rows
        assert len(s.free_rows) + len(s.kv_rows) == rows
    assert not s.has_unfinished_requests()
    assert sorted(s.free_rows) == list(range(rows))
    for r in reqs:
        assert r.is_finished
        if r.status is RequestStatus.FINISHED_LENGTH:
            assert r.num_output_tokens == r.sampling_params.max_tokens
