"""CUDA graphs for decode steps: record the model's ~hundreds of kernel launches once per batch
size, then replay them with one launch.

A graph replays the exact kernels with the exact pointers and grid sizes it recorded, so
everything that varies between steps must live in memory the graph reads, never in Python: the
inputs sit in the InputBatch's device buffer (the same addresses every step), the attention
metadata holds views of it, and the grids depend only on the batch size. A step with ``n``
decoding requests replays the graph of the smallest bucket >= ``n``; the extra rows are padding
(slot -1: no K/V write; sequence length 0: attention writes zeros) and their outputs are ignored.
Prefill and mixed steps run eagerly (their shapes vary too much); the logits and the sampler run
outside the graph, on the real rows only.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch-size buckets: 1, 2, 4, 8, then every multiple of 16, up to max_num_seqs (included)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_num_seqs]
    sizes += list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


def bucket_for(num_reqs: int, sizes: list[int]) -> int | None:
    """The smallest bucket that holds ``num_reqs`` requests (None: too large, run eagerly)."""
    i = bisect.bisect_left(sizes, num_reqs)
    return sizes[i] if i < len(sizes) else None


class CUDAGraphRunner:
    """Captures ``forward(batch_size) -> hidden states`` once per bucket and replays it."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sorted(sizes)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def capture(self, forward: Callable[[int], torch.Tensor], device: torch.device) -> None:
        """Largest bucket first, all in one memory pool: smaller graphs reuse the larger one's
        blocks, so the pool costs about what the largest batch needs."""
        torch.cuda.synchronize(device)
        free_before = torch.cuda.mem_get_info(device)[0]
        t0 = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):
            forward(size)  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(device)
        used = free_before - torch.cuda.mem_get_info(device)[0]
        logger.info(
            "captured %d decode CUDA graphs (batch sizes %d..%d) in %.1f s, %.0f MiB",
            len(self.graphs),
            self.sizes[0],
            self.sizes[-1],
            time.perf_counter() - t0,
            used / 2**20,
        )

    def bucket(self, num_reqs: int) -> int | None:
        return bucket_for(num_reqs, self.sizes)

    def replay(self, size: int) -> torch.Tensor:
        self.graphs[size].replay()
        return self.outputs[size]
