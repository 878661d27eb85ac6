"""LLMEngine: accepts requests, runs steps, hands back outputs.

m2 hands the choice of what runs in each step to the Scheduler (continuous batching): many requests
share every step, and a finished one is replaced at the next step.
"""

from __future__ import annotations

import itertools
import logging

from folovllm.config import EngineConfig, resolve_scheduler_config
from folovllm.core.kv_cache_manager import KVCacheManager
from folovllm.core.sched.scheduler import Scheduler
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
        self.scheduler_config = resolve_scheduler_config(
            config.scheduler_config, self.max_model_len
        )
        self.runner = ModelRunner(
            self.model_config,
            config.cache_config,
            self.scheduler_config.max_num_batched_tokens,
            keep_logits=keep_logits,
            max_num_seqs=self.scheduler_config.max_num_seqs,
            attention_backend=config.attention_backend,
            enforce_eager=config.enforce_eager,
            cudagraph_mode=config.cudagraph_mode,
        )
        self.kv_cache_manager = KVCacheManager(
            self.runner.num_blocks,
            self.runner.block_size,
            enable_caching=config.cache_config.enable_prefix_caching,
        )
        self.scheduler = Scheduler(self.scheduler_config, self.kv_cache_manager, self.max_model_len)
        self.requests: dict[str, Request] = {}
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
        self.stats.record_finished(req)
        return self._pop_output(req)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

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
        """Run one model step; return the outputs of requests that finished in it."""
        so = self.scheduler.schedule()
        # Runs even when nothing is scheduled, so the runner forgets finished requests' state.
        out = self.runner.execute_model(so)
        if so.is_empty:
            return []
        self.last_runner_output = out
        self.stats.record_step(so, self.scheduler.kv_usage(so))
        finished = set(self.scheduler.update_from_output(so, out.req_ids, out.sampled_token_ids))
        outputs = []
        by_id = {r.request_id: r for r in so.scheduled}
        for req_id, token_id in zip(out.req_ids, out.sampled_token_ids):
            req = by_id[req_id]
            detok = self.detokenizers[req_id]
            stop_str = detok.update(token_id)
            if stop_str is None and req in finished:
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
        self.requests.pop(req.request_id, None)
        self.detokenizers.pop(req.request_id, None)
        return RequestOutput.from_request(req)
