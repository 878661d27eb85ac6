"""Linear layers that load checkpoint weights by name, including merged projections.

q, k and v (and gate and up) are stored as separate matrices in a checkpoint but computed as one
matmul here: one kernel launch and one read of the input instead of three. Each merged layer knows
where every shard goes (``weight_loader``), as vLLM's QKVParallelLinear does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x W^T (+ b). Shards: none; the checkpoint tensor must match exactly."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False) if bias else None

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        return 0, self.output_size

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | int | None = None
    ) -> None:
        start, end = self.shard_range(shard_id)
        target = param.data[start:end]
        if target.shape != loaded.shape:
            raise ValueError(
                f"shape mismatch for shard {shard_id}: model {tuple(target.shape)}, checkpoint {tuple(loaded.shape)}"
            )
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class QKVLinear(Linear):
    """[q | k | v] in one matrix; k and v have fewer heads under grouped-query attention."""

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool
    ) -> None:
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias)

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        q, kv = self.q_size, self.kv_size
        return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}[shard_id]


class MergedLinear(Linear):
    """Several equally shaped outputs side by side (gate_proj and up_proj)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        self.offsets = [0]
        for size in output_sizes:
            self.offsets.append(self.offsets[-1] + size)
        super().__init__(input_size, self.offsets[-1], bias)

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        return self.offsets[shard_id], self.offsets[shard_id + 1]
