"""A request and its lifecycle: WAITING -> RUNNING -> FINISHED_*.

The scheduler moves a request between states; any other move is a bug and raises
``IllegalTransition`` at once instead of corrupting the engine's bookkeeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable

from folovllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # gave its KV back; recomputed when rescheduled (m3)
    FINISHED_STOPPED = "finished_stopped"  # EOS or a stop string
    FINISHED_LENGTH = "finished_length"  # max_tokens or max_model_len
    FINISHED_ABORTED = "finished_aborted"

    def __init__(self, value: str) -> None:
        # A plain attribute, not ``self in _FINISHED``: read for every request in every step, and
        # an enum member's hash is Python code (several times slower).
        self.finished = value.startswith("finished")

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(self)


_FINISHED = {
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED,
}

_ALLOWED = {
    RequestStatus.WAITING: {RequestStatus.RUNNING, RequestStatus.FINISHED_ABORTED},
    RequestStatus.RUNNING: {RequestStatus.PREEMPTED} | _FINISHED,
    # Any finish: under async scheduling a preempted request's last token may arrive after it.
    RequestStatus.PREEMPTED: {RequestStatus.RUNNING} | _FINISHED,
}


class IllegalTransition(RuntimeError):
    """A request was moved between two states that are not connected."""


class Request:
    """One prompt being served: its tokens, its progress and its timestamps."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | Iterable[int] | None = None,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        # Some checkpoints stop on several tokens (Qwen3: <|im_end|> and <|endoftext|>).
        if eos_token_id is None:
            self.eos_token_ids: frozenset[int] = frozenset()
        elif isinstance(eos_token_id, int):
            self.eos_token_ids = frozenset({eos_token_id})
        else:
            self.eos_token_ids = frozenset(eos_token_id)
        self.status = RequestStatus.WAITING
        self.output_token_ids: list[int] = []
        # len(prompt_token_ids) + len(output_token_ids) as a plain int, not a property: the
        # scheduler and the runner read it several times per request in every step. Output tokens
        # are only added by append_output_token, which keeps it up to date.
        self.num_tokens = len(self.prompt_token_ids)
        self.output_text = ""
        # Tokens whose K/V are already in the cache (vLLM v1's num_computed_tokens).
        self.num_computed_tokens = 0
        # m8 async scheduling: tokens sampled by a step still on the GPU (their ids not yet here).
        self.num_output_placeholders = 0
        self.num_preemptions = 0
        # m6: hashes of the full blocks of its tokens so far, grown as blocks fill; the salt keeps
        # requests of different tenants from sharing (and timing) each other's cached prefixes.
        self.cache_salt = cache_salt
        self.block_hashes: list[bytes] = []
        self.arrival_time = time.perf_counter() if arrival_time is None else arrival_time
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.output_token_times: list[float] = []  # when each output token came (m5: ITL)
        self.finished_time: float | None = None

    # -- tokens ---------------------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def append_output_token(self, token_id: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        self.output_token_times.append(now)
        self.output_token_ids.append(token_id)
        self.num_tokens += 1

    # -- state machine --------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def transition(self, new_status: RequestStatus, now: float | None = None) -> None:
        if new_status not in _ALLOWED.get(self.status, set()):
            raise IllegalTransition(
                f"request {self.request_id}: {self.status.name} -> {new_status.name} is not allowed"
            )
        now = time.perf_counter() if now is None else now
        if new_status is RequestStatus.RUNNING and self.first_scheduled_time is None:
            self.first_scheduled_time = now
        if new_status is RequestStatus.PREEMPTED:
            self.num_preemptions += 1
        if new_status.finished:
            self.finished_time = now
        self.status = new_status

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.name}, prompt={self.num_prompt_tokens} tok, "
            f"output={self.num_output_tokens} tok, computed={self.num_computed_tokens})"
        )
