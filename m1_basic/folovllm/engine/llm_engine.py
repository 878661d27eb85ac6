"""LLMEngine: accepts requests, runs steps, hands back outputs.

m1 serves one request at a time: the first waiting request is prefilled in one step, then decoded
one token per step until it stops; only then does the next one start. That is the baseline the
scheduler of m2 beats.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.utils import check_stop
from folovllm.engine.detokenizer import IncrementalDetokenizer
from folovllm.metrics.stats import EngineStats
from folovllm.model_executor.model_loader import (
    get_eos_token_ids,
    get_model_config,
    get_tokenizer,
)
from folovllm.outputs import RequestOutput
from folovllm.request import Request, RequestStatus
from folovllm.sampling_params import SamplingParams
from folovllm.worker.model_runner import ModelRunner, ModelRunnerOutput

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig, keep_logits: bool = False) -> None:
        self.config = config
        self.model_config = get_model_config(config)
        self.max_model_len = self.model_config.max_model_len
        self.tokenizer = get_tokenizer(self.model_config.path)
        self.eos_token_ids = get_eos_token_ids(
            self.model_config.path, self.tokenizer, self.model_config.arch
        )
        self.vocab_size = self.model_config.arch.vocab_size
        self.runner = ModelRunner(self.model_config, keep_logits=keep_logits)
        self.requests: dict[str, Request] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.waiting: deque[Request] = deque()
        self.running: Request | None = None
        self.finished_req_ids: set[str] = set()
        self.stats = EngineStats()
        self._ids = itertools.count()
        self.last_runner_output: ModelRunnerOutput | None = None

    # -- requests -------------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> str:
        """Validate and queue a request; raises ValueError (naming what is wrong) and queues nothing."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            if self.tokenizer is None:
                raise ValueError(
                    f"{self.model_config.path} has no tokenizer: give prompts as token ids"
                )
            text, token_ids = prompt, self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, (list, tuple)) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            text, token_ids = None, list(prompt)
        else:
            raise ValueError("prompt must be a string or a list of token ids")
        if not token_ids:
            raise ValueError("prompt must not be empty (it has 0 tokens)")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        if len(token_ids) > self.max_model_len:
            raise ValueError(
                f"prompt has {len(token_ids)} tokens; it must be at most max_model_len={self.max_model_len}"
            )
        if params.stop_list and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model directory has none")
        req = Request(request_id, text, token_ids, params, eos_token_id=self.eos_token_ids)
        self.requests[request_id] = req
        self.detokenizers[request_id] = IncrementalDetokenizer(
            self.tokenizer, token_ids, params.stop_list
        )
        self.waiting.append(req)
        return request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a waiting or running request; its KV is released. Unknown or finished ids: None."""
        req = self.requests.get(request_id)
        if req is None or req.is_finished:
            return None
        if req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        self._finish(req, RequestStatus.FINISHED_ABORTED)
        return self._pop_output(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting) or self.running is not None

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + (self.running is not None)

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one model step; return the outputs of requests that finished in it."""
        so = self._schedule()
        # Runs even when nothing is scheduled, so the runner forgets finished requests' state.
        runner_output = self.runner.execute_model(so)
        if so.is_empty:
            return []
        self.last_runner_output = runner_output
        self.stats.record_step(so)
        return self._update_from_output(so, runner_output)

    def _schedule(self) -> SchedulerOutput:
        finished, self.finished_req_ids = self.finished_req_ids, set()
        if self.running is None and self.waiting:
            self.running = self.waiting.popleft()
            self.running.transition(RequestStatus.RUNNING)
        if self.running is None:
            return SchedulerOutput([], {}, {}, finished)
        req = self.running
        num_new = req.num_tokens - req.num_computed_tokens  # whole prompt first, then 1 per step
        return SchedulerOutput([req], {req.request_id: num_new}, {req.request_id: 0}, finished)

    def _update_from_output(
        self, so: SchedulerOutput, out: ModelRunnerOutput
    ) -> list[RequestOutput]:
        outputs = []
        for req, token_id in zip(so.scheduled, out.sampled_token_ids):
            req.num_computed_tokens += so.num_scheduled_tokens[req.request_id]
            req.append_output_token(token_id)
            status = check_stop(req, self.max_model_len)
            detok = self.detokenizers[req.request_id]
            stop_str = detok.update(token_id)
            if stop_str is None and status is not None:
                stop_str = detok.flush()  # held-back text may complete a stop string too
            if stop_str is not None:  # it wins over max_tokens on the same token (as in vLLM)
                status = RequestStatus.FINISHED_STOPPED
            req.output_text = detok.text
            if status is not None:
                self._finish(req, status)
                outputs.append(self._pop_output(req))
        return outputs

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.transition(status)
        if self.running is req:
            self.running = None
        self.finished_req_ids.add(req.request_id)
        self.stats.record_finished(req)

    def _pop_output(self, req: Request) -> RequestOutput:
        self.requests.pop(req.request_id, None)
        self.detokenizers.pop(req.request_id, None)
        return RequestOutput.from_request(req)
