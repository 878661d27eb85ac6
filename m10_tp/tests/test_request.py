import pytest

from folovllm import SamplingParams
from folovllm.outputs import RequestOutput
from folovllm.request import IllegalTransition, Request, RequestStatus

S = RequestStatus


def make() -> Request:
    return Request(
        "r0", "hi", [1, 2, 3], SamplingParams(max_tokens=2), eos_token_id=0, arrival_time=0.0
    )


@pytest.mark.parametrize(
    "path",
    [
        [S.RUNNING, S.FINISHED_STOPPED],
        [S.RUNNING, S.FINISHED_LENGTH],
        [S.RUNNING, S.FINISHED_ABORTED],
        [S.FINISHED_ABORTED],
        [S.RUNNING, S.PREEMPTED, S.RUNNING, S.FINISHED_LENGTH],
        [S.RUNNING, S.PREEMPTED, S.FINISHED_ABORTED],
        # m8 async scheduling: the token of the step before the preemption arrives after it.
        [S.RUNNING, S.PREEMPTED, S.FINISHED_STOPPED],
        [S.RUNNING, S.PREEMPTED, S.FINISHED_LENGTH],
    ],
)
def test_legal_paths(path):
    req = make()
    for t, status in enumerate(path, start=1):
        req.transition(status, now=float(t))
    assert req.status is path[-1] and req.is_finished
    assert req.first_scheduled_time == (1.0 if S.RUNNING in path else None)
    assert req.finished_time == float(len(path))


@pytest.mark.parametrize(
    "path",
    [
        [S.FINISHED_STOPPED],
        [S.PREEMPTED],
        [S.WAITING],
        [S.RUNNING, S.WAITING],
        [S.RUNNING, S.RUNNING],
        [S.RUNNING, S.FINISHED_STOPPED, S.RUNNING],
        [S.FINISHED_ABORTED, S.FINISHED_ABORTED],
        [S.RUNNING, S.PREEMPTED, S.WAITING],
    ],
)
def test_illegal_transitions_raise(path):
    req = make()
    *ok, bad = path
    for status in ok:
        req.transition(status)
    before = req.status
    with pytest.raises(IllegalTransition, match=f"{before.name} -> {bad.name}"):
        req.transition(bad)
    assert req.status is before


def test_tokens_and_output_metrics():
    req = make()
    req.transition(S.RUNNING, now=1.0)
    req.append_output_token(7, now=2.0)
    req.append_output_token(8, now=4.0)
    req.output_text = "ab"
    req.transition(S.FINISHED_LENGTH, now=5.0)
    assert req.all_token_ids == [1, 2, 3, 7, 8] and req.num_tokens == 5
    out = RequestOutput.from_request(req)
    assert out.finished and out.finish_reason == "length"
    assert out.token_ids == [7, 8] and out.text == "ab" and out.prompt_token_ids == [1, 2, 3]
    m = out.metrics
    assert (m.ttft, m.tpot, m.e2e) == (2.0, 2.0, 5.0)
    assert RequestOutput.from_request(make()).finish_reason is None


def test_num_tokens_follows_appended_tokens():
    # num_tokens is a plain int kept by append_output_token (read per request per step).
    req = make()
    assert req.num_tokens == len(req.all_token_ids) == 3
    for t in (7, 8, 9):
        req.append_output_token(t)
        assert req.num_tokens == len(req.all_token_ids)
    assert req.num_tokens == 6


def test_eos_ids_accept_one_or_several():
    sp = SamplingParams()
    assert Request("a", None, [1], sp, eos_token_id=5).eos_token_ids == {5}
    assert Request("b", None, [1], sp, eos_token_id=[5, 7, 5]).eos_token_ids == {5, 7}
    assert Request("c", None, [1], sp).eos_token_ids == frozenset()
