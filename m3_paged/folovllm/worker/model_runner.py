"""The runner owns device state: the model, the KV cache, the RNGs. It turns a SchedulerOutput into
tensors (input_ids, positions, slot_mapping, attention metadata), runs the model, and samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from folovllm.attention.backends import get_attn_backend
from folovllm.attention.layer import Attention
from folovllm.config import DEFAULT_MAX_NUM_SEQS, CacheConfig, ModelConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.forward_context import set_forward_context
from folovllm.model_executor.models import get_model
from folovllm.request import Request
from folovllm.sample.sampler import Sampler, SamplingMetadata
from folovllm.worker.memory_profile import (
    DEFAULT_CPU_KV_BYTES,
    profile_free_memory,
    profile_steps,
)

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.model_config = model_config
        self.device, self.dtype = model_config.device, model_config.dtype
        self.max_model_len = model_config.max_model_len
        self.max_num_seqs = max_num_seqs  # rows the sampler may get in one step (profile run)
        self.keep_logits = keep_logits
        torch.manual_seed(model_config.seed)
        self.model = get_model(model_config)
        # Each Attention layer by its module name: the KV caches are bound by name (as in vLLM),
        # so the runner needs no knowledge of where a model keeps its layers.
        self.attn_layers = {n: m for n, m in self.model.named_modules() if isinstance(m, Attention)}
        self.attn_backend = get_attn_backend()
        self.attn_builder = self.attn_backend.get_builder_cls()()
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        # Without paging, one block is a whole max_model_len row: m2's reservation, for comparison.
        self.block_size = (
            cache_config.block_size if cache_config.enable_paged_kv else self.max_model_len
        )
        self.block_bytes = self.block_size * model_config.kv_bytes_per_token
        self.num_blocks = self._num_blocks(cache_config, max_num_batched_tokens)
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)

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
                    self.max_model_len * self.model_config.kv_bytes_per_token,
                )
            else:
                # the CPU: room for max_num_seqs sequences of max_model_len, at most 2 GiB
                seq_bytes = self.max_model_len * self.model_config.kv_bytes_per_token
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
            input_ids, positions, md, logits_indices = self._prepare_inputs(so)
            with set_forward_context(md):
                hidden = self.model(input_ids, positions)
            logits = self.model.compute_logits(hidden[logits_indices])
            del hidden
            sampling = SamplingMetadata.from_requests(so.scheduled, logits.shape[-1], self.device)
            self.sampler(logits, sampling)
            del logits
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
            cache = lazy_zeros(shape, self.dtype, self.device)
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

    def _prepare_inputs(
        self, so: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, object, list[int]]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc, seq_lens, tables, logits_indices = [0], [], [], []
        for req in so.scheduled:
            n = so.num_scheduled_tokens[req.request_id]
            start = req.num_computed_tokens
            table = so.block_tables[req.request_id]
            input_ids.extend(req.all_token_ids[start : start + n])
            positions.extend(range(start, start + n))
            bs = self.block_size
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            query_start_loc.append(query_start_loc[-1] + n)
            seq_lens.append(start + n)
            tables.append(table)
            logits_indices.append(query_start_loc[-1] - 1)  # the last token predicts the next
        as_long = dict(dtype=torch.long, device=self.device)
        metadata = self.attn_builder.build(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            block_tables=tables,
            slot_mapping=torch.tensor(slots, **as_long),
        )
        return (
            torch.tensor(input_ids, **as_long),
            torch.tensor(positions, **as_long),
            metadata,
            logits_indices,
        )

    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        for req_id in so.finished_req_ids:
            self.generators.pop(req_id, None)
        if so.is_empty:
            return ModelRunnerOutput([], [])
        input_ids, positions, metadata, logits_indices = self._prepare_inputs(so)
        with set_forward_context(metadata):
            hidden = self.model(input_ids, positions)
        logits = self.model.compute_logits(hidden[logits_indices])
        reqs = so.scheduled
        md = SamplingMetadata.from_requests(
            reqs, logits.shape[-1], self.device, self._generators(reqs)
        )
        sampled = self.sampler(logits, md).tolist()
        return ModelRunnerOutput(
            [r.request_id for r in reqs], sampled, logits.float() if self.keep_logits else None
        )

    def _generators(self, requests: list[Request]) -> dict[str, torch.Generator]:
        for r in requests:
            seed = r.sampling_params.seed
            if seed is not None and r.request_id not in self.generators:
                self.generators[r.request_id] = torch.Generator(device=self.device).manual_seed(
                    seed
                )
        return self.generators
