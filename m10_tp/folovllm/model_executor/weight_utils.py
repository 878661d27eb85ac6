"""Checkpoint tensors that may still be on disk: each rank reads only its slice.

With ``tensor_parallel_size > 1`` the safetensors iterator yields lazy slices (safetensors'
``get_slice``) instead of tensors; a parallel layer narrows one to its rank's rows or columns and
only those bytes are read. These helpers accept either a tensor or a lazy slice.
"""

from __future__ import annotations

from typing import Any

import torch


def weight_shape(loaded: Any) -> tuple[int, ...]:
    return tuple(loaded.shape) if isinstance(loaded, torch.Tensor) else tuple(loaded.get_shape())


def narrow_weight(loaded: Any, dim: int, start: int, size: int) -> Any:
    """``loaded.narrow(dim, start, size)`` for a tensor or a lazy safetensors slice."""
    if isinstance(loaded, torch.Tensor):
        return loaded.narrow(dim, start, size)
    index = [slice(None)] * len(weight_shape(loaded))
    index[dim] = slice(start, start + size)
    return loaded[tuple(index)]


def materialize(loaded: Any) -> torch.Tensor:
    """A tensor (a lazy slice is read whole)."""
    return loaded if isinstance(loaded, torch.Tensor) else loaded[:]
