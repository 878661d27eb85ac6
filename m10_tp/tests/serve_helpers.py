"""A real uvicorn server on a free port, in a thread of the test process (so a test can look at
the engine behind it), plus small readers for /metrics and server-sent events."""

from __future__ import annotations

import json
import threading
import time

import httpx

from folovllm.config import EngineConfig
from folovllm.engine.llm_engine import LLMEngine
from folovllm.entrypoints.openai.api_server import ServerArgs, bound_port, make_server

MODEL = "folo-tiny"
STOP_TIMEOUT = 120.0


def engine_config(**kwargs) -> EngineConfig:
    """folo-tiny with a small block pool (a leak is a visible fraction of it)."""
    options = dict(model=MODEL, num_gpu_blocks=256, max_num_seqs=32, enable_prefix_caching=True)
    return EngineConfig(**(options | kwargs))


class RunningServer:
    """``make_server`` on port 0, run by a thread; ``stop()`` is the graceful shutdown."""

    def __init__(self, engine: LLMEngine, **server_args) -> None:
        args = ServerArgs(port=0, log_level="warning", **server_args)
        self.server = make_server(engine.config, args, engine=engine)
        self.llm = self.server.llm
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{bound_port(self.server)}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT)
        assert not self.thread.is_alive(), "the server did not shut down"


def metrics(url: str, headers: dict | None = None) -> dict[str, float]:
    """/metrics as {name{labels}: value} (comments and *_created samples left out)."""
    text = httpx.get(f"{url}/metrics", headers=headers).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {what}")
        time.sleep(0.05)


def sse_events(lines) -> list:
    """The ``data:`` payloads of an event stream, JSON-decoded ([DONE] kept as the string)."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def pool_is_free(engine: LLMEngine) -> bool:
    pool = engine.kv_cache_manager.block_pool
    return pool.num_free_blocks == pool.num_blocks and not engine.requests
