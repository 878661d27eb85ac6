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
from folovllm.config import ModelConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.forward_context import set_forward_context
from folovllm.model_executor.models import get_model
from folovllm.request import Request
from folovllm.sample.sampler import Sampler, SamplingMetadata

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_BYTES = 2 * 2**30  # without kv_cache_memory_gb on the CPU


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
        max_num_seqs: int = 1,
        kv_cache_memory_gb: float | None = None,
        keep_logits: bool = False,
    ) -> None:
        self.model_config = model_config
        self.device, self.dtype = model_config.device, model_config.dtype
        self.max_model_len = model_config.max_model_len
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
        self.num_kv_rows = self._num_kv_rows(max_num_seqs, kv_cache_memory_gb)
        self.kv_caches = self._allocate_kv_cache(self.num_kv_rows)

    def _num_kv_rows(self, max_num_seqs: int, kv_cache_memory_gb: float | None) -> int:
        """As many max_model_len-long rows as the KV budget holds, up to max_num_seqs."""
        row_bytes = self.max_model_len * self.model_config.kv_bytes_per_token
        if kv_cache_memory_gb is not None:
            budget = int(kv_cache_memory_gb * 2**30)
        elif self.device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(self.device)[0] * 0.9)  # 90% of what is free now
        else:
            budget = DEFAULT_CPU_KV_BYTES
        rows = min(max_num_seqs, budget // row_bytes)
        if rows < 1:
            raise ValueError(
                f"the KV budget ({budget / 2**30:.2f} GiB) holds no sequence of max_model_len="
                f"{self.max_model_len} ({row_bytes / 2**30:.2f} GiB each): lower max_model_len or raise kv_cache_memory_gb"
            )
        return rows

    def _allocate_kv_cache(self, num_rows: int) -> list[torch.Tensor]:
        arch = self.model_config.arch
        shape = self.attn_backend.get_kv_cache_shape(
            num_rows, self.max_model_len, arch.num_key_value_heads, arch.head_dim
        )
        caches = []
        for attn in self.attn_layers.values():
            cache = lazy_zeros(shape, self.dtype, self.device)
            attn.kv_cache = cache
            caches.append(cache)
        total = sum(c.numel() * c.element_size() for c in caches)
        logger.info(
            "KV cache: %d row(s) x %d tokens, %.1f MiB (%d bytes/token)",
            num_rows,
            self.max_model_len,
            total / 2**20,
            self.model_config.kv_bytes_per_token,
        )
        return caches

    def _prepare_inputs(
        self, so: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, object, list[int]]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc, seq_lens, rows, logits_indices = [0], [], [], []
        for req in so.scheduled:
            n = so.num_scheduled_tokens[req.request_id]
            start = req.num_computed_tokens
            row = so.kv_rows[req.request_id]
            input_ids.extend(req.all_token_ids[start : start + n])
            positions.extend(range(start, start + n))
            slots.extend(row * self.max_model_len + p for p in range(start, start + n))
            query_start_loc.append(query_start_loc[-1] + n)
            seq_lens.append(start + n)
            rows.append(row)
            logits_indices.append(query_start_loc[-1] - 1)  # the last token predicts the next
        as_long = dict(dtype=torch.long, device=self.device)
        metadata = self.attn_builder.build(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            kv_rows=rows,
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
