"""m4 on the CPU: backend selection, the Triton backend end to end (interpreter), the persistent
input batch, and the CUDA-graph bucket / padding logic (graphs themselves run in tests/test_gpu.py).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from folovllm import EngineConfig, SamplingParams
from folovllm.attention.backends import resolve_backend_name
from folovllm.core.sched.output import SchedulerOutput
from folovllm.engine.llm_engine import LLMEngine
from folovllm.request import Request
from folovllm.worker.cuda_graph import bucket_for, capture_sizes, token_capture_sizes
from folovllm.worker.input_batch import InputBatch

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPTS = ["The for statement", "A list comprehension provides", "Hello"]


def generate(model, max_model_len: int = 64, **kw) -> list[list[int]]:
    engine = LLMEngine(
        EngineConfig(model=str(model), device="cpu", max_model_len=max_model_len, **kw)
    )
    generate.last_engine = engine
    ids = [engine.add_request(p, GREEDY) for p in PROMPTS]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    assert engine.kv_cache_manager.block_pool.num_free_blocks == engine.runner.num_blocks
    return [done[i] for i in ids]


def test_triton_backend_gives_the_torch_tokens(tiny_model):
    """fp32, the interpreter: the same greedy tokens as the torch reference (prefill + decode)."""
    pytest.importorskip("triton")
    assert generate(tiny_model, attention_backend="triton") == generate(
        tiny_model, attention_backend="torch"
    )


def test_triton_backend_with_preemption(tiny_qwen3):
    """Preemption frees rows in the persistent batch; recomputed requests still agree."""
    pytest.importorskip("triton")
    small = dict(max_model_len=16, num_gpu_blocks=4, block_size=4, attention_backend="triton")
    tokens = generate(tiny_qwen3, **small)
    assert generate.last_engine.scheduler.num_preemptions > 0
    assert tokens == generate(tiny_qwen3, max_model_len=16, attention_backend="torch")


@pytest.mark.parametrize(
    "name,device,block_size,flash,want",
    [
        ("auto", "cpu", 16, None, "torch"),
        ("auto", "cuda", 16, None, "triton"),
        ("auto", "cuda", 256, 2, "flash"),
        ("auto", "cuda", 16, 2, "triton"),  # flash-attn 2's paged path needs 256-token blocks
        ("auto", "cuda", 16, 4, "flash+triton"),  # flash-attn 4: prefill/mixed; Triton: decode
        ("auto", "cuda", 24, 4, "triton"),  # flash-attn 4 wants blocks of a multiple of 16
        ("flash", "cuda", 16, 4, "flash"),
        ("flash", "cuda", 16, None, "triton"),  # not installed: our kernels, and the log says so
        ("torch", "cuda", 16, 4, "torch"),
    ],
)
def test_backend_resolution(monkeypatch, name, device, block_size, flash, want):
    import folovllm.attention.backends as backends

    monkeypatch.setattr(backends, "flash_attn_version", lambda: flash)
    monkeypatch.setattr(backends, "triton_available", lambda device_type: True)
    assert resolve_backend_name(name, device, block_size, 128, torch.bfloat16)[0] == want


def test_backend_errors_name_the_field(monkeypatch):
    import folovllm.attention.backends as backends

    monkeypatch.setattr(backends, "flash_attn_version", lambda: 2)
    with pytest.raises(ValueError, match="block_size to be a multiple of 256"):
        resolve_backend_name("flash", "cuda", 16)
    monkeypatch.setattr(backends, "flash_attn_version", lambda: 4)
    for args, field in [
        ((24, 128, torch.bfloat16), "block_size must be a multiple of 16, got 24"),
        ((16, 512, torch.bfloat16), "head_dim must be a multiple of 8 in 8..256, got 512"),
        ((16, 128, torch.float32), "dtype must be float16 or bfloat16, got torch.float32"),
    ]:
        with pytest.raises(ValueError, match=f"uses flash-attn 4: {field}"):
            resolve_backend_name("flash", "cuda", *args)
    monkeypatch.setattr(backends, "triton_available", lambda device_type: False)
    with pytest.raises(ValueError, match="attention_backend='triton' needs"):
        resolve_backend_name("triton", "cpu", 16)
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        EngineConfig(attention_backend="xformers")


def test_only_checked_backends_replay_cuda_graphs():
    from folovllm.attention.backends.flash_attn import FlashAttentionBackend, FlashTritonBackend
    from folovllm.attention.backends.torch_attn import TorchAttentionBackend
    from folovllm.attention.backends.triton_attn import TritonAttentionBackend

    assert TritonAttentionBackend.supports_full_cuda_graphs
    assert not FlashAttentionBackend.supports_cuda_graphs  # flash-attn 4 compiles per shape (JIT)
    assert FlashTritonBackend.supports_cuda_graphs  # its decode steps are Triton's
    assert not FlashTritonBackend.supports_full_cuda_graphs
    assert not TorchAttentionBackend.supports_cuda_graphs


def _fa4_stand_in(calls: list):
    """flash-attn 4's ``flash_attn.cute.flash_attn_varlen_func`` signature (4.0.0b40), computing
    the answer with torch from the paged cache, with FA4's own checks on what it is given."""

    def flash_attn_varlen_func(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None,
                               max_seqlen_q=None, max_seqlen_k=None, min_seqlen_k=None,
                               seqused_q=None, seqused_k=None, gather_kv_indices=None,
                               page_table=None, softmax_scale=None, causal=False,
                               return_lse=False, **rest):  # fmt: skip
        assert cu_seqlens_k is None and page_table.dtype == torch.int32 and causal
        assert cu_seqlens_q.dtype == seqused_k.dtype == torch.int32
        assert seqused_k.shape == (page_table.shape[0],) == (cu_seqlens_q.numel() - 1,)
        calls.append(max_seqlen_q)
        out, qsl, group = torch.zeros_like(q), cu_seqlens_q.tolist(), q.shape[1] // k.shape[2]
        for i, n in enumerate(seqused_k.tolist()):
            qi = q[qsl[i] : qsl[i + 1]]
            if n == 0 or len(qi) == 0:
                continue
            kk, vv = (c[page_table[i].long()].flatten(0, 1)[:n].repeat_interleave(group, 1)
                      for c in (k, v))  # fmt: skip
            s = torch.einsum("qhd,khd->hqk", qi, kk) * softmax_scale
            pos = torch.arange(n - len(qi), n)[:, None]  # bottom-right causal
            s = s.masked_fill(torch.arange(n)[None, :] > pos, float("-inf"))
            out[qsl[i] : qsl[i + 1]] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vv)
        return out, None

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_varlen_func = flash_attn_varlen_func
    return cute


@pytest.mark.parametrize("backend", ["flash", "flash+triton"])
def test_flash_attn_4_stand_in_gives_the_torch_tokens(tiny_qwen3, monkeypatch, backend):
    """The flash backend's plumbing into flash-attn 4 end to end (fp32, CPU): page_table,
    seqused_k, cu_seqlens_q, scale and causal reach a stand-in that attends from the paged cache.
    ``flash+triton`` (auto with flash-attn 4) sends only prefill/mixed steps to flash-attn 4."""
    import folovllm.attention.backends as backends

    pytest.importorskip("triton")
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", _fa4_stand_in(calls))
    monkeypatch.setattr(backends, "resolve_backend_name", lambda *a, **k: (backend, "stand-in"))
    tokens = generate(tiny_qwen3, attention_backend="flash")
    assert generate.last_engine.runner.attn_backend.get_name() == backend
    monkeypatch.undo()
    assert tokens == generate(tiny_qwen3, attention_backend="torch")
    decode_calls = [n for n in calls if n == 1]
    assert calls and (decode_calls if backend == "flash" else not decode_calls)


def test_flash_backend_calls_flash_attn_with_the_paged_cache(monkeypatch):
    """Our plumbing into flash-attn 2 (not installed here): a stand-in module with flash-attn's
    signature computes the answer with the torch reference, so a wrong argument fails."""
    from folovllm.attention.backends.flash_attn import FlashAttentionBackend
    from folovllm.attention.backends.triton_attn import TritonAttentionMetadata

    calls = {}

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               softmax_scale, causal, block_table):  # fmt: skip
        calls.update(cu_seqlens_k=cu_seqlens_k.tolist(), causal=causal, max_seqlen_q=max_seqlen_q)
        out = torch.empty_like(q)
        qsl = cu_seqlens_q.tolist()
        lens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
        for i, n in enumerate(lens):
            kk = k[block_table[i].long()].flatten(0, 1)[:n].repeat_interleave(2, 1)
            vv = v[block_table[i].long()].flatten(0, 1)[:n].repeat_interleave(2, 1)
            qi = q[qsl[i] : qsl[i + 1]]
            s = torch.einsum("qhd,khd->hqk", qi, kk) * softmax_scale
            pos = torch.arange(n - len(qi), n)[:, None]
            s = s.masked_fill(torch.arange(n)[None, :] > pos, float("-inf"))
            out[qsl[i] : qsl[i + 1]] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vv)
        return out

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(
        flash_attn_varlen_func=flash_attn_varlen_func))  # fmt: skip
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(2, 4, 256, 1, 16, generator=g)
    q, k, v = (torch.randn(3, h, 16, generator=g) for h in (2, 1, 1))
    md = TritonAttentionMetadata(
        query_start_loc=torch.tensor([0, 2, 3], dtype=torch.int32),
        seq_lens=torch.tensor([2, 300], dtype=torch.int32),
        block_table=torch.tensor([[3, 0], [1, 2]], dtype=torch.int32),
        slot_mapping=torch.tensor([768, 769, 256 * 2 + 43], dtype=torch.int32),
        num_reqs=2,
        num_tokens=3,
        max_query_len=2,
    )
    out = FlashAttentionBackend.get_impl_cls()(2, 16, 0.25, 1).forward(q, k, v, cache, md)
    assert calls == {"cu_seqlens_k": [0, 2, 302], "causal": True, "max_seqlen_q": 2}
    assert torch.equal(cache[0].view(-1, 1, 16)[769], k[1])  # our KV write ran first
    # the decode row attends over all 300 keys, the last one just written
    kk = cache[0][[1, 2]].flatten(0, 1)[:300].repeat_interleave(2, 1)
    vv = cache[1][[1, 2]].flatten(0, 1)[:300].repeat_interleave(2, 1)
    ref = torch.einsum("hk,khd->hd", (torch.einsum("hd,khd->hk", q[2], kk) * 0.25).softmax(-1), vv)
    torch.testing.assert_close(out[2], ref)


def test_capture_sizes_and_buckets():
    assert capture_sizes(256)[:6] == [1, 2, 4, 8, 16, 32] and capture_sizes(256)[-1] == 256
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    assert capture_sizes(3) == [1, 2, 3]
    sizes = capture_sizes(64)
    assert [bucket_for(n, sizes) for n in (1, 3, 5, 9, 17, 64, 65)] == [1, 4, 8, 16, 32, 64, None]


def test_token_capture_sizes():
    sizes = token_capture_sizes(8192)
    assert sizes[:3] == [64, 128, 192] and 512 in sizes and 768 in sizes and 2560 in sizes
    assert sizes[-1] == 8192 and sizes == sorted(set(sizes))
    assert token_capture_sizes(100) == [64, 100] and token_capture_sizes(32) == [32]
    assert [bucket_for(n, sizes) for n in (1, 64, 65, 2049, 8192, 8193)] == [
        64,
        64,
        128,
        2560,
        8192,
        None,
    ]


def _req(rid: str, prompt: list[int], computed: int, out: list[int] = ()) -> Request:
    r = Request(rid, None, list(prompt), SamplingParams(max_tokens=8))
    for t in out:
        r.append_output_token(t)
    r.num_computed_tokens = computed
    return r


def test_input_batch_prepares_inputs_and_pads_for_graphs():
    ib = InputBatch(max_num_reqs=4, max_num_tokens=32, max_model_len=32, block_size=4,
                    device=torch.device("cpu"))  # fmt: skip
    a = _req("a", [5, 6, 7, 8, 9], 0)  # prefill of 5 tokens
    b = _req("b", [1, 2, 3], 3, out=[4])  # decode at position 3
    so = SchedulerOutput([a, b], {"a": 5, "b": 1}, {"a": [7, 2], "b": [5]})
    common, ids, pos, logits_idx = ib.prepare(so)
    assert ids.tolist() == [5, 6, 7, 8, 9, 4] and pos.tolist() == [0, 1, 2, 3, 4, 3]
    assert common.slot_mapping.tolist() == [28, 29, 30, 31, 8, 23]
    assert common.query_start_loc.tolist() == [0, 5, 6] and common.seq_lens.tolist() == [5, 4]
    assert common.block_table[:, :2].tolist() == [[7, 2], [5, 0]]
    assert logits_idx.tolist() == [4, 5] and common.max_query_len == 5

    # Next step: both decode; only the new token and the new block are appended to the rows.
    a.append_output_token(11)
    a.num_computed_tokens = 5
    b.append_output_token(12)
    b.num_computed_tokens = 4
    so = SchedulerOutput([b, a], {"a": 1, "b": 1}, {"a": [7, 2], "b": [5, 9]})
    common, ids, pos, logits_idx = ib.prepare(so, pad_to=4)
    assert ids.tolist() == [12, 11, 0, 0] and pos.tolist() == [4, 5, 0, 0]
    assert common.slot_mapping.tolist() == [36, 9, -1, -1]  # padding: no K/V write
    assert common.seq_lens.tolist() == [5, 6, 0, 0]  # padding: attention writes zeros
    assert common.query_start_loc.tolist() == [0, 1, 2, 3, 4] and common.num_reqs == 4
    assert logits_idx.tolist() == [0, 1]
    assert np.array_equal(ib.block_table[ib.req_to_row["b"], :2], [5, 9])

    ib.remove("a")  # finished or preempted: the row is free for the next request
    c = _req("c", [3], 0)
    ib.prepare(SchedulerOutput([c], {"c": 1}, {"c": [1]}))
    assert ib.req_to_row["c"] != ib.req_to_row["b"]
    assert len(ib.req_to_row) == 2


def test_mixed_step_padded_to_a_token_bucket_attends_the_same():
    """A mixed-step graph pads the tokens to its bucket and the requests to max_num_seqs + 1;
    the kernel (interpreter here) must give the real rows the unpadded result, padding zeros."""
    from folovllm.attention.ops.kv_cache import store_kv
    from folovllm.attention.ops.paged_attention import paged_attention

    torch.manual_seed(0)
    ib = InputBatch(max_num_reqs=3, max_num_tokens=32, max_model_len=32, block_size=4,
                    device=torch.device("cpu"))  # fmt: skip
    a = _req("a", list(range(1, 8)), 3)  # a prompt chunk of 4 after 3 cached tokens
    b = _req("b", [1, 2, 3], 3, out=[4])  # a decode
    so = SchedulerOutput([a, b], {"a": 4, "b": 1}, {"a": [2, 5], "b": [7]})
    heads, kv_heads, dim = 4, 2, 16
    cache = torch.randn(2, 8, 4, kv_heads, dim)

    def attend(**pad):
        common, ids, pos, _ = ib.prepare(so, **pad)
        n = common.slot_mapping.shape[0]
        q, k, v = (
            torch.randn(n, heads, dim),
            torch.randn(n, kv_heads, dim),
            torch.randn(n, kv_heads, dim),
        )
        torch.manual_seed(1)
        q[:5], k[:5], v[:5] = (
            torch.randn(5, heads, dim),
            torch.randn(5, kv_heads, dim),
            torch.randn(5, kv_heads, dim),
        )
        c = cache.clone()
        store_kv(k, v, c[0], c[1], common.slot_mapping)
        out = torch.full_like(q, float("nan"))
        paged_attention(q, c[0], c[1], out, common.query_start_loc, common.seq_lens,
                        common.block_table, dim**-0.5, num_seqs=common.num_reqs, num_tokens=n,
                        max_query_len=max(n, 2), min_query_len=1)  # fmt: skip
        return common, out, c

    plain, out_plain, c_plain = attend()
    padded, out_pad, c_pad = attend(pad_tokens_to=16)
    assert padded.num_reqs == 4 and padded.slot_mapping.shape[0] == 16
    assert padded.query_start_loc.tolist() == [0, 4, 5, 5, 16]  # padding: the last request
    assert padded.seq_lens.tolist() == [7, 4, 0, 0]
    assert padded.slot_mapping[5:].eq(-1).all()
    torch.testing.assert_close(out_pad[:5], out_plain)
    assert out_pad[5:].eq(0).all()  # padding rows come out as zeros, never NaN
    assert torch.equal(c_pad, c_plain)  # padding tokens write no K/V


@pytest.mark.parametrize("kind", ["decode", "mixed"])
def test_the_step_a_cuda_graph_records_runs_on_the_cpu(tiny_qwen3, kind):
    """``ModelRunner._graph_forward``, the function both graph kinds capture, over an all-padding
    step (as ``InputBatch.prepare`` pads: length-0 requests, the mixed step's padding tokens owned
    by its last request), in Triton's interpreter: the metadata views fit the kernels, every
    padding token gives a finite row, and nothing is written to the cache."""
    engine = LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=64,
                                    max_num_seqs=2, attention_backend="triton"))  # fmt: skip
    runner, ib = engine.runner, engine.runner.input_batch
    ib.view("query_start_loc").copy_(torch.arange(ib.view("query_start_loc").numel()))
    if kind == "mixed":  # 3 requests of length 0; the last one owns the 8 padding tokens
        ib.view("query_start_loc").zero_()
        ib.view("query_start_loc")[3] = 8
    ib.view("seq_lens").zero_()
    ib.view("slot_mapping").fill_(-1)
    caches = [c.clone() for c in runner.kv_caches]
    with torch.inference_mode():
        if kind == "decode":
            hidden = runner._graph_forward(2, 2, max_query_len=1)
        else:
            hidden = runner._graph_forward(3, 8, max_query_len=8, min_query_len=1)
    assert hidden.shape == (2 if kind == "decode" else 8, runner.model.config.hidden_size)
    assert torch.isfinite(hidden).all()
    assert all(torch.equal(a, b) for a, b in zip(caches, runner.kv_caches))


def test_deferred_detokenization_gives_the_same_text(tiny_qwen3):
    """Requests without stop strings are decoded when they end (finish or abort), not per step:
    the text is the same as decoding every token."""
    engine = LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=64))
    done = engine.add_request("The for statement", SamplingParams(temperature=0, max_tokens=9))
    aborted = engine.add_request("A list", SamplingParams(temperature=0, max_tokens=30))
    for _ in range(4):
        engine.step()
    assert engine.detokenizers[aborted].num_output_tokens == 0  # nothing decoded yet
    out = engine.abort_request(aborted)
    assert out.token_ids and out.text == engine.tokenizer.decode(
        out.token_ids, skip_special_tokens=True
    )
    while engine.has_unfinished_requests():
        for o in engine.step():
            assert o.request_id == done
            assert o.text == engine.tokenizer.decode(o.token_ids, skip_special_tokens=True)


def test_fp8_kv_cache_halves_the_bytes_and_backends_agree(tiny_qwen3):
    """kv_cache_dtype="fp8": the same KV memory holds twice the blocks; the Triton kernels and
    the torch reference give the same tokens over the fp8 cache (fp32 compute, interpreter)."""
    pytest.importorskip("triton")
    mem = dict(kv_cache_memory_gb=0.001)
    auto = LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=64, **mem))
    fp8 = LLMEngine(
        EngineConfig(
            model=str(tiny_qwen3), device="cpu", max_model_len=64, kv_cache_dtype="fp8", **mem
        )
    )
    assert fp8.runner.kv_caches[0].dtype == torch.float8_e4m3fn
    assert 4 * fp8.runner.block_bytes == auto.runner.block_bytes  # fp32 model: 4 bytes -> 1
    assert fp8.runner.num_blocks >= 4 * auto.runner.num_blocks
    torch_fp8 = generate(tiny_qwen3, kv_cache_dtype="fp8", attention_backend="torch")
    assert generate(tiny_qwen3, kv_cache_dtype="fp8", attention_backend="triton") == torch_fp8
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        EngineConfig(kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="not supported by attention_backend='flash'"):
        EngineConfig(kv_cache_dtype="fp8", attention_backend="flash")
