"""The collectives a tensor-parallel model needs, as no-ops for one rank.

``tensor_model_parallel_all_reduce`` ends every row-parallel layer (each rank holds a partial sum of
the output); ``tensor_model_parallel_gather`` brings the vocabulary slices of the logits to rank 0,
the rank that samples. In place and with fixed shapes, so NCCL can record them in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from folovllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    get_tp_group,
)


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the ranks, in place; every rank gets the sum."""
    if get_tensor_model_parallel_world_size() == 1:
        return x
    dist.all_reduce(x, group=get_tp_group())
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``; every rank gets the whole."""
    world = get_tensor_model_parallel_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=get_tp_group())
    return torch.cat(parts, dim=dim)


def tensor_model_parallel_gather(
    x: torch.Tensor, dst: int = 0, dim: int = -1
) -> torch.Tensor | None:
    """Concatenate every rank's ``x`` along ``dim`` on rank ``dst``; the others get None."""
    world = get_tensor_model_parallel_world_size()
    if world == 1:
        return x
    rank = get_tensor_model_parallel_rank()
    parts = [torch.empty_like(x) for _ in range(world)] if rank == dst else None
    dist.gather(x.contiguous(), parts, dst=dst, group=get_tp_group())
    return torch.cat(parts, dim=dim) if rank == dst else None


def broadcast_tensor(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``x`` on every rank (in place)."""
    if get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(x, src=src, group=get_tp_group())
    return x
