"""Who am I among the tensor-parallel ranks: the process group, this rank, the world size.

One process per rank (rank 0 is the engine's own process). Every parallel layer asks here, when
it is built, how many ranks share it and which slice is its own; without a process group (the
default, ``tensor_parallel_size=1``) the world is one rank and every layer holds everything.
The device group runs the collectives on the model's tensors: NCCL between GPUs, gloo on a CPU.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

_TP_RANK = 0
_TP_SIZE = 1
_TP_GROUP: dist.ProcessGroup | None = None


def init_distributed_environment(
    world_size: int, rank: int, init_method: str, device: torch.device, timeout_s: float
) -> None:
    """Join the process group (every rank calls this; it returns once all have joined)."""
    global _TP_RANK, _TP_SIZE, _TP_GROUP
    if _TP_GROUP is not None:
        raise RuntimeError(
            "a tensor-parallel engine already runs in this process: shut it down first"
        )
    backend, kwargs = "gloo", {}
    if device.type == "cuda":  # this rank's GPU: the current device, and NCCL's
        device = torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
        torch.cuda.set_device(device)
        backend, kwargs = "nccl", {"device_id": device}
    dist.init_process_group(
        backend,
        init_method=init_method,
        world_size=world_size,
        rank=rank,
        timeout=timedelta(seconds=timeout_s),
        **kwargs,
    )
    _TP_RANK, _TP_SIZE, _TP_GROUP = rank, world_size, dist.group.WORLD
    # NCCL creates its communicator at the first collective: do it now, not inside a graph capture.
    warmup = torch.ones(1, device=device)
    dist.all_reduce(warmup, group=_TP_GROUP)


def destroy_distributed_environment() -> None:
    global _TP_RANK, _TP_SIZE, _TP_GROUP
    if _TP_GROUP is not None and dist.is_initialized():
        dist.destroy_process_group()
    _TP_RANK, _TP_SIZE, _TP_GROUP = 0, 1, None


def get_tensor_model_parallel_rank() -> int:
    return _TP_RANK


def get_tensor_model_parallel_world_size() -> int:
    return _TP_SIZE


def get_tp_group() -> dist.ProcessGroup | None:
    return _TP_GROUP


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """``numerator / denominator`` when it divides exactly (a shard per rank), else ValueError."""
    if numerator % denominator:
        raise ValueError(f"{what}={numerator} is not divisible by {denominator} ranks")
    return numerator // denominator
