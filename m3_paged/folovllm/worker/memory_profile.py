"""How many bytes the KV cache may take on a GPU: vLLM's profile run.

The cache gets what is left of ``total * gpu_memory_utilization`` after the weights, other
processes and the peak activations of the largest step. The peak is measured, not computed: the
runner runs the largest steps once (``profile_steps``) on a scratch cache and the allocator's
high-water mark says what they needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from folovllm.core.sched.output import SchedulerOutput
from folovllm.request import Request
from folovllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_BYTES = 2 * 2**30  # the most the CPU default takes (without kv_cache_memory_gb)


def kv_cache_budget(
    total: int, free: int, peak_activations: int, utilization: float, min_bytes: int = 1
) -> int:
    """Bytes the KV cache may take: ``total * utilization`` minus what is already in use (weights,
    other processes: ``total - free``) minus the peak activations of the largest step.

    Raises ValueError naming gpu_memory_utilization when that leaves less than ``min_bytes``.
    """
    used = total - free
    budget = int(total * utilization) - used - peak_activations
    if budget < min_bytes:
        needed = (used + peak_activations + min_bytes) / total
        raise ValueError(
            f"gpu_memory_utilization={utilization} allows {total * utilization / 2**30:.2f} GiB of "
            f"{total / 2**30:.2f} GiB, but {used / 2**30:.2f} GiB are in use (weights, other "
            f"processes) and the peak activations take {peak_activations / 2**30:.2f} GiB, leaving "
            f"less than the {min_bytes / 2**30:.2f} GiB the KV cache needs: set "
            f"gpu_memory_utilization >= {needed:.3f}"
        )
    return budget


def profile_steps(
    max_num_batched_tokens: int, max_model_len: int, max_num_seqs: int, block_size: int
) -> tuple[list[SchedulerOutput], int]:
    """The largest steps and the blocks they need: a prefill of ``max_num_batched_tokens`` prompt
    tokens (at most ``max_num_seqs`` requests of at most ``max_model_len``), then a decode of
    ``max_num_seqs`` requests sampled with top-k and top-p (float32 [max_num_seqs, vocab] plus
    the sort buffers)."""
    lens, remaining = [], max_num_batched_tokens
    while remaining > 0 and len(lens) < max_num_seqs:
        lens.append(min(remaining, max_model_len))
        remaining -= lens[-1]
    reqs = [
        Request(f"profile-{i}", None, [0] * n, SamplingParams(max_tokens=1))
        for i, n in enumerate(lens)
    ]
    tables, first = {}, 0
    for r in reqs:
        n = -(-r.num_prompt_tokens // block_size)
        tables[r.request_id], first = list(range(first, first + n)), first + n
    # Decode-shaped: max_num_seqs requests of one block each, the last token new.
    params = SamplingParams(temperature=1.0, top_k=1, top_p=0.9, max_tokens=1)
    decodes = [
        Request(f"profile-decode-{i}", None, [0] * block_size, params) for i in range(max_num_seqs)
    ]
    for i, r in enumerate(decodes):
        r.num_computed_tokens = block_size - 1
        tables[r.request_id] = [i]
    steps = [
        SchedulerOutput(reqs, {r.request_id: r.num_prompt_tokens for r in reqs}, tables),
        SchedulerOutput(decodes, {r.request_id: 1 for r in decodes}, tables),
    ]
    return steps, max(first, len(decodes))


@torch.inference_mode()
def profile_free_memory(
    device: torch.device, profile_run: Callable[[], int], utilization: float, min_bytes: int = 1
) -> int:
    """Bytes left for KV after the weights and the peak activations of ``profile_run`` (which runs
    the largest steps on a scratch cache, unbinds it and returns its bytes)."""
    free, total = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    scratch_bytes = profile_run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before - scratch_bytes
    torch.cuda.empty_cache()  # the scratch cache is unbound and dropped by now
    budget = kv_cache_budget(total, free, peak, utilization, min_bytes)
    logger.info(
        "profile: %.2f GiB in use before, %.2f GiB peak activations, %.2f GiB left for KV at utilization %.2f",
        (total - free) / 2**30,
        peak / 2**30,
        budget / 2**30,
        utilization,
    )
    return budget
