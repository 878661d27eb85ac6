"""CUDA graphs: record the model's ~hundreds of kernel launches once per step shape, then replay
them with one launch.

A graph replays the exact kernels with the exact pointers and grid sizes it recorded, so
everything that varies between steps must live in memory the graph reads, never in Python: the
inputs sit in the InputBatch's device buffer (the same addresses every step), the attention
metadata holds views of it, and the grids depend only on the batch size. A step with ``n``
decoding requests replays the graph of the smallest bucket >= ``n``; the extra rows are padding
(slot -1: no K/V write; sequence length 0: attention writes zeros) and their outputs are ignored.

Prefill and mixed steps (``cudagraph_mode="full"``) replay a graph per token count instead: the
step's tokens are padded up to the bucket and its requests up to ``max_num_seqs + 1``. That works
because the attention kernel finds each token's request on the device (a binary search over
``query_start_loc``) and reads only the lengths in the buffers, so one graph serves any mix of
prompt chunks and decodes with that many tokens. An eager step costs ~15 ms of Python and kernel
launches on a 0.6B model whatever its size; a graph replay costs the GPU time alone. Steps larger
than the largest bucket still run eagerly. The logits and the sampler run outside the graph, on
the real rows only.
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


def token_capture_sizes(max_num_tokens: int) -> list[int]:
    """Token-count buckets for prefill / mixed steps: every 64 up to 512, every 256 up to 2048,
    then every 512, up to ``max_num_tokens`` (included). Padding a step costs GPU time in
    proportion, so the steps between buckets stay small where steps are compute-bound."""
    sizes = list(range(64, 513, 64)) + list(range(768, 2049, 256))
    sizes += list(range(2560, max_num_tokens + 1, 512))
    sizes = [s for s in sizes if s <= max_num_tokens]
    if not sizes or sizes[-1] != max_num_tokens:
        sizes.append(max_num_tokens)
    return sizes


def bucket_for(num_reqs: int, sizes: list[int]) -> int | None:
    """The smallest bucket that holds ``num_reqs`` requests (None: too large, run eagerly)."""
    i = bisect.bisect_left(sizes, num_reqs)
    return sizes[i] if i < len(sizes) else None


class CUDAGraphRunner:
    """Captures ``forward(size) -> hidden states`` once per bucket and replays it."""

    def __init__(self, sizes: list[int], kind: str = "decode") -> None:
        self.sizes = sorted(sizes)
        self.kind = kind  # "decode": sizes are requests; "mixed": sizes are tokens
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None
        self.num_replays = 0

    def capture(
        self, forward: Callable[[int], torch.Tensor], device: torch.device, pool=None
    ) -> None:
        """Largest bucket first, all in one memory pool (``pool``: another runner's, to share
        it): smaller graphs reuse the larger one's blocks, so the pool costs about what the
        largest step needs. Replays never overlap, so sharing is safe."""
        torch.cuda.synchronize(device)
        free_before = torch.cuda.mem_get_info(device)[0]
        t0 = time.perf_counter()
        for size in reversed(self.sizes):
            forward(size)  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        self.pool = pool
        torch.cuda.synchronize(device)
        used = free_before - torch.cuda.mem_get_info(device)[0]
        logger.info(
            "captured %d %s CUDA graphs (%s %d..%d) in %.1f s, %.0f MiB",
            len(self.graphs),
            self.kind,
            "batch sizes" if self.kind == "decode" else "tokens",
            self.sizes[0],
            self.sizes[-1],
            time.perf_counter() - t0,
            used / 2**20,
        )

    def bucket(self, num_reqs: int) -> int | None:
        return bucket_for(num_reqs, self.sizes)

    def replay(self, size: int) -> torch.Tensor:
        self.num_replays += 1
        self.graphs[size].replay()
        return self.outputs[size]
