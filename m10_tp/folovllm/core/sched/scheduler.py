"""Iteration-level scheduling (Orca's continuous batching) over a paged KV cache.

Every step: each running request gets KV slots for its next token and decodes it; then waiting
requests are admitted (whole prompt prefilled in this same step) while a batch slot, free blocks
and token budget remain. A request that finishes leaves at once and its blocks go back to the pool.

When a running request needs a block and none is free, the newest running request is preempted:
its blocks are freed and it returns to the front of the waiting queue, to be recomputed later
(vLLM's recompute preemption). Its tokens so far are kept, so its output does not change.

m5 (chunked prefill, vLLM v1 / Sarathi-Serve): no prefill or decode phase. A request only has
``num_computed_tokens`` against ``num_tokens``; each step spends one budget of
``max_num_batched_tokens`` tokens on running requests first (decodes, and the next chunk of a prompt
that is mid-prefill), then on waiting prompts, cut to what is left. ``long_prefill_token_threshold``
caps one request's chunk so a huge prompt cannot take the whole budget. A request whose prompt is
not finished gets no token this step (the runner does not sample it).

m6 (prefix caching): a waiting request starts after the longest cached prefix of its tokens
(``num_computed_tokens`` = the hit), and chunking continues from there. A preempted request may hit
its own blocks when it resumes, if nobody has reused them meanwhile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from folovllm.config import SchedulerConfig
from folovllm.core.kv_cache_manager import KVCacheManager
from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.utils import check_stop
from folovllm.request import Request, RequestStatus


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv_cache_manager: KVCacheManager, max_model_len: int
    ) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.chunked = config.enable_chunked_prefill
        self.threshold = config.long_prefill_token_threshold or None  # 0 / None: no cap
        self.max_model_len = max_model_len
        self.kv_cache_manager = kv_cache_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self.preempted_req_ids: set[str] = set()  # m4: the runner drops their persistent rows
        self.num_preemptions = 0

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
        # 1. Running requests: a decode takes one token, a prompt mid-prefill its next chunk (m5);
        #    free blocks by preempting the newest if needed.
        preempted = False
        i = 0
        while i < len(self.running) and (budget > 0 or not self.chunked):
            req = self.running[i]
            n = self._num_new_tokens(req, budget)
            if n == 0:  # nothing to compute this step (a subclass may hold a request back)
                i += 1
                continue
            while self.kv_cache_manager.allocate_slots(req, n) is None:
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break  # it was the newest itself: it waits, the older ones keep going
            else:  # the allocation succeeded
                scheduled.append(req)
                num_tokens[req.request_id] = n
                budget -= n
                i += 1
        # 2. Admit waiting (and preempted) requests, first come first served, while there is room.
        #    Not after a preemption: the freed blocks would be taken back at once (thrashing).
        while self.waiting and len(self.running) < self.max_num_seqs and not preempted:
            req = self.waiting[0]
            # m6: start after the longest cached prefix (none without prefix caching).
            hits, num_hit = self.kv_cache_manager.get_computed_blocks(req)
            n = self._num_new_tokens(req, budget, num_hit)
            if n > budget or n == 0:
                break  # without chunking the whole prompt must fit; with it, the budget is spent
            if self.kv_cache_manager.allocate_slots(req, n, hits) is None:
                break  # not enough free blocks: wait for running requests to finish
            req.num_computed_tokens = num_hit
            self.waiting.popleft()
            req.transition(RequestStatus.RUNNING)
            self.running.append(req)
            scheduled.append(req)
            num_tokens[req.request_id] = n
            budget -= n
        finished, self.finished_req_ids = self.finished_req_ids, set()
        preempted_ids, self.preempted_req_ids = self.preempted_req_ids, set()
        tables = {
            r.request_id: self.kv_cache_manager.get_block_ids(r.request_id) for r in scheduled
        }
        return SchedulerOutput(scheduled, num_tokens, tables, finished, preempted_ids)

    def _num_new_tokens(self, req: Request, budget: int, num_hit: int = 0) -> int:
        """Tokens to compute for ``req`` this step: all it has left (after ``num_hit`` cached
        ones), or with chunking a chunk."""
        n = req.num_tokens - req.num_computed_tokens - num_hit
        # One token (a decode) needs no min() per step: the running loop keeps budget >= 1, and
        # at budget 0 the waiting loop stops whether n is 1 or 0.
        if self.chunked and n > 1:
            n = min(n, budget, self.threshold or n)
        return n

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv_cache_manager.free(req)
        req.num_computed_tokens = 0  # recompute its K/V when it runs again
        req.transition(RequestStatus.PREEMPTED)
        self.waiting.appendleft(req)
        self.preempted_req_ids.add(req.request_id)
        self.num_preemptions += 1

    def update_from_output(
        self, so: SchedulerOutput, req_ids: list[str], sampled_token_ids: list[int]
    ) -> list[Request]:
        """Count every scheduled request's tokens as computed, then apply the sampled tokens (a
        request whose prompt is still being chunked has none). Returns the requests it finished."""
        for req in so.scheduled:
            req.num_computed_tokens += so.num_scheduled_tokens[req.request_id]
        by_id = {r.request_id: r for r in so.scheduled}
        return self._append_tokens([by_id[i] for i in req_ids], sampled_token_ids)

    def _append_tokens(self, reqs: list[Request], token_ids: list[int]) -> list[Request]:
        """Append each request's sampled token; retire those that hit a token-level stop."""
        finished = []
        now = time.perf_counter()  # one clock read for the step's tokens, not one per token
        for req, token_id in zip(reqs, token_ids):
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
            if req in self.waiting:
                self.waiting.remove(req)
            self._free(req, status)

    def _free(self, req: Request, status: RequestStatus) -> None:
        req.transition(status)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:  # m8: preempted while its last token was still in flight
            self.waiting.remove(req)
        self.kv_cache_manager.free(req)
        self.finished_req_ids.add(req.request_id)

    # -- KV accounting --------------------------------------------------------------------------
    def kv_usage(self, so: SchedulerOutput | None = None) -> tuple[int, int]:
        """(tokens whose K/V are stored, token slots reserved), counting ``so``'s tokens as stored
        (``so``: the step just scheduled)."""
        used = sum(r.num_computed_tokens for r in self.running)
        if so is not None:  # its requests are all running: one sum, not a lookup per request
            used += so.total_num_scheduled_tokens
        return used, self.kv_cache_manager.num_reserved_tokens()
