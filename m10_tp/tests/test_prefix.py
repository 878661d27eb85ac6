"""m6: prefix caching. The hash chain, the block pool (LRU, lazy eviction, shared blocks), the
cache manager's hits, random interleavings with a fake runner that checks every hit holds the right
K/V (hypothesis), and end to end: greedy tokens and logits with prefix caching on equal off.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from folovllm import LLM, EngineConfig, SamplingParams
from folovllm.config import SchedulerConfig
from folovllm.core.block_pool import BlockPool
from folovllm.core.kv_cache_manager import KVCacheManager
from folovllm.core.kv_cache_utils import ROOT_HASH, hash_block_tokens, update_block_hashes
from folovllm.core.sched.scheduler import Scheduler
from folovllm.engine.llm_engine import LLMEngine
from folovllm.request import Request, RequestStatus

BS = 4


def req(i, tokens, max_tokens=4, salt=None) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(str(i), None, list(tokens), params, cache_salt=salt)


# ----------------------------------------------------------------------------- the hash chain


def test_hash_is_sha256_of_a_stable_encoding():
    want = hashlib.sha256(ROOT_HASH)
    want.update((3).to_bytes(4, "little"))
    want.update(b"".join(t.to_bytes(8, "little") for t in (1, 2, 3)))
    assert hash_block_tokens(None, [1, 2, 3]) == want.digest()  # the same in every process


def test_hash_depends_on_parent_position_and_extra_keys():
    a = hash_block_tokens(None, [1, 2, 3, 4])
    assert a == hash_block_tokens(None, [1, 2, 3, 4])
    assert hash_block_tokens(a, [1, 2, 3, 4]) != a  # the same tokens one block later
    b = hash_block_tokens(None, [9, 9, 9, 9])
    assert hash_block_tokens(a, [5, 6, 7, 8]) != hash_block_tokens(b, [5, 6, 7, 8])
    assert hash_block_tokens(None, [1, 2, 3, 4], ("salt",)) != a
    assert hash_block_tokens(None, [1, 2, 3, 4], ("salt",)) != hash_block_tokens(
        None, [1, 2, 3, 4], ("pepper",)
    )


def test_request_hashes_cover_full_blocks_only_and_grow_incrementally():
    r = req(0, range(1, 10))  # 9 tokens: two full blocks and one partial
    hashes = update_block_hashes(r, BS)
    assert len(hashes) == 2
    first = list(hashes)
    for t in (10, 11):
        r.append_output_token(t)
    assert update_block_hashes(r, BS) == first  # 11 tokens: still two full blocks
    r.append_output_token(12)
    assert update_block_hashes(r, BS)[:2] == first and len(r.block_hashes) == 3
    assert r.block_hashes[2] == hash_block_tokens(first[1], [9, 10, 11, 12])
    salted = update_block_hashes(req(1, range(1, 10), salt="tenant-a"), BS)
    assert all(x != y for x, y in zip(salted, first))  # the salt reaches every block via the chain


@pytest.mark.parametrize("salt", [None, "tenant-a"])
def test_incremental_hashes_equal_the_reference_chain(salt):
    """update_block_hashes encodes a run of blocks at once; it must give hash_block_tokens'
    chain exactly, whatever the steps at which blocks became full."""
    tokens = [(37 * i) % 5000 - 7 for i in range(4 * BS + 3)]  # negative ids encode too
    r = req(2, tokens[:5], salt=salt)
    update_block_hashes(r, BS)
    for t in tokens[5:]:
        r.append_output_token(t)
        if t % 3:
            update_block_hashes(r, BS)
    update_block_hashes(r, BS)
    want, parent = [], None
    for i in range(len(tokens) // BS):
        extra = (salt,) if i == 0 and salt is not None else None
        parent = hash_block_tokens(parent, tokens[i * BS : (i + 1) * BS], extra)
        want.append(parent)
    assert r.block_hashes == want


# ----------------------------------------------------------------------------- the block pool


def test_free_queue_is_lru_and_a_hit_leaves_it_from_the_middle():
    pool = BlockPool(6)
    a = pool.allocate(6)
    pool.free([a[3], a[1], a[5]])
    assert [b.block_id for b in pool.free_queue] == [3, 1, 5]
    pool.cache_full_blocks([a[1]], [b"h1"])
    assert pool.get_cached_block(b"h1") is a[1]  # kept its hash while free (lazy eviction)
    pool.touch([a[1]])
    assert [b.block_id for b in pool.free_queue] == [3, 5] and a[1].ref_count == 1
    assert pool.allocate(1)[0].block_id == 3  # least recently freed first


def test_a_block_loses_its_hash_only_when_reused():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache_full_blocks([a, b], [b"ha", b"hb"])
    pool.free([b, a])
    assert pool.get_cached_block(b"ha") is a and pool.num_free_blocks == 2
    (x,) = pool.allocate(1)
    assert x is b and b.block_hash is None and pool.get_cached_block(b"hb") is None
    assert pool.get_cached_block(b"ha") is a
    assert not pool.reset_prefix_cache()  # refused while a block is in use
    pool.free([x])
    assert pool.reset_prefix_cache() and pool.get_cached_block(b"ha") is None


def test_shared_blocks_are_ref_counted_and_never_go_below_zero():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    pool.touch([a])
    assert a.ref_count == 2
    pool.free([a])
    assert a.ref_count == 1 and pool.num_free_blocks == 2
    pool.free([a])
    assert a.ref_count == 0 and pool.num_free_blocks == 3
    with pytest.raises(RuntimeError, match="freed more times"):
        pool.free([a])


def test_a_request_frees_its_tail_first():
    kvm = KVCacheManager(8, BS, enable_caching=True)
    r = req(0, range(1, 14))  # 4 blocks
    kvm.allocate_slots(r, 13)
    ids = list(kvm.get_block_ids("0"))
    kvm.free(r)
    assert [b.block_id for b in kvm.block_pool.free_queue][-4:] == ids[::-1]


# ----------------------------------------------------------------------------- the cache manager


def admit(kvm, r):
    hits, n = kvm.get_computed_blocks(r)
    assert kvm.allocate_slots(r, r.num_tokens - n, hits) is not None
    r.num_computed_tokens = r.num_tokens
    return n


def test_hits_share_blocks_and_the_last_token_is_always_computed():
    kvm = KVCacheManager(16, BS, enable_caching=True)
    a = req("a", range(1, 9))  # exactly two full blocks
    assert admit(kvm, a) == 0
    b = req("b", range(1, 9))
    assert admit(kvm, b) == 4  # not 8: the last token's logits are needed
    assert kvm.get_block_ids("b")[0] == kvm.get_block_ids("a")[0]
    assert kvm.get_block_ids("b")[1] != kvm.get_block_ids("a")[1]
    c = req("c", [*range(1, 9), 50])
    assert admit(kvm, c) == 8
    assert kvm.block_pool.blocks[kvm.get_block_ids("a")[0]].ref_count == 3
    assert admit(kvm, req("d", range(1, 9), salt="other")) == 0  # another tenant
    assert admit(kvm, req("e", [9, *range(2, 9)])) == 0  # differs in the first block
    assert (kvm.prefix_cache_hits, kvm.prefix_cache_queries) == (12, 41)
    for r in (a, b, c):
        kvm.free(r)
    assert kvm.block_pool.num_free_blocks == 16 - 4  # d and e still hold two blocks each


def test_a_partial_block_is_never_cached():
    kvm = KVCacheManager(16, BS, enable_caching=True)
    admit(kvm, req("a", range(1, 7)))  # 6 tokens: 1 full block
    assert len(kvm.block_pool.cached_block_hash_to_block) == 1
    assert admit(kvm, req("b", range(1, 12))) == 4


def test_caching_off_is_m5():
    kvm = KVCacheManager(16, BS)
    admit(kvm, req("a", range(1, 9)))
    assert admit(kvm, req("b", range(1, 9))) == 0
    assert not kvm.block_pool.cached_block_hash_to_block


# ----------------------------------------------------------------------------- random interleavings


def fake_run(so, kv: dict, block_size: int):
    """Write each computed token's identity (its whole prefix) into its slot, after checking that
    every earlier slot the request reads (cache hits included) holds its own prefix."""
    for r in so.scheduled:
        table, tokens = so.block_tables[r.request_id], r.all_token_ids
        end = r.num_computed_tokens + so.num_scheduled_tokens[r.request_id]
        for p in range(end):
            slot = table[p // block_size] * block_size + p % block_size
            if p >= r.num_computed_tokens:
                kv[slot] = tuple(tokens[: p + 1])
            else:
                assert kv.get(slot) == tuple(tokens[: p + 1]), f"{r} reads a wrong K/V at {p}"
    ids = [
        r.request_id
        for r in so.scheduled
        if r.num_computed_tokens + so.num_scheduled_tokens[r.request_id] >= r.num_tokens
    ]
    return ids, [7] * len(ids)


def check_pool(s: Scheduler) -> None:
    kvm = s.kv_cache_manager
    pool = kvm.block_pool
    held: dict[int, int] = {}
    for blocks in kvm.req_to_blocks.values():
        for b in blocks:
            held[b.block_id] = held.get(b.block_id, 0) + 1
    free = {b.block_id for b in pool.free_queue}
    for b in pool.blocks:
        assert b.ref_count == held.get(b.block_id, 0) >= 0
        assert (b.block_id in free) == (b.ref_count == 0)
    for h, b in pool.cached_block_hash_to_block.items():
        assert b.block_hash == h


def test_a_preempted_request_resumes_from_its_own_cached_blocks():
    cfg = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, enable_chunked_prefill=True)
    s = Scheduler(cfg, KVCacheManager(8, BS, enable_caching=True), 32)
    r, kv = req(0, range(1, 10), max_tokens=8), {}
    s.add_request(r)
    for _ in range(4):  # the prompt, then 3 decodes: 12 tokens, 3 full blocks
        so = s.schedule()
        s.update_from_output(so, *fake_run(so, kv, BS))
    s._preempt(r)
    assert r.num_computed_tokens == 0 and s.kv_cache_manager.block_pool.num_free_blocks == 8
    so = s.schedule()
    assert r.num_computed_tokens == 12 and so.num_scheduled_tokens["0"] == r.num_tokens - 12
    s.update_from_output(so, *fake_run(so, kv, BS))  # fake_run checks the K/V it reads


@st.composite
def interleavings(draw):
    prefixes = [[draw(st.integers(1, 3))] * draw(st.integers(0, 12)) for _ in range(2)]
    suffix = st.builds(lambda t, n: [t] * n, st.integers(1, 3), st.integers(1, 6))
    reqs = [
        (draw(st.sampled_from(prefixes)) + draw(suffix), draw(st.integers(1, 6)))
        for _ in range(draw(st.integers(1, 7)))
    ]
    actions = draw(st.lists(st.tuples(st.sampled_from("sssap"), st.integers(0, 6)), max_size=80))
    return reqs, actions, draw(st.integers(1, 24)), draw(st.integers(6, 14))


@settings(max_examples=120, deadline=None)
@given(interleavings())
def test_random_add_step_abort_preempt_never_leaks(w):
    reqs_spec, actions, budget, num_blocks = w
    cfg = SchedulerConfig(
        max_num_seqs=4, max_num_batched_tokens=budget, enable_chunked_prefill=True
    )
    s = Scheduler(cfg, KVCacheManager(num_blocks, BS, enable_caching=True), 24)
    reqs = [req(i, p, m) for i, (p, m) in enumerate(reqs_spec)]
    pending, kv = list(reqs), {}

    def step():
        so = s.schedule()
        s.update_from_output(so, *fake_run(so, kv, BS))
        check_pool(s)

    for kind, k in actions:
        if kind == "s":
            if pending and k % 2 == 0:
                s.add_request(pending.pop(0))
            step()
        elif kind == "a":
            live = [r for r in reqs if r not in pending and not r.is_finished]
            if live:
                s.finish_requests([live[k % len(live)]], RequestStatus.FINISHED_ABORTED)
                check_pool(s)
        elif s.running:
            s._preempt(s.running[k % len(s.running)])
            check_pool(s)
    for r in pending:
        s.add_request(r)
    for _ in range(500):
        if not s.has_unfinished_requests():
            break
        step()
    assert not s.has_unfinished_requests()
    for r in reqs:
        assert r.status in (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)
    assert s.kv_cache_manager.block_pool.num_free_blocks == num_blocks
    assert not s.kv_cache_manager.req_to_blocks


# ----------------------------------------------------------------------------- end to end


def engine(model, **kw) -> LLMEngine:
    cfg = EngineConfig(model=str(model), device="cpu", dtype="float32", max_model_len=64,
                       block_size=BS, **kw)  # fmt: skip
    return LLMEngine(cfg, keep_logits=True)


def test_a_full_hit_recomputes_the_last_token_with_the_right_logits(tiny_qwen3):
    p16, p17 = list(range(5, 21)), list(range(5, 22))  # 4 full blocks; 4 full blocks + 1 token
    greedy = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)

    def first_logits(eng, prompt):
        eng.add_request(prompt, greedy)
        while eng.has_unfinished_requests():
            eng.step()
        return eng.last_runner_output.logits[0], eng.stats.steps[-1].num_tokens

    off = engine(tiny_qwen3)
    cold16, cold17 = first_logits(off, p16)[0], first_logits(off, p17)[0]
    eng = engine(tiny_qwen3, enable_prefix_caching=True)
    assert first_logits(eng, p16)[1] == 16  # cold: caches its 4 full blocks
    warm16, n16 = first_logits(eng, p16)
    warm17, n17 = first_logits(eng, p17)
    # Entirely cached, but its last token must be computed: its whole last block is (as in vLLM).
    assert (n16, n17) == (4, 1)
    assert eng.prefix_cache_stats()["hits"] == 12 + 16
    torch.testing.assert_close(warm16, cold16, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(warm17, cold17, atol=1e-4, rtol=1e-4)


SHARED = "The for statement is used to iterate over the elements of a sequence. "
PROMPTS = [SHARED + "Hi", SHARED * 2, SHARED + "A list comprehension", SHARED + "Hi"]
MAX_TOKENS = [10, 6, 8, 5]


def generate_twice(model, **kw):
    llm = LLM(model=str(model), device="cpu", dtype="float32", max_model_len=64, block_size=BS, **kw)  # fmt: skip
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    runs = [[o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)] for _ in range(2)]
    pool = llm.engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks
    return runs, llm.engine


@pytest.fixture(scope="module")
def caching_off(tiny_model):  # tiny Qwen2 and Qwen3
    runs, _ = generate_twice(tiny_model)
    assert runs[0] == runs[1]
    return tiny_model, runs[0]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"max_num_batched_tokens": 8},  # chunks continue after the hit
        {"max_num_batched_tokens": 16, "num_gpu_blocks": 16},  # preemption with shared blocks
    ],
    ids=["whole", "budget8", "preempt"],
)
def test_greedy_tokens_equal_prefix_caching_off(caching_off, kw):
    model, want = caching_off
    runs, eng = generate_twice(model, enable_prefix_caching=True, **kw)
    assert runs == [want, want]  # the second run hits the first run's blocks
    stats = eng.prefix_cache_stats()
    assert 0 < stats["hits"] < stats["queries"]
    if "num_gpu_blocks" in kw:
        assert eng.scheduler.num_preemptions > 0
    assert (
        eng.reset_prefix_cache() and not eng.kv_cache_manager.block_pool.cached_block_hash_to_block
    )


def test_prefix_caching_option():
    with pytest.raises(ValueError, match="enable_prefix_caching must be a bool"):
        EngineConfig(enable_prefix_caching="yes")
    with pytest.raises(ValueError, match="needs enable_paged_kv"):
        EngineConfig(enable_prefix_caching=True, enable_paged_kv=False)
    assert EngineConfig(enable_prefix_caching=True).cache_config.enable_prefix_caching
    assert not EngineConfig().cache_config.enable_prefix_caching


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_gpu_prefix_caching_with_graphs_equals_off(tiny_qwen3, backend):
    """On the GPU (``-m gpu``): compiled kernels, decode graphs (a full hit's one-token step is
    decode-shaped and replays one), chunks after the hit, fp32."""
    kw = dict(device="cuda", dtype="float32", max_model_len=64, block_size=16)
    kw.update(attention_backend=backend, max_num_batched_tokens=16)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    want = LLM(model=str(tiny_qwen3), **kw).generate(PROMPTS, params, use_tqdm=False)
    llm = LLM(model=str(tiny_qwen3), enable_prefix_caching=True, **kw)
    for _ in range(2):
        got = llm.generate(PROMPTS, params, use_tqdm=False)
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert llm.engine.prefix_cache_stats()["hits"] > 0
