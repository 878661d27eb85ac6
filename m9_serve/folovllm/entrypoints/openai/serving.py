"""/v1/completions and /v1/chat/completions: an OpenAI request in, engine requests out.

One API request becomes ``len(prompts) * n`` engine requests (choice ``i`` of a request with a
``seed`` uses ``seed + i``, as vLLM's parallel sampling does, so choice ``i`` equals an offline
``LLM.generate`` with that seed). Their delta streams are merged by choice index and either
collected into one JSON body or sent as server-sent events (``data: {...}``, then ``data: [DONE]``).
Leaving a merged stream early (a client that disconnects) cancels every engine request under it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from folovllm.engine.async_llm import AsyncLLM, EngineDeadError, EngineStoppedError
from folovllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    UsageInfo,
)
from folovllm.outputs import RequestOutput
from folovllm.sampling_params import SamplingParams

# Used when the tokenizer has no chat template (folo-tiny has none): one "role: content" line per
# message, then "assistant:" for the model to continue.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, the field at fault."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind
        self.headers = headers


@dataclass
class Job:
    """An accepted API request: its engine requests (index = choice index) and usage so far."""

    id: str
    created: int
    ids: list[str]
    n: int  # choices per prompt
    include_usage: bool
    object: str = ""  # the "object" of its streamed chunks
    usage: UsageInfo = field(default_factory=UsageInfo)
    started: set[int] = field(default_factory=set)  # choices whose first chunk was sent

    def account(self, index: int, out: RequestOutput) -> None:
        """Add a finished choice's tokens (the prompt counts once per prompt, not per choice)."""
        if out.metrics is None:
            return
        if index % self.n == 0:
            self.usage.prompt_tokens += out.metrics.num_prompt_tokens
        self.usage.completion_tokens += out.metrics.num_output_tokens
        self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens


class OpenAIServing:
    """Turns validated request bodies into engine requests and their outputs into responses."""

    def __init__(
        self,
        llm: AsyncLLM,
        model_name: str,
        chat_template: str | None = None,
        max_queue_len: int | None = None,
    ) -> None:
        self.llm = llm
        self.model_name = model_name
        self.max_queue_len = max_queue_len
        tok = llm.tokenizer
        self.chat_template = chat_template or getattr(tok, "chat_template", None)
        self.chat_template = self.chat_template or DEFAULT_CHAT_TEMPLATE

    # -- the endpoints --------------------------------------------------------------------------
    async def completions(self, body: CompletionRequest) -> dict | AsyncIterator[str]:
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        job = await self._start(body, prompts, body.max_tokens, "cmpl", "prompt")
        if body.stream:
            job.object = "text_completion"
            return self._sse(job, self._completion_chunk)
        texts, finals = await self._collect(job)
        choices = [
            {"index": i, "text": t, "logprobs": None, "finish_reason": f.finish_reason}
            for i, (t, f) in enumerate(zip(texts, finals))
        ]
        return self._body(job, "text_completion", choices) | {"usage": job.usage.model_dump()}

    async def chat(self, body: ChatCompletionRequest) -> dict | AsyncIterator[str]:
        prompt = self.render_chat(body)
        max_tokens = _default(body.max_completion_tokens, body.max_tokens)  # None: up to the limit
        job = await self._start(body, [prompt], max_tokens, "chatcmpl", "messages")
        if body.stream:
            job.object = "chat.completion.chunk"
            return self._sse(job, self._chat_chunk)
        texts, finals = await self._collect(job)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "logprobs": None,
                "finish_reason": f.finish_reason,
            }
            for i, (t, f) in enumerate(zip(texts, finals))
        ]
        return self._body(job, "chat.completion", choices) | {"usage": job.usage.model_dump()}

    def render_chat(self, body: ChatCompletionRequest) -> str:
        """The prompt text: the messages through the chat template."""
        tok = self.llm.tokenizer
        if tok is None:
            raise RequestError("this model has no tokenizer, so no chat template", "messages")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            return tok.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=True,
            )  # fmt: skip
        except Exception as exc:  # a template may raise on any input it does not accept
            raise RequestError(f"messages: the chat template failed: {exc}", "messages") from exc

    # -- requests into the engine ---------------------------------------------------------------
    async def _start(
        self, body: SamplingFields, prompts: list, max_tokens: int | None, kind: str, param: str
    ) -> Job:
        """Check the request, then add every choice of every prompt; all or none are added."""
        self._check(body)
        limits = [self._max_tokens(p, max_tokens, param) for p in prompts]
        params = [[self._params(body, m, i) for i in range(body.n)] for m in limits]
        job_id = f"{kind}-{uuid.uuid4().hex}"
        ids = [f"{job_id}-{i}" for i in range(len(prompts) * body.n)]
        adds = [
            self.llm.add_request(rid, prompts[i // body.n], params[i // body.n][i % body.n])
            for i, rid in enumerate(ids)
        ]
        results = await asyncio.gather(*adds, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for rid in ids:
                self.llm.abort(rid)
            raise _as_request_error(errors[0], param)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return Job(job_id, int(time.time()), ids, body.n, include_usage)

    def _check(self, body: SamplingFields) -> None:
        if body.model != self.model_name:
            raise RequestError(
                f"model {body.model!r} is not served here; this server serves {self.model_name!r}",
                "model",
            )
        field_name = body.unsupported()
        if field_name is not None:
            raise RequestError(f"{field_name} is not supported by this engine", field_name)
        waiting = self.llm.num_waiting()
        if self.max_queue_len is not None and waiting >= self.max_queue_len:
            raise RequestError(
                f"the server is busy: {waiting} requests are waiting (max_queue_len="
                f"{self.max_queue_len}); retry later",
                status=429, kind="rate_limit_error", headers={"Retry-After": "1"},
            )  # fmt: skip

    def _max_tokens(self, prompt: str | list[int], max_tokens: int | None, param: str) -> int:
        """``max_tokens`` within the context: unset means up to ``max_model_len``; a prompt plus
        ``max_tokens`` over it is refused (the engine refuses an over-long prompt by itself)."""
        limit, tok = self.llm.max_model_len, self.llm.tokenizer
        n = (
            len(prompt)
            if not isinstance(prompt, str) or tok is None
            else len(tok(prompt)["input_ids"])
        )
        if max_tokens is None or not isinstance(max_tokens, int) or n > limit:
            return max(limit - n, 1) if max_tokens is None else max_tokens
        if n + max_tokens > limit:
            where = "the prompt rendered from messages" if param == "messages" else "the prompt"
            raise RequestError(
                f"max_tokens={max_tokens} with {where} of {n} tokens needs {n + max_tokens}; "
                f"prompt + max_tokens must be at most max_model_len={limit}",
                "max_tokens",
            )
        return max_tokens

    def _params(self, body: SamplingFields, max_tokens: int | None, index: int) -> SamplingParams:
        try:
            return SamplingParams(
                temperature=_default(body.temperature, 1.0),
                top_p=_default(body.top_p, 1.0),
                top_k=_default(body.top_k, -1),
                max_tokens=max_tokens,
                repetition_penalty=body.repetition_penalty,
                stop=body.stop,
                ignore_eos=body.ignore_eos,
                seed=None if body.seed is None else body.seed + index,
            )
        except ValueError as exc:
            raise RequestError(str(exc), str(exc).split(" ", 1)[0]) from exc

    # -- outputs back to the client -------------------------------------------------------------
    async def _merge(self, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every choice's deltas as they come, as (choice index, delta)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, request_id: str) -> None:
            try:
                async for out in self.llm.stream(request_id):
                    queue.put_nowait((index, out))
            except Exception as exc:
                queue.put_nowait((index, exc))

        tasks = [asyncio.create_task(pump(i, rid)) for i, rid in enumerate(job.ids)]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                remaining -= item.finished
                if item.finished:
                    job.account(index, item)
                yield index, item
        finally:
            for task in tasks:
                task.cancel()  # a choice still running is aborted (its stream's cleanup)

    async def _collect(self, job: Job) -> tuple[list[str], list[RequestOutput]]:
        texts = [""] * len(job.ids)
        finals: list[RequestOutput | None] = [None] * len(job.ids)
        try:
            async for index, out in self._merge(job):
                texts[index] += out.text
                if out.finished:
                    finals[index] = out
        except EngineDeadError as exc:
            raise RequestError(str(exc), status=503, kind="server_error") from exc
        return texts, finals

    def _sse(self, job: Job, make_chunk) -> AsyncIterator[str]:
        events = self._events(job, make_chunk)
        # A response cancelled before its first chunk never runs the generator's cleanup: abort
        # its requests when it is collected (a no-op for requests that already finished).
        weakref.finalize(events, _abort_all, self.llm, job.ids)
        return events

    async def _events(self, job: Job, make_chunk) -> AsyncIterator[str]:
        """Server-sent events: one ``data:`` line per delta, usage if asked, then [DONE]."""
        try:
            async for index, out in self._merge(job):
                for chunk in make_chunk(job, index, out):
                    yield _event(chunk)
        except EngineDeadError as exc:
            yield _event({"error": {"message": str(exc), "type": "server_error"}})
        if job.include_usage:
            yield _event(self._body(job, job.object, []) | {"usage": job.usage.model_dump()})
        yield "data: [DONE]\n\n"

    def _completion_chunk(self, job: Job, index: int, out: RequestOutput) -> list[dict]:
        if not out.text and not out.token_ids and not out.finished:
            return []  # a chunk per step with new tokens (text may be "": a partial character)
        choice = {"index": index, "text": out.text, "logprobs": None}
        return [self._chunk(job, choice | {"finish_reason": out.finish_reason})]

    def _chat_chunk(self, job: Job, index: int, out: RequestOutput) -> list[dict]:
        chunks = []
        if index not in job.started:  # the first chunk of a choice names the role
            job.started.add(index)
            chunks.append(self._chat_delta(job, index, {"role": "assistant", "content": ""}))
        if out.text or out.token_ids:
            chunks.append(self._chat_delta(job, index, {"content": out.text}))
        if out.finished:
            chunks.append(self._chat_delta(job, index, {}, out.finish_reason))
        return chunks

    def _chat_delta(self, job: Job, index: int, delta: dict, reason: str | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return self._chunk(job, choice)

    def _chunk(self, job: Job, choice: dict) -> dict:
        body = self._body(job, job.object, [choice])
        return body | ({"usage": None} if job.include_usage else {})

    def _body(self, job: Job, obj: str, choices: list[dict]) -> dict:
        return {
            "id": job.id,
            "object": obj,
            "created": job.created,
            "model": self.model_name,
            "choices": choices,
        }


def _abort_all(llm: AsyncLLM, request_ids: list[str]) -> None:
    for request_id in request_ids:
        llm.abort(request_id)


def _default(value, default):
    return default if value is None else value


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _as_request_error(exc: BaseException, param: str) -> BaseException:
    """An engine refusal as the client's error: validation 400, shutting down / dead 503."""
    if isinstance(exc, ValueError):
        message = str(exc)
        if param == "messages":
            message = message.replace("prompt", "the prompt rendered from messages", 1)
        return RequestError(message, param)
    if isinstance(exc, (EngineStoppedError, EngineDeadError)):
        return RequestError(str(exc), status=503, kind="server_error")
    return exc
