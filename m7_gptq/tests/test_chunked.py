"""m5: chunked prefill. Attention over chunks, the one-budget scheduler (hypothesis, fake runner),
the runner's partial-prefill rows, end-to-end tokens at several budgets, and configuration errors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from folovllm import EngineConfig, SamplingParams
from folovllm.attention.backends import get_backend_cls
from folovllm.attention.backends.abstract import CommonAttentionMetadata
from folovllm.config import SchedulerConfig, resolve_scheduler_config
from folovllm.core.kv_cache_manager import KVCacheManager
from folovllm.core.sched.scheduler import Scheduler
from folovllm.engine.llm_engine import LLMEngine
from folovllm.request import Request, RequestStatus

# ----------------------------------------------------------------------------- attention over chunks

HEADS, KV_HEADS, DIM, BLOCK = 4, 2, 32, 16
ATOL = 1e-5  # fp32 chunked vs a float64 full causal reference


def attend_in_chunks(backend_name: str, q, k, v, chunk: int) -> torch.Tensor:
    """Feed one prompt to the backend chunk by chunk over a paged cache (tables permuted)."""
    backend = get_backend_cls(backend_name)
    n = q.shape[0]
    num_blocks = -(-n // BLOCK) + 2
    table = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1))[: -(-n // BLOCK)]
    cache = torch.zeros(backend.get_kv_cache_shape(num_blocks, BLOCK, KV_HEADS, DIM))
    impl = backend.get_impl_cls()(HEADS, DIM, DIM**-0.5, KV_HEADS)
    builder = (
        backend.get_builder_cls()()
        if backend_name == "torch"
        else backend.get_builder_cls()(KV_HEADS, 1)
    )
    outs = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        pos = torch.arange(s, e)
        common = CommonAttentionMetadata(
            query_start_loc=torch.tensor([0, e - s], dtype=torch.int32),
            seq_lens=torch.tensor([e], dtype=torch.int32),
            block_table=table[None].to(torch.int32),
            slot_mapping=(table[pos // BLOCK] * BLOCK + pos % BLOCK).to(torch.int32),
            query_start_loc_cpu=[0, e - s],
            seq_lens_cpu=[e],
            num_reqs=1,
            num_actual_tokens=e - s,
            max_query_len=e - s,
            max_seq_len=e,
        )
        outs.append(impl.forward(q[s:e], k[s:e], v[s:e], cache, builder.build(common)))
    return torch.cat(outs)


def full_causal(q, k, v) -> torch.Tensor:
    rep = HEADS // KV_HEADS
    qd, kd, vd = (x.double().transpose(0, 1) for x in (q, k, v))
    kd, vd = kd.repeat_interleave(rep, 0), vd.repeat_interleave(rep, 0)
    out = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
    return out.transpose(0, 1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 64, "whole"])
def test_chunked_attention_equals_full_causal_attention(backend, chunk):
    if backend == "triton":
        pytest.importorskip("triton")
    # not a block multiple; > 64 so that the 64-token chunk is not the whole prompt (shorter for
    # the small chunks: on a CPU every chunk is one launch of the interpreted kernel)
    n = 70 if chunk in (64, "whole") else 40
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, HEADS, DIM, generator=g)
    k, v = (torch.randn(n, KV_HEADS, DIM, generator=g) for _ in range(2))
    out = attend_in_chunks(backend, q, k, v, n if chunk == "whole" else chunk)
    torch.testing.assert_close(out.double(), full_causal(q, k, v), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- scheduler, fake runner


def make_sched(
    budget, num_blocks, threshold=None, max_seqs=8, block_size=4, max_len=64, chunked=True
):
    cfg = SchedulerConfig(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=budget,
        enable_chunked_prefill=chunked,
        long_prefill_token_threshold=threshold,
    )
    return Scheduler(cfg, KVCacheManager(num_blocks, block_size), max_len)


def make_req(i: int, prompt_len: int, max_tokens: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(str(i), None, [i % 50 + 1] * prompt_len, params)


def fake_run(so):
    """The runner's rule: only rows whose known tokens are all computed after this step sample."""
    ids = [
        r.request_id
        for r in so.scheduled
        if r.num_computed_tokens + so.num_scheduled_tokens[r.request_id] >= r.num_tokens
    ]
    return ids, [1000 + len(ids)] * len(ids)


def test_a_long_prompt_is_cut_to_the_budget_and_decodes_go_first():
    s = make_sched(budget=8, num_blocks=64, max_len=64)
    short, long = make_req(0, 3, 5), make_req(1, 30, 2)
    s.add_request(short)
    s.add_request(long)
    so = s.schedule()
    assert so.num_scheduled_tokens == {"0": 3, "1": 5}  # the long prompt gets what is left
    s.update_from_output(so, *fake_run(so))
    assert short.num_output_tokens == 1 and long.num_output_tokens == 0
    chunks = []
    while long.num_output_tokens == 0:
        so = s.schedule()
        assert so.num_scheduled_tokens["0"] == 1  # the decode is never skipped for the prompt
        chunks.append(so.num_scheduled_tokens["1"])
        s.update_from_output(so, *fake_run(so))
    assert chunks == [7, 7, 7, 4] and long.num_computed_tokens == 30


def test_threshold_caps_one_requests_chunk():
    s = make_sched(budget=16, num_blocks=64, threshold=6)
    a, b = make_req(0, 20, 1), make_req(1, 20, 1)
    s.add_request(a)
    s.add_request(b)
    so = s.schedule()
    assert so.num_scheduled_tokens == {"0": 6, "1": 6}  # b starts at once instead of waiting


def test_chunking_off_is_m4():
    s = make_sched(budget=16, num_blocks=64, chunked=False)
    s.add_request(make_req(0, 20, 1))
    assert s.schedule().is_empty  # a prompt larger than the budget is never admitted


def test_preemption_mid_prefill_resets_the_prompt():
    # 5 blocks of 4 tokens: a decoding request grows until the mid-prefill newcomer is preempted.
    s = make_sched(budget=6, num_blocks=5, threshold=2)
    old, new = make_req(0, 4, 12), make_req(1, 16, 1)
    s.add_request(old)
    s.add_request(new)
    seen_preempted_mid_prefill = False
    while s.has_unfinished_requests():
        was = (new.status, new.num_computed_tokens)
        so = s.schedule()
        if "1" in so.preempted_req_ids and 0 < was[1] < new.num_prompt_tokens:
            seen_preempted_mid_prefill = True
            assert new.num_computed_tokens == 0 and new in s.waiting
            assert new.num_output_tokens == 0
        s.update_from_output(so, *fake_run(so))
    assert seen_preempted_mid_prefill
    assert old.num_output_tokens == 12 and new.num_output_tokens == 1
    assert s.kv_cache_manager.block_pool.num_free_blocks == 5


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 8))
    reqs = [(draw(st.integers(1, 40)), draw(st.integers(1, 8))) for _ in range(n)]
    arrivals = [draw(st.integers(0, 6)) for _ in range(n)]
    budget = draw(st.integers(1, 48))
    threshold = draw(st.one_of(st.none(), st.integers(1, 48)))
    num_blocks = draw(st.integers(13, 40))  # >= one max-length sequence (48 tokens / 4)
    max_seqs = draw(st.integers(1, 6))
    return reqs, arrivals, budget, threshold, num_blocks, max_seqs


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_scheduler_invariants(w):
    reqs_spec, arrivals, budget, threshold, num_blocks, max_seqs = w
    if threshold is not None:
        threshold = min(threshold, budget)
    s = make_sched(budget, num_blocks, threshold, max_seqs=max_seqs, max_len=48)
    reqs = [make_req(i, p, m) for i, (p, m) in enumerate(reqs_spec)]
    step = 0
    expected: dict[str, list[int]] = {r.request_id: [] for r in reqs}
    while step < 2000:
        for r, t in zip(reqs, arrivals):
            if t == step:
                s.add_request(r)
        if not s.has_unfinished_requests() and step > max(arrivals):
            break
        running_before = [r for r in s.running]
        so = s.schedule()
        total = so.total_num_scheduled_tokens
        # Every running request that is not finished is scheduled before any waiting one is.
        admitted = [r for r in so.scheduled if r not in running_before]
        if admitted:
            stayed = [r for r in running_before if r in s.running]
            assert all(r in so.scheduled for r in stayed), (
                "a waiting prompt displaced a running one"
            )
        assert total <= budget
        assert len(so.scheduled) <= max_seqs
        for r in so.scheduled:
            n = so.num_scheduled_tokens[r.request_id]
            assert n >= 1
            if threshold is not None:
                assert n <= threshold
            assert r.num_computed_tokens + n <= r.num_tokens
        ids, tokens = fake_run(so)
        partial = {r.request_id for r in so.scheduled} - set(ids)
        before = {r.request_id: r.num_output_tokens for r in so.scheduled}
        s.update_from_output(so, ids, tokens)
        for r in so.scheduled:
            if r.request_id in partial:
                assert r.num_output_tokens == before[r.request_id]  # no token for a partial prefill
            else:
                expected[r.request_id].append(tokens[0])
        step += 1
    assert not s.has_unfinished_requests(), "did not drain"
    for r in reqs:
        assert r.status is RequestStatus.FINISHED_LENGTH
        assert r.output_token_ids == expected[r.request_id]  # preemption lost nothing
        assert r.num_output_tokens == r.sampling_params.max_tokens or r.num_tokens >= 48
    assert s.kv_cache_manager.block_pool.num_free_blocks == num_blocks
    assert not s.kv_cache_manager.req_to_blocks


# ----------------------------------------------------------------------------- engine end to end

PROMPTS = [
    "The for statement is used to iterate over the elements of a sequence. " * 3,
    "Hi",
    "A list comprehension provides a concise way to create lists.",
]
MAX_TOKENS = [12, 20, 9]


def generate(model, max_tokens=MAX_TOKENS, **kw):
    engine = LLMEngine(EngineConfig(model=str(model), device="cpu", dtype="float32",
                                    max_model_len=128, **kw))  # fmt: skip
    ids = [
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
        for p, m in zip(PROMPTS, max_tokens)
    ]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    pool = engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks
    return [done[i].token_ids for i in ids], engine, [done[i] for i in ids]


@pytest.fixture(scope="module")
def unchunked(tiny_model):  # tiny Qwen2 and Qwen3
    return tiny_model, generate(tiny_model, enable_chunked_prefill=False)[0]


@pytest.mark.parametrize("budget", [16, 64, 512, None])
def test_greedy_tokens_equal_chunking_off(unchunked, budget):
    model, want = unchunked
    tokens, engine, outs = generate(model, max_num_batched_tokens=budget)
    assert tokens == want
    assert all(
        s.num_tokens <= engine.scheduler_config.max_num_batched_tokens for s in engine.stats.steps
    )
    if budget == 16:  # the long prompt really was chunked, and gave no token before its end
        long_steps = [s for s in engine.stats.steps if "0" in s.prefill_req_ids]
        assert len(long_steps) > 1
        assert outs[0].metrics.num_output_tokens == MAX_TOKENS[0]
    for o in outs:  # per-token timestamps: one per output token, in order
        t = o.metrics.token_times
        assert len(t) == len(o.token_ids) and t == sorted(t) and len(o.metrics.itl) == len(t) - 1


def test_triton_backend_chunked_equals_chunking_off(unchunked):
    """The Triton kernels (interpreter on a CPU) read earlier chunks' K/V from the paged cache.
    Four tokens each (greedy: the first four of the longer run) keep the interpreter quick; the
    long prompt's chunks still run beside the short prompts' decodes."""
    pytest.importorskip("triton")
    model, want = unchunked
    kw = dict(max_tokens=[4] * len(PROMPTS), max_num_batched_tokens=16, attention_backend="triton")
    assert generate(model, **kw)[0] == [w[:4] for w in want]


def test_sample_idx_is_the_per_request_rule(tiny_qwen3):
    """The rows that sample, found with numpy by each ``InputBatch.prepare``, are the requests
    whose tokens are all computed after the step, in every step (chunks and decodes mixed)."""
    engine = LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=128,
                                    max_num_batched_tokens=16))  # fmt: skip
    runner, partial_steps = engine.runner, []
    forward = runner._forward

    def checked_forward(so):
        hidden = forward(so)
        want = [
            i
            for i, r in enumerate(so.scheduled)
            if r.num_computed_tokens + so.num_scheduled_tokens[r.request_id] >= r.num_tokens
        ]
        assert runner.input_batch.sample_idx.tolist() == want
        partial_steps.append(len(want) < len(so.scheduled))
        return hidden

    runner._forward = checked_forward
    for p, m in zip(PROMPTS, MAX_TOKENS):
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert any(partial_steps) and not all(partial_steps)


def test_partial_prefill_rows_are_not_sampled_and_keep_their_rng(tiny_qwen3):
    """A seeded random request gives the same tokens chunked or not: its RNG never advanced on
    a partial prefill (and no other row's randomness leaked into it)."""
    params = SamplingParams(temperature=1.0, seed=123, max_tokens=8, ignore_eos=True)

    def run(**kw):
        engine = LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=128,
                                        **kw))  # fmt: skip
        engine.add_request(PROMPTS[0], params, request_id="r")
        sampled_per_step = []
        outs = []
        while engine.has_unfinished_requests():
            outs += engine.step()
            sampled_per_step.append(list(engine.last_runner_output.req_ids))
        return outs[0].token_ids, sampled_per_step

    want, _ = run(enable_chunked_prefill=False)
    got, sampled = run(max_num_batched_tokens=16)
    assert got == want
    assert sampled[0] == [] and sampled[-1] == ["r"]  # the first chunk produced no token


def test_engine_summary_has_itl_percentiles(tiny_qwen3):
    _, engine, _ = generate(tiny_qwen3, max_num_batched_tokens=16)
    summary = engine.stats.summary()
    assert 0 <= summary["itl_p50"] <= summary["itl_p99"] <= summary["itl_max"]


# ----------------------------------------------------------------------------- bad input

BAD = [
    ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be an integer >= 1"),
    ({"max_chunk_size": 0}, "max_chunk_size must be an integer >= 1"),
    ({"max_chunk_size": 2.5}, "max_chunk_size must be an integer >= 1"),
    ({"max_num_batched_tokens": 8}, "max_num_batched_tokens=8 is smaller than block_size=16"),
    ({"max_chunk_size": 8, "block_size": 4}, None),  # fine: 8 >= 4
    ({"max_chunk_size": 4, "block_size": 8}, "max_chunk_size=4 is smaller than block_size=8"),
    ({"long_prefill_token_threshold": -1}, "long_prefill_token_threshold must be an integer >= 0"),
    ({"enable_chunked_prefill": "yes"}, "enable_chunked_prefill must be a bool"),
    (
        {"enable_chunked_prefill": False, "max_chunk_size": 64},
        "max_chunk_size needs enable_chunked_prefill=True",
    ),
]


@pytest.mark.parametrize("kw,message", BAD)
def test_bad_engine_options_name_the_field(kw, message):
    if message is None:
        EngineConfig(**kw)
        return
    with pytest.raises(ValueError, match=message):
        EngineConfig(**kw)


RESOLVE_BAD = [
    ({"max_chunk_size": 200}, "max_chunk_size=200 is larger than max_model_len=128"),
    (
        {"max_num_batched_tokens": 64, "max_chunk_size": 100},
        "max_chunk_size=100 is larger than max_num_batched_tokens=64",
    ),
    (
        {"max_num_batched_tokens": 64, "max_chunk_size": 32, "long_prefill_token_threshold": 16},
        "max_chunk_size=32 and long_prefill_token_threshold=16 are the same setting",
    ),
    (
        {"max_num_batched_tokens": 64, "long_prefill_token_threshold": 100},
        "long_prefill_token_threshold=100 is larger than max_num_batched_tokens=64",
    ),
    (
        {"enable_chunked_prefill": False, "max_num_batched_tokens": 64},
        "max_num_batched_tokens=64 is smaller than max_model_len=128",
    ),
]


@pytest.mark.parametrize("kw,message", RESOLVE_BAD)
def test_bad_scheduler_options_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        resolve_scheduler_config(EngineConfig(**kw).scheduler_config, 128)


def test_budget_mapping():
    def resolved(**kw):
        c = resolve_scheduler_config(EngineConfig(**kw).scheduler_config, 128)
        return c.max_num_batched_tokens, c.long_prefill_token_threshold, c.enable_chunked_prefill

    assert resolved() == (8192, None, True)  # m5: chunked by default, vLLM's budget
    assert resolved(max_chunk_size=64) == (64, None, True)  # the seed's spelling of the budget
    assert resolved(max_num_batched_tokens=256) == (256, None, True)
    # both: max_num_batched_tokens is the budget, max_chunk_size caps one request's chunk
    assert resolved(max_num_batched_tokens=256, max_chunk_size=64) == (256, 64, True)
    assert resolved(max_num_batched_tokens=256, long_prefill_token_threshold=64) == (256, 64, True)
    assert resolved(enable_chunked_prefill=False) == (8192, None, False)


@pytest.mark.gpu
def test_gpu_chunked_with_graphs_equals_chunking_off(tiny_qwen3):
    """On the GPU (``-m gpu``): compiled kernels, decode graphs between chunked steps, fp32."""
    kw = dict(device="cuda", dtype="float32", max_model_len=128, attention_backend="triton")

    def run(**extra):
        engine = LLMEngine(EngineConfig(model=str(tiny_qwen3), **kw, **extra))
        ids = [
            engine.add_request(p, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
            for p, m in zip(PROMPTS, MAX_TOKENS)
        ]
        done = {}
        while engine.has_unfinished_requests():
            done.update((o.request_id, o.token_ids) for o in engine.step())
        return [done[i] for i in ids]

    assert run(max_num_batched_tokens=16) == run(enable_chunked_prefill=False)
