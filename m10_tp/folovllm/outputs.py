"""What the engine hands back: one RequestOutput per request, with its timing metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from folovllm.request import Request


@dataclass
class RequestMetrics:
    """Per-request latency numbers in seconds (None until the event happened)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0
    token_times: list[float] = field(default_factory=list)  # when each output token came

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies: the gaps between consecutive output tokens (m5)."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def ttft(self) -> float | None:
        """Time to first token: arrival -> first sampled token."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first one (decode speed)."""
        if self.first_token_time is None or self.last_token_time is None:
            return None
        if self.num_output_tokens < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def e2e(self) -> float | None:
        """End-to-end latency: arrival -> finished."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time

    @classmethod
    def from_request(cls, req: Request) -> RequestMetrics:
        return cls(
            arrival_time=req.arrival_time,
            first_scheduled_time=req.first_scheduled_time,
            first_token_time=req.first_token_time,
            last_token_time=req.last_token_time,
            finished_time=req.finished_time,
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
            num_preemptions=req.num_preemptions,
            token_times=list(req.output_token_times),
        )


@dataclass
class RequestOutput:
    """The state of one request as the user sees it (final when ``finished``)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    metrics: RequestMetrics | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def from_request(cls, req: Request) -> RequestOutput:
        return cls(
            request_id=req.request_id,
            prompt=req.prompt,
            prompt_token_ids=list(req.prompt_token_ids),
            text=req.output_text,
            token_ids=list(req.output_token_ids),
            finish_reason=req.status.finish_reason,
            metrics=RequestMetrics.from_request(req),
        )
