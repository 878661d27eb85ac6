"""AsyncLLM: the engine loop on a background thread, each request's outputs as an async iterator.

A server's event loop must never wait for a model step, and the engine must never wait for a
slow client. So the engine runs ``step()`` in its own thread, beside the event loop, and the two
meet only in two places: a command queue into the engine (add, abort) and, once per step, one
callback into the event loop that hands each request its new text.

Every engine call is made by the engine thread; nothing else touches the engine's state. A
request whose consumer goes away (a client that disconnects) is aborted at the next command
drain, so its KV blocks are back in the pool by the next step.

Streams are deltas (vLLM's ``RequestOutputKind.DELTA``): each output has the text and token ids
that are new since the previous one; the last has ``finish_reason`` and the request's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from folovllm.config import EngineConfig
from folovllm.engine.llm_engine import LLMEngine
from folovllm.outputs import RequestOutput
from folovllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an error: no request can be served any more."""


class EngineStoppedError(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclass
class EngineSnapshot:
    """Gauges read by the engine thread after each step (safe to read from any thread)."""

    num_running: int = 0
    num_waiting: int = 0
    num_blocks: int = 0
    num_free_blocks: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks if self.num_blocks else 0.0


@dataclass
class _Stream:
    """The event-loop side of one request: its output queue and what has been sent of it."""

    request_id: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    accepted: asyncio.Future | None = None
    sent_tokens: int = 0
    sent_chars: int = 0
    holdback: int = 0  # chars kept back while a stop string may still cut the text
    done: bool = False  # the engine sent its last output (the consumer may not have it yet)


class AsyncLLM:
    """The engine behind an event loop: ``async for out in llm.generate(prompt, params)``."""

    def __init__(self, config: EngineConfig, engine: LLMEngine | None = None) -> None:
        self.engine = engine if engine is not None else LLMEngine(config)
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.on_finished: Callable[[RequestOutput], None] | None = None
        self.snapshot = EngineSnapshot(
            num_blocks=self.engine.kv_cache_manager.block_pool.num_blocks
        )
        self.snapshot.num_free_blocks = self.snapshot.num_blocks
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._commands: list[tuple] = []
        self._num_pending_adds = 0
        self._streams: dict[str, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._ids = 0
        self._thread = threading.Thread(target=self._run, name="folovllm-engine", daemon=True)
        self._thread.start()

    # -- the event-loop side --------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def num_waiting(self) -> int:
        """Requests not yet admitted to a step: queued adds plus the scheduler's waiting queue."""
        return self._num_pending_adds + len(self.engine.scheduler.waiting)

    def new_request_id(self, prefix: str = "req") -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    async def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams
    ) -> None:
        """Queue a request; returns once the engine has validated it (ValueError if not)."""
        self._check_accepting()
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        stream = _Stream(request_id, accepted=loop.create_future())
        stream.holdback = max((len(s) for s in params.stop_list), default=1) - 1
        self._streams[request_id] = stream
        self._send(("add", request_id, prompt, params), pending_add=True)
        try:
            await stream.accepted
        except BaseException:  # refused, or the caller was cancelled while it waited
            self.abort(request_id)
            raise

    async def stream(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """The outputs of an added request; leaving early (cancel, break) aborts it."""
        stream = self._streams[request_id]
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    break
        finally:
            self._streams.pop(request_id, None)
            if not stream.done:
                self.abort(request_id)  # the consumer left early

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Add a request and yield its outputs (deltas) until it finishes. To stop early, close
        it (``async with contextlib.aclosing(llm.generate(...))``): that aborts the request."""
        request_id = request_id or self.new_request_id()
        await self.add_request(request_id, prompt, params)
        # aclosing: when the caller stops early, the inner stream is closed now (and aborts),
        # not whenever the garbage collector gets to it.
        async with contextlib.aclosing(self.stream(request_id)) as outputs:
            async for out in outputs:
                yield out

    def abort(self, request_id: str) -> None:
        """Abort a request (from the event loop); its blocks are freed before the next step."""
        self._streams.pop(request_id, None)
        self._send(("abort", request_id))

    async def shutdown(self, drain_timeout: float = 0.0) -> None:
        """Take no new requests; let running ones finish for up to ``drain_timeout`` seconds,
        abort the rest (their streams end with finish_reason "abort"), stop the thread."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while self._streams and loop.time() < deadline and self.is_running:
            await asyncio.sleep(0.01)
        self._send(("stop",))
        await asyncio.to_thread(self._thread.join)
        self.engine.shutdown()  # m10: the worker processes of a tensor-parallel engine
        await asyncio.sleep(0)  # deliver the aborted requests' last outputs
        # An add that raced with the stop never reached the engine: refuse it.
        refused = [rid for rid, stream in self._streams.items() if not stream.done]
        self._deliver([(rid, EngineStoppedError("the server is shutting down")) for rid in refused])

    def _check_accepting(self) -> None:
        if self.error is not None:
            raise EngineDeadError(f"the engine stopped on an error: {self.error!r}")
        if self._stopping:
            raise EngineStoppedError("the server is shutting down")

    def _send(self, command: tuple, pending_add: bool = False) -> None:
        with self._lock:
            self._commands.append(command)
            self._num_pending_adds += pending_add
        self._wakeup.set()

    def _deliver(self, batch: list[tuple[str, object]]) -> None:
        """Runs on the event loop: hand each request its output, error or acceptance."""
        for request_id, item in batch:
            stream = self._streams.get(request_id)
            if stream is None:
                continue  # its consumer is gone (the abort is on its way)
            if isinstance(item, str) or isinstance(item, ValueError) and not stream.accepted.done():
                _resolve(stream.accepted, item)  # accepted, or refused by validation
            elif isinstance(item, BaseException):
                _resolve(stream.accepted, item)
                stream.queue.put_nowait(item)
            else:
                stream.done = item.finished
                stream.queue.put_nowait(item)

    # -- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._drain_commands():
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait()
                    continue
                finished = self.engine.step()
                self._publish(finished)
        except Exception as exc:  # the engine is broken: fail every request, loudly
            logger.exception("engine thread stopped")
            self.error = exc
            self._post([(rid, EngineDeadError(repr(exc))) for rid in list(self._streams)])

    def _drain_commands(self) -> bool:
        """Apply queued adds and aborts; False once asked to stop (everything aborted then)."""
        self._wakeup.clear()
        with self._lock:
            commands, self._commands = self._commands, []
        batch, keep_going = [], True
        for command in commands:
            if command[0] == "add":
                batch.append(self._add(*command[1:]))
            elif command[0] == "abort":
                batch += self._abort(command[1])
            else:
                keep_going = False
        if not keep_going:
            for request_id in list(self.engine.requests):
                batch += self._abort(request_id)
            self._run_until_idle()
        self._post(batch)
        self._update_snapshot()
        return keep_going

    def _add(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> tuple:
        try:
            self.engine.add_request(prompt, params, request_id=request_id)
            item: object = "accepted"
        except ValueError as exc:
            item = exc
        with self._lock:
            self._num_pending_adds -= 1
        return request_id, item

    def _abort(self, request_id: str) -> list[tuple[str, object]]:
        out = self.engine.abort_request(request_id)
        if out is None:
            return []
        self._finished(out)
        return [(request_id, _delta(out, self._sent(request_id)))]

    def _run_until_idle(self) -> None:
        """At shutdown: an async step still in flight is collected, so every block comes back."""
        while self.engine.has_unfinished_requests():
            self.engine.step()

    def _publish(self, finished: list[RequestOutput]) -> None:
        """After a step: each live stream's new text and tokens; finished ones complete."""
        batch: list[tuple[str, object]] = []
        done = {out.request_id for out in finished}
        for out in finished:
            self._finished(out)
            batch.append((out.request_id, _delta(out, self._sent(out.request_id))))
        for request_id, req in self.engine.requests.items():
            if request_id not in done:
                item = self._progress(request_id, req)
                if item is not None:
                    batch.append((request_id, item))
        self._post(batch)
        self._update_snapshot()

    def _progress(self, request_id: str, req) -> RequestOutput | None:
        """A running request's delta, text held back while a stop string may still cut it."""
        stream = self._streams.get(request_id)
        if stream is None:
            return None
        text = self._text(request_id, req)
        end = max(stream.sent_chars, len(text) - stream.holdback)
        n_tokens = len(req.output_token_ids)
        if n_tokens == stream.sent_tokens and end == stream.sent_chars:
            return None
        delta = RequestOutput(
            request_id,
            req.prompt,
            req.prompt_token_ids,
            text=text[stream.sent_chars : end],
            token_ids=req.output_token_ids[stream.sent_tokens : n_tokens],
        )
        stream.sent_tokens, stream.sent_chars = n_tokens, end
        return delta

    def _text(self, request_id: str, req) -> str:
        """The request's text so far. Offline, the engine decodes a request without stop strings
        only when it ends (m8); a stream needs it every step, so the tokens the request's
        detokenizer has not seen yet are fed to it here, on the engine's thread, and the engine's
        own end-of-request ``catch_up`` then finds nothing left to add."""
        detok = self.engine.detokenizers[request_id]
        for token_id in req.output_token_ids[detok.num_output_tokens :]:
            detok.update(token_id)
        return detok.text

    def _sent(self, request_id: str) -> tuple[int, int]:
        stream = self._streams.get(request_id)
        return (stream.sent_tokens, stream.sent_chars) if stream else (0, 0)

    def _finished(self, out: RequestOutput) -> None:
        if self.on_finished is not None:
            self.on_finished(out)

    def _post(self, batch: list[tuple[str, object]]) -> None:
        if batch and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, batch)

    def _update_snapshot(self) -> None:
        kvm = self.engine.kv_cache_manager
        self.snapshot = dataclasses.replace(
            self.snapshot,
            num_running=len(self.engine.scheduler.running),
            num_waiting=self.num_waiting(),
            num_free_blocks=kvm.block_pool.num_free_blocks,
            prefix_cache_queries=kvm.prefix_cache_queries,
            prefix_cache_hits=kvm.prefix_cache_hits,
        )


def _delta(out: RequestOutput, sent: tuple[int, int]) -> RequestOutput:
    """The last output of a request: what was not sent yet, with its finish reason and metrics."""
    n_tokens, n_chars = sent
    return dataclasses.replace(out, text=out.text[n_chars:], token_ids=out.token_ids[n_tokens:])


def _resolve(future: asyncio.Future | None, item: object) -> None:
    if future is None or future.done():
        return
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(None)
