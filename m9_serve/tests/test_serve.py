"""The OpenAI-compatible server against the offline engine, through the official ``openai`` client.

One folo-tiny engine: the offline references are computed with ``LLM.generate`` first, then a
real uvicorn server serves the same engine (with an API key, given through the environment).
"""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import openai
import pytest
from serve_helpers import (
    MODEL,
    RunningServer,
    engine_config,
    metrics,
    pool_is_free,
    sse_events,
    wait_until,
)

from folovllm import LLM, SamplingParams
from folovllm.entrypoints.openai.serving import DEFAULT_CHAT_TEMPLATE

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["The for statement", "A list comprehension", "The import system finds"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
MAX_TOKENS = 12


def chat_prompt(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )


@pytest.fixture(scope="module")
def offline():
    return LLM(engine_config=engine_config())


@pytest.fixture(scope="module")
def reference(offline):
    """Offline outputs, computed before the server takes the engine."""
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    ref = {"greedy": offline.generate(PROMPTS, greedy, use_tqdm=False)}
    ref["chat"] = offline.generate(chat_prompt(offline.tokenizer, CHAT), greedy, use_tqdm=False)[0]
    seeded = [SamplingParams(temperature=0.9, max_tokens=MAX_TOKENS, seed=7 + i) for i in range(3)]
    ref["seeded"] = offline.generate([PROMPTS[0]] * 3, seeded, use_tqdm=False)
    text = ref["greedy"][1].text
    ref["stop"] = text[4:7]  # a stop string that appears mid-output
    stop = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, stop=[ref["stop"]])
    ref["stopped"] = offline.generate(PROMPTS[1], stop, use_tqdm=False)[0]
    return ref


@pytest.fixture(scope="module")
def server(offline, reference):
    mp = pytest.MonkeyPatch()
    mp.setenv("FOLOVLLM_API_KEY", KEY)
    srv = RunningServer(offline.engine, max_body_bytes=64 * 1024)
    mp.undo()
    yield srv
    srv.stop()
    assert pool_is_free(offline.engine)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


# -- the same answers as offline ------------------------------------------------------------------
def test_completions_equal_offline(client, reference):
    for prompt, ref in zip(PROMPTS, reference["greedy"]):
        r = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
        )
        assert r.choices[0].text == ref.text
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
        assert r.choices[0].finish_reason == ref.finish_reason


def test_streamed_completion_equals_offline(client, reference):
    ref = reference["greedy"][0]
    stream = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # really streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_offline(client, reference, stream):
    ref = reference["chat"]
    kw = dict(model=MODEL, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0)
    if not stream:
        r = client.chat.completions.create(**kw)
        assert r.choices[0].message.content == ref.text
        assert r.choices[0].message.role == "assistant"
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
        return
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.text
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_with_a_seed_are_offline_seeds(client, reference, stream):
    """Choice i of a request with seed s is the offline output with seed s + i."""
    kw = dict(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0.9, seed=7, n=3)
    texts = ["", "", ""]
    if stream:
        for chunk in client.completions.create(**kw, stream=True):
            for c in chunk.choices:
                texts[c.index] += c.text
    else:
        texts = [
            c.text for c in sorted(client.completions.create(**kw).choices, key=lambda c: c.index)
        ]
    assert texts == [o.text for o in reference["seeded"]]
    assert len(set(texts)) > 1  # the seeds differ, so do the samples


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_streams_the_offline_text(client, reference, stream):
    ref = reference["stopped"]
    kw = dict(model=MODEL, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0)
    kw["stop"] = [reference["stop"]]
    if stream:
        chunks = list(client.completions.create(**kw, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        r = client.completions.create(**kw)
        text, reason = r.choices[0].text, r.choices[0].finish_reason
    assert reference["stop"] not in text
    assert (text, reason) == (ref.text, "stop")


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server.url}/health").status_code == 200  # no key needed
    m = metrics(server.url, AUTH)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"folovllm:{name}" in m
    assert m["folovllm:time_to_first_token_seconds_count"] > 0
    assert m["folovllm:e2e_request_latency_seconds_count"] > 0
    assert m["folovllm:inter_token_latency_seconds_count"] > 0
    assert m['folovllm:request_success_total{finished_reason="length"}'] > 0


# -- many streams, some clients walk away ---------------------------------------------------------
def test_concurrent_streams_with_disconnects(server, offline):
    """Every request finishes or is aborted; afterwards no request and no block is left."""
    n, rng = 200, random.Random(0)
    before = _finished_count(server.url)
    leave_after = [rng.choice([None, None, 1, 2, 3]) for _ in range(n)]

    async def one(http: httpx.AsyncClient, i: int) -> str | None:
        leaves = leave_after[i] is not None
        body = {"model": MODEL, "prompt": PROMPTS[i % 3], "max_tokens": 64 if leaves else 8 + i % 5,
                "temperature": 0.8, "seed": i, "stream": True, "ignore_eos": True}  # fmt: skip
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            events = []
            async for line in r.aiter_lines():
                events += sse_events([line])
                if leave_after[i] is not None and len(events) >= leave_after[i]:
                    return None  # the client disconnects mid-stream
            assert events[-1] == "[DONE]"
            return "".join(e["choices"][0]["text"] for e in events[:-1])

    async def main():
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, limits=limits,
                                     timeout=120) as http:  # fmt: skip
            return await asyncio.gather(*(one(http, i) for i in range(n)))

    texts = asyncio.run(main())
    assert all((t is None) == (leave_after[i] is not None) for i, t in enumerate(texts))
    wait_until(lambda: _idle(server.url), "the server went idle with no blocks held")
    assert _finished_count(server.url) - before == n  # each one: finished or aborted
    assert metrics(server.url, AUTH)['folovllm:request_success_total{finished_reason="abort"}'] > 0
    assert pool_is_free(offline.engine)
    # Undisturbed: a request after the storm is still the offline answer.
    ok = httpx.post(f"{server.url}/v1/completions", headers=AUTH, timeout=60,
                    json={"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0})  # fmt: skip
    assert ok.status_code == 200


def _finished_count(url: str) -> float:
    return sum(v for k, v in metrics(url, AUTH).items() if k.startswith("folovllm:request_success"))


def _idle(url: str) -> bool:
    m = metrics(url, AUTH)
    return (
        m["folovllm:num_requests_running"] == 0
        and m["folovllm:num_requests_waiting"] == 0
        and m["folovllm:kv_cache_used_blocks"] == 0
    )


# -- bad input: a 400 that names the field, and the server keeps serving ---------------------------
COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
BAD = [
    ("completions", {**COMPLETION, "model": "gpt-4"}, "model"),
    ("completions", {**COMPLETION, "prompt": list(range(1, 2050))}, "prompt"),
    ("completions", {**COMPLETION, "prompt": [5000]}, "prompt"),
    ("completions", {**COMPLETION, "prompt": ""}, "prompt"),
    ("completions", {**COMPLETION, "temperature": -0.5}, "temperature"),
    ("completions", {**COMPLETION, "top_p": 0}, "top_p"),
    ("completions", {**COMPLETION, "top_k": 0}, "top_k"),
    ("completions", {**COMPLETION, "max_tokens": 0}, "max_tokens"),
    ("completions", {**COMPLETION, "max_tokens": 2048}, "max_tokens"),
    ("completions", {**COMPLETION, "seed": -1}, "seed"),
    ("completions", {**COMPLETION, "stop": [""]}, "stop"),
    ("completions", {**COMPLETION, "n": 0}, "n"),
    ("completions", {**COMPLETION, "temperature": "hot"}, "temperature"),
    ("completions", {**COMPLETION, "logprobs": 2}, "logprobs"),
    ("completions", {**COMPLETION, "echo": True}, "echo"),
    ("completions", {**COMPLETION, "presence_penalty": 0.5}, "presence_penalty"),
    ("completions", {**COMPLETION, "tools": []}, "tools"),
    ("completions", {"model": MODEL}, "prompt"),
    ("chat/completions", {"model": MODEL, "messages": []}, "messages"),
    (
        "chat/completions",
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        "messages",
    ),
    ("chat/completions", {"model": MODEL, "messages": CHAT, "logprobs": True}, "logprobs"),
    ("chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ("chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 2047}, "max_tokens"),
    ("chat/completions", {"model": MODEL, "messages": CHAT, "temperature": -1}, "temperature"),
]


@pytest.mark.parametrize("path,body,param", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_input_is_a_400_naming_the_field(server, path, body, param):
    r = httpx.post(f"{server.url}/v1/{path}", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error"
    ok = httpx.post(f"{server.url}/v1/completions", json=COMPLETION, headers=AUTH, timeout=60)
    assert ok.status_code == 200


def test_invalid_json_is_a_400(server):
    headers = AUTH | {"Content-Type": "application/json"}
    r = httpx.post(f"{server.url}/v1/completions", content=b'{"model": ', headers=headers)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_error_range_is_named(server):
    body = {**COMPLETION, "top_p": 1.5}
    r = httpx.post(f"{server.url}/v1/completions", json=body, headers=AUTH)
    assert r.json()["error"]["message"] == "top_p must be in (0, 1], got 1.5"


# -- the guard: API key and body size -------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
    ],  # fmt: skip
    ids=["none", "wrong", "no-scheme", "no-token", "basic", "longer"],
)
def test_api_key_required(server, headers):
    before = server.llm._ids
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions")]:
        r = httpx.request(method, f"{server.url}{path}", headers=headers, json=COMPLETION)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
    assert server.llm._ids == before  # nothing reached the engine


def test_oversized_body_is_a_413(server):
    body = json.dumps({**COMPLETION, "prompt": "x" * 70_000}).encode()
    r = httpx.post(f"{server.url}/v1/completions", content=body, headers=AUTH)
    assert r.status_code == 413 and "65536" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    ok = httpx.post(f"{server.url}/v1/completions", json=COMPLETION, headers=AUTH, timeout=60)
    assert ok.status_code == 200
