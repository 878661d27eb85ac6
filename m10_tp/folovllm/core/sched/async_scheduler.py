"""m8 async scheduling: the engine schedules step N+1 while step N is still on the GPU.

The host cannot wait for N's sampled ids before it schedules N+1, so the scheduler counts N as
done when it is launched: ``update_after_schedule`` adds N's tokens to ``num_computed_tokens``,
and each request that samples in N holds a placeholder (``Request.num_output_placeholders``) for
the token it will get. N+1 computes that token: its id reaches N+1's inputs on the device. When
N's ids arrive, ``update_from_output`` swaps each placeholder for its token.

A request whose in-flight token is its last by length is not scheduled again (no wasted step).
One that stops on the host (EOS, a stop string) has a row in N+1 already; that row's token is
dropped.
"""

from __future__ import annotations

from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.scheduler import Scheduler
from folovllm.request import Request


class AsyncScheduler(Scheduler):
    def update_after_schedule(self, so: SchedulerOutput) -> None:
        """Count the launched step as computed; each request whose step samples a token holds a
        placeholder for it (vLLM's ``_update_after_schedule``). Called by the engine after the
        launch: the runner reads the requests' progress from before the step."""
        for req in so.scheduled:
            req.num_computed_tokens += so.num_scheduled_tokens[req.request_id]
            if req.num_computed_tokens == req.num_tokens + req.num_output_placeholders:
                req.num_output_placeholders += 1

    def _num_new_tokens(self, req: Request, budget: int, num_hit: int = 0) -> int:
        """As the base, counting the tokens still on the GPU as known (the step computes them
        from the device); 0 while the token in flight is the request's last by length."""
        if self._last_token_in_flight(req):
            return 0
        n = req.num_tokens + req.num_output_placeholders - req.num_computed_tokens - num_hit
        if self.chunked and n > 1:
            n = min(n, budget, self.threshold or n)
        return n

    def _last_token_in_flight(self, req: Request) -> bool:
        """The token still on the GPU reaches max_tokens or max_model_len (it ends then)."""
        ph = req.num_output_placeholders
        if not ph:
            return False
        num_output = len(req.output_token_ids) + ph  # len(), not the properties: runs per request
        return (
            num_output >= req.sampling_params.max_tokens
            or len(req.prompt_token_ids) + num_output >= self.max_model_len
        )

    def update_from_output(
        self, so: SchedulerOutput, req_ids: list[str], sampled_token_ids: list[int]
    ) -> list[Request]:
        """Swap each placeholder for its sampled token (``so`` was counted as computed at its
        launch). A request that finished since then (a stop one step earlier, an abort) drops
        its token."""
        by_id = {r.request_id: r for r in so.scheduled}
        reqs, token_ids = [], []
        for req_id, token_id in zip(req_ids, sampled_token_ids):
            req = by_id[req_id]
            if not req.is_finished:
                req.num_output_placeholders -= 1
                reqs.append(req)
                token_ids.append(token_id)
        return self._append_tokens(reqs, token_ids)
