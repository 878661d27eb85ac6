"""LLMEngine: accepts requests, runs steps, hands back outputs.

m2 hands the choice of what runs in each step to the Scheduler (continuous batching): many requests
share every step, and a finished one is replaced at the next step.

m8 ``async_scheduling``: each ``step()`` schedules and launches step N+1 first, then waits for
step N's tokens and applies them, so the host's work overlaps the GPU's (``_step_async``, with an
``AsyncScheduler``). A request that stops on EOS or a stop string at N has already been given a
row in N+1, whose token is dropped: one wasted row per such request. A stop by length is known
ahead and costs nothing.

m10 ``tensor_parallel_size=N``: the steps run on N processes (executor/multiproc_executor.py),
which the engine drives through the same two calls as one ModelRunner; ``shutdown()`` stops them.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from folovllm.config import EngineConfig, resolve_scheduler_config
from folovllm.core.kv_cache_manager import KVCacheManager
from folovllm.core.sched.async_scheduler import AsyncScheduler
from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.scheduler import Scheduler
from folovllm.engine.detokenizer import IncrementalDetokenizer
from folovllm.executor.multiproc_executor import MultiprocExecutor
from folovllm.metrics.stats import EngineStats
from folovllm.model_executor.model_loader import (
    get_eos_token_ids,
    get_model_config,
    get_tokenizer,
)
from folovllm.outputs import RequestOutput
from folovllm.request import Request, RequestStatus
from folovllm.sampling_params import SamplingParams
from folovllm.worker.async_output import AsyncModelRunnerOutput
from folovllm.worker.model_runner import ModelRunner, ModelRunnerOutput

logger = logging.getLogger(__name__)


@dataclass
class InFlightStep:
    """A launched step whose tokens are not applied yet (async scheduling)."""

    scheduler_output: SchedulerOutput
    output: AsyncModelRunnerOutput
    # A request of it has a repetition penalty, which reads every earlier token on the host:
    # the next step waits for this one's tokens before it is scheduled.
    penalized: bool


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
        self.scheduler_config = resolve_scheduler_config(
            config.scheduler_config, self.max_model_len
        )
        runner_kwargs = dict(
            cache_config=config.cache_config,
            max_num_batched_tokens=self.scheduler_config.max_num_batched_tokens,
            keep_logits=keep_logits,
            max_num_seqs=self.scheduler_config.max_num_seqs,
            attention_backend=config.attention_backend,
            enforce_eager=config.enforce_eager,
            cudagraph_mode=config.cudagraph_mode,
        )
        tp = config.tensor_parallel_size or 1
        if tp > 1:  # rank 0's runner here, one worker process per other rank
            self.runner = MultiprocExecutor(self.model_config, runner_kwargs, tp)
        else:
            self.runner = ModelRunner(self.model_config, **runner_kwargs)
        self.kv_cache_manager = KVCacheManager(
            self.runner.num_blocks,
            self.runner.block_size,
            enable_caching=config.cache_config.enable_prefix_caching,
        )
        self.async_scheduling = config.async_scheduling
        if self.async_scheduling is None:  # default: overlap where there is a GPU to overlap with
            self.async_scheduling = self.runner.device.type == "cuda"
        scheduler_cls = AsyncScheduler if self.async_scheduling else Scheduler
        self.scheduler = scheduler_cls(
            self.scheduler_config, self.kv_cache_manager, self.max_model_len
        )
        self.in_flight: InFlightStep | None = None
        self.requests: dict[str, Request] = {}
        # How many of them have a repetition penalty: while none do, step() need not look through
        # each batch for one (a loop over every request, every step).
        self.num_penalized = 0
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.stats = EngineStats()
        self._ids = itertools.count()
        self.last_runner_output: ModelRunnerOutput | None = None

    # -- requests -------------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        cache_salt: str | None = None,
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
        req = Request(
            request_id, text, token_ids, params, self.eos_token_ids, cache_salt=cache_salt
        )
        self.requests[request_id] = req
        if params.repetition_penalty != 1.0:
            self.num_penalized += 1
        self.detokenizers[request_id] = IncrementalDetokenizer(
            self.tokenizer, token_ids, params.stop_list
        )
        self.scheduler.add_request(req)
        return request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a waiting or running request; its KV is released. Unknown or finished ids: None."""
        req = self.requests.get(request_id)
        if req is None or req.is_finished:
            return None
        self.scheduler.finish_requests([req], RequestStatus.FINISHED_ABORTED)
        detok = self.detokenizers[request_id]
        detok.catch_up(req.output_token_ids)  # the text of what was generated before the abort
        detok.flush()
        req.output_text = detok.text
        self.stats.record_finished(req)
        return self._pop_output(req)

    def shutdown(self) -> None:
        """Stop and join the worker processes (tensor parallelism); one rank has none."""
        if isinstance(self.runner, MultiprocExecutor):
            self.runner.shutdown()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self.in_flight is not None

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (m6); False, and nothing forgotten, while requests run."""
        return self.kv_cache_manager.reset_prefix_cache()

    def prefix_cache_stats(self) -> dict[str, float]:
        """Tokens looked up in the prefix cache by admitted requests, tokens found, their ratio."""
        kvm = self.kv_cache_manager
        return {
            "queries": kvm.prefix_cache_queries,
            "hits": kvm.prefix_cache_hits,
            "hit_rate": kvm.prefix_cache_hit_rate,
        }

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.get_num_unfinished_requests()

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one model step; return the outputs of requests that finished in it (async: of
        requests that finished in the step before, which ran while this one was prepared)."""
        return self._step_async() if self.async_scheduling else self._step_sync()

    def _step_sync(self) -> list[RequestOutput]:
        """Schedule a step, run it and apply its tokens: the host waits while the GPU runs."""
        so = self.scheduler.schedule()
        # Runs even when nothing is scheduled, so the runner forgets finished requests' state.
        out = self.runner.execute_model(so)
        if so.is_empty:
            return []
        self.stats.record_step(so, self.scheduler.kv_usage(so))
        return self._apply(so, out)

    def _step_async(self) -> list[RequestOutput]:
        """Schedule and launch step N+1, then wait for step N's tokens and apply them."""
        outputs, prev, self.in_flight = [], self.in_flight, None
        if prev is not None and prev.penalized:  # the penalty reads N's tokens on the host
            outputs, prev = self._apply(prev.scheduler_output, prev.output.get()), None
        so = self.scheduler.schedule()
        launched = self.runner.execute_model_async(so)
        if not so.is_empty:
            self.stats.record_step(so, self.scheduler.kv_usage(so))
            self.scheduler.update_after_schedule(so)
            # Found before N is applied, while every request of ``so`` is still counted in
            # num_penalized: N may finish one of them.
            self.in_flight = InFlightStep(so, launched, self._has_penalty(so))
        if prev is not None:
            outputs += self._apply(prev.scheduler_output, prev.output.get())
        return outputs

    def _has_penalty(self, so: SchedulerOutput) -> bool:
        """Does a request of ``so`` have a repetition penalty? (No loop while none has.)"""
        return self.num_penalized > 0 and any(
            r.sampling_params.repetition_penalty != 1.0 for r in so.scheduled
        )

    def _apply(self, so: SchedulerOutput, out: ModelRunnerOutput) -> list[RequestOutput]:
        """Apply a step's tokens: stops (token-level and stop strings), finished outputs."""
        self.last_runner_output = out
        finished = set(self.scheduler.update_from_output(so, out.req_ids, out.sampled_token_ids))
        outputs = []
        by_id = {r.request_id: r for r in so.scheduled}
        for req_id, token_id in zip(out.req_ids, out.sampled_token_ids):
            req = by_id[req_id]
            if req.is_finished and req not in finished:
                continue  # async: it stopped a step earlier (or was aborted); token dropped
            detok = self.detokenizers[req_id]
            # Text is needed now only to find stop strings (no streaming here): the others are
            # decoded once, when they end (m8: detokenizing is off the per-step path).
            if not detok.stop and req not in finished:
                continue  # nothing to do until it ends (its output_text stays "")
            stop_str = detok.update(token_id) if detok.stop else None
            if stop_str is None and req in finished:
                detok.catch_up(req.output_token_ids)
                stop_str = detok.flush()  # held-back text may complete a stop string too
            if stop_str is not None and req in finished:
                # The token also hit max_tokens and the scheduler has already freed the request:
                # the stop string wins (as in vLLM), so only the reason changes.
                req.status = RequestStatus.FINISHED_STOPPED
            elif stop_str is not None:
                self.scheduler.finish_requests([req], RequestStatus.FINISHED_STOPPED)
            req.output_text = detok.text
            if req.is_finished:
                self.stats.record_finished(req)
                outputs.append(self._pop_output(req))
        return outputs

    def _pop_output(self, req: Request) -> RequestOutput:
        popped = self.requests.pop(req.request_id, None) is not None
        if popped and req.sampling_params.repetition_penalty != 1.0:
            self.num_penalized -= 1
        self.detokenizers.pop(req.request_id, None)
        return RequestOutput.from_request(req)
