"""The runner owns device state: the model, the KV cache, the RNGs. It turns a SchedulerOutput into
tensors (input_ids, positions, slot_mapping, attention metadata), runs the model, and samples.

m4: the step's inputs come from a persistent InputBatch (one host->device copy per step), the
attention backend is chosen by ``attention_backend``, and decode steps replay CUDA graphs
(``enforce_eager=True`` turns them off).

m8: ``execute_model_async`` launches a step and returns at once; the sampled ids come back
through an ``AsyncModelRunnerOutput`` (worker/async_output.py) while the host prepares the next
step. Tokens sampled by the step in flight reach the next step's inputs on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from folovllm.attention.backends import select_attn_backend
from folovllm.attention.backends.abstract import CommonAttentionMetadata
from folovllm.attention.layer import Attention
from folovllm.config import DEFAULT_MAX_NUM_SEQS, KV_CACHE_DTYPES, CacheConfig, ModelConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.forward_context import set_forward_context
from folovllm.model_executor.models import get_model
from folovllm.request import Request
from folovllm.sample.sampler import Sampler, SamplingMetadata
from folovllm.worker.async_output import AsyncModelRunnerOutput
from folovllm.worker.cuda_graph import CUDAGraphRunner, capture_sizes, token_capture_sizes
from folovllm.worker.input_batch import InputBatch
from folovllm.worker.memory_profile import (
    DEFAULT_CPU_KV_BYTES,
    profile_free_memory,
    profile_steps,
)

logger = logging.getLogger(__name__)
MAX_GRAPH_TOKENS = 8192  # the largest prefill / mixed step replayed from a CUDA graph


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros. On the CPU from calloc (``np.zeros``): the OS backs a page only when it is first
    written, so KV no request fills costs no time or RAM (``torch.zeros`` writes every byte)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    data = np.zeros(math.prod(shape) * dtype.itemsize, dtype=np.uint8)
    return torch.from_numpy(data).view(dtype).view(shape)


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]  # requests that produced a token this step, in batch order
    sampled_token_ids: list[int]
    logits: torch.Tensor | None = None  # [len(req_ids), vocab], kept only when asked (tests)


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        max_num_batched_tokens: int,
        keep_logits: bool = False,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        attention_backend: str | None = None,
        enforce_eager: bool = False,
        cudagraph_mode: str = "full",
    ) -> None:
        self.model_config = model_config
        self.device, self.dtype = model_config.device, model_config.dtype
        self.max_model_len = model_config.max_model_len
        self.max_num_seqs = max_num_seqs  # rows the sampler may get in one step (profile run)
        self.keep_logits = keep_logits
        torch.manual_seed(model_config.seed)
        # Chosen before the model is built: every Attention layer asks for it.
        if cache_config.kv_cache_dtype == "fp8" and attention_backend in (None, "auto"):
            if self.device.type == "cuda":
                attention_backend = "triton"  # flash-attn 2 cannot read an fp8 cache
        self.attn_backend = select_attn_backend(
            attention_backend,
            self.device.type,
            cache_config.block_size,
            model_config.arch.head_dim,
            self.dtype,
        )
        self.model = get_model(model_config)
        # Each Attention layer by its module name: the KV caches are bound by name (as in vLLM),
        # so the runner needs no knowledge of where a model keeps its layers.
        self.attn_layers = {n: m for n, m in self.model.named_modules() if isinstance(m, Attention)}
        self.attn_builder = self._make_builder()
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        # The last launched step's sampled ids (on the device) and each request's row in them.
        self.prev_sampled: torch.Tensor | None = None
        self.prev_rows: dict[str, int] = {}
        # The last batch (its requests in order) and its sampling metadata: see execute_model_async.
        self.batch_reqs: list[Request] = []
        self.batch_md: SamplingMetadata | None = None
        # Without paging, one block is a whole max_model_len row: m2's reservation, for comparison.
        self.block_size = (
            cache_config.block_size if cache_config.enable_paged_kv else self.max_model_len
        )
        # The cache's element type: the model's, or float8 e4m3 for kv_cache_dtype="fp8".
        self.kv_dtype = KV_CACHE_DTYPES[cache_config.kv_cache_dtype] or self.dtype
        self.kv_bytes_per_token = model_config.arch.kv_bytes_per_token(self.kv_dtype)
        self.block_bytes = self.block_size * self.kv_bytes_per_token
        self.input_batch = InputBatch(
            max_num_seqs, max_num_batched_tokens, self.max_model_len, self.block_size, self.device
        )
        self.num_blocks = self._num_blocks(cache_config, max_num_batched_tokens)
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)
        self.graph_runner: CUDAGraphRunner | None = None
        self.mixed_graph_runner: CUDAGraphRunner | None = None  # prefill / mixed steps
        if self.device.type == "cuda" and not enforce_eager:
            if getattr(self.attn_backend, "supports_cuda_graphs", False):
                full = cudagraph_mode == "full"
                self._capture_cuda_graphs(
                    full and getattr(self.attn_backend, "supports_full_cuda_graphs", False)
                )
            else:
                logger.info(
                    "CUDA graphs off: the %s backend builds its metadata on the host",
                    self.attn_backend.get_name(),
                )

    def _make_builder(self):
        if self.attn_backend.get_name() == "torch":
            return self.attn_backend.get_builder_cls()()
        arch = self.model_config.arch
        sms = (
            torch.cuda.get_device_properties(self.device).multi_processor_count
            if self.device.type == "cuda"
            else 1
        )
        return self.attn_backend.get_builder_cls()(arch.num_key_value_heads, sms)

    def _num_blocks(self, cache_config: CacheConfig, max_num_batched_tokens: int) -> int:
        """How many KV blocks fit the budget: given outright, in GiB, or what the GPU has left."""
        if cache_config.num_gpu_blocks is not None:
            num_blocks = cache_config.num_gpu_blocks
        else:
            if cache_config.kv_cache_memory_gb is not None:
                budget = int(cache_config.kv_cache_memory_gb * 2**30)
            elif self.device.type == "cuda":
                budget = profile_free_memory(
                    self.device,
                    lambda: self._profile_run(max_num_batched_tokens),
                    cache_config.gpu_memory_utilization,
                    self.max_model_len * self.kv_bytes_per_token,
                )
            else:
                # the CPU: room for max_num_seqs sequences of max_model_len, at most 2 GiB
                seq_bytes = self.max_model_len * self.kv_bytes_per_token
                budget = min(DEFAULT_CPU_KV_BYTES, self.max_num_seqs * seq_bytes)
            num_blocks = max(0, budget) // self.block_bytes
        if num_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"the KV cache ({num_blocks} blocks x {self.block_size} tokens) cannot hold one sequence "
                f"of max_model_len={self.max_model_len}: lower max_model_len or give the cache more memory"
            )
        return num_blocks

    @torch.inference_mode()
    def _profile_run(self, max_num_batched_tokens: int) -> int:
        """Run the largest steps (``profile_steps``) once on a scratch cache and return its
        bytes; the scratch cache is unbound at the end."""
        steps, num_blocks = profile_steps(
            max_num_batched_tokens, self.max_model_len, self.max_num_seqs, self.block_size
        )
        scratch = self._allocate_kv_cache(num_blocks, log=False)
        scratch_bytes = sum(c.numel() * c.element_size() for c in scratch)
        for so in steps:
            common, input_ids, positions, logits_indices = self.input_batch.prepare(so)
            with set_forward_context(self.attn_builder.build(common)):
                hidden = self.model(input_ids, positions)
            logits = self.model.compute_logits(hidden[logits_indices])
            del hidden
            sampling = SamplingMetadata.from_requests(so.scheduled, logits.shape[-1], self.device)
            self.sampler(logits, sampling)
            del logits
            for r in so.scheduled:
                self.input_batch.remove(r.request_id)
        # Unbind and drop the scratch cache so that empty_cache() can really give it back.
        for attn in self.attn_layers.values():
            attn.kv_cache = None
        del scratch
        return scratch_bytes

    def _allocate_kv_cache(self, num_blocks: int, log: bool = True) -> list[torch.Tensor]:
        arch = self.model_config.arch
        shape = self.attn_backend.get_kv_cache_shape(
            num_blocks, self.block_size, arch.num_key_value_heads, arch.head_dim
        )
        caches = []
        for attn in self.attn_layers.values():
            cache = lazy_zeros(shape, self.kv_dtype, self.device)
            attn.kv_cache = cache
            caches.append(cache)
        if log:
            total = sum(c.numel() * c.element_size() for c in caches)
            logger.info(
                "KV cache: %d blocks x %d tokens = %d tokens, %.1f MiB; holds %.1f sequences of max_model_len=%d",
                num_blocks,
                self.block_size,
                num_blocks * self.block_size,
                total / 2**20,
                num_blocks * self.block_size / self.max_model_len,
                self.max_model_len,
            )
        return caches

    def _graph_forward(
        self, num_reqs: int, num_tokens: int, max_query_len: int, **metadata_overrides
    ) -> torch.Tensor:
        """The model over the first ``num_reqs`` requests and ``num_tokens`` tokens of the device
        input buffers, as a CUDA graph records it: the metadata points at the buffers, whose
        values at capture time do not matter (a replay reads what its step copied in)."""
        ib = self.input_batch
        common = CommonAttentionMetadata(
            query_start_loc=ib.view("query_start_loc", num_reqs + 1),
            seq_lens=ib.view("seq_lens", num_reqs),
            block_table=ib.device_block_table(num_reqs),
            slot_mapping=ib.view("slot_mapping", num_tokens),
            query_start_loc_cpu=[],
            seq_lens_cpu=[],
            num_reqs=num_reqs,
            num_actual_tokens=0,
            max_query_len=max_query_len,
            max_seq_len=0,
        )
        md = self.attn_builder.build(common)
        if metadata_overrides:
            md = dataclasses.replace(md, **metadata_overrides)
        with set_forward_context(md):
            return self.model(ib.view("input_ids", num_tokens), ib.view("positions", num_tokens))

    @torch.inference_mode()
    def _capture_cuda_graphs(self, mixed: bool) -> None:
        sizes = capture_sizes(self.max_num_seqs)
        ib = self.input_batch
        pool = None
        if mixed:  # first: the largest step sets the shared pool's size
            pool = self._capture_mixed_graphs()

        def forward(size: int) -> torch.Tensor:  # a decode step: one token per request
            return self._graph_forward(size, size, max_query_len=1)

        ib.view("query_start_loc").copy_(torch.arange(ib.view("query_start_loc").numel()))
        ib.view("seq_lens").zero_()
        ib.view("slot_mapping").fill_(-1)
        self.graph_runner = CUDAGraphRunner(sizes)
        self.graph_runner.capture(forward, self.device, pool)

    def _capture_mixed_graphs(self):
        """One graph per token count for prefill / mixed steps, with ``max_num_seqs + 1``
        requests (padding requests have length 0). Returns the memory pool."""
        ib = self.input_batch
        reqs = self.max_num_seqs + 1

        def forward(tokens: int) -> torch.Tensor:
            # Any mix of long and one-token queries may replay it: the general tiles.
            return self._graph_forward(reqs, tokens, max_query_len=tokens, min_query_len=1)

        # Capture-time values: every request empty, every token padding (nothing is read).
        ib.view("query_start_loc").zero_()
        ib.view("seq_lens").zero_()
        ib.view("slot_mapping").fill_(-1)
        ib.view("input_ids").zero_()
        ib.view("positions").zero_()
        # Above ~8k tokens a step's GPU time dwarfs the ~15 ms of an eager launch: no graphs.
        self.mixed_graph_runner = CUDAGraphRunner(
            token_capture_sizes(min(ib.max_num_tokens, MAX_GRAPH_TOKENS)), kind="mixed"
        )
        self.mixed_graph_runner.capture(forward, self.device)
        return self.mixed_graph_runner.pool

    def _forward(self, so: SchedulerOutput) -> torch.Tensor:
        """Hidden states of each scheduled request's last token: [num_reqs, hidden]."""
        num_reqs = len(so.scheduled)
        bucket = tokens = None
        if self.graph_runner is not None and so.total_num_scheduled_tokens == num_reqs:
            bucket = self.graph_runner.bucket(num_reqs)  # a decode-shaped step (1 token each)
        if bucket is None and self.mixed_graph_runner is not None:
            tokens = self.mixed_graph_runner.bucket(so.total_num_scheduled_tokens)
        ib = self.input_batch
        common, input_ids, positions, logits_indices = ib.prepare(
            so, bucket, tokens, self.prev_rows
        )
        if ib.num_placeholders:  # async: tokens sampled by the previous step, still on the GPU
            ib.fill_placeholders(self.prev_sampled)
        if bucket is not None:
            hidden = self.graph_runner.replay(bucket)
        elif tokens is not None:
            hidden = self.mixed_graph_runner.replay(tokens)
        else:
            with set_forward_context(self.attn_builder.build(common)):
                hidden = self.model(input_ids, positions)
        return hidden[logits_indices]

    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        """Run one step and wait for its tokens."""
        return self.execute_model_async(so).get()

    @torch.inference_mode()
    def execute_model_async(self, so: SchedulerOutput) -> AsyncModelRunnerOutput:
        """Launch one step; its tokens are fetched with ``.get()`` (async scheduling runs the
        host's next step in between). Nothing here waits for the GPU."""
        for req_id in so.finished_req_ids:
            self.generators.pop(req_id, None)
            self.input_batch.remove(req_id)
        for req_id in so.preempted_req_ids:
            self.input_batch.remove(req_id)  # its blocks are gone; it comes back as a new row
        none = AsyncModelRunnerOutput([], torch.zeros(0, dtype=torch.long))
        if so.is_empty:
            return none
        hidden, reqs = self._forward(so), so.scheduled
        # m5: a row whose prompt is still being chunked yields no token (vLLM's discard mask): it
        # is not sampled, so its seeded RNG does not advance and no stop check sees it. The input
        # batch found the rows that sample while preparing the step.
        done = self.input_batch.sample_idx
        if len(done) < len(reqs):
            if not len(done):
                return none
            idx = torch.from_numpy(done)
            if self.device.type == "cuda":  # pinned: a pageable copy would wait for the forward
                idx = idx.pin_memory().to(self.device, non_blocking=True)
            hidden, reqs = hidden[idx], [reqs[i] for i in done.tolist()]
        logits = self.model.compute_logits(hidden)
        # A decode batch is usually the same requests as the step before (vLLM's persistent
        # batch): their rows and sampling metadata are then reused, not rebuilt per request.
        if reqs != self.batch_reqs:  # list ==: the same Request objects in the same order
            self.batch_reqs, self.batch_md = list(reqs), None
            self.prev_rows = {r.request_id: i for i, r in enumerate(reqs)}
        md = self.batch_md
        if md is None or md.repetition_penalty is not None:  # the penalty reads this step's tokens
            md = self.batch_md = SamplingMetadata.from_requests(
                reqs, logits.shape[-1], self.device, self._generators(reqs)
            )
        self.prev_sampled = self.sampler(logits, md)
        return AsyncModelRunnerOutput(
            list(self.prev_rows), self.prev_sampled, logits.float() if self.keep_logits else None
        )

    def _generators(self, requests: list[Request]) -> dict[str, torch.Generator]:
        for r in requests:
            seed = r.sampling_params.seed
            if seed is not None and r.request_id not in self.generators:
                self.generators[r.request_id] = torch.Generator(device=self.device).manual_seed(
                    seed
                )
        return self.generators
