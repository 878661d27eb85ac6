"""Linear layers that load checkpoint weights by name, including merged projections.

q, k and v (and gate and up) are stored as separate matrices in a checkpoint but computed as one
matmul here: one kernel launch and one read of the input instead of three. Each merged layer knows
where every shard goes (``weight_loader``), as vLLM's QKVParallelLinear does.

m7: with a quantization config a layer holds packed parameters instead of ``weight`` (created by
the config's linear method, which also does the multiply). Each parameter says along which
dimension output features run (``output_dim``) and how many share an element (``pack_factor``),
so the same shard ranges place q/k/v or gate/up slices of packed tensors.

m10 tensor parallelism (Megatron-LM): a column-parallel layer holds 1/N of the output features
(q/k/v by heads, gate/up by rows) and needs no communication; a row-parallel layer holds 1/N of
the input features, so each rank computes a partial sum of the whole output and an all-reduce adds
them. Attention and the MLP are each a column-parallel layer followed by a row-parallel one: one
all-reduce per block. The weight loaders cut each rank's slice out of the full checkpoint tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folovllm.distributed.communication_op import tensor_model_parallel_all_reduce
from folovllm.distributed.parallel_state import (
    divide,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from folovllm.model_executor.layers.ops import gemv
from folovllm.model_executor.weight_utils import materialize, narrow_weight, weight_shape


class Linear(nn.Module):
    """y = x W^T (+ b), replicated on every rank; the checkpoint tensor must match exactly."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, quant_config=None
    ) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.input_size, self.output_size = input_size, output_size
        self.quant_method = quant_config.get_linear_method() if quant_config else None
        if self.quant_method is None:
            self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        else:
            self.quant_method.create_weights(self, input_size, output_size)
        self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False) if bias else None

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        return 0, self.output_size

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | int | None = None
    ) -> None:
        start, end = self.shard_range(shard_id)
        dim, pack = getattr(param, "output_dim", 0), getattr(param, "pack_factor", 1)
        loaded = materialize(self.shard_weight(param, loaded, (end - start) // pack))
        if param.dtype != loaded.dtype and not (
            param.is_floating_point() and loaded.is_floating_point()
        ):
            raise ValueError(
                f"dtype mismatch for shard {shard_id}: model {param.dtype}, checkpoint {loaded.dtype}"
            )
        if dim is None:  # not sharded (GPTQ's g_idx): every shard must bring the same tensor
            if getattr(param, "loaded_once", False) and not torch.equal(param.data, loaded):
                raise ValueError(
                    f"shard {shard_id} brings another g_idx than the shard before; a merged layer "
                    f"needs one input-channel order (GPTQ's act-order gives q/k/v, and gate/up, "
                    f"the same one: they share their input)"
                )
            param.loaded_once = True
            target = param.data
        else:
            target = param.data.narrow(dim, start // pack, (end - start) // pack)
        if target.shape != loaded.shape:
            raise ValueError(
                f"shape mismatch for shard {shard_id}: model {tuple(target.shape)}, checkpoint {tuple(loaded.shape)}"
            )
        target.copy_(loaded)

    def shard_weight(self, param: nn.Parameter, loaded, size: int):
        """This rank's slice of a checkpoint tensor (``size``: output features it fills)."""
        return loaded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.bias)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, x, bias)
        if gemv.use_gemv(x, self.weight):  # m8: decode of a few rows streams the weight
            return gemv.gemv(x, self.weight, bias)
        return F.linear(x, self.weight, bias)


class ColumnParallelLinear(Linear):
    """Output features split over the ranks: each computes its slice of y (no communication)."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, quant_config=None
    ) -> None:
        per_rank = divide(output_size, get_tensor_model_parallel_world_size(), "output_size")
        super().__init__(input_size, per_rank, bias, quant_config)

    def shard_weight(self, param: nn.Parameter, loaded, size: int):
        dim = getattr(param, "output_dim", 0)
        if dim is None or self.tp_size == 1:  # GPTQ's g_idx runs over inputs: every rank's
            return loaded
        return narrow_weight(loaded, dim, self.tp_rank * size, size)


class RowParallelLinear(Linear):
    """Input features split over the ranks: each computes a partial sum of the whole y, and an
    all-reduce adds them (``reduce_results=False``: the caller does). The bias is added once."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        quant_config=None,
        reduce_results: bool = True,
    ) -> None:
        per_rank = divide(input_size, get_tensor_model_parallel_world_size(), "input_size")
        super().__init__(per_rank, output_size, bias, quant_config)
        self.reduce_results = reduce_results

    def shard_weight(self, param: nn.Parameter, loaded, size: int):
        dim = getattr(param, "input_dim", None if param.dim() == 1 else 1)
        if dim is None or self.tp_size == 1:  # a bias: whole on every rank
            return loaded
        local = param.shape[dim]
        if weight_shape(loaded)[dim] == local:  # GPTQ with one group: its scales are shared
            return loaded
        part = narrow_weight(loaded, dim, self.tp_rank * local, local)
        if self.quant_method is not None and getattr(param, "group_index", False):
            return self.quant_method.shard_g_idx(self, materialize(part), self.tp_rank)
        return part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Rank 0 adds the bias, so the sum holds it once (one rank: m9's fused x W^T + b).
        out = self.linear(x, self.bias if self.tp_rank == 0 else None)
        if self.reduce_results and self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out


class QKVParallelLinear(ColumnParallelLinear):
    """[q | k | v] in one matrix; k and v have fewer heads under grouped-query attention.
    Split by heads: each rank holds num_heads / N query heads and num_kv_heads / N KV heads."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        quant_config=None,
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        self.num_heads = divide(num_heads, tp, "num_attention_heads")
        self.num_kv_heads = divide(num_kv_heads, tp, "num_key_value_heads")
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        super().__init__(hidden_size, (self.q_size + 2 * self.kv_size) * tp, bias, quant_config)

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        q, kv = self.q_size, self.kv_size
        return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}[shard_id]


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several equally shaped outputs side by side (gate_proj and up_proj), each split by rows."""

    def __init__(
        self, input_size: int, output_sizes: list[int], bias: bool = False, quant_config=None
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        self.offsets = [0]
        for size in output_sizes:
            self.offsets.append(self.offsets[-1] + divide(size, tp, "intermediate_size"))
        super().__init__(input_size, self.offsets[-1] * tp, bias, quant_config)

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        return self.offsets[shard_id], self.offsets[shard_id + 1]
