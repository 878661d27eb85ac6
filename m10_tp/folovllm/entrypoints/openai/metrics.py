"""/metrics: the engine's gauges and per-request latency histograms in Prometheus' text format.

Gauges are read from the engine thread's last snapshot when Prometheus scrapes (no engine state is
touched from the event loop); histograms and counters are fed once per finished request. Names
follow vLLM's (``vllm:`` becomes ``folovllm:``) so existing dashboards map over.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from folovllm.engine.async_llm import AsyncLLM
from folovllm.outputs import RequestOutput

# Seconds; wide enough for a CPU test model and a GPU alike.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineCollector:
    """Gauges computed at scrape time from ``AsyncLLM.snapshot``."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.llm = llm

    def collect(self):
        s = self.llm.snapshot
        hit_rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        for name, doc, value in (
            ("num_requests_running", "Requests in the running batch.", s.num_running),
            ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            ("kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).", s.kv_usage),
            (
                "kv_cache_used_blocks",
                "KV blocks held by requests.",
                s.num_blocks - s.num_free_blocks,
            ),
            ("kv_cache_total_blocks", "KV blocks in the pool.", s.num_blocks),
            (
                "prefix_cache_hit_rate",
                "Prompt tokens found in the prefix cache / looked up.",
                hit_rate,
            ),
        ):
            yield GaugeMetricFamily(f"folovllm:{name}", doc, value=value)


class ServerMetrics:
    """One registry per server (several servers in one process never share counters)."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(llm))
        hist = dict(registry=self.registry, buckets=LATENCY_BUCKETS)
        self.ttft = Histogram(
            "folovllm:time_to_first_token_seconds", "Arrival to first token.", **hist
        )
        self.itl = Histogram("folovllm:inter_token_latency_seconds", "Gap between tokens.", **hist)
        self.e2e = Histogram("folovllm:e2e_request_latency_seconds", "Arrival to finish.", **hist)
        self.finished = Counter(
            "folovllm:request_success",
            "Finished requests by reason.",
            ["finished_reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "folovllm:prompt_tokens", "Prompt tokens.", registry=self.registry
        )
        self.generation_tokens = Counter(
            "folovllm:generation_tokens", "Generated tokens.", registry=self.registry
        )
        llm.on_finished = self.observe

    def observe(self, out: RequestOutput) -> None:
        """Record a finished (or aborted) request; runs on the engine thread."""
        m = out.metrics
        self.finished.labels(out.finish_reason or "abort").inc()
        if m is None:
            return
        self.prompt_tokens.inc(m.num_prompt_tokens)
        self.generation_tokens.inc(m.num_output_tokens)
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        for gap in m.itl:
            self.itl.observe(gap)
        if m.e2e is not None:
            self.e2e.observe(m.e2e)

    def render(self) -> bytes:
        return generate_latest(self.registry)
