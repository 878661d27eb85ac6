"""Iteration-level scheduling (Orca's continuous batching).

Every step: each running request decodes one token; then waiting requests are admitted (their
whole prompt is prefilled in this same step) while a batch slot, a KV row and token budget remain.
A request that finishes leaves at once, and the next waiting one takes its place in the next step,
so the batch never waits for its slowest member.

KV memory is still contiguous: each admitted request holds a whole row of ``max_model_len`` slots
whether it uses them or not. ``kv_usage`` measures that waste; m3's paging removes it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from folovllm.config import SchedulerConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.utils import check_stop
from folovllm.request import Request, RequestStatus


class Scheduler:
    def __init__(self, config: SchedulerConfig, num_kv_rows: int, max_model_len: int) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_model_len = max_model_len
        self.num_kv_rows = num_kv_rows
        self.free_rows: list[int] = list(range(num_kv_rows - 1, -1, -1))  # pop() gives row 0 first
        self.kv_rows: dict[str, int] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()

    # -- queues ---------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    # -- one step -------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[Request] = []
        num_tokens: dict[str, int] = {}
        # 1. Every running request decodes one token (it already holds a row).
        for req in self.running:
            n = req.num_tokens - req.num_computed_tokens
            scheduled.append(req)
            num_tokens[req.request_id] = n
            budget -= n
        # 2. Admit waiting requests, first come first served, while there is room.
        while self.waiting and len(self.running) < self.max_num_seqs and self.free_rows:
            req = self.waiting[0]
            n = req.num_tokens - req.num_computed_tokens
            if n > budget:
                break  # no chunked prefill yet (m5): the whole prompt must fit in this step
            self.waiting.popleft()
            self.kv_rows[req.request_id] = self.free_rows.pop()
            req.transition(RequestStatus.RUNNING)
            self.running.append(req)
            scheduled.append(req)
            num_tokens[req.request_id] = n
            budget -= n
        finished, self.finished_req_ids = self.finished_req_ids, set()
        rows = {r.request_id: self.kv_rows[r.request_id] for r in scheduled}
        return SchedulerOutput(scheduled, num_tokens, rows, finished)

    def update_from_output(
        self, so: SchedulerOutput, req_ids: list[str], sampled_token_ids: list[int]
    ) -> list[Request]:
        """Apply the sampled tokens; retire requests that hit a token-level stop."""
        by_id = {r.request_id: r for r in so.scheduled}
        finished = []
        now = time.perf_counter()  # one clock read for the step's tokens, not one per token
        for req_id, token_id in zip(req_ids, sampled_token_ids):
            req = by_id[req_id]
            req.num_computed_tokens += so.num_scheduled_tokens[req_id]
            req.append_output_token(token_id, now)
            status = check_stop(req, self.max_model_len)
            if status is not None:
                self._free(req, status)
                finished.append(req)
        return finished

    def finish_requests(self, requests: Iterable[Request], status: RequestStatus) -> None:
        """End requests from outside the step (abort, stop strings)."""
        for req in requests:
            if req.is_finished:
                continue
            if req.status is RequestStatus.WAITING:
                self.waiting.remove(req)
            self._free(req, status)

    def _free(self, req: Request, status: RequestStatus) -> None:
        req.transition(status)
        if req in self.running:
            self.running.remove(req)
        row = self.kv_rows.pop(req.request_id, None)
        if row is not None:
            self.free_rows.append(row)
        self.finished_req_ids.add(req.request_id)

    # -- KV accounting --------------------------------------------------------------------------
    def kv_usage(self, so: SchedulerOutput | None = None) -> tuple[int, int]:
        """(tokens whose K/V are stored, token slots reserved), counting ``so``'s tokens as stored
        (``so``: the step just scheduled)."""
        used = sum(r.num_computed_tokens for r in self.running)
        if so is not None:  # its requests are all running: one sum, not a lookup per request
            used += so.total_num_scheduled_tokens
        return used, len(self.kv_rows) * self.max_model_len
