"""Backpressure, cancellation and shutdown, on an engine that runs one request at a time
(``max_num_seqs=1``): every other request waits, which makes the queue easy to fill."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading

import httpx
import pytest
from serve_helpers import MODEL, RunningServer, engine_config, metrics, pool_is_free, wait_until

from folovllm.engine.async_llm import AsyncLLM
from folovllm.engine.llm_engine import LLMEngine
from folovllm.sampling_params import SamplingParams

LONG = {"model": MODEL, "prompt": "The for statement", "max_tokens": 2000, "ignore_eos": True}
SHORT = {"model": MODEL, "prompt": "The import system", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def engine():
    return LLMEngine(engine_config(max_num_seqs=1))


def _waiting(url: str) -> float:
    return metrics(url)["folovllm:num_requests_waiting"]


class Stream:
    """A streaming request read line by line on its own thread; ``close()`` disconnects."""

    def __init__(self, url: str, body: dict) -> None:
        self.events: list[str] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict) -> None:
        with httpx.stream("POST", f"{url}/v1/completions", json=body | {"stream": True},
                          timeout=120) as r:  # fmt: skip
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                if self.closed.is_set():
                    return

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=60)


def test_full_queue_is_a_429_with_retry_after(engine):
    srv = RunningServer(engine, max_queue_len=2)
    try:
        long = Stream(srv.url, LONG)
        wait_until(lambda: long.events, "the long request is running")
        waiting = [Stream(srv.url, SHORT), Stream(srv.url, SHORT)]
        wait_until(lambda: _waiting(srv.url) == 2, "two requests wait")
        r = httpx.post(f"{srv.url}/v1/completions", json=SHORT, timeout=60)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        long.close()  # the client leaves: its blocks go back, the queue moves
        for s in waiting:
            s.thread.join(timeout=120)
            assert s.events[-1] == "[DONE]"
        assert httpx.post(f"{srv.url}/v1/completions", json=SHORT, timeout=60).status_code == 200
    finally:
        srv.stop()
    assert pool_is_free(engine)


@pytest.mark.parametrize("drain_timeout", [60.0, 0.0], ids=["drained", "aborted"])
def test_shutdown_with_requests_in_flight_loses_nothing(engine, drain_timeout):
    """Every client gets a complete stream: all finished (drained) or ended by an abort."""
    srv = RunningServer(engine, drain_timeout=drain_timeout)
    body = LONG | {"max_tokens": 24} if drain_timeout else LONG
    streams = [Stream(srv.url, body) for _ in range(3)]
    done = lambda: sum(bool(s.events) and s.events[-1] == "[DONE]" for s in streams)  # noqa: E731
    wait_until(lambda: len(srv.llm._streams) + done() == 3, "all three reached the engine")
    srv.stop()
    for s in streams:
        s.thread.join(timeout=120)
        assert s.events[-1] == "[DONE]"
        reasons = [c["choices"][0]["finish_reason"] for c in map(json.loads, s.events[:-1])]
        assert reasons[-1] == ("length" if drain_timeout else "abort")
        if drain_timeout:  # all of it: the last chunk of a length stop comes with its text
            assert len([c for c in s.events[:-1] if json.loads(c)["choices"][0]["text"]]) > 1
    assert pool_is_free(engine) and not srv.llm.is_running


def test_async_llm_cancel_frees_blocks_and_rejects_bad_params(engine):
    async def main():
        llm = AsyncLLM(engine.config, engine=engine)
        with pytest.raises(ValueError, match="prompt has 2049 tokens"):
            await llm.add_request("too-long", list(range(1, 2050)), SamplingParams())
        params = SamplingParams(max_tokens=500, ignore_eos=True)
        got = []
        async with contextlib.aclosing(llm.generate("The for statement", params)) as outputs:
            async for out in outputs:
                got.append(out)
                if len(got) == 3:
                    break  # closing the iterator aborts the request
        for _ in range(3000):  # its blocks come back at the engine's next command drain
            if pool_is_free(engine):
                break
            await asyncio.sleep(0.02)
        assert pool_is_free(engine) and not got[-1].finished
        outs = [o async for o in llm.generate("The import system", SamplingParams(max_tokens=5))]
        assert outs[-1].finished and sum(len(o.token_ids) for o in outs) == 5
        await llm.shutdown()
        assert not llm.is_running

    asyncio.run(main())
    assert pool_is_free(engine)


def test_a_client_that_leaves_a_json_request_aborts_it(engine):
    """Not streamed: the server notices the closed connection and aborts the request."""
    srv = RunningServer(engine)
    try:
        aborted = 'folovllm:request_success_total{finished_reason="abort"}'
        before = metrics(srv.url).get(aborted, 0)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{srv.url}/v1/completions", json=LONG, timeout=httpx.Timeout(1.0))
        wait_until(lambda: metrics(srv.url).get(aborted, 0) == before + 1, "the request aborted")
        wait_until(lambda: pool_is_free(engine), "its blocks are free")
    finally:
        srv.stop()


def test_a_stream_dropped_before_its_first_chunk_aborts_its_requests(engine):
    """The server cancelled the response before it ever iterated the event stream."""
    from folovllm.entrypoints.openai.protocol import CompletionRequest
    from folovllm.entrypoints.openai.serving import OpenAIServing

    async def main():
        llm = AsyncLLM(engine.config, engine=engine)
        serving = OpenAIServing(llm, MODEL)
        reasons = []
        llm.on_finished = lambda out: reasons.append(out.finish_reason)
        body = CompletionRequest(**LONG, stream=True, n=2)
        events = await serving.completions(body)
        assert len(engine.requests) == 2
        del events
        gc.collect()
        for _ in range(3000):
            if pool_is_free(engine):
                break
            await asyncio.sleep(0.02)
        assert reasons == ["abort", "abort"] and pool_is_free(engine)
        await llm.shutdown()

    asyncio.run(main())
