"""The OpenAI-compatible HTTP server: ``python -m folovllm serve --model folo-tiny``.

FastAPI routes call ``OpenAIServing``; an ``AsyncLLM`` runs the engine on its own thread. Around
every route sits ``GuardMiddleware`` (API key, body size), and every error leaves as OpenAI's
error JSON. Safe defaults: it binds 127.0.0.1, the served model is fixed at start (no request
field names a path or loads anything), and the waiting queue is bounded (429 when full).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from folovllm.config import EngineConfig
from folovllm.engine.async_llm import AsyncLLM
from folovllm.engine.llm_engine import LLMEngine
from folovllm.entrypoints.openai.metrics import ServerMetrics
from folovllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    error_body,
)
from folovllm.entrypoints.openai.serving import OpenAIServing, RequestError

logger = logging.getLogger(__name__)
API_KEY_ENV = "FOLOVLLM_API_KEY"


@dataclass
class ServerArgs:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # default: $FOLOVLLM_API_KEY; None: no authentication
    served_model_name: str | None = None  # default: the --model argument
    max_queue_len: int | None = 1024  # waiting requests before 429; None: unbounded
    max_body_bytes: int = 1 << 20
    chat_template: str | None = None  # a Jinja template file; default: the tokenizer's
    drain_timeout: float = 30.0  # seconds running requests may finish in at shutdown
    log_level: str = "info"


# -- the guard in front of every route ----------------------------------------------------------
class GuardMiddleware:
    """API key (all but /health) and request body size, before any route or engine work."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] != "/health":
            if not self._authorized(headers.get(b"authorization", b"")):
                return await _send_error(
                    send, 401, "invalid or missing API key", "authentication_error"
                )
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await _send_error(send, 413, self._too_large(), "invalid_request_error")
        await self.app(scope, self._limited(receive), send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        # compare_digest: the time taken does not reveal how much of the key matched.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    def _too_large(self) -> str:
        return f"request body too large: the limit is {self.max_body_bytes} bytes"

    def _limited(self, receive):
        """``receive`` that stops a chunked body (no Content-Length) at the limit."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise HTTPException(413, self._too_large())
            return message

        return wrapped


async def _send_error(send, status: int, message: str, kind: str) -> None:
    response = JSONResponse(error_body(message, kind), status_code=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    await response({"type": "http"}, None, send)


# -- errors as OpenAI error JSON ----------------------------------------------------------------
def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif first.get("type") == "extra_forbidden":
        message = f"{'.'.join(loc)} is not a supported parameter"
    else:
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg')}"
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    body = error_body(exc.message, exc.kind, exc.param)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)


# -- the app ------------------------------------------------------------------------------------
def build_app(llm: AsyncLLM, args: ServerArgs, model_name: str) -> FastAPI:
    """The FastAPI app serving ``llm`` as ``model_name``."""
    chat_template = _read_template(args.chat_template)
    serving = OpenAIServing(llm, model_name, chat_template, args.max_queue_len)
    metrics = ServerMetrics(llm)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await llm.shutdown()  # aborts whatever is left; the thread stops

    app = FastAPI(title="FoloVLLM", lifespan=lifespan)
    app.state.llm, app.state.metrics = llm, metrics
    app.add_middleware(GuardMiddleware, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if llm.is_running else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, max_model_len=llm.max_model_len)])

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _respond(request, serving.completions(body))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        return await _respond(request, serving.chat(body))

    return app


async def _respond(request: Request, work) -> Response:
    """JSON or an event stream; a client that disconnects before a JSON answer cancels it."""
    result = await _unless_disconnected(request, work)
    if isinstance(result, dict):
        return JSONResponse(result)
    # Starlette cancels the stream when the client goes away: the requests under it are aborted.
    return StreamingResponse(result, media_type="text/event-stream")


async def _unless_disconnected(request: Request, work):
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # the client is gone: cancelling aborts its engine requests
    if task.cancelled():
        return Response(status_code=499)  # nobody reads it
    return task.result()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _read_template(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


# -- running it ---------------------------------------------------------------------------------
class Server(uvicorn.Server):
    """uvicorn with a graceful drain: at shutdown new requests get 503, running ones may finish
    for ``drain_timeout`` seconds, then the rest are aborted (their streams end cleanly)."""

    def __init__(self, config: uvicorn.Config, llm: AsyncLLM, drain_timeout: float) -> None:
        super().__init__(config)
        self.llm, self.drain_timeout = llm, drain_timeout

    async def shutdown(self, sockets=None) -> None:
        await self.llm.shutdown(self.drain_timeout)
        await super().shutdown(sockets)


def make_server(
    engine_config: EngineConfig, args: ServerArgs, engine: LLMEngine | None = None
) -> Server:
    """Load the model (or serve ``engine``), build the app and uvicorn's server; ``server.run()``
    starts it. ``port=0`` picks a free port (``bound_port(server)`` says which)."""
    args.api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    llm = AsyncLLM(engine_config, engine=engine)
    app = build_app(llm, args, args.served_model_name or str(engine_config.model))
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5
    )
    return Server(config, llm, args.drain_timeout)


def bound_port(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


def run_server(engine_config: EngineConfig, args: ServerArgs) -> int:
    server = make_server(engine_config, args)
    logger.info("serving %s on http://%s:%d", engine_config.model, args.host, args.port)
    server.run()
    return 0
