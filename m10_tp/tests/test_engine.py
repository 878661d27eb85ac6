"""Stop conditions, abort, bad input: each request ends cleanly and the others keep going."""

from __future__ import annotations

import pytest

from folovllm import EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    return LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=128))


def run(engine, *requests) -> dict:
    """Add (prompt, params) pairs, step to completion, return outputs by id."""
    ids = [engine.add_request(p, sp) for p, sp in requests]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    assert set(done) == set(ids)
    return {i: done[i] for i in ids}


def idle(engine) -> bool:
    return (
        not engine.has_unfinished_requests()
        and not engine.requests
        and engine.runner.generators == {}
    )


def test_max_tokens_finishes_with_length(engine):
    (out,) = run(engine, ("The for statement", SamplingParams(max_tokens=7, **GREEDY))).values()
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert idle(engine)


def test_eos_stops_unless_ignored(engine):
    (ref,) = run(engine, ("The import", SamplingParams(max_tokens=8, **GREEDY))).values()
    eos = ref.token_ids[3]
    first = ref.token_ids.index(eos)
    saved, engine.eos_token_ids = engine.eos_token_ids, [eos]
    try:
        (out,) = run(engine, ("The import", SamplingParams(temperature=0, max_tokens=8))).values()
        (ign,) = run(engine, ("The import", SamplingParams(max_tokens=8, **GREEDY))).values()
    finally:
        engine.eos_token_ids = saved
    assert out.finish_reason == "stop" and out.token_ids == ref.token_ids[: first + 1]
    assert ign.token_ids == ref.token_ids and ign.finish_reason == "length"


def test_stop_string_cuts_the_text(engine):
    (ref,) = run(engine, ("A list", SamplingParams(max_tokens=24, **GREEDY))).values()
    text = ref.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), "pick a visible stop string"
    (out,) = run(engine, ("A list", SamplingParams(max_tokens=24, stop=[stop], **GREEDY))).values()
    assert out.finish_reason == "stop"
    assert out.text == text[: text.find(stop)]
    assert len(out.token_ids) < len(ref.token_ids)


def test_stop_string_on_the_last_allowed_token_wins(engine):
    """A token that both reaches max_tokens and completes a stop string finishes with "stop"."""
    (ref,) = run(engine, ("A list", SamplingParams(max_tokens=24, **GREEDY))).values()
    texts = [
        engine.tokenizer.decode(ref.token_ids[:k], skip_special_tokens=True) for k in range(25)
    ]
    # The last token that adds visible text, and the shortest tail of the text it completes.
    k = max(k for k in range(2, 25) if texts[k].strip() and len(texts[k]) > len(texts[k - 1]))
    text = texts[k]
    stop = next(
        text[-m:]
        for m in range(len(text) - len(texts[k - 1]), len(text) + 1)
        if text[-m:].strip() and text.find(text[-m:]) == len(text) - m
    )
    params = SamplingParams(max_tokens=k, stop=[stop], **GREEDY)
    (out,) = run(engine, ("A list", params)).values()
    assert out.token_ids == ref.token_ids[:k]
    assert out.finish_reason == "stop"
    assert out.text == text[: len(text) - len(stop)]
    assert idle(engine)


@pytest.mark.parametrize("prompt", [[7], [7, 8, 9]])
def test_step_stats_count_a_prompt_of_any_length_as_a_prefill(engine, prompt):
    first = len(engine.stats.steps)
    run(engine, (prompt, SamplingParams(max_tokens=3, **GREEDY)))
    steps = engine.stats.steps[first:]
    assert [s.num_prefill_reqs for s in steps] == [1, 0, 0]
    assert [s.num_tokens for s in steps] == [len(prompt), 1, 1]


def test_max_model_len_ends_the_request(engine):
    prompt = list(range(1, 121))  # 120 tokens; max_model_len is 128
    (out,) = run(engine, (prompt, SamplingParams(max_tokens=50, **GREEDY))).values()
    assert out.finish_reason == "length" and len(prompt) + len(out.token_ids) == 128


@pytest.mark.parametrize(
    "prompt,params,message",
    [
        ("", SamplingParams(), "prompt must not be empty"),
        ([], SamplingParams(), "prompt must not be empty"),
        (
            list(range(129)),
            SamplingParams(),
            "prompt has 129 tokens; it must be at most max_model_len=128",
        ),
        ([1, 10**6], SamplingParams(), r"prompt token ids must be in \[0, 384\)"),
        ([1, "a"], SamplingParams(), "prompt must be a string or a list of token ids"),
        ("hi", {"temperature": 0}, "params must be a SamplingParams"),
    ],
)
def test_bad_input_is_rejected_and_others_still_finish(engine, prompt, params, message):
    good = engine.add_request("The for statement", SamplingParams(max_tokens=4, **GREEDY))
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.request_id for o in outs] == [good] and len(outs[0].token_ids) == 4
    assert idle(engine)


def test_invalid_sampling_params_never_reach_the_engine():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=2.0)


def test_duplicate_request_id(engine):
    engine.add_request("x", SamplingParams(max_tokens=1), request_id="dup")
    with pytest.raises(ValueError, match="request_id 'dup' is already in use"):
        engine.add_request("y", SamplingParams(max_tokens=1), request_id="dup")
    engine.abort_request("dup")
    assert idle(engine)


@pytest.fixture(scope="module")
def engine_one_at_a_time(tiny_qwen3):
    return LLMEngine(
        EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=128, max_batch_size=1)
    )


def test_abort_running_and_waiting(engine_one_at_a_time):
    engine = engine_one_at_a_time
    a = engine.add_request("The for statement", SamplingParams(max_tokens=30, **GREEDY))
    b = engine.add_request("The import system", SamplingParams(max_tokens=30, **GREEDY))
    c = engine.add_request("A list", SamplingParams(max_tokens=5, **GREEDY))
    engine.step()
    engine.step()
    out_a = engine.abort_request(a)  # running
    out_b = engine.abort_request(b)  # still waiting
    assert out_a.finish_reason == "abort" and len(out_a.token_ids) == 2
    assert out_b.finish_reason == "abort" and out_b.token_ids == []
    assert engine.abort_request(a) is None and engine.abort_request("nope") is None
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.request_id for o in outs] == [c] and len(outs[0].token_ids) == 5
    assert idle(engine)


def test_incremental_text_equals_full_decode(engine):
    outs = run(
        engine,
        ("Hello world", SamplingParams(temperature=1.0, seed=3, max_tokens=40, ignore_eos=True)),
        ("Numbers like", SamplingParams(temperature=1.0, seed=4, max_tokens=40, ignore_eos=True)),
    )
    for out in outs.values():
        assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_seeded_requests_reproduce(engine):
    p = SamplingParams(
        temperature=1.0, top_p=0.9, top_k=50, seed=11, max_tokens=16, ignore_eos=True
    )
    first = run(engine, ("The for", p))
    second = run(engine, ("The for", p))
    assert next(iter(first.values())).token_ids == next(iter(second.values())).token_ids


def test_metrics_are_filled(engine):
    (out,) = run(engine, ("The for", SamplingParams(max_tokens=5, **GREEDY))).values()
    m = out.metrics
    assert 0 < m.ttft <= m.e2e and m.tpot > 0 and m.num_output_tokens == 5


def test_reused_request_id_with_a_seed_starts_a_fresh_generator(engine):
    p = SamplingParams(temperature=1.0, seed=5, max_tokens=8, ignore_eos=True)

    def once() -> list[int]:
        engine.add_request("The for", p, request_id="same")
        outs = []
        while engine.has_unfinished_requests():
            outs += engine.step()
        engine.step()  # an idle step must still release the finished request's generator
        return outs[0].token_ids

    assert once() == once()
    assert idle(engine)


def test_any_eos_of_generation_config_stops(tiny_qwen3, tmp_path):
    """Qwen3's generation_config lists two EOS ids; either must end the request."""
    import json

    ref = LLMEngine(EngineConfig(model=str(tiny_qwen3), device="cpu", max_model_len=128))
    (out,) = run(ref, ("The import", SamplingParams(max_tokens=8, **GREEDY))).values()
    second_eos = out.token_ids[2]
    for f in tiny_qwen3.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    gen["eos_token_id"] = [ref.tokenizer.eos_token_id, second_eos]
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    engine = LLMEngine(EngineConfig(model=str(tmp_path), device="cpu", max_model_len=128))
    assert engine.eos_token_ids == [ref.tokenizer.eos_token_id, second_eos]
    (stopped,) = run(engine, ("The import", SamplingParams(temperature=0, max_tokens=8))).values()
    first = out.token_ids.index(second_eos)
    assert stopped.finish_reason == "stop" and stopped.token_ids == out.token_ids[: first + 1]
